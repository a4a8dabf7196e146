"""EEG_Dataset: readers, splits, standardization, windows; challenge.py: the test set's I/O and scoring."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from challenge import (
    read_challenge_folder,
    read_challenge_labels,
    read_predictions,
    read_test_set,
    score,
    write_predictions,
)
from EEG_Dataset import TIME_FOLDS, DataError, WindowDataset, detect_format, load_corpus, read_folder, time_split

DTU = Path(__file__).resolve().parents[2] / "shared" / "data" / "dtu"
needs_dtu = pytest.mark.skipif(not DTU.is_dir(), reason=f"real DTU EEG not present at {DTU}")

rng = np.random.default_rng(0)


def _rec(T=640, C=8, offset=0.0, scale=1.0, seed=0):
    r = np.random.default_rng(seed)
    eeg = (r.standard_normal((T, C)) * scale + offset).astype(np.float32)
    env = (r.standard_normal((T, 1)) * scale + offset).astype(np.float32)
    return eeg, env


def write_split_data(folder: Path, subjects=("sub-001", "sub-002"), stimuli=("audiobook_1", "podcast_2"), C=8,
                     T=1000):
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(subjects):
        for j, stim in enumerate(stimuli):
            eeg, env = _rec(T, C, offset=5.0 + i, scale=3.0, seed=10 * i + j)
            cuts = {"train": (0, 800), "val": (800, 900), "test": (900, 1000)}
            for split, (a, b) in cuts.items():
                np.save(folder / f"{split}_-_{s}_-_{stim}_-_eeg.npy", eeg[a:b])
                np.save(folder / f"{split}_-_{s}_-_{stim}_-_envelope.npy", env[a:b])
    return folder


def write_npz(folder: Path, n_subj=2, n_trials=3, C=8, T=640):
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(1, n_subj + 1):
        for t in range(n_trials):
            eeg, env = _rec(T, C, offset=2.0, scale=4.0, seed=100 * s + t)
            np.savez(folder / f"DTU_S{s}_{t:03d}.npz", eeg=eeg, envelope=env)
    return folder


def write_challenge(folder: Path, label_dir: Path, subjects=("sub-001", "sub-003"), C=8, T=384, n_seg=2):
    folder.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for s in subjects:
        segs, labs = {}, {}
        for k in range(n_seg):
            eeg, env = _rec(T, C, seed=hash((s, k)) % 1000)
            segs[f"{s}_{k}"] = eeg.tolist()
            labs[f"{s}_{k}"] = [env.tolist(), f"audiobook_{k}"]
        (folder / f"{s}.json").write_text(json.dumps(segs))
        (label_dir / f"{s}.json").write_text(json.dumps(labs))


# ----------------------------------------------------------------------------- readers


def test_split_data_reader_memmaps_and_keeps_split(tmp_path):
    d = write_split_data(tmp_path / "split_data")
    assert detect_format(d) == "split_data"
    fmt, recs = read_folder(d)
    assert fmt == "split_data" and len(recs) == 2 * 2 * 3
    r = recs[0]
    assert r.eeg.dtype == np.float32 and r.eeg.shape[1] == 8 and r.envelope.shape[1] == 1 and r.fs == 64
    assert isinstance(r.eeg, np.memmap)
    assert {x.split for x in recs} == {"train", "val", "test"}
    c = load_corpus(d)
    assert len(c.recordings) == 4 and c.subjects == ["sub-001", "sub-002"]
    assert [c.recordings[0].length(p) for p in ("train", "val", "test")] == [800, 100, 100]


def test_parent_folder_with_split_data_is_read_through(tmp_path):
    write_split_data(tmp_path / "xf" / "split_data")
    assert load_corpus(tmp_path / "xf").fmt == "split_data"


def test_npz_reader_subject_from_name_and_time_split(tmp_path):
    d = write_npz(tmp_path / "npz")
    fmt, recs = read_folder(d)
    assert fmt == "npz" and {r.subject for r in recs} == {"S1", "S2"}
    assert recs[0].rec_id == "DTU_S1_000" and recs[0].eeg.shape == (640, 8)
    c = load_corpus(d)
    r = c.recordings[0]
    assert [r.length(p) for p in ("train", "val", "test")] == [512, 64, 64]
    # the parts are the first 80 %, next 10 %, last 10 % in time
    eeg = np.load(d / "DTU_S1_000.npz")["eeg"]
    np.testing.assert_array_equal(r.parts["val"][0], eeg[512:576])


@pytest.mark.parametrize("n", [640, 3200, 1001, 37])
def test_time_folds_partition_each_recording_and_test_every_sample_once(n):
    tested = np.zeros(n, int)
    for k in range(TIME_FOLDS):
        parts = time_split(n, k)
        # the parts tile [0, n) in order, with one val and one test stretch
        assert parts[0][1] == 0 and parts[-1][2] == n
        assert all(a[2] == b[1] for a, b in itertools.pairwise(parts))
        roles = [p for p, _, _ in parts]
        assert roles.count("val") == 1 and roles.count("test") == 1 and set(roles) <= {"train", "val", "test"}
        (_, lo, hi), = [p for p in parts if p[0] == "test"]
        (_, vlo, vhi), = [p for p in parts if p[0] == "val"]
        assert vhi == lo or (k == TIME_FOLDS - 1 and lo == 0 and vhi == n)  # val is the tenth before test
        assert abs((hi - lo) - n / TIME_FOLDS) <= 1
        tested[lo:hi] += 1
    assert (tested == 1).all()
    assert time_split(n, 0) == [("train", 0, round(0.8 * n)), ("val", round(0.8 * n), round(0.9 * n)),
                                ("test", round(0.9 * n), n)]


def test_time_fold_splits_train_around_the_test_tenth(tmp_path):
    d = write_npz(tmp_path / "npz", n_subj=1, n_trials=2, T=640)
    eeg = np.load(d / "DTU_S1_000.npz")["eeg"]
    c = load_corpus(d, time_fold=3)  # test 384-448, val 320-384, train 0-320 and 448-640
    main, piece = [r for r in c.recordings if r.rec_id.startswith("DTU_S1_000")]
    assert main.rec_id == "DTU_S1_000" and piece.rec_id == "DTU_S1_000@448" and piece.piece_of == main.rec_id
    assert main.piece_of is None
    np.testing.assert_array_equal(main.parts["test"][0], eeg[384:448])
    np.testing.assert_array_equal(main.parts["val"][0], eeg[320:384])
    assert main.length("train") == 320 and piece.length("train") == 192 and set(piece.parts) == {"train"}
    # one set of statistics, from both train pieces together
    train = np.concatenate([eeg[:320], eeg[448:]])
    for r in (main, piece):
        np.testing.assert_allclose(r.eeg_mean, train.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.eeg_std, train.std(0), rtol=1e-5)
    # training windows never reach into val or test: every train sample once, nothing else
    ds = WindowDataset(c.with_part("train"), 100, seed=1)
    cover = ds.coverage()
    assert all((v == 1).all() for v in cover.values())
    assert sum(len(v) for v in cover.values()) == 2 * 512
    # fold 0 is the plain split, bit for bit
    a, b = load_corpus(d).recordings[0], load_corpus(d, time_fold=0).recordings[0]
    assert len(load_corpus(d).recordings) == 2 and np.array_equal(a.eeg_std, b.eeg_std)


def test_time_fold_bad_uses_are_named(tmp_path):
    d = write_npz(tmp_path / "npz", n_subj=1, n_trials=1)
    with pytest.raises(ValueError, match="time_fold must be in 0..9"):
        load_corpus(d, time_fold=10)
    with pytest.raises(ValueError, match="needs split='time'"):
        load_corpus(d, time_fold=2, split="whole")
    sd = write_split_data(tmp_path / "split_data")
    with pytest.raises(DataError, match=r"_-_eeg\.npy: split_data files fix their own"):
        load_corpus(sd, time_fold=1)


def test_challenge_reader_with_labels(tmp_path):
    write_challenge(tmp_path / "test", tmp_path / "labels")
    assert detect_format(tmp_path / "test") == "challenge"
    recs = read_challenge_folder(tmp_path / "test", tmp_path / "labels")
    assert len(recs) == 4 and recs[0].subject == "sub-001" and recs[0].rec_id == "sub-001_0"
    assert recs[0].eeg.shape == (384, 8) and recs[0].envelope.shape == (384, 1)
    assert read_challenge_folder(tmp_path / "test")[0].envelope is None
    ts = read_test_set(tmp_path / "test")
    assert set(ts) == {"sub-001", "sub-003"} and ts["sub-003"]["sub-003_1"].shape == (384, 8)
    labs = read_challenge_labels(tmp_path / "labels")
    assert labs["sub-001_1"].shape == (384,)


@needs_dtu
def test_reads_real_dtu():
    c = load_corpus(DTU)
    assert c.fmt == "npz" and c.n_chans == 64 and len(c.subjects) == 12 and len(c.recordings) == 120
    assert c.subjects[:3] == ["S1", "S2", "S3"]
    assert c.n_samples("train") == 120 * 2560 and c.n_samples("val") == 120 * 320
    eeg, env = c.recordings[0].get("train")
    np.testing.assert_allclose(eeg.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(eeg.std(0), 1, atol=1e-3)
    assert abs(env.std() - 1) < 1e-3


@needs_dtu
def test_dtu_protocol_selection():
    c = load_corpus(DTU, exclude_subjects=["S10", "S11", "S12"], val_recordings=["*_007"],
                    test_recordings=["*_008", "*_009"], split="whole")
    assert len(c.subjects) == 9
    parts = {(r.rec_id[-3:], p) for r in c.recordings for p in r.parts}
    assert ("007", "val") in parts and ("008", "test") in parts and ("000", "train") in parts
    assert c.n_samples("train") == 9 * 7 * 3200


# ----------------------------------------------------------------------------- bad input


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"junk.*no recognizable EEG data.*readme.txt"):
        load_corpus(tmp_path / "junk")


def test_mixed_channel_counts_named(tmp_path):
    d = write_npz(tmp_path / "npz")
    eeg, env = _rec(640, 7)
    np.savez(d / "DTU_S9_000.npz", eeg=eeg, envelope=env)
    with pytest.raises(DataError, match=r"DTU_S9_000.npz.*7 channels.*8"):
        load_corpus(d)
    with pytest.raises(DataError, match=r"DTU_S1_000.npz.*8 channels.*expected 64"):
        load_corpus(write_npz(tmp_path / "npz2"), n_chans=64)


def test_length_mismatch(tmp_path):
    d = tmp_path / "npz"
    d.mkdir()
    eeg, env = _rec(640, 8)
    np.savez(d / "DTU_S1_000.npz", eeg=eeg, envelope=env[:637])  # within tolerance: trimmed
    assert read_folder(d)[1][0].eeg.shape[0] == 637
    np.savez(d / "DTU_S1_000.npz", eeg=eeg, envelope=env[:600])
    with pytest.raises(DataError, match=r"DTU_S1_000.npz.*640 samples.*600"):
        read_folder(d)
    s = write_split_data(tmp_path / "sd")
    np.save(s / "train_-_sub-001_-_audiobook_1_-_envelope.npy", np.zeros((700, 1), np.float32))
    with pytest.raises(DataError, match=r"train_-_sub-001_-_audiobook_1_-_eeg.npy.*envelope.npy"):
        read_folder(s)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_named(tmp_path, bad):
    d = write_npz(tmp_path / "npz")
    z = dict(np.load(d / "DTU_S2_001.npz"))
    z["eeg"][100, 3] = bad
    np.savez(d / "DTU_S2_001.npz", **z)
    with pytest.raises(DataError, match=r"DTU_S2_001.npz.*NaN or Inf.*sample 100.*channel 3"):
        load_corpus(d)
    s = write_split_data(tmp_path / "sd")
    env = np.load(s / "val_-_sub-002_-_podcast_2_-_envelope.npy")
    env[5] = bad
    np.save(s / "val_-_sub-002_-_podcast_2_-_envelope.npy", env)
    with pytest.raises(DataError, match=r"val_-_sub-002_-_podcast_2_-_envelope.npy.*NaN or Inf"):
        load_corpus(s)


def test_wrong_shapes_named(tmp_path):
    d = tmp_path / "npz"
    d.mkdir()
    eeg, env = _rec(640, 8)
    np.savez(d / "DTU_S1_000.npz", eeg=eeg.T, envelope=env)
    with pytest.raises(DataError, match=r"DTU_S1_000.npz.*channels-first"):
        read_folder(d)
    np.savez(d / "DTU_S1_000.npz", eeg=eeg, envelope=np.zeros((640, 2)))
    with pytest.raises(DataError, match=r"DTU_S1_000.npz.*envelope must be"):
        read_folder(d)
    np.savez(d / "DTU_S1_000.npz", eeg=eeg)
    with pytest.raises(DataError, match=r"DTU_S1_000.npz.*missing key.*envelope"):
        read_folder(d)


def test_malformed_challenge_json_named(tmp_path):
    write_challenge(tmp_path / "test", tmp_path / "labels")
    (tmp_path / "test" / "sub-003.json").write_text('{"sub-003_0": [[1, 2], [3')
    with pytest.raises(DataError, match=r"sub-003.json.*malformed JSON"):
        read_test_set(tmp_path / "test")
    (tmp_path / "test" / "sub-003.json").write_text('{"sub-003_0": [[1, 2], [3]]}')
    with pytest.raises(DataError, match=r"sub-003.json.*segment 'sub-003_0'"):
        read_test_set(tmp_path / "test")
    (tmp_path / "test" / "sub-003.json").write_text(json.dumps({"sub-003_0": np.ones((100, 7)).tolist()}))
    with pytest.raises(DataError, match=r"sub-003.json.*7 EEG channels.*expects 8"):
        read_test_set(tmp_path / "test", n_chans=8)
    (tmp_path / "labels" / "sub-001.json").write_text("not json")
    with pytest.raises(DataError, match=r"labels.sub-001.json.*malformed JSON"):
        read_challenge_labels(tmp_path / "labels")


# ----------------------------------------------------------------------------- standardization


def test_standardization_uses_train_statistics_only(tmp_path):
    """Val and test parts get very different statistics; they must not leak into the scaling."""
    d = tmp_path / "npz"
    d.mkdir()
    T, C = 1000, 4
    eeg = np.random.default_rng(1).standard_normal((T, C)).astype(np.float32) * 2 + 3
    env = np.random.default_rng(2).standard_normal((T, 1)).astype(np.float32) * 5 - 1
    eeg[800:] = eeg[800:] * 50 + 1000  # val and test: wildly different
    env[800:] = env[800:] * 50 + 1000
    np.savez(d / "X_S1_000.npz", eeg=eeg, envelope=env)
    rec = load_corpus(d).recordings[0]
    tr_eeg, tr_env = rec.get("train")
    np.testing.assert_allclose(tr_eeg.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(tr_eeg.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(tr_env.std(), 1, atol=1e-5)
    np.testing.assert_allclose(rec.eeg_mean, eeg[:800].mean(0), rtol=1e-5)
    np.testing.assert_allclose(rec.eeg_std, eeg[:800].std(0), rtol=1e-5)
    va_eeg, va_env = rec.get("val")
    expected = (eeg[800:900] - eeg[:800].mean(0)) / eeg[:800].std(0)
    np.testing.assert_allclose(va_eeg, expected, rtol=1e-4)
    assert va_eeg.mean() > 100  # standardized by train stats, so the shift stays visible


def test_split_data_standardized_even_if_files_are_raw(tmp_path):
    d = write_split_data(tmp_path / "sd")  # raw files with offset 5-6 and scale 3
    rec = load_corpus(d).recordings[0]
    eeg, env = rec.get("train")
    np.testing.assert_allclose(eeg.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(eeg.std(0), 1, atol=1e-5)
    raw_train = np.load(d / "train_-_sub-001_-_audiobook_1_-_eeg.npy")
    np.testing.assert_allclose(rec.eeg_mean, raw_train.mean(0), rtol=1e-5)


# ----------------------------------------------------------------------------- windows


@pytest.mark.parametrize("window", [64, 100, 320, 2000])
def test_windows_cover_every_train_sample_once(tmp_path, window):
    c = load_corpus(write_npz(tmp_path / "npz", T=700))  # train part 560, not a multiple of most windows
    ds = WindowDataset(c.recordings, window, seed=3)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for counts in ds.coverage().values():
            assert (counts == 1).all()
        # the masks of the items agree with the coverage: total valid == total train samples
        total = sum(float(ds[i]["mask"].sum()) for i in range(len(ds)))
        assert total == c.n_samples("train")
    item = ds[0]
    assert item["eeg"].shape == (window, 8) and item["envelope"].shape == (window, 1)


def test_window_items_are_slices_of_the_standardized_recording(tmp_path):
    c = load_corpus(write_npz(tmp_path / "npz"))
    ds = WindowDataset(c.recordings, 100, seed=0, shuffle=False)
    r, start, lo, hi = ds.index[1]
    eeg, env = c.recordings[r].get("train")
    np.testing.assert_allclose(ds[1]["eeg"].numpy(), eeg[start:start + 100])
    np.testing.assert_allclose(ds[1]["envelope"].numpy(), env[start:start + 100])


def test_window_order_seeded(tmp_path):
    c = load_corpus(write_npz(tmp_path / "npz"))
    a = WindowDataset(c.recordings, 100, seed=7)
    b = WindowDataset(c.recordings, 100, seed=7)
    other = WindowDataset(c.recordings, 100, seed=8)
    for e in (0, 1):
        a.set_epoch(e), b.set_epoch(e), other.set_epoch(e)
        np.testing.assert_array_equal(a.index, b.index)
        assert not np.array_equal(a.index, other.index)
    a.set_epoch(0)
    e0 = a.index.copy()
    a.set_epoch(1)
    assert not np.array_equal(e0, a.index)  # a new offset and order every epoch


def test_shards_are_disjoint_and_complete(tmp_path):
    c = load_corpus(write_npz(tmp_path / "npz"))
    full = WindowDataset(c.recordings, 100, seed=1)
    shards = [WindowDataset(c.recordings, 100, seed=1, rank=k, world_size=2) for k in range(2)]
    rows = lambda ix: {tuple(r) for r in ix if r[3] > r[2]}  # noqa: E731  (padding rows weigh nothing)
    assert rows(shards[0].index) & rows(shards[1].index) == set()
    assert rows(shards[0].index) | rows(shards[1].index) == rows(full.index)
    assert len(shards[0]) == len(shards[1])  # equal steps per rank, padded with fully masked windows
    assert len(shards[0]) + len(shards[1]) - len(full) in (0, 1)


def fixed_windows(rec, part: str, window: int, hop: int | None = None):
    """Standardized fixed windows of one part: list of (eeg (window, C), env (window, 1)).

    hop defaults to ``window`` (no overlap); parts shorter than a window give one short window.
    """
    eeg, env = rec.get(part)
    hop = hop or window
    if len(eeg) <= window:
        return [(eeg, env)]
    return [(eeg[s : s + window], env[s : s + window]) for s in range(0, len(eeg) - window + 1, hop)]


def test_fixed_windows(tmp_path):
    c = load_corpus(write_npz(tmp_path / "npz"))
    w = fixed_windows(c.recordings[0], "train", 128, hop=64)
    assert len(w) == (512 - 128) // 64 + 1 and w[0][0].shape == (128, 8)


@needs_dtu
def test_dtu_windows_every_sample_once():
    c = load_corpus(DTU)
    ds = WindowDataset(c.recordings, 320, seed=1)
    assert all((v == 1).all() for v in ds.coverage().values())


# ----------------------------------------------------------------------------- scoring


def test_score_worked_example():
    """Two subjects; a missing segment scores 0; padding and truncation as the official rules."""
    lab = {"sub-001_0": np.array([1.0, 2, 3, 4]), "sub-001_1": np.array([1.0, 0, 1, 0]),
           "sub-002_0": np.array([0.0, 1, 0, 2])}
    pred = {
        "sub-001_0": np.array([1.0, 2, 3, 4, 99, 99]),  # truncated to 4 -> r = 1
        # sub-001_1 missing -> 0
        "sub-002_0": np.array([0.0, 1]),  # zero-padded to [0, 1, 0, 0] -> r with [0, 1, 0, 2]
    }
    s = score(pred, lab)
    r2 = scipy.stats.pearsonr([0, 1, 0, 0], [0, 1, 0, 2])[0]
    assert s["per_subject"]["sub-001"] == pytest.approx(0.5)
    assert s["per_subject"]["sub-002"] == pytest.approx(r2)
    assert s["total"] == pytest.approx((0.5 + r2) / 2)
    g = score(pred, lab, seen_subjects=["sub-001"])
    assert g["seen"] == pytest.approx(0.5) and g["heldout"] == pytest.approx(r2)
    assert g["total"] == pytest.approx(2 / 3 * 0.5 + 1 / 3 * r2)


def test_score_matches_scipy_and_files_roundtrip(tmp_path):
    write_challenge(tmp_path / "test", tmp_path / "labels", n_seg=3)
    labels = read_challenge_labels(tmp_path / "labels")
    r = np.random.default_rng(5)
    preds = {"sub-001": {}, "sub-003": {}}
    for k, lab in labels.items():
        preds[k.rsplit("_", 1)[0]][k] = lab + r.standard_normal(lab.shape) * 2
    write_predictions(tmp_path / "out", preds)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sub-001.json", "sub-003.json"]
    assert list(json.loads((tmp_path / "out" / "sub-001.json").read_text())) == ["sub-001_0", "sub-001_1", "sub-001_2"]
    s = score(tmp_path / "out", tmp_path / "labels")
    merged = read_predictions(tmp_path / "out")
    for subj in ("sub-001", "sub-003"):
        ref = np.mean([scipy.stats.pearsonr(merged[f"{subj}_{k}"], labels[f"{subj}_{k}"])[0] for k in range(3)])
        assert s["per_subject"][subj] == pytest.approx(ref, abs=1e-10)
    assert s["total"] == pytest.approx(np.mean(list(s["per_subject"].values())))


def test_score_constant_prediction_is_zero():
    s = score({"sub-001_0": np.ones(10)}, {"sub-001_0": np.arange(10.0)})
    assert s["total"] == 0.0
