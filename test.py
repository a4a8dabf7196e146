"""Predict the challenge test set with trained models, write per-subject predictions, and score.

    python test.py                                     # the demo: runs/<model>/seed-*/best.pt
    python test.py --run_dir=runs --model=vlaai --seeds=[1,2]
    python test.py --test_dir=DIR --label_dir=LABELS --result_dir=OUT
    python test.py --eval_dir=../shared/data/dtu       # also score a labelled folder's test split

Loads ``best.pt`` of every seed in ``run_dir/<model>/`` (or the ``--seeds`` given), z-scores each
test segment per channel (as the reference inference does), predicts it with every seed and
averages the seeds' z-scored predictions into an ensemble. Writes ``result_dir/sub-XXX.json``
({segment_id: [floats]}) for the ensemble and ``result_dir/per_seed/seed-N/`` for each seed.
When ``label_dir`` exists, scores them with the official rules, prints per-subject scores and
the total, also for each seed alone, and writes ``result_dir/score.json``.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

import config as config_module
from EEG_Dataset import (DataError, atomic_write_json, load_corpus, mean_by_subject, read_challenge_labels,
                         read_test_set, score, write_predictions, zscore)
from metrics import pearson
from train import load_model, pick_device

MANIFEST = "manifest.json"


def find_checkpoints(cfg: dict, given: set) -> tuple[str, list[Path]]:
    """The best.pt files to use: (model name, paths), or exit with a hint on how to train."""
    run_dir = Path(cfg["run_dir"])
    hint = (f"Train one first, e.g.  python train.py --run_dir={run_dir}"
            + (f" --model={cfg['model']}" if "model" in given else "") + "  (see README)")
    if not run_dir.is_dir():
        raise SystemExit(f"no trained model: {run_dir} does not exist. {hint}")
    models = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and any(p.glob("seed-*/best.pt")))
    if "model" in given or len(models) != 1:
        model = cfg["model"]
        if model not in models:
            found = f" It holds: {', '.join(models)}; choose one with --model=NAME." if models else ""
            raise SystemExit(f"no trained '{model}' model in {run_dir}.{found} {hint}")
    else:
        model = models[0]
    seed_dirs = sorted((run_dir / model).glob("seed-*"), key=lambda p: int(p.name.split("-", 1)[1]))
    if "seeds" in given:
        wanted = {f"seed-{s}" for s in cfg["seeds"]}
        missing = wanted - {p.name for p in seed_dirs}
        if missing:
            raise SystemExit(f"{run_dir / model}: no run for {', '.join(sorted(missing))}. {hint}")
        seed_dirs = [p for p in seed_dirs if p.name in wanted]
    paths = [p / "best.pt" for p in seed_dirs if (p / "best.pt").exists()]
    if not paths:
        raise SystemExit(f"no best.pt under {run_dir / model}. {hint}")
    return model, paths


@torch.no_grad()
def predict_segments(model, segments: dict, subject_idx: int, device) -> dict:
    """{segment_id: eeg (T, C)} -> {segment_id: z-scored prediction (T,)}."""
    out = {}
    for key, eeg in segments.items():
        x = torch.from_numpy(zscore(eeg))[None].to(device)
        y = model(x, subject=torch.tensor([subject_idx], device=device)).float().cpu().numpy()[0, :, 0]
        out[key] = (y - y.mean()) / (y.std() + 1e-12)  # equal weight per seed in the ensemble
    return out


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def claim_result_dir(result_dir: Path, manifest: dict, overwrite: bool) -> None:
    """Never replace another run's predictions: a result folder written from other checkpoints
    or another test set is only replaced with --overwrite."""
    old = result_dir / MANIFEST
    has_files = result_dir.is_dir() and any(result_dir.glob("sub-*.json"))
    if not has_files:
        return
    if overwrite:  # replace: no stale subject files, per-seed folders or scores of the old run stay behind
        for p in [*result_dir.glob("sub-*.json"), *result_dir.glob("per_seed/seed-*/sub-*.json"),
                  result_dir / "score.json", old]:
            p.unlink(missing_ok=True)
        return
    try:
        same = json.loads(old.read_text()) == manifest
    except (OSError, json.JSONDecodeError):
        same = False
    if not same:
        raise SystemExit(f"{result_dir} already holds predictions from other checkpoints or another test set. "
                         "Choose another --result_dir or pass --overwrite.")


def print_scores(title: str, s: dict) -> None:
    subj = "  ".join(f"{k} {v:.4f}" for k, v in s["per_subject"].items())
    extra = "" if "seen" not in s else f"  (seen {s['seen']}, held-out {s['heldout']})"
    print(f"{title}: total {s['total']:.4f}{extra}\n    {subj}")


def main(argv=None) -> dict:
    cfg, given = config_module.parse_or_exit(argv)
    device = pick_device(cfg["device"])
    model_name, ckpts = find_checkpoints(cfg, given)
    loaded = [load_model(p, device) for p in ckpts]
    seeds = [ck["seed"] for _, ck in loaded]
    n_chans = loaded[0][1]["n_chans"]
    train_subjects = loaded[0][1]["subjects"]
    print(f"{model_name}: {len(loaded)} seed(s) {seeds} from {cfg['run_dir']}", flush=True)
    result: dict = {"model": model_name, "seeds": seeds, "checkpoints": [str(p) for p in ckpts]}

    result_dir = Path(cfg["result_dir"])
    test_dir = Path(cfg["test_dir"]) if cfg["test_dir"] else None
    if test_dir is not None and test_dir.is_dir():
        try:
            test_set = read_test_set(test_dir, n_chans=n_chans)
        except DataError as exc:
            raise SystemExit(f"test data error: {exc}") from exc
        manifest = {"test_dir": str(test_dir.resolve()), "checkpoints": {str(p): file_digest(p) for p in ckpts}}
        claim_result_dir(result_dir, manifest, cfg["overwrite"])
        per_seed = []
        for model, ck in loaded:
            index = {s: i for i, s in enumerate(ck["subjects"])}
            per_seed.append({subj: predict_segments(model, segs, index.get(subj, -1), device)
                             for subj, segs in test_set.items()})
        ensemble = {subj: {k: np.mean([p[subj][k] for p in per_seed], axis=0) for k in segs}
                    for subj, segs in test_set.items()}
        if len(per_seed) > 1:
            for seed, preds in zip(seeds, per_seed):
                write_predictions(result_dir / "per_seed" / f"seed-{seed}", preds)
        write_predictions(result_dir, ensemble)
        atomic_write_json(result_dir / MANIFEST, manifest)
        n_seg = sum(len(s) for s in test_set.values())
        print(f"wrote {len(ensemble)} prediction files ({n_seg} segments) to {result_dir}/", flush=True)

        label_dir = Path(cfg["label_dir"]) if cfg["label_dir"] else None
        if label_dir is not None and label_dir.is_dir():
            try:
                labels = read_challenge_labels(label_dir)
            except DataError as exc:
                raise SystemExit(f"label data error: {exc}") from exc
            seen = train_subjects if cfg["seen_subjects"] == "auto" else cfg["seen_subjects"]
            flat = lambda preds: {k: v for segs in preds.values() for k, v in segs.items()}  # noqa: E731
            result["ensemble"] = score(flat(ensemble), labels, seen)
            result["per_seed"] = {f"seed-{s}": score(flat(p), labels, seen) for s, p in zip(seeds, per_seed)}
            if len(seeds) > 1:
                for s, sc in result["per_seed"].items():
                    print_scores(f"{s}", sc)
            singles = [sc["total"] for sc in result["per_seed"].values()]
            if len(singles) > 1:
                print(f"single seeds: mean {np.mean(singles):.4f} sd {np.std(singles, ddof=1):.4f} "
                      f"(min {min(singles):.4f}, max {max(singles):.4f})")
            print_scores(f"score ({'ensemble of ' + str(len(seeds)) + ' seeds' if len(seeds) > 1 else 'seed ' + str(seeds[0])})",
                         result["ensemble"])
            for sc in [result["ensemble"], *result["per_seed"].values()]:
                sc.pop("per_segment", None)
            atomic_write_json(result_dir / "score.json", result)
            print(f"scores written to {result_dir / 'score.json'}")
        else:
            print(f"no labels at {label_dir}: predictions written, not scored")
    elif test_dir is not None and "test_dir" in given:
        raise SystemExit(f"test_dir {test_dir} does not exist")

    if cfg["eval_dir"]:
        cfg["time_fold"] = eval_time_fold(cfg, given, loaded)
        result["eval"] = evaluate_folder(cfg, loaded, device)
        atomic_write_json(result_dir / "eval_score.json", result["eval"])
        print(f"scores written to {result_dir / 'eval_score.json'}")
    if "ensemble" not in result and "eval" not in result and not (test_dir and test_dir.is_dir()):
        raise SystemExit(f"nothing to test: test_dir {test_dir} does not exist and no --eval_dir was given")
    return result


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


def evaluate_folder(cfg: dict, loaded, device) -> dict:
    """Score the test split of a labelled folder (any format EEG_Dataset reads), for each seed and
    for the ensemble: Pearson r of each whole test part, mean per subject, then over subjects."""
    try:
        corpus = load_corpus(cfg["eval_dir"], subjects=cfg["subjects"], exclude_subjects=cfg["exclude_subjects"],
                             val_recordings=cfg["val_recordings"], test_recordings=cfg["test_recordings"],
                             split=cfg["split"], time_fold=cfg["time_fold"] if cfg["split"] == "time" else 0,
                             n_chans=loaded[0][1]["n_chans"])
    except DataError as exc:
        raise SystemExit(f"eval data error: {exc}") from exc
    recs = [r for r in corpus.with_part("test") if r.parts["test"][1] is not None]
    if not recs:
        raise SystemExit(f"{cfg['eval_dir']}: no labelled test part to evaluate")
    data = [rec.get("test") for rec in recs]
    win, hop = int(round(cfg["eval_window_s"] * cfg["fs"])), max(1, int(round(cfg["eval_hop_s"] * cfg["fs"])))
    per_seed, per_seed_win = [], []  # z-scored predictions of whole recordings / of each window
    with torch.no_grad():
        for model, ck in loaded:
            index = {s: i for i, s in enumerate(ck["subjects"])}
            preds, wpreds = [], []
            for rec, (eeg, _) in zip(recs, data):
                subj = torch.tensor([index.get(rec.subject, -1)], device=device)
                x = torch.from_numpy(eeg).to(device)
                y = model(x[None], subject=subj).float()[0, :, 0]
                preds.append(((y - y.mean()) / (y.std() + 1e-12)).cpu().numpy())
                if win > 0 and len(eeg) >= win:
                    # each window is predicted on its own, as a model sees a 5 s test window
                    xw = x.unfold(0, win, hop).transpose(1, 2)  # (n_windows, win, C)
                    yw = model(xw, subject=subj.expand(len(xw))).float()[:, :, 0]
                    wpreds.append(((yw - yw.mean(1, keepdim=True)) / (yw.std(1, keepdim=True) + 1e-12)).cpu().numpy())
            per_seed.append(preds)
            per_seed_win.append(wpreds)

    def subject_means(values) -> dict:
        per_subject = mean_by_subject((rec.subject for rec in recs), values)
        return {"r": float(np.mean(list(per_subject.values()))), "per_subject": per_subject}

    def summarize(preds, wpreds) -> dict:
        out = subject_means([float(pearson(p, env[:, 0], dim=0)) for (_, env), p in zip(data, preds)])
        if wpreds:
            wr = []
            for (_, env), w in zip(data, wpreds):
                lab = torch.from_numpy(env[:, 0]).unfold(0, win, hop).double()
                wr.append(float(pearson(torch.from_numpy(w).double(), lab, dim=1).mean()))
            wins = subject_means(wr)
            out["window_r"], out["window_per_subject"] = wins["r"], wins["per_subject"]
        return out

    ens_win = [np.mean(ws, axis=0) for ws in zip(*per_seed_win)] if per_seed_win[0] else []
    out = {"eval_dir": str(cfg["eval_dir"]), "n_recordings": len(recs), "split": cfg["split"],
           "time_fold": cfg["time_fold"] if cfg["split"] == "time" else None, "window_s": cfg["eval_window_s"],
           "hop_s": cfg["eval_hop_s"],
           "per_seed": {f"seed-{ck['seed']}": summarize(p, w) for (_, ck), p, w in zip(loaded, per_seed, per_seed_win)},
           "ensemble": summarize([np.mean(ps, axis=0) for ps in zip(*per_seed)], ens_win)}
    for s, sc in [*out["per_seed"].items(), (f"ensemble of {len(loaded)}", out["ensemble"])]:
        wtxt = f"  {cfg['eval_window_s']:g} s window r {sc['window_r']:.4f}" if "window_r" in sc else ""
        print(f"eval {s}: recording r {sc['r']:.4f}{wtxt}")
    print("    " + "  ".join(f"{k} {v:.4f}" for k, v in out["ensemble"]["per_subject"].items()))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
