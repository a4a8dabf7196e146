"""Smoke tests for benchmarks/throughput.py (with benchmarks/flops.py and benchmarks/tf_reference.py) and
benchmarks/train_memory.py (tiny sizes, a few seconds), and the options of every tool in benchmarks/.

Run from the repo root (``python -m pytest``), as the benchmarks themselves are."""
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import newmodel
from benchmarks import flops as fl
from benchmarks import tf_reference
from benchmarks import throughput as tp
from benchmarks import train_memory as tm

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def npz_folder(tmp_path):
    """Two subjects x two trials of 20 s random 64-channel EEG, DTU-style names."""
    rng = np.random.default_rng(0)
    d = tmp_path / "npz"
    d.mkdir()
    for s in (1, 2):
        for t in (0, 1):
            np.savez(d / f"DTU_S{s}_{t:03d}.npz", eeg=rng.standard_normal((1280, 64)).astype(np.float32),
                     envelope=rng.standard_normal((1280, 1)).astype(np.float32))
    return d


def test_linear_and_conv_flops_are_exact():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(3, 5, 16)
    with FlopCounterMode(display=False) as fc:
        lin(x)
    assert fc.get_total_flops() == 2 * 3 * 5 * 16 * 8

    conv = torch.nn.Conv1d(6, 4, 3)
    x = torch.randn(2, 6, 12, requires_grad=True)
    fwd = 2 * 2 * 10 * 4 * 6 * 3
    with FlopCounterMode(display=False, custom_mapping=fl.CORRECTED) as fc:
        conv(x).sum().backward()
    assert fc.get_total_flops() == 3 * fwd  # forward + input gradient + weight gradient


def test_grouped_conv_backward_is_corrected():
    conv = torch.nn.Conv1d(8, 8, 4, groups=8, bias=False)
    x = torch.randn(2, 8, 20, requires_grad=True)
    fwd = 2 * 2 * 17 * 8 * 1 * 4
    with FlopCounterMode(display=False, custom_mapping=fl.CORRECTED) as fc:
        conv(x).sum().backward()
    assert fc.get_total_flops() == 3 * fwd
    with FlopCounterMode(display=False) as fc:  # torch's own formula counts the weight gradient 8x
        conv(x).sum().backward()
    assert fc.get_total_flops() >= 3 * fwd


def test_vlaai_forward_flops_match_hand_count():
    assert fl.vlaai_hand_flops() == 13_697_152
    torch.manual_seed(0)
    m = newmodel.build_model("vlaai").to("meta")  # shapes only: the same count, without the arithmetic
    x, y, mask, subj = (t.to("meta") for t in fl.make_batch(1, 64))
    c = fl.count_flops(m, x, y, mask, subj)
    # the hand count leaves out LayerNorm and the biases' additions, which FlopCounterMode does not count either
    assert abs(c["forward"] / 64 / fl.vlaai_hand_flops(64) - 1) < 1e-6
    assert fl.call_flops(m, x, subj) == c["forward"]
    assert 2.5 * c["forward"] < c["train"] <= 3 * c["forward"]  # backward ~2x forward (no input grad on layer 1)


def test_ivlaai_training_flops_about_three_forwards():
    torch.manual_seed(0)
    # depthwise-separable extractor: torch's own count overstates the grouped convs' weight gradient
    c = fl.flops_per_sample(newmodel.build_model("ivlaai", ivlaai_separable=True), 64, batch=1)
    assert 2.5 * c["forward"] < c["train"] <= 3 * c["forward"] < c["train_counted"]
    # the default, full convolutions: no grouped conv, so the corrected and torch's counts agree
    m = newmodel.build_model("ivlaai")
    c = fl.flops_per_sample(m, 64, batch=1)
    assert 2.5 * c["forward"] < c["train"] <= 3 * c["forward"]
    x, _, _, subj = (t.to("meta") for t in fl.make_batch(1, 64))
    assert fl.call_flops(m.to("meta"), x, subj) / 64 == c["forward"]
    assert c["train_counted"] == c["train"]


class _Sleepy(torch.nn.Module):
    """A model whose every forward takes at least SLEEP_S: a known duration to time."""

    SLEEP_S = 0.05

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, subject=None):
        time.sleep(self.SLEEP_S)
        return x[..., :1] * self.w


def test_measure_and_dense_rate_tiny(monkeypatch):
    dev = torch.device("cpu")
    r = tp.measure_model("linear_conv", dev, batch=2, window=64, steps=1, warmup=1, amp="bf16", compile_model=False)
    assert r["train_samples_s"] > 0 and r["infer_samples_s"] > 0
    # a model of known speed: each timed step takes one forward's sleep (plus a little), and the
    # rates are the step's samples (batch x window) over the measured seconds per step
    monkeypatch.setattr(tp.newmodel, "build_model", lambda name, **kw: _Sleepy())
    steps = 4
    r = tp.measure_model("linear_conv", dev, batch=2, window=64, steps=steps, warmup=1, amp="none",
                         compile_model=False)
    for mode in ("train", "infer"):
        assert _Sleepy.SLEEP_S <= r[f"{mode}_step_s"] < steps * _Sleepy.SLEEP_S
        assert r[f"{mode}_samples_s"] == pytest.approx(2 * 64 / r[f"{mode}_step_s"], rel=1e-9)
    # the FLOP/s figures: each op's FLOPs over its best time, here fixed at 0.5 s
    monkeypatch.setattr(tp, "time_best", lambda fn, repeats, device: (fn(), 0.5)[1])
    d = tp.dense_rate(dev, repeats=1, n=64, conv_batch=2, conv_chans=8, conv_len=16)
    assert d["matmul_flops"] == 2 * 64**3 / 0.5
    assert d["conv1d_flops"] == 2 * 2 * 16 * 8 * 8 * 8 / 0.5
    assert d["best_flops"] == max(d["matmul_flops"], d["conv1d_flops"]) and d["best_of"] == "matmul"


def test_data_wait_and_main_tiny(npz_folder, tmp_path):
    w = tp.data_wait("linear_conv", torch.device("cpu"), data_dir=npz_folder, steps=3, warmup=1, batch=4,
                     window_s=1.0, num_workers=0, amp="none", compile_model=False)
    assert 0 <= w["wait_share"] <= 1 and w["windows_per_epoch"] > 0
    out = tp.main(["--models=linear_conv", "--batch_size=2", "--window=64", "--steps=1", "--warmup=1",
                   "--skip_dense", "--data_steps=1", f"--data_dir={npz_folder}", "--data_window_s=1",
                   f"--json={tmp_path / 'tp.json'}"])
    assert out["throughput"][0]["train_samples_s"] > 0
    assert (tmp_path / "tp.json").is_file()


def test_repeated_folder_renames_subjects(npz_folder, tmp_path):
    from EEG_Dataset import load_corpus

    d = tm.repeated_folder(npz_folder, 3, tmp_path / "rep")
    names = sorted(p.name for p in d.iterdir())
    assert len(names) == 12 and "DTU_S1001_000.npz" in names and "DTU_S2002_001.npz" in names
    assert all(os.path.islink(d / n) for n in names)
    c = load_corpus(d)
    assert len(c.subjects) == 6
    assert tm.disk_mib(d) == pytest.approx(3 * tm.disk_mib(npz_folder))


@pytest.mark.parametrize("module", ["benchmarks.throughput", "benchmarks.train_memory", "benchmarks.shared_cpu",
                                    "benchmarks.demo_time"])
def test_runs_as_a_module_from_the_repo_root(module):
    """The documented way to run a benchmark, ``python -m benchmarks.X``, finds the project's modules;
    ``--help`` lists every key of the tool with its default, as config.py's programs do."""
    p = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"python -m {module}" in p.stdout
    keys = importlib.import_module(module).KEYS
    for key, (default, comment, *_) in keys.items():
        assert f"  --{key}={default!r}\n" in p.stdout and comment in p.stdout


def test_throughput_options():
    """--key=value options; the comma lists of the argparse version still read as before."""
    a = tp.parse_args([])
    assert a.models == ["vlaai", "ivlaai"] and a.amp == ["none"] and a.compile is False and a.compile_modes == [False]
    assert (a.batch_size, a.window, a.steps, a.warmup, a.deterministic, a.lr) == (64, 320, 10, 2, 1, 1e-3)
    assert a.skip_dense is False and a.profile is False and a.tf_reference is None and a.json is None
    a = tp.parse_args(["--models=vlaai,ivlaai", "--amp=none,bf16", "--compile", "--skip_dense", "--profile",
                       "--json=tp.json", "--data_window_s=1"])
    assert a.models == ["vlaai", "ivlaai"] and a.amp == ["none", "bf16"] and a.compile is True
    assert a.compile_modes == [True] and a.skip_dense is True and a.profile is True and a.json == "tp.json"
    assert a.data_window_s == 1.0
    a = tp.parse_args(["--models=vlaai", "--amp=bf16", "--compile=both", "--deterministic=0"])
    assert a.models == ["vlaai"] and a.amp == ["bf16"] and a.compile_modes == [False, True] and a.deterministic == 0
    a = tp.parse_args(["--models=[ivlaai,linear_conv]", "--amp=[none,bf16]", "--compile=no"])
    assert a.models == ["ivlaai", "linear_conv"] and a.amp == ["none", "bf16"] and a.compile_modes == [False]
    for bad, says in ((["--amp=none,fp16"], "--amp"), (["--amp"], "--amp"), (["--models=linear"], "--models"),
                      (["--compile=maybe"], "--compile"), (["--steps=0"], "--steps"), (["--device=tpu"], "--device"),
                      (["--batch"], "unknown config key 'batch'"), (["models=vlaai"], "unexpected argument")):
        with pytest.raises(SystemExit) as e:
            tp.parse_args(bad)
        msg = str(e.value.code)
        assert says in msg and "\n" not in msg and "amp_list" not in msg, (bad, msg)


def test_train_memory_options():
    a = tm.parse_args([])
    assert (a.models, a.sizes, a.extra_windows, a.mmap_threshold) == (["ivlaai"], [1, 2, 4], [2.5], [0, 1048576])
    assert a.child is False and a.repeat == 1 and a.train_args == "" and a.device == "cpu" and a.json is None
    # the command line of docs/performance.md, and a single value of each list
    a = tm.parse_args(["--models=ivlaai,vlaai", "--sizes=1", "--extra_windows=", "--mmap_threshold=1048576"])
    assert (a.models, a.sizes, a.extra_windows, a.mmap_threshold) == (["ivlaai", "vlaai"], [1], [], [1048576])
    a = tm.parse_args(["--sizes=[1,2]", "--extra_windows=2.5,1.25", "--mmap_threshold=0"])
    assert (a.sizes, a.extra_windows, a.mmap_threshold) == ([1, 2], [2.5, 1.25], [0])
    # what the driver passes to each child (run_child)
    a = tm.parse_args(["--child", "--model=vlaai", "--repeat=0", "--window_s=2.5", "--threads=0",
                       "--data_dir=/tmp/data", "--train_args=--amp=bf16 --lr=1e-3", "--device=cpu"])
    assert a.child is True and a.model == "vlaai" and a.repeat == 0 and a.window_s == 2.5
    assert a.data_dir == "/tmp/data" and a.train_args.split() == ["--amp=bf16", "--lr=1e-3"]
    for bad, says in ((["--sizes=1.5"], "--sizes"), (["--extra_windows=x"], "--extra_windows"),
                      (["--child=2"], "--child")):
        with pytest.raises(SystemExit) as e:
            tm.parse_args(bad)
        assert says in str(e.value.code) and "\n" not in str(e.value.code)


def test_shared_cpu_and_demo_time_options():
    from benchmarks import demo_time, shared_cpu

    a = shared_cpu.parse_args([])
    assert (a.model, a.threads, a.steps, a.load, a.policies) == ("ivlaai", 0, 20, 1, ["unset", "PASSIVE", "ACTIVE"])
    a = shared_cpu.parse_args(["--steps=15", "--policies=unset,spin=10000,PASSIVE", "--load=2"])
    assert (a.steps, a.load, a.policies) == (15, 2, ["unset", "spin=10000", "PASSIVE"])
    assert shared_cpu.parse_args(["--policies=ACTIVE"]).policies == ["ACTIVE"]
    with pytest.raises(SystemExit, match="--policies"):
        shared_cpu.parse_args(["--policies="])
    a = demo_time.parse_args([])
    assert (a.isa, a.ref_gflops, a.work, a.json) == ("native", 67.0, None, None)
    a = demo_time.parse_args(["--isa=avx2", "--ref_gflops=100", "--json=demo_time.json"])
    assert (a.isa, a.ref_gflops, a.json) == ("avx2", 100.0, "demo_time.json")
    with pytest.raises(SystemExit, match="--isa"):
        demo_time.parse_args(["--isa=sse"])


def _write_fake_reference(folder: Path) -> Path:
    """A tiny stand-in for the reference's model.py (same three names, a one-conv Keras model):
    enough to drive --tf_reference; the real one is the user's clone of exporl/vlaai."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(
        "import tensorflow as tf\n"
        "def vlaai():\n"
        "    eeg = tf.keras.layers.Input((None, 64))\n"
        "    return tf.keras.models.Model(eeg, tf.keras.layers.Conv1D(1, 3, padding='causal')(eeg))\n"
        "def pearson_metric(y_true, y_pred):\n"
        "    t, p = y_true - tf.reduce_mean(y_true, 1, True), y_pred - tf.reduce_mean(y_pred, 1, True)\n"
        "    return tf.reduce_sum(t * p, 1) / tf.sqrt(tf.reduce_sum(t * t, 1) * tf.reduce_sum(p * p, 1) + 1e-9)\n"
        "def pearson_loss(y_true, y_pred):\n"
        "    return -pearson_metric(y_true, y_pred)\n")
    return folder


TINY = ["--models=linear_conv", "--batch_size=2", "--window=64", "--steps=1", "--warmup=1", "--skip_dense",
        "--data_steps=0"]


def test_tf_reference_skips_without_tensorflow(tmp_path, monkeypatch, capsys):
    """--tf_reference without tensorflow: one line says it is skipped, the rest of the run goes on."""
    ref = _write_fake_reference(tmp_path / "vlaai")
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now raises ImportError
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    out = tp.main([*TINY, f"--tf_reference={ref}"])
    printed = capsys.readouterr().out
    assert out["tf_reference"] is None
    assert out["throughput"][0]["train_samples_s"] > 0
    lines = [ln for ln in printed.splitlines() if "[tf reference]" in ln]
    assert lines == [tf_reference.TF_MISSING] and "tensorflow is not installed" in lines[0]
    assert "tf_vlaai" not in printed


def test_tf_reference_without_model_py_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        tp.parse_args([f"--tf_reference={tmp_path}"])
    msg = str(e.value.code)
    assert "\n" not in msg and "model.py" in msg and str(tmp_path) in msg
    p = subprocess.run([sys.executable, "-m", "benchmarks.throughput", f"--tf_reference={tmp_path / 'none'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and "no model.py" in p.stderr


def test_tf_reference_timed_when_tensorflow_is_installed(tmp_path, monkeypatch):
    """Only where tensorflow is installed (not a requirement): the reference is imported from its
    file and timed with train_on_batch and a tf.function, with torch's thread count."""
    pytest.importorskip("tensorflow")
    ref = _write_fake_reference(tmp_path / "vlaai")
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    out = tp.main([*TINY, f"--tf_reference={ref}"])
    r = out["tf_reference"]
    assert r["train_samples_s"] > 0 and r["infer_samples_s"] > 0 and r["params"] == 3 * 64 + 1
    assert r["intra_op_threads"] == torch.get_num_threads()
    assert "vlaai_tf_reference" not in sys.modules and str(ref) not in sys.path


def test_demo_time_finds_the_readme_demo_and_times_each_step(tmp_path):
    from benchmarks import demo_time

    cmd = demo_time.readme_demo_command(Path(__file__).resolve().parents[1] / "README.md")
    assert cmd.startswith("python3 -m venv .venv") and cmd.endswith("python train.py && python test.py")
    steps = demo_time.run_timed("true && sleep 0.3 && echo done", tmp_path, dict(os.environ), tmp_path / "log")
    assert [s for s, _ in steps] == ["true", "sleep 0.3", "echo done"]
    assert steps[1][1] >= 0.3 and steps[0][1] < 0.3
    with pytest.raises(SystemExit, match="after 1 of 3 steps"):
        demo_time.run_timed("true && false && true", tmp_path, dict(os.environ), tmp_path / "log2")
    (tmp_path / "README.md").write_text("no command here\n")
    with pytest.raises(SystemExit, match="no demo command"):
        demo_time.readme_demo_command(tmp_path / "README.md")
