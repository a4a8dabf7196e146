#!/bin/bash
# Speech cross-validation on a folder whose trials all carry the same stimulus (../shared/data/dtu).
# Each run holds out 3 listeners AND one tenth of the speech (--time_fold): it trains on the other
# nine listeners' remaining 80 % of every trial, stops early on the tenth before the held-out one,
# and test.py scores the held-out tenth of all 12 listeners. So every score is of speech the model
# never heard: "new listeners" (the 3 held out) and "seen listeners" (the 9 trained on, new EEG
# and new speech). Pairs of (time fold : held-out listeners), one per subject fold, so each
# listener is new once and seen three times, on four different pieces of the stimulus.
# Same recipe for every network: lr 3e-4, at most 12 epochs, patience 4, seed 1, one thread.
# Usage: benchmarks/speech_cv_runs.sh VARIANT [PAIRS]   VARIANT: vlaai | ivlaai | ivlaai_subj | ivlaai_full | ivlaai_full_subj | linear
#   PAIRS: "K:SUBJ,SUBJ,... ..." (time fold : listeners held out), default: the four pairs set below
#   reruns resume; results: bench_runs/speech_cv/VARIANT/tfK/eval/eval_score.json
#   summary: python benchmarks/speech_cv.py
set -e
cd "$(dirname "$0")/.."
variant=$1
pairs=${2:-"0:S1,S2,S3 2:S4,S5,S6 5:S7,S8,S9 7:S10,S11,S12"}
case $variant in
  vlaai) model=vlaai; extra=() ;;
  # ivlaai and ivlaai_subj: the depthwise-separable network (the default until 2026-11-30)
  ivlaai) model=ivlaai; extra=(--ivlaai_separable=True) ;;
  ivlaai_subj) model=ivlaai; extra=(--ivlaai_separable=True --subject_embedding=True) ;;
  ivlaai_full) model=ivlaai; extra=(--ivlaai_separable=False) ;;
  ivlaai_full_subj) model=ivlaai; extra=(--ivlaai_separable=False --subject_embedding=True) ;;
  linear) model=linear; extra=() ;;
  *) echo "unknown variant $variant" >&2; exit 2 ;;
esac
for pair in $pairs; do
  fold=${pair%%:*}; held=${pair#*:}
  held_list="['${held//,/\',\'}']"
  dir=bench_runs/speech_cv/$variant/tf$fold
  if [ ! -f "$dir/eval/eval_score.json" ]; then
    python train.py --data_dir=../shared/data/dtu --exclude_subjects="$held_list" --split=time --time_fold=$fold \
      --model=$model "${extra[@]}" --seeds=[1] --lr=3e-4 --epochs=12 --patience=4 --threads=1 \
      --run_dir=$dir --resume
  fi
  if [ ! -f "$dir/eval/eval_score.json" ]; then
    python test.py --run_dir=$dir --model=$model --test_dir=None --eval_dir=../shared/data/dtu --split=time \
      --threads=1 --result_dir=$dir/eval
  fi
done
