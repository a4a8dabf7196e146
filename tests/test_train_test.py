"""End-to-end tests of train.py and test.py on tiny demo corpora (CPU, small models, seconds each).

Scores are checked against an independent re-implementation of the official challenge rules
(scipy.stats.pearsonr), written here and applied to the files test.py writes. Tests that start
real train.py processes or train for long are marked ``slow`` (``python -m pytest -m slow``).
"""
from __future__ import annotations

import ast
import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

import checkpoint
import cli
import config
import demo_corpus
import train
from averaging import average_state_dicts
from checkpoint import load_model, model_from_checkpoint
from EEG_Dataset import DataError
from evaluation import evaluate
from runs import corpus_from_config, ensure_data, lock_holder, write_log

ROOT = Path(__file__).resolve().parents[1]

# test.py by path: the name 'test' is also the standard library's regression-test package.
_spec = importlib.util.spec_from_file_location("test_script", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

N_CHANS = 8
TINY = ["--model=ivlaai", "--ivlaai_blocks=1", "--ivlaai_width=16", "--window_s=1", "--batch_size=16",
        f"--n_chans={N_CHANS}", "--threads=1", "--patience=10"]
TEMP_RE = re.compile(r"^\.(best\.pt|last\.pt|log\.csv)\..+\.tmp$")  # atomic_write_bytes' temp files
RUN_FILES = {".lock", "best.pt", "last.pt", "log.csv", "curves.png"}  # what train.py leaves in a seed folder


# ----------------------------------------------------------------------------------- fixtures
def make_corpus(out: Path, minutes=1.0, n_subjects=3) -> Path:
    demo_corpus.make_demo_corpus(out_dir=out, n_subjects=n_subjects, n_heldout=1, minutes=minutes,
                                 n_test_segments=2, segment_s=20.0, n_chans=N_CHANS, seed=0, measure=False)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3 seen + 1 held-out subjects, 1 min each, 8 channels, 2 test segments of 20 s per subject."""
    return make_corpus(tmp_path_factory.mktemp("corpus") / "xfdata")


def data_args(corpus: Path) -> list[str]:
    return [f"--data_dir={corpus / 'split_data'}"]


def args_for_test(corpus: Path, run_dir: Path, result_dir: Path, *extra) -> list[str]:
    return [f"--run_dir={run_dir}", f"--test_dir={corpus / 'auditory-eeg-test-dataset'}",
            f"--label_dir={corpus / 'test_labels'}", f"--result_dir={result_dir}", *extra]


@pytest.fixture(scope="module")
def two_seeds(corpus, tmp_path_factory) -> Path:
    """ivlaai (tiny), seeds 1 and 2, 2 epochs. Tests only read it."""
    run_dir = tmp_path_factory.mktemp("runs_two_seeds")
    results = train.main(data_args(corpus) + TINY + [f"--run_dir={run_dir}", "--seeds=[1,2]", "--epochs=2"])
    assert [r["seed"] for r in results] == [1, 2]
    return run_dir


# ----------------------------------------------------------------------------------- helpers
def official_score(result_dir: Path, label_dir: Path) -> tuple[float, dict]:
    """The challenge rules, independently: every label segment counts; a missing prediction
    scores 0; predictions are truncated or zero-padded to the label length; Pearson r per
    segment; mean per subject; plain mean over subjects."""
    labels = {}
    for p in sorted(label_dir.glob("*.json")):
        for seg, (env, _stimulus) in json.loads(p.read_text()).items():
            labels[seg] = np.asarray(env, dtype=np.float64).ravel()
    preds = {}
    for p in sorted(result_dir.glob("sub-*.json")):
        preds.update(json.loads(p.read_text()))
    per_subject = defaultdict(list)
    for seg, lab in labels.items():
        if seg in preds:
            pred = np.zeros(len(lab))
            vals = np.asarray(preds[seg], dtype=np.float64)[: len(lab)]
            pred[: len(vals)] = vals
            r = pearsonr(pred, lab)[0]
        else:
            r = 0.0
        per_subject[seg.rsplit("_", 1)[0]].append(r)
    subj = {s: float(np.mean(v)) for s, v in per_subject.items()}
    return float(np.mean(list(subj.values()))), subj


def read_log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_optimizer(a: dict, b: dict) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    return all(same_tensors(a["state"][k], b["state"][k]) for k in a["state"])


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def seg_lengths(test_dir: Path) -> dict[str, int]:
    out = {}
    for p in sorted(test_dir.glob("sub-*.json")):
        out.update({k: len(v) for k, v in json.loads(p.read_text()).items()})
    return out


def check_predictions(result_dir: Path, corpus: Path) -> None:
    lengths = seg_lengths(corpus / "auditory-eeg-test-dataset")
    files = sorted(p.name for p in result_dir.glob("sub-*.json"))
    assert files == sorted(p.name for p in (corpus / "auditory-eeg-test-dataset").glob("sub-*.json"))
    seen = {}
    for p in result_dir.glob("sub-*.json"):
        data = json.loads(p.read_text())
        assert isinstance(data, dict) and data
        for seg, values in data.items():
            assert seg.startswith(p.stem + "_")
            assert isinstance(values, list) and all(isinstance(v, float) for v in values)
            assert np.isfinite(values).all() and np.std(values) > 0
            seen[seg] = len(values)
    assert seen == lengths


def subprocess_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)
    return env


def start_train(args: list[str]) -> subprocess.Popen:
    # SIGINT may be ignored in a background job; the child must get Python's default handler.
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=str(ROOT), env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 120.0) -> list[str]:
    lines, t0 = [], time.time()
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    proc.kill()
    raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{''.join(lines)}")


def assert_clean_run_dir(out: Path) -> None:
    """Only complete real files (every .pt loads), the run lock (held by no one now) and, at most,
    dot-prefixed temp files."""
    for p in out.iterdir():
        assert p.name in RUN_FILES or TEMP_RE.match(p.name), f"stray file {p}"
    assert lock_holder(out) is None
    for name in ("best.pt", "last.pt"):
        if (out / name).exists():
            ck = load(out / name)
            assert {"model", "optimizer", "epoch", "best_val_r", "config"} <= set(ck)
    if (out / "log.csv").exists():
        rows = read_log(out / "log.csv")
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))


# ----------------------------------------------------------------------------------- 1. end to end
def test_end_to_end_single_seed_scores_by_the_official_rules(corpus, two_seeds, tmp_path, capsys):
    result_dir = tmp_path / "pred"
    res = test_script.main(args_for_test(corpus, two_seeds, result_dir, "--seeds=[1]"))
    out = capsys.readouterr().out
    assert res["seeds"] == [1] and res["model"] == "ivlaai"
    check_predictions(result_dir, corpus)
    assert not (result_dir / "per_seed").exists()  # one seed: the ensemble is that seed

    total, per_subject = official_score(result_dir, corpus / "test_labels")
    assert res["ensemble"]["total"] == pytest.approx(total, abs=1e-9)
    assert res["ensemble"]["per_subject"] == pytest.approx(per_subject, abs=1e-9)
    assert f"total {total:.4f}" in out
    saved = json.loads((result_dir / "score.json").read_text())
    assert saved["ensemble"]["total"] == pytest.approx(total, abs=1e-9)
    assert saved["per_seed"]["seed-1"]["total"] == pytest.approx(total, abs=1e-9)
    assert set(per_subject) == {"sub-001", "sub-002", "sub-003", "sub-004"}
    assert total > 0.02  # it learned something about the envelope (the demo corpus is easy)


def test_project_scorer_follows_the_rules_for_missing_short_and_long_predictions(corpus, two_seeds, tmp_path):
    """Edit written predictions (drop, shorten, lengthen, shift) and re-score both ways."""
    from challenge import score

    result_dir = tmp_path / "pred"
    test_script.main(args_for_test(corpus, two_seeds, result_dir, "--seeds=[1]"))
    p1, p2, p3 = (result_dir / f"sub-00{i}.json" for i in (1, 2, 3))
    d1, d2, d3 = (json.loads(p.read_text()) for p in (p1, p2, p3))
    k1 = sorted(d1)
    del d1[k1[0]]  # missing -> 0
    k2 = sorted(d2)
    d2[k2[0]] = d2[k2[0]][: len(d2[k2[0]]) // 2]  # short -> zero-padded
    d2[k2[1]] = d2[k2[1]] + [5.0] * 300  # long -> truncated (the tail must not count)
    k3 = sorted(d3)
    d3[k3[0]] = [1.0] + d3[k3[0]]  # shifted by one sample, then truncated
    for p, d in ((p1, d1), (p2, d2), (p3, d3)):
        p.write_text(json.dumps(d))
    total, per_subject = official_score(result_dir, corpus / "test_labels")
    got = score(result_dir, corpus / "test_labels")
    assert got["total"] == pytest.approx(total, abs=1e-9)
    assert got["per_subject"] == pytest.approx(per_subject, abs=1e-9)
    assert got["per_segment"][k1[0]] == 0.0


def project_imports(module: str) -> set[str]:
    """The project modules ``module`` imports anywhere in its file (also inside functions)."""
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if (ROOT / f"{n}.py").is_file()}


def test_test_py_and_benchmark_py_do_not_import_train():
    """train.py is a program, not a library: what test.py and benchmark.py share with it lives in
    checkpoint, evaluation, runs, runtime and sweep; nothing they import (directly or not) imports it."""
    seen, todo = set(), ["test", "benchmark"]
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo += sorted(project_imports(mod))
    assert "train" not in seen, sorted(seen)
    assert {"checkpoint", "evaluation", "runs"} <= seen  # the walk does follow the imports


# ----------------------------------------------------------------------------------- 2. two seeds
def test_two_seeds_run_dirs_ensemble_and_per_seed_scores(corpus, two_seeds, tmp_path, capsys):
    assert sorted(p.name for p in (two_seeds / "ivlaai").iterdir()) == ["seed-1", "seed-2", "seeds-1-2.json"]
    summary = json.loads((two_seeds / "ivlaai" / "seeds-1-2.json").read_text())
    vals = [summary["val_r_per_seed"][f"seed-{s}"] for s in (1, 2)]
    assert summary["val_r_mean"] == pytest.approx(np.mean(vals))
    assert np.isfinite(summary["val_r_ensemble"]) and -1 <= summary["val_r_ensemble"] <= 1
    for s in (1, 2):
        assert (two_seeds / "ivlaai" / f"seed-{s}" / "best.pt").is_file()
    result_dir = tmp_path / "pred"
    res = test_script.main(args_for_test(corpus, two_seeds, result_dir))
    out = capsys.readouterr().out
    assert res["seeds"] == [1, 2]
    check_predictions(result_dir, corpus)
    for s in (1, 2):
        check_predictions(result_dir / "per_seed" / f"seed-{s}", corpus)
    # the ensemble is the mean of the seeds' (z-scored) predictions
    for p in result_dir.glob("sub-*.json"):
        ens = json.loads(p.read_text())
        a = json.loads((result_dir / "per_seed" / "seed-1" / p.name).read_text())
        b = json.loads((result_dir / "per_seed" / "seed-2" / p.name).read_text())
        for k in ens:
            assert np.allclose(ens[k], (np.asarray(a[k]) + np.asarray(b[k])) / 2, atol=1e-6)
            assert not np.allclose(a[k], b[k])  # two seeds really are two models

    saved = json.loads((result_dir / "score.json").read_text())
    assert set(saved["per_seed"]) == {"seed-1", "seed-2"}
    total, _ = official_score(result_dir, corpus / "test_labels")
    assert saved["ensemble"]["total"] == pytest.approx(total, abs=1e-9)
    for s in (1, 2):
        t, _ = official_score(result_dir / "per_seed" / f"seed-{s}", corpus / "test_labels")
        assert saved["per_seed"][f"seed-{s}"]["total"] == pytest.approx(t, abs=1e-9)
    assert saved["per_seed"]["seed-1"]["total"] != saved["per_seed"]["seed-2"]["total"]
    assert f"total {total:.4f}" in out and "ensemble of 2 seeds" in out
    # the run's time: the recorded epochs of both seeds, plus test.py's own
    epochs = [row for s in (1, 2) for row in read_log(two_seeds / "ivlaai" / f"seed-{s}" / "log.csv")]
    line = next(ln for ln in out.splitlines() if ln.startswith("time: "))
    m = re.fullmatch(r"time: training ([\d.]+) s \(2 seed\(s\), (\d+) epochs\) \+ test.py ([\d.]+) s "
                     r"= ([\d.]+) s", line)
    assert m and int(m[2]) == len(epochs) > 0, line
    assert float(m[1]) == pytest.approx(sum(float(r["seconds"]) for r in epochs), abs=0.06)
    assert float(m[4]) == pytest.approx(float(m[1]) + float(m[3]), abs=0.11)  # each printed to 0.1 s


def test_run_time_counts_every_logged_epoch_not_only_those_before_the_best(tmp_path):
    seed_dir = tmp_path / "ivlaai" / "seed-1"
    seed_dir.mkdir(parents=True)
    write_log(seed_dir / "log.csv", [{"epoch": e, "seconds": 2.5} for e in (1, 2, 3)])
    best = {"history": [{"epoch": 1, "seconds": 2.5}]}          # best.pt was kept after epoch 1
    line = test_script.run_time([seed_dir / "best.pt"], [(None, best)], 1.0)
    assert line == "time: training 7.5 s (1 seed(s), 3 epochs) + test.py 1.0 s = 8.5 s"
    # a file outside a run folder (published weights): its history only, or test.py's time alone
    assert test_script.run_time([tmp_path / "w.h5"], [(None, {})], 1.0) == "test.py: 1.0 s"
    assert "1 epochs" in test_script.run_time([seed_dir / "other.pt"], [(None, best)], 1.0)
    # a damaged log costs only the training time, never the finished predictions
    (seed_dir / "log.csv").write_text("epoch,seconds\n1,abc\n")
    line = test_script.run_time([seed_dir / "best.pt"], [(None, best)], 1.0)
    assert line.startswith("test.py: 1.0 s (training time unknown: ") and "abc" in line


def test_window_r_scores_each_recording_against_its_own_envelope_when_one_is_too_short():
    """A test part shorter than one window has no window predictions: the others' window r is still
    each recording's own, under its own subject (S1 predicted exactly, S3 inverted, S2 too short)."""
    win = hop = 64
    rng = np.random.default_rng(0)
    recs, data, preds, wpreds = [], [], [], []
    for subject, n, sign in (("S1", 4 * win, 1.0), ("S2", win // 2, 1.0), ("S3", 3 * win, -1.0)):
        env = rng.standard_normal((n, 1)).astype(np.float32)
        recs.append(types.SimpleNamespace(subject=subject, rec_id=f"{subject}_rec"))
        data.append((np.zeros((n, 2), np.float32), env))
        preds.append(sign * env[:, 0].astype(np.float64))
        if n >= win:  # as evaluate_folder: windows only where the part holds one
            wpreds.append(sign * env[: n // win * win, 0].reshape(-1, win).astype(np.float64))
    cfg = {"chance_draws": 0, "fs": 64, "mm_window_s": 1.0}
    out = test_script._summarize(recs, data, preds, wpreds, win, hop, cfg)
    assert out["per_subject"] == pytest.approx({"S1": 1.0, "S2": 1.0, "S3": -1.0})
    assert out["window_per_subject"] == pytest.approx({"S1": 1.0, "S3": -1.0})
    assert out["window_r"] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------------- 3. determinism
def test_same_seed_same_weights_other_seed_other_weights(corpus, two_seeds, tmp_path):
    train.main(data_args(corpus) + TINY + [f"--run_dir={tmp_path}", "--seeds=[1]", "--epochs=2"])
    again = load(tmp_path / "ivlaai" / "seed-1" / "best.pt")
    first = load(two_seeds / "ivlaai" / "seed-1" / "best.pt")
    other = load(two_seeds / "ivlaai" / "seed-2" / "best.pt")
    assert same_tensors(again["model"], first["model"])
    assert same_optimizer(again["optimizer"], first["optimizer"])
    assert again["best_val_r"] == first["best_val_r"]
    assert not any(torch.equal(other["model"][k], first["model"][k])
                   for k in first["model"] if first["model"][k].is_floating_point() and first["model"][k].numel() > 1)


def test_data_seed_sets_the_window_order_and_dropout_apart_from_the_initial_weights(corpus, tmp_path):
    """data_seed defaults to the seed; another data_seed trains other weights from the same
    initial weights, and another seed with the same data_seed other weights again."""
    def run(name, *extra):
        train.main(data_args(corpus) + TINY + [f"--run_dir={tmp_path / name}", "--epochs=1", *extra])
        return load(tmp_path / name / "ivlaai" / f"seed-{extra[0][9:-1]}" / "best.pt")

    plain, same, other_data, other_init = (run("a", "--seeds=[1]"), run("b", "--seeds=[1]", "--data_seed=1"),
                                           run("c", "--seeds=[1]", "--data_seed=2"),
                                           run("d", "--seeds=[2]", "--data_seed=1"))
    assert same_tensors(plain["model"], same["model"]) and same["config"]["data_seed"] == 1
    assert not same_tensors(plain["model"], other_data["model"])
    assert not same_tensors(plain["model"], other_init["model"])
    assert not same_tensors(other_data["model"], other_init["model"])
    with pytest.raises(SystemExit, match="data_seed was 1, now 2"):
        train.main(data_args(corpus) + TINY + [f"--run_dir={tmp_path / 'b'}", "--epochs=1", "--seeds=[1]",
                                               "--data_seed=2", "--resume"])


# ----------------------------------------------------------------------------------- 4. checkpoints
def test_checkpoint_contents_and_log(corpus, two_seeds):
    out = two_seeds / "ivlaai" / "seed-1"
    rows = read_log(out / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"epoch", "train_r", "val_r", "best_val_r"} <= set(rows[0])
    best, last = load(out / "best.pt"), load(out / "last.pt")
    for ck in (best, last):
        assert {"model", "optimizer", "epoch", "best_val_r", "config", "model_args"} <= set(ck)
        assert ck["version"] == checkpoint.FORMAT_VERSION
        assert ck["seed"] == 1 and ck["model_name"] == "ivlaai" and ck["n_chans"] == N_CHANS
        assert ck["optimizer"]["state"] and ck["optimizer"]["param_groups"][0]["lr"] == config.lr
        assert ck["model_args"]["n_chans"] == N_CHANS
        cfg = ck["config"]
        assert set(cfg) == set(cli.defaults("train"))  # the resolved config, every key train.py reads
        assert cfg["epochs"] == 2 and cfg["seeds"] == [1, 2] and cfg["ivlaai_width"] == 16
        assert cfg["data_dir"] == str(corpus / "split_data") and cfg["n_chans"] == N_CHANS
    assert last["epoch"] == 2 and last["finished"]
    val = [float(r["val_r"]) for r in rows]
    assert config.select == "last"  # the default keeps the last epoch (the average of the last avg_epochs)
    assert best["epoch"] == 2 and same_tensors(best["model"], last["model"])
    assert best["best_val_r"] == pytest.approx(val[-1], abs=1e-5) == pytest.approx(last["best_val_r"], abs=1e-5)
    # the checkpoint rebuilds its model from its own model_args (not from the run config)
    best["config"] = {}
    m = model_from_checkpoint(best)
    assert same_tensors(m.state_dict(), best["model"])
    assert sum(p.numel() for p in m.parameters()) == best["n_params"]


# ----------------------------------------------------------------------------------- 5. clash, overwrite, resume
def test_clash_overwrite_and_resume_of_a_finished_run(corpus, tmp_path, capsys):
    args = data_args(corpus) + TINY + [f"--run_dir={tmp_path}", "--model=linear_conv", "--keep_epochs", "--epochs=2"]
    train.main(args)
    out = tmp_path / "linear_conv" / "seed-1"
    before = file_bytes(out)
    assert set(before) == RUN_FILES | {"epochs/epoch-001.pt", "epochs/epoch-002.pt"}
    assert before[".lock"] == b""  # the lock holds a pid only while its process writes the folder

    with pytest.raises(SystemExit) as exc:
        train.main(args)
    msg = str(exc.value.code)
    assert "--resume" in msg and "--overwrite" in msg and str(out) in msg
    assert file_bytes(out) == before

    capsys.readouterr()
    res = train.main(args + ["--resume"])  # finished: nothing to do, nothing changed
    assert "already finished" in capsys.readouterr().out
    assert res[0]["epochs"] == 2
    assert file_bytes(out) == before

    (out / "notes.txt").write_text("mine")  # --overwrite removes only what train.py wrote
    train.main(args[:-2] + ["--epochs=1", "--overwrite"])
    assert "--overwrite: replacing the run" in capsys.readouterr().out
    assert len(read_log(out / "log.csv")) == 1
    assert load(out / "last.pt")["epoch"] == 1
    assert set(file_bytes(out)) == RUN_FILES | {"notes.txt"}  # the old epochs/ went with the old run
    assert (out / "notes.txt").read_text() == "mine"
    assert file_bytes(out)["best.pt"] != before["best.pt"]


def assert_same_run(a_dir: Path, b_dir: Path, what: str = "") -> None:
    """best.pt and last.pt of two seed folders hold the same weights, optimizer, RNG and history."""
    for name in ("last.pt", "best.pt"):
        a, b = load(a_dir / name), load(b_dir / name)
        assert a["epoch"] == b["epoch"], (what, name)
        assert same_tensors(a["model"], b["model"]), f"{what} {name}: resumed weights differ"
        assert same_optimizer(a["optimizer"], b["optimizer"]), f"{what} {name}: optimizer state differs"
        assert a["best_val_r"] == b["best_val_r"]
        assert torch.equal(a["torch_rng"], b["torch_rng"])
        strip = lambda h: [{k: v for k, v in row.items() if k not in ("seconds", "data_wait_pct")} for row in h]  # noqa: E731
        assert strip(a["history"]) == strip(b["history"])


def test_resume_after_epoch_1_equals_an_uninterrupted_run(corpus, tmp_path, monkeypatch):
    """ivlaai has dropout: this also checks that the RNG state travels in the checkpoint.

    'cut': trained with --epochs=1, then --resume --epochs=2. 'int': Ctrl-C lands after epoch 2's
    steps changed the weights but before its checkpoint; nothing of epoch 2 may be kept, and
    --resume continues from epoch 1. (A real signal to a real process: the slow test below.)"""
    base = data_args(corpus) + TINY + ["--seeds=[3]"]
    train.main(base + [f"--run_dir={tmp_path / 'full'}", "--epochs=2"])
    train.main(base + [f"--run_dir={tmp_path / 'cut'}", "--epochs=1"])
    after_1 = {name: load(tmp_path / "cut" / "ivlaai" / "seed-3" / name) for name in ("best.pt", "last.pt")}
    assert after_1["last.pt"]["epoch"] == 1
    train.main(base + [f"--run_dir={tmp_path / 'cut'}", "--epochs=2", "--resume"])

    real_epoch = train.train_epoch

    def interrupted_epoch(*args, **kwargs):
        out = real_epoch(*args, **kwargs)
        if args[-1].endswith("epoch 2"):  # desc: 'seed 3 epoch 2'
            raise KeyboardInterrupt  # as if Ctrl-C arrived at the end of epoch 2's steps
        return out

    monkeypatch.setattr(train, "train_epoch", interrupted_epoch)
    with pytest.raises(KeyboardInterrupt):
        train.main(base + [f"--run_dir={tmp_path / 'int'}", "--epochs=2"])
    monkeypatch.setattr(train, "train_epoch", real_epoch)
    out = tmp_path / "int" / "ivlaai" / "seed-3"
    assert_clean_run_dir(out)  # and the lock was let go
    ck = load(out / "last.pt")
    assert ck["epoch"] == len(ck["history"]) == 1 and not ck["finished"]
    assert len(read_log(out / "log.csv")) == 1
    for name in ("best.pt", "last.pt"):  # the weights of a run stopped after epoch 1, not epoch 2's
        assert same_tensors(load(out / name)["model"], after_1[name]["model"]), name
        assert same_optimizer(load(out / name)["optimizer"], after_1[name]["optimizer"]), name
    train.main(base + [f"--run_dir={tmp_path / 'int'}", "--epochs=2", "--resume"])

    for run in ("cut", "int"):
        assert_same_run(tmp_path / "full" / "ivlaai" / "seed-3", tmp_path / run / "ivlaai" / "seed-3", run)

    for run in ("cut", "int"):
        assert load(tmp_path / run / "ivlaai" / "seed-3" / "last.pt")["epoch"] == 2
        rows = read_log(tmp_path / run / "ivlaai" / "seed-3" / "log.csv")
        assert [int(r["epoch"]) for r in rows] == [1, 2]


# ----------------------------------------------------------------------------------- 6. Ctrl-C
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, sig):
    """Ctrl-C, and a plain ``kill`` (SIGTERM: schedulers, and background jobs, which ignore
    Ctrl-C), sent to a real train.py in the middle of epoch 2: it exits cleanly (130) keeping
    its last completed epoch, and --resume then gives best.pt and last.pt bit-identical to a
    run that was never interrupted (dropout: the RNG state travels too)."""
    corpus = make_corpus(tmp_path / "xfdata", minutes=3.0)
    common = [f"--data_dir={corpus / 'split_data'}", f"--n_chans={N_CHANS}", "--model=ivlaai", "--ivlaai_blocks=2",
              "--ivlaai_width=64", "--window_s=2", "--threads=1", "--patience=10", "--epochs=3"]
    args = [*common, f"--run_dir={tmp_path / 'runs'}"]
    proc = start_train(args)
    try:
        lines = wait_for_line(proc, r"epoch\s+1\s")
        proc.send_signal(sig)  # lands in epoch 2 (each epoch takes >1 s here)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + rest
    assert proc.returncode == 130, text
    assert "interrupted" in text and "--resume" in text
    assert "Traceback" not in text and " done:" not in text
    out = tmp_path / "runs" / "ivlaai" / "seed-1"
    assert_clean_run_dir(out)
    last = load(out / "last.pt")
    printed = len(re.findall(r"\] epoch\s+\d+\s", text))
    assert not last["finished"] and last["epoch"] == printed and 1 <= printed < 3, text  # completed epochs only
    assert len(read_log(out / "log.csv")) == last["epoch"]

    train.main(args + ["--resume"])
    assert_clean_run_dir(out)
    assert load(out / "last.pt")["finished"]
    assert [int(r["epoch"]) for r in read_log(out / "log.csv")] == [1, 2, 3]
    train.main([*common, f"--run_dir={tmp_path / 'whole'}"])
    assert_same_run(tmp_path / "whole" / "ivlaai" / "seed-1", out, "resumed after a signal")


# ----------------------------------------------------------------------------------- 7. SIGKILL
@pytest.mark.slow
def test_sigkill_during_training_leaves_only_complete_files(corpus, tmp_path):
    run_dir = tmp_path / "runs"
    args = data_args(corpus) + [f"--n_chans={N_CHANS}", "--model=ivlaai", "--ivlaai_blocks=2", "--ivlaai_width=64",
                                "--window_s=1", "--threads=1", "--patience=500", f"--run_dir={run_dir}"]
    proc = start_train(args + ["--epochs=500"])
    try:
        wait_for_line(proc, r"epoch\s+2\s")
        time.sleep(0.13)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = run_dir / "ivlaai" / "seed-1"
    assert_clean_run_dir(out)  # the OS let go of the killed process's lock
    assert (out / ".lock").read_text().strip() == str(proc.pid)  # a stale pid does not block anyone
    last = load(out / "last.pt")
    assert not last["finished"] and last["epoch"] >= 2
    n_rows = len(read_log(out / "log.csv"))
    assert last["epoch"] <= n_rows <= last["epoch"] + 1  # log.csv is written just before last.pt
    # the killed run resumes from its last complete checkpoint
    train.main(args + [f"--epochs={last['epoch'] + 1}", "--resume"])
    assert_clean_run_dir(out)
    assert load(out / "last.pt")["epoch"] == last["epoch"] + 1 == len(read_log(out / "log.csv"))


def test_sigkill_during_a_checkpoint_write_keeps_the_old_file(tmp_path):
    """Kill a process while it is writing a large checkpoint: the file holds a whole checkpoint."""
    target = tmp_path / "last.pt"
    code = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); from checkpoint import save_checkpoint\n"
        "w = torch.arange(6_000_000, dtype=torch.float32)\n"
        "i = 0\n"
        "while True:\n"
        "    save_checkpoint(sys.argv[2], {'model': {'w': w + i}, 'epoch': i})\n"
        "    print('saved', i, flush=True); i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(target)], env=subprocess_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        wait_for_line(proc, r"saved 2")
        time.sleep(0.02)  # in the middle of writing checkpoint 3 (or just after)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    for p in tmp_path.iterdir():
        assert p.name == "last.pt" or TEMP_RE.match(p.name), f"stray file {p}"
    ck = load(target)
    assert ck["epoch"] >= 2
    assert torch.equal(ck["model"]["w"], torch.arange(6_000_000, dtype=torch.float32) + ck["epoch"])


# ----------------------------------------------------------------------------------- 8. bad inputs
def copy_test_set(corpus: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in (corpus / "auditory-eeg-test-dataset").glob("*.json"):
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def test_malformed_test_json_names_the_file(corpus, two_seeds, tmp_path):
    test_dir = copy_test_set(corpus, tmp_path / "tests")
    bad = test_dir / "sub-002.json"
    bad.write_text(bad.read_text()[:1000])  # cut off mid-way
    args = args_for_test(corpus, two_seeds, tmp_path / "pred", f"--test_dir={test_dir}")
    with pytest.raises(SystemExit) as exc:
        test_script.main(args)
    assert str(bad) in str(exc.value.code)
    assert not (tmp_path / "pred").exists()  # nothing written from a broken test set


def test_wrong_channel_count_in_test_json_names_the_file(corpus, two_seeds, tmp_path):
    test_dir = copy_test_set(corpus, tmp_path / "tests")
    bad = test_dir / "sub-003.json"
    bad.write_text(json.dumps({"sub-003_0": np.zeros((640, N_CHANS + 2)).tolist()}))
    with pytest.raises(SystemExit) as exc:
        test_script.main(args_for_test(corpus, two_seeds, tmp_path / "pred", f"--test_dir={test_dir}"))
    msg = str(exc.value.code)
    assert str(bad) in msg and str(N_CHANS + 2) in msg and str(N_CHANS) in msg


def test_malformed_label_json_names_the_file(corpus, two_seeds, tmp_path):
    label_dir = tmp_path / "labels"
    label_dir.mkdir()
    for p in (corpus / "test_labels").glob("*.json"):
        (label_dir / p.name).write_bytes(p.read_bytes())
    bad = label_dir / "sub-001.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        test_script.main(args_for_test(corpus, two_seeds, tmp_path / "pred", f"--label_dir={label_dir}"))
    assert str(bad) in str(exc.value.code)


@pytest.mark.parametrize("exists", [True, False])
def test_no_trained_model_says_how_to_train(corpus, tmp_path, exists):
    run_dir = tmp_path / "empty_runs"
    if exists:
        run_dir.mkdir()
    with pytest.raises(SystemExit) as exc:
        test_script.main(args_for_test(corpus, run_dir, tmp_path / "pred"))
    msg = str(exc.value.code)
    assert "train.py" in msg and str(run_dir) in msg
    assert not (tmp_path / "pred").exists()


def test_junk_data_folder_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    (junk / "data.bin").write_bytes(os.urandom(100))
    args = [f"--data_dir={junk}", f"--run_dir={tmp_path / 'runs'}", "--model=linear_conv", "--threads=1"]
    with pytest.raises(SystemExit) as exc:
        train.main(args)
    msg = str(exc.value.code)
    assert str(junk) in msg and "notes.txt" in msg
    # a file that looks like split_data but is not an array: the message names that file
    bad = junk / "train_-_sub-001_-_audiobook_1_-_eeg.npy"
    bad.write_bytes(b"not a numpy file")
    (junk / "train_-_sub-001_-_audiobook_1_-_envelope.npy").write_bytes(b"nor is this")
    with pytest.raises(SystemExit) as exc:
        train.main(args)
    assert bad.name in str(exc.value.code)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pt"))


# ----------------------------------------------------------------------------------- 9. demo corpus
def test_only_the_default_data_dir_falls_back_to_the_demo_corpus(tmp_path, monkeypatch, capsys):
    """The default data_dir, missing here, builds the demo corpus in demo_dir once and then uses
    it; a data_dir the user gave is never replaced by the demo corpus."""
    monkeypatch.chdir(tmp_path)  # the default data_dir (xfdata/split_data) is relative: missing here
    real_build = demo_corpus._build
    built = []

    def counted_build(out, *a, **k):
        built.append(out)
        return real_build(out, *a, **k)

    # the real generator, small: 8 channels, 20 s test segments, no measuring
    monkeypatch.setattr(demo_corpus, "DEMO_SHAPE", dict(demo_corpus.DEMO_SHAPE, n_heldout=1, n_test_segments=1,
                                                        segment_s=20.0, n_chans=N_CHANS, measure=False))
    monkeypatch.setattr(demo_corpus, "_build", counted_build)
    demo = tmp_path / "demo_xfdata"
    argv = ["--demo_subjects=2", "--demo_minutes=0.5", f"--demo_dir={demo}", f"--n_chans={N_CHANS}"]
    cfg, given = cli.parse(argv)
    ensure_data(cfg, given)
    out = capsys.readouterr().out
    assert "missing or empty" in out and "demo" in out and str(demo) in out
    assert cfg["data_dir"] == str(demo / "split_data")
    eegs = sorted((demo / "split_data").glob("*_-_eeg.npy"))
    assert {p.name.split("_-_")[1] for p in eegs} == {"sub-001", "sub-002"}
    assert (demo / "auditory-eeg-test-dataset").is_dir() and (demo / "test_labels").is_dir()
    before = file_bytes(demo)

    cfg, given = cli.parse(argv)
    ensure_data(cfg, given)  # the demo corpus exists now: used, not rebuilt
    assert cfg["data_dir"] == str(demo / "split_data") and len(built) == 1
    assert "training on the demo corpus" in capsys.readouterr().out
    assert file_bytes(demo) == before
    corpus_from_config(cfg)  # and it loads

    for given_dir in (tmp_path / "missing", tmp_path / "empty"):
        if given_dir.name == "empty":
            given_dir.mkdir()
        cfg, given = cli.parse([*argv, f"--data_dir={given_dir}"])
        with pytest.raises(DataError, match=re.escape(str(given_dir))):
            ensure_data(cfg, given)
        assert cfg["data_dir"] == str(given_dir) and len(built) == 1

    real = tmp_path / "real"
    real.mkdir()
    (real / "x.npz").write_bytes(b"")
    cfg, given = cli.parse([f"--data_dir={real}"])
    ensure_data(cfg, given)  # a non-empty folder is left alone
    assert cfg["data_dir"] == str(real)


# ----------------------------------------------------------------------------------- 10. ridge
def test_linear_closed_form_trains_and_scores(corpus, tmp_path, capsys):
    run_dir = tmp_path / "runs"
    res = train.main(data_args(corpus) + [f"--n_chans={N_CHANS}", "--model=linear", f"--run_dir={run_dir}",
                                          "--threads=1"])
    assert res[0]["epochs"] == 0
    out = run_dir / "linear" / "seed-1"
    best = load(out / "best.pt")
    assert best["epoch"] == 0 and best["optimizer"] == {} and best["model_name"] == "linear"
    assert np.isfinite(best["best_val_r"]) and best["best_val_r"] > 0
    assert len(read_log(out / "log.csv")) == 1
    result_dir = tmp_path / "pred"
    capsys.readouterr()
    r = test_script.main(args_for_test(corpus, run_dir, result_dir))
    assert r["model"] == "linear"
    check_predictions(result_dir, corpus)
    total, _ = official_score(result_dir, corpus / "test_labels")
    assert r["ensemble"]["total"] == pytest.approx(total, abs=1e-9) and total > 0.02
    assert f"total {total:.4f}" in capsys.readouterr().out
    # a finished closed-form run is not refitted by --resume
    before = file_bytes(out)
    train.main(data_args(corpus) + [f"--n_chans={N_CHANS}", "--model=linear", f"--run_dir={run_dir}",
                                    "--threads=1", "--resume"])
    assert file_bytes(out) == before


# ----------------------------------------------------------------------------------- 11. result_dir clash
def test_result_dir_from_other_checkpoints_needs_overwrite(corpus, two_seeds, tmp_path):
    result_dir = tmp_path / "pred"
    test_script.main(args_for_test(corpus, two_seeds, result_dir, "--seeds=[1]"))
    first = file_bytes(result_dir)
    test_script.main(args_for_test(corpus, two_seeds, result_dir, "--seeds=[1]"))  # same checkpoints: fine
    assert file_bytes(result_dir) == first  # and the same predictions
    with pytest.raises(SystemExit) as exc:
        test_script.main(args_for_test(corpus, two_seeds, result_dir, "--seeds=[2]"))
    assert "--overwrite" in str(exc.value.code) and str(result_dir) in str(exc.value.code)
    assert file_bytes(result_dir) == first
    test_script.main(args_for_test(corpus, two_seeds, result_dir, "--seeds=[2]", "--overwrite"))
    assert file_bytes(result_dir) != first
    res = json.loads((result_dir / "score.json").read_text())
    assert res["seeds"] == [2]
    # --overwrite leaves nothing of the old run behind: ensemble of 2 seeds -> seed 2 alone
    test_script.main(args_for_test(corpus, two_seeds, result_dir, "--overwrite"))
    per_seed_2 = file_bytes(result_dir / "per_seed" / "seed-2")
    mine = result_dir / "sub-099.json"  # the user's own file (e.g. from another test set): never removed
    mine.write_text(json.dumps({"sub-099_0": [0.0, 1.0]}))
    test_script.main(args_for_test(corpus, two_seeds, result_dir, "--seeds=[2]", "--overwrite"))
    assert not any(p.is_file() for p in (result_dir / "per_seed").rglob("*")), "stale per-seed predictions"
    assert json.loads(mine.read_text()) == {"sub-099_0": [0.0, 1.0]}
    assert "sub-099.json" not in json.loads((result_dir / "manifest.json").read_text())["files"]
    now = {k: v for k, v in file_bytes(result_dir).items() if k.startswith("sub-") and k != "sub-099.json"}
    assert now == per_seed_2  # seed 2 alone predicts exactly what it predicted inside the ensemble
    assert json.loads((result_dir / "score.json").read_text())["seeds"] == [2]


def test_resume_with_another_model_setup_is_refused(corpus, tmp_path):
    run_dir = tmp_path / "runs"
    train.main([*data_args(corpus), *TINY, f"--run_dir={run_dir}", "--epochs=1"])
    before = file_bytes(run_dir / "ivlaai" / "seed-1")
    with pytest.raises(SystemExit, match=r"cannot resume.*ivlaai_width was 16, now 32"):
        train.main([*data_args(corpus), *TINY, "--ivlaai_width=32", f"--run_dir={run_dir}", "--epochs=2",
                    "--resume"])
    assert file_bytes(run_dir / "ivlaai" / "seed-1") == before


@pytest.mark.parametrize("bad", ["--epochs=0", "--patience=0", "--seeds=[1,1]"])
def test_degenerate_training_settings_are_rejected(corpus, tmp_path, bad):
    with pytest.raises(SystemExit, match=r"^config error: " + re.escape(bad.split("=")[0])):
        train.main([*data_args(corpus), *TINY, f"--run_dir={tmp_path / 'r'}", bad])
    assert not (tmp_path / "r").exists()


def test_ema_weights_are_tested_and_resume_exactly(corpus, tmp_path):
    """With --ema_decay the checkpoint's 'model' is the weight average (what test.py loads), the
    raw weights are kept for resuming, and an interrupted EMA run resumes bit for bit."""
    ema = ["--ema_decay=0.9", "--avg_epochs=1", "--seeds=[3]"]
    full, split = tmp_path / "full", tmp_path / "split"
    train.main([*data_args(corpus), *TINY, *ema, f"--run_dir={full}", "--epochs=2"])
    train.main([*data_args(corpus), *TINY, *ema, f"--run_dir={split}", "--epochs=1"])
    train.main([*data_args(corpus), *TINY, *ema, f"--run_dir={split}", "--epochs=2", "--resume"])
    a, b = load(full / "ivlaai" / "seed-3" / "last.pt"), load(split / "ivlaai" / "seed-3" / "last.pt")
    assert same_tensors(a["model"], b["model"]) and same_tensors(a["raw_model"], b["raw_model"])
    assert not same_tensors(a["model"], a["raw_model"])  # the average is not the last step's weights
    assert int(a["ema_n_averaged"]) > 1
    res = test_script.main(args_for_test(corpus, full, tmp_path / "pred"))
    assert -1 <= res["ensemble"]["total"] <= 1


def test_monitor_recordings_are_scored_every_epoch_but_never_trained_on(tmp_path):
    """--monitor_recordings: whole recordings kept out of training and validation, scored after
    every epoch into log.csv's monitor_r (e.g. an inner held-out listener), never used to choose."""
    rng = np.random.default_rng(0)
    data = tmp_path / "npz"
    data.mkdir()
    mix = rng.standard_normal(N_CHANS)  # one spatial pattern for every listener, so S3 decodes too
    for s in (1, 2, 3):
        for t in range(2):
            env = np.abs(np.convolve(rng.standard_normal(64 * 20 + 15), np.ones(16) / 16, "valid"))[:, None]
            eeg = env * mix + 0.5 * rng.standard_normal((len(env), N_CHANS))
            np.savez(data / f"DTU_S{s}_{t:03d}.npz", eeg=eeg.astype(np.float32), envelope=env.astype(np.float32))
    run_dir = tmp_path / "runs"
    args = [f"--data_dir={data}", *TINY, f"--run_dir={run_dir}", "--seeds=[1]", "--epochs=3", "--lr=1e-2",
            "--split=time", "--monitor_recordings=['S3']"]
    train.main(args)
    cfg = cli.parse(args)[0]
    corpus = corpus_from_config(cfg)
    s3 = [r for r in corpus.recordings if r.subject == "S3"]
    assert len(s3) == 2 and all(set(r.parts) == {"monitor"} for r in s3)
    assert all("monitor" not in r.parts for r in corpus.recordings if r.subject != "S3")
    with open(run_dir / "ivlaai" / "seed-1" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(np.isfinite(float(row["monitor_r"])) for row in rows)
    # the logged figure is the last epoch's weights scored on S3's whole trials
    model, ck = load_model(run_dir / "ivlaai" / "seed-1" / "last.pt", torch.device("cpu"))
    assert ck["subjects"] == ["S1", "S2"]  # S3 was never trained on, so it stays an unseen listener
    index = {s: i for i, s in enumerate(ck["subjects"])}
    again = evaluate(model, s3, "monitor", torch.device("cpu"), index)["r"]
    assert float(rows[-1]["monitor_r"]) == pytest.approx(again, abs=1e-5)
    assert float(rows[-1]["monitor_r"]) > 0.3  # the envelope is in S3's EEG too: the figure means something


@pytest.mark.slow
def test_sigterm_to_a_seed_sweep_reaches_the_seeds(tmp_path):
    """``kill`` of a --jobs sweep (only the parent gets it, unlike Ctrl-C) is passed on to the
    seeds it runs, which stop at their last completed epoch and can be resumed."""
    corpus = make_corpus(tmp_path / "xfdata", minutes=3.0)
    run_dir = tmp_path / "runs"
    args = [f"--data_dir={corpus / 'split_data'}", f"--n_chans={N_CHANS}", "--model=ivlaai", "--ivlaai_blocks=2",
            "--ivlaai_width=64", "--window_s=2", "--threads=1", "--patience=50", "--epochs=50",
            f"--run_dir={run_dir}", "--seeds=[1,2]", "--jobs=2"]
    proc = start_train(args)
    try:
        wait_for_line(proc, r"seed 2: started")
        logs = [run_dir / "ivlaai" / "logs" / f"seed-{s}.log" for s in (1, 2)]
        t0 = time.time()
        while not all(p.exists() and re.search(r"epoch\s+1\s", p.read_text()) for p in logs):
            assert time.time() - t0 < 120 and proc.poll() is None, "the seeds did not finish an epoch"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    for s in (1, 2):
        out = run_dir / "ivlaai" / f"seed-{s}"
        assert_clean_run_dir(out)  # both children ended and let go of their locks
        last = load(out / "last.pt")
        assert not last["finished"] and 1 <= last["epoch"] < 50
        assert len(read_log(out / "log.csv")) == last["epoch"]
        log = (run_dir / "ivlaai" / "logs" / f"seed-{s}.log").read_text()
        assert "interrupted" in log and "Traceback" not in log


def test_keep_epochs_writes_the_weights_of_every_epoch(corpus, tmp_path):
    """--keep_epochs: epochs/epoch-NNN.pt holds each epoch's evaluated weights and its log row, as
    plain data; the last one equals last.pt's weights and evaluates to the logged val r."""
    run_dir = tmp_path / "runs"
    args = [*data_args(corpus), *TINY, f"--run_dir={run_dir}", "--seeds=[1]", "--epochs=3",
            "--patience=3", "--keep_epochs"]
    train.main(args)
    out = run_dir / "ivlaai" / "seed-1"
    files = sorted((out / "epochs").glob("*.pt"))
    assert [f.name for f in files] == ["epoch-001.pt", "epoch-002.pt", "epoch-003.pt"]
    rows = read_log(out / "log.csv")
    eps = [load(f) for f in files]
    assert [e["epoch"] for e in eps] == [1, 2, 3]
    assert [e["val_r"] for e in eps] == pytest.approx([float(r["val_r"]) for r in rows])
    assert same_tensors(eps[-1]["model"], load(out / "last.pt")["model"])
    assert not same_tensors(eps[0]["model"], eps[-1]["model"])
    model, ck = load_model(files[1], torch.device("cpu"))
    corpus_ = corpus_from_config(cli.parse(args)[0])
    index = {s: i for i, s in enumerate(ck["subjects"])}
    r = evaluate(model, corpus_.with_part("val"), "val", torch.device("cpu"), index)["r"]
    assert r == pytest.approx(float(rows[1]["val_r"]), abs=1e-5)


@pytest.mark.slow
def test_avg_epochs_tests_the_average_of_the_last_epochs_and_resumes_exactly(corpus, tmp_path):
    """--avg_epochs=K: what is validated and kept is the uniform average of the last K epochs'
    weights, while training itself follows the raw weights (same trajectory as without averaging);
    an interrupted averaging run resumes bit for bit."""
    common = [*data_args(corpus), *TINY, "--seeds=[2]", "--patience=4", "--keep_epochs"]
    raw, avg, split = tmp_path / "raw", tmp_path / "avg", tmp_path / "split"
    train.main([*common, f"--run_dir={raw}", "--epochs=4", "--avg_epochs=1"])
    train.main([*common, f"--run_dir={avg}", "--epochs=4", "--avg_epochs=3"])
    raw_eps = [load(raw / "ivlaai" / "seed-2" / "epochs" / f"epoch-00{e}.pt")["model"] for e in (1, 2, 3, 4)]
    a = load(avg / "ivlaai" / "seed-2" / "last.pt")
    assert same_tensors(a["raw_model"], raw_eps[-1])  # averaging does not change the training
    want = average_state_dicts(raw_eps[1:])  # epochs 2-4
    assert all(torch.allclose(a["model"][k].float(), want[k].float(), atol=1e-6) for k in want)
    first = load(avg / "ivlaai" / "seed-2" / "epochs" / "epoch-001.pt")["model"]
    assert same_tensors(first, raw_eps[0])  # one epoch: nothing to average yet
    rows = read_log(avg / "ivlaai" / "seed-2" / "log.csv")
    model, ck = load_model(avg / "ivlaai" / "seed-2" / "last.pt", torch.device("cpu"))
    cfg = cli.parse([*common, f"--run_dir={avg}"])[0]
    val = corpus_from_config(cfg).with_part("val")
    index = {s: i for i, s in enumerate(ck["subjects"])}
    assert evaluate(model, val, "val", torch.device("cpu"), index)["r"] == pytest.approx(
        float(rows[-1]["val_r"]), abs=1e-5)  # the logged val r is the averaged weights'
    train.main([*common, f"--run_dir={split}", "--epochs=2", "--avg_epochs=3"])
    train.main([*common, f"--run_dir={split}", "--epochs=4", "--avg_epochs=3", "--resume"])
    b = load(split / "ivlaai" / "seed-2" / "last.pt")
    assert same_tensors(a["model"], b["model"]) and same_tensors(a["raw_model"], b["raw_model"])
    with pytest.raises(SystemExit, match="avg_epochs and --ema_decay"):
        train.main([*common, f"--run_dir={tmp_path / 'both'}", "--avg_epochs=2", "--ema_decay=0.9"])
    with pytest.raises(SystemExit, match="--avg_epochs: must be >= 1, got 0"):
        train.main([*common, f"--run_dir={tmp_path / 'zero'}", "--avg_epochs=0"])


def test_select_last_keeps_the_final_epoch_and_ignores_patience(corpus, tmp_path):
    """--select=last: best.pt is the final epoch's weights and training runs every epoch even
    when validation r does not improve (patience 1); --select=best_val keeps the best validation r."""
    run_dir = tmp_path / "last"
    train.main([*data_args(corpus), *TINY, "--seeds=[1]", "--epochs=4", "--patience=1", "--select=last",
                "--avg_epochs=1", f"--run_dir={run_dir}"])
    out = run_dir / "ivlaai" / "seed-1"
    rows = read_log(out / "log.csv")
    best, last = load(out / "best.pt"), load(out / "last.pt")
    assert len(rows) == 4 and best["epoch"] == 4 and same_tensors(best["model"], last["model"])
    assert best["best_val_r"] == pytest.approx(float(rows[-1]["val_r"]), abs=1e-6)
    val = [float(r["val_r"]) for r in rows]
    assert max(val) > val[-1]  # so the default rule keeps another epoch, and patience 1 stops it early
    train.main([*data_args(corpus), *TINY, "--seeds=[1]", "--epochs=4", "--patience=1", "--select=best_val",
                "--avg_epochs=1", f"--run_dir={tmp_path / 'bv'}"])
    bv = tmp_path / "bv" / "ivlaai" / "seed-1"
    assert load(bv / "best.pt")["epoch"] == int(np.argmax(val)) + 1 and len(read_log(bv / "log.csv")) < 4
    with pytest.raises(cli.ConfigError, match="select"):
        cli.parse(["--select=worst"])


def test_a_finished_run_with_another_recipe_is_not_passed_off_as_done(corpus, tmp_path):
    """--resume on a finished run made with another select/avg_epochs stops with the file and the
    change (it is neither reused as if it were the run asked for, nor overwritten); a checkpoint
    from before a key existed counts as what runs did then (no averaging, the best validation
    epoch), whatever the key's default is now."""
    run_dir = tmp_path / "runs"
    args = [*data_args(corpus), *TINY, "--seeds=[1]", "--epochs=1", f"--run_dir={run_dir}"]
    train.main(args)
    last = run_dir / "ivlaai" / "seed-1" / "last.pt"
    before = file_bytes(run_dir / "ivlaai" / "seed-1")
    with pytest.raises(SystemExit, match=r"last\.pt: cannot resume.*select was 'last', now 'best_val'"):
        train.main([*args, "--resume", "--select=best_val"])
    with pytest.raises(SystemExit, match=r"avg_epochs was 5, now 1"):
        train.main([*args, "--resume", "--avg_epochs=1"])
    ck = load(last)
    del ck["config"]["avg_epochs"]  # as written before --avg_epochs existed: no averaging
    torch.save(ck, last)
    with pytest.raises(SystemExit, match=r"avg_epochs was 1, now 5"):
        train.main([*args, "--resume"])  # today's default averages: not the run that file holds
    train.main([*args, "--resume", "--avg_epochs=1"])  # the same run, kept as finished
    with pytest.raises(SystemExit, match=r"avg_epochs was 1, now 2"):
        train.main([*args, "--resume", "--avg_epochs=2"])
    assert {k: v for k, v in file_bytes(run_dir / "ivlaai" / "seed-1").items() if k != "last.pt"} == \
        {k: v for k, v in before.items() if k != "last.pt"}


# ----------------------------------------------------------------------------------- time folds
def test_time_fold_run_is_scored_on_its_own_held_out_tenth(tmp_path, capsys):
    """A run trained with --time_fold=K is scored by test.py --eval_dir on fold K's test tenth
    unless another fold is asked for (which prints a note), and cannot be resumed as another fold."""
    d = tmp_path / "npz"
    d.mkdir()
    r = np.random.default_rng(5)
    for s in (1, 2):
        for t in range(2):
            eeg = r.standard_normal((1280, N_CHANS)).astype(np.float32)
            env = (eeg[:, :3].sum(1, keepdims=True) + 0.5 * r.standard_normal((1280, 1))).astype(np.float32)
            np.savez(d / f"DTU_S{s}_{t:03d}.npz", eeg=eeg, envelope=env)
    run_dir = tmp_path / "runs"
    common = [f"--data_dir={d}", f"--n_chans={N_CHANS}", "--model=linear", f"--run_dir={run_dir}", "--threads=1"]
    train.main(common + ["--time_fold=4"])
    ev = [f"--run_dir={run_dir}", "--test_dir=None", f"--eval_dir={d}", "--split=time"]
    own = test_script.main(ev + [f"--result_dir={tmp_path / 'own'}"])["eval"]
    assert own["time_fold"] == 4 and own["n_recordings"] == 4  # train pieces have no test part
    explicit = test_script.main(ev + ["--time_fold=4", f"--result_dir={tmp_path / 'explicit'}"])["eval"]
    assert explicit["ensemble"]["r"] == own["ensemble"]["r"] and own["ensemble"]["r"] > 0.5
    capsys.readouterr()
    other = test_script.main(ev + ["--time_fold=0", f"--result_dir={tmp_path / 'other'}"])["eval"]
    assert other["time_fold"] == 0 and other["ensemble"]["r"] != own["ensemble"]["r"]
    assert "trained with time_fold [4]" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="time_fold was 4, now 0"):
        train.main(common + ["--time_fold=0", "--resume"])
    with pytest.raises(SystemExit, match="config error: --time_fold=4 needs --split=time"):
        train.main(common + ["--time_fold=4", "--split=whole", f"--run_dir={tmp_path / 'whole'}"])
    # a saved config from before time folds (benchmarks/selection.py re-reads old runs) is fold 0
    old_cfg = dict(cli.defaults(), data_dir=str(d), n_chans=N_CHANS)
    del old_cfg["time_fold"]
    assert [r.length("test") for r in corpus_from_config(old_cfg).with_part("test")] == [128] * 4
