"""Where in the trial does each model decode? Seed-ensemble r of each 5 s piece of the test trials.

    python benchmarks/position_r.py --fold_dir=bench_runs/full/heldout/fold1-S1-S3 --subjects=S1,S2,S3 \
        [--data_dir=../shared/data/dtu] [--models=linear,vlaai,ivlaai] [--seeds=1,2,3] [--window_s=5] \
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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from EEG_Dataset import load_corpus  # noqa: E402
from metrics import pearson  # noqa: E402
from train import load_model  # noqa: E402


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
    args = dict(a[2:].split("=", 1) for a in (argv if argv is not None else sys.argv[1:]))
    unknown = set(args) - {"fold_dir", "subjects", "data_dir", "models", "seeds", "window_s", "checkpoint"}
    if unknown or "fold_dir" not in args or "subjects" not in args:
        raise SystemExit(__doc__ + (f"\nunknown options: {sorted(unknown)}" if unknown else ""))
    fold_dir = Path(args["fold_dir"])
    data_dir = args.get("data_dir", str(Path(__file__).resolve().parents[2] / "shared/data/dtu"))
    torch.set_num_threads(1)
    corpus = load_corpus(data_dir, subjects=args["subjects"].split(","), test_recordings=["*"], split="whole")
    recs = [r.get("test") for r in corpus.with_part("test")]
    recs = [(x, y[:, 0]) for x, y in recs]
    window = int(round(float(args.get("window_s", 5)) * corpus.fs))
    n_pos = min(len(x) for x, _ in recs) // window
    recs = [(x[: n_pos * window], y[: n_pos * window]) for x, y in recs]
    print(f"{len(recs)} test trials of {args['subjects']} from {data_dir}; r of each {window / corpus.fs:g} s piece "
          "(seed ensemble, mean over trials; equal trials per subject make it the mean over subjects)")
    header = " ".join(f"{k * window / corpus.fs:>5.0f}s" for k in range(n_pos))
    print(f"{'model':<8} {header}   0-40 s  40-45 s  45-50 s")
    for name in args.get("models", "linear,vlaai,ivlaai").split(","):
        ck = args.get("checkpoint", "best")
        if ck not in ("best", "last"):
            raise SystemExit(f"--checkpoint must be best or last, got {ck!r}")
        paths = [fold_dir / name / name / f"seed-{s}" / f"{ck}.pt" for s in args.get("seeds", "1,2,3").split(",")]
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
