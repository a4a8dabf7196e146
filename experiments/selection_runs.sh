#!/bin/bash
# Training runs of the stopping-rule study (experiments/README.md): validation data only. Inner
# held-out listeners come from fold 4's training set (S1-S9); S10-S12 are never used. Each run
# keeps every epoch's weights (--keep_epochs) and scores the inner listeners after every epoch;
# rerunning this script continues interrupted runs and skips finished ones. Then, from the repo root:
#   python -m experiments.selection --runs='bench_runs/select/*/*/seed-*' --out=bench_runs/select/study.json
set -e
cd "$(dirname "$0")/.."
# continue an interrupted seed (train.py --resume refuses a folder with no run to continue)
resume() { [ -f "$1/last.pt" ] && echo --resume; true; }
for seed in 1 2; do
  for inner in S7,S8,S9 S4,S5,S6; do
    for model in ivlaai vlaai; do
      # the study measured the depthwise-separable ivlaai
      opts=(); [ "$model" = ivlaai ] && opts=(--ivlaai_separable=True)
      python train.py --data_dir=../shared/data/dtu --exclude_subjects=[S10,S11,S12] --monitor_recordings=[$inner] \
        --split=time --model=$model --seeds=[$seed] --epochs=30 --patience=30 --lr=3e-4 --threads=1 --keep_epochs "${opts[@]}" \
        --select=best_val --avg_epochs=1 --run_dir=bench_runs/select/inner-${inner//,/-} \
        $(resume bench_runs/select/inner-${inner//,/-}/$model/seed-$seed)
    done
  done
done
