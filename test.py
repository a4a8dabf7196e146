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
the total with its chance level, also for each seed alone, the match-mismatch accuracy, and
writes ``result_dir/score.json`` and ``score.png``. Everything is checked before any output is
touched; ``result_dir`` is locked while it is written, the new files are built in a staging
folder and committed together (outputs.py), and ``result_dir/manifest.json`` lists them:
``--overwrite`` removes only files listed there, and only once the new set is complete.
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

import cli
import runtime
import significance
from challenge import (
    mean_by_subject,
    read_challenge_labels,
    read_test_set,
    score,
    segment_subject,
    write_predictions,
    zscore,
)
from checkpoint import CheckpointError, load_checkpoint, load_model
from evaluation import predict, zscore_prediction
from fileio import FileError, atomic_write_json, read_json, sha256_file
from metrics import pearson
from outputs import FolderLock, OutputError, Staging, inside, recover
from recording import DataError
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
    seed_dirs = sorted((p for p in (run_dir / model).glob("seed-*") if p.name[5:].isdigit()),
                       key=lambda p: int(p.name[5:]))
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


def predict_segments(model, segments: dict, subject_idx: int, device, amp: str = "none") -> dict:
    """{segment_id: eeg (T, C)} -> {segment_id: z-scored prediction (T,)}."""
    return {key: zscore_prediction(predict(model, zscore(eeg), subject_idx, device, amp).float().numpy())
            for key, eeg in segments.items()}


def check_result_dir(result_dir: Path, cfg: dict, ckpts: list[Path]) -> None:
    """result_dir may not be, hold or sit inside a folder test.py reads (the data, the labels, a
    seed folder whose checkpoint it loads)."""
    res = result_dir.resolve()
    reads = [(key, Path(cfg[key])) for key in ("test_dir", "label_dir", "eval_dir") if cfg.get(key)]
    reads += [("the checkpoint folder", p.parent) for p in ckpts]
    for key, src in reads:
        if src.exists():
            src = src.resolve()
            if res == src or src in res.parents or res in src.parents:
                raise SystemExit(f"result_dir {result_dir} and {key} {src} overlap: predictions would be written "
                                 "among the inputs; choose another --result_dir")


def plan_result_dir(result_dir: Path, inputs: dict, files: list[str], overwrite: bool) -> tuple[list[str], list[str]]:
    """Never replace another run's results, nor a file test.py did not write: decide before any
    prediction what the commit will do. ``files`` (relative to result_dir) are about to be
    written from ``inputs``. Returns (old files the commit removes, every file the new manifest
    lists): the same inputs add to the folder; other inputs replace it with --overwrite only."""
    path = result_dir / MANIFEST
    old = {}
    if path.is_file():
        try:
            old = read_json(path, error=DataError)
        except DataError:
            old = {}
    listed = old.get("files", []) if isinstance(old, dict) and isinstance(old.get("files"), list) else []
    owned = {f for f in listed if isinstance(f, str) and inside(result_dir, f)}  # never a path outside it
    foreign = [f for f in files if (result_dir / f).exists() and f not in owned]
    if foreign:
        raise SystemExit(f"{result_dir}: holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, "
                         "which test.py did not write; choose another --result_dir")
    present = {f for f in owned if (result_dir / f).exists()}
    if present and old.get("inputs") != inputs:
        if not overwrite:
            raise SystemExit(f"{result_dir} already holds results from other checkpoints or data. "
                             "Choose another --result_dir or pass --overwrite.")
        return sorted(present - set(files)), sorted(files)  # replaced once the new set is complete
    return [], sorted(present | set(files))


def print_scores(title: str, s: dict) -> None:
    subj = "  ".join(f"{k} {v:.4f}" for k, v in s["per_subject"].items())
    extra = "" if "seen" not in s else f"  (seen {s['seen']}, held-out {s['heldout']})"
    total = (significance.format_chance(s["total"], s["chance"]) if isinstance(s.get("chance"), dict)
             and "p_value" in s["chance"] else f"total {s['total']:.4f}")
    mm = s.get("match_mismatch")
    mm_txt = (f"\n    match-mismatch ({mm['candidates']} candidates, {mm['window_s']:g} s): accuracy "
              f"{mm['accuracy']:.3f} over {mm['n_windows']} windows (chance {mm['chance']:.2f})"
              if isinstance(mm, dict) and "accuracy" in mm else "")
    print(f"{title}: {total}{extra}\n    {subj}{mm_txt}")


def chance_and_match(preds: list, envs: list, groups: list, names: list, cfg: dict, seen=None) -> dict:
    """The score's chance level and the match-mismatch accuracy of one set of predictions, as
    score dict entries: {'chance': ..., 'match_mismatch': ...}; a part that cannot be computed
    (segments too short) gets {'error': why}."""
    out = {}
    if cfg["chance_draws"] > 0:
        try:
            null = significance.null_scores(preds, envs, groups, n=cfg["chance_draws"], seed=0, fs=cfg["fs"],
                                            min_shift_s=cfg["chance_min_shift_s"], names=names, seen_subjects=seen)
            out["chance"] = significance.chance(null["observed"]["total"], null["observed"]["per_subject"],
                                                null["total"], null["per_subject"], null["method"])
        except ValueError as exc:
            out["chance"] = {"error": str(exc)}
    try:
        out["match_mismatch"] = significance.match_mismatch(preds, envs, groups, window_s=cfg["mm_window_s"],
                                                            fs=cfg["fs"], candidates=5, seed=0)
    except ValueError as exc:
        out["match_mismatch"] = {"error": str(exc)}
    return out


def aligned(preds: dict, labels: dict) -> tuple[list, list, list, list]:
    """(predictions, envelopes, subjects, segment ids) per label, each prediction zero-padded or cut
    to its label's length (a missing one all zeros), as the official scoring treats them."""
    p_out, e_out, groups, names = [], [], [], []
    for key, lab in labels.items():
        lab = np.asarray(lab, dtype=np.float64).reshape(-1)
        pred = np.asarray(preds.get(key, np.zeros(0)), dtype=np.float64).reshape(-1)[: len(lab)]
        p_out.append(np.pad(pred, (0, len(lab) - len(pred))))
        e_out.append(lab)
        groups.append(segment_subject(key))
        names.append(key)
    return p_out, e_out, groups, names


def score_labels(cfg: dict, result: dict, ensemble: dict, per_seed: list, seeds: list, train_subjects: list) -> dict:
    """Score the ensemble and each seed against the labels: {name: (predictions, envelopes)} of
    the ensemble's best and median subject for the figure."""
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

    def scored(preds: dict) -> dict:
        sc = score(flat(preds), labels, seen)
        sc.update(chance_and_match(*aligned(flat(preds), labels), cfg, seen))
        return sc

    result["ensemble"] = scored(ensemble)
    result["per_seed"] = {f"seed-{s}": scored(p) for s, p in zip(seeds, per_seed, strict=True)}
    if len(seeds) > 1:
        for s, sc in result["per_seed"].items():
            print_scores(s, sc)
        singles = [sc["total"] for sc in result["per_seed"].values()]
        print(f"single seeds: mean {np.mean(singles):.4f} sd {np.std(singles, ddof=1):.4f} "
              f"(min {min(singles):.4f}, max {max(singles):.4f})")
    title = f"ensemble of {len(seeds)} seeds" if len(seeds) > 1 else f"seed {seeds[0]}"
    print_scores(f"score ({title})", result["ensemble"])
    traces = trace_pairs(result["ensemble"], flat(ensemble), labels, cfg["fs"])
    for sc in [result["ensemble"], *result["per_seed"].values()]:
        sc.pop("per_segment", None)
    return traces


def trace_pairs(sc: dict, preds: dict, labels: dict, fs: int) -> list:
    """(title, prediction, envelope, fs) of the best and the median subject's first segment."""
    ranked = sorted(sc["per_subject"], key=sc["per_subject"].get)
    out = []
    for what, subj in (("best", ranked[-1]), ("median", ranked[len(ranked) // 2])):
        key = next((k for k in labels if segment_subject(k) == subj and k in preds), None)
        if key is not None:
            lab = np.asarray(labels[key], dtype=np.float64).reshape(-1)
            out.append((f"{what} subject {subj}, segment {key}",
                        np.asarray(preds[key]).reshape(-1)[: len(lab)], lab, fs))
    return out


def draw_score(path: Path, sc: dict, traces: list, title: str) -> None:
    """score.png beside the scores; a missing matplotlib costs the picture only."""
    try:
        import figures

        figures.score_figure(path, sc["per_subject"], sc["total"],
                             sc["chance"] if "p_value" in sc.get("chance", {}) else None, traces, title=title)
    except ImportError:
        print("matplotlib not installed: no score figure", flush=True)


def predict_test_set(loaded, data: dict, device) -> tuple[dict, list]:
    """(ensemble, per-seed predictions) {subject: {segment_id: (T,)}} of the challenge test set."""
    per_seed = []
    for model, ck in loaded:
        index = {s: i for i, s in enumerate(ck["subjects"])}
        per_seed.append({subj: predict_segments(model, segs, index.get(subj, -1), device, ck["infer_amp"])
                         for subj, segs in data.items()})
    ensemble = {subj: {k: np.mean([p[subj][k] for p in per_seed], axis=0) for k in segs} for subj, segs in data.items()}
    return ensemble, per_seed


def test_set(cfg: dict, loaded, data: dict, result: dict, device, stage: Staging) -> None:
    """Predict the challenge test set into the staging folder (and score it when labels exist)."""
    seeds = [ck["seed"] for _, ck in loaded]
    ensemble, per_seed = predict_test_set(loaded, data, device)
    if len(per_seed) > 1:
        for seed, preds in zip(seeds, per_seed, strict=True):
            write_predictions(stage.path(f"per_seed/seed-{seed}/x").parent, preds)
    write_predictions(stage.path("x").parent, ensemble)
    print(f"predicted {len(ensemble)} subjects ({sum(len(s) for s in data.values())} segments)")
    if not cfg["_scored"]:
        print(f"no labels at {cfg['label_dir']}: predictions written, not scored")
        return
    traces = score_labels(cfg, result, ensemble, per_seed, seeds, loaded[0][1]["subjects"])
    atomic_write_json(stage.path("score.json"), {k: result[k] for k in ("model", "seeds", "checkpoints", "ensemble",
                                                                        "per_seed")})
    draw_score(stage.path("score.png"), result["ensemble"], traces, f"{result['model']}, seeds {seeds}")


def check_loaded(ckpts: list[Path], loaded: list, cfg: dict, given: set) -> None:
    """The checkpoints fit together and with their folders: each seed folder holds its own seed,
    every model reads the same channels; an unfinished run is scored with a note."""
    seeds = {}
    for path, (_, ck) in zip(ckpts, loaded, strict=True):
        folder = path.parent.name
        if folder.startswith("seed-") and folder[5:].isdigit() and int(folder[5:]) != ck["seed"]:
            raise SystemExit(f"{path}: holds seed {ck['seed']}, but sits in {folder}; move it to seed-{ck['seed']}")
        if ck["seed"] in seeds:
            raise SystemExit(f"{path} and {seeds[ck['seed']]}: both hold seed {ck['seed']}")
        seeds[ck["seed"]] = path
        last = path.parent / "last.pt"
        if path.name == "best.pt" and last.is_file():
            try:
                lk = load_checkpoint(last)
            except CheckpointError:  # a damaged last.pt only costs this note
                lk = {}
            if isinstance(lk, dict) and lk.get("history") and not lk.get("finished"):
                print(f"note: {path.parent} is an unfinished run (stopped after epoch {lk.get('epoch')} of "
                      f"{lk.get('config', {}).get('epochs')}); its best.pt is scored as it is", flush=True)
    chans = {ck["seed"]: ck["n_chans"] for _, ck in loaded}
    if len(set(chans.values())) > 1:
        raise SystemExit(f"{cfg['run_dir']}: the seeds read different EEG channel counts {chans}; "
                         "score them separately with --seeds=[...]")


def _main(argv) -> dict:
    t0 = time.time()
    cfg, given = cli.parse_or_exit(argv, "test")
    runtime.set_threads(cfg["threads"])
    device = runtime.pick_device(cfg["device"])
    # ---- check everything first: nothing below this block is written before it passes
    if cfg["checkpoint"]:  # one given file, e.g. the published VLAAI weights: no training run needed
        for key in ("model", "seeds", "run_dir"):
            if key in given:
                raise SystemExit(f"--{key} has no effect with --checkpoint (the file says which model and seed it "
                                 "holds); drop one of them")
        ckpts = [Path(cfg["checkpoint"])]
        loaded = [load_model(ckpts[0], device)]
        model_name = loaded[0][1]["model_name"]
        print(f"{model_name}: {ckpts[0]}", flush=True)
    else:
        model_name, ckpts = find_checkpoints(cfg, given)
        loaded = [load_model(p, device, model_name) for p in ckpts]
        check_loaded(ckpts, loaded, cfg, given)
        print(f"{model_name}: {len(loaded)} seed(s) {[ck['seed'] for _, ck in loaded]} from {cfg['run_dir']}",
              flush=True)
    for _, ck in loaded:  # each model infers in the precision it trained in, unless --amp says otherwise
        ck["infer_amp"] = runtime.resolve_amp(cfg["amp"] if "amp" in given else ck.get("precision", "none"), device)[0]
    if any(ck["infer_amp"] == "bf16" for _, ck in loaded):
        which = ", ".join(f"seed {ck['seed']} {runtime.precision_name(ck['infer_amp'])}" for _, ck in loaded)
        print(f"inference precision: {which}", flush=True)
    result: dict = {"model": model_name, "seeds": [ck["seed"] for _, ck in loaded],
                    "checkpoints": [str(p) for p in ckpts]}
    result_dir = Path(cfg["result_dir"])
    check_result_dir(result_dir, cfg, ckpts)
    test_dir = Path(cfg["test_dir"]) if cfg["test_dir"] else None
    if test_dir is not None and not test_dir.is_dir() and "test_dir" in given:
        raise SystemExit(f"test_dir {test_dir} does not exist")
    label_dir = Path(cfg["label_dir"]) if cfg["label_dir"] else None
    if label_dir is not None and not label_dir.is_dir() and "label_dir" in given:
        raise SystemExit(f"label_dir {label_dir} does not exist: nothing could be scored")
    if cfg["eval_dir"]:
        cfg["time_fold"] = eval_time_fold(cfg, given, loaded)
    has_test = test_dir is not None and test_dir.is_dir()
    if not has_test and not cfg["eval_dir"]:
        raise SystemExit(f"nothing to test: test_dir {test_dir} does not exist and no --eval_dir was given")
    cfg["_scored"] = has_test and label_dir is not None and label_dir.is_dir()
    data = read_test_set(test_dir, n_chans=loaded[0][1]["n_chans"]) if has_test else {}
    # what this run reads: results in result_dir from other inputs are never mixed with its own
    inputs = {"checkpoints": {str(p.resolve()): sha256_file(p, 16) for p in ckpts}}
    files = []
    if has_test:
        inputs.update(test_dir=str(test_dir.resolve()), label_dir=str(label_dir.resolve()) if cfg["_scored"] else None)
        multi = len(loaded) > 1
        files += [f"{s}.json" for s in data] + ([f"per_seed/seed-{ck['seed']}/{s}.json" for _, ck in loaded
                                                 for s in data] if multi else [])
        files += ["score.json", "score.png"] if cfg["_scored"] else []
    if cfg["eval_dir"]:
        inputs["eval"] = dict({k: cfg[k] for k in EVAL_KEYS}, eval_dir=str(Path(cfg["eval_dir"]).resolve()))
        files += ["eval_score.json", "eval_score.png"]
    # ---- then write: one writer per result_dir, the new set built aside and committed whole
    try:
        with FolderLock(result_dir, busy="writing results into this folder",
                        hint="wait for it or choose another --result_dir"):
            recover(result_dir)  # a commit a killed test.py left half done
            remove, listed = plan_result_dir(result_dir, inputs, files, cfg["overwrite"])
            with Staging(result_dir) as stage:
                if has_test:
                    test_set(cfg, loaded, data, result, device, stage)
                if cfg["eval_dir"]:
                    result["eval"] = evaluate_folder(cfg, loaded, device, stage)
                    atomic_write_json(stage.path("eval_score.json"), result["eval"])
                written = stage.files()
                listed = sorted(set(listed) - (set(files) - set(written)))  # e.g. no png without matplotlib
                stage.commit(remove=remove, manifest_name=MANIFEST, manifest={"inputs": inputs, "files": listed})
    except OutputError as exc:
        raise SystemExit(str(exc)) from exc
    if remove:
        print(f"--overwrite: replaced {len(remove)} earlier file(s) in {result_dir}")
    print(f"results written to {result_dir}/: {', '.join(w for w in written if '/' not in w)}")
    print(run_time(ckpts, loaded, time.time() - t0))
    return result


def run_time(ckpts, loaded, test_s: float) -> str:
    """test.py's time, and the whole run's: the epochs each seed's log.csv records (all of them,
    not only those up to the kept best.pt), or its checkpoint's history when there is no log.
    An unreadable log only drops the training time: the predictions are already written."""
    rows = []
    try:
        for path, (_, ck) in zip(ckpts, loaded, strict=True):
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
    except (DataError, CheckpointError, FileError, cli.ConfigError) as exc:
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


def _summarize(recs, data, preds, wpreds, win: int, hop: int, cfg: dict) -> dict:
    """Recording r (and window r) per subject, then the mean over subjects; the chance level of
    the recording r and the match-mismatch accuracy."""
    def subject_means(subjects, values) -> dict:
        per_subject = mean_by_subject(subjects, values)
        return {"r": float(np.mean(list(per_subject.values()))), "per_subject": per_subject}

    out = subject_means([rec.subject for rec in recs],
                        [float(pearson(p, env[:, 0], dim=0)) for (_, env), p in zip(data, preds, strict=True)])
    out.update(chance_and_match([np.asarray(p, dtype=np.float64) for p in preds],
                                [env[:, 0].astype(np.float64) for _, env in data], [rec.subject for rec in recs],
                                [rec.rec_id for rec in recs], cfg))
    if wpreds:
        # only the recordings at least one window long have window predictions (see evaluate_folder)
        windowed = [(rec, env) for rec, (eeg, env) in zip(recs, data, strict=True) if len(eeg) >= win]
        wr = [float(pearson(torch.from_numpy(w).double(), torch.from_numpy(env[:, 0]).unfold(0, win, hop).double(),
                            dim=1).mean()) for (_, env), w in zip(windowed, wpreds, strict=True)]
        wins = subject_means([rec.subject for rec, _ in windowed], wr)
        out["window_r"], out["window_per_subject"] = wins["r"], wins["per_subject"]
    return out


def evaluate_folder(cfg: dict, loaded, device, stage: Staging) -> dict:
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
        for rec, (eeg, _) in zip(recs, data, strict=True):
            preds.append(zscore_prediction(predict(model, eeg, index.get(rec.subject, -1), device,
                                                   ck["infer_amp"]).float()).numpy())
            if win > 0 and len(eeg) >= win:  # each window predicted on its own, as a model sees a 5 s test window
                xw = torch.from_numpy(eeg).unfold(0, win, hop).transpose(1, 2)  # (n_windows, win, C)
                wpreds.append(zscore_prediction(predict(model, xw, index.get(rec.subject, -1), device, ck["infer_amp"])
                                                .float(), dim=1).numpy())
        per_seed.append(preds)
        per_seed_win.append(wpreds)
    ens_win = [np.mean(ws, axis=0) for ws in zip(*per_seed_win, strict=True)] if per_seed_win[0] else []
    out = {"eval_dir": str(cfg["eval_dir"]), "n_recordings": len(recs), "split": cfg["split"],
           "time_fold": cfg["time_fold"] if cfg["split"] == "time" else None, "window_s": cfg["eval_window_s"],
           "hop_s": cfg["eval_hop_s"],
           "per_seed": {f"seed-{ck['seed']}": _summarize(recs, data, p, w, win, hop, cfg)
                        for (_, ck), p, w in zip(loaded, per_seed, per_seed_win, strict=True)},
           "ensemble": _summarize(recs, data, ens := [np.mean(ps, axis=0) for ps in zip(*per_seed, strict=True)],
                                  ens_win, win, hop, cfg)}
    for s, sc in [*out["per_seed"].items(), (f"ensemble of {len(loaded)}", out["ensemble"])]:
        wtxt = f"  {cfg['eval_window_s']:g} s window r {sc['window_r']:.4f}" if "window_r" in sc else ""
        ch = sc.get("chance", {})
        rtxt = (significance.format_chance(sc["r"], ch, "recording r") if "p_value" in ch
                else f"recording r {sc['r']:.4f}")
        mm = sc.get("match_mismatch", {})
        mtxt = f"  match-mismatch {mm['accuracy']:.3f} (chance 0.20)" if "accuracy" in mm else ""
        print(f"eval {s}: {rtxt}{wtxt}{mtxt}")
    print("    " + "  ".join(f"{k} {v:.4f}" for k, v in out["ensemble"]["per_subject"].items()))
    traces = []
    ranked = sorted(out["ensemble"]["per_subject"], key=out["ensemble"]["per_subject"].get)
    for what, subj in (("best", ranked[-1]), ("median", ranked[len(ranked) // 2])):
        i = next(i for i, rec in enumerate(recs) if rec.subject == subj)
        traces.append((f"{what} subject {subj}, {recs[i].rec_id}", ens[i],
                       data[i][1][:, 0], cfg["fs"]))
    draw_score(stage.path("eval_score.png"), dict(out["ensemble"], total=out["ensemble"]["r"]), traces,
               f"{loaded[0][1]['model_name']}, {len(loaded)} seed(s), {Path(cfg['eval_dir']).name}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
