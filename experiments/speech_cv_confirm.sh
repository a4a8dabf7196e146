#!/bin/bash
# The confirmation: VLAAI against the default ivlaai (full convs) on the four time folds that the
# choice of the default never tested on (1, 4, 6, 9; each with three listeners held out, every
# listener new once), seeds 1, 2 and 3, through experiments/speech_cv_runs.sh. Two runs at a time,
# one thread each (a 2-core CPU); seed by seed, so an interrupted run leaves whole seeds done.
# Reruns skip what is scored and resume what was interrupted. Logs: bench_runs/logs/confirm_*.log
# Decision rule, fixed before the runs: ivlaai is better if its seed-mean r on new listeners is
# higher than VLAAI's on at least 3 of the 4 folds and higher on average.
# Summary: python -m experiments.speech_cv --folds=[1,4,6,9]
set -e
cd "$(dirname "$0")/.."
mkdir -p bench_runs/logs
for seed in 1 2 3; do
  for pair in 1:S7,S8,S9 4:S1,S2,S3 6:S10,S11,S12 9:S4,S5,S6; do
    for variant in vlaai ivlaai_full; do echo "$variant $pair $seed"; done
  done
done | xargs -P 2 -L 1 sh -c \
  'experiments/speech_cv_runs.sh "$0" "$1" "$2" > "bench_runs/logs/confirm_$0_${1%%:*}_s$2.log" 2>&1'
