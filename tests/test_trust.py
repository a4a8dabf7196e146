"""What a user can trust train.py and test.py with: run folders that belong to one process, data
and result folders that are never mixed up or overwritten, one-line errors for bad settings, bad
files and diverged runs. One test per case, on tiny synthetic data (64 channels, 20 s trials) and
tiny models; the programs run in this process where that is enough, and as real processes where
the exit status, a second process or a clean stderr is the point."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import train
from runs import lock_holder

ROOT = Path(__file__).resolve().parents[1]

# test.py by path: the name 'test' is also the standard library's regression-test package.
_spec = importlib.util.spec_from_file_location("test_script_trust", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

FS, T, C = 64, 64 * 20, 64
TINY = ["--model=ivlaai", "--ivlaai_width=8", "--ivlaai_layers=1", "--ivlaai_blocks=1", "--window_s=1",
        "--threads=1"]


# ----------------------------------------------------------------------------------- data
def envelope(rng, n: int) -> np.ndarray:
    return np.abs(np.convolve(rng.standard_normal(n + 15), np.ones(16) / 16, "valid"))[:n, None]


def write_npz_folder(folder: Path, subjects=(1, 2), trials=(1, 2)) -> Path:
    """DTU_S<s>_<ttt>.npz trials whose EEG holds the envelope (so models learn something)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    mix = rng.standard_normal(C)
    for s in subjects:
        for t in trials:
            env = envelope(rng, T)
            eeg = env * mix + 0.5 * rng.standard_normal((T, C))
            np.savez(folder / f"DTU_S{s}_{t:03d}.npz", eeg=eeg.astype(np.float32), envelope=env.astype(np.float32))
    return folder


def write_test_set(root: Path, subjects=(1, 2), n_samples: int = 5 * FS) -> tuple[Path, Path]:
    """A challenge-format test set (sub-XXX.json: {segment_id: (T, C)}) and its labels."""
    test_dir, label_dir = root / "tests", root / "labels"
    test_dir.mkdir(parents=True)
    label_dir.mkdir(parents=True)
    rng = np.random.default_rng(1)
    mix = rng.standard_normal(C)
    for s in subjects:
        sub = f"sub-{s:03d}"
        env = envelope(rng, n_samples)
        eeg = env * mix + 0.5 * rng.standard_normal((n_samples, C))
        (test_dir / f"{sub}.json").write_text(json.dumps({f"{sub}_0": eeg.astype(np.float32).tolist()}))
        (label_dir / f"{sub}.json").write_text(json.dumps({f"{sub}_0": [env.tolist(), "stimulus.npz"]}))
    return test_dir, label_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_npz_folder(tmp_path_factory.mktemp("trust") / "npz")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A finished 1-epoch tiny ivlaai run, seed 1. Tests copy it before changing anything."""
    run_dir = tmp_path_factory.mktemp("trained") / "runs"
    train.main([f"--data_dir={data}", *TINY, f"--run_dir={run_dir}", "--epochs=1"])
    return run_dir


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Relative default paths (xfdata/, runs/, prediction_result/) land in the test's own folder."""
    monkeypatch.chdir(tmp_path)


# ----------------------------------------------------------------------------------- helpers
def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def env_vars() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)
    return env


def run_script(script: str, args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env_vars(), capture_output=True,
                          text=True, timeout=timeout)


def start_train(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """train.py in the background, its output in ``log`` (a pipe nobody reads could fill and block it)."""
    out = open(log, "w")
    try:
        return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env_vars(), stdout=out,
                                stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    finally:
        out.close()


def wait_for_lock(folder: Path, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Until ``proc`` holds ``folder``'s run lock (its pid is in the .lock file); then pause it
    (SIGSTOP: still a live process holding its lock, but no longer taking a CPU core from the test)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        lock = folder / ".lock"
        if lock.is_file() and lock.read_text().strip() == str(proc.pid):
            proc.send_signal(signal.SIGSTOP)
            return
        assert proc.poll() is None, f"train.py ended (exit {proc.returncode}) before locking:\n{log.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"{folder}: no lock of pid {proc.pid} within {timeout}s:\n{log.read_text()}")


def stop(proc: subprocess.Popen, log: Path) -> None:
    """SIGTERM, as a scheduler would: train.py stops at its last completed epoch, exit 130."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # running again first, so the SIGTERM is handled at once
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, log.read_text()


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The stderr of a process that stopped on an error: exactly one line, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def score_args(run_dir: Path, test_dir: Path, label_dir: Path, result_dir: Path, *extra) -> list[str]:
    return [f"--run_dir={run_dir}", f"--test_dir={test_dir}", f"--label_dir={label_dir}",
            f"--result_dir={result_dir}", *extra]


# ----------------------------------------------------------------------------------- one process per run folder
def test_a_second_train_into_a_locked_seed_folder_stops_at_once(data, tmp_path):
    """Two train.py into one seed folder: the second stops at once, naming the folder and the pid
    of the process that holds it, and exits non-zero; the first goes on and stops cleanly."""
    run_dir = tmp_path / "runs"
    args = [f"--data_dir={data}", *TINY, f"--run_dir={run_dir}", "--epochs=100000"]
    log = tmp_path / "first.log"
    first = start_train(args, tmp_path, log)
    folder = run_dir / "ivlaai" / "seed-1"
    try:
        wait_for_lock(folder, first, log)
        t0 = time.time()
        second = run_script("train.py", args, tmp_path)
        assert time.time() - t0 < 30, "the second process did not stop at once"
        msg = one_line_error(second)  # exit status non-zero, one line, no traceback
        assert str(folder) in msg and f"pid {first.pid}" in msg, msg
        assert "epoch" not in second.stdout  # it trained nothing
        assert first.poll() is None, "the first process was disturbed"
        first.send_signal(signal.SIGCONT)
        time.sleep(0.3)
        assert first.poll() is None, "the first process was disturbed"
        assert lock_holder(folder) == first.pid
    finally:
        stop(first, log)
    assert "Traceback" not in log.read_text()
    assert lock_holder(folder) is None  # the lock ends with its process


def test_test_py_refuses_a_seed_folder_whose_lock_is_held_by_a_live_process(data, trained, tmp_path):
    run_dir = tmp_path / "runs"
    shutil.copytree(trained, run_dir)  # seed 1: finished
    args = [f"--data_dir={data}", *TINY, f"--run_dir={run_dir}", "--seeds=[2]", "--epochs=100000",
            "--patience=100000"]
    log = tmp_path / "train.log"
    proc = start_train(args, tmp_path, log)  # seed 2: being written
    folder = run_dir / "ivlaai" / "seed-2"
    test_dir, label_dir = write_test_set(tmp_path / "set")
    try:
        wait_for_lock(folder, proc, log)
        with pytest.raises(SystemExit) as exc:
            test_script.main(score_args(run_dir, test_dir, label_dir, tmp_path / "pred"))
        msg = str(exc.value.code)
        assert str(folder) in msg and f"pid {proc.pid}" in msg, msg
        assert not (tmp_path / "pred").exists()
        # the finished seed alone may be tested meanwhile
        res = test_script.main(score_args(run_dir, test_dir, label_dir, tmp_path / "pred1", "--seeds=[1]"))
        assert res["seeds"] == [1]
    finally:
        stop(proc, log)


# ----------------------------------------------------------------------------------- data folders
@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_a_given_data_dir_that_is_missing_or_empty_is_an_error_and_no_demo_is_built(tmp_path, kind):
    data_dir = tmp_path / "no" / "such" / "folder" if kind == "missing" else tmp_path / "empty"
    if kind == "empty":
        data_dir.mkdir()
    demo = tmp_path / "demo"
    with pytest.raises(SystemExit) as exc:
        train.main([f"--data_dir={data_dir}", f"--demo_dir={demo}", "--model=linear", f"--run_dir={tmp_path / 'r'}"])
    msg = str(exc.value.code)
    assert str(data_dir) in msg and ("does not exist" if kind == "missing" else "is empty") in msg, msg
    assert not demo.exists(), "a demo corpus was built for a data_dir the user gave"
    assert not (tmp_path / "r").exists()
    assert not (tmp_path / "xfdata").exists()  # nor in the default demo_dir
    assert not (tmp_path / "no").exists() if kind == "missing" else not any(data_dir.iterdir())


# ----------------------------------------------------------------------------------- result folders
@pytest.mark.parametrize("where", ["equal", "inside", "containing", "label_dir"])
def test_result_dir_overlapping_the_inputs_is_refused_even_with_overwrite(trained, tmp_path, where):
    root = tmp_path / "set"
    test_dir, label_dir = write_test_set(root)
    result_dir = {"equal": test_dir, "inside": test_dir / "pred", "containing": root, "label_dir": label_dir}[where]
    before = file_bytes(root)
    with pytest.raises(SystemExit) as exc:
        test_script.main(score_args(trained, test_dir, label_dir, result_dir, "--overwrite"))
    msg = str(exc.value.code)
    assert "overlap" in msg and str(result_dir) in msg, msg
    assert file_bytes(root) == before  # inputs byte-identical, nothing added
    assert not (test_dir / "pred").exists()


def test_eval_score_of_another_run_is_not_replaced_without_overwrite(data, trained, tmp_path):
    other = tmp_path / "other"
    train.main([f"--data_dir={data}", *TINY, f"--run_dir={other}", "--epochs=1", "--seeds=[2]"])
    result_dir = tmp_path / "pred"
    ev = ["--test_dir=None", f"--eval_dir={data}", f"--result_dir={result_dir}"]
    test_script.main([f"--run_dir={trained}", *ev])
    first = (result_dir / "eval_score.json").read_bytes()
    with pytest.raises(SystemExit) as exc:
        test_script.main([f"--run_dir={other}", *ev])
    assert "--overwrite" in str(exc.value.code) and str(result_dir) in str(exc.value.code)
    assert (result_dir / "eval_score.json").read_bytes() == first
    test_script.main([f"--run_dir={other}", *ev, "--overwrite"])  # asked for: replaced
    assert json.loads((result_dir / "eval_score.json").read_text())["per_seed"].keys() == {"seed-2"}


def test_a_users_own_prediction_file_is_never_replaced_even_with_overwrite(trained, tmp_path):
    """result_dir holds test.py's results for sub-002 (listed in its manifest) and the user's own
    sub-001.json: --overwrite may replace the former, never the latter."""
    test_dir, label_dir = write_test_set(tmp_path / "set")
    only_2 = tmp_path / "only2"
    only_2.mkdir()
    shutil.copy(test_dir / "sub-002.json", only_2)
    result_dir = tmp_path / "pred"
    test_script.main(score_args(trained, only_2, label_dir, result_dir))
    assert "sub-002.json" in json.loads((result_dir / "manifest.json").read_text())["files"]
    mine = result_dir / "sub-001.json"
    mine.write_text('{"sub-001_0": [1.0, 2.0, 3.0]}')
    before = file_bytes(result_dir)
    with pytest.raises(SystemExit) as exc:
        test_script.main(score_args(trained, test_dir, label_dir, result_dir, "--overwrite"))
    msg = str(exc.value.code)
    assert "sub-001.json" in msg and "did not write" in msg, msg
    assert file_bytes(result_dir) == before


def test_overwrite_never_removes_a_file_outside_result_dir(trained, tmp_path):
    test_dir, label_dir = write_test_set(tmp_path / "set")
    result_dir = tmp_path / "pred"
    result_dir.mkdir()
    victim = tmp_path / "thesis.tex"
    victim.write_text("years of work")
    # a damaged (or copied, or hand-edited) manifest of an earlier run
    (result_dir / "manifest.json").write_text(json.dumps({"inputs": {"earlier": 1}, "files": ["../thesis.tex"]}))
    try:
        test_script.main(score_args(trained, test_dir, label_dir, result_dir, "--overwrite"))
    except SystemExit:
        pass  # refusing is fine too
    assert victim.is_file() and victim.read_text() == "years of work"


def test_test_set_and_eval_dir_in_one_command(data, trained, tmp_path):
    test_dir, label_dir = write_test_set(tmp_path / "set")
    result_dir = tmp_path / "pred"
    res = test_script.main(score_args(trained, test_dir, label_dir, result_dir, f"--eval_dir={data}"))
    assert "ensemble" in res and "eval" in res
    assert {"sub-001.json", "sub-002.json", "score.json", "eval_score.json"} <= set(file_bytes(result_dir))


# ----------------------------------------------------------------------------------- diverged runs
def test_a_diverging_run_stops_naming_seed_epoch_and_lr(data, tmp_path, capsys):
    run_dir = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        train.main([f"--data_dir={data}", *TINY, f"--run_dir={run_dir}", "--epochs=3", "--lr=1e30"])
    msg = str(exc.value.code)  # a message: exit status 1
    assert msg.startswith("training diverged:") and "seed 1" in msg and "epoch 1" in msg and "lr 1e+30" in msg, msg
    assert "not finite" in msg  # the loss really became non-finite (not a rejected setting)
    out = capsys.readouterr().out
    assert "done" not in out and "epoch   1" not in out, out
    folder = run_dir / "ivlaai" / "seed-1"
    assert not (folder / "best.pt").exists() and not (folder / "last.pt").exists()  # nothing of that epoch kept
    assert lock_holder(folder) is None


@pytest.mark.slow  # three processes
def test_a_parallel_seed_sweep_with_a_diverging_config_lists_the_failed_seeds(data, tmp_path, capsys):
    run_dir = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        train.main([f"--data_dir={data}", *TINY, f"--run_dir={run_dir}", "--epochs=2", "--lr=1e30", "--seeds=[1,2]",
                    "--jobs=2"])
    msg = str(exc.value.code)
    assert re.search(r"seeds \[(1, 2|2, 1)\] failed", msg), msg  # in the order they ended
    out = capsys.readouterr().out
    assert "FAILED" in out and " done:" not in out
    for seed in (1, 2):
        log = (run_dir / "ivlaai" / "logs" / f"seed-{seed}.log").read_text()
        assert f"training diverged: seed {seed}, epoch 1" in log and "Traceback" not in log, log
    assert not (run_dir / "ivlaai" / "seeds-1-2.json").exists()


# ----------------------------------------------------------------------------------- labels
def relabel(label_dir: Path, rename: dict[str, str]) -> None:
    for p in label_dir.glob("*.json"):
        d = json.loads(p.read_text())
        p.write_text(json.dumps({rename.get(k, k): v for k, v in d.items()}))


def test_labels_that_match_no_predicted_segment_are_an_error(trained, tmp_path):
    test_dir, label_dir = write_test_set(tmp_path / "set")
    relabel(label_dir, {"sub-001_0": "sub-001_7", "sub-002_0": "sub-002_7"})
    with pytest.raises(SystemExit) as exc:
        test_script.main(score_args(trained, test_dir, label_dir, tmp_path / "pred"))
    msg = str(exc.value.code)
    assert str(label_dir) in msg and "none of its 2 labels" in msg, msg


def test_labels_that_partly_match_print_a_warning_with_counts(trained, tmp_path, capsys):
    test_dir, label_dir = write_test_set(tmp_path / "set")
    relabel(label_dir, {"sub-002_0": "sub-002_7"})
    res = test_script.main(score_args(trained, test_dir, label_dir, tmp_path / "pred"))
    out = capsys.readouterr().out
    assert "warning: 1 of 2 labels match" in out and "the other 1 score 0" in out, out
    assert res["ensemble"]["per_subject"]["sub-002"] == 0.0  # the unmatched label scores 0


# ----------------------------------------------------------------------------------- test-set files
def test_a_duplicate_key_in_a_test_json_names_the_file_and_key(trained, tmp_path):
    test_dir, label_dir = write_test_set(tmp_path / "set")
    bad = test_dir / "sub-002.json"
    seg = json.loads(bad.read_text())["sub-002_0"]
    bad.write_text('{"sub-002_0": %s, "sub-002_0": %s}' % (json.dumps(seg), json.dumps(seg)))
    with pytest.raises(SystemExit) as exc:
        test_script.main(score_args(trained, test_dir, label_dir, tmp_path / "pred"))
    msg = str(exc.value.code)
    assert str(bad) in msg and "duplicate key 'sub-002_0'" in msg, msg
    assert not (tmp_path / "pred").exists()


def test_manifest_and_score_files_in_the_test_dir_are_not_read_as_subjects(trained, tmp_path, capsys):
    test_dir, label_dir = write_test_set(tmp_path / "set")
    (test_dir / "manifest.json").write_text(json.dumps({"inputs": {}, "files": ["sub-001.json"]}))
    (test_dir / "score.json").write_text(json.dumps({"ensemble": {"total": 0.5}}))
    res = test_script.main(score_args(trained, test_dir, label_dir, tmp_path / "pred"))
    out = capsys.readouterr().out
    assert "ignored: manifest.json, score.json" in out, out
    assert sorted(p.name for p in (tmp_path / "pred").glob("sub-*.json")) == ["sub-001.json", "sub-002.json"]
    assert set(res["ensemble"]["per_subject"]) == {"sub-001", "sub-002"}


# ----------------------------------------------------------------------------------- checkpoints
def test_a_checkpoint_of_another_model_in_a_linear_folder_is_an_error_naming_the_file(trained, tmp_path):
    run_dir = tmp_path / "runs"
    target = run_dir / "linear" / "seed-1" / "best.pt"
    target.parent.mkdir(parents=True)
    shutil.copy(trained / "ivlaai" / "seed-1" / "best.pt", target)
    test_dir, label_dir = write_test_set(tmp_path / "set")
    with pytest.raises(SystemExit) as exc:
        test_script.main(score_args(run_dir, test_dir, label_dir, tmp_path / "pred", "--model=linear"))
    msg = str(exc.value.code)
    assert str(target) in msg and "ivlaai" in msg and "linear" in msg, msg
    assert not (tmp_path / "pred").exists()


def test_resume_into_a_folder_that_is_not_a_run_is_refused(data, tmp_path):
    run_dir = tmp_path / "runs"
    folder = run_dir / "ivlaai" / "seed-1"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    with pytest.raises(SystemExit) as exc:
        train.main([f"--data_dir={data}", *TINY, f"--run_dir={run_dir}", "--epochs=1", "--resume"])
    msg = str(exc.value.code)
    assert str(folder) in msg and "no last.pt" in msg and "notes.txt" in msg, msg
    assert (folder / "notes.txt").read_text() == "my notes\n"
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "notes.txt"]


# ----------------------------------------------------------------------------------- one-line errors of real processes
# Each case is a real train.py or test.py process whose stderr must be one line and no traceback.
# They are started together by one fixture (each is mostly Python start-up), and checked one by one.
# config cases: (train.py arguments, what the one-line error must name)
CONFIG_CASES = {
    "fs=0": (["--fs=0"], ["--fs", "0"]),
    "lr=-1": (["--lr=-1"], ["--lr", "-1"]),
    "dropout=2": (["--dropout=2"], ["--dropout", "2"]),
    "seed=2**32": (["--seeds=[4294967296]"], ["--seeds", "4294967296"]),
    "window_s=1e6": (["--window_s=1e6"], ["--window_s", "longest", "DTU_S1_001"]),
    "run_dir=file": (["--run_dir={file}"], ["{file}"]),
}
DAMAGES = ("truncated", "empty")
MEMORY_LIMIT = 4 << 30  # address space: a tiny run needs < 1 GiB; one 1e6 s window of 64 channels is 16 GB


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.fixture(scope="module")
def processes(data, trained, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("processes")
    file = work / "a_file"
    file.write_text("not a folder\n")
    commands = {}
    for name, (args, _) in CONFIG_CASES.items():
        base = [f"--data_dir={data}", "--model=ivlaai", "--ivlaai_width=8", "--ivlaai_layers=1", "--ivlaai_blocks=1",
                "--threads=1", "--epochs=1", f"--run_dir={work / 'runs'}", f"--demo_dir={work / 'demo'}"]
        commands[name] = ["train.py", *base, *[a.replace("{file}", str(file)) for a in args]]
    for damage in DAMAGES:  # test.py on a run whose best.pt is cut in half / empty
        run_dir = work / damage
        shutil.copytree(trained, run_dir)
        best = run_dir / "ivlaai" / "seed-1" / "best.pt"
        blob = best.read_bytes()
        best.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else b"")
        test_dir, label_dir = write_test_set(work / f"set-{damage}")
        commands[damage] = ["test.py", *score_args(run_dir, test_dir, label_dir, work / f"pred-{damage}")]
    procs = {name: (subprocess.Popen([sys.executable, str(ROOT / cmd[0]), *cmd[1:]], cwd=work, env=env_vars(),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=_limit_memory), time.time()) for name, cmd in commands.items()}
    results = {}
    for name, (proc, t0) in procs.items():
        out, err = proc.communicate(timeout=180)
        results[name] = (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.time() - t0)
    return {"results": results, "file": file, "work": work}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_a_bad_config_value_is_a_one_line_error_naming_it(processes, case):
    proc, seconds = processes["results"][case]
    line = one_line_error(proc)
    for word in CONFIG_CASES[case][1]:
        word = word.replace("{file}", str(processes["file"]))
        assert word in line, (word, line)
    assert not (processes["work"] / "demo").exists()
    assert not list((processes["work"] / "runs").rglob("*.pt")) if (processes["work"] / "runs").exists() else True
    if case == "window_s=1e6":  # 64e6-sample windows: found out from the data, before anything is allocated
        assert seconds < 60, f"took {seconds:.0f} s"  # (an allocation would also fail the address-space limit)
        assert "[seed" not in proc.stdout, proc.stdout  # no model was built
    if case == "run_dir=file":
        assert processes["file"].read_text() == "not a folder\n"


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_best_pt_is_a_one_line_error_naming_the_file(processes, damage):
    proc, _ = processes["results"][damage]
    line = one_line_error(proc)
    best = processes["work"] / damage / "ivlaai" / "seed-1" / "best.pt"
    assert str(best) in line and ("empty file" if damage == "empty" else "truncated") in line, line
    assert not (processes["work"] / f"pred-{damage}").exists()


# ----------------------------------------------------------------------------------- check before you delete
@pytest.mark.parametrize("bad", ["typo", "not_hdf5", "other_model", "cuda"])
def test_overwrite_keeps_the_finished_run_when_an_input_is_bad(data, trained, tmp_path, bad):
    """--overwrite with a bad --init (a typo, a file that is not HDF5, another architecture's
    best.pt) or a device this machine lacks stops before the finished run is touched."""
    run_dir = tmp_path / "runs"
    shutil.copytree(trained, run_dir)
    before = file_bytes(run_dir)
    fake = tmp_path / "weights.h5"
    fake.write_text("not an HDF5 file\n")
    other = tmp_path / "linear_runs"
    if bad == "other_model":
        train.main([f"--data_dir={data}", "--model=linear", f"--run_dir={other}", "--threads=1"])
    arg = {"typo": f"--init={tmp_path / 'nope.pt'}", "not_hdf5": f"--init={fake}",
           "other_model": f"--init={other / 'linear' / 'seed-1' / 'best.pt'}", "cuda": "--device=cuda"}[bad]
    if bad == "cuda" and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a CUDA GPU, so --device=cuda is not a bad input here")
    with pytest.raises(SystemExit) as exc:
        train.main([f"--data_dir={data}", *TINY, f"--run_dir={run_dir}", "--epochs=1", "--overwrite", arg])
    assert "removing" not in str(exc.value.code) and "replacing" not in str(exc.value.code)
    assert file_bytes(run_dir) == before


def test_overwrite_replaces_only_what_train_py_wrote_once_the_new_run_saves(data, trained, tmp_path, capsys):
    run_dir = tmp_path / "runs"
    shutil.copytree(trained, run_dir)
    folder = run_dir / "ivlaai" / "seed-1"
    (folder / "epochs").mkdir()
    (folder / "epochs" / "epoch-001.pt").write_bytes(b"old")
    (folder / "notes.txt").write_text("mine\n")
    train.main([f"--data_dir={data}", *TINY, f"--run_dir={run_dir}", "--epochs=1", "--overwrite", "--seeds=[1]",
                "--lr=1e-3"])
    assert "--overwrite: replacing the run" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "best.pt", "curves.png", "last.pt", "log.csv",
                                                        "notes.txt"]
    assert torch_load(folder / "best.pt")["config"]["lr"] == 1e-3


def torch_load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_with_a_new_lr_applies_it_and_records_it(data, tmp_path, capsys):
    """--resume --lr=X: the optimizer trains on at X, and the checkpoint says from which epoch."""
    run_dir = tmp_path / "runs"
    args = [f"--data_dir={data}", *TINY, f"--run_dir={run_dir}", "--seeds=[1]", "--avg_epochs=1"]
    train.main([*args, "--epochs=1", "--lr=1e-3"])
    capsys.readouterr()
    train.main([*args, "--epochs=2", "--lr=5e-4", "--resume"])
    assert "lr 0.001 -> 0.0005" in capsys.readouterr().out
    last = torch_load(run_dir / "ivlaai" / "seed-1" / "last.pt")
    assert last["optimizer"]["param_groups"][0]["lr"] == 5e-4 and last["config"]["lr"] == 5e-4
    assert len(last["resumed"]) == 1 and last["resumed"][0]["after_epoch"] == 1
    assert {k: tuple(v) for k, v in last["resumed"][0]["changed"].items()} == {"lr": (1e-3, 5e-4), "epochs": (1, 2)}


def test_resume_with_no_run_folder_is_refused(data, tmp_path):
    run_dir = tmp_path / "runs"
    with pytest.raises(SystemExit, match="--resume, but the folder holds no last.pt of a run to continue"):
        train.main([f"--data_dir={data}", *TINY, f"--run_dir={run_dir}", "--epochs=1", "--resume"])
    assert not (run_dir / "ivlaai" / "seed-1" / "best.pt").exists()


# ----------------------------------------------------------------------------------- test.py: one writer, whole sets
def test_a_second_test_py_into_a_locked_result_dir_stops_naming_the_pid(trained, tmp_path):
    from outputs import FolderLock

    test_dir, label_dir = write_test_set(tmp_path / "set")
    result_dir = tmp_path / "pred"
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                             "from outputs import FolderLock; l = FolderLock(sys.argv[2]).__enter__();"
                             "print('locked', flush=True); time.sleep(60)", str(ROOT), str(result_dir)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=rf"{result_dir}: another process \(pid {proc.pid}\) is writing results"):
            test_script.main(score_args(trained, test_dir, label_dir, result_dir))
    finally:
        proc.kill()
        proc.wait()
    assert not any(p.name.startswith("sub-") for p in result_dir.iterdir())
    with FolderLock(result_dir):  # the dead holder's lock does not block
        pass


def test_overwrite_keeps_the_old_results_when_prediction_fails(data, trained, tmp_path, monkeypatch):
    test_dir, label_dir = write_test_set(tmp_path / "set")
    result_dir = tmp_path / "pred"
    test_script.main(score_args(trained, test_dir, label_dir, result_dir))
    before = {k: v for k, v in file_bytes(result_dir).items() if not k.startswith(".")}
    other = tmp_path / "other"
    shutil.copytree(trained, other)

    def broken(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C while predicting

    monkeypatch.setattr(test_script, "predict_segments", broken)
    with pytest.raises(KeyboardInterrupt):
        test_script.main(score_args(other, test_dir, label_dir, result_dir, "--overwrite"))
    assert {k: v for k, v in file_bytes(result_dir).items() if not k.startswith(".")} == before
    assert not [p for p in result_dir.iterdir() if p.name.startswith(".staging-")]


def test_seeds_of_different_channel_counts_stop_before_anything_is_written(data, trained, tmp_path):
    run_dir = tmp_path / "runs"
    shutil.copytree(trained, run_dir)
    narrow = tmp_path / "narrow"
    write_npz_folder(narrow, subjects=(1,), trials=(1,))
    for p in narrow.glob("*.npz"):  # the same trial with 32 channels
        z = dict(np.load(p))
        np.savez(p, eeg=z["eeg"][:, :32], envelope=z["envelope"])
    train.main([f"--data_dir={narrow}", *TINY, "--n_chans=32", f"--run_dir={run_dir}", "--epochs=1", "--seeds=[2]",
                "--split=time"])
    test_dir, label_dir = write_test_set(tmp_path / "set")
    with pytest.raises(SystemExit, match=r"the seeds read different EEG channel counts \{1: 64, 2: 32\}"):
        test_script.main(score_args(run_dir, test_dir, label_dir, tmp_path / "pred"))
    assert not (tmp_path / "pred").exists()


def test_a_segment_id_in_two_subjects_files_is_an_error_naming_both(trained, tmp_path):
    test_dir, label_dir = write_test_set(tmp_path / "set")
    segs = json.loads((test_dir / "sub-002.json").read_text())
    segs["sub-001_0"] = segs.pop("sub-002_0")
    (test_dir / "sub-002.json").write_text(json.dumps(segs))
    with pytest.raises(SystemExit, match=r"sub-002.json: segment 'sub-001_0' is also in .*sub-001.json"):
        test_script.main(score_args(trained, test_dir, label_dir, tmp_path / "pred"))


def test_a_mistyped_label_dir_is_an_error(trained, tmp_path):
    test_dir, _ = write_test_set(tmp_path / "set")
    with pytest.raises(SystemExit, match=r"label_dir .*lables does not exist"):
        test_script.main(score_args(trained, test_dir, tmp_path / "set" / "lables", tmp_path / "pred"))


def test_an_unfinished_run_is_scored_with_a_note(data, tmp_path, capsys):
    run_dir = tmp_path / "runs"
    train.main([f"--data_dir={data}", *TINY, f"--run_dir={run_dir}", "--epochs=1", "--avg_epochs=1"])
    last = run_dir / "ivlaai" / "seed-1" / "last.pt"
    ck = torch_load(last)
    ck["finished"], ck["config"]["epochs"] = False, 3  # as a run stopped after epoch 1 of 3 leaves it
    import torch
    torch.save(ck, last)
    test_dir, label_dir = write_test_set(tmp_path / "set")
    test_script.main(score_args(run_dir, test_dir, label_dir, tmp_path / "pred"))
    assert "is an unfinished run (stopped after epoch 1 of 3)" in capsys.readouterr().out


def test_result_dir_inside_a_seed_folder_it_reads_is_refused(trained, tmp_path):
    run_dir = tmp_path / "runs"
    shutil.copytree(trained, run_dir)
    test_dir, label_dir = write_test_set(tmp_path / "set")
    inside = run_dir / "ivlaai" / "seed-1" / "pred"
    with pytest.raises(SystemExit, match="overlap"):
        test_script.main(score_args(run_dir, test_dir, label_dir, inside))
    assert not inside.exists()


def test_a_seed_folder_holding_another_seeds_checkpoint_is_refused(trained, tmp_path):
    run_dir = tmp_path / "runs"
    shutil.copytree(trained, run_dir)
    shutil.copytree(run_dir / "ivlaai" / "seed-1", run_dir / "ivlaai" / "seed-2")
    test_dir, label_dir = write_test_set(tmp_path / "set")
    with pytest.raises(SystemExit, match=r"seed-2/best.pt: holds seed 1, but sits in seed-2"):
        test_script.main(score_args(run_dir, test_dir, label_dir, tmp_path / "pred"))


@pytest.mark.parametrize("key", ["--model=vlaai", "--seeds=[1]"])
def test_keys_that_cannot_act_with_checkpoint_are_errors(trained, tmp_path, key):
    test_dir, label_dir = write_test_set(tmp_path / "set")
    best = trained / "ivlaai" / "seed-1" / "best.pt"
    with pytest.raises(SystemExit, match=rf"--{key[2:].split('=')[0]} has no effect with --checkpoint"):
        test_script.main([f"--checkpoint={best}", f"--test_dir={test_dir}", f"--label_dir={label_dir}",
                          f"--result_dir={tmp_path / 'pred'}", key])


def test_a_commit_killed_halfway_is_finished_by_the_next_writer(tmp_path):
    """The journal names the staged set; recover() moves the rest into place and writes the manifest."""
    from outputs import JOURNAL, Staging, recover

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.json").write_text("old a")
    (folder / "gone.json").write_text("old only")
    (folder / "mine.txt").write_text("a user's file")
    with Staging(folder) as st:
        st.path("a.json").write_text("new a")
        st.path("b.json").write_text("new b")
        files = st.files()
        # the process is killed after the journal is written and one file is moved
        __import__("fileio").atomic_write_json(folder / JOURNAL, {
            "stage": st.stage.name, "files": files, "remove": ["gone.json"], "manifest_name": "manifest.json",
            "manifest": {"files": files}})
        os.replace(st.stage / "a.json", folder / "a.json")
        st.stage = None  # killed: nothing cleans up
    assert recover(folder)
    assert (folder / "a.json").read_text() == "new a" and (folder / "b.json").read_text() == "new b"
    assert not (folder / "gone.json").exists() and (folder / "mine.txt").read_text() == "a user's file"
    assert json.loads((folder / "manifest.json").read_text()) == {"files": ["a.json", "b.json"]}
    assert sorted(p.name for p in folder.iterdir()) == ["a.json", "b.json", "manifest.json", "mine.txt"]


def test_a_commit_interrupted_after_its_journal_keeps_the_stage_for_recovery(tmp_path, monkeypatch):
    """Ctrl-C inside commit() once the journal is written: the stage stays, and recover() then
    completes the commit instead of removing the old files with nothing to replace them."""
    import outputs

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a.json").write_text("old a")
    real = outputs.recover

    def interrupted(f):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "recover", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with outputs.Staging(folder) as st:
            st.path("a.json").write_text("new a")
            st.commit(remove=["a.json"], manifest_name="manifest.json", manifest={"files": ["a.json"]})
    monkeypatch.setattr(outputs, "recover", real)
    assert outputs.recover(folder)
    assert (folder / "a.json").read_text() == "new a"
    assert json.loads((folder / "manifest.json").read_text()) == {"files": ["a.json"]}


def test_keys_that_cannot_act_in_a_mode_are_reported(data, tmp_path, capsys):
    train.main([f"--data_dir={data}", *TINY, f"--run_dir={tmp_path / 'a'}", "--epochs=1", "--patience=3"])
    assert "note: --patience has no effect with --select=last" in capsys.readouterr().out
    train.main([f"--data_dir={data}", "--model=linear", f"--run_dir={tmp_path / 'b'}", "--threads=1", "--lr=1e-2"])
    assert "note: --lr has no effect on --model=linear" in capsys.readouterr().out
