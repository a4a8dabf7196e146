"""SparrKULee as downloaded (derivatives layout), read by sparrkulee.py through EEG_Dataset: detection,
reading, cutting, splitting, standardization, lazy float64 -> float32 EEG, and the errors that name the file.

The real sample (2 listeners x ~2 min) lives outside the repository, in
../shared/data/sparrkulee_sample; it is read in place. The other tests build folders of the same
layout in tmp_path.
"""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from EEG_Dataset import FS, DataError, WindowDataset, detect_format, load_corpus, read_folder, time_split
from sparrkulee import LazyEEG, read_sparrkulee

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "sparrkulee_sample"
needs_sample = pytest.mark.skipif(
    not (SAMPLE / "derivatives").is_dir(),
    reason=f"SparrKULee sample not present at {SAMPLE} (real EEG, kept outside the repository)")

SES = "ses-shortstories01"


def eeg_name(subject, stimulus, session=SES, run="01"):
    return f"{subject}_{session}_task-listeningActive_run-{run}_desc-preproc-audio-{stimulus}_eeg.npy"


def write_derivatives(root: Path, recs, envelopes, *, eeg_dir="preprocessed_eeg", stim_dir="preprocessed_stimuli",
                      env_suffix="_-_envelope.npy", seed=0):
    """SparrKULee-like derivatives under root/derivatives. recs: [(subject, session, run, stimulus,
    C, T)]; envelopes: {stimulus: T}. EEG float64 channels-first (C, T), envelopes float64 (T, 1).
    Returns ({file name: eeg (C, T)}, {stimulus: env (T, 1)})."""
    rng = np.random.default_rng(seed)
    deriv = root / "derivatives"
    eegs, envs = {}, {}
    for k, (subject, session, run, stimulus, C, T) in enumerate(recs):
        d = deriv / eeg_dir / subject / session
        d.mkdir(parents=True, exist_ok=True)
        eeg = rng.standard_normal((C, T)) * (10 + k) + rng.standard_normal((C, 1)) * 50  # float64, µV-like
        name = eeg_name(subject, stimulus, session, run)
        np.save(d / name, eeg)
        eegs[name] = eeg
    (deriv / stim_dir).mkdir(parents=True, exist_ok=True)
    for stimulus, T in envelopes.items():
        env = np.abs(rng.standard_normal((T, 1))) * 0.3 + 0.5
        np.save(deriv / stim_dir / f"{stimulus}{env_suffix}", env)
        envs[stimulus] = env
    return eegs, envs


def standard_folder(tmp_path, **kw):
    """Two listeners, two stimuli; EEG longer than the envelope for one, shorter for another."""
    recs = [("sub-001", SES, "01", "audiobook_1_1", 64, 2166),   # 166 longer than its envelope
            ("sub-001", SES, "02", "podcast_3", 64, 1500),       # 20 shorter than its envelope
            ("sub-002", SES, "01", "audiobook_1_1", 64, 2000)]   # same length
    return write_derivatives(tmp_path / "sparrkulee", recs, {"audiobook_1_1": 2000, "podcast_3": 1520}, **kw)


def f32_standardized(raw_tf: np.ndarray, lo: int, hi: int, train: tuple[int, int]):
    """What a part [lo, hi) should look like: float32 samples, standardized by the train part."""
    x = raw_tf.astype(np.float32)
    tr = x[train[0]:train[1]].astype(np.float64)
    m, s = tr.mean(0), tr.std(0)
    return (x[lo:hi] - m.astype(np.float32)) / s.astype(np.float32)


# ----------------------------------------------------------------------------- the real sample


@needs_sample
def test_real_sample_through_load_corpus():
    for folder in (SAMPLE, SAMPLE / "derivatives"):
        assert detect_format(folder) == "sparrkulee"
    c = load_corpus(SAMPLE)
    assert c.fmt == "sparrkulee" and c.n_chans == 64 and c.fs == FS
    assert c.subjects == ["sub-027", "sub-031"] and len(c.recordings) == 2
    assert [r.rec_id for r in c.recordings] == ["sub-027_-_ses-varyingStories01_-_audiobook_7_5",
                                                "sub-031_-_ses-varyingStories01_-_audiobook_7_5"]
    env_file = np.load(SAMPLE / "derivatives" / "stimuli" / "audiobook_7_5_-_envelope.npy")
    n = min(len(env_file), 7808)
    assert n == 7642  # EEG 166 samples longer: cut to the envelope
    for r in c.recordings:
        cuts = {p: (lo, hi) for p, lo, hi in time_split(n)}
        assert {p: r.length(p) for p in r.parts} == {p: hi - lo for p, (lo, hi) in cuts.items()}
        eeg_path = Path(r.parts["train"][2])
        assert eeg_path.name.startswith(r.subject)
        assert eeg_path.name.endswith("_desc-preproc-audio-audiobook_7_5_eeg.npy")
        # no float64 (or float32) copy of the EEG: every part is a lazy view of the file's memory map
        for eeg, _, _ in r.parts.values():
            assert isinstance(eeg, LazyEEG) and isinstance(eeg.base, np.memmap) and eeg.base.dtype == np.float64
            assert eeg.shape[1] == 64 and eeg.dtype == np.float32
        raw = np.load(eeg_path, mmap_mode="r")
        assert raw.shape == (64, 7808)
        for part, (lo, hi) in cuts.items():
            x, y = r.get(part)
            assert x.dtype == np.float32 and x.shape == (hi - lo, 64) and y.shape == (hi - lo, 1)
            np.testing.assert_allclose(x, f32_standardized(np.asarray(raw).T[:n], lo, hi, cuts["train"]),
                                       rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(y, f32_standardized(env_file[:n], lo, hi, cuts["train"]), rtol=1e-4, atol=1e-5)
        x, y = r.get("train")
        np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(x.std(0), 1, atol=1e-3)
    # the derivatives folder itself reads the same
    d = load_corpus(SAMPLE / "derivatives")
    assert [r.rec_id for r in d.recordings] == [r.rec_id for r in c.recordings]
    np.testing.assert_array_equal(d.recordings[1].get("test")[0], c.recordings[1].get("test")[0])


@needs_sample
def test_real_sample_windows():
    c = load_corpus(SAMPLE)
    ds = WindowDataset(c.with_part("train"), 5 * FS, seed=3, subject_index={"sub-027": 0, "sub-031": 1})
    assert all((v == 1).all() for v in ds.coverage().values())
    item = ds[0]
    assert item["eeg"].shape == (320, 64) and item["eeg"].dtype.is_floating_point and item["envelope"].shape == (320, 1)


@needs_sample
def test_train_py_reads_the_sample(tmp_path):
    """train.py end to end on the downloaded layout (closed-form linear model, one epoch)."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", f"--data_dir={SAMPLE}", "--epochs=1", "--model=linear", f"--run_dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "sparrkulee" in out and "2 subjects" in out, out[-2000:]
    assert list(run_dir.rglob("best.pt")), out[-2000:]


# ----------------------------------------------------------------------------- synthetic folders


def test_synthetic_layout_cut_split_and_standardized(tmp_path):
    eegs, envs = standard_folder(tmp_path)
    root = tmp_path / "sparrkulee"
    assert detect_format(root) == detect_format(root / "derivatives") == "sparrkulee"
    fmt, recs = read_folder(root)
    assert fmt == "sparrkulee" and len(recs) == 3
    by_id = {r.rec_id: r for r in recs}
    assert set(by_id) == {"sub-001_-_ses-shortstories01_-_audiobook_1_1", "sub-001_-_ses-shortstories01_-_podcast_3",
                          "sub-002_-_ses-shortstories01_-_audiobook_1_1"}
    lengths = {r.rec_id.split("_-_", 2)[2] + "/" + r.subject: len(r.eeg) for r in recs}
    # cut to the shorter of EEG and envelope, whatever the difference
    assert lengths == {"audiobook_1_1/sub-001": 2000, "podcast_3/sub-001": 1500, "audiobook_1_1/sub-002": 2000}
    for r in recs:
        assert len(r.envelope) == len(r.eeg) and r.envelope.dtype == np.float32 and r.split is None
        assert isinstance(r.eeg, LazyEEG) and r.eeg.base.dtype == np.float64 and r.eeg.shape[1] == 64
        assert r.subject in ("sub-001", "sub-002") and Path(r.path).name in eegs
    # one float32 envelope per stimulus, shared by its listeners
    a, b = by_id["sub-001_-_ses-shortstories01_-_audiobook_1_1"], by_id["sub-002_-_ses-shortstories01_-_audiobook_1_1"]
    assert np.shares_memory(a.envelope, b.envelope)

    c = load_corpus(root)
    assert c.fmt == "sparrkulee" and c.subjects == ["sub-001", "sub-002"] and c.n_chans == 64
    for r in c.recordings:
        raw = eegs[Path(r.parts["train"][2]).name].T           # (T, C) float64
        stim = r.rec_id.rsplit("_-_", 1)[1]
        n = min(len(raw), len(envs[stim]))
        cuts = {p: (lo, hi) for p, lo, hi in time_split(n)}
        assert [r.length(p) for p in ("train", "val", "test")] == [hi - lo for lo, hi in cuts.values()]
        assert r.stats_from == "train"
        for part, (lo, hi) in cuts.items():
            x, y = r.get(part)
            assert x.dtype == np.float32 and isinstance(r.parts[part][0], LazyEEG)
            np.testing.assert_allclose(x, f32_standardized(raw[:n], lo, hi, cuts["train"]), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(y, f32_standardized(envs[stim][:n], lo, hi, cuts["train"]), rtol=1e-4,
                                       atol=1e-5)
    # validation / test recordings chosen by pattern work on these ids
    c2 = load_corpus(root, test_recordings=["*podcast_3"])
    pod = [r for r in c2.recordings if r.rec_id.endswith("podcast_3")][0]
    assert set(pod.parts) == {"test"} and pod.length("test") == 1500


def test_other_folder_names_and_envelope_naming(tmp_path):
    """'eeg'/'stimuli' (brain_pipe's test data) and '<stimulus>_envelope.npy' are accepted too;
    1-D envelopes as well."""
    recs = [("sub-010", "ses-varyingStories01", "08", "audiobook_7_5", 64, 800)]
    eegs, envs = write_derivatives(tmp_path / "r", recs, {"audiobook_7_5": 790}, eeg_dir="eeg", stim_dir="stimuli",
                                   env_suffix="_envelope.npy")
    stim = tmp_path / "r" / "derivatives" / "stimuli" / "audiobook_7_5_envelope.npy"
    np.save(stim, np.load(stim)[:, 0])                                  # (T,)
    for folder in (tmp_path / "r", tmp_path / "r" / "derivatives"):
        c = load_corpus(folder)
        assert c.fmt == "sparrkulee" and c.recordings[0].rec_id == "sub-010_-_ses-varyingStories01_-_audiobook_7_5"
        assert sum(c.recordings[0].length(p) for p in ("train", "val", "test")) == 790


def test_same_stimulus_in_two_sessions_and_twice_in_one(tmp_path):
    recs = [("sub-001", "ses-a", "01", "audiobook_1", 64, 700), ("sub-001", "ses-b", "01", "audiobook_1", 64, 700),
            ("sub-001", "ses-b", "05", "audiobook_1", 64, 700)]
    write_derivatives(tmp_path / "r", recs, {"audiobook_1": 700})
    c = load_corpus(tmp_path / "r")
    ids = [r.rec_id for r in c.recordings]
    assert len(set(ids)) == 3 and len(c.recordings) == 3
    assert "sub-001_-_ses-a_-_audiobook_1" in ids and "sub-001_-_ses-b_-_audiobook_1" in ids
    assert "sub-001_-_ses-b_-_audiobook_1_-_run-05" in ids
    assert all(set(r.parts) == {"train", "val", "test"} for r in c.recordings)


def test_time_first_file_is_read_too(tmp_path):
    recs = [("sub-001", SES, "01", "a", 64, 640)]
    eegs, _ = write_derivatives(tmp_path / "r", recs, {"a": 640})
    (name, eeg), = eegs.items()
    path = next((tmp_path / "r").rglob(name))
    np.save(path, eeg.T.astype(np.float32))
    r = read_sparrkulee(tmp_path / "r")[0]
    assert r.eeg.shape == (640, 64) and not r.eeg.channels_first
    np.testing.assert_array_equal(np.asarray(r.eeg), eeg.T.astype(np.float32))


def test_split_data_subfolder_does_not_hide_the_derivatives(tmp_path):
    """A derivatives folder may also hold the challenge's split_data; pointed at, its own EEG is read."""
    standard_folder(tmp_path)
    deriv = tmp_path / "sparrkulee" / "derivatives"
    (deriv / "split_data").mkdir()
    assert load_corpus(deriv).fmt == "sparrkulee"


# ----------------------------------------------------------------------------- errors name the file


def test_missing_envelope_named(tmp_path):
    recs = [("sub-001", SES, "01", "audiobook_1", 64, 700), ("sub-001", SES, "02", "podcast_9", 64, 700)]
    eegs, _ = write_derivatives(tmp_path / "r", recs, {"audiobook_1": 700})
    with pytest.raises(DataError) as exc:
        load_corpus(tmp_path / "r")
    msg = str(exc.value)
    assert eeg_name("sub-001", "podcast_9", run="02") in msg and "podcast_9_-_envelope.npy" in msg
    assert "podcast_9" in msg and "no envelope" in msg


def test_gzipped_envelope_hint(tmp_path):
    recs = [("sub-001", SES, "01", "audiobook_1", 64, 700)]
    write_derivatives(tmp_path / "r", recs, {"audiobook_1": 700})
    stim = tmp_path / "r" / "derivatives" / "preprocessed_stimuli" / "audiobook_1_-_envelope.npy"
    stim.rename(stim.with_name(stim.name + ".gz"))
    with pytest.raises(DataError, match="gunzip"):
        load_corpus(tmp_path / "r")


def test_no_stimulus_folder_named(tmp_path):
    recs = [("sub-001", SES, "01", "audiobook_1", 64, 700)]
    write_derivatives(tmp_path / "r", recs, {})
    (tmp_path / "r" / "derivatives" / "preprocessed_stimuli").rmdir()
    with pytest.raises(DataError, match="no stimulus folder"):
        load_corpus(tmp_path / "r")


def test_wrong_channel_count_named(tmp_path):
    recs = [("sub-001", SES, "01", "a", 64, 700), ("sub-002", SES, "01", "a", 63, 700)]
    write_derivatives(tmp_path / "r", recs, {"a": 700})
    with pytest.raises(DataError) as exc:
        load_corpus(tmp_path / "r")
    assert eeg_name("sub-002", "a") in str(exc.value) and "63 channels" in str(exc.value)
    # all files agree, but not with the channel count asked for
    recs = [("sub-001", SES, "01", "a", 32, 700)]
    write_derivatives(tmp_path / "s", recs, {"a": 700})
    with pytest.raises(DataError) as exc:
        load_corpus(tmp_path / "s", n_chans=64)
    assert eeg_name("sub-001", "a") in str(exc.value) and "32 channels" in str(exc.value)


def test_envelope_shorter_than_a_window_named(tmp_path):
    recs = [("sub-001", SES, "01", "short", 64, 700)]
    write_derivatives(tmp_path / "r", recs, {"short": 5 * FS - 1})
    with pytest.raises(DataError) as exc:
        load_corpus(tmp_path / "r")
    msg = str(exc.value)
    assert msg.startswith(str(tmp_path / "r" / "derivatives" / "preprocessed_stimuli" / "short_-_envelope.npy"))
    assert "319 samples" in msg and "5 s window" in msg
    # exactly one window is enough
    write_derivatives(tmp_path / "ok", recs, {"short": 5 * FS})
    assert len(load_corpus(tmp_path / "ok").recordings) == 1


def test_eeg_shorter_than_a_window_named(tmp_path):
    recs = [("sub-001", SES, "01", "a", 64, 100)]
    write_derivatives(tmp_path / "r", recs, {"a": 700})
    with pytest.raises(DataError) as exc:
        read_sparrkulee(tmp_path / "r")
    assert eeg_name("sub-001", "a") in str(exc.value) and "EEG has 100 samples" in str(exc.value)
    assert len(read_sparrkulee(tmp_path / "r", min_samples=100)) == 1


def test_bad_eeg_files_named(tmp_path):
    recs = [("sub-001", SES, "01", "a", 64, 700)]
    eegs, _ = write_derivatives(tmp_path / "r", recs, {"a": 700})
    path = next((tmp_path / "r").rglob("*_eeg.npy"))
    bad = eegs[path.name].copy()
    bad[5, 400] = np.nan
    np.save(path, bad)
    with pytest.raises(DataError, match=r"NaN or Inf.*sample 400, channel 5") as exc:
        load_corpus(tmp_path / "r")
    assert str(path) in str(exc.value)
    np.save(path, bad[0])  # 1-D
    with pytest.raises(DataError, match="2-D") as exc:
        load_corpus(tmp_path / "r")
    assert str(path) in str(exc.value)
    np.save(path, eegs[path.name].astype(np.complex64))
    with pytest.raises(DataError, match="real numbers") as exc:
        load_corpus(tmp_path / "r")
    assert str(path) in str(exc.value)
    path.unlink()
    odd = path.parent / "sub-001_ses-shortstories01_task-rest_eeg.npy"  # no stimulus in the name
    np.save(odd, eegs[path.name])
    with pytest.raises(DataError, match="stimulus") as exc:
        load_corpus(tmp_path / "r")
    assert str(odd) in str(exc.value)


# ----------------------------------------------------------------------------- LazyEEG


def test_lazy_eeg_behaves_like_the_float32_transpose(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.standard_normal((8, 50)) * 1e3
    np.save(tmp_path / "x.npy", base)
    v = LazyEEG.open(tmp_path / "x.npy")
    ref = base.T.astype(np.float32)
    assert v.shape == ref.shape and len(v) == 50 and v.ndim == 2 and v.dtype == np.float32 and v.size == ref.size
    np.testing.assert_array_equal(np.asarray(v), ref)
    for sl in (slice(None), slice(3, 17), slice(-10, None), slice(None, -45), slice(40, 100), slice(20, 10)):
        w = v[sl]
        assert isinstance(w, LazyEEG) and w.shape == ref[sl].shape
        np.testing.assert_array_equal(np.asarray(w), ref[sl])
        np.testing.assert_array_equal(np.asarray(w[1:4]), ref[sl][1:4])
    np.testing.assert_array_equal(v[7], ref[7])
    np.testing.assert_array_equal(v[-1], ref[-1])
    np.testing.assert_array_equal(v[::2], ref[::2])
    np.testing.assert_array_equal(v[5:9, 2], ref[5:9, 2])
    np.testing.assert_array_equal(v[5:9, 1:3], ref[5:9, 1:3])
    # float64 requests see the float32 values, like np.asarray(float32_array, dtype=float64)
    np.testing.assert_array_equal(np.asarray(v[2:6], dtype=np.float64), ref[2:6].astype(np.float64))
    with pytest.raises(IndexError):
        v[50]
    # pickles by file name (spawned DataLoader workers re-open the memory map)
    blob = pickle.dumps(v[10:20])
    assert len(blob) < base.nbytes / 4
    w = pickle.loads(blob)
    assert isinstance(w.base, np.memmap)
    np.testing.assert_array_equal(np.asarray(w), ref[10:20])
