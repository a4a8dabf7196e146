"""Tests of the one-off studies in experiments/ (marked ``study``, which pytest.ini deselects by
default; run them with ``python -m pytest -q -m study tests/test_experiments.py``).

Run from the repo root (``python -m pytest``), as the studies themselves are."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from experiments import ablation, position_r, selection, speech_cv, train_speed

pytestmark = pytest.mark.study
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scorer():
    """The project's test.py (a plain ``import test`` could find the standard library's package)."""
    spec = importlib.util.spec_from_file_location("test_script", ROOT / "test.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def decodable_npz(tmp_path):
    """Three subjects x two trials of 20 s 8-channel EEG that carries the envelope (a fixed mix plus
    noise), DTU-style names: a tiny model learns it within a few epochs."""
    rng = np.random.default_rng(0)
    data = tmp_path / "decodable"
    data.mkdir()
    mix = rng.standard_normal(8)
    for s in (1, 2, 3):
        for t in range(2):
            env = np.abs(np.convolve(rng.standard_normal(64 * 20 + 15), np.ones(16) / 16, "valid"))[:, None]
            eeg = env * mix + 0.5 * rng.standard_normal((len(env), 8))
            np.savez(data / f"DTU_S{s}_{t:03d}.npz", eeg=eeg.astype(np.float32), envelope=env.astype(np.float32))
    return data


def test_position_r_finds_where_a_model_decodes():
    """A 'model' that passes channel 0 through decodes only where channel 0 carries the envelope."""
    class Channel0(torch.nn.Module):
        def forward(self, x):  # (batch, time, C) -> (batch, time, 1)
            return x[..., :1]

    rng = np.random.default_rng(0)
    window, recs = 64, []
    for _ in range(3):
        env = rng.standard_normal(4 * window)
        eeg = rng.standard_normal((4 * window, 2))
        eeg[: 2 * window, 0] = env[: 2 * window] + 0.5 * eeg[: 2 * window, 0]  # first half: envelope + noise
        recs.append((eeg, env))
    r = position_r.position_r([Channel0(), Channel0()], recs, window)
    assert r.shape == (3, 4)
    assert (r[:, :2] > 0.8).all() and (np.abs(r[:, 2:]) < 0.4).all()
    # the ensemble averages z-scored predictions: a sign-flipped copy cancels the signal
    class Minus(Channel0):
        def forward(self, x):
            return -x[..., :1]
    r0 = position_r.position_r([Channel0(), Minus()], recs, window)
    assert np.allclose(np.nan_to_num(r0), 0.0, atol=1e-6)


def test_selection_early_stop_and_weight_average():
    val = [0.1, 0.3, 0.2, 0.25, 0.4]
    assert selection.early_stop(val, patience=2) == 1  # epochs 3 and 4 are not better: stop before 5
    assert selection.early_stop(val, patience=3) == 4
    assert selection.early_stop([0.2, 0.2, 0.2], patience=5) == 0  # ties do not count as better
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(4)}
    avg = selection.average_state_dicts([a, b])  # what the study averages epochs with
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and int(avg["n"]) == 4


def test_selection_study_reproduces_train_logs(tmp_path, monkeypatch, decodable_npz):
    """experiments/selection.py on a tiny run: its K=1 curves are the val r and monitor r that
    train.py logged, re-evaluating an epoch's weights reproduces them, and 'best val' keeps
    train.py's best epoch."""
    import csv

    sel = selection
    run_dir = tmp_path / "runs"
    train.main([f"--data_dir={decodable_npz}", "--n_chans=8", "--model=ivlaai", "--ivlaai_blocks=1",
                "--ivlaai_width=16", "--window_s=1", "--batch_size=16", "--threads=1", "--epochs=4", "--patience=4",
                "--lr=1e-2",
                "--seeds=[1]", "--monitor_recordings=['S3']", "--keep_epochs", f"--run_dir={run_dir}"])
    seed_dir = run_dir / "ivlaai" / "seed-1"
    with open(seed_dir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    res = sel.main([f"--runs={seed_dir}", "--avg=[1,2]", "--fixed=[2,4]", "--patience=4",
                    f"--out={tmp_path / 's.json'}"])
    c = res["runs"][0]["curves"]
    assert c["avg1"]["val_r"] == pytest.approx([float(r["val_r"]) for r in rows], abs=1e-5)
    assert c["avg1"]["monitor_r"] == pytest.approx([float(r["monitor_r"]) for r in rows], abs=1e-5)
    # one epoch: nothing to average, so re-evaluating its weights must give what train.py logged
    assert c["avg2"]["val_r"][0] == pytest.approx(c["avg1"]["val_r"][0], abs=1e-5)
    assert c["avg2"]["monitor_r"][0] == pytest.approx(c["avg1"]["monitor_r"][0], abs=1e-5)
    assert c["avg2"]["val_r"][1:] != pytest.approx(c["avg1"]["val_r"][1:], abs=1e-6)
    best = int(np.argmax([float(r["val_r"]) for r in rows]))
    epoch, r = res["rules"][0]["best val, avg1"]
    assert epoch == best + 1 and r == pytest.approx(float(rows[best]["monitor_r"]), abs=1e-5)
    assert res["rules"][0]["epoch 4, avg1"][1] == pytest.approx(float(rows[3]["monitor_r"]), abs=1e-5)
    assert (tmp_path / "s.json").exists()
    assert res["runs"][0]["model"].endswith("/ivlaai")
    # the second call reads <run>/selection.json; a changed epoch file or other K values re-score
    real = sel.study_run_uncached
    calls = []
    monkeypatch.setattr(sel, "study_run_uncached", lambda *a: calls.append(a) or real(*a))
    again = sel.main([f"--runs={seed_dir}", "--avg=[1,2]", "--fixed=[2,4]", "--patience=4"])
    assert calls == [] and again["runs"] == res["runs"]
    sel.main([f"--runs={seed_dir}", "--avg=[1,3]", "--fixed=[2,4]", "--patience=4"])
    assert len(calls) == 1
    ck = torch.load(seed_dir / "epochs" / "epoch-002.pt", weights_only=True)
    ck["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, seed_dir / "epochs" / "epoch-002.pt")
    changed = sel.main([f"--runs={seed_dir}", "--avg=[1,3]", "--fixed=[2,4]", "--patience=4"])
    assert len(calls) == 2 and changed["runs"][0]["curves"]["avg3"]["val_r"][1] != pytest.approx(
        res["runs"][0]["curves"]["avg2"]["val_r"][1], abs=1e-9)
    (seed_dir / "selection.json").write_text("{not json")
    sel.main([f"--runs={seed_dir}", "--avg=[1,3]", "--fixed=[2,4]", "--patience=4"])
    assert len(calls) == 3 and json.loads((seed_dir / "selection.json").read_text())["key"]["avg"] == [1, 3]
    with pytest.raises(SystemExit, match="keep_epochs"):
        sel.main([f"--runs={run_dir / 'ivlaai'}"])  # not a seed directory with kept epochs


def test_selection_unseen_judge_matches_test_py(tmp_path, decodable_npz, scorer):
    """--judge=unseen scores the inner listeners' last 10 % exactly as benchmark.py scores the
    test subjects' unseen speech (test.py --split=time), and judges the rules by it."""
    sel = selection
    run_dir = tmp_path / "runs"
    train.main([f"--data_dir={decodable_npz}", "--n_chans=8", "--model=ivlaai", "--ivlaai_blocks=1",
                "--ivlaai_width=16", "--window_s=1", "--batch_size=16", "--threads=1", "--epochs=3", "--patience=3",
                "--lr=1e-2",
                "--seeds=[1]", "--monitor_recordings=['S3']", "--keep_epochs", "--select=last", f"--run_dir={run_dir}"])
    seed_dir = run_dir / "ivlaai" / "seed-1"
    whole = sel.main([f"--runs={seed_dir}", "--avg=[1]", "--fixed=[3]", "--patience=3"])
    res = sel.main([f"--runs={seed_dir}", "--avg=[1]", "--fixed=[3]", "--patience=3", "--judge=unseen"])
    assert res["judge"] == "unseen" and (seed_dir / "unseen.json").exists()
    unseen = res["runs"][0]["curves"]["avg1"]["monitor_r"]
    assert unseen != pytest.approx(whole["runs"][0]["curves"]["avg1"]["monitor_r"], abs=1e-4)
    ev = scorer.main([f"--run_dir={run_dir}", "--model=ivlaai", "--seeds=[1]", "--test_dir=None",
                           f"--eval_dir={decodable_npz}", "--subjects=['S3']", "--split=time",
                           f"--result_dir={tmp_path / 'unseen'}"])["eval"]
    r_test = float(np.mean(list(ev["per_seed"]["seed-1"]["per_subject"].values())))
    assert unseen[-1] == pytest.approx(r_test, abs=1e-5)  # best.pt = the last epoch (select=last)
    assert res["rules"][0]["epoch 3, avg1"][1] == pytest.approx(r_test, abs=1e-5)
    with pytest.raises(SystemExit, match="judge"):
        sel.main([f"--runs={seed_dir}", "--judge=bogus"])


def test_ablation_recipe_run_matches_study_run(tmp_path, decodable_npz):
    """experiments/ablation.py compares recipe runs (--select=last --avg_epochs=K) with the study's
    kept-epoch runs at epoch N, average of K. The two must be the same weights: a recipe run of 3
    epochs keeping the average of 3 scores on its inner listener exactly what the 4-epoch study run
    of the same seed gives for 'epoch 3, average of 3'; an unfinished run is refused."""
    common = [f"--data_dir={decodable_npz}", "--n_chans=8", "--model=ivlaai", "--ivlaai_blocks=1", "--ivlaai_width=16",
              "--window_s=1", "--batch_size=16", "--threads=1", "--lr=1e-2", "--seeds=[1]",
              "--monitor_recordings=['S3']"]
    study, recipe = tmp_path / "select" / "inner-S3", tmp_path / "ablate-base" / "inner-S3"
    # the study's runs keep each epoch's own weights (no averaging), as experiments/selection_runs.sh trains them
    train.main([*common, "--epochs=4", "--patience=4", "--keep_epochs", "--select=best_val", "--avg_epochs=1",
                f"--run_dir={study}"])
    train.main([*common, "--epochs=3", "--select=last", "--avg_epochs=3", f"--run_dir={recipe}"])
    res = ablation.main([f"--baseline={study}/ivlaai/seed-*", f"--runs={recipe}/ivlaai/seed-*", "--epochs=3",
                         "--avg=3", f"--out={tmp_path / 'a.json'}"])
    assert set(res) == {"select-ivlaai", "ablate-base"}
    (b,), (r,) = res["select-ivlaai"]["runs"], res["ablate-base"]["runs"]
    assert r["monitor_r"] == pytest.approx(b["monitor_r"], abs=1e-5)
    assert r["val_r"] == pytest.approx(b["val_r"], abs=1e-5)
    assert res["ablate-base"]["diff_mean"] == pytest.approx(0.0, abs=1e-5) and res["ablate-base"]["paired"] == 1
    # judged by the inner listener's unseen speech: the same weights agree there too, on another figure
    un = ablation.main([f"--baseline={study}/ivlaai/seed-*", f"--runs={recipe}/ivlaai/seed-*", "--epochs=3",
                        "--avg=3", "--judge=unseen"])
    (bu,), (ru,) = un["select-ivlaai"]["runs"], un["ablate-base"]["runs"]
    assert ru["monitor_r"] == pytest.approx(bu["monitor_r"], abs=1e-5)
    assert ru["monitor_r"] != pytest.approx(r["monitor_r"], abs=1e-4)
    # the study run's own epoch-3 weights (no averaging) are another model: the comparison can tell
    alone = ablation.main([f"--baseline={study}/ivlaai/seed-*", f"--runs={recipe}/ivlaai/seed-*", "--epochs=3",
                           "--avg=1"])
    assert alone["select-ivlaai"]["runs"][0]["monitor_r"] != pytest.approx(r["monitor_r"], abs=1e-6)
    with pytest.raises(SystemExit, match="4 epochs logged with select='best_val'; a recipe run has 3 epochs"):
        ablation.main([f"--baseline={tmp_path / 'none'}", f"--runs={study}/ivlaai/seed-*", "--epochs=3"])


def test_speech_cv_summary_scores_new_and_seen_listeners(tmp_path, decodable_npz, scorer):
    """experiments/speech_cv.py: a listener held out by a fold's run counts as new in that fold and as
    seen in the others; figures are the per-listener r that test.py wrote; a run scored on another
    time fold than it trained on is refused."""
    ts = scorer
    root = tmp_path / "cv"
    for fold, held in ((0, "S1"), (3, "S2"), (6, "S1")):
        d = root / "linear" / f"tf{fold}"
        train.main([f"--data_dir={decodable_npz}", "--n_chans=8", "--model=linear", "--threads=1",
                    f"--exclude_subjects=['{held}']", f"--time_fold={fold}", f"--run_dir={d}"])
        ts.main([f"--run_dir={d}", "--test_dir=None", f"--eval_dir={decodable_npz}", "--split=time",
                 f"--result_dir={d / 'eval'}"])
    table = speech_cv.main([f"--root={root}", "--ref=linear"])["linear"]
    evals = {k: json.loads((root / "linear" / f"tf{k}" / "eval" / "eval_score.json").read_text()) for k in (0, 3, 6)}
    ev = {k: e["ensemble"]["per_subject"] for k, e in evals.items()}
    # S1 is new in folds 0 and 6, seen in fold 3; S2 new in fold 3, seen in 0 and 6
    assert table["new_per_subject"] == pytest.approx({"S1": (ev[0]["S1"] + ev[6]["S1"]) / 2, "S2": ev[3]["S2"]})
    assert table["seen_per_subject"] == pytest.approx({"S1": ev[3]["S1"], "S2": (ev[0]["S2"] + ev[6]["S2"]) / 2,
                                                       "S3": (ev[0]["S3"] + ev[3]["S3"] + ev[6]["S3"]) / 3})
    assert ev[0]["S1"] != ev[6]["S1"]  # different speech: the average is not a no-op
    assert table["new"] > 0.5 and table["seen"] > 0.5  # the EEG carries the envelope
    # scored on the wrong fold: refused, naming the file
    d = root / "linear" / "tf3"
    ts.main([f"--run_dir={d}", "--test_dir=None", f"--eval_dir={decodable_npz}", "--split=time", "--time_fold=0",
             f"--result_dir={d / 'eval'}", "--overwrite"])
    with pytest.raises(SystemExit, match=r"tf3/eval/eval_score.json: scored time_fold 0, folder says 3"):
        speech_cv.main([f"--root={root}"])


def test_speech_cv_averages_seeds_scored_one_by_one(tmp_path, decodable_npz, scorer):
    """experiments/speech_cv.py: seeds trained into one fold's run dir and scored one by one
    (eval/seed-N/, as speech_cv_runs.sh does) count as one fold whose r is the mean over its
    seeds; --seeds and --folds keep only those; a score without its trained seed is refused."""
    ts = scorer
    root = tmp_path / "cv"
    common = [f"--data_dir={decodable_npz}", "--n_chans=8", "--model=ivlaai", "--ivlaai_blocks=1", "--ivlaai_width=16",
              "--window_s=1", "--batch_size=16", "--threads=1", "--lr=1e-2", "--epochs=1", "--split=time"]
    for fold, held in ((0, "S1"), (3, "S2")):
        d = root / "ivlaai" / f"tf{fold}"
        for seed in ((1, 2) if fold == 0 else (1,)):
            train.main([*common, f"--exclude_subjects=['{held}']", f"--time_fold={fold}", f"--seeds=[{seed}]",
                        f"--run_dir={d}"])
            ts.main([f"--run_dir={d}", "--model=ivlaai", f"--seeds=[{seed}]", "--test_dir=None",
                     f"--eval_dir={decodable_npz}", "--split=time", f"--result_dir={d / 'eval' / f'seed-{seed}'}"])
    ev = {s: json.loads((root / "ivlaai" / "tf0" / "eval" / f"seed-{s}" / "eval_score.json").read_text())
          ["per_seed"][f"seed-{s}"]["per_subject"] for s in (1, 2)}
    assert ev[1]["S1"] != pytest.approx(ev[2]["S1"], abs=1e-6)  # two seeds, two models
    runs = speech_cv.read_runs(root)["ivlaai"]
    assert sorted(runs[0]["seeds"]) == [1, 2] and sorted(runs[3]["seeds"]) == [1]
    assert runs[0]["held_out"] == ["S1"]
    assert runs[0]["r"] == pytest.approx({s: (ev[1][s] + ev[2][s]) / 2 for s in ev[1]})
    assert len(runs[0]["epoch"]) == 2
    one = speech_cv.read_runs(root, seeds={2})["ivlaai"]
    assert sorted(one) == [0] and one[0]["r"] == pytest.approx(ev[2])  # fold 3 has no seed 2
    table = speech_cv.main([f"--root={root}", "--ref=ivlaai", "--folds=[0]"])["ivlaai"]
    assert table["folds"] == [0] and table["seeds"] == {0: [1, 2]}
    assert table["new_per_subject"] == pytest.approx({"S1": (ev[1]["S1"] + ev[2]["S1"]) / 2})
    with pytest.raises(SystemExit, match="no scored runs"):
        speech_cv.main([f"--root={root}", "--folds=[5]"])
    with pytest.raises(SystemExit, match="seeds"):
        speech_cv.main([f"--root={root}", "--seeds=a"])
    with pytest.raises(SystemExit, match="seeds"):
        speech_cv.main([f"--root={root}", "--seeds=[a]"])
    with pytest.raises(SystemExit, match="no_such_key"):
        speech_cv.main([f"--root={root}", "--no_such_key=1"])
    (root / "ivlaai" / "tf0" / "ivlaai" / "seed-2" / "best.pt").unlink()
    with pytest.raises(SystemExit,
                       match=r"tf0/eval/seed-2/eval_score.json: scores seed-2, but .* holds 0 trained seed-2"):
        speech_cv.read_runs(root)


def test_speech_cv_fold_differences_pair_fold_means():
    """experiments/speech_cv.py: the per-fold comparison pairs each fold's mean r (new listeners, and
    seen listeners) with the reference's on that fold; hand-computed figures."""

    def run(held, r):
        return {"held_out": held, "r": r, "val_r": 0.0, "epoch": 1}

    mine = {0: run(["S1"], {"S1": 0.4, "S2": 0.2, "S3": 0.3}), 1: run(["S2"], {"S1": 0.1, "S2": 0.5, "S3": 0.1})}
    ref = {0: run(["S1"], {"S1": 0.1, "S2": 0.2, "S3": 0.2}), 1: run(["S2"], {"S1": 0.2, "S2": 0.3, "S3": 0.3}),
           2: run(["S3"], {"S1": 0.9, "S2": 0.9, "S3": 0.9})}
    d = speech_cv.fold_differences(mine, ref, [0, 1])
    # new: fold 0 S1 0.4-0.1 = +0.3, fold 1 S2 0.5-0.3 = +0.2; seen: fold 0 0.25-0.2, fold 1 0.1-0.25
    assert d["new"]["n"] == 2 and d["new"]["diff"] == pytest.approx(0.25) and d["new"]["higher"] == 2
    assert d["new"]["sem"] == pytest.approx(0.05)
    assert d["seen"]["diff"] == pytest.approx((0.05 - 0.15) / 2) and d["seen"]["higher"] == 1
    assert d["seen"]["sem"] == pytest.approx(0.1)


def test_train_speed_builds_models_with_options(capsys):
    """experiments/train_speed.py: 'name:key=value' builds that model with the option; an unknown
    option is refused, naming it."""
    train_speed.main(["--models=[linear_conv,linear_conv:linear_conv_taps=4]", "--batch_size=2", "--window=40",
                      "--steps=1"])
    out = capsys.readouterr().out
    assert "linear_conv      2,049 params" in out and "linear_conv:linear_conv_taps=4       257 params" in out
    with pytest.raises(SystemExit, match="unknown build option 'no_such_key'"):
        train_speed.main(["--models=[ivlaai:no_such_key=1]"])
    for bad in ("ivlaai:ivlaai_separable=Tru", "ivlaai:ivlaai_separable", "ivlaai:ivlaai_width=1.5"):
        with pytest.raises(SystemExit, match=f"build option .* in '{bad}' needs a"):
            train_speed.main([f"--models=[{bad}]"])
