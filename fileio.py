"""Files the project writes and reads: atomic writes, strict JSON, digests.

Every file the project writes goes through ``atomic_write_bytes``: a temp file in the same folder
named ``.<name>.<random>.tmp``, then a rename, so a killed process never leaves half a file.
``remove_stale_temps`` clears such leftovers of a killed process from a folder being written.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # names that mkstemp gives with our prefix/suffix


class FileError(OSError):
    """A file that cannot be read or written; the message starts with the path."""


def _umask() -> int:
    """The process umask, left unchanged (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """0o666 minus the umask: the mode open() would give (mkstemp makes files 0o600)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """0o777 minus the umask: the mode mkdir would give (mkdtemp makes folders 0o700)."""
    return 0o777 & ~_umask()


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    A full disk or another OS error becomes a FileError naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, FileError):
            raise
        what = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        err = FileError(f"{path}: cannot write ({what})")
        err.errno = exc.errno
        raise err from exc
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj).encode())


def remove_stale_temps(folder) -> list[Path]:
    """Delete temp files of our own naming (``.<name>.XXXXXXXX.tmp``) left in ``folder`` by a
    killed process. Call only on a folder this process owns (e.g. under its run lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = [p for p in folder.iterdir() if p.is_file() and TEMP_RE.match(p.name)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def _no_duplicate_keys(path):
    def hook(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"duplicate key {k!r}")
            seen.add(k)
        return dict(pairs)
    return hook


def read_json(path, error=ValueError, no_booleans: bool = False):
    """Parse a JSON file strictly: malformed JSON, a duplicate key or an unreadable file raises
    ``error`` with a one-line message naming the file. ``no_booleans``: the file holds numbers
    where values go, so a ``true``/``false`` (which numpy would read as 1/0) is an error too."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc
    if no_booleans and re.search(r"\b(true|false)\b", re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)):
        raise error(f"{path}: holds a JSON boolean (true/false) where numbers belong")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: malformed JSON ({exc})") from exc
    except ValueError as exc:  # from the duplicate-key hook
        raise error(f"{path}: {exc}") from exc


def json_cached(path, key, compute):
    """(value, True) from the JSON cache ``path`` when it was written for ``key``; otherwise
    (compute(), False), stored there atomically with its key. A missing, malformed or stale cache
    is simply recomputed; ``key`` must be JSON data (compared after a JSON round trip)."""
    path, key = Path(path), json.loads(json.dumps(key))
    try:
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            return kept["value"], True
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    value = compute()
    atomic_write_json(path, {"key": key, "value": value})
    return value, False


def sha256_file(path, n_hex: int = 64) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks (``n_hex``: keep the first n hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:n_hex]
