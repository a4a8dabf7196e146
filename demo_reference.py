"""Reference figures of a demo corpus: what the project's ridge backward model
(``newmodel.RidgeDecoder``, EEG lags 0-400 ms) scores on its challenge-format test set.

``linear_reference_r(out_dir)``: a pooled (subject-independent) ridge trained on the corpus's
split_data, scored on its test set (works on any corpus in these formats).
``model_ceiling_r(out_dir)``: "the best r the model allows", a subject-specific ridge per subject
trained on ``factor`` x more data generated from the same model (demo corpora only).
``demo_corpus.make_demo_corpus`` computes the same figures while it builds (``linear_reference``,
``model_ceiling``) and stores them in demo_info.json; docs/demo_corpus.md describes them.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from challenge import read_challenge_labels, read_test_set, score, segment_subject, zscore
from demo_corpus import (
    GENERATOR_VERSION,
    INFO_FILE,
    LABEL_DIR,
    RECORDING_MINUTES,
    SPLIT_DIR,
    TEST_DIR,
    TEST_PREROLL_S,
    random_stream,
    stimulus_envelope,
    subject_eeg,
    subject_model,
)
from EEG_Dataset import read_split_data
from fileio import read_json
from metrics import pearson
from newmodel import RidgeDecoder

LAGS_S = 0.4  # linear decoder: EEG lags 0-400 ms after the envelope sample


def _standardized(eeg, env):
    """One recording part, EEG (per channel) and envelope each z-scored on their own."""
    return zscore(np.asarray(eeg)), zscore(np.asarray(env, dtype=np.float32).reshape(len(env), 1))


def _fit_ridge(train, val, fs):
    """RidgeDecoder fitted on ``train`` [(eeg, env)], its ridge strength chosen on ``val``.
    Returns (model, RidgeDecoder.fit's summary)."""
    if not train:
        raise ValueError("no training data for the linear reference (no train parts of seen subjects)")
    model = RidgeDecoder(n_chans=np.shape(train[0][0])[1], lags=int(round(LAGS_S * fs)))
    fit = model.fit([_standardized(*p) for p in train], [_standardized(*p) for p in val])
    return model, fit


@torch.no_grad()
def _predict(model, eeg) -> np.ndarray:
    """Backward-model output (T,) for one test segment, z-scored per channel as the reference
    inference does (zero-padded after the segment end, so the output has the segment's length)."""
    return model(torch.from_numpy(zscore(eeg))[None])[0, :, 0].double().numpy()


def _r4(v):
    return None if v is None else round(float(v), 4)


def _score(predictions, segments, seen) -> dict:
    """Challenge-style summary (challenge.score) of ``predictions`` {segment id: (T,)} against
    ``segments`` {segment id: (eeg, env, stimulus)}; subjects not in ``seen`` count as held-out."""
    sc = score(predictions, {k: segments[k][1] for k in predictions}, seen_subjects=seen)
    per = sc["per_subject"]
    return {"mean": _r4(np.mean(list(per.values()))), "seen": _r4(sc["seen"]), "heldout": _r4(sc["heldout"]),
            "total": _r4(sc["total"]), "per_subject": {k: _r4(v) for k, v in per.items()}}


def _chance_sd(predictions, segments, n_pairs=2000) -> float | None:
    """SD of r of predictions scored against the label of a different stimulus."""
    preds = [(predictions[k], segments[k][2], np.ravel(segments[k][1])) for k in sorted(predictions)]
    pairs = ((p, e) for i, (p, s, _) in enumerate(preds) for j, (_, s2, e) in enumerate(preds) if j > i and s2 != s)
    null = [float(pearson(p[:min(len(p), len(e))], e[:min(len(p), len(e))], dim=0))
            for p, e in itertools.islice(pairs, n_pairs)]
    return _r4(np.std(null)) if null else None


def linear_reference(parts, segments, seen, fs) -> dict:
    """parts: [(split, subject, recording, eeg, env)] in (split, subject, recording) order."""
    train = [(eeg, env) for split, subj, _, eeg, env in parts if split == "train" and subj in seen]
    val = [(eeg, env) for split, subj, _, eeg, env in parts if split == "val" and subj in seen]
    model, fit = _fit_ridge(train, val, fs)
    predictions = {k: _predict(model, eeg) for k, (eeg, _, _) in segments.items()}
    res = {"what": "pooled (subject-independent) ridge over EEG lags 0-400 ms, trained on the train "
                   "parts of all seen subjects, lambda chosen on the val parts; Pearson r on the 60 s "
                   "test segments; total = 2/3 seen + 1/3 held-out",
           "lambda_rel": fit["alpha"], "val_r": _r4(fit["val_r"])}
    sc = _score(predictions, segments, seen)
    res.update({k: sc[k] for k in ("mean", "seen", "heldout", "total")})
    res["chance_sd"] = _chance_sd(predictions, segments)
    res["per_subject"] = sc["per_subject"]
    return res


def model_ceiling(seed, models, minutes, fs, factor, segments, seen) -> dict:
    """Subject-specific ridge per subject on factor x minutes of fresh data from its own model."""
    pre = int(round(TEST_PREROLL_S * fs))
    predictions, lams = {}, {}
    n_rec = max(1, int(round(factor * minutes / RECORDING_MINUTES)))
    n = int(round(factor * minutes * 60.0 * fs / n_rec))
    for m in models:
        name = m["name"]
        keys = [k for k in segments if segment_subject(k) == name]
        if not keys:
            continue
        train, val = [], []
        for k in range(n_rec):
            env, level = stimulus_envelope(seed, f"ceiling_{m['index']}_{k}", n + pre, fs)
            eeg = subject_eeg(m, env, level, random_stream(seed, "ceiling_eeg", m["index"], k))[pre:]
            env = env[pre:]
            cut = int(0.9 * n)
            train.append((eeg[:cut], env[:cut]))
            val.append((eeg[cut:], env[cut:]))
        model, fit = _fit_ridge(train, val, fs)
        lams[name] = fit["alpha"]
        predictions.update({k: _predict(model, segments[k][0]) for k in keys})
    res = {"what": f"subject-specific ridge (lags 0-400 ms) per subject, trained on {factor} x "
                   f"{minutes:g} min of fresh data generated from that subject's model; same test segments",
           "factor": factor}
    res.update(_score(predictions, segments, seen))
    res["lambda_rel"] = lams
    return res


# ---------------------------------------------------------------------------------------------
# the same figures from files on disk (works on any corpus in these formats)
# ---------------------------------------------------------------------------------------------
def _read_test_segments(out: Path) -> dict:
    """{segment id: (eeg, env, stimulus)} of the labelled test segments under ``out``."""
    labels = read_challenge_labels(out / LABEL_DIR)
    # read_challenge_labels keeps the envelopes only; the chance level needs each label's stimulus
    stimuli = {k: v[1] if isinstance(v, list) and len(v) == 2 else None
               for p in sorted((out / LABEL_DIR).glob("*.json")) for k, v in read_json(p).items()}
    return {k: (eeg, labels[k], stimuli[k]) for segs in read_test_set(out / TEST_DIR).values()
            for k, eeg in segs.items() if k in labels}


def linear_reference_r(out_dir="xfdata", fs=64) -> dict:
    """Pooled ridge backward model (lags 0-400 ms) on ``out_dir``'s split_data, scored on its
    challenge-format test set against test_labels. Seen / held-out grouping from demo_info.json
    when present, else subjects with split_data are 'seen'. Returns the figures dict
    ({'total', 'seen', 'heldout', 'mean', 'chance_sd', 'per_subject', ...})."""
    out = Path(out_dir)
    parts = [(r.split, r.subject, r.rec_id, r.eeg, r.envelope) for r in read_split_data(out / SPLIT_DIR)]
    segments = _read_test_segments(out)
    info_p = out / INFO_FILE
    seen = read_json(info_p)["seen_subjects"] if info_p.is_file() else sorted({p[1] for p in parts})
    return linear_reference(parts, segments, seen, fs)


def model_ceiling_r(out_dir="xfdata", factor=10) -> dict:
    """'Best r the model allows' for the demo corpus in ``out_dir`` (re-generates its subjects from
    demo_info.json's parameters): a subject-specific ridge per subject trained on ``factor`` x the
    subject's minutes of fresh data, scored on the corpus's test segments."""
    out = Path(out_dir)
    info = read_json(out / INFO_FILE)
    p = info["parameters"]
    if p.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(f"{out} was made by demo generator version {p.get('generator_version')}, "
                         f"this is version {GENERATOR_VERSION}")
    models = [subject_model(p["seed"], i, p["n_chans"], p["fs"], p["neural_gain"])
              for i in range(p["n_subjects"] + p["n_heldout"])]
    return model_ceiling(p["seed"], models, p["minutes"], p["fs"], factor, _read_test_segments(out),
                    info["seen_subjects"])
