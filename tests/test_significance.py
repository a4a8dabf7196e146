"""significance.py (chance by circular shifts, match-mismatch) and figures.py, on small seeded synthetic data."""
from __future__ import annotations

import re

import numpy as np
import pytest

import figures
import significance as sg
from challenge import mean_by_subject, score
from metrics import pearson

FS = 64


def smooth_noise(rng, n: int, width: int = 8) -> np.ndarray:
    """Low-passed Gaussian noise, filtered circularly so it is exactly stationary under circular shifts
    (an envelope-like autocorrelation, the case where a too-small shift would leak the alignment)."""
    kernel = np.zeros(n)
    kernel[:width] = 1.0 / width
    return np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * np.fft.rfft(kernel), n=n)


def segments(rng, subjects: int, per_subject: int, seconds: float, a: float = 0.0):
    """(preds, envs, groups): prediction = a * envelope + independent noise, per segment."""
    preds, envs, groups = [], [], []
    for s in range(subjects):
        for _ in range(per_subject):
            n = int(seconds * FS)
            env = smooth_noise(rng, n)
            env = (env - env.mean()) / env.std()
            noise = smooth_noise(rng, n)
            preds.append(a * env + noise / noise.std())
            envs.append(env)
            groups.append(f"S{s + 1}")
    return preds, envs, groups


def test_circular_r_equals_roll_and_pearson():
    rng = np.random.default_rng(0)
    p, e = rng.standard_normal(500), smooth_noise(rng, 500) + 3.0
    r = sg.circular_r(p, e)
    assert r.shape == (500,)
    for k in (0, 1, 128, 250, 499):
        assert r[k] == pytest.approx(float(pearson(p, np.roll(e, k), dim=0)), abs=1e-12)


def test_null_draws_equal_direct_roll_computation_and_observed_equals_official_score():
    """Every drawn score, recomputed the slow way: np.roll, metrics.pearson, mean per subject, mean."""
    rng = np.random.default_rng(1)
    preds, envs, groups = segments(rng, subjects=3, per_subject=2, seconds=12, a=0.3)
    preds[0], envs[0] = preds[0][:700], envs[0][:700]  # segments of different lengths
    groups = ["S1", "S2", "S2", "S3", "S3", "S3"]  # and of different counts: the mean per subject comes first
    out = sg.null_scores(preds, envs, groups, n=6, seed=3, return_shifts=True)
    assert set(out) == {"total", "per_subject", "observed", "n", "min_shift_samples", "method", "shifts"}
    assert out["total"].shape == (6,) and list(out["per_subject"]) == ["S1", "S2", "S3"]
    for j in range(6):
        rs = [float(pearson(p, np.roll(e, k[j]), dim=0)) for p, e, k in zip(preds, envs, out["shifts"], strict=True)]
        direct = mean_by_subject(groups, rs)
        for s, v in direct.items():
            assert out["per_subject"][s][j] == pytest.approx(v, abs=1e-12)
        assert out["total"][j] == pytest.approx(np.mean(list(direct.values())), abs=1e-12)
    ids = [f"{g}_{i}" for i, g in enumerate(groups)]  # the challenge's segment naming: subject_index
    official = score(dict(zip(ids, preds, strict=True)), dict(zip(ids, envs, strict=True)))
    assert out["observed"]["total"] == pytest.approx(official["total"], abs=1e-12)
    assert out["observed"]["per_subject"] == pytest.approx(official["per_subject"], abs=1e-12)


def test_null_is_seeded_and_the_seen_weighting_follows_the_official_rule():
    rng = np.random.default_rng(2)
    preds, envs, groups = segments(rng, subjects=3, per_subject=1, seconds=10)
    a, b = (sg.null_scores(preds, envs, groups, n=50, seed=7) for _ in range(2))
    assert np.array_equal(a["total"], b["total"])
    assert not np.array_equal(a["total"], sg.null_scores(preds, envs, groups, n=50, seed=8)["total"])
    w = sg.null_scores(preds, envs, groups, n=50, seed=7, seen_subjects=["S1"])
    ps = w["per_subject"]
    np.testing.assert_allclose(w["total"], 2 / 3 * ps["S1"] + 1 / 3 * (ps["S2"] + ps["S3"]) / 2, atol=1e-15)
    ids = [f"{g}_{i}" for i, g in enumerate(groups)]
    official = score(dict(zip(ids, preds, strict=True)), dict(zip(ids, envs, strict=True)), seen_subjects=["S1"])
    assert w["observed"]["total"] == pytest.approx(official["total"], abs=1e-12)


def test_shifts_keep_the_minimum_distance_from_zero_and_the_ends():
    m = 2 * FS  # 2 s
    lengths = [2 * m + 1, 2 * m + 5, 3000]
    rng = np.random.default_rng(3)
    preds = [rng.standard_normal(t) for t in lengths]
    envs = [rng.standard_normal(t) for t in lengths]
    out = sg.null_scores(preds, envs, ["a", "a", "b"], n=2000, seed=0, min_shift_s=2.0, return_shifts=True)
    assert out["min_shift_samples"] == m and sg.min_length(FS, 2.0) == 2 * m + 1
    for t, k in zip(lengths, out["shifts"], strict=True):
        assert k.min() >= m and k.max() <= t - m
    # the narrow ranges are covered end to end: the bounds are the intended ones, not narrower
    assert set(out["shifts"][0]) == {m, m + 1}
    assert set(out["shifts"][1]) == set(range(m, m + 6))


def test_a_segment_too_short_to_shift_is_refused_by_name():
    m = 2 * FS
    rng = np.random.default_rng(4)
    preds, envs = [rng.standard_normal(1000), rng.standard_normal(2 * m)], [rng.standard_normal(1000),
                                                                           rng.standard_normal(2 * m)]
    with pytest.raises(ValueError, match=r"segment 'sub-002_7' has 256 samples, fewer than the 257") as exc:
        sg.null_scores(preds, envs, ["a", "b"], n=10, names=["sub-001_1", "sub-002_7"])
    assert "\n" not in str(exc.value)


def test_noise_predictions_give_uniform_p_values():
    """400 independent models that predict noise: p < 0.05 in 5 % of them (binomial sd 1.1 %; the
    tolerance is 3.2 sd) and the p values' distribution within a KS bound (alpha 0.01, plus the
    1/(n+1) grid of the p values)."""
    rng = np.random.default_rng(5)
    reps, n = 400, 199
    p_total, p_subject = [], []
    for i in range(reps):
        preds, envs, groups = segments(rng, subjects=3, per_subject=2, seconds=10)
        out = sg.null_scores(preds, envs, groups, n=n, seed=i)
        ch = sg.chance(out["observed"]["total"], out["observed"]["per_subject"], out["total"], out["per_subject"],
                       out["method"])
        p_total.append(ch["p_value"])
        p_subject += list(ch["per_subject_p"].values())
    for p in (np.array(p_total), np.array(p_subject)):
        assert abs(np.mean(p < 0.05) - 0.05) < 0.035 * np.sqrt(reps / len(p))
        q = np.sort(p)
        ks = np.max(np.maximum(np.arange(1, len(q) + 1) / len(q) - q, q - np.arange(len(q)) / len(q)))
        assert ks < 1.63 / np.sqrt(len(q)) + 1 / (n + 1)


def test_a_planted_signal_is_significant_and_far_above_chance():
    """prediction = 0.1 * envelope + noise made orthogonal to it, so r is exactly 0.1 in every 60 s
    segment (6 subjects); the null total's sd is then about 0.015, so 0.1 is over 6 sd above it."""
    rng = np.random.default_rng(6)
    _, envs, groups = segments(rng, subjects=6, per_subject=1, seconds=60)
    preds = []
    for env in envs:
        noise = smooth_noise(rng, env.size)
        noise -= noise.mean() + (noise @ env) / (env @ env) * env  # envs are z-scored: centred, unit sd
        preds.append(0.1 * env + np.sqrt(1 - 0.1 ** 2) * noise / noise.std())
    out = sg.null_scores(preds, envs, groups, n=1000, seed=0)
    obs = out["observed"]["total"]
    assert obs == pytest.approx(0.1, abs=1e-12)
    ch = sg.chance(obs, out["observed"]["per_subject"], out["total"], out["per_subject"], out["method"])
    assert set(ch) == {"total_p95", "p_value", "per_subject_p95", "per_subject_p", "n", "method"}
    assert ch["p_value"] == 1 / 1001 and ch["n"] == 1000
    assert ch["total_p95"] < obs / 2
    assert max(ch["per_subject_p"].values()) < 0.05  # r 0.1 over 60 s is about 2.7 null sd per subject
    assert abs(np.mean(out["total"])) < 0.01  # the null is centred on zero
    assert re.fullmatch(r"total 0\.\d{4} \(chance 95th percentile 0\.0\d\d, p < 0\.001\)", sg.format_chance(obs, ch))


def test_p_value_formula_and_its_wording():
    ch = sg.chance(2.0, {"a": 0.5}, np.array([0.0, 1.0, 2.0, 3.0]), {"a": np.array([0.0, 0.1, 0.2, 0.3])}, "m")
    assert ch["p_value"] == (1 + 2) / (1 + 4) and ch["per_subject_p"] == {"a": 1 / 5}
    assert ch["total_p95"] == pytest.approx(np.percentile([0, 1, 2, 3], 95))
    assert sg.format_p(1 / 1001, 1000) == "p < 0.001"
    assert sg.format_p(3 / 1001, 1000) == "p = 0.003"
    assert sg.format_p(0.5124, 1000) == "p = 0.51"
    assert sg.format_p(1 / 200, 199) == "p < 0.005"
    with pytest.raises(KeyError, match="b"):
        sg.chance(0.1, {"a": 0.1, "b": 0.2}, np.zeros(3), {"a": np.zeros(3)}, "m")


def test_match_mismatch_is_perfect_for_a_perfect_reconstruction():
    rng = np.random.default_rng(7)
    _, envs, groups = segments(rng, subjects=3, per_subject=2, seconds=40)
    for cands in (5, 2):
        out = sg.match_mismatch(envs, envs, groups, candidates=cands, seed=0)
        assert set(out) >= {"candidates", "window_s", "accuracy", "chance", "per_subject", "n_windows"}
        assert out["accuracy"] == 1.0 and out["chance"] == 1 / cands and out["candidates"] == cands
        assert out["n_windows"] == 6 * 8 and out["per_subject"] == {"S1": 1.0, "S2": 1.0, "S3": 1.0}
    hop = sg.match_mismatch(envs, envs, groups, hop_s=1.0)
    assert hop["accuracy"] == 1.0 and hop["n_windows"] == 6 * 36  # starts 0..35 s of a 40 s segment


@pytest.mark.parametrize("cands, tol", [(5, 0.035), (2, 0.045)])
def test_match_mismatch_of_noise_is_at_chance(cands, tol):
    """2000 windows of noise: binomial sd 0.009 (5 candidates) / 0.011 (2); tolerance about 4 sd."""
    rng = np.random.default_rng(8 + cands)
    preds, envs, groups = segments(rng, subjects=20, per_subject=1, seconds=500)
    out = sg.match_mismatch(preds, envs, groups, candidates=cands, seed=1)
    assert out["n_windows"] == 2000
    assert abs(out["accuracy"] - 1 / cands) < tol
    assert out["accuracy"] == pytest.approx(np.mean(list(out["per_subject"].values())))
    again = sg.match_mismatch(preds, envs, groups, candidates=cands, seed=1)
    assert again == out


def test_match_mismatch_skips_and_counts_segments_without_imposters():
    rng = np.random.default_rng(9)
    long_, four_tiles, short = smooth_noise(rng, 10 * 320), smooth_noise(rng, 4 * 320 + 10), smooth_noise(rng, 200)
    out = sg.match_mismatch([long_, four_tiles, short], [long_, four_tiles, short], ["a", "b", "c"], candidates=5)
    assert out["n_windows"] == 10 and out["skipped"] == {"windows": 4, "segments": 2}
    assert list(out["per_subject"]) == ["a"]
    assert sg.match_mismatch([four_tiles], [four_tiles], ["b"], candidates=2)["n_windows"] == 4
    with pytest.raises(ValueError, match="no window could be scored"):
        sg.match_mismatch([short], [short], ["c"])


def test_figures_write_png_files(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: figures.py cannot draw")
    rng = np.random.default_rng(10)
    preds, envs, groups = segments(rng, subjects=4, per_subject=1, seconds=30, a=0.3)
    out = sg.null_scores(preds, envs, groups, n=100)
    ch = sg.chance(out["observed"]["total"], out["observed"]["per_subject"], out["total"], out["per_subject"], "m")
    path = figures.score_figure(tmp_path / "score.png", out["observed"]["per_subject"], out["observed"]["total"], ch,
                                [("best", preds[0], envs[0], FS), ("median", preds[1], envs[1], FS)])
    history = [{"epoch": str(i), "train_r": str(0.1 * i), "val_r": str(0.05 * i), "monitor_r": ""} for i in (1, 2, 3)]
    curves = figures.curves_figure(tmp_path / "curves.png", history)
    for p in (path, curves):
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "score.png"]  # no temp file left
    with pytest.raises(ValueError, match="no epochs"):
        figures.curves_figure(tmp_path / "empty.png", [])
