"""Tests of runs.py: the run lock, the run-folder policy, finished runs and the data a run may use."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cli
import newmodel
import runs
from checkpoint import save_checkpoint
from EEG_Dataset import DataError
from runs import RunError, RunLock, lock_holder, prepare_run_dir

ROOT = Path(__file__).resolve().parents[1]

# A child process that takes the run lock of argv[1] with runs.RunLock and holds it. runs.py's lock
# needs neither torch nor the data loader: they are stubbed so that the child starts in milliseconds
# instead of the seconds that importing torch takes.
HOLDER = textwrap.dedent(f"""
    import sys, time, types
    sys.path.insert(0, {str(ROOT)!r})
    for name, attrs in {{"checkpoint": ("CheckpointError", "load_checkpoint"),
                         "EEG_Dataset": ("DataError", "load_corpus")}}.items():
        stub = types.ModuleType(name)
        for attr in attrs:
            setattr(stub, attr, type(attr, (Exception,), {{}}))
        sys.modules[name] = stub
    import runs
    with runs.RunLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


@pytest.fixture
def holder(tmp_path):
    """Start a process holding the lock of a folder; yields (folder, process). Always ended here."""
    folder = tmp_path / "ivlaai" / "seed-1"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield folder, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


# --------------------------------------------------------------------------------------- the lock
def test_the_lock_is_exclusive_across_processes(holder):
    folder, proc = holder
    assert lock_holder(folder) == proc.pid
    with pytest.raises(RunError) as exc:
        with RunLock(folder):
            pass
    msg = str(exc.value)
    assert msg.startswith(str(folder)) and f"pid {proc.pid}" in msg and "\n" not in msg
    assert lock_holder(folder) == proc.pid  # the failed attempt changed nothing


def test_a_lock_left_by_a_killed_process_does_not_block(holder):
    folder, proc = holder
    proc.send_signal(signal.SIGKILL)  # no __exit__: the lock file keeps the dead process's pid
    proc.wait(timeout=10)
    assert (folder / runs.LOCK_FILE).read_text().strip() == str(proc.pid)
    assert lock_holder(folder) is None
    with RunLock(folder):
        assert lock_holder(folder) == os.getpid()
    assert lock_holder(folder) is None


def test_lock_holder_in_this_process_and_after_release(tmp_path):
    folder = tmp_path / "seed-1"
    assert lock_holder(folder) is None  # no folder, no lock file
    with RunLock(folder):
        assert folder.is_dir()
        assert lock_holder(folder) == os.getpid()
        with pytest.raises(RunError, match=f"pid {os.getpid()}"):  # a second lock in one process too
            with RunLock(folder):
                pass
        assert lock_holder(folder) == os.getpid()
    assert lock_holder(folder) is None
    with RunLock(folder):  # taken again after release
        pass


def test_taking_the_lock_removes_stale_temps_only(tmp_path):
    folder = tmp_path / "seed-1"
    folder.mkdir()
    (folder / ".last.pt.abcd1234.tmp").write_bytes(b"half")
    (folder / "notes.txt").write_text("mine")
    with RunLock(folder):
        assert sorted(p.name for p in folder.iterdir()) == [runs.LOCK_FILE, "notes.txt"]


def test_a_lock_on_a_file_is_a_run_error(tmp_path):
    path = tmp_path / "seed-1"
    path.write_text("not a folder")
    with pytest.raises(RunError) as exc:
        with RunLock(path):
            pass
    assert str(exc.value).startswith(str(path))
    assert path.read_text() == "not a folder"


def test_a_lock_under_a_file_is_a_run_error(tmp_path):
    (tmp_path / "runs").write_text("a file where run_dir should be")
    folder = tmp_path / "runs" / "ivlaai" / "seed-1"
    with pytest.raises(RunError) as exc:
        with RunLock(folder):
            pass
    assert str(exc.value).startswith(str(folder)) and "\n" not in str(exc.value)


# --------------------------------------------------------------------------------------- prepare_run_dir
def _cfg(**kw):
    return dict(cli.defaults("train"), **kw)


def _run_folder(folder: Path, notes=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("best.pt", "last.pt", "log.csv"):
        (folder / name).write_text(name)
    (folder / "epochs").mkdir(exist_ok=True)
    (folder / "epochs" / "epoch-001.pt").write_text("e")
    if notes:
        (folder / "notes.txt").write_text("my notes")
    return folder


def test_an_empty_or_lock_only_folder_is_used_as_it_is(tmp_path):
    assert prepare_run_dir(tmp_path / "missing", _cfg(), 1) == []
    assert not (tmp_path / "missing").exists()  # checking changes nothing: locking makes the folder
    with RunLock(tmp_path / "seed-1"):
        for cfg in (_cfg(), _cfg(overwrite=True)):
            assert prepare_run_dir(tmp_path / "seed-1", cfg, 1) == []  # nothing to replace
            assert [p.name for p in (tmp_path / "seed-1").iterdir()] == [runs.LOCK_FILE]


def test_a_folder_with_files_needs_resume_or_overwrite(tmp_path):
    folder = _run_folder(tmp_path / "seed-1")
    with pytest.raises(RunError) as exc:
        prepare_run_dir(folder, _cfg(), 1)
    msg = str(exc.value)
    assert msg.startswith(str(folder)) and "--resume" in msg and "--overwrite" in msg
    assert (folder / "best.pt").exists()


def test_resume_into_a_folder_without_last_pt_is_refused(tmp_path):
    folder = tmp_path / "seed-1"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "best.pt").write_text("x")
    with pytest.raises(RunError) as exc:
        prepare_run_dir(folder, _cfg(resume=True), 1)
    msg = str(exc.value)
    assert msg.startswith(str(folder)) and "last.pt" in msg and "notes.txt" in msg
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "notes.txt"]


def test_overwrite_names_only_what_train_wrote_and_changes_nothing(tmp_path):
    """prepare_run_dir decides; train.py removes the listed files only when the new run first saves."""
    folder = _run_folder(tmp_path / "seed-1")
    (folder / "sub").mkdir()
    with RunLock(folder):
        replaced = prepare_run_dir(folder, _cfg(overwrite=True), 1)
        assert sorted(p.name for p in replaced) == sorted(p.name for p in runs.run_files(folder))
        assert {p.name for p in replaced} >= {"best.pt", "epochs"}
        assert not {"notes.txt", "sub"} & {p.name for p in replaced}
        assert (folder / "best.pt").exists() and (folder / "epochs").exists()
    assert (folder / "notes.txt").read_text() == "my notes"


def _last_pt(folder: Path, model="ivlaai", seed=1, **cfg_changes) -> dict:
    cfg = _cfg(model=model, seeds=[seed], n_chans=4, ivlaai_blocks=1, ivlaai_width=8, ivlaai_feat=4,
               ivlaai_layers=1, ivlaai_kernel=3, ivlaai_context=3, **cfg_changes)
    args = newmodel.model_args(model, cfg)
    ck = {"model_name": model, "model_args": args, "model": newmodel.MODELS[model](**args).state_dict(),
          "subjects": ["S1"], "seed": seed, "n_chans": 4, "config": cfg, "epoch": 2, "history": [{"epoch": 1}],
          "bad_epochs": 0, "finished": True}
    save_checkpoint(folder / "last.pt", ck)
    return cfg


def test_resume_of_another_model_seed_or_setup_is_refused(tmp_path):
    folder = tmp_path / "seed-1"
    folder.mkdir()
    cfg = _last_pt(folder)
    prepare_run_dir(folder, dict(cfg, resume=True), 1)  # the same run: fine
    with pytest.raises(RunError, match="seed 1, not ivlaai seed 2"):
        prepare_run_dir(folder, dict(cfg, resume=True), 2)
    with pytest.raises(RunError, match="not vlaai seed 1"):
        prepare_run_dir(folder, dict(cfg, resume=True, model="vlaai"), 1)
    with pytest.raises(RunError) as exc:
        prepare_run_dir(folder, dict(cfg, resume=True, ivlaai_width=16), 1)
    assert str(exc.value).startswith(str(folder / "last.pt")) and "ivlaai_width was 8, now 16" in str(exc.value)


def test_finished_run(tmp_path):
    folder = tmp_path / "seed-1"
    assert runs.finished_run(folder, _cfg(), 1) is None  # nothing there
    folder.mkdir()
    cfg = _last_pt(folder)
    cfg = dict(cfg, epochs=2, patience=5)
    assert runs.finished_run(folder, cfg, 1)["seed"] == 1
    assert runs.finished_run(folder, cfg, 2) is None  # another seed
    assert runs.finished_run(folder, dict(cfg, epochs=5), 1) is None  # more epochs asked: continue it
    with pytest.raises(RunError, match="dropout"):
        runs.finished_run(folder, dict(cfg, dropout=0.3), 1)  # another setup is not passed off as finished


# --------------------------------------------------------------------------------------- ensure_data
def _data_cfg(tmp_path, data_dir):
    return _cfg(data_dir=str(data_dir), demo_dir=str(tmp_path / "demo"), demo_subjects=1, demo_minutes=0.1)


@pytest.mark.parametrize("kind", ["missing", "empty", "file", "loop"])
def test_a_given_data_dir_that_is_unusable_is_an_error_and_nothing_is_written(tmp_path, kind):
    d = tmp_path / "data"
    if kind == "empty":
        d.mkdir()
    elif kind == "file":
        d.write_text("x")
    elif kind == "loop":
        d.symlink_to(d)
    before = sorted(p.name for p in tmp_path.iterdir())
    cfg = _data_cfg(tmp_path, d)
    with pytest.raises(DataError) as exc:
        runs.ensure_data(cfg, {"data_dir"})
    assert str(d) in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / "demo").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert cfg["data_dir"] == str(d)


def test_a_usable_data_dir_is_left_as_it_is(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "DTU_S1_001.npz").write_bytes(b"")
    for given in (set(), {"data_dir"}):
        cfg = _data_cfg(tmp_path, d)
        runs.ensure_data(cfg, given)
        assert cfg["data_dir"] == str(d)
    assert not (tmp_path / "demo").exists()


def test_the_default_data_dir_falls_back_to_an_existing_demo_corpus(tmp_path, capsys, monkeypatch):
    import demo_corpus

    shape = dict(n_heldout=0, n_test_segments=1, segment_s=5.0, n_chans=64, fs=64)
    monkeypatch.setattr(demo_corpus, "DEMO_SHAPE", dict(shape, measure=False))
    demo_corpus.make_demo_corpus(tmp_path / "demo", n_subjects=1, minutes=0.1, seed=0, measure=False, **shape)
    split = tmp_path / "demo" / "split_data"
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*")}
    cfg = _data_cfg(tmp_path, tmp_path / "missing")
    runs.ensure_data(cfg, set())  # data_dir not given: the default may fall back
    assert cfg["data_dir"] == str(split)
    said = capsys.readouterr().out
    assert said == f"data_dir {tmp_path / 'missing'} is missing or empty: training on the demo corpus in {split}\n"
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "demo").rglob("*")} == before  # complete: not rebuilt
