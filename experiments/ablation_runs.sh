#!/bin/bash
# ivlaai ablation under the held-out recipe, judged like the stopping-rule study
# (experiments/README.md): validation data only. Inner held-out listeners come from fold 4's
# training set (S1-S9); S10-S12 are never used. Each variant trains with the recipe itself
# (10 epochs, keep the average of epochs 6-10), so the monitor r train.py logs for epoch 10 is the
# inner listeners' r of the weights the benchmark would keep. Then, from the repo root:
#   python -m experiments.ablation     # table against the study's own runs (bench_runs/select)
# Usage: experiments/ablation_runs.sh [variant ...] (default: add full nodrop unshared); seeds with
# SEEDS="1 2", inner listener groups with INNERS="S7,S8,S9 S4,S5,S6".
# Two shells with different variants use both cores. Rerunning skips finished runs, resumes others.
set -e
cd "$(dirname "$0")/.."
# continue an interrupted seed (train.py --resume refuses a folder with no run to continue)
resume() { [ -f "$1/last.pt" ] && echo --resume; true; }
# every variant is a switch away from the depthwise-separable ivlaai the study measured
base="--ivlaai_separable=True"
declare -A variants=(
  [add]="--ivlaai_concat=False"
  [full]="--ivlaai_separable=False"
  [nodrop]="--dropout=0.0"
  [unshared]="--ivlaai_shared=False"
  [base]=""
  # variant options come last, so they override the recipe's
  [chandrop]="--ivlaai_chan_dropout=0.2"
  [drop3]="--dropout=0.3"
  [bs32]="--batch_size=32"
  [lr1e3]="--lr=1e-3"
  [win10]="--window_s=10.0"
)
names=("${@:-add full nodrop unshared}")
for seed in ${SEEDS:-1 2}; do
  for inner in ${INNERS:-S7,S8,S9 S4,S5,S6}; do
    for name in ${names[@]}; do
      [ -n "${variants[$name]+x}" ] || { echo "unknown variant $name (${!variants[*]})" >&2; exit 2; }
      python train.py --data_dir=../shared/data/dtu --exclude_subjects=[S10,S11,S12] --monitor_recordings=[$inner] \
        --split=time --model=ivlaai --seeds=[$seed] --epochs=10 --select=last --avg_epochs=5 \
        --lr=3e-4 --threads=1 $base ${variants[$name]} --run_dir=bench_runs/ablate-$name/inner-${inner//,/-} \
        $(resume bench_runs/ablate-$name/inner-${inner//,/-}/ivlaai/seed-$seed)
    done
  done
done
