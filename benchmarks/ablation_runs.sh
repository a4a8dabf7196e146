#!/bin/bash
# ivlaai ablation under the held-out recipe, judged like the stopping-rule study (docs/model.md):
# validation data only. Inner held-out listeners come from fold 4's training set (S1-S9); S10-S12
# are never used. Each variant trains 10 epochs (the recipe's length) with every epoch's weights
# kept, so the recipe's weights (average of epochs 6-10) are scored on the inner listeners by
#   python benchmarks/selection.py --runs='bench_runs/select/*/*/seed-*,bench_runs/ablate-*/*/*/seed-*' \
#       --avg=5 --fixed=10 --out=bench_runs/ablate.json
# (the study's own runs in bench_runs/select are the baseline: no scheduler, so their first 10
# epochs are what a 10-epoch run trains). Usage: benchmarks/ablation_runs.sh [seed ...] (default 1 2);
# two shells with one seed each use both cores. Rerunning skips finished runs and resumes others.
set -e
cd "$(dirname "$0")/.."
seeds=("${@:-1 2}")
declare -A variants=(
  [add]="--ivlaai_concat=False"
  [full]="--ivlaai_separable=False"
  [nodrop]="--dropout=0.0"
  [unshared]="--ivlaai_shared=False"
)
for seed in ${seeds[@]}; do
  for inner in S7,S8,S9 S4,S5,S6; do
    for name in add full nodrop unshared; do
      python train.py --data_dir=../shared/data/dtu --exclude_subjects=[S10,S11,S12] --monitor_recordings=[$inner] \
        --split=time --model=ivlaai ${variants[$name]} --seeds=[$seed] --epochs=10 --select=last --lr=3e-4 \
        --threads=1 --keep_epochs --run_dir=bench_runs/ablate-$name/inner-${inner//,/-} --resume
    done
  done
done
