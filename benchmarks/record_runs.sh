#!/bin/bash
# The runs behind the results tables of README.md and docs/results.md, with train.py's default
# recipe: ridge, VLAAI and ivlaai, 3 seeds each, on the held-out-listener folds, the speech
# cross-validation and the transfer to the SparrKULee sample; then the seed study on held-out fold
# S10-S12 (initial weights x window order and dropout masks, 3 x 3, and the ensemble of 1, 2, 3
# and 5 seeds; ivlaai and VLAAI). Each scored group writes its small JSON records into RECORDS
# (default: results/ of this checkout); `python -m benchmarks.report` builds the tables from them.
#
# Run it from a separate worktree at a fixed commit, so that editing the code never changes a run
# in progress, and point RECORDS at the checkout that commits them:
#   main=$PWD && git worktree add ../bench HEAD && cd ../bench && RECORDS=$main/results benchmarks/record_runs.sh
# Reruns skip every group that has its record in RECORDS (also one recorded on another machine)
# and resume interrupted seeds whose run folders are here. Two one-thread runs at a time (a 2-core
# CPU). Log: bench_runs/full/record_runs.log
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
records=${RECORDS:-results}
mkdir -p bench_runs/full
bench() { "$py" benchmark.py --out_dir=bench_runs/full --records_dir="$records" --jobs=2 "$@"; }
{
  bench --protocols=[heldout] --folds=[3]                     # held-out S10-S12: also the seed study's diagonal
  bench --protocols=[transfer]
  # the seed study: --data_seed=j with seeds 1-3 is the 3 x 3 grid (j = seed repeats a run above, bit for bit)
  bench --protocols=[heldout] --folds=[3] --models=[] \
    --variants="{'ivlaai-data1': ['--model=ivlaai', '--data_seed=1'], 'ivlaai-data2': ['--model=ivlaai', '--data_seed=2'], 'ivlaai-data3': ['--model=ivlaai', '--data_seed=3']}"
  bench --protocols=[heldout] --folds=[3] --models=[ivlaai] --seeds=[1,2,3,4,5] --ensemble_sizes=[1,2,3,5]
  # VLAAI's grid: only data_seed != seed (its diagonal is the plain runs above), then its growth
  for j_others in 1:2,3 2:1,3 3:1,2; do
    j=${j_others%%:*}
    bench --protocols=[heldout] --folds=[3] --models=[] --seeds="[${j_others#*:}]" \
      --variants="{'vlaai-data$j': ['--model=vlaai', '--data_seed=$j']}"
  done
  bench --protocols=[heldout] --folds=[3] --models=[vlaai] --seeds=[1,2,3,4,5] --ensemble_sizes=[1,2,3,5]
  bench --protocols=[heldout] --folds=[0,1,2]
  bench --protocols=[speechcv]
} 2>&1 | tee -a bench_runs/full/record_runs.log
