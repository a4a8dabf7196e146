"""benchmark.py end to end on a small synthetic DTU-style folder (12 subjects, as the protocols
need): both protocols, two models, two seeds trained in parallel jobs, tables, JSON and figure.
The runs that start train.py processes are marked ``slow``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmark

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--n_chans=8", "--ivlaai_blocks=1", "--ivlaai_width=16", "--window_s=2", "--batch_size=16"]


def write_dtu_like(folder: Path, n_trials: int = 10, T: int = 64 * 12, C: int = 8) -> Path:
    """S1..S12 x n_trials npz trials whose EEG holds the envelope (so models learn something)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(C)  # one spatial pattern for all listeners, so held-out ones decode too
    for s in range(1, 13):
        mix = shared + 0.2 * rng.standard_normal(C)
        for t in range(n_trials):
            env = np.abs(np.convolve(rng.standard_normal(T + 15), np.ones(16) / 16, "valid"))[:T, None]
            eeg = np.roll(env, 3, axis=0) * mix + 0.5 * rng.standard_normal((T, C))
            np.savez(folder / f"DTU_S{s}_{t:03d}.npz", eeg=eeg.astype(np.float32), envelope=env.astype(np.float32))
    return folder


@pytest.mark.slow
def test_benchmark_runs_both_protocols_with_parallel_seed_jobs_and_resumes(tmp_path, monkeypatch):
    data = write_dtu_like(tmp_path / "dtu")
    out = tmp_path / "bench"
    args = [f"--data_dir={data}", f"--out_dir={out}", "--protocols=[heldout,seen]", "--folds=[3]",
            "--models=[linear,ivlaai]", "--seeds=[1,2]", "--jobs=2", "--epochs=2", "--patience=2",
            f"--extra={TINY}"]
    res = benchmark.main(args)
    summary = res["summary"]
    assert set(summary) == {"heldout", "seen"}
    for proto, test_subjects in (("heldout", ["S10", "S11", "S12"]), ("seen", [f"S{k}" for k in range(1, 13)])):
        for model in ("linear", "ivlaai"):
            row = summary[proto][model]["trial"]
            assert set(row["per_subject_ensemble"]) == set(test_subjects)
            assert set(row["seed_means"]) == {"seed-1", "seed-2"}
            assert row["mean"] == pytest.approx(np.mean(list(row["seed_means"].values())))
            assert row["mean"] > 0.3, (proto, model, row["mean"])  # the envelope is in the EEG
        assert (out / proto).is_dir()
    # both seeds of a network were trained by parallel jobs (train.py --jobs), each with its log
    logs = out / "heldout" / "fold4-S10-S12" / "ivlaai" / "ivlaai" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["seed-1.log", "seed-2.log"]
    md = (out / "results.md").read_text()
    assert "| ivlaai |" in md and "± " in md
    assert "- vs linear: mean over seeds" in md  # our network compared with each other model
    assert "120 recordings hold 120 distinct envelope(s)" in md
    # held-out subjects are also scored on the last 10 % of each trial alone (speech no model saw)
    unseen = summary["heldout"]["ivlaai"]["unseen"]
    assert set(unseen["per_subject_ensemble"]) == {"S10", "S11", "S12"} and unseen["mean"] > 0.3
    assert "unseen" not in summary["seen"]["ivlaai"]
    assert "unseen speech only" in md
    cmp = json.loads((out / "results.json").read_text())["comparisons"]["heldout"]["vs"]["linear"]
    assert cmp["subjects"] == 3 and 0 <= cmp["wins"] <= 3
    assert (out / "results.png").stat().st_size > 1000
    assert json.loads((out / "results.json").read_text())["summary"] == json.loads(json.dumps(summary))

    # running the same command again trains nothing and gives the same numbers
    best = out / "seen" / "trials-008-009" / "ivlaai" / "ivlaai" / "seed-1" / "best.pt"
    mtime = best.stat().st_mtime_ns
    log_sizes = {p: p.stat().st_size for p in out.rglob("logs/seed-*.log")}
    scored = []
    monkeypatch.setattr(benchmark.test_script, "main", lambda a: scored.append(a) or pytest.fail("scored again"))
    again = benchmark.main(args)
    assert scored == []  # the scores of unchanged models come from each group's scores.json
    assert best.stat().st_mtime_ns == mtime
    # finished models are scored straight away, without starting a train.py process for them
    assert {p: p.stat().st_size for p in out.rglob("logs/seed-*.log")} == log_sizes
    assert again["summary"]["seen"]["ivlaai"]["trial"]["mean"] == summary["seen"]["ivlaai"]["trial"]["mean"]
    assert again["summary"] == summary

    # a model that changed (here: best.pt rewritten by a longer run) is scored again
    ck = torch.load(best, weights_only=True)
    gen = torch.Generator().manual_seed(0)
    ck["model"] = {k: v + 0.3 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                   for k, v in ck["model"].items()}
    torch.save(ck, best)
    monkeypatch.undo()
    third = benchmark.main(args)
    assert third["summary"]["seen"]["ivlaai"]["trial"]["seed_means"]["seed-2"] == \
        summary["seen"]["ivlaai"]["trial"]["seed_means"]["seed-2"]
    assert third["summary"]["seen"]["ivlaai"]["trial"]["per_subject_ensemble"] != \
        summary["seen"]["ivlaai"]["trial"]["per_subject_ensemble"]


def test_quick_settings_and_separate_output_folders():
    """--quick applies benchmark.QUICK, options on the command line win over it, and quick and full
    runs never share an output folder; the recipe keys take one value or one per protocol."""
    quick = benchmark.parse_args(["--quick"])
    assert {k: quick[k] for k in benchmark.QUICK if k != "jobs"} == {k: v for k, v in benchmark.QUICK.items()
                                                                     if k != "jobs"}
    full = benchmark.parse_args([])
    assert full["folds"] == [0, 1, 2, 3] and full["seeds"] == benchmark.KEYS["seeds"][0]
    assert (quick["out_dir"], full["out_dir"]) == ("bench_runs/quick", "bench_runs/full")
    # each protocol names its recipe file; the recipe keys override it
    held, seen = (f"--config={ROOT / benchmark.RECIPES[p]}" for p in ("heldout", "seen"))
    for proto in ("heldout", "speechcv", "transfer"):
        assert benchmark.recipe_args(full, proto) == [held]
    assert benchmark.recipe_args(full, "seen") == [seen]
    one = benchmark.parse_args(["--epochs=4", "--select=best_val", "--patience=7"])  # a plain value: every protocol
    assert benchmark.recipe_args(one, "heldout") == [held, "--epochs=4", "--patience=7", "--select=best_val"]
    per = benchmark.parse_args(["--epochs={'seen': 3}"])
    assert benchmark.recipe_args(per, "seen") == [seen, "--epochs=3"]
    assert benchmark.recipe_args(per, "heldout") == [held]
    mine = benchmark.parse_args(["--quick", "--seeds=[4]", "--epochs=2", "--protocols=[seen]", "--out_dir=x"])
    assert (mine["seeds"], mine["epochs"], mine["protocols"], mine["out_dir"]) == ([4], 2, ["seen"], "x")
    assert mine["folds"] == benchmark.QUICK["folds"]  # what was not given still comes from --quick
    with pytest.raises(SystemExit, match="--epochs: a per-protocol value takes the keys"):
        benchmark.parse_args(["--epochs={'heldin': 3}"])
    with pytest.raises(SystemExit, match="--protocols: unknown protocol 'sen'"):
        benchmark.parse_args(["--protocols=[sen]"])
    with pytest.raises(SystemExit, match="--time_folds: 10 is not a time fold"):
        benchmark.parse_args(["--time_folds=[10]"])
    with pytest.raises(SystemExit, match="config error: unknown config key 'epoch'"):
        benchmark.parse_args(["--epoch=3"])


def test_recipe_files_are_what_they_say():
    """configs/heldout_listeners.py is config.py's defaults written out; the seen recipe stops early."""
    import cli

    held = cli.read_config_file(ROOT / "configs" / "heldout_listeners.py")
    assert held == {k: cli.defaults()[k] for k in held}
    seen = cli.read_config_file(ROOT / "configs" / "seen_listeners.py")
    assert seen["select"] == "best_val" and seen["avg_epochs"] == 1
    for name in ("heldout_listeners", "seen_listeners", "finetune_vlaai"):  # each is a valid train.py --config
        cli.parse([f"--config={ROOT / 'configs' / (name + '.py')}"], "train")


def test_comparisons_are_paired_over_subjects():
    def row(per_seed):  # per_seed: {seed: {subject: r}}
        means = [float(np.mean(list(v.values()))) for v in per_seed.values()]
        return {"trial": {"per_subject_seeds": per_seed, "mean": float(np.mean(means)),
                          "sd": float(np.std(means, ddof=1)), "ensemble": float(np.mean(means)) + 0.01}}
    ours = row({"seed-1": {"S1": 0.3, "S2": 0.1, "S3": 0.2}, "seed-2": {"S1": 0.1, "S2": 0.1, "S3": 0.2}})
    vlaai = row({"seed-1": {"S1": 0.1, "S2": 0.2, "S3": 0.1}, "seed-2": {"S1": 0.1, "S2": 0.2, "S3": 0.1}})
    cmp = benchmark.comparisons({"vlaai": vlaai, "ivlaai": ours})
    c = cmp["vs"]["vlaai"]
    diff = np.array([0.2 - 0.1, 0.1 - 0.2, 0.2 - 0.1])  # per subject: mean over seeds, ours minus theirs
    assert c["diff_mean"] == pytest.approx(diff.mean())
    assert c["diff_sem"] == pytest.approx(diff.std(ddof=1) / np.sqrt(3))
    assert (c["wins"], c["subjects"]) == (2, 3)
    assert c["gain"] == pytest.approx((ours["trial"]["mean"] - vlaai["trial"]["mean"]) / vlaai["trial"]["mean"])
    assert cmp["ensemble_beats_seed_mean"] is True
    assert benchmark.comparisons({"vlaai": vlaai}) == {}  # nothing to compare without our network


def test_stimulus_overlap_counts_shared_envelopes(tmp_path):
    rng = np.random.default_rng(1)
    env = rng.random((640, 1)).astype(np.float32)
    for k in range(3):  # three recordings, two of them with the same speech
        e = env if k < 2 else rng.random((640, 1)).astype(np.float32)
        np.savez(tmp_path / f"DTU_S{k + 1}_000.npz", eeg=rng.standard_normal((640, 4)).astype(np.float32), envelope=e)
    info = benchmark.stimulus_overlap(tmp_path)
    assert (info["recordings"], info["distinct_envelopes"]) == (3, 2)
    assert "share speech" in info["note"]


@pytest.mark.slow
def test_failed_training_run_is_reported_and_the_rest_still_scored(tmp_path):
    data = write_dtu_like(tmp_path / "dtu", n_trials=10, T=64 * 6)
    out = tmp_path / "bench"
    # a window longer than every trial: a valid setting that train.py rejects once it sees the data
    args = [f"--data_dir={data}", f"--out_dir={out}", "--protocols=[seen]", "--models=[linear]", "--seeds=[1,2]",
            "--jobs=2", "--epochs=1", "--patience=1", f"--extra={TINY}",
            "--variants={'broken': ['--model=ivlaai', '--window_s=100']}"]
    with pytest.raises(SystemExit, match=r"2 training runs failed \(seen trials-008-009 broken seed [12]") as exc:
        benchmark.main(args)
    # both failed seeds are named, in whichever order the parallel jobs ended
    assert "broken seed 1" in str(exc.value) and "broken seed 2" in str(exc.value)
    res = json.loads((out / "results.json").read_text())
    assert set(res["runs"]["seen"]) == {"linear"}  # the model that trained was still scored
    log = out / "seen" / "trials-008-009" / "broken" / "ivlaai" / "logs" / "seed-1.log"
    assert "window_s" in log.read_text()  # the child's own error is in its log


def test_an_impossible_train_setting_in_a_variant_stops_before_training_with_one_line(tmp_path):
    data = write_dtu_like(tmp_path / "dtu", n_trials=1, T=64 * 2)
    out = tmp_path / "bench"
    args = [f"--data_dir={data}", f"--out_dir={out}", "--protocols=[seen]", "--models=[linear]", "--seeds=[1]",
            "--variants={'broken': ['--model=ivlaai', '--window_s=-1']}"]
    with pytest.raises(SystemExit, match=r"window_s"):
        benchmark.main(args)
    assert not any(out.rglob("logs"))  # no train.py was started


def test_heldout_folds_follow_the_folder_subjects():
    assert benchmark.folds_of([f"S{k}" for k in range(12, 0, -1)]) == [
        ["S1", "S2", "S3"], ["S4", "S5", "S6"], ["S7", "S8", "S9"], ["S10", "S11", "S12"]]  # the protocol's folds
    assert benchmark.folds_of([f"S{k}" for k in range(13, 19)]) == [["S13", "S14"], ["S15", "S16"], ["S17"], ["S18"]]
    with pytest.raises(SystemExit, match="at least 5 subjects"):
        benchmark.folds_of(["S1", "S2", "S3"])
    with pytest.raises(SystemExit, match="fold index 4"):
        list(benchmark.protocol_runs(benchmark.parse_args(["--folds=[4]"]), [f"S{k}" for k in range(1, 13)]))


def test_a_group_recorded_earlier_is_not_trained_again(tmp_path):
    """With records_dir, a group whose ensemble record exists (another sitting, another machine)
    is skipped; a record without the asked ensemble sizes is not enough."""
    cfg = benchmark.parse_args([f"--records_dir={tmp_path / 'results'}", "--protocols=[transfer]", "--models=[linear]",
                                f"--out_dir={tmp_path / 'bench'}"])
    groups = benchmark._run_groups(cfg, tmp_path / "bench", [f"S{k}" for k in range(1, 13)])
    rec = tmp_path / "results" / "transfer" / groups[0]["fold"] / "linear" / "ensemble-1-2-3.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps({"kind": "ensemble", "growth": {}}))
    tasks, _ = benchmark._training_tasks(cfg, groups, 1, lambda g: None)
    assert tasks == []
    cfg["ensemble_sizes"] = [1, 2]
    assert benchmark.recorded(cfg, groups[0]) is None


def test_results_with_no_fold_shared_by_every_model_are_written_without_a_figure(tmp_path):
    """A sitting that finished only groups of different folds (one model's fold here, another's
    there) has no row to show yet: the tables say so and no figure is drawn, and nothing crashes."""
    cfg = benchmark.parse_args(["--protocols=[heldout]", "--models=[linear,vlaai]", f"--out_dir={tmp_path}"])
    results = {"runs": {"heldout": {"linear": {"fold2-S4-S6": {}}, "vlaai": {"fold1-S1-S3": {}}}}}
    benchmark.write_results(tmp_path, results, cfg, 1.0)
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == {}
    assert (tmp_path / "results.md").is_file() and not (tmp_path / "results.png").exists()
