"""Run folders: ``run_dir/<model>/seed-<seed>/`` belongs to one process at a time, is never replaced
unless asked, and a finished run is recognised as finished. Also the data a run config selects."""
from __future__ import annotations

import csv
import errno
import fcntl
import io
import os
import shutil
from pathlib import Path

import config as config_module
from checkpoint import load_checkpoint
from EEG_Dataset import DataError, load_corpus
from fileio import atomic_write_bytes, remove_stale_temps

LOCK_FILE = ".lock"
# What train.py writes into a seed folder: the only files --overwrite removes.
RUN_FILES = ("best.pt", "last.pt", "log.csv")
RUN_DIRS = ("epochs",)
# Keys that shape the model or the data it sees: a resumed run must keep them.
ARCH_KEYS = ("model", "n_chans", "subject_embedding", "ema_decay", "avg_epochs", "select", "window_s", "batch_size",
             "data_seed",
             "data_dir", "subjects", "exclude_subjects", "val_recordings", "test_recordings", "monitor_recordings",
             "split", "time_fold", *config_module.MODEL_KEYS)


# What a run did before these keys existed: no weight averaging, the best validation epoch kept.
# A checkpoint that lacks one of them was trained so, whatever today's default is.
LEGACY = {"avg_epochs": 1, "select": "best_val", "ema_decay": 0.0}


class RunError(RuntimeError):
    """A run folder that cannot be used as asked; the message names the folder."""


def seed_dir(cfg: dict, seed: int) -> Path:
    return Path(cfg["run_dir"]) / cfg["model"] / f"seed-{seed}"


# ----------------------------------------------------------------------------- the lock


def lock_holder(folder) -> int | None:
    """The pid of the live process that holds ``folder``'s run lock, or None."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """An exclusive OS lock (flock) on a seed folder, held while this process writes there.

    The holder's pid is written into the lock file. The OS drops the lock when the process ends,
    however it ends, so a lock left by a dead process never blocks."""

    def __init__(self, folder):
        self.folder, self.fd = Path(folder), None

    def __enter__(self):
        if self.folder.exists() and not self.folder.is_dir():
            raise RunError(f"{self.folder}: exists and is not a folder")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunError(f"{self.folder}: cannot create the run folder ({exc.strerror or exc})") from exc
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
            os.close(self.fd)
            self.fd = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunError(f"{self.folder}: another process (pid {pid or '?'}) is training into this "
                               "folder; wait for it or choose another --run_dir") from exc
            raise
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        remove_stale_temps(self.folder)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# ----------------------------------------------------------------------------- folder policy


def run_files(folder) -> list[Path]:
    """What train.py wrote into ``folder`` (the only paths --overwrite removes)."""
    folder = Path(folder)
    return [folder / n for n in (*RUN_FILES, *RUN_DIRS) if (folder / n).exists()]


def prepare_run_dir(out: Path, cfg: dict, seed: int, dry_run: bool = False) -> None:
    """Check that the locked seed folder ``out`` may be written as ``cfg`` asks: a folder holding
    another run is only continued with --resume (which needs that run's last.pt) or replaced with
    --overwrite (which removes only what train.py wrote). ``dry_run``: decide, change nothing."""
    others = [p for p in out.iterdir() if p.name != LOCK_FILE] if out.is_dir() else []
    if not others:
        return
    if cfg["resume"]:
        if not (out / "last.pt").is_file():
            raise RunError(f"{out}: --resume, but the folder holds no last.pt of a run "
                           f"(it holds {', '.join(sorted(p.name for p in others)[:5])})")
        ck = load_checkpoint(out / "last.pt")
        if ck["model_name"] != cfg["model"] or ck["seed"] != seed:
            raise RunError(f"{out / 'last.pt'}: holds {ck['model_name']} seed {ck['seed']}, not {cfg['model']} seed {seed}")
        check_same_setup(out / "last.pt", ck, cfg)
        return
    if not cfg["overwrite"]:
        raise RunError(f"{out} already holds files. Pass --resume to continue its run, --overwrite to replace "
                       "it, or choose another --run_dir.")
    ours = run_files(out)
    if dry_run or not ours:
        return
    print(f"--overwrite: removing the run in {out} ({', '.join(p.name for p in ours)})", flush=True)
    for p in ours:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def check_same_setup(path: Path, ck: dict, cfg: dict) -> None:
    """Stop when the run in ``path`` was made with other ARCH_KEYS than ``cfg`` asks for: neither
    continuing it nor passing it off as finished would give the run that was asked for. A key the
    checkpoint lacks counts as the value it had before the key existed (LEGACY), else its default."""
    base = dict(config_module.defaults(), **LEGACY)
    was = {k: ck["config"].get(k, base.get(k)) for k in ARCH_KEYS}
    changed = {k: (was[k], cfg[k]) for k in ARCH_KEYS if was[k] != cfg[k]}
    if changed:
        raise RunError(f"{path}: cannot resume with a different model or data setup: "
                       + ", ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
                       + ". Use another --run_dir (or --overwrite to replace it).")


def finished_run(folder, cfg: dict, seed: int) -> dict | None:
    """The last.pt of ``folder`` if that run is finished for ``cfg`` (same model and seed), else None.

    A run that stopped at its epoch limit continues when --epochs is raised (closed-form fits have
    no history and stay finished; early-stopped runs stay finished unless --patience is raised)."""
    path = Path(folder) / "last.pt"
    if not path.exists():
        return None
    ck = load_checkpoint(path)
    more = ck.get("history") and ck["epoch"] < cfg["epochs"] and ck.get("bad_epochs", 0) < cfg["patience"]
    if ck.get("finished") and not more and ck["model_name"] == cfg["model"] and ck["seed"] == seed:
        check_same_setup(path, ck, cfg)
        return ck
    return None


def write_log(path: Path, rows: list[dict]) -> None:
    """log.csv: one row per epoch (a resumed older run may lack newer columns)."""
    if not rows:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), restval="")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def read_log(path: Path) -> list[dict]:
    """The rows of a log.csv (every epoch of every session of a resumed run); [] when it is missing."""
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def epoch_seconds(rows: list[dict]) -> float:
    """The seconds of log rows (log.csv's or a checkpoint's history), summed."""
    return sum(float(row.get("seconds") or 0) for row in rows)


def log_seconds(path: Path) -> float:
    """Training time of one seed: the epochs' seconds in its log.csv, summed."""
    return epoch_seconds(read_log(path))


# ----------------------------------------------------------------------------- data


def ensure_data(cfg: dict, given: set) -> None:
    """Only the default ``data_dir`` may fall back to the built-in demo corpus (built in
    ``demo_dir`` when missing). A ``data_dir`` the user gave that is missing, empty or unreadable
    is an error naming it, and nothing is written."""
    d = Path(cfg["data_dir"])
    try:
        usable = d.is_dir() and any(d.iterdir())
    except OSError as exc:
        raise DataError(f"{d}: cannot read the data folder ({exc.strerror or exc})") from exc
    if usable:
        return
    if "data_dir" in given:
        what = ("is a symlink that loops or points nowhere" if d.is_symlink() and not d.exists() else
                "does not exist" if not d.exists() else "is not a folder" if not d.is_dir() else "is empty")
        raise DataError(f"data_dir {d} {what}")
    import demo_corpus

    demo = Path(cfg["demo_dir"])
    split = demo / "split_data"
    if not (split.is_dir() and any(split.iterdir())):
        print(f"data_dir {d} is missing or empty: building the built-in demo corpus in {demo}/ "
              f"({cfg['demo_subjects']} subjects x {cfg['demo_minutes']} min, seed {cfg['demo_seed']})", flush=True)
        demo_corpus.make_demo_corpus(out_dir=str(demo), n_subjects=cfg["demo_subjects"], minutes=cfg["demo_minutes"],
                                     seed=cfg["demo_seed"], overwrite=(demo / "demo_info.json").is_file())
    if d.resolve() != split.resolve():
        print(f"data_dir {d} is missing or empty: training on the demo corpus in {split}", flush=True)
    cfg["data_dir"] = str(split)


def corpus_from_config(cfg: dict, folder=None, n_chans=None):
    """The corpus a run config selects (``folder``: another data folder read with the same selection)."""
    return load_corpus(
        folder or cfg["data_dir"], subjects=cfg.get("subjects"), exclude_subjects=cfg.get("exclude_subjects"),
        val_recordings=cfg.get("val_recordings"), test_recordings=cfg.get("test_recordings"),
        monitor_recordings=cfg.get("monitor_recordings"), split=cfg.get("split", "time"),
        time_fold=cfg.get("time_fold", 0), n_chans=n_chans or cfg.get("n_chans"))

