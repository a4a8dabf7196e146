#!/bin/bash
# bfloat16 against float32 with the default recipe, for the decision whether amp='auto' becomes the
# default: VLAAI and ivlaai, seeds 1-3, on held-out fold S10-S12 and on the transfer protocol. The
# float32 runs are benchmarks/record_runs.sh's own (labels vlaai, ivlaai); this adds the bf16 ones
# (labels vlaai-bf16, ivlaai-bf16) to the same records, and `python -m benchmarks.report` puts the
# paired differences per seed, with the validation r per epoch of both, into docs/performance.md.
# Decision rule, fixed before the runs: bf16 holds if, on both protocols and for both networks,
# the mean over seeds of (bf16 r - float32 r) is within one float32 seed sd of zero.
# Meaningful only on a host with AMX (elsewhere bf16 is not faster; --amp=auto keeps float32 there).
# Run it like record_runs.sh, from a worktree at a fixed commit:
#   main=$PWD && git worktree add ../bench HEAD && cd ../bench && RECORDS=$main/results benchmarks/bf16_parity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
records=${RECORDS:-results}
mkdir -p bench_runs/full
variants="{'vlaai-bf16': ['--model=vlaai', '--amp=bf16'], 'ivlaai-bf16': ['--model=ivlaai', '--amp=bf16']}"
bench() { "$py" benchmark.py --out_dir=bench_runs/full --records_dir="$records" --jobs=2 "$@"; }
{
  bench --protocols=[heldout] --folds=[3] --models=[vlaai,ivlaai] --variants="$variants"
  bench --protocols=[transfer] --models=[vlaai,ivlaai] --variants="$variants"
} 2>&1 | tee -a bench_runs/full/bf16_parity.log
