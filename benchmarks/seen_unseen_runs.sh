#!/bin/bash
# Seen subjects, unseen speech (2026-11-25). Every trial in ../shared/data/dtu carries the same 50 s
# of speech, so the seen-subjects protocol tests on speech its models trained on. Here models train
# on seconds 0-40 of trials 000-006 of all 12 subjects (early stopping on seconds 40-45 of the same
# trials: same listeners, speech not trained on) and are scored on seconds 45-50 of trials 007-009,
# trials no model trained or validated on, and speech no model trained on:
#   python test.py --run_dir=bench_runs/seen_unseen --model=MODEL --seeds=[...] --test_dir=None \
#     --eval_dir=../shared/data/dtu "--val_recordings=['*_00[0-6]']" --split=time --result_dir=...
# (and, for the protocol's own figure, whole trials 008-009: "--test_recordings=['*_008','*_009']" --split=whole).
# Usage: benchmarks/seen_unseen_runs.sh MODEL "SEEDS"   (e.g. vlaai "1 2"); reruns resume.
set -e
cd "$(dirname "$0")/.."
model=$1
# these runs used the depthwise-separable ivlaai (the default until 2026-11-30)
opts=(); [ "$model" = ivlaai ] && opts=(--ivlaai_separable=True)
for seed in ${2:-1}; do
  python train.py --data_dir=../shared/data/dtu --test_recordings="['*_007','*_008','*_009']" --split=time \
    --model=$model --seeds=[$seed] --lr=3e-4 --epochs=12 --patience=4 --threads=1 "${opts[@]}" \
    --run_dir=bench_runs/seen_unseen --resume
done
