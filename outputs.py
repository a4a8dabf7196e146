"""Output folders: one writer at a time, outputs built aside, committed whole.

Every program that writes (train.py, test.py, preprocess.py, the demo build) follows one rule:

1. check everything it will read first, and only then touch an output;
2. hold an OS lock on the output folder for the whole run (``FolderLock``): a second writer
   stops at once, naming the folder and the holder's pid;
3. write the new outputs into a staging folder inside the target (``Staging``), then commit them:
   a journal (``.commit.json``) names the staged files and the old files they replace, the files
   are moved into place, the manifest is written, the journal removed. A process killed during a
   commit leaves the journal, and the next writer under the lock finishes that commit
   (``recover``), so the folder holds either the old set or the new one, never a mix.

Only files a program's own manifest lists are ever removed; anything else in the folder survives.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from fileio import FileError, atomic_write_json, dir_mode, read_json, remove_stale_temps

LOCK_FILE = ".lock"
JOURNAL = ".commit.json"
STAGING_PREFIX = ".staging-"


class OutputError(RuntimeError):
    """An output folder that cannot be written as asked; the message names the folder."""


def lock_holder_of(lock_path) -> int | None:
    """The pid of the live process that holds the lock file ``lock_path``, or None (-1: unknown pid)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
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


def sibling_lock(folder) -> Path:
    """The lock file of a folder that is replaced as a whole (by a rename): beside it, not in it."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


class FolderLock:
    """An exclusive OS lock (flock) on ``lock_path``, held while this process writes ``folder``.

    The holder's pid is written into the lock file. The OS drops the lock when the process ends,
    however it ends, so a lock left by a dead process never blocks. ``busy``: what the message
    says the other process is doing, e.g. 'training into this folder'."""

    def __init__(self, folder, lock_path=None, busy: str = "writing this folder", hint: str = "wait for it",
                 error=OutputError):
        self.folder = Path(folder)
        self.lock_path = Path(lock_path) if lock_path is not None else self.folder / LOCK_FILE
        self.busy, self.hint, self.error, self.fd = busy, hint, error, None

    def __enter__(self):
        if self.folder.exists() and not self.folder.is_dir():
            raise self.error(f"{self.folder}: exists and is not a folder")
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self.error(f"{self.folder}: cannot create the folder or its lock ({exc.strerror or exc})") from exc
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = os.pread(self.fd, 32, 0).decode(errors="replace").strip()
            os.close(self.fd)
            self.fd = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise self.error(f"{self.folder}: another process (pid {pid or '?'}) is {self.busy}; "
                                 f"{self.hint}") from exc
            raise
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        if self.folder.is_dir():
            remove_stale_temps(self.folder)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def inside(folder: Path, rel: str) -> bool:
    """``rel`` is a relative path that stays inside ``folder`` (no '..', no absolute path, no link out)."""
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts:
        return False
    return folder.resolve() in (folder / p).resolve().parents


def recover(folder) -> bool:
    """Finish a commit that a killed process left half done (call under the folder's lock); then
    remove staging folders of killed processes. True if a commit was finished."""
    folder = Path(folder)
    journal = folder / JOURNAL
    done = False
    if journal.is_file():
        plan = read_json(journal, OutputError)
        stage = folder / plan["stage"]
        for rel in plan["remove"]:
            if rel not in plan["files"] and inside(folder, rel):
                (folder / rel).unlink(missing_ok=True)
        for rel in plan["files"]:
            if (stage / rel).is_file() and inside(folder, rel):
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(stage / rel, folder / rel)
        if plan.get("manifest_name"):
            atomic_write_json(folder / plan["manifest_name"], plan["manifest"])
        journal.unlink()
        done = True
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_dir() and p.name.startswith(STAGING_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
    return done


class Staging:
    """A staging folder inside ``folder`` for a new set of outputs, committed by ``commit``.

    Write each new file to ``stage.path('rel/name')``; nothing in ``folder`` changes until
    ``commit``. Leaving the ``with`` block without a commit (an error, Ctrl-C) removes the stage."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.stage: Path | None = None

    def __enter__(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.folder))
            os.chmod(self.stage, dir_mode())
        except OSError as exc:
            raise FileError(f"{self.folder}: cannot write ({exc.strerror or exc})") from exc
        return self

    def path(self, rel: str) -> Path:
        p = self.stage / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.stage)) for p in self.stage.rglob("*") if p.is_file())

    def commit(self, remove=(), manifest_name: str | None = None, manifest: dict | None = None) -> list[str]:
        """Move every staged file into place, remove the old files ``remove`` lists (paths relative
        to the folder, e.g. those of the previous manifest), then write the manifest. Returns the
        committed files."""
        files = self.files()
        # from here the stage belongs to the journal: an interruption leaves both for recover()
        stage, self.stage = self.stage, None
        atomic_write_json(self.folder / JOURNAL, {"stage": stage.name, "files": files, "remove": sorted(remove),
                                                  "manifest_name": manifest_name, "manifest": manifest})
        recover(self.folder)
        return files

    def __exit__(self, *exc) -> None:
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            self.stage = None
