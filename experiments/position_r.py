"""Where in the trial does each model decode? Seed-ensemble r of each 5 s piece of the test trials.

    python -m experiments.position_r --fold_dir=bench_runs/full/heldout/fold1-S1-S3 --subjects=[S1,S2,S3] \
        [--data_dir=../shared/data/dtu] [--models=[linear,vlaai,ivlaai]] [--seeds=[1,2,3]] [--window_s=5] \
        [--checkpoint=best|last]

Every trial of the DTU folder carries the same 50 s envelope, and the time split puts seconds
40-45 in validation (early stopping) and 0-40 s in training. This prints, per model, the r of
each non-overlapping window of the held-out subjects' whole trials (each window predicted on its
own from the trial-standardized EEG, z-scored predictions averaged over seeds), then the mean
over the trained seconds, the validation piece and the last piece. A model that is only good on
the piece it was early-stopped on shows up here; ``--checkpoint=last`` scores the weights of the
last epoch trained instead of the epoch early stopping chose.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import cli
from checkpoint import load_model
from EEG_Dataset import load_corpus
from experiments import as_list
from metrics import pearson

OPTIONS = {
    "fold_dir": ("", "a benchmark fold folder holding MODEL/MODEL/seed-N runs (required)"),
    "subjects": ([], "the fold's held-out subjects, e.g. [S1,S2,S3] (required)"),
    "data_dir": ("../shared/data/dtu", "the DTU-style npz folder the runs trained on"),
    "models": (["linear", "vlaai", "ivlaai"], "models to score"),
    "seeds": cli.like("seeds", [1, 2, 3], "seeds of each model, ensembled"),
    "window_s": cli.like("window_s", 5.0, "length of each scored piece in seconds"),
    "checkpoint": ("best", "'best' (the kept weights) or 'last' (the last epoch trained)"),
}

@torch.no_grad()
def position_r(models, recordings, window: int) -> np.ndarray:
    """r per (recording, window position) of the seed ensemble of ``models``.

    models: modules mapping eeg (batch, time, C) -> (batch, time, 1); recordings: list of
    (eeg (T, C), envelope (T,)) of equal length T. Returns (n_recordings, T // window).
    """
    out = []
    for eeg, env in recordings:
        n = len(eeg) // window
        x = torch.as_tensor(eeg[: n * window], dtype=torch.float32).reshape(n, window, -1)
        y = torch.as_tensor(env[: n * window], dtype=torch.float64).reshape(n, window)
        preds = []
        for m in models:
            p = m(x)[..., 0].double()
            preds.append((p - p.mean(1, keepdim=True)) / (p.std(1, keepdim=True) + 1e-12))
        out.append(pearson(torch.stack(preds).mean(0), y, dim=1).numpy())
    return np.stack(out)


def main(argv=None) -> None:
    cfg, _ = cli.parse_or_exit(argv, program=None, extra=OPTIONS)
    subjects, models, seeds = (as_list(cfg[k]) for k in ("subjects", "models", "seeds"))
    if not cfg["fold_dir"] or not subjects:
        raise SystemExit(__doc__ + "\n--fold_dir and --subjects are required")
    if cfg["checkpoint"] not in ("best", "last"):
        raise SystemExit(f"--checkpoint must be best or last, got {cfg['checkpoint']!r}")
    fold_dir, data_dir = Path(cfg["fold_dir"]), cfg["data_dir"]
    torch.set_num_threads(1)
    corpus = load_corpus(data_dir, subjects=[str(s) for s in subjects], test_recordings=["*"], split="whole")
    recs = [r.get("test") for r in corpus.with_part("test")]
    recs = [(x, y[:, 0]) for x, y in recs]
    window = int(round(cfg["window_s"] * corpus.fs))
    n_pos = min(len(x) for x, _ in recs) // window
    recs = [(x[: n_pos * window], y[: n_pos * window]) for x, y in recs]
    print(f"{len(recs)} test trials of {','.join(map(str, subjects))} from {data_dir}; "
          f"r of each {window / corpus.fs:g} s piece "
          "(seed ensemble, mean over trials; equal trials per subject make it the mean over subjects)")
    header = " ".join(f"{k * window / corpus.fs:>5.0f}s" for k in range(n_pos))
    print(f"{'model':<8} {header}   0-40 s  40-45 s  45-50 s")
    for name in models:
        paths = [fold_dir / name / name / f"seed-{s}" / f"{cfg['checkpoint']}.pt" for s in seeds]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            print(f"{name:<8} missing {', '.join(missing)}")
            continue
        r = position_r([load_model(p, torch.device("cpu"))[0] for p in paths], recs, window).mean(0)
        pieces = [r[: int(40 * corpus.fs) // window].mean()] + [
            r[k] if k < n_pos else float("nan") for k in (int(40 * corpus.fs) // window, int(45 * corpus.fs) // window)]
        print(f"{name:<8} " + " ".join(f"{v:6.3f}" for v in r) + "   " + "  ".join(f"{v:7.3f}" for v in pieces))


if __name__ == "__main__":
    main()
