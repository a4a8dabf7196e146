"""compare.py: paired per-subject comparison of two results, on small synthetic score files."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import compare

SUBJECTS = [f"sub-{i:03d}" for i in range(1, 13)]


def write_score(folder, per_subject: dict, name: str = "score.json", **top) -> str:
    """A result folder as test.py writes it: score.json {model, seeds, checkpoints, ensemble, per_seed}, or
    eval_score.json {eval_dir, n_recordings, split, time_fold, window_s, hop_s, per_seed, ensemble}."""
    folder.mkdir(parents=True, exist_ok=True)
    total = float(np.mean(list(per_subject.values())))
    if name == "score.json":
        data = {"model": "ivlaai", "seeds": [1], "checkpoints": ["runs/ivlaai/seed-1/best.pt"],
                "ensemble": {"per_subject": per_subject, "total": total},
                "per_seed": {"seed-1": {"per_subject": per_subject, "total": total}}}
    else:
        data = {"eval_dir": "data/dtu", "n_recordings": 24, "split": "time", "time_fold": 0, "window_s": 5.0,
                "hop_s": 1.0, "per_seed": {"seed-1": {"r": total, "per_subject": per_subject}},
                "ensemble": {"r": total, "per_subject": per_subject, "window_r": total,
                             "window_per_subject": per_subject}}
    data.update(top)
    (folder / name).write_text(json.dumps(data))
    return str(folder)


def base_scores(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {s: float(v) for s, v in zip(SUBJECTS, rng.uniform(0.05, 0.3, len(SUBJECTS)), strict=True)}


def test_a_folder_compared_with_itself_differs_by_zero_with_p_1(tmp_path, capsys):
    a = write_score(tmp_path / "a", base_scores())
    res = compare.main([a, a])
    assert res["mean_diff"] == 0 and res["p_value"] == 1.0 and res["ci95"] == [0.0, 0.0]
    assert res["higher"] == 0 and res["equal"] == 12
    assert "A - B = +0.000 (95 % CI +0.000 to +0.000), p = 1, 0 of 12 subjects higher" in capsys.readouterr().out


def test_an_improvement_on_all_12_subjects_has_the_exact_two_sided_p(tmp_path, capsys):
    b_scores = base_scores()
    gain = np.linspace(0.01, 0.032, 12)  # every subject higher, by different amounts
    a_scores = {s: v + g for (s, v), g in zip(b_scores.items(), gain, strict=True)}
    res = compare.main([write_score(tmp_path / "a", a_scores), write_score(tmp_path / "b", b_scores),
                        f"--json={tmp_path / 'cmp.json'}"])
    assert res["p_value"] == 2 / 4096  # only the identity and the all-flipped pattern reach |mean|
    assert res["p_method"] == "exact, all 4096 sign flips"
    assert res["higher"] == 12 and res["mean_diff"] == pytest.approx(gain.mean())
    assert gain.min() <= res["ci95"][0] < gain.mean() < res["ci95"][1] <= gain.max()
    out = capsys.readouterr().out
    assert f"A - B = +{gain.mean():.3f} (95 % CI" in out and "p = 0.00049, 12 of 12 subjects higher" in out
    assert out.count("\n") >= 13  # the table: a header and a line per subject
    assert json.loads((tmp_path / "cmp.json").read_text()) == json.loads(json.dumps(res))


def test_b_minus_a_is_the_mirror_image(tmp_path):
    a, b = write_score(tmp_path / "a", base_scores(1)), write_score(tmp_path / "b", base_scores(2))
    ab, ba = compare.main([a, b]), compare.main([b, a])
    assert ab["mean_diff"] == pytest.approx(-ba["mean_diff"]) and ab["p_value"] == ba["p_value"]
    assert ab["higher"] == ba["lower"]


def test_sign_flip_p_matches_brute_force_enumeration():
    d = np.array([0.03, -0.01, 0.02, 0.005, -0.004, 0.012, 0.0])
    obs = abs(d.mean())
    brute = np.mean([abs(np.dot(s, d)) / len(d) >= obs - 1e-15 for s in itertools.product((-1, 1), repeat=len(d))])
    p, method = compare.sign_flip_p(d)
    assert p == pytest.approx(brute, abs=1e-15) and method.startswith("exact")


def test_monte_carlo_sign_flips_beyond_16_subjects_are_seeded_and_near_exact():
    rng = np.random.default_rng(3)
    d = rng.normal(0.01, 0.03, 17)
    patterns = 1 - 2 * ((np.arange(2 ** 17)[:, None] >> np.arange(17)) & 1)
    exact = np.mean(np.abs(patterns @ d) / 17 >= abs(d.mean()) - 1e-15)
    p1, method = compare.sign_flip_p(d, 20000, np.random.default_rng(0))
    p2, _ = compare.sign_flip_p(d, 20000, np.random.default_rng(0))
    assert method == "Monte Carlo, 20000 random sign flips" and p1 == p2
    assert abs(p1 - exact) < 4 * np.sqrt(exact * (1 - exact) / 20000) + 1e-4


def test_different_subjects_are_refused_naming_both_files(tmp_path):
    scores = base_scores()
    fewer = {s: v for s, v in scores.items() if s != "sub-007"}
    a, b = write_score(tmp_path / "a", scores), write_score(tmp_path / "b", fewer)
    with pytest.raises(SystemExit) as exc:
        compare.main([a, b])
    msg = str(exc.value)
    assert "\n" not in msg and f"{tmp_path / 'a' / 'score.json'}" in msg and f"{tmp_path / 'b' / 'score.json'}" in msg
    assert "different subjects" in msg and "only in A: sub-007; only in B: none" in msg


@pytest.mark.parametrize("key, value", [("n_recordings", 23), ("time_fold", 3), ("split", "whole")])
def test_different_segments_are_refused(tmp_path, key, value):
    scores = base_scores()
    a = write_score(tmp_path / "a", scores, "eval_score.json")
    b = write_score(tmp_path / "b", scores, "eval_score.json", **{key: value})
    with pytest.raises(SystemExit, match=rf"eval_score.json and .*eval_score.json scored different segments: {key}"):
        compare.main([a, b])


def test_different_per_segment_lists_are_refused(tmp_path):
    scores = base_scores()
    a_file, b_file = tmp_path / "a.json", tmp_path / "b.json"
    for path, segs in ((a_file, ["sub-001_1", "sub-001_2"]), (b_file, ["sub-001_1", "sub-001_3"])):
        path.write_text(json.dumps({"ensemble": {"per_subject": scores, "per_segment": {k: 0.1 for k in segs}}}))
    with pytest.raises(SystemExit, match=r"scored different segments: segments 2 vs 2 segments, differing: "
                                         r"sub-001_2, sub-001_3"):
        compare.main([str(a_file), str(b_file)])


def test_files_and_options(tmp_path):
    scores = base_scores()
    both = write_score(tmp_path / "both", scores)
    write_score(tmp_path / "both", scores, "eval_score.json")
    with pytest.raises(SystemExit, match="holds both score.json and eval_score.json; choose one with --file"):
        compare.main([both, both])
    assert compare.main([both, both, "--file=eval_score.json", "--metric=window_per_subject"])["p_value"] == 1.0
    test_kind = write_score(tmp_path / "t", scores)
    with pytest.raises(SystemExit, match="cannot compare an eval_dir score with a challenge test-set score"):
        compare.main([str(tmp_path / "both" / "eval_score.json"), test_kind])
    with pytest.raises(SystemExit, match="no such file or folder"):
        compare.main([test_kind, str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="usage: python compare.py A B"):
        compare.main([test_kind])
    with pytest.raises(SystemExit, match="unknown config key 'bogus'"):
        compare.main([test_kind, test_kind, "--bogus=1"])
    assert compare.main([test_kind, test_kind, "--entry=seed-1"])["entry"] == "seed-1"
    with pytest.raises(SystemExit, match=r"score.json: no 'per_seed.seed-9' score"):
        compare.main([test_kind, test_kind, "--entry=seed-9"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ensemble": {"per_subject": {"sub-001": "x"}}}))
    with pytest.raises(SystemExit, match=r"bad.json: ensemble.per_subject\['sub-001'\] is not a finite number"):
        compare.main([str(bad), str(bad)])


def test_bootstrap_is_seeded_and_a_constant_difference_has_a_point_interval():
    a = base_scores()
    b = {s: v - 0.02 for s, v in a.items()}
    r1, r2 = compare.paired(a, b, seed=5), compare.paired(a, b, seed=5)
    assert r1 == r2 and r1["ci95"] == pytest.approx([0.02, 0.02])
    c = base_scores(9)
    assert compare.paired(a, c, seed=1)["ci95"] != compare.paired(a, c, seed=2)["ci95"]
