"""Scaling paths of train.py: torchrun/DDP (gloo on CPU), seed sweeps (--jobs), bf16 autocast,
and the data-wait share written to log.csv. CPU only; the tests that start several train.py
processes are marked ``slow``."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import demo_corpus
import train
from checkpoint import model_from_checkpoint
from EEG_Dataset import WindowDataset, load_corpus

ROOT = Path(__file__).resolve().parents[1]

N_CHANS = 8
# dropout 0: with dropout every rank draws its own masks, so ranks and one process cannot agree
TINY = ["--model=ivlaai", "--ivlaai_blocks=1", "--ivlaai_width=16", "--window_s=1", "--n_chans=8",
        "--threads=1", "--patience=10", "--dropout=0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scale") / "xfdata"
    demo_corpus.make_demo_corpus(out_dir=out, n_subjects=3, n_heldout=1, minutes=1.0, n_test_segments=2,
                                 segment_s=20.0, n_chans=N_CHANS, seed=0, measure=False)
    return out / "split_data"


def run_train(args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    """train.py in a fresh process; nproc > 1 runs it under torchrun (torch.distributed.run)."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([*launcher, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@torch.no_grad()
def predictions(ck: dict, eeg: torch.Tensor) -> torch.Tensor:
    return model_from_checkpoint(ck).eval()(eeg)


# ------------------------------------------------------------------------------------ sharding
def test_rank_shards_are_disjoint_equal_sized_and_make_up_each_single_process_batch(data_dir):
    corpus = load_corpus(data_dir, n_chans=N_CHANS)
    one = WindowDataset(corpus.recordings, 40, seed=3)
    for world in (2, 3):
        shards = [WindowDataset(corpus.recordings, 40, seed=3, rank=r, world_size=world) for r in range(world)]
        for epoch in (0, 4):
            one.set_epoch(epoch)
            for ds in shards:
                ds.set_epoch(epoch)
            assert len({len(ds) for ds in shards}) == 1, "every rank needs the same number of steps"
            # coverage over all ranks = every train sample exactly once (padding windows weigh nothing)
            total = {i: sum(ds.coverage()[i] for ds in shards) for i in one.coverage()}
            assert all(np.array_equal(total[i], one.coverage()[i]) for i in total)
            assert all((c == 1).all() for c in total.values())
            # step k of all ranks (batch 12/world each) holds exactly the windows of step k of one process
            per_rank = 12 // world
            for k in range(len(one) // 12):
                single = {tuple(row) for row in one.index[12 * k:12 * (k + 1)]}
                ranks = {tuple(row) for ds in shards for row in ds.index[per_rank * k:per_rank * (k + 1)]}
                assert ranks == single


# ------------------------------------------------------------------------------------ torchrun
@pytest.mark.slow
def test_torchrun_two_ranks_give_the_one_process_model(data_dir, tmp_path):
    common = [f"--data_dir={data_dir}", *TINY, "--seeds=[5]", "--epochs=2"]
    run_train([*common, "--batch_size=16", f"--run_dir={tmp_path / 'one'}"])
    two = run_train([*common, "--batch_size=16", f"--run_dir={tmp_path / 'two'}"], nproc=2)
    # the same windows in smaller steps: a different model, which shows the comparison can fail
    run_train([*common, "--batch_size=8", f"--run_dir={tmp_path / 'small'}"])

    assert "2 ranks x 8 windows" in two.stdout
    assert two.stdout.count("epoch   1") == 1, "only rank 0 prints"
    a, b, c = (load(tmp_path / d / "ivlaai" / "seed-5" / "last.pt") for d in ("one", "two", "small"))
    eeg = torch.from_numpy(load_corpus(data_dir, n_chans=N_CHANS).recordings[0].get("val")[0])[None]
    pa, pb, pc = predictions(a, eeg), predictions(b, eeg), predictions(c, eeg)
    scale = float(pa.abs().max())
    assert float((pa - pb).abs().max()) < 1e-2 * scale          # float summation order only
    assert float((pa - pc).abs().max()) > 10 * float((pa - pb).abs().max())
    # reduced training r and validation r. Summation order moves the weights slightly, and Adam
    # turns gradients that are pure float noise (e.g. the output bias: r ignores shifts) into full
    # steps, so two epochs agree to ~1e-3, not to the last digit; the other batch size is ~1e-2 off.
    for ra, rb in zip(a["history"], b["history"], strict=True):
        assert ra["train_r"] == pytest.approx(rb["train_r"], abs=2e-3)
        assert ra["val_r"] == pytest.approx(rb["val_r"], abs=2e-3)
    assert max(abs(ra[k] - rc[k]) for ra, rc in zip(a["history"], c["history"], strict=True)
               for k in ("train_r", "val_r")) > 4e-3
    assert a["epoch"] == b["epoch"] == 2
    # only rank 0 locked and wrote: one log, no stray temp files, the lock let go
    out = tmp_path / "two" / "ivlaai" / "seed-5"
    assert sorted(p.name for p in out.iterdir()) == [".lock", "best.pt", "curves.png", "last.pt", "log.csv"]
    assert (out / ".lock").read_text() == ""


@pytest.mark.slow
def test_torchrun_rejects_a_batch_that_does_not_split_over_ranks(data_dir, tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run([*launcher, str(ROOT / "train.py"), f"--data_dir={data_dir}", *TINY, "--batch_size=15",
                           "--epochs=1", f"--run_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "batch_size (15) must be a multiple of the number of ranks" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------ seed sweep
@pytest.mark.slow
def test_seed_sweep_in_parallel_equals_training_the_seeds_one_by_one(data_dir, tmp_path, capsys):
    common = [f"--data_dir={data_dir}", *TINY, "--batch_size=16", "--epochs=2", "--seeds=[1,2]"]
    train.main([*common, f"--run_dir={tmp_path / 'seq'}"])
    train.main([*common, f"--run_dir={tmp_path / 'par'}", "--jobs=2"])
    out = capsys.readouterr().out
    assert "seed sweep: 2 seeds, 2 at a time" in out
    for seed in (1, 2):
        a = load(tmp_path / "seq" / "ivlaai" / f"seed-{seed}" / "best.pt")
        b = load(tmp_path / "par" / "ivlaai" / f"seed-{seed}" / "best.pt")
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), f"seed {seed} differs"
        assert (tmp_path / "par" / "ivlaai" / "logs" / f"seed-{seed}.log").read_text().strip()
    seq = json.loads((tmp_path / "seq" / "ivlaai" / "seeds-1-2.json").read_text())
    par = json.loads((tmp_path / "par" / "ivlaai" / "seeds-1-2.json").read_text())
    assert seq == par
    assert set(par["val_r_per_seed"]) == {"seed-1", "seed-2"} and np.isfinite(par["val_r_ensemble"])


@pytest.mark.slow
def test_seed_sweep_reports_a_failed_seed(data_dir, tmp_path):
    common = [f"--data_dir={data_dir}", *TINY, "--batch_size=16", "--epochs=1", f"--run_dir={tmp_path}"]
    train.main([*common, "--seeds=[2]"])
    with pytest.raises(SystemExit, match=r"seeds \[2\] failed"):  # seed 2 clashes with the run above
        train.main([*common, "--seeds=[1,2]", "--jobs=2"])
    log = (tmp_path / "ivlaai" / "logs" / "seed-2.log").read_text()
    assert "already holds files" in log and "Traceback" not in log
    assert (tmp_path / "ivlaai" / "seed-1" / "best.pt").is_file()  # the other seed trained


# ------------------------------------------------------------------------------------ bf16, data wait
def test_bf16_autocast_trains_and_saves_float32_weights(data_dir, tmp_path):
    train.main([f"--data_dir={data_dir}", *TINY, "--batch_size=16", "--epochs=2", "--amp=bf16", "--seeds=[1]",
                f"--run_dir={tmp_path}"])
    ck = load(tmp_path / "ivlaai" / "seed-1" / "best.pt")
    assert all(t.dtype == torch.float32 for t in ck["model"].values() if t.is_floating_point())
    assert ck["config"]["amp"] == "bf16" and np.isfinite(ck["best_val_r"]) and ck["best_val_r"] > 0.05


def test_log_records_the_share_of_time_spent_waiting_for_data(data_dir, tmp_path):
    train.main([f"--data_dir={data_dir}", *TINY, "--batch_size=16", "--epochs=2", "--seeds=[1]",
                f"--run_dir={tmp_path}"])
    with open(tmp_path / "ivlaai" / "seed-1" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(0 <= float(r["data_wait_pct"]) < 100 for r in rows)


def test_resuming_a_run_logged_before_the_data_wait_column_existed(data_dir, tmp_path):
    args = [f"--data_dir={data_dir}", *TINY, "--batch_size=16", "--seeds=[1]", f"--run_dir={tmp_path}"]
    train.main([*args, "--epochs=1"])
    last = tmp_path / "ivlaai" / "seed-1" / "last.pt"
    ck = load(last)
    ck["history"] = [{k: v for k, v in row.items() if k != "data_wait_pct"} for row in ck["history"]]
    torch.save(ck, last)  # as an older train.py wrote it
    train.main([*args, "--epochs=2", "--resume"])
    with open(tmp_path / "ivlaai" / "seed-1" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["data_wait_pct"] == "" and float(rows[1]["data_wait_pct"]) >= 0
