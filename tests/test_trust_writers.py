"""What a user can trust preprocess.py and the demo-corpus build with: one writer per output folder,
outputs built aside and put in place whole, nothing removed that the program's own manifest does
not list, and one-line errors for a busy folder or a full disk. One test per case, on tiny
synthetic inputs (4-channel EEG, 6 s of audio; demo corpora of one or two subjects)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

import cli
import demo_corpus
import preprocess as pp
import runs
from EEG_Dataset import DataError
from outputs import FolderLock, lock_holder_of, sibling_lock

ROOT = Path(__file__).resolve().parents[1]

mne = pytest.importorskip("mne")

FS_AUDIO, FS_EEG, SECONDS = 16000, 128, 6.0
SMALL_DEMO = dict(n_heldout=1, n_test_segments=1, segment_s=5.0, n_chans=64, fs=64, measure=False)


# ----------------------------------------------------------------------------------- inputs
def write_inputs(folder: Path, subjects=("S1",)) -> Path:
    """A wav and one 4-channel FIF recording per subject (stimulus at 0.5 s); returns pairs.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(int(SECONDS * FS_AUDIO)) * np.abs(np.sin(np.arange(int(SECONDS * FS_AUDIO)) / 4000))
    wavfile.write(folder / "story.wav", FS_AUDIO, (audio / np.abs(audio).max() * 30000).astype(np.int16))
    rows = ["subject,eeg_file,audio_file,onset_s"]
    for s in subjects:
        data = rng.standard_normal((4, int((SECONDS + 1) * FS_EEG))) * 1e-5
        raw = mne.io.RawArray(data, mne.create_info(["Fz", "Cz", "Pz", "Oz"], FS_EEG, "eeg"), verbose="error")
        raw.save(folder / f"{s}_raw.fif", overwrite=True, verbose="error")
        rows.append(f"{s},{s}_raw.fif,story.wav,0.5")
    (folder / f"pairs_{'_'.join(subjects)}.csv").write_text("\n".join(rows) + "\n")
    return folder / f"pairs_{'_'.join(subjects)}.csv"


def preprocess_main(pairs: Path, out: Path, *extra) -> dict:
    return pp.main([f"--pairs={pairs}", f"--out_dir={out}", "--pre_channels=4", *extra])


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (lock files aside: they stay, by design) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def build_leftovers(parent: Path, out: Path) -> list[str]:
    """Build folders preprocess.py may have left beside out_dir or inside it."""
    beside = [p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}.") and p.name != f".{out.name}.lock"]
    inside = [p.name for p in out.iterdir() if p.name.startswith(".staging-") or p.name == ".commit.json"] \
        if out.is_dir() else []
    return beside + inside


def message_of(exc_info) -> str:
    msg = str(exc_info.value.code)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.fixture
def earlier_output(tmp_path) -> Path:
    """out/: a finished preprocess.py output of subject S1."""
    out = tmp_path / "out"
    preprocess_main(write_inputs(tmp_path / "in"), out)
    return out


class HeldLock:
    """A second process that holds ``folder``'s .lock (as train.py holds its seed folder) until closed."""

    def __init__(self, folder: Path):
        code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from outputs import FolderLock; "
                "lock = FolderLock(sys.argv[2]).__enter__(); print('locked', flush=True); time.sleep(120)")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(folder)], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "locked"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# ----------------------------------------------------------------------------------- preprocess.py
@pytest.mark.parametrize("manifest", ["lists its files", "written before manifests listed files"])
def test_overwrite_replaces_only_what_the_manifest_lists_and_keeps_the_users_files(earlier_output, tmp_path,
                                                                                   manifest, capsys):
    out = earlier_output
    if manifest != "lists its files":
        old = json.loads((out / "manifest.json").read_text())
        del old["files"]
        (out / "manifest.json").write_text(json.dumps(old))
    (out / "notes.txt").write_text("my notes")
    (out / "sub").mkdir()
    (out / "sub" / "a.npy").write_bytes(b"mine")
    seed = out / "runs" / "ivlaai" / "seed-1"
    seed.mkdir(parents=True)
    (seed / "best.pt").write_bytes(b"a trained model")
    (seed / ".lock").write_text("12345\n")  # left by a finished run: nobody holds it
    users = {k: v for k, v in tree(out).items() if "_-_" not in k and k != "manifest.json"}
    preprocess_main(write_inputs(tmp_path / "in", ("S9",)), out, "--overwrite")
    after = tree(out)
    assert {k: after.get(k) for k in users} == users, "a file the manifest does not list was changed or removed"
    assert sorted(k.split("_-_")[1] for k in after if k.endswith(".npy") and "_-_" in k) == ["S9"] * 6
    new = json.loads((out / "manifest.json").read_text())
    assert set(new["files"]) == {k for k in after if "_-_" in k}
    assert "kept 3 entries its manifest.json does not list: notes.txt, runs, sub" in capsys.readouterr().out
    assert build_leftovers(tmp_path, out) == []


def test_overwrite_refuses_a_file_it_would_write_that_the_manifest_does_not_list(earlier_output, tmp_path):
    out = earlier_output
    mine = out / "train_-_S9_-_story_-_eeg.npy"
    mine.write_bytes(b"my own recording")
    pairs = write_inputs(tmp_path / "in2", ("S9",))
    before = tree(tmp_path)
    with pytest.raises(SystemExit) as exc:
        preprocess_main(pairs, out, "--overwrite")
    msg = message_of(exc)
    assert msg.startswith(f"preprocess error: {mine}: this run would write it, but {out / 'manifest.json'} "
                          "does not list it"), msg
    assert tree(tmp_path) == before
    assert build_leftovers(tmp_path, out) == []


def test_a_folder_locked_by_a_running_process_is_refused_before_anything_is_touched(earlier_output, tmp_path):
    out = earlier_output
    seed = out / "runs" / "ivlaai" / "seed-1"
    seed.mkdir(parents=True)
    pairs = write_inputs(tmp_path / "in2", ("S9",))
    holder = HeldLock(seed)
    try:
        before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file() and p.name != ".lock"}
        with pytest.raises(SystemExit) as exc:
            preprocess_main(pairs, out, "--overwrite")
        msg = message_of(exc)
        pid = holder.proc.pid
        assert msg.startswith(f"preprocess error: {seed}: a running process (pid {pid}) holds its lock"), msg
        assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file() and p.name != ".lock"} == before
        assert build_leftovers(tmp_path, out) == []
        assert lock_holder_of(seed / ".lock") == holder.proc.pid
    finally:
        holder.close()


def test_a_second_preprocess_into_the_same_out_dir_stops_at_once_naming_the_pid(tmp_path):
    pairs = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    with FolderLock(out, lock_path=sibling_lock(out)):  # as the first preprocess.py holds it
        t0 = time.time()
        with pytest.raises(SystemExit) as exc:
            preprocess_main(pairs, out)
        assert time.time() - t0 < 10
    msg = message_of(exc)
    assert msg == (f"preprocess error: {out}: another process (pid {os.getpid()}) is preprocessing into this "
                   "folder; wait for it or choose another --out_dir"), msg
    assert not out.exists() and build_leftovers(tmp_path, out) == []


@pytest.mark.parametrize("target", ["new out_dir", "earlier output"])
def test_a_full_disk_is_a_one_line_error_naming_the_file_and_leaves_out_dir_as_it_was(tmp_path, monkeypatch, target):
    out = tmp_path / "out"
    if target == "earlier output":
        preprocess_main(write_inputs(tmp_path / "in"), out)
    before = tree(out) if out.exists() else None
    pairs = write_inputs(tmp_path / "in2", ("S9",))
    real_fsync, calls = os.fsync, []

    def fsync(fd):  # the disk fills up on the third file
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(SystemExit) as exc:
        preprocess_main(pairs, out, "--overwrite")
    msg = message_of(exc)
    assert msg.startswith("preprocess error: ") and "_-_S9_-_story_-_" in msg, msg
    assert msg.endswith(f".npy: cannot write (disk full); {out} was left as it was"), msg
    assert (tree(out) if out.exists() else None) == before
    assert build_leftovers(tmp_path, out) == []


def test_a_commit_interrupted_midway_is_finished_by_the_next_run(earlier_output, tmp_path, monkeypatch):
    """Ctrl-C while the new files move in: the journal and the staged files stay, and the next run
    into that out_dir finishes the move under the lock before its own checks (a mix never stays)."""
    out = earlier_output
    (out / "notes.txt").write_text("mine")
    pairs = write_inputs(tmp_path / "in2", ("S9",))
    real_replace, moves = os.replace, []

    def replace(src, dst):
        if ".staging-" in str(src) and ".staging-" not in str(dst):
            moves.append(dst)
            if len(moves) == 2:
                raise KeyboardInterrupt
        return real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(KeyboardInterrupt):
            preprocess_main(pairs, out, "--overwrite")
    assert (out / ".commit.json").is_file()
    with pytest.raises(SystemExit, match="pass --overwrite"):  # the same command without --overwrite
        preprocess_main(pairs, out)
    assert not (out / ".commit.json").exists()  # finished, under the lock
    assert sorted(k.split("_-_")[1] for k in tree(out) if "_-_" in k) == ["S9"] * 6
    assert json.loads((out / "manifest.json").read_text())["recordings"][0]["subject"] == "S9"
    assert (out / "notes.txt").read_text() == "mine" and build_leftovers(tmp_path, out) == []


# ----------------------------------------------------------------------------------- the demo corpus
def demo_cfg(tmp_path: Path, subjects: int = 1) -> dict:
    """train.py's config with the default data_dir inside a demo_dir in ``tmp_path``."""
    demo = tmp_path / "xfdata"
    return dict(cli.defaults(), data_dir=str(demo / "split_data"), demo_dir=str(demo), demo_subjects=subjects,
                demo_minutes=0.1, demo_seed=0)


def fresh_build(tmp_path: Path, subjects: int = 1) -> dict[str, bytes]:
    """The files of an uninterrupted build of the same corpus, built elsewhere."""
    shape = {k: v for k, v in SMALL_DEMO.items() if k != "measure"}
    demo_corpus.make_demo_corpus(tmp_path / "fresh", n_subjects=subjects, minutes=0.1, seed=0, measure=False, **shape)
    return tree(tmp_path / "fresh")


@pytest.fixture
def small_demo(monkeypatch):
    """train.py's demo build with a corpus small enough for a test (the three config keys still apply)."""
    monkeypatch.setattr(demo_corpus, "DEMO_SHAPE", SMALL_DEMO)


@pytest.mark.parametrize("how", ["Ctrl-C while generating", "Ctrl-C while moving the files into place",
                                 "half a corpus from an older version"])
def test_an_interrupted_demo_build_is_never_used_and_the_next_run_rebuilds_it(tmp_path, monkeypatch, small_demo,
                                                                              how, capsys):
    cfg = demo_cfg(tmp_path, subjects=2)
    demo = Path(cfg["demo_dir"])
    if how == "half a corpus from an older version":  # what an interrupted build of the old code left
        runs.ensure_data(dict(cfg), set())
        (demo / "demo_info.json").unlink()
        for p in sorted((demo / "split_data").glob("*_-_sub-002_-_*")):
            p.unlink()
    else:
        with monkeypatch.context() as m:
            if how == "Ctrl-C while generating":
                def interrupted(*args, **kwargs):
                    raise KeyboardInterrupt
                m.setattr(demo_corpus, "_write_test_set", interrupted)
            else:
                real_replace, moves = os.replace, []

                def replace(src, dst):  # a move out of the staging folder is the commit
                    if ".staging-" in str(src) and ".staging-" not in str(dst):
                        moves.append(dst)
                        if len(moves) == 3:
                            raise KeyboardInterrupt
                    return real_replace(src, dst)
                m.setattr(os, "replace", replace)
            with pytest.raises(KeyboardInterrupt):
                runs.ensure_data(dict(cfg), set())
    if how == "Ctrl-C while generating":
        assert not list(demo.glob(".staging-*")) and not (demo / "split_data").exists()
    if how == "Ctrl-C while moving the files into place":  # the journal: the next build finishes the move
        assert (demo / ".commit.json").is_file() and len(list(demo.glob(".staging-*"))) == 1
    state = demo_corpus.corpus_state(demo, 2, 0.1, 0, **{k: v for k, v in SMALL_DEMO.items() if k != "measure"})
    assert state.state != "complete"
    capsys.readouterr()
    used = dict(cfg)
    runs.ensure_data(used, set())
    said = capsys.readouterr().out
    assert ("incomplete" if how != "Ctrl-C while generating" else "building") in said, said
    assert used["data_dir"] == str(demo / "split_data")
    assert tree(demo) == fresh_build(tmp_path, subjects=2), "the rebuilt corpus differs from a complete build"


def test_a_demo_build_locked_by_another_process_stops_at_once_naming_the_pid(tmp_path, small_demo, monkeypatch):
    import train

    monkeypatch.chdir(tmp_path)  # train.py's default data_dir and demo_dir: xfdata/ here, as in a fresh clone
    with FolderLock(tmp_path / "xfdata"):  # a first train.py building the demo corpus
        t0 = time.time()
        with pytest.raises(SystemExit) as exc:
            train.main(["--model=linear", f"--run_dir={tmp_path / 'runs'}", "--threads=1"])
        assert time.time() - t0 < 30
    msg = message_of(exc)
    assert msg == (f"data error: xfdata: another process (pid {os.getpid()}) is building the demo corpus in this "
                   "folder; wait for it to finish, then run this command again"), msg
    assert sorted(p.name for p in (tmp_path / "xfdata").iterdir()) == [".lock"]
    assert not (tmp_path / "runs").exists()


def test_other_demo_keys_rebuild_the_demo_corpus_with_a_note(tmp_path, small_demo, capsys):
    cfg = demo_cfg(tmp_path, subjects=2)
    demo = Path(cfg["demo_dir"])
    runs.ensure_data(dict(cfg), set())
    (demo / "notes.txt").write_text("mine")
    capsys.readouterr()
    runs.ensure_data(dict(cfg, demo_subjects=1), set())
    said = capsys.readouterr().out.strip()
    assert said == (f"the demo corpus in {demo}/ was built with demo_subjects=2 (now 1): rebuilding it "
                    "(1 subjects x 0.1 min, seed 0)"), said
    assert tree(demo) == {**fresh_build(tmp_path, subjects=1), "notes.txt": b"mine"}
    # the same keys again: used as it is, not rebuilt
    before = {p: p.stat().st_mtime_ns for p in demo.rglob("*")}
    runs.ensure_data(dict(cfg, demo_subjects=1), set())
    assert capsys.readouterr().out == ""
    assert {p: p.stat().st_mtime_ns for p in demo.rglob("*")} == before


def test_the_users_own_data_in_the_default_data_dir_is_used_and_never_replaced(tmp_path, small_demo):
    """SparrKULee-style names like the demo's, but no demo_info.json: the user's data, not a half-built demo."""
    cfg = demo_cfg(tmp_path)
    split = Path(cfg["data_dir"])
    split.mkdir(parents=True)
    for part in ("train", "val", "test"):
        for feat in ("eeg", "envelope"):
            np.save(split / f"{part}_-_sub-001_-_audiobook_1_-_{feat}.npy", np.zeros((640, 64 if feat == "eeg" else 1),
                                                                                    np.float32))
    before = tree(tmp_path)
    used = dict(cfg)
    runs.ensure_data(used, set())
    assert used["data_dir"] == str(split)
    assert tree(tmp_path) == before and not (split.parent / ".lock").exists()
    # and a demo build elsewhere refuses to add its files next to them
    with pytest.raises(DataError, match=r"split_data/test_-_sub-001_-_audiobook_1_-_eeg\.npy is not a file of the demo "
                                        r"corpus .*demo_info\.json does not exist\)"):
        runs.ensure_data(dict(cfg, data_dir=str(tmp_path / "missing")), set())
    assert tree(tmp_path) == before
