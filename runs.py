"""Run folders: ``run_dir/<model>/seed-<seed>/`` belongs to one process at a time, is never replaced
unless asked, and a finished run is recognised as finished. Also the data a run config selects."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import cli
from checkpoint import load_checkpoint
from EEG_Dataset import DataError, load_corpus
from fileio import atomic_write_bytes
from outputs import LOCK_FILE, FolderLock, lock_holder_of

# What train.py writes into a seed folder: the only files --overwrite removes.
RUN_FILES = ("best.pt", "last.pt", "log.csv", "curves.png")
RUN_DIRS = ("epochs",)
# Keys that shape the model or the data it sees: a resumed run must keep them.
ARCH_KEYS = ("model", "n_chans", "subject_embedding", "ema_decay", "avg_epochs", "select", "window_s", "batch_size",
             "data_seed", "demo_subjects", "demo_minutes", "demo_seed",
             "data_dir", "subjects", "exclude_subjects", "val_recordings", "test_recordings", "monitor_recordings",
             "split", "time_fold", *cli.model_keys())


# What a run did before these keys existed: no weight averaging, the best validation epoch kept.
# A checkpoint that lacks one of them was trained so, whatever today's default is.
LEGACY = {"avg_epochs": 1, "select": "best_val", "ema_decay": 0.0}


class RunError(RuntimeError):
    """A run folder that cannot be used as asked; the message names the folder."""


def seed_dir(cfg: dict, seed: int) -> Path:
    return Path(cfg["run_dir"]) / cfg["model"] / f"seed-{seed}"


# ----------------------------------------------------------------------------- the lock


def lock_holder(folder) -> int | None:
    """The pid of the live process that holds ``folder``'s lock, or None."""
    return lock_holder_of(Path(folder) / LOCK_FILE)


class RunLock(FolderLock):
    """An exclusive OS lock on a seed folder, held while this process trains there (outputs.FolderLock)."""

    def __init__(self, folder):
        super().__init__(folder, busy="training into this folder", hint="wait for it or choose another --run_dir",
                         error=RunError)


# ----------------------------------------------------------------------------- folder policy


def run_files(folder) -> list[Path]:
    """What train.py wrote into ``folder`` (the only paths --overwrite removes)."""
    folder = Path(folder)
    return [folder / n for n in (*RUN_FILES, *RUN_DIRS) if (folder / n).exists()]


def prepare_run_dir(out: Path, cfg: dict, seed: int) -> list[Path]:
    """Check that the locked seed folder ``out`` may be written as ``cfg`` asks: a folder holding
    another run is only continued with --resume (which needs that run's last.pt) or replaced with
    --overwrite. Returns the earlier run's files that --overwrite replaces (only what train.py
    wrote); the caller removes them once the new run first saves. Nothing is changed here."""
    others = [p for p in out.iterdir() if p.name != LOCK_FILE] if out.is_dir() else []
    if cfg["resume"]:
        if not (out / "last.pt").is_file():
            held = f" (it holds {', '.join(sorted(p.name for p in others)[:5])})" if others else ""
            raise RunError(f"{out}: --resume, but the folder holds no last.pt of a run to continue{held}; "
                           "drop --resume to start a new run")
        ck = load_checkpoint(out / "last.pt")
        if ck["model_name"] != cfg["model"] or ck["seed"] != seed:
            raise RunError(f"{out / 'last.pt'}: holds {ck['model_name']} seed {ck['seed']}, "
                           f"not {cfg['model']} seed {seed}")
        check_same_setup(out / "last.pt", ck, cfg)
        return []
    if not others:
        return []
    if not cfg["overwrite"]:
        raise RunError(f"{out} already holds files. Pass --resume to continue its run, --overwrite to replace "
                       "it, or choose another --run_dir.")
    return run_files(out)


def check_same_setup(path: Path, ck: dict, cfg: dict) -> None:
    """Stop when the run in ``path`` was made with other ARCH_KEYS than ``cfg`` asks for: neither
    continuing it nor passing it off as finished would give the run that was asked for. A key the
    checkpoint lacks counts as the value it had before the key existed (LEGACY), else its default."""
    base = dict(cli.defaults(), **LEGACY)
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
    """Only the default ``data_dir`` may fall back to the built-in demo corpus in ``demo_dir``. A
    ``data_dir`` the user gave that is missing, empty or unreadable is an error naming it, and
    nothing is written.

    The demo corpus is used only when complete and built with the config's demo keys (its
    demo_info.json, written last, lists every file and the keys); otherwise it is (re)built, one
    line saying why, under its lock: a second process that finds the build under way stops at
    once naming the pid. A default data_dir that holds files but no demo corpus (no demo_info.json)
    is the user's own data and is used as it is."""
    d = Path(cfg["data_dir"])
    try:
        usable = d.is_dir() and any(d.iterdir())
    except OSError as exc:
        raise DataError(f"{d}: cannot read the data folder ({exc.strerror or exc})") from exc
    if "data_dir" in given:
        if usable:
            return
        what = ("is a symlink that loops or points nowhere" if d.is_symlink() and not d.exists() else
                "does not exist" if not d.exists() else "is not a folder" if not d.is_dir() else "is empty")
        raise DataError(f"data_dir {d} {what}")
    import demo_corpus

    demo = Path(cfg["demo_dir"])
    split = demo / demo_corpus.SPLIT_DIR
    in_demo = _same_folder(d, split)
    if usable and not in_demo:
        return
    keys = dict(n_subjects=cfg["demo_subjects"], minutes=cfg["demo_minutes"], seed=cfg["demo_seed"])
    try:
        if usable and demo_corpus.corpus_state(demo, **keys).state == "foreign":
            return
        demo_corpus.ensure_demo_corpus(demo, say=lambda line: print(line, flush=True), **keys)
    except (demo_corpus.OutputError, ValueError) as exc:
        raise DataError(str(exc)) from exc
    if not in_demo:
        print(f"data_dir {d} is missing or empty: training on the demo corpus in {split}", flush=True)
    cfg["data_dir"] = str(split)


def _same_folder(a: Path, b: Path) -> bool:
    """Whether two paths name one folder (symlinks resolved where they can be)."""
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return a.absolute() == b.absolute()


def corpus_from_config(cfg: dict, folder=None, n_chans=None):
    """The corpus a run config selects (``folder``: another data folder read with the same selection)."""
    return load_corpus(
        folder or cfg["data_dir"], subjects=cfg.get("subjects"), exclude_subjects=cfg.get("exclude_subjects"),
        val_recordings=cfg.get("val_recordings"), test_recordings=cfg.get("test_recordings"),
        monitor_recordings=cfg.get("monitor_recordings"), split=cfg.get("split", "time"),
        time_fold=cfg.get("time_fold", 0), n_chans=n_chans or cfg.get("n_chans"))

