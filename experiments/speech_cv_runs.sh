#!/bin/bash
# Speech cross-validation on a folder whose trials all carry the same stimulus (../shared/data/dtu).
# Each run holds out 3 listeners AND one tenth of the speech (--time_fold): it trains on the other
# nine listeners' remaining 80 % of every trial, stops early on the tenth before the held-out one,
# and test.py scores the held-out tenth of all 12 listeners. So every score is of speech the model
# never heard: "new listeners" (the 3 held out) and "seen listeners" (the 9 trained on, new EEG
# and new speech). Pairs of (time fold : held-out listeners), one per subject fold, so each
# listener is new once and seen three times, on four different pieces of the stimulus.
# Same recipe for every network: lr 3e-4, at most 12 epochs, patience 4, one thread; seed 1 unless
# SEEDS says otherwise (each seed is its own model, scored on its own).
# Usage: experiments/speech_cv_runs.sh VARIANT [PAIRS] [SEEDS]
#   VARIANT: vlaai | ivlaai | ivlaai_subj | ivlaai_full | ivlaai_full_subj | linear
#   PAIRS: "K:SUBJ,SUBJ,... ..." (time fold : listeners held out), default: the four pairs set below
#   SEEDS: "1 2 3" (default "1")
#   reruns resume; results: bench_runs/speech_cv/VARIANT/tfK/eval/seed-N/eval_score.json
#   summary (from the repo root): python -m experiments.speech_cv
set -e
cd "$(dirname "$0")/.."
# continue an interrupted seed (train.py --resume refuses a folder with no run to continue)
resume() { [ -f "$1/last.pt" ] && echo --resume; true; }
variant=$1
pairs=${2:-"0:S1,S2,S3 2:S4,S5,S6 5:S7,S8,S9 7:S10,S11,S12"}
seeds=${3:-1}
case $variant in
  vlaai) model=vlaai; extra=() ;;
  # ivlaai and ivlaai_subj: the depthwise-separable network; ivlaai_full: the default full convolutions
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
  for seed in $seeds; do
    score=$dir/eval/seed-$seed/eval_score.json
    if [ ! -f "$score" ]; then
      python train.py --data_dir=../shared/data/dtu --exclude_subjects="$held_list" --split=time --time_fold=$fold \
        --model=$model "${extra[@]}" --seeds=[$seed] --lr=3e-4 --epochs=12 --patience=4 --threads=1 \
        --select=best_val --avg_epochs=1 --run_dir=$dir $(resume $dir/$model/seed-$seed)
      python test.py --run_dir=$dir --model=$model --seeds=[$seed] --test_dir=None --eval_dir=../shared/data/dtu \
        --split=time --threads=1 --result_dir=$dir/eval/seed-$seed
    fi
  done
done
