"""Tests of the synthetic demo corpus (demo_corpus.py) and its reference figures (demo_reference.py).
Fast: small corpora only."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import welch

import demo_corpus as dc
import demo_reference
from outputs import lock_holder_of

FILE_RE = re.compile(r"^(train|val|test)_-_(sub-\d{3})_-_((?:audiobook|podcast)_\d+)_-_(eeg|envelope)\.npy$")
SMALL = dict(n_subjects=3, n_heldout=2, minutes=1.0, n_test_segments=2, segment_s=60.0)


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 seen + 2 held-out subjects, 3 minutes each in 2 recordings, 2 x 60 s test segments."""
    out = tmp_path_factory.mktemp("demo") / "xfdata"
    summary = dc.make_demo_corpus(out, n_subjects=3, n_heldout=2, minutes=3.0, n_test_segments=2, seed=3)
    return out, summary, None


# ---------------------------------------------------------------------------------------------
def test_deterministic_by_seed(tmp_path):
    kw = dict(n_subjects=2, n_heldout=1, minutes=1.0, n_test_segments=1, segment_s=20.0)
    dc.make_demo_corpus(tmp_path / "a", seed=5, **kw)
    dc.make_demo_corpus(tmp_path / "b", seed=5, **kw)
    dc.make_demo_corpus(tmp_path / "c", seed=6, **kw)
    a, b, c = (_all_files(tmp_path / k) for k in "abc")
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        assert a[name] == b[name], f"{name} differs between two runs with the same seed"
    # another seed: every data file differs (names may differ too, as stimuli are drawn by seed)
    eeg_a = [v for k, v in a.items() if k.endswith("_eeg.npy")]
    eeg_c = [v for k, v in c.items() if k.endswith("_eeg.npy")]
    assert not set(eeg_a) & set(eeg_c)
    assert a["auditory-eeg-test-dataset/sub-001.json"] != c["auditory-eeg-test-dataset/sub-001.json"]
    # the build's lock file stays (deleting a lock file races with the next locker), released
    assert a.pop(".lock") == b"" and lock_holder_of(tmp_path / "a" / ".lock") is None
    assert not [k for k in a if ".tmp" in k or Path(k).name.startswith(".")], "temporary files left behind"


def test_split_data_layout(corpus):
    out, summary, _ = corpus
    info = json.loads((out / "demo_info.json").read_text())
    files = sorted(p.name for p in (out / "split_data").iterdir())
    assert all(FILE_RE.match(f) for f in files), [f for f in files if not FILE_RE.match(f)]
    recs = {}
    for f in files:
        split, subj, stim, feat = FILE_RE.match(f).groups()
        recs.setdefault((subj, stim), {})[(split, feat)] = out / "split_data" / f
    # training subjects only, each with its planned recordings, each with 3 splits x 2 features
    assert {s for s, _ in recs} == {"sub-001", "sub-002", "sub-003"}
    assert summary["n_recordings"] == len(recs) == 3 * 2
    for (subj, stim), parts in recs.items():
        assert len(parts) == 6, (subj, stim)
        lens = {}
        for split in ("train", "val", "test"):
            eeg = np.load(parts[(split, "eeg")])
            env = np.load(parts[(split, "envelope")])
            assert eeg.dtype == np.float32 and env.dtype == np.float32
            assert eeg.ndim == 2 and eeg.shape[1] == 64 and env.shape == (eeg.shape[0], 1)
            assert np.isfinite(eeg).all() and (env >= 0).all()
            lens[split] = len(eeg)
        total = sum(lens.values())
        planned = {r["stimulus"]: r["samples"] for r in info["recordings"][subj]}
        assert total == planned[stim]
        assert 60 * 64 <= total <= 2 * 60 * 64 + 64  # ~1-2 minutes per recording
        assert lens["train"] == int(0.8 * total) and lens["val"] == int(0.9 * total) - int(0.8 * total)
    # per subject: recordings total `minutes`
    for subj in ("sub-001", "sub-002", "sub-003"):
        assert sum(r["samples"] for r in info["recordings"][subj]) == 3 * 60 * 64
    # saved NOT standardized: microvolt-like scale, per-channel offsets
    eeg = np.load(next(p for (s, _), v in recs.items() for k, p in v.items() if k == ("train", "eeg")))
    assert np.abs(eeg.mean(axis=0)).max() > 3.0
    assert not np.allclose(eeg.std(axis=0), 1.0, atol=0.2)


def test_challenge_test_set_and_labels(corpus):
    out, summary, _ = corpus
    info = json.loads((out / "demo_info.json").read_text())
    seen, held = info["seen_subjects"], info["heldout_subjects"]
    assert seen == ["sub-001", "sub-002", "sub-003"] and held == ["sub-004", "sub-005"]
    train_stims = {FILE_RE.match(p.name).group(3) for p in (out / "split_data").iterdir()}
    assert sorted(p.name for p in (out / "auditory-eeg-test-dataset").iterdir()) == [f"{s}.json" for s in seen + held]
    assert sorted(p.name for p in (out / "test_labels").iterdir()) == [f"{s}.json" for s in seen + held]
    for subj in seen + held:
        segs = json.loads((out / "auditory-eeg-test-dataset" / f"{subj}.json").read_text())
        labels = json.loads((out / "test_labels" / f"{subj}.json").read_text())
        assert list(segs) == [f"{subj}_0", f"{subj}_1"] and list(labels) == list(segs)
        for key, rows in segs.items():
            assert isinstance(rows, list) and len(rows) == 3840
            assert all(isinstance(r, list) and len(r) == 64 for r in rows)
            eeg = np.asarray(rows, dtype=np.float64)
            assert eeg.shape == (3840, 64) and np.isfinite(eeg).all()
            assert np.abs(eeg.mean(axis=0)).max() > 3.0  # not standardized
            lab = labels[key]
            assert isinstance(lab, list) and len(lab) == 2 and isinstance(lab[1], str)
            env = np.asarray(lab[0], dtype=np.float64)
            assert env.shape == (3840, 1) and (env >= 0).all() and env.std() > 0
            assert all(isinstance(v, list) and len(v) == 1 for v in lab[0][:50])
            assert lab[1] not in train_stims  # test stimuli are new
            assert info["test_segments"][subj][key] == lab[1]
    # same test stimulus -> same label for every subject that heard it
    by_stim = {}
    for subj in seen + held:
        for env, stim in json.loads((out / "test_labels" / f"{subj}.json").read_text()).values():
            by_stim.setdefault(stim, []).append(env)
    for envs in by_stim.values():
        assert all(e == envs[0] for e in envs)


def test_demo_info(corpus):
    out, summary, _ = corpus
    info = json.loads((out / "demo_info.json").read_text())
    p = info["parameters"]
    assert (p["n_subjects"], p["n_heldout"], p["minutes"], p["seed"], p["fs"], p["n_chans"]) == (3, 2, 3.0, 3, 64, 64)
    lin = info["reference_figures"]["linear"]
    assert summary["linear_r"] == lin["total"]
    assert set(lin["per_subject"]) == {"sub-001", "sub-002", "sub-003", "sub-004", "sub-005"}
    assert summary["n_test_segments"] == 10 and summary["bytes"] > 0
    assert len(info["channel_positions_xyz"]) == 64


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        dc.make_demo_corpus(out, **SMALL)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # overwrite=True: writes, keeps unrelated files, and removes stale files of an older demo corpus
    dc.make_demo_corpus(out, overwrite=True, measure=False, **{**SMALL, "n_subjects": 4, "n_heldout": 1})
    assert (out / "test_labels" / "sub-005.json").exists()
    dc.make_demo_corpus(out, overwrite=True, measure=False, **SMALL)
    assert (out / "notes.txt").read_text() == "mine"
    assert not list((out / "split_data").glob("*_-_sub-004_-_*"))  # sub-004 is held out now
    assert sorted(p.name for p in (out / "test_labels").iterdir()) == [f"sub-00{i}.json" for i in range(1, 6)]
    with pytest.raises(FileExistsError):
        dc.make_demo_corpus(out, **SMALL)
    # the CLI reports the refusal as an error exit
    assert dc.main([f"--demo_dir={out}", "--demo_subjects=2"]) == 2


def test_cli_reads_the_demo_config_keys(monkeypatch):
    got = {}
    monkeypatch.setattr(dc, "make_demo_corpus", lambda **kw: got.update(kw) or {"reference_figures": {}})
    assert dc.main(["--demo_dir=some dir", "--demo_subjects=3", "--demo_minutes=1.5", "--demo_seed=4",
                    "--overwrite"]) == 0
    assert got == {"out_dir": "some dir", "n_subjects": 3, "minutes": 1.5, "seed": 4, "overwrite": True}
    got.clear()
    assert dc.main([]) == 0
    assert got == {"out_dir": "xfdata", "n_subjects": 8, "minutes": 1.0, "seed": 0, "overwrite": False}
    with pytest.raises(SystemExit, match="unknown config key 'n_subjects'"):
        dc.main(["--n_subjects=3"])
    with pytest.raises(SystemExit):
        dc.main(["demo_subjects=3"])


def test_cli_writes_corpus(tmp_path, capsys):
    args = [f"--demo_dir={tmp_path / 'x'}", "--demo_subjects=1", "--demo_minutes=0.5"]
    assert dc.main(args) == 0
    assert '"n_subjects": 1' in capsys.readouterr().out
    seg = json.loads((tmp_path / "x" / "auditory-eeg-test-dataset" / "sub-001.json").read_text())
    assert len(seg["sub-001_0"]) == 3840
    assert dc.main(args) == 2  # a second build is refused ...
    assert dc.main([*args, "--overwrite"]) == 0  # ... unless it may replace the first


# ---------------------------------------------------------------------------------------------
def test_envelope_is_speech_like():
    fs = 64
    env, level = dc.stimulus_envelope(0, "audiobook_1", 5 * 60 * fs, fs)
    assert env.shape == (5 * 60 * fs,) and (env >= 0).all()
    f, p = welch(env - env.mean(), fs=fs, nperseg=512)
    band = lambda lo, hi: p[(f >= lo) & (f < hi)].sum()  # noqa: E731
    total = band(0.25, 32.0)
    syll = band(2.0, 8.0)
    assert syll / total > 0.5, syll / total
    assert syll > band(0.25, 2.0) and syll > band(8.0, 32.0)
    # pauses: runs of >= 0.2 s below 10 % of the loud level, several per minute, none absurdly long
    quiet = env < 0.1 * np.percentile(env, 95)
    edges = np.flatnonzero(np.diff(np.r_[0, quiet.astype(int), 0]))
    runs = (edges[1::2] - edges[::2]) / fs
    pauses = runs[runs >= 0.2]
    assert len(pauses) >= 5 * 5, len(pauses)  # >= 5 per minute
    assert runs.max() < 3.0
    # different stimuli -> different envelopes
    other, _ = dc.stimulus_envelope(0, "podcast_1", 5 * 60 * fs, fs)
    assert abs(np.corrcoef(env, other)[0, 1]) < 0.2


def test_eeg_lags_envelope():
    """The noise-free response follows the envelope by ~50-200 ms (P1-N1-P2), never precedes it."""
    fs = 64
    m = dc.subject_model(0, 0)
    env, level = dc.stimulus_envelope(0, "audiobook_1", 60 * fs, fs)
    eeg, parts = dc.subject_eeg(m, env, level, dc.random_stream(0, "t"), return_parts=True)
    assert eeg.shape == (60 * fs, 64)
    e = env / level - (env / level).mean()
    xc = [np.dot(e[: len(e) - k], parts["neural"][k:]) for k in range(0, 26)]
    peak = int(np.argmax(np.abs(xc)))
    assert 0.05 <= peak / fs <= 0.25
    trf = m["trf"]
    assert trf[int(0.1 * fs)] < 0 < trf[int(0.18 * fs)]  # N1 negative, P2 positive


def test_small_corpus_is_decodable(tmp_path):
    s = dc.make_demo_corpus(tmp_path / "small", seed=1, **SMALL)
    lin = s["reference_figures"]["linear"]
    assert 0.05 < lin["total"] < 0.5, lin
    assert lin["mean"] > 3 * lin["chance_sd"] / np.sqrt(len(lin["per_subject"]) * 2)
    # the same figure from the files on disk (independent reader)
    disk = demo_reference.linear_reference_r(tmp_path / "small")
    assert abs(disk["total"] - lin["total"]) < 0.01
    # the model's ceiling (subject-specific ridge on more data) runs and is in a sane range
    ceil = demo_reference.model_ceiling_r(tmp_path / "small", factor=2)
    assert 0.0 < ceil["total"] < 0.8
