"""Train one model per seed on EEG -> speech envelope.

    python train.py                                   # demo corpus, default model, seeds from config.py
    python train.py --data_dir=../shared/data/dtu --model=vlaai --seeds=[1,2] --epochs=20
    python train.py --resume                          # continue an interrupted run
    python train.py --seeds=[1,2,3,4] --jobs=2        # seed sweep: 2 seeds at a time, in parallel processes
    torchrun --nproc_per_node=2 train.py --batch_size=64   # data-parallel (DDP): 32 windows per rank

For each seed: Adam on -Pearson over seeded, non-overlapping 5 s windows; validation Pearson r
(whole validation parts, mean per subject then over subjects) after every epoch; ``best.pt``
keeps the epoch with the best validation r, stopping after ``patience`` epochs without a better
one (``--select=last``: the final epoch instead, no early stop). ``--avg_epochs=K`` validates and
keeps the average of the last K epochs' weights (``--ema_decay``: an exponential average).
Outputs go to ``run_dir/<model>/seed-<seed>/``: ``best.pt``, ``last.pt``
(model, optimizer, epoch, best validation r, resolved config) and ``log.csv``. Files are written
atomically; an existing run is never replaced unless ``--overwrite`` is given.

Speed: ``--amp=bf16`` (bfloat16 autocast), ``--compile`` (torch.compile), pinned memory with
non-blocking copies on CUDA. Under ``torchrun`` every rank trains on a disjoint shard of each
epoch's windows (``batch_size`` is the effective batch over all ranks), validation is split over
ranks and reduced, and only rank 0 writes checkpoints and logs. Several seeds: ``--jobs=N`` trains
N seeds at a time in separate processes (one per GPU when several are visible) and then scores
their ensemble on validation data the way test.py ensembles them.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

import config as config_module
import newmodel
from EEG_Dataset import (DataError, WindowDataset, atomic_write_bytes, atomic_write_json, load_corpus, mean_by_subject,
                         natural_key)
from metrics import pearson, pearson_loss

DEMO_DIR = Path("xfdata")
# Keys that shape the model or the data it sees: a resumed run must keep them.
ARCH_KEYS = ("model", "n_chans", "subject_embedding", "ema_decay", "avg_epochs", "select", "window_s", "batch_size", "dropout", "data_dir", "subjects",
             "exclude_subjects", "val_recordings", "test_recordings", "monitor_recordings", "split", "time_fold",
             *[k for k in newmodel.MODEL_DEFAULTS if k not in ("n_subjects",)])


# ----------------------------------------------------------------------------- helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device=cuda but torch sees no CUDA GPU (install a CUDA build of torch, see README)")
    return torch.device(name)


def dist_setup(cfg: dict) -> tuple[int, int, int]:
    """(rank, world_size, local_rank). Under torchrun (WORLD_SIZE > 1) this starts the process
    group: nccl when training on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = pick_device(cfg["device"]).type == "cuda"
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, local


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def autocast(device: torch.device, amp: str):
    """bfloat16 autocast for ``amp='bf16'`` (the loss is still computed in float32)."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN, a debugging aid that cost up to
        # ~18 % of an ivlaai training step here (benchmarks/throughput.py); it changes no result.
        torch.utils.deterministic.fill_uninitialized_memory = False
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


def load_model(path, device) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on ``device``, checkpoint) from a best.pt/last.pt."""
    ck = load_checkpoint(path)
    cfg = dict(ck["config"], n_chans=ck["n_chans"],
               n_subjects=len(ck["subjects"]) if ck["config"].get("subject_embedding") else 0)
    model = newmodel.build_model(ck["model_name"], **cfg)
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), ck


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
        monitor_recordings=cfg["monitor_recordings"],
        split=cfg["split"],
        time_fold=cfg.get("time_fold", 0),  # checkpoints from before time folds have no such key
        n_chans=cfg["n_chans"],
    )


@torch.no_grad()
def evaluate(model, recordings, part: str, device, subject_index: dict, amp: str = "none") -> dict:
    """Pearson r of whole ``part`` of each recording: {'r': mean over subjects, 'per_subject': {...}}.

    Under torchrun each rank scores every world_size-th recording and the (subject, r) pairs are
    gathered, so every rank returns the same figure as one process would."""
    model.eval()
    world = world_size()
    rank = dist.get_rank() if world > 1 else 0
    subjects, rs = [], []
    for rec in list(recordings)[rank::world]:
        if rec.length(part) == 0:
            continue
        eeg, env = rec.get(part)
        x = torch.from_numpy(eeg)[None].to(device)
        subj = torch.tensor([subject_index.get(rec.subject, -1)], device=device)
        with autocast(device, amp):
            pred = model(x, subject=subj)
        pred = pred.float().cpu()
        subjects.append(rec.subject)
        rs.append(float(pearson(pred, torch.from_numpy(env)[None], dim=1).mean()))
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, (subjects, rs))
        subjects = [s for g in gathered for s in g[0]]
        rs = [r for g in gathered for r in g[1]]
    per_subject = mean_by_subject(subjects, rs)
    r = float(np.mean(list(per_subject.values()))) if per_subject else float("nan")
    return {"r": r, "per_subject": per_subject}


def write_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))  # a resumed older run lacks newer columns
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def prepare_run_dir(out: Path, cfg: dict, dry_run: bool = False) -> None:
    """Refuse to replace an existing run unless asked to. ``dry_run``: decide, change nothing."""
    existing = out.is_dir() and any(out.iterdir())
    if not existing:
        if not dry_run:
            out.mkdir(parents=True, exist_ok=True)
        return
    if cfg["resume"]:
        return
    if not cfg["overwrite"]:
        raise SystemExit(
            f"{out} already holds a run. Pass --resume to continue it, --overwrite to replace it, "
            f"or choose another --run_dir."
        )
    if dry_run:
        return
    print(f"--overwrite: replacing the run in {out}", flush=True)
    shutil.rmtree(out)
    out.mkdir(parents=True)


# ----------------------------------------------------------------------------- training


def average_state_dicts(states: list[dict]) -> dict:
    """Uniform average of state dicts: floating tensors averaged (in float64, then cast back),
    others (e.g. integer counters) taken from the last."""
    out = {}
    for k, v in states[-1].items():
        out[k] = torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
    return out


def finished_run(seed_dir: Path, cfg: dict, seed: int) -> dict | None:
    """The last.pt of ``seed_dir`` if that run is finished for ``cfg`` (same model and seed), else None.

    A run that stopped at its epoch limit continues when --epochs is raised (closed-form fits have
    no history and stay finished; early-stopped runs stay finished unless --patience is raised).
    """
    path = Path(seed_dir) / "last.pt"
    if not path.exists():
        return None
    ck = load_checkpoint(path)
    more = ck.get("history") and ck["epoch"] < cfg["epochs"] and ck.get("bad_epochs", 0) < cfg["patience"]
    if ck.get("finished") and not more and ck["model_name"] == cfg["model"] and ck["seed"] == seed:
        check_same_setup(path, ck, cfg)
        return ck
    return None


def check_same_setup(path: Path, ck: dict, cfg: dict) -> None:
    """Stop when the run in ``path`` was made with other ARCH_KEYS than ``cfg`` asks for: neither
    continuing it nor passing it off as finished would give the run that was asked for. A key the
    checkpoint predates counts as its default (keys are added with the old behaviour as default)."""
    base = config_module.defaults()
    was = {k: ck["config"].get(k, base.get(k)) for k in ARCH_KEYS}
    changed = {k: (was[k], cfg[k]) for k in ARCH_KEYS if was[k] != cfg[k]}
    if changed:
        raise SystemExit(f"{path}: cannot resume with a different model or data setup: "
                         + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
                         + ". Use another --run_dir (or --overwrite to replace it).")


def train_seed(cfg: dict, seed: int, corpus, rank: int = 0, world: int = 1, local_rank: int = 0) -> dict:
    out = Path(cfg["run_dir"]) / cfg["model"] / f"seed-{seed}"
    lead = rank == 0  # only rank 0 writes files and prints
    if world > 1:
        # every rank makes the same decision (nothing is changed yet), then only rank 0 acts on it
        prepare_run_dir(out, cfg, dry_run=not lead)
        barrier()
    else:
        prepare_run_dir(out, cfg)
    if cfg["resume"]:
        ck = finished_run(out, cfg, seed)
        if ck is not None:
            if lead:
                print(f"[seed {seed}] already finished (best val r {ck['best_val_r']:.4f}): {out}", flush=True)
            return {"seed": seed, "best_val_r": ck["best_val_r"], "epochs": ck["epoch"], "dir": str(out)}
    seed_everything(seed, cfg["deterministic"])
    device = pick_device(cfg["device"])
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)

    # the listeners the model is trained on (a subject kept whole in val/monitor stays 'unseen' to it)
    subjects = sorted({r.subject for r in corpus.with_part("train")}, key=natural_key)
    subject_index = {s: i for i, s in enumerate(subjects)}
    model_cfg = dict(cfg, n_chans=corpus.n_chans, n_subjects=len(subjects) if cfg["subject_embedding"] else 0)
    model = newmodel.build_model(cfg["model"], **model_cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    meta = {"seed": seed, "model_name": cfg["model"], "subjects": subjects, "n_chans": corpus.n_chans,
            "n_params": n_params, "config": cfg}
    if lead:
        par = f", {world} ranks x {cfg['batch_size'] // world} windows" if world > 1 else ""
        print(f"[seed {seed}] {cfg['model']}: {n_params:,} parameters, {len(subjects)} subjects, "
              f"{corpus.n_samples('train') / cfg['fs'] / 60:.1f} min train, device {device}{par}", flush=True)

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
    # Uniform average of the last avg_epochs epochs' weights (each taken at its epoch's end), for
    # the same reason: an epoch is only ~13 steps, and single epochs swing on new listeners.
    recent: list[dict] = []
    if cfg["avg_epochs"] < 1:
        raise SystemExit(f"--avg_epochs={cfg['avg_epochs']}: must be >= 1 (1: no averaging)")
    if cfg["avg_epochs"] > 1:
        if ema is not None:
            raise SystemExit("--avg_epochs and --ema_decay both average the weights: use one of them")
        eval_model = copy.deepcopy(model)
    averaging = eval_model is not model
    window = int(round(cfg["window_s"] * cfg["fs"]))
    # Each rank takes a strided shard of the epoch's seeded window order and batch_size/world of
    # every batch, so one step of all ranks covers the same windows as one step of one process.
    ds = WindowDataset(corpus.recordings, window, seed=seed, subject_index=subject_index, rank=rank, world_size=world)
    loader = DataLoader(ds, batch_size=cfg["batch_size"] // world, shuffle=False, num_workers=cfg["num_workers"],
                        pin_memory=device.type == "cuda", persistent_workers=cfg["num_workers"] > 0)
    val_recs = corpus.with_part("val")
    monitor_recs = corpus.with_part("monitor")  # reported only, never trained on or used to choose
    if not val_recs:
        raise DataError(f"{cfg['data_dir']}: no validation data; early stopping needs a 'val' part")

    start_epoch, best_r, bad_epochs, rows = 0, -math.inf, 0, []
    if cfg["resume"] and (out / "last.pt").exists():
        ck = load_checkpoint(out / "last.pt")
        if ck["model_name"] != cfg["model"] or ck["seed"] != seed:
            raise SystemExit(f"{out / 'last.pt'}: holds {ck['model_name']} seed {ck['seed']}, not {cfg['model']} seed {seed}")
        check_same_setup(out / "last.pt", ck, cfg)
        model.load_state_dict(ck["raw_model"] if averaging else ck["model"])
        if averaging:
            eval_model.load_state_dict(ck["model"])
        if cfg["avg_epochs"] > 1:
            recent = list(ck["recent_states"])
        if ema is not None:
            ema.module.load_state_dict(ck["model"])
            ema.n_averaged.copy_(ck["ema_n_averaged"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["torch_rng"])
        start_epoch, best_r, bad_epochs, rows = ck["epoch"], ck["best_val_r"], ck["bad_epochs"], list(ck["history"])
        if lead:
            print(f"[seed {seed}] resuming after epoch {start_epoch} (best val r {best_r:.4f})", flush=True)
    if world > 1:
        # same initial weights everywhere (built from one seed), but each rank its own dropout draws
        torch.manual_seed(seed * 1_000_003 + rank * 7919 + start_epoch)
    fwd = model
    if world > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["compile"]:
        fwd = torch.compile(fwd)

    def checkpoint(epoch: int, finished=False, interrupted=False) -> dict:
        # 'model' holds the weights that are evaluated (the average when EMA is on), so test.py
        # needs no special case; the raw weights are kept for resuming.
        extra = {} if not averaging else {"raw_model": model.state_dict()}
        if ema is not None:
            extra["ema_n_averaged"] = ema.n_averaged.clone()
        if cfg["avg_epochs"] > 1:
            extra["recent_states"] = recent
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
            total, count, wait_s = 0.0, 0.0, 0.0
            bar = tqdm(total=len(loader), desc=f"seed {seed} epoch {epoch + 1}/{cfg['epochs']}", leave=False,
                       disable=not (lead and sys.stderr.isatty()))
            batches = iter(loader)
            while True:
                t_wait = time.perf_counter()  # time spent waiting for data: loading + host->device copy
                batch = next(batches, None)
                if batch is None:
                    break
                eeg = batch["eeg"].to(device, non_blocking=True)
                env = batch["envelope"].to(device, non_blocking=True)
                mask = batch["mask"].to(device, non_blocking=True)
                subj = batch["subject"].to(device, non_blocking=True)
                wait_s += time.perf_counter() - t_wait
                with autocast(device, cfg["amp"]):
                    pred = fwd(eeg, subject=subj)
                loss = local_loss = pearson_loss(pred.float(), env, mask)
                n_local = mask.sum()
                if world > 1:
                    # pearson_loss weights each window by its valid samples within this rank's batch;
                    # rescale to the weight of the whole global batch so that DDP's gradient mean
                    # equals the gradient one process gets for the same windows.
                    n_global = n_local.detach().clone()
                    dist.all_reduce(n_global)
                    loss = loss * (n_local * world / n_global.clamp_min(1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
                total += float(local_loss.detach()) * float(n_local)
                count += float(n_local)
                bar.update()
                bar.set_postfix(loss=f"{total / count:.4f}")
            bar.close()
            train_s = time.time() - t0
            if world > 1:  # mean training loss over all ranks' windows
                stats = torch.tensor([total, count], dtype=torch.float64)
                dist.all_reduce(stats)
                total, count = float(stats[0]), float(stats[1])
            train_r = -total / max(count, 1)
            if cfg["avg_epochs"] > 1:
                recent = (recent + [{k: v.detach().clone() for k, v in model.state_dict().items()}])[-cfg["avg_epochs"]:]
                eval_model.load_state_dict(average_state_dicts(recent))
            val = evaluate(eval_model, val_recs, "val", device, subject_index, cfg["amp"])
            improved = val["r"] > best_r or cfg["select"] == "last"  # 'last': every epoch replaces the kept one
            if improved:
                best_r, bad_epochs = val["r"], 0
            else:
                bad_epochs += 1
            secs = time.time() - t0
            rows.append({"epoch": epoch + 1, "train_r": round(train_r, 6), "val_r": round(val["r"], 6),
                         "best_val_r": round(best_r, 6), "seconds": round(secs, 2),
                         "data_wait_pct": round(100 * wait_s / max(train_s, 1e-9), 2)})
            if monitor_recs:
                rows[-1]["monitor_r"] = round(evaluate(eval_model, monitor_recs, "monitor", device, subject_index,
                                                       cfg["amp"])["r"], 6)
            if lead:
                write_log(out / "log.csv", rows)
                if cfg["keep_epochs"]:  # weights of every epoch, for offline stopping-rule studies
                    save_checkpoint(out / "epochs" / f"epoch-{epoch + 1:03d}.pt",
                                    dict(meta, **rows[-1], model=eval_model.state_dict()))
                if improved:
                    save_checkpoint(out / "best.pt", checkpoint(epoch + 1))
                save_checkpoint(out / "last.pt", checkpoint(epoch + 1))
                print(f"[seed {seed}] epoch {epoch + 1:3d}  train r {train_r:.4f}  val r {val['r']:.4f}  "
                      f"best {best_r:.4f}{' *' if improved else ''}"
                      + (f"  monitor r {rows[-1]['monitor_r']:.4f}" if monitor_recs else "") + f"  {secs:.1f}s "
                      f"(data wait {rows[-1]['data_wait_pct']:.1f}%)", flush=True)
    except KeyboardInterrupt:
        # Keep what this epoch learned: resume restarts the interrupted epoch from these weights.
        # len(rows) = epochs completed; ``epoch`` is one behind when the signal lands after an epoch's
        # row was logged (e.g. during its checkpoint or print), which made resume log that epoch twice.
        if lead:
            save_checkpoint(out / "last.pt", checkpoint(len(rows), interrupted=True))
            print(f"\n[seed {seed}] interrupted: saved {out / 'last.pt'}; continue with --resume", flush=True)
        raise
    if lead:
        save_checkpoint(out / "last.pt", checkpoint(len(rows), finished=True))
        print(f"[seed {seed}] done: best val r {best_r:.4f} -> {out / 'best.pt'}", flush=True)
    barrier()  # the other ranks wait until rank 0's files are complete
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


@torch.no_grad()
def seed_ensemble(cfg: dict, corpus, seeds: list[int]) -> dict:
    """Validation r of each seed's best.pt and of their ensemble, built the way test.py builds it:
    each seed's prediction of a whole validation part is z-scored, then the seeds are averaged."""
    device = pick_device(cfg["device"])
    recs = corpus.with_part("val")
    preds, per_seed = [], {}
    for seed in seeds:
        model, ck = load_model(Path(cfg["run_dir"]) / cfg["model"] / f"seed-{seed}" / "best.pt", device)
        index = {s: i for i, s in enumerate(ck["subjects"])}
        ys = []
        for rec in recs:
            eeg, _ = rec.get("val")
            y = model(torch.from_numpy(eeg)[None].to(device), subject=torch.tensor([index.get(rec.subject, -1)], device=device))
            y = y.float().cpu()[0, :, 0].double()
            ys.append((y - y.mean()) / (y.std() + 1e-12))
        preds.append(ys)
        per_seed[f"seed-{seed}"] = float(ck["best_val_r"])

    def r_of(ys) -> float:
        rs = [float(pearson(y, torch.from_numpy(rec.get("val")[1][:, 0]).double(), dim=0)) for rec, y in zip(recs, ys)]
        return float(np.mean(list(mean_by_subject((rec.subject for rec in recs), rs).values())))

    vals = list(per_seed.values())
    return {"model": cfg["model"], "seeds": seeds, "val_r_per_seed": per_seed, "val_r_mean": float(np.mean(vals)),
            "val_r_sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "val_r_ensemble": r_of([sum(ps) / len(ps) for ps in zip(*preds)])}


def visible_gpus(device: str) -> list[str]:
    if pick_device(device).type != "cuda":
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]


def run_pool(tasks: list[dict], jobs: int, gpus: list[str], on_done=None) -> list:
    """Run child processes, ``jobs`` at a time. A task is {'key', 'cmd', 'log'}; its output is
    appended to 'log' (a rerun never erases an earlier log). With GPUs, child i sees GPU i mod n.
    ``on_done(key, returncode)`` is called as each one ends. Returns the keys of failed tasks."""
    pending, running, failed, started, ended = list(tasks), {}, [], 0, []
    try:
        while pending or running or ended:
            while pending and len(running) < jobs:
                task = pending.pop(0)
                env = dict(os.environ)
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = gpus[started % len(gpus)]
                started += 1
                Path(task["log"]).parent.mkdir(parents=True, exist_ok=True)
                log = open(task["log"], "a")
                running[task["key"]] = (subprocess.Popen(task["cmd"], stdout=log, stderr=subprocess.STDOUT, env=env),
                                        log, task)
                print(f"  {task['key']}: started (log {task['log']})", flush=True)
            # on_done runs after the free slots are refilled, so that no core idles while it works
            for key, returncode in ended:
                on_done(key, returncode)
            ended = []
            time.sleep(0.2)
            for key, (proc, log, task) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[key]
                lines = Path(task["log"]).read_text().strip().splitlines()
                print(f"  {key}: {'done' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'}: "
                      f"{lines[-1] if lines else ''}", flush=True)
                if proc.returncode != 0:
                    failed.append(key)
                if on_done is not None:
                    ended.append((key, proc.returncode))
    except KeyboardInterrupt:  # the children got the same Ctrl-C: let them save last.pt
        for proc, _, _ in running.values():
            if TERMINATED:  # a SIGTERM reaches this process only: pass it on
                proc.terminate()
        for proc, _, _ in running.values():
            proc.wait()
        raise
    return failed


def run_sweep(cfg: dict, argv: list[str]) -> None:
    """Train ``cfg['seeds']`` as child processes of this script, ``cfg['jobs']`` at a time: one GPU
    each when several are visible, else the CPU cores split between them. Logs: run_dir/<model>/logs/."""
    seeds, jobs = cfg["seeds"], cfg["jobs"]
    gpus = visible_gpus(cfg["device"])
    threads = cfg["threads"] or max(1, (os.cpu_count() or 1) // min(jobs, len(seeds)))
    base = [a for a in argv if a.split("=", 1)[0] not in ("--seeds", "--jobs", "--threads")]
    log_dir = Path(cfg["run_dir"]) / cfg["model"] / "logs"
    print(f"seed sweep: {len(seeds)} seeds, {jobs} at a time, "
          + (f"one GPU each ({','.join(gpus)})" if gpus else f"{threads} CPU threads each") + f"; logs in {log_dir}/", flush=True)
    tasks = [{"key": f"seed {seed}", "log": log_dir / f"seed-{seed}.log",
              "cmd": [sys.executable, str(Path(__file__).resolve()), *base, f"--seeds=[{seed}]", "--jobs=1",
                      f"--threads={threads}"]} for seed in seeds]
    failed = [int(k.split()[1]) for k in run_pool(tasks, jobs, gpus)]
    if failed:
        raise SystemExit(f"seed sweep: seeds {failed} failed; see their logs in {log_dir}/")


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg, _ = config_module.parse_or_exit(argv)
    if cfg["epochs"] < 1 or cfg["patience"] < 1 or cfg["batch_size"] < 1 or cfg["window_s"] <= 0 or cfg["jobs"] < 1:
        raise SystemExit("config error: epochs, patience, batch_size and jobs must be >= 1 and window_s > 0")
    if cfg["time_fold"] and cfg["split"] != "time":
        raise SystemExit(f"config error: --time_fold={cfg['time_fold']} needs --split=time (got --split={cfg['split']})")
    rank, world, local_rank = dist_setup(cfg)
    lead = rank == 0
    if world > 1 and (cfg["jobs"] > 1 or cfg["batch_size"] % world):
        raise SystemExit(f"torchrun with {world} ranks: batch_size ({cfg['batch_size']}) must be a multiple of "
                         f"the number of ranks, and jobs must be 1")
    if cfg["threads"] > 0:
        torch.set_num_threads(cfg["threads"])
    if lead:
        ensure_data(cfg)  # rank 0 builds the demo corpus (when needed) before the others look for it
    barrier()
    if not lead:
        ensure_data(cfg)
    try:
        corpus = corpus_from_config(cfg)
    except DataError as exc:
        raise SystemExit(f"data error: {exc}") from exc
    if lead:
        print(f"data: {corpus.folder} ({corpus.fmt}), {sum(r.piece_of is None for r in corpus.recordings)} recordings, "
              f"{len(corpus.subjects)} subjects, {corpus.n_chans} channels", flush=True)
    if world > 1 and cfg["model"] == "linear":
        raise SystemExit(f"{cfg['model']} is fitted in closed form: run it without torchrun")
    if cfg["jobs"] > 1 and len(cfg["seeds"]) > 1:
        run_sweep(cfg, argv)
        results = [{"seed": s, "best_val_r": load_checkpoint(Path(cfg["run_dir"]) / cfg["model"] / f"seed-{s}" / "best.pt")["best_val_r"]}
                   for s in cfg["seeds"]]
    else:
        results = [train_seed(cfg, seed, corpus, rank, world, local_rank) for seed in cfg["seeds"]]
    if len(results) > 1 and lead:
        summary = seed_ensemble(cfg, corpus, cfg["seeds"])
        path = Path(cfg["run_dir"]) / cfg["model"] / f"seeds-{'-'.join(map(str, cfg['seeds']))}.json"
        atomic_write_json(path, summary)
        print(f"{cfg['model']}: best val r over {len(results)} seeds: mean {summary['val_r_mean']:.4f} "
              f"sd {summary['val_r_sd']:.4f}; ensemble of the seeds {summary['val_r_ensemble']:.4f} -> {path}", flush=True)
    if world > 1:
        # every rank done with every collective before any tears its group down: a rank that
        # exits early has made the other's gloo threads abort at exit (seen once under a loaded CPU)
        barrier()
        dist.destroy_process_group()
    return results


TERMINATED = False


def on_sigterm(signum, frame) -> None:
    """SIGTERM (``kill``, a job scheduler, a background job that ignores Ctrl-C) acts as Ctrl-C:
    the current epoch's weights go to last.pt, and child processes are told too."""
    global TERMINATED
    TERMINATED = True
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
