"""Train one model per seed on EEG -> speech envelope.

    python train.py                                   # demo corpus, default model, seeds from config.py
    python train.py --data_dir=../shared/data/dtu --model=vlaai --seeds=[1,2] --epochs=20
    python train.py --resume                          # continue an interrupted run

For each seed: Adam on -Pearson over seeded, non-overlapping 5 s windows; validation Pearson r
(whole validation parts, mean per subject then over subjects) after every epoch; early stopping
with ``patience``. Outputs go to ``run_dir/<model>/seed-<seed>/``: ``best.pt``, ``last.pt``
(model, optimizer, epoch, best validation r, resolved config) and ``log.csv``. Files are written
atomically; an existing run is never replaced unless ``--overwrite`` is given.
"""
from __future__ import annotations

import csv
import io
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import config as config_module
import newmodel
from EEG_Dataset import DataError, WindowDataset, atomic_write_bytes, load_corpus, mean_by_subject
from metrics import pearson, pearson_loss

DEMO_DIR = Path("xfdata")
# Keys that shape the model or the data it sees: a resumed run must keep them.
ARCH_KEYS = ("model", "n_chans", "subject_embedding", "ema_decay", "window_s", "batch_size", "dropout", "data_dir", "subjects",
             "exclude_subjects", "val_recordings", "test_recordings", "split",
             *[k for k in newmodel.MODEL_DEFAULTS if k not in ("n_subjects",)])


# ----------------------------------------------------------------------------- helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device=cuda but torch sees no CUDA GPU (install a CUDA build of torch, see README)")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def save_checkpoint(path: Path, obj: dict) -> None:
    """torch.save through a temp file + rename, so a kill never leaves half a checkpoint."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path) -> dict:
    """Checkpoints are data: only tensors and plain Python values are unpickled."""
    return torch.load(path, map_location="cpu", weights_only=True)


def ensure_data(cfg: dict) -> None:
    """Build the demo corpus when ``data_dir`` is missing or empty."""
    d = Path(cfg["data_dir"])
    if d.is_dir() and any(d.iterdir()):
        return
    import demo_corpus

    demo_split = DEMO_DIR / "split_data"
    if not (demo_split.is_dir() and any(demo_split.iterdir())):
        print(
            f"data_dir {d} is missing or empty: building the built-in demo corpus in {DEMO_DIR}/ "
            f"({cfg['demo_subjects']} subjects x {cfg['demo_minutes']} min, seed {cfg['demo_seed']})",
            flush=True,
        )
        demo_corpus.make_demo_corpus(
            out_dir=str(DEMO_DIR), n_subjects=cfg["demo_subjects"], minutes=cfg["demo_minutes"],
            seed=cfg["demo_seed"], overwrite=(DEMO_DIR / "demo_info.json").is_file(),
        )
    if d.resolve() != demo_split.resolve():
        print(f"data_dir {d} is missing or empty: training on the demo corpus in {demo_split}", flush=True)
    cfg["data_dir"] = str(demo_split)


def corpus_from_config(cfg: dict):
    return load_corpus(
        cfg["data_dir"],
        subjects=cfg["subjects"],
        exclude_subjects=cfg["exclude_subjects"],
        val_recordings=cfg["val_recordings"],
        test_recordings=cfg["test_recordings"],
        split=cfg["split"],
        n_chans=cfg["n_chans"],
    )


@torch.no_grad()
def evaluate(model, recordings, part: str, device, subject_index: dict) -> dict:
    """Pearson r of whole ``part`` of each recording: {'r': mean over subjects, 'per_subject': {...}}."""
    model.eval()
    subjects, rs = [], []
    for rec in recordings:
        if rec.length(part) == 0:
            continue
        eeg, env = rec.get(part)
        x = torch.from_numpy(eeg)[None].to(device)
        subj = torch.tensor([subject_index.get(rec.subject, -1)], device=device)
        pred = model(x, subject=subj).float().cpu()
        subjects.append(rec.subject)
        rs.append(float(pearson(pred, torch.from_numpy(env)[None], dim=1).mean()))
    per_subject = mean_by_subject(subjects, rs)
    r = float(np.mean(list(per_subject.values()))) if per_subject else float("nan")
    return {"r": r, "per_subject": per_subject}


def write_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def prepare_run_dir(out: Path, cfg: dict) -> None:
    """Refuse to replace an existing run unless asked to."""
    existing = out.is_dir() and any(out.iterdir())
    if not existing:
        out.mkdir(parents=True, exist_ok=True)
        return
    if cfg["resume"]:
        return
    if not cfg["overwrite"]:
        raise SystemExit(
            f"{out} already holds a run. Pass --resume to continue it, --overwrite to replace it, "
            f"or choose another --run_dir."
        )
    print(f"--overwrite: replacing the run in {out}", flush=True)
    shutil.rmtree(out)
    out.mkdir(parents=True)


# ----------------------------------------------------------------------------- training


def train_seed(cfg: dict, seed: int, corpus) -> dict:
    out = Path(cfg["run_dir"]) / cfg["model"] / f"seed-{seed}"
    prepare_run_dir(out, cfg)
    if cfg["resume"] and (out / "last.pt").exists():
        ck = load_checkpoint(out / "last.pt")
        # A run that stopped at its epoch limit continues when --epochs is raised (closed-form fits have
        # no history and stay finished; early-stopped runs stay finished unless --patience is raised).
        more = ck.get("history") and ck["epoch"] < cfg["epochs"] and ck.get("bad_epochs", 0) < cfg["patience"]
        if ck.get("finished") and not more and ck["model_name"] == cfg["model"] and ck["seed"] == seed:
            print(f"[seed {seed}] already finished (best val r {ck['best_val_r']:.4f}): {out}", flush=True)
            return {"seed": seed, "best_val_r": ck["best_val_r"], "epochs": ck["epoch"], "dir": str(out)}
    seed_everything(seed, cfg["deterministic"])
    device = pick_device(cfg["device"])

    subjects = corpus.subjects
    subject_index = {s: i for i, s in enumerate(subjects)}
    model_cfg = dict(cfg, n_chans=corpus.n_chans, n_subjects=len(subjects) if cfg["subject_embedding"] else 0)
    model = newmodel.build_model(cfg["model"], **model_cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    meta = {"seed": seed, "model_name": cfg["model"], "subjects": subjects, "n_chans": corpus.n_chans,
            "n_params": n_params, "config": cfg}
    print(f"[seed {seed}] {cfg['model']}: {n_params:,} parameters, {len(subjects)} subjects, "
          f"{corpus.n_samples('train') / cfg['fs'] / 60:.1f} min train, device {device}", flush=True)

    if getattr(model, "closed_form", False):
        return fit_closed_form(model, corpus, out, meta, device, subject_index)

    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    # Exponential moving average of the weights: validation, best.pt and test.py use the average,
    # which moves less from step to step than the raw weights (seed and epoch noise).
    ema = None
    if cfg["ema_decay"] > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg["ema_decay"]), use_buffers=True)
    eval_model = ema.module if ema is not None else model
    window = int(round(cfg["window_s"] * cfg["fs"]))
    ds = WindowDataset(corpus.recordings, window, seed=seed, subject_index=subject_index)
    loader = DataLoader(ds, batch_size=cfg["batch_size"], shuffle=False, num_workers=cfg["num_workers"],
                        pin_memory=device.type == "cuda", persistent_workers=cfg["num_workers"] > 0)
    val_recs = corpus.with_part("val")
    if not val_recs:
        raise DataError(f"{cfg['data_dir']}: no validation data; early stopping needs a 'val' part")

    start_epoch, best_r, bad_epochs, rows = 0, -math.inf, 0, []
    if cfg["resume"] and (out / "last.pt").exists():
        ck = load_checkpoint(out / "last.pt")
        if ck["model_name"] != cfg["model"] or ck["seed"] != seed:
            raise SystemExit(f"{out / 'last.pt'}: holds {ck['model_name']} seed {ck['seed']}, not {cfg['model']} seed {seed}")
        changed = {k: (ck["config"].get(k, cfg[k]), cfg[k]) for k in ARCH_KEYS if ck["config"].get(k, cfg[k]) != cfg[k]}
        if changed:
            raise SystemExit(f"{out / 'last.pt'}: cannot resume with a different model or data setup: "
                             + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items()))
        model.load_state_dict(ck["raw_model"] if ema is not None else ck["model"])
        if ema is not None:
            ema.module.load_state_dict(ck["model"])
            ema.n_averaged.copy_(ck["ema_n_averaged"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["torch_rng"])
        start_epoch, best_r, bad_epochs, rows = ck["epoch"], ck["best_val_r"], ck["bad_epochs"], list(ck["history"])
        print(f"[seed {seed}] resuming after epoch {start_epoch} (best val r {best_r:.4f})", flush=True)

    def checkpoint(epoch: int, finished=False, interrupted=False) -> dict:
        # 'model' holds the weights that are evaluated (the average when EMA is on), so test.py
        # needs no special case; the raw weights are kept for resuming.
        extra = {} if ema is None else {"raw_model": model.state_dict(), "ema_n_averaged": ema.n_averaged.clone()}
        return dict(meta, model=eval_model.state_dict(), optimizer=opt.state_dict(), epoch=epoch,
                    best_val_r=best_r, bad_epochs=bad_epochs, history=rows, torch_rng=torch.get_rng_state(),
                    finished=finished, interrupted=interrupted, **extra)

    epoch = start_epoch
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            if bad_epochs >= cfg["patience"]:
                break
            t0 = time.time()
            ds.set_epoch(epoch)
            model.train()
            total, count = 0.0, 0
            bar = tqdm(loader, desc=f"seed {seed} epoch {epoch + 1}/{cfg['epochs']}", leave=False,
                       disable=not sys.stderr.isatty())
            for batch in bar:
                eeg = batch["eeg"].to(device, non_blocking=True)
                env = batch["envelope"].to(device, non_blocking=True)
                mask = batch["mask"].to(device, non_blocking=True)
                subj = batch["subject"].to(device, non_blocking=True)
                loss = pearson_loss(model(eeg, subject=subj), env, mask)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
                total += float(loss.detach()) * len(eeg)
                count += len(eeg)
                bar.set_postfix(loss=f"{total / count:.4f}")
            train_r = -total / max(count, 1)
            val = evaluate(eval_model, val_recs, "val", device, subject_index)
            improved = val["r"] > best_r
            if improved:
                best_r, bad_epochs = val["r"], 0
            else:
                bad_epochs += 1
            secs = time.time() - t0
            rows.append({"epoch": epoch + 1, "train_r": round(train_r, 6), "val_r": round(val["r"], 6),
                         "best_val_r": round(best_r, 6), "seconds": round(secs, 2)})
            write_log(out / "log.csv", rows)
            if improved:
                save_checkpoint(out / "best.pt", checkpoint(epoch + 1))
            save_checkpoint(out / "last.pt", checkpoint(epoch + 1))
            print(f"[seed {seed}] epoch {epoch + 1:3d}  train r {train_r:.4f}  val r {val['r']:.4f}  "
                  f"best {best_r:.4f}{' *' if improved else ''}  {secs:.1f}s", flush=True)
    except KeyboardInterrupt:
        # Keep what this epoch learned: resume restarts the interrupted epoch from these weights.
        # len(rows) = epochs completed; ``epoch`` is one behind when the signal lands after an epoch's
        # row was logged (e.g. during its checkpoint or print), which made resume log that epoch twice.
        save_checkpoint(out / "last.pt", checkpoint(len(rows), interrupted=True))
        print(f"\n[seed {seed}] interrupted: saved {out / 'last.pt'}; continue with --resume", flush=True)
        raise
    save_checkpoint(out / "last.pt", checkpoint(len(rows), finished=True))
    print(f"[seed {seed}] done: best val r {best_r:.4f} -> {out / 'best.pt'}", flush=True)
    return {"seed": seed, "best_val_r": best_r, "epochs": len(rows), "dir": str(out)}


def fit_closed_form(model, corpus, out: Path, meta: dict, device, subject_index) -> dict:
    """Ridge: solve on the train parts, choose the regularization on the val parts."""
    t0 = time.time()
    train = [rec.get("train") for rec in corpus.with_part("train")]
    val = [rec.get("val") for rec in corpus.with_part("val")]
    info = model.fit(train, val)
    val_r = evaluate(model, corpus.with_part("val"), "val", device, subject_index)["r"]
    ck = dict(meta, model=model.state_dict(), optimizer={}, epoch=0, best_val_r=val_r, bad_epochs=0,
              history=[], torch_rng=torch.get_rng_state(), finished=True, interrupted=False,
              fit_info={k: v for k, v in info.items() if isinstance(v, (int, float, str))})
    save_checkpoint(out / "best.pt", ck)
    save_checkpoint(out / "last.pt", ck)
    write_log(out / "log.csv", [{"epoch": 0, "train_r": "", "val_r": round(val_r, 6), "best_val_r": round(val_r, 6),
                                 "seconds": round(time.time() - t0, 2)}])
    print(f"[seed {meta['seed']}] closed-form fit (alpha {info.get('alpha')}): val r {val_r:.4f} "
          f"in {time.time() - t0:.1f}s -> {out / 'best.pt'}", flush=True)
    return {"seed": meta["seed"], "best_val_r": val_r, "epochs": 0, "dir": str(out)}


def main(argv=None) -> list[dict]:
    cfg, _ = config_module.parse_or_exit(argv)
    if cfg["epochs"] < 1 or cfg["patience"] < 1 or cfg["batch_size"] < 1 or cfg["window_s"] <= 0:
        raise SystemExit("config error: epochs, patience and batch_size must be >= 1 and window_s > 0")
    if cfg["threads"] > 0:
        torch.set_num_threads(cfg["threads"])
    ensure_data(cfg)
    try:
        corpus = corpus_from_config(cfg)
    except DataError as exc:
        raise SystemExit(f"data error: {exc}") from exc
    print(f"data: {corpus.folder} ({corpus.fmt}), {len(corpus.recordings)} recordings, "
          f"{len(corpus.subjects)} subjects, {corpus.n_chans} channels", flush=True)
    results = [train_seed(cfg, seed, corpus) for seed in cfg["seeds"]]
    if len(results) > 1:
        rs = [r["best_val_r"] for r in results]
        print(f"{cfg['model']}: best val r over {len(rs)} seeds: mean {np.mean(rs):.4f} sd {np.std(rs, ddof=1):.4f}")
    return results


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
