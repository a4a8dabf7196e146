"""Train one model per seed on EEG -> speech envelope.

    python train.py                                   # demo corpus, default model, seeds from config.py
    python train.py --data_dir=../shared/data/dtu --model=vlaai --seeds=[1,2] --epochs=20
    python train.py --resume                          # continue an interrupted run
    python train.py --seeds=[1,2,3,4] --jobs=2        # seed sweep: 2 seeds at a time, in parallel processes
    torchrun --nproc_per_node=2 train.py --batch_size=64   # data-parallel (DDP): 32 windows per rank
    python train.py --model=vlaai --init=vlaai.h5     # fine-tune the published VLAAI weights
    python train.py --help                            # every key this script reads

For each seed: Adam on -Pearson over seeded, non-overlapping windows; validation Pearson r (whole
validation parts, mean per subject then over subjects) after every epoch. ``best.pt`` keeps the
epoch with the best validation r, stopping after ``patience`` epochs without a better one
(``--select=last``: the final epoch, no early stop). ``--avg_epochs=K`` validates and keeps the
average of the last K epochs' weights (``--ema_decay``: an exponential average).

Outputs go to ``run_dir/<model>/seed-<seed>/``: ``best.pt``, ``last.pt`` (checkpoint.py) and
``log.csv``. The folder is locked while a process writes it; an existing run is continued only
with ``--resume`` (from its last completed epoch) and replaced only with ``--overwrite``.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time

# A waiting OpenMP thread spins before it sleeps; on a shared CPU the spinning steals the cores the
# working threads need. A short spin keeps the idle speed and avoids the collapse under load
# (benchmarks/shared_cpu.py, docs/performance.md). Set before torch loads its OpenMP runtime.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

import cli
import newmodel
import runtime
from averaging import WeightAverage
from checkpoint import CheckpointError, load_checkpoint, load_weights_file, save_checkpoint
from EEG_Dataset import DataError, WindowDataset, natural_key
from evaluation import evaluate, seed_ensemble
from fileio import FileError, atomic_write_json, sha256_file
from metrics import pearson_loss
from runs import RunError, RunLock, corpus_from_config, ensure_data, finished_run, prepare_run_dir, seed_dir, write_log
from sweep import run_sweep


class Diverged(RuntimeError):
    """The training loss or validation r is not finite: the seed stops, and nothing of that epoch is kept."""


def architecture(cfg: dict, corpus) -> tuple[dict, list[str]]:
    """(the model's constructor arguments, the training subjects) this config builds on this data."""
    # the listeners the model is trained on (a subject kept whole in val/monitor stays 'unseen' to it)
    subjects = sorted({r.subject for r in corpus.with_part("train")}, key=natural_key)
    args = newmodel.model_args(cfg["model"], dict(cfg, n_chans=corpus.n_chans,
                                                  n_subjects=len(subjects) if cfg["subject_embedding"] else 0))
    return args, subjects


def init_weights(cfg: dict, args: dict) -> dict:
    """The checkpoint that --init names, refused unless it holds this run's architecture."""
    src = load_weights_file(cfg["init"])
    if src["model_name"] != cfg["model"] or src["model_args"] != args:
        raise CheckpointError(f"{cfg['init']}: holds {src['model_name']} {src['model_args']}, but this run builds "
                              f"{cfg['model']} {args}; the architectures must match to start from it")
    return src


def preflight(cfg: dict, corpus) -> None:
    """Everything a run reads, checked before any output is touched: the device and the --init
    weights (a typo, a file that is not a checkpoint, another architecture)."""
    runtime.pick_device(cfg["device"])
    if cfg["init"]:
        init_weights(cfg, architecture(cfg, corpus)[0])


def build(cfg: dict, corpus, seed: int, device) -> tuple[torch.nn.Module, dict]:
    """The seeded model and the checkpoint entries that describe it."""
    runtime.seed_everything(seed, cfg["deterministic"])
    args, subjects = architecture(cfg, corpus)
    model = newmodel.MODELS[cfg["model"]](**args).to(device)
    meta = {"seed": seed, "model_name": cfg["model"], "model_args": args, "subjects": subjects,
            "n_chans": corpus.n_chans, "n_params": sum(p.numel() for p in model.parameters()), "config": cfg}
    if cfg["init"]:  # fine-tuning: start from these weights, recorded with their digest
        model.load_state_dict(init_weights(cfg, args)["model"])
        meta["init"] = {"path": str(Path(cfg["init"]).resolve()), "sha256": sha256_file(cfg["init"])}
    return model, meta


def train_epoch(model, fwd, loader, opt, avg: WeightAverage, cfg: dict, device, desc: str) -> tuple[float, float]:
    """One pass over the epoch's windows -> (mean training r, % of the time spent waiting for data)."""
    model.train()
    world = runtime.world_size()
    total = count = wait_s = 0.0
    t0 = time.perf_counter()
    bar = tqdm(total=len(loader), desc=desc, leave=False, disable=not (runtime.rank() == 0 and sys.stderr.isatty()))
    batches = iter(loader)
    while True:
        t_wait = time.perf_counter()  # loading + host->device copy
        batch = next(batches, None)
        if batch is None:
            break
        eeg, env, mask, subj = (batch[k].to(device, non_blocking=True) for k in ("eeg", "envelope", "mask", "subject"))
        wait_s += time.perf_counter() - t_wait
        with runtime.autocast(device, cfg["amp"]):
            pred = fwd(eeg, subject=subj)
        loss = local_loss = pearson_loss(pred.float(), env, mask)
        n_local = mask.sum()
        if world > 1:
            # pearson_loss weights each window by its valid samples within this rank's batch; rescale
            # to the whole global batch so that DDP's gradient mean equals one process's gradient.
            n_global = n_local.detach().clone()
            dist.all_reduce(n_global)
            loss = loss * (n_local * world / n_global.clamp_min(1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        avg.after_step()
        total, count = total + float(local_loss.detach()) * float(n_local), count + float(n_local)
        bar.update()
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
    bar.close()
    if world > 1:  # mean training loss over all ranks' windows
        stats = torch.tensor([total, count], dtype=torch.float64)
        dist.all_reduce(stats)
        total, count = float(stats[0]), float(stats[1])
    return -total / max(count, 1), 100 * wait_s / max(time.perf_counter() - t0, 1e-9)


def train_seed(cfg: dict, seed: int, corpus, local_rank: int = 0, replaced: list | None = None) -> dict:
    """Train one seed into its folder; ``replaced``: an earlier run's files that --overwrite
    removes at the first save."""
    replaced = [] if replaced is None else replaced
    out, lead, world = seed_dir(cfg, seed), runtime.rank() == 0, runtime.world_size()
    device = runtime.pick_device(cfg["device"])
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
    model, meta = build(cfg, corpus, seed, device)
    amp, why = runtime.resolve_amp(cfg["amp"], device)
    meta["precision"] = amp  # what this run computed in (cfg['amp'] may say 'auto')
    # the seed set the initial weights; data_seed sets the window order and the dropout masks
    data_seed = seed if cfg["data_seed"] is None else cfg["data_seed"]
    torch.manual_seed(runtime.data_stream_seed(data_seed))
    subject_index = {s: i for i, s in enumerate(meta["subjects"])}
    if lead:
        par = f", {world} ranks x {cfg['batch_size'] // world} windows" if world > 1 else ""
        print(f"[seed {seed}] {cfg['model']}: {meta['n_params']:,} parameters, {len(meta['subjects'])} subjects, "
              f"{corpus.n_samples('train') / cfg['fs'] / 60:.1f} min train, device {device}{par}, "
              f"{runtime.precision_name(amp)} ({why})", flush=True)
    if getattr(model, "closed_form", False):
        return fit_closed_form(model, corpus, out, meta, device, subject_index, replaced)

    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    avg = WeightAverage(model, cfg["ema_decay"], cfg["avg_epochs"])
    # Each rank takes a strided shard of the epoch's seeded window order and batch_size/world of
    # every batch, so one step of all ranks covers the same windows as one step of one process.
    ds = WindowDataset(corpus.recordings, int(round(cfg["window_s"] * cfg["fs"])), seed=data_seed,
                       subject_index=subject_index, rank=runtime.rank(), world_size=world)
    loader = DataLoader(ds, batch_size=cfg["batch_size"] // world, shuffle=False, num_workers=cfg["num_workers"],
                        pin_memory=device.type == "cuda", persistent_workers=cfg["num_workers"] > 0)
    val_recs, monitor_recs = corpus.with_part("val"), corpus.with_part("monitor")  # monitor: reported only
    if not val_recs:
        raise DataError(f"{cfg['data_dir']}: no validation data; training needs a 'val' part")

    state = {"epoch": 0, "best_val_r": -math.inf, "bad_epochs": 0, "history": [], "resumed": []}
    if cfg["resume"] and (out / "last.pt").exists():
        ck = load_checkpoint(out / "last.pt")
        avg.load(ck)
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["torch_rng"])
        state = {k: ck.get(k, v) for k, v in state.items()}
        state["history"], state["resumed"] = list(state["history"]), list(state["resumed"])
        changed = apply_resume_changes(opt, ck["config"], cfg)
        if changed:  # the checkpoint's config is the new one; this says from which epoch it applies
            state["resumed"].append({"after_epoch": state["epoch"], "changed": changed})
        if lead:
            note = "".join(f", {k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            print(f"[seed {seed}] resuming after epoch {state['epoch']} (best val r {state['best_val_r']:.4f}){note}",
                  flush=True)
    if world > 1:  # same initial weights everywhere (one seed), but each rank its own dropout draws
        torch.manual_seed(data_seed * 1_000_003 + runtime.rank() * 7919 + state["epoch"])
    fwd = model
    if world > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(model,
                                                        device_ids=[device.index] if device.type == "cuda" else None)
    fwd = torch.compile(fwd) if cfg["compile"] else fwd

    def checkpoint(finished=False) -> dict:
        # 'model' holds the weights that are evaluated, so test.py needs no special case
        return dict(meta, model=avg.eval_model.state_dict(), optimizer=opt.state_dict(),
                    torch_rng=torch.get_rng_state(), finished=finished, **state, **avg.state())

    for epoch in range(state["epoch"], cfg["epochs"]):
        if state["bad_epochs"] >= cfg["patience"]:
            break
        t0 = time.time()
        ds.set_epoch(epoch)
        train_r, wait_pct = train_epoch(model, fwd, loader, opt, avg, dict(cfg, amp=amp), device,
                                        f"seed {seed} epoch {epoch + 1}")
        avg.after_epoch()
        val_r = evaluate(avg.eval_model, val_recs, "val", device, subject_index, amp)["r"]
        if not (math.isfinite(train_r) and math.isfinite(val_r)):
            raise Diverged(f"seed {seed}, epoch {epoch + 1}, lr {cfg['lr']:g}: training r {train_r} / validation r "
                           f"{val_r} is not finite; the seed stopped (lower --lr or set --grad_clip)")
        improved = val_r > state["best_val_r"] or cfg["select"] == "last"  # 'last': every epoch replaces it
        state["best_val_r"] = val_r if improved else state["best_val_r"]
        state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
        state["epoch"] = epoch + 1
        row = {"epoch": epoch + 1, "train_r": round(train_r, 6), "val_r": round(val_r, 6),
               "best_val_r": round(state["best_val_r"], 6), "seconds": round(time.time() - t0, 2),
               "data_wait_pct": round(wait_pct, 2)}
        if monitor_recs:
            row["monitor_r"] = round(evaluate(avg.eval_model, monitor_recs, "monitor", device, subject_index,
                                              amp)["r"], 6)
        state["history"].append(row)
        if lead:
            save_epoch(out, cfg, checkpoint(), improved, meta, row, replaced)
    if lead:
        save_checkpoint(out / "last.pt", checkpoint(finished=True))
        if not (out / "best.pt").is_file():
            raise Diverged(f"seed {seed}: no epoch was kept, so there is no {out / 'best.pt'}")
        print(f"[seed {seed}] done: best val r {state['best_val_r']:.4f} -> {out / 'best.pt'}", flush=True)
    runtime.barrier()  # the other ranks wait until rank 0's files are complete
    return {"seed": seed, "best_val_r": state["best_val_r"], "epochs": state["epoch"], "dir": str(out)}


# Training keys a resumed run may change: they take effect from the next epoch, and the checkpoint
# records from which (ARCH_KEYS in runs.py may not change; threads, device and the like change no result).
RESUMABLE = ("lr", "weight_decay", "grad_clip", "amp", "epochs", "patience")


def apply_resume_changes(opt, was: dict, cfg: dict) -> dict:
    """Set the optimizer's lr / weight decay to ``cfg``'s (the other RESUMABLE keys act through
    cfg by themselves): {key: (old, new)} of what a resumed run changed against its checkpoint."""
    changed = {k: (was.get(k), cfg[k]) for k in RESUMABLE if was.get(k) is not None and was.get(k) != cfg[k]}
    for group in opt.param_groups:
        group["lr"], group["weight_decay"] = cfg["lr"], cfg["weight_decay"]
    return changed


def clear_replaced(out: Path, replaced: list[Path]) -> None:
    """--overwrite: the earlier run's files that the new run does not write itself, removed when the
    new run first saves (its checks passed and an epoch finished), so a failed start keeps them."""
    if replaced:
        print(f"--overwrite: replacing the run in {out} ({', '.join(p.name for p in replaced)})", flush=True)
    for p in replaced:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    replaced.clear()


def save_epoch(out: Path, cfg: dict, ck: dict, improved: bool, meta: dict, row: dict, replaced: list) -> None:
    """log.csv, best.pt (when the kept weights changed), last.pt, and the progress line."""
    clear_replaced(out, replaced)
    write_log(out / "log.csv", ck["history"])
    if cfg["keep_epochs"]:  # weights of every epoch, for offline stopping-rule studies
        save_checkpoint(out / "epochs" / f"epoch-{row['epoch']:03d}.pt", dict(meta, **row, model=ck["model"]))
    if improved:
        save_checkpoint(out / "best.pt", ck)
    save_checkpoint(out / "last.pt", ck)
    draw_curves(out, ck["history"], meta)
    monitor = f"  monitor r {row['monitor_r']:.4f}" if "monitor_r" in row else ""
    print(f"[seed {meta['seed']}] epoch {row['epoch']:3d}  train r {row['train_r']:.4f}  val r {row['val_r']:.4f}  "
          f"best {row['best_val_r']:.4f}{' *' if improved else ''}{monitor}  {row['seconds']:.1f}s "
          f"(data wait {row['data_wait_pct']:.1f}%)", flush=True)


def draw_curves(out: Path, history: list, meta: dict) -> None:
    """curves.png: train, validation (and monitor) r per epoch, redrawn after every epoch."""
    import figures  # imports matplotlib only when drawing

    try:
        figures.curves_figure(out / "curves.png", history, title=f"{meta['model_name']} seed {meta['seed']}")
    except ImportError:  # matplotlib missing: the curves are in log.csv all the same
        pass


def fit_closed_form(model, corpus, out: Path, meta: dict, device, subject_index, replaced: list) -> dict:
    """Ridge: solve on the train parts, choose the regularization on the val parts."""
    t0 = time.time()
    info = model.fit([rec.get("train") for rec in corpus.with_part("train")],
                     [rec.get("val") for rec in corpus.with_part("val")])
    val_r = evaluate(model, corpus.with_part("val"), "val", device, subject_index)["r"]
    if not math.isfinite(val_r):
        raise Diverged(f"seed {meta['seed']}: closed-form fit gave a non-finite validation r")
    ck = dict(meta, model=model.state_dict(), optimizer={}, epoch=0, best_val_r=val_r, bad_epochs=0, history=[],
              torch_rng=torch.get_rng_state(), finished=True,
              fit_info={k: v for k, v in info.items() if isinstance(v, (int, float, str))})
    clear_replaced(out, replaced)
    save_checkpoint(out / "best.pt", ck)
    save_checkpoint(out / "last.pt", ck)
    write_log(out / "log.csv", [{"epoch": 0, "train_r": "", "val_r": round(val_r, 6), "best_val_r": round(val_r, 6),
                                 "seconds": round(time.time() - t0, 2)}])
    print(f"[seed {meta['seed']}] closed-form fit (alpha {info.get('alpha')}): val r {val_r:.4f} "
          f"in {time.time() - t0:.1f}s -> {out / 'best.pt'}", flush=True)
    return {"seed": meta["seed"], "best_val_r": val_r, "epochs": 0, "dir": str(out)}


def run_seed(cfg: dict, seed: int, corpus, local_rank: int) -> dict:
    """Train one seed in its locked folder (only rank 0 locks and writes; the others follow)."""
    out = seed_dir(cfg, seed)
    if runtime.world_size() > 1:
        if runtime.rank() == 0:
            with RunLock(out):
                replaced = prepare_run_dir(out, cfg, seed)
                runtime.barrier()
                return train_seed(cfg, seed, corpus, local_rank, replaced)
        prepare_run_dir(out, cfg, seed)
        runtime.barrier()
        return train_seed(cfg, seed, corpus, local_rank)
    with RunLock(out):
        replaced = prepare_run_dir(out, cfg, seed)
        done = finished_run(out, cfg, seed) if cfg["resume"] else None
        if done is not None:
            print(f"[seed {seed}] already finished (best val r {done['best_val_r']:.4f}): {out}", flush=True)
            return {"seed": seed, "best_val_r": done["best_val_r"], "epochs": done["epoch"], "dir": str(out)}
        return train_seed(cfg, seed, corpus, local_rank, replaced)


def check_setup(cfg: dict, corpus) -> None:
    """Settings that cannot work with this data or this launch: one-line config errors."""
    if cfg["time_fold"] and cfg["split"] != "time":
        raise cli.ConfigError(f"--time_fold={cfg['time_fold']} needs --split=time "
                                        f"(got --split={cfg['split']})")
    if cfg["ema_decay"] > 0 and cfg["avg_epochs"] > 1:
        raise cli.ConfigError("--avg_epochs and --ema_decay both average the weights: use one of them")
    run_dir = Path(cfg["run_dir"])
    if run_dir.exists() and not run_dir.is_dir():
        raise cli.ConfigError(f"--run_dir={cfg['run_dir']}: is a file, not a folder")
    world = runtime.world_size()
    if world > 1 and (cfg["jobs"] > 1 or cfg["batch_size"] % world or cfg["model"] == "linear"):
        raise cli.ConfigError(f"torchrun with {world} ranks: batch_size ({cfg['batch_size']}) must be a "
                                        "multiple of the number of ranks, jobs must be 1, and linear runs without "
                                        "torchrun")
    if corpus is not None and cfg["model"] != "linear":
        window = int(round(cfg["window_s"] * cfg["fs"]))
        longest = max(corpus.with_part("train") or corpus.recordings, key=lambda r: r.length("train"))
        if window > longest.length("train"):
            raise cli.ConfigError(
                f"--window_s={cfg['window_s']:g} ({window} samples) is longer than every training part; the longest "
                f"is {longest.rec_id} with {longest.length('train')} samples")


# Keys a closed-form fit never reads: given with --model=linear, they are reported as ignored.
GRADIENT_KEYS = ("epochs", "patience", "batch_size", "lr", "weight_decay", "ema_decay", "avg_epochs", "select",
                 "grad_clip", "amp", "compile", "data_seed", "dropout", "init")


def ignored_keys(cfg: dict, given: set) -> list[str]:
    """Keys the user set that cannot act in this mode (each is printed as a note, never silently dropped)."""
    notes = []
    if cfg["model"] == "linear":
        keys = sorted(k for k in GRADIENT_KEYS if k in given)
        if keys:
            verb = "has" if len(keys) == 1 else "have"
            notes.append(f"{', '.join('--' + k for k in keys)} {verb} no effect on --model=linear "
                         "(a closed-form ridge fit)")
    elif "patience" in given and cfg["select"] == "last":
        notes.append("--patience has no effect with --select=last (every epoch is trained; "
                     "--select=best_val stops early)")
    return notes


ERRORS = (cli.ConfigError, DataError, RunError, CheckpointError, FileError, Diverged)


def main(argv=None) -> list[dict]:
    """Train every seed of the config; an error of the setup, the data, a run folder or a diverged
    seed ends the program with one line naming what is wrong."""
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except ERRORS as exc:
        kind = {"ConfigError": "config error", "DataError": "data error", "Diverged": "training diverged"}
        raise SystemExit(f"{kind.get(type(exc).__name__, 'error')}: {exc}") from exc


def _main(argv: list[str]) -> list[dict]:
    cfg, given = cli.parse_or_exit(argv, "train")
    _, _, local_rank = runtime.dist_setup(cfg["device"])
    lead = runtime.rank() == 0
    runtime.set_threads(cfg["threads"])
    check_setup(cfg, None)
    if lead:
        ensure_data(cfg, given)  # rank 0 builds the demo corpus (when needed) before the others look for it
    runtime.barrier()
    if not lead:
        ensure_data(cfg, given)
    corpus = corpus_from_config(cfg)
    check_setup(cfg, corpus)
    preflight(cfg, corpus)  # before any output is touched
    if lead:
        for note in ignored_keys(cfg, given):
            print(f"note: {note}", flush=True)
    if lead:
        print(f"data: {corpus.folder} ({corpus.fmt}), {sum(r.piece_of is None for r in corpus.recordings)} recordings, "
              f"{len(corpus.subjects)} subjects, {corpus.n_chans} channels", flush=True)
    if cfg["jobs"] > 1 and len(cfg["seeds"]) > 1:  # each seed in a child process running this script
        run_sweep(cfg, argv, Path(__file__).resolve())
        results = [{"seed": s, "best_val_r": load_checkpoint(seed_dir(cfg, s) / "best.pt")["best_val_r"]}
                   for s in cfg["seeds"]]
    else:
        results = [run_seed(cfg, seed, corpus, local_rank) for seed in cfg["seeds"]]
    if len(results) > 1 and lead:
        summary = seed_ensemble([seed_dir(cfg, s) / "best.pt" for s in cfg["seeds"]], cfg["model"], corpus,
                                runtime.pick_device(cfg["device"]))
        path = Path(cfg["run_dir"]) / cfg["model"] / f"seeds-{'-'.join(map(str, cfg['seeds']))}.json"
        atomic_write_json(path, summary)
        print(f"{cfg['model']}: best val r over {len(results)} seeds: mean {summary['val_r_mean']:.4f} "
              f"sd {summary['val_r_sd']:.4f}; ensemble of the seeds {summary['val_r_ensemble']:.4f} -> {path}",
              flush=True)
    runtime.dist_teardown()
    return results


if __name__ == "__main__":
    runtime.sigterm_as_interrupt()
    try:
        main()
    except KeyboardInterrupt:
        print("\ninterrupted: each seed's last.pt holds its last completed epoch; continue with --resume", flush=True)
        sys.exit(130)
