"""Tests of evaluation.py: z-scored predictions (metrics.zscore, also the test set's EEG z-score), per-subject
Pearson r of recording parts, seed ensembles."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import challenge
from EEG_Dataset import load_corpus
from evaluation import ensemble_r, evaluate, predict, zscore_prediction

T, C = 640, 3  # 10 s at 64 Hz, 3 channels


# --------------------------------------------------------------------------------------- zscore
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_zscore_of_numpy_and_torch(dim):
    rng = np.random.default_rng(0)
    y = rng.normal(3.0, 5.0, size=(4, 50)).astype(np.float64)
    for z in (zscore_prediction(y, dim), zscore_prediction(torch.from_numpy(y), dim).numpy()):
        assert z.shape == y.shape
        np.testing.assert_allclose(z.mean(dim), 0, atol=1e-12)
        np.testing.assert_allclose(z.std(dim), 1, atol=1e-9)  # population std (ddof 0) in both
    np.testing.assert_allclose(zscore_prediction(y, dim), zscore_prediction(torch.from_numpy(y), dim).numpy(),
                               rtol=1e-12)


def test_zscore_keeps_type_and_dtype():
    y32 = torch.randn(2, 30)
    assert zscore_prediction(y32).dtype == torch.float32
    assert isinstance(zscore_prediction(np.ones(5, np.float32)), np.ndarray)


def test_zscore_of_a_constant_is_zeros():
    assert np.array_equal(zscore_prediction(np.full(10, 7.0)), np.zeros(10))
    assert torch.equal(zscore_prediction(torch.full((2, 10), -3.0)), torch.zeros(2, 10))
    y = np.full(1000, 0.1, np.float32)  # its float32 mean is not exactly 0.1: a constant all the same
    assert y.mean() != y[0]
    assert np.array_equal(zscore_prediction(y), np.zeros(1000, np.float32))
    assert torch.equal(zscore_prediction(torch.from_numpy(y)), torch.zeros(1000))


def test_the_test_sets_eeg_and_the_predictions_share_one_zscore():
    """challenge.zscore (per channel, float64 statistics, float32 result) is the predictions' z-score
    along time; a dead channel becomes zeros as a constant prediction does."""
    rng = np.random.default_rng(1)
    eeg = rng.normal(2.0, 3.0, size=(T, C)).astype(np.float32)
    eeg[:, 1] = 4.5
    z = challenge.zscore(eeg)
    assert z.dtype == np.float32 and np.array_equal(z[:, 1], np.zeros(T, np.float32))
    np.testing.assert_array_equal(z, zscore_prediction(eeg.astype(np.float64), dim=0).astype(np.float32))
    np.testing.assert_allclose(z[:, [0, 2]].std(0), 1, atol=1e-6)


# --------------------------------------------------------------------------------------- corpus
def _corpus(folder: Path, **kw):
    """Subjects S1 (trials 001, 002, 003) and S2 (trial 001). Channel 0 is an affine copy of the
    envelope, so a model that outputs channel 0 predicts the envelope exactly (r = 1)."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("DTU_S1_001", "DTU_S1_002", "DTU_S1_003", "DTU_S2_001"):
        env = np.abs(rng.standard_normal((T, 1))).astype(np.float32)
        eeg = rng.standard_normal((T, C)).astype(np.float32)
        eeg[:, 0] = 2.0 * env[:, 0] - 1.0
        np.savez(folder / f"{name}.npz", eeg=eeg, envelope=env)
    return load_corpus(folder, **kw)


class Channel(torch.nn.Module):
    """Predicts EEG channel ``c`` (+ noise scaled by ``noise``); records the subject indices it saw."""

    def __init__(self, c=0, noise=0.0):
        super().__init__()
        self.c, self.noise, self.seen = c, noise, []
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, eeg, subject=None):
        self.seen.append(subject.tolist())
        g = torch.Generator().manual_seed(eeg.shape[1])
        return eeg[..., self.c:self.c + 1] + self.noise * torch.randn(eeg[..., :1].shape, generator=g)


def _pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def test_a_model_predicting_the_envelope_exactly_has_r_1(tmp_path):
    corpus = _corpus(tmp_path / "data")
    model = Channel(0)
    out = evaluate(model, corpus.recordings, "test", "cpu", {"S1": 0, "S2": 1})
    assert list(out["per_subject"]) == ["S1", "S2"]
    for r in out["per_subject"].values():
        assert r == pytest.approx(1.0, abs=1e-5)
    assert out["r"] == pytest.approx(1.0, abs=1e-5)
    assert sorted(model.seen) == [[0], [0], [0], [1]]  # each recording once, with its subject's index
    assert not model.training


def test_r_is_the_mean_over_subjects_of_the_mean_over_their_recordings(tmp_path):
    corpus = _corpus(tmp_path / "data")
    model = Channel(0, noise=1.0)
    out = evaluate(model, corpus.recordings, "val", "cpu", {"S1": 0})
    by_rec = {}
    for rec in corpus.recordings:
        eeg, env = rec.get("val")
        by_rec[rec.rec_id] = _pearson(predict(model, eeg, 0, "cpu").numpy(), env[:, 0])
    s1 = np.mean([by_rec["DTU_S1_001"], by_rec["DTU_S1_002"], by_rec["DTU_S1_003"]])
    assert out["per_subject"]["S1"] == pytest.approx(s1, abs=1e-5)
    assert out["per_subject"]["S2"] == pytest.approx(by_rec["DTU_S2_001"], abs=1e-5)
    assert out["r"] == pytest.approx((s1 + by_rec["DTU_S2_001"]) / 2, abs=1e-5)  # S2 weighs as much as S1
    assert 0.2 < out["r"] < 0.95
    assert [-1] in model.seen  # S2 is not in subject_index: 'unknown'


def test_recordings_without_the_part_are_skipped(tmp_path):
    corpus = _corpus(tmp_path / "data", val_recordings=["DTU_S2_*"])  # S2 goes whole to val: no test part
    out = evaluate(Channel(0), corpus.recordings, "test", "cpu", {})
    assert list(out["per_subject"]) == ["S1"]
    out = evaluate(Channel(0), [r for r in corpus.recordings if r.subject == "S2"], "test", "cpu", {})
    assert out["per_subject"] == {} and np.isnan(out["r"])


def test_predict_shapes(tmp_path):
    x = torch.randn(T, C)
    assert predict(Channel(1), x, 0, "cpu").shape == (T,)
    assert predict(Channel(1), x.numpy(), 0, "cpu").shape == (T,)
    y = predict(Channel(1), torch.randn(2, 7, C), 0, "cpu")
    assert y.shape == (2, 7) and y.dtype == torch.float32


def test_ensemble_r(tmp_path):
    corpus = _corpus(tmp_path / "data")
    recs = corpus.recordings
    exact = [predict(Channel(0), r.get("test")[0], 0, "cpu") for r in recs]
    assert ensemble_r(recs, "test", [exact]) == pytest.approx(1.0, abs=1e-6)
    # z-scoring: a seed's scale and offset do not change the ensemble
    assert ensemble_r(recs, "test", [exact, [100 * p + 5 for p in exact]]) == pytest.approx(1.0, abs=1e-6)
    noisy = [[p + 2.0 * torch.randn(len(p), generator=torch.Generator().manual_seed(100 * k + i))
              for i, p in enumerate(exact)] for k in range(4)]  # four seeds, independent errors
    one = ensemble_r(recs, "test", noisy[:1])
    four = ensemble_r(recs, "test", noisy)
    assert four > one  # averaging independent noise helps
