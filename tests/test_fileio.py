"""Tests of fileio.py: atomic writes, strict JSON, stale temp cleanup, digests."""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

import fileio
from fileio import FileError, atomic_write_bytes, atomic_write_json, read_json, remove_stale_temps, sha256_file


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------- atomic writes
def test_atomic_write_creates_and_replaces(tmp_path):
    path = tmp_path / "sub" / "a.bin"  # missing parent folders are made
    atomic_write_bytes(path, b"one")
    assert path.read_bytes() == b"one"
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert _listing(path.parent) == ["a.bin"]  # no temp left behind
    assert (path.stat().st_mode & 0o777) == fileio.file_mode()  # not mkstemp's 0o600


def test_atomic_write_json(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": [1, 2], "b": None})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2], "b": None}


class Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_an_exception_leaves_no_temp_and_the_old_file(tmp_path, monkeypatch, where):
    path = tmp_path / "keep.txt"
    path.write_bytes(b"old")

    def boom(*a, **k):
        raise Boom("interrupted")

    monkeypatch.setattr(os, where, boom)
    with pytest.raises(Boom):
        atomic_write_bytes(path, b"new")
    monkeypatch.undo()
    assert _listing(tmp_path) == ["keep.txt"]
    assert path.read_bytes() == b"old"


def test_keyboard_interrupt_leaves_no_temp(tmp_path, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "new.txt", b"data")
    monkeypatch.undo()
    assert _listing(tmp_path) == []


def _full(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_disk_full_is_a_file_error_naming_the_path(tmp_path, monkeypatch, where):
    path = tmp_path / "out.pt"
    monkeypatch.setattr(os, where, _full)
    with pytest.raises(FileError) as exc:
        atomic_write_bytes(path, b"x" * 100)
    monkeypatch.undo()
    msg = str(exc.value)
    assert str(path) in msg and "disk full" in msg and "\n" not in msg
    assert str(exc.value).startswith(f"{path}: ")
    assert exc.value.errno == errno.ENOSPC
    assert isinstance(exc.value, OSError)  # callers catching OSError still catch it
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_disk_full_message_starts_with_the_path(tmp_path, monkeypatch, where):
    path = tmp_path / "out.pt"
    monkeypatch.setattr(os, where, _full)
    with pytest.raises(FileError) as exc:
        atomic_write_bytes(path, b"x" * 100)
    assert str(exc.value).startswith(f"{path}: cannot write (disk full)"), str(exc.value)


def test_other_os_error_names_the_path(tmp_path, monkeypatch):
    path = tmp_path / "out.json"

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(FileError) as exc:
        atomic_write_json(path, {"a": 1})
    monkeypatch.undo()
    assert str(exc.value) == f"{path}: cannot write (Permission denied)"
    assert _listing(tmp_path) == []


def test_parent_that_is_a_file_is_a_file_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileError) as exc:
        atomic_write_bytes(tmp_path / "f" / "a.bin", b"x")
    assert str(exc.value).startswith(f"{tmp_path / 'f' / 'a.bin'}: cannot write")


# --------------------------------------------------------------------------------------- strict JSON
def test_read_json_reads_plain_json(tmp_path):
    f = tmp_path / "a.json"
    f.write_text('{"a": {"b": [1, {"c": 2}]}, "d": "e"}')
    assert read_json(f) == {"a": {"b": [1, {"c": 2}]}, "d": "e"}


@pytest.mark.parametrize("text, key", [
    ('{"a": 1, "b": 2, "a": 3}', "a"),
    ('{"outer": {"r": 0.1, "r": 0.2}}', "r"),  # in a nested object too
    ('[{"x": 1}, {"y": 1, "y": 2}]', "y"),
])
def test_read_json_duplicate_key_names_file_and_key(tmp_path, text, key):
    f = tmp_path / "dup.json"
    f.write_text(text)
    with pytest.raises(ValueError) as exc:
        read_json(f)
    msg = str(exc.value)
    assert msg.startswith(str(f)) and repr(key) in msg and "duplicate" in msg and "\n" not in msg


def test_read_json_raises_the_callers_error(tmp_path):
    class MyError(Exception):
        pass

    f = tmp_path / "dup.json"
    f.write_text('{"a": 1, "a": 1}')
    with pytest.raises(MyError, match="duplicate key 'a'"):
        read_json(f, error=MyError)
    with pytest.raises(MyError, match="cannot read"):
        read_json(tmp_path / "missing.json", error=MyError)


@pytest.mark.parametrize("content", [b"", b"{", b"not json", b'{"a": 1,}', b"\xff\xfe\x00"])
def test_read_json_malformed_or_undecodable_names_the_file(tmp_path, content):
    f = tmp_path / "bad.json"
    f.write_bytes(content)
    with pytest.raises(ValueError) as exc:
        read_json(f)
    assert str(exc.value).startswith(str(f)) and "\n" not in str(exc.value)


def test_read_json_of_a_folder_names_it(tmp_path):
    with pytest.raises(ValueError) as exc:
        read_json(tmp_path)
    assert str(exc.value).startswith(str(tmp_path))


# --------------------------------------------------------------------------------------- stale temps
def test_remove_stale_temps_removes_only_our_temp_names(tmp_path):
    ours = [".best.pt.abcd1234.tmp", ".log.csv.a_B9zz00.tmp", ".sub-001.json.XXXXXXXX.tmp"]
    others = ["best.pt", "notes.txt", ".hidden", ".best.pt.abc.tmp",  # 3 characters, not 8
              ".best.pt.abcdefghi.tmp",  # 9 characters
              "best.pt.abcd1234.tmp",  # no leading dot
              ".best.pt.abcd1234.tmp.bak", ".abcd1234.tmp",  # no name between the dots
              ".x.abcd-234.tmp"]  # '-' is not in mkstemp's alphabet
    for name in ours + others:
        (tmp_path / name).write_text("x")
    (tmp_path / ".dir.abcd1234.tmp").mkdir()  # a folder is never removed
    gone = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in gone) == sorted(ours)
    assert _listing(tmp_path) == sorted(others + [".dir.abcd1234.tmp"])


def test_remove_stale_temps_matches_the_names_atomic_write_makes(tmp_path, monkeypatch):
    """A temp left by a process killed mid-write is recognised."""
    left = []
    real_replace = os.replace

    def killed(src, dst):
        left.append(Path(src).name)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    monkeypatch.setattr(os, "unlink", lambda p: None)  # as if the process died before cleaning up
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "last.pt", b"x")
    monkeypatch.undo()
    assert os.replace is real_replace
    assert _listing(tmp_path) == left and fileio.TEMP_RE.match(left[0])
    assert [p.name for p in remove_stale_temps(tmp_path)] == left
    assert _listing(tmp_path) == []


def test_remove_stale_temps_on_a_missing_folder(tmp_path):
    assert remove_stale_temps(tmp_path / "missing") == []


# --------------------------------------------------------------------------------------- digests
def test_sha256_file(tmp_path):
    f = tmp_path / "data.bin"
    data = os.urandom(1000) * 5000  # 5 MB: more than one 4 MiB chunk
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()
    assert sha256_file(f, n_hex=12) == hashlib.sha256(data).hexdigest()[:12]
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


# --------------------------------------------------------------------------------------- json cache
def test_json_cached_recomputes_on_a_new_key_or_a_broken_cache(tmp_path):
    path, calls = tmp_path / "cache.json", []

    def compute():
        calls.append(1)
        return {"v": len(calls)}

    assert fileio.json_cached(path, {"k": 1}, compute) == ({"v": 1}, False)
    assert fileio.json_cached(path, {"k": 1}, compute) == ({"v": 1}, True)
    assert fileio.json_cached(path, {"k": 2}, compute) == ({"v": 2}, False)
    path.write_text("{broken")
    assert fileio.json_cached(path, {"k": 2}, compute) == ({"v": 3}, False)
    path.write_text("[1, 2]")  # valid JSON, not a cache
    assert fileio.json_cached(path, {"k": 2}, compute) == ({"v": 4}, False)
