"""Predict the challenge test set with trained models, write per-subject predictions, and score.

    python test.py                                     # the demo: runs/<model>/seed-*/best.pt
    python test.py --run_dir=runs --model=vlaai --seeds=[1,2]
    python test.py --test_dir=DIR --label_dir=LABELS --result_dir=OUT
    python test.py --eval_dir=../shared/data/dtu       # also score a labelled folder's test split
    python test.py --checkpoint=vlaai.h5 --test_dir=None --eval_dir=../shared/data/dtu   # published VLAAI weights
    python test.py --help                              # every key this script reads

Loads ``best.pt`` of every seed in ``run_dir/<model>/`` (or the ``--seeds`` given), z-scores each
test segment per channel (as the reference inference does), predicts it with every seed and
averages the seeds' z-scored predictions into an ensemble. Writes ``result_dir/sub-XXX.json``
({segment_id: [floats]}) for the ensemble and ``result_dir/per_seed/seed-N/`` for each seed.
When ``label_dir`` exists, scores them with the official rules, prints per-subject scores and
the total, also for each seed alone, and writes ``result_dir/score.json``. Every file it writes
is listed in ``result_dir/manifest.json``; ``--overwrite`` removes only files listed there.
"""
from __future__ import annotations

import csv
import os
import sys
import time

# A waiting OpenMP thread spins before it sleeps; on a shared CPU the spinning steals the cores the
# working threads need. A short spin keeps the idle speed and avoids the collapse under load
# (benchmarks/shared_cpu.py, docs/performance.md). Set before torch loads its OpenMP runtime.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
from pathlib import Path

import numpy as np
import torch

import config as config_module
import runtime
from checkpoint import CheckpointError, load_model
from EEG_Dataset import DataError, mean_by_subject, read_challenge_labels, read_test_set, score, write_predictions, zscore
from evaluation import predict, zscore_prediction
from fileio import FileError, atomic_write_json, read_json, sha256_file
from metrics import pearson
from runs import corpus_from_config, epoch_seconds, lock_holder, read_log

MANIFEST = "manifest.json"
EVAL_KEYS = ("subjects", "exclude_subjects", "val_recordings", "test_recordings", "split", "time_fold", "eval_window_s",
             "eval_hop_s", "fs")


def find_checkpoints(cfg: dict, given: set) -> tuple[str, list[Path]]:
    """The best.pt files to use: (model name, paths), or exit with a hint on how to train."""
    run_dir = Path(cfg["run_dir"])
    hint = (f"Train one first, e.g.  python train.py --run_dir={run_dir}"
            + (f" --model={cfg['model']}" if "model" in given else "") + "  (see README)")
    if not run_dir.is_dir():
        raise SystemExit(f"no trained model: {run_dir} does not exist. {hint}")
    models = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and any(p.glob("seed-*/best.pt")))
    model = models[0] if "model" not in given and len(models) == 1 else cfg["model"]
    if model not in models:
        found = f" It holds: {', '.join(models)}; choose one with --model=NAME." if models else ""
        raise SystemExit(f"no trained '{model}' model in {run_dir}.{found} {hint}")
    seed_dirs = sorted((p for p in (run_dir / model).glob("seed-*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
    if "seeds" in given:
        wanted = {f"seed-{s}" for s in cfg["seeds"]}
        missing = wanted - {p.name for p in seed_dirs}
        if missing:
            raise SystemExit(f"{run_dir / model}: no run for {', '.join(sorted(missing))}. {hint}")
        seed_dirs = [p for p in seed_dirs if p.name in wanted]
    for p in seed_dirs:
        pid = lock_holder(p)
        if pid is not None:
            raise SystemExit(f"{p}: a training process (pid {pid}) is writing this seed folder; test it when it ends")
    paths = [p / "best.pt" for p in seed_dirs if (p / "best.pt").exists()]
    if not paths:
        raise SystemExit(f"no best.pt under {run_dir / model}. {hint}")
    return model, paths


def predict_segments(model, segments: dict, subject_idx: int, device) -> dict:
    """{segment_id: eeg (T, C)} -> {segment_id: z-scored prediction (T,)}."""
    return {key: zscore_prediction(predict(model, zscore(eeg), subject_idx, device).numpy())
            for key, eeg in segments.items()}


def check_result_dir(result_dir: Path, cfg: dict) -> None:
    """result_dir may not be, hold or sit inside a folder test.py reads."""
    res = result_dir.resolve()
    for key in ("test_dir", "label_dir", "eval_dir"):
        if cfg.get(key) and Path(cfg[key]).exists():
            src = Path(cfg[key]).resolve()
            if res == src or src in res.parents or res in src.parents:
                raise SystemExit(f"result_dir {result_dir} and {key} {cfg[key]} overlap: predictions would be written "
                                 "among the inputs; choose another --result_dir")


def _inside(folder: Path, rel: str) -> bool:
    """``rel`` is a relative path that stays inside ``folder`` (no '..', no absolute path, no link out)."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or not rel:
        return False
    return folder.resolve() in (folder / p).resolve().parents


def claim_result_dir(result_dir: Path, inputs: dict, files: list[str], overwrite: bool) -> None:
    """Never replace another run's results, nor a file test.py did not write. ``files`` (relative
    to result_dir) are about to be written from ``inputs``; they are listed in the manifest first,
    so even a killed run leaves its files accounted for."""
    path = result_dir / MANIFEST
    old = {}
    if path.is_file():
        try:
            old = read_json(path, error=DataError)
        except DataError:
            old = {}
    listed = old.get("files", []) if isinstance(old, dict) and isinstance(old.get("files"), list) else []
    owned = {f for f in listed if isinstance(f, str) and _inside(result_dir, f)}  # never a path outside it
    present = [f for f in files if (result_dir / f).exists()]
    foreign = [f for f in present if f not in owned]
    if foreign:
        raise SystemExit(f"{result_dir}: holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, "
                         "which test.py did not write; choose another --result_dir")
    stale = [f for f in owned if (result_dir / f).exists()]
    if stale and old.get("inputs") != inputs:
        if not overwrite:
            raise SystemExit(f"{result_dir} already holds results from other checkpoints or data. "
                             "Choose another --result_dir or pass --overwrite.")
        for f in stale:  # only what an earlier test.py listed as its own
            (result_dir / f).unlink(missing_ok=True)
        owned = set()
    atomic_write_json(path, {"inputs": inputs, "files": sorted(owned | set(files))})


def print_scores(title: str, s: dict) -> None:
    subj = "  ".join(f"{k} {v:.4f}" for k, v in s["per_subject"].items())
    extra = "" if "seen" not in s else f"  (seen {s['seen']}, held-out {s['heldout']})"
    print(f"{title}: total {s['total']:.4f}{extra}\n    {subj}")


def score_labels(cfg: dict, result: dict, ensemble: dict, per_seed: list, seeds: list, train_subjects: list) -> None:
    labels = read_challenge_labels(cfg["label_dir"])
    flat = lambda preds: {k: v for segs in preds.values() for k, v in segs.items()}  # noqa: E731
    matched = len(set(labels) & set(flat(ensemble)))
    if matched == 0:
        raise DataError(f"{cfg['label_dir']}: none of its {len(labels)} labels matches a predicted segment of "
                        f"{cfg['test_dir']}")
    if matched < len(labels):
        print(f"warning: {matched} of {len(labels)} labels match a predicted segment; the other "
              f"{len(labels) - matched} score 0, as the official rules do", flush=True)
    seen = train_subjects if cfg["seen_subjects"] == "auto" else cfg["seen_subjects"]
    result["ensemble"] = score(flat(ensemble), labels, seen)
    result["per_seed"] = {f"seed-{s}": score(flat(p), labels, seen) for s, p in zip(seeds, per_seed)}
    if len(seeds) > 1:
        for s, sc in result["per_seed"].items():
            print_scores(s, sc)
        singles = [sc["total"] for sc in result["per_seed"].values()]
        print(f"single seeds: mean {np.mean(singles):.4f} sd {np.std(singles, ddof=1):.4f} "
              f"(min {min(singles):.4f}, max {max(singles):.4f})")
    title = f"ensemble of {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
    print_scores(f"score ({title})", result["ensemble"])
    for sc in [result["ensemble"], *result["per_seed"].values()]:
        sc.pop("per_segment", None)


def test_set(cfg: dict, loaded, inputs: dict, result: dict, device) -> None:
    """Predict the challenge test set (and score it when labels exist)."""
    result_dir, test_dir = Path(cfg["result_dir"]), Path(cfg["test_dir"])
    data = read_test_set(test_dir, n_chans=loaded[0][1]["n_chans"])
    seeds = [ck["seed"] for _, ck in loaded]
    label_dir = Path(cfg["label_dir"]) if cfg["label_dir"] else None
    scored = label_dir is not None and label_dir.is_dir()
    files = [f"{s}.json" for s in data] + ([f"per_seed/seed-{k}/{s}.json" for k in seeds for s in data]
                                           if len(seeds) > 1 else []) + (["score.json"] if scored else [])
    claim_result_dir(result_dir, inputs, files, cfg["overwrite"])
    per_seed = []
    for model, ck in loaded:
        index = {s: i for i, s in enumerate(ck["subjects"])}
        per_seed.append({subj: predict_segments(model, segs, index.get(subj, -1), device) for subj, segs in data.items()})
    ensemble = {subj: {k: np.mean([p[subj][k] for p in per_seed], axis=0) for k in segs} for subj, segs in data.items()}
    if len(per_seed) > 1:
        for seed, preds in zip(seeds, per_seed):
            write_predictions(result_dir / "per_seed" / f"seed-{seed}", preds)
    write_predictions(result_dir, ensemble)
    print(f"wrote {len(ensemble)} prediction files ({sum(len(s) for s in data.values())} segments) to {result_dir}/")
    if not scored:
        print(f"no labels at {label_dir}: predictions written, not scored")
        return
    score_labels(cfg, result, ensemble, per_seed, seeds, loaded[0][1]["subjects"])
    atomic_write_json(result_dir / "score.json", {k: result[k] for k in ("model", "seeds", "checkpoints", "ensemble",
                                                                         "per_seed")})
    print(f"scores written to {result_dir / 'score.json'}")


def _main(argv) -> dict:
    t0 = time.time()
    cfg, given = config_module.parse_or_exit(argv, "test")
    runtime.set_threads(cfg["threads"])
    device = runtime.pick_device(cfg["device"])
    if cfg["checkpoint"]:  # one given file, e.g. the published VLAAI weights: no training run needed
        ckpts = [Path(cfg["checkpoint"])]
        loaded = [load_model(ckpts[0], device)]
        model_name = loaded[0][1]["model_name"]
        print(f"{model_name}: {ckpts[0]}", flush=True)
    else:
        model_name, ckpts = find_checkpoints(cfg, given)
        loaded = [load_model(p, device, model_name) for p in ckpts]
        print(f"{model_name}: {len(loaded)} seed(s) {[ck['seed'] for _, ck in loaded]} from {cfg['run_dir']}", flush=True)
    result: dict = {"model": model_name, "seeds": [ck["seed"] for _, ck in loaded], "checkpoints": [str(p) for p in ckpts]}
    check_result_dir(Path(cfg["result_dir"]), cfg)
    test_dir = Path(cfg["test_dir"]) if cfg["test_dir"] else None
    if test_dir is not None and not test_dir.is_dir() and "test_dir" in given:
        raise SystemExit(f"test_dir {test_dir} does not exist")
    if cfg["eval_dir"]:
        cfg["time_fold"] = eval_time_fold(cfg, given, loaded)
    # what this run reads: results in result_dir from other inputs are never mixed with its own
    inputs = {"checkpoints": {str(p.resolve()): sha256_file(p, 16) for p in ckpts}}
    if test_dir is not None and test_dir.is_dir():
        label_dir = Path(cfg["label_dir"]) if cfg["label_dir"] and Path(cfg["label_dir"]).is_dir() else None
        inputs.update(test_dir=str(test_dir.resolve()), label_dir=str(label_dir.resolve()) if label_dir else None)
    if cfg["eval_dir"]:
        inputs["eval"] = dict({k: cfg[k] for k in EVAL_KEYS}, eval_dir=str(Path(cfg["eval_dir"]).resolve()))
    if test_dir is not None and test_dir.is_dir():
        test_set(cfg, loaded, inputs, result, device)
    if cfg["eval_dir"]:
        claim_result_dir(Path(cfg["result_dir"]), inputs, ["eval_score.json"], cfg["overwrite"])
        result["eval"] = evaluate_folder(cfg, loaded, device)
        atomic_write_json(Path(cfg["result_dir"]) / "eval_score.json", result["eval"])
        print(f"scores written to {Path(cfg['result_dir']) / 'eval_score.json'}")
    if "ensemble" not in result and "eval" not in result and not (test_dir and test_dir.is_dir()):
        raise SystemExit(f"nothing to test: test_dir {test_dir} does not exist and no --eval_dir was given")
    print(run_time(ckpts, loaded, time.time() - t0))
    return result


def run_time(ckpts, loaded, test_s: float) -> str:
    """test.py's time, and the whole run's: the epochs each seed's log.csv records (all of them,
    not only those up to the kept best.pt), or its checkpoint's history when there is no log.
    An unreadable log only drops the training time: the predictions are already written."""
    rows = []
    try:
        for path, (_, ck) in zip(ckpts, loaded):
            log = Path(path).parent / "log.csv" if Path(path).name in ("best.pt", "last.pt") else None
            rows += (read_log(log) if log else []) or ck.get("history") or []
        train_s = epoch_seconds(rows)
    except (OSError, ValueError, csv.Error) as exc:
        return f"test.py: {test_s:.1f} s (training time unknown: {' '.join(str(exc).split())})"
    if not rows:
        return f"test.py: {test_s:.1f} s"
    return (f"time: training {train_s:.1f} s ({len(loaded)} seed(s), {len(rows)} epochs) + test.py {test_s:.1f} s "
            f"= {train_s + test_s:.1f} s")


def main(argv=None) -> dict:
    """Predict and score; a bad checkpoint, data file or disk error ends it with one line naming the file."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except (DataError, CheckpointError, FileError, config_module.ConfigError) as exc:
        raise SystemExit(f"error: {exc}") from exc


def eval_time_fold(cfg: dict, given: set, loaded) -> int:
    """The time fold to score: the runs' own (from their saved config) unless --time_fold is given.
    Scoring another fold than a model trained with would score speech it trained on."""
    folds = {ck["seed"]: int(ck["config"].get("time_fold", 0)) for _, ck in loaded}
    if "time_fold" in given:
        other = {s: f for s, f in folds.items() if f != cfg["time_fold"]}
        if other and cfg["split"] == "time":
            print(f"note: scoring time_fold {cfg['time_fold']}, but seeds {sorted(other)} trained with "
                  f"time_fold {sorted(set(other.values()))}: their test tenth differs from this one", flush=True)
        return cfg["time_fold"]
    if len(set(folds.values())) > 1:
        raise SystemExit(f"{cfg['run_dir']}: the seeds were trained with different time folds {folds}; "
                         "score them separately (--seeds=[...]) or pass --time_fold=K")
    return next(iter(folds.values()))


def _summarize(recs, data, preds, wpreds, win: int, hop: int) -> dict:
    """Recording r (and window r) per subject, then the mean over subjects."""
    def subject_means(values) -> dict:
        per_subject = mean_by_subject((rec.subject for rec in recs), values)
        return {"r": float(np.mean(list(per_subject.values()))), "per_subject": per_subject}

    out = subject_means([float(pearson(p, env[:, 0], dim=0)) for (_, env), p in zip(data, preds)])
    if wpreds:
        wr = [float(pearson(torch.from_numpy(w).double(), torch.from_numpy(env[:, 0]).unfold(0, win, hop).double(),
                            dim=1).mean()) for (_, env), w in zip(data, wpreds)]
        wins = subject_means(wr)
        out["window_r"], out["window_per_subject"] = wins["r"], wins["per_subject"]
    return out


def evaluate_folder(cfg: dict, loaded, device) -> dict:
    """Score the test split of a labelled folder (any format EEG_Dataset reads), for each seed and
    for the ensemble: Pearson r of each whole test part, mean per subject, then over subjects."""
    cfg = dict(cfg, time_fold=cfg["time_fold"] if cfg["split"] == "time" else 0)
    corpus = corpus_from_config(cfg, folder=cfg["eval_dir"], n_chans=loaded[0][1]["n_chans"])
    recs = [r for r in corpus.with_part("test") if r.parts["test"][1] is not None]
    if not recs:
        raise SystemExit(f"{cfg['eval_dir']}: no labelled test part to evaluate")
    data = [rec.get("test") for rec in recs]
    win, hop = int(round(cfg["eval_window_s"] * cfg["fs"])), max(1, int(round(cfg["eval_hop_s"] * cfg["fs"])))
    per_seed, per_seed_win = [], []  # z-scored predictions of whole recordings / of each window
    for model, ck in loaded:
        index = {s: i for i, s in enumerate(ck["subjects"])}
        preds, wpreds = [], []
        for rec, (eeg, _) in zip(recs, data):
            preds.append(zscore_prediction(predict(model, eeg, index.get(rec.subject, -1), device)).numpy())
            if win > 0 and len(eeg) >= win:  # each window predicted on its own, as a model sees a 5 s test window
                xw = torch.from_numpy(eeg).unfold(0, win, hop).transpose(1, 2)  # (n_windows, win, C)
                wpreds.append(zscore_prediction(predict(model, xw, index.get(rec.subject, -1), device), dim=1).numpy())
        per_seed.append(preds)
        per_seed_win.append(wpreds)
    ens_win = [np.mean(ws, axis=0) for ws in zip(*per_seed_win)] if per_seed_win[0] else []
    out = {"eval_dir": str(cfg["eval_dir"]), "n_recordings": len(recs), "split": cfg["split"],
           "time_fold": cfg["time_fold"] if cfg["split"] == "time" else None, "window_s": cfg["eval_window_s"],
           "hop_s": cfg["eval_hop_s"],
           "per_seed": {f"seed-{ck['seed']}": _summarize(recs, data, p, w, win, hop)
                        for (_, ck), p, w in zip(loaded, per_seed, per_seed_win)},
           "ensemble": _summarize(recs, data, [np.mean(ps, axis=0) for ps in zip(*per_seed)], ens_win, win, hop)}
    for s, sc in [*out["per_seed"].items(), (f"ensemble of {len(loaded)}", out["ensemble"])]:
        wtxt = f"  {cfg['eval_window_s']:g} s window r {sc['window_r']:.4f}" if "window_r" in sc else ""
        print(f"eval {s}: recording r {sc['r']:.4f}{wtxt}")
    print("    " + "  ".join(f"{k} {v:.4f}" for k, v in out["ensemble"]["per_subject"].items()))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
