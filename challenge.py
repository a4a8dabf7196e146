"""The challenge's test set and its official scoring: read the ``sub-XXX.json`` EEG segments and
their labels, write and read prediction files, and score predictions by the challenge's rules.

Formats:
  test set     ``sub-XXX.json``: ``{segment_id: [[C floats] x T]}`` (segment ids ``sub-XXX_<n>``)
  labels       ``{segment_id: [[[e0], [e1], ...], stimulus]}``
  predictions  ``result_dir/sub-XXX.json``: ``{segment_id: [T floats]}``
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

import metrics
from fileio import atomic_write_json, read_json
from recording import FS, DataError, Recording, as_eeg, check_finite, match_lengths, natural_key


def zscore(eeg: np.ndarray) -> np.ndarray:
    """Per-channel z-score of one segment (T, C), as the reference inference does: statistics in
    float64, result float32 (``metrics.zscore``)."""
    return metrics.zscore(eeg, dim=0, dtype=np.float64).astype(np.float32)


# --------------------------------------------------------------------------- the test set


def _read_json(path: Path):
    return read_json(path, error=DataError, no_booleans=True)


def _subject_of_json(path: Path) -> str:
    return path.stem  # 'sub-002'


def read_challenge_segments(path) -> dict[str, np.ndarray]:
    """One challenge test file ``sub-XXX.json`` -> {segment_id: eeg (T, C) float32}."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty JSON object {{segment_id: [[C floats] x T]}}")
    out = {}
    for key, seg in data.items():
        try:
            arr = np.asarray(seg, dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}: segment {key!r} is not a rectangular list of numbers ({exc})") from exc
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise DataError(f"{path}: segment {key!r} must be (time, channels), got shape {arr.shape}")
        as_eeg(arr, f"{path} segment {key!r}")
        check_finite(arr, f"{path} segment {key!r}", "EEG")
        out[key] = arr
    return out


def read_test_set(test_dir, n_chans: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """``auditory-eeg-test-dataset/`` -> {subject: {segment_id: eeg (T, C) float32, raw}}."""
    test_dir = Path(test_dir)
    if not test_dir.is_dir():
        raise DataError(f"{test_dir}: test folder does not exist")
    files = sorted(test_dir.glob("sub-*.json"))
    ignored = sorted(p.name for p in test_dir.glob("*.json") if not p.name.startswith("sub-"))
    if not files:
        raise DataError(f"{test_dir}: no test files sub-XXX.json found"
                        + (f" (ignored: {', '.join(ignored)})" if ignored else ""))
    if ignored:
        print(f"{test_dir}: not subject files, ignored: {', '.join(ignored)}", flush=True)
    out, where = {}, {}
    for p in files:
        segs = read_challenge_segments(p)
        for key, eeg in segs.items():
            if key in where:  # scored by id alone, it would meet the other file's EEG or labels
                raise DataError(f"{p}: segment {key!r} is also in {where[key]}; every segment id must be unique")
            where[key] = p
            if n_chans is not None and eeg.shape[1] != n_chans:
                raise DataError(
                    f"{p}: segment {key!r} has {eeg.shape[1]} EEG channels, but the model expects {n_chans}"
                )
        out[_subject_of_json(p)] = segs
    return out


def read_challenge_labels(label_dir) -> dict[str, np.ndarray]:
    """Labels folder -> {segment_id: envelope (T,) float64}. Files: ``{seg: [[[e0], ...], stimulus]}``."""
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: label folder does not exist")
    files = sorted(label_dir.glob("*.json"))
    if not files:
        raise DataError(f"{label_dir}: no label .json files found")
    labels = {}
    for p in files:
        data = _read_json(p)
        if not isinstance(data, dict):
            raise DataError(f"{p}: expected a JSON object {{segment_id: [envelope, stimulus]}}")
        for key, val in data.items():
            env = val[0] if isinstance(val, list) and len(val) == 2 and isinstance(val[1], str) else val
            try:
                arr = np.asarray(env, dtype=np.float64).reshape(-1) if env is not None else None
            except (ValueError, TypeError) as exc:
                raise DataError(f"{p}: label {key!r} is not a list of numbers ({exc})") from exc
            if arr is None or arr.size == 0:
                raise DataError(f"{p}: label {key!r} is empty")
            check_finite(arr, f"{p} label {key!r}", "envelope")
            labels[key] = arr
    return labels


def read_challenge_folder(folder, label_dir=None) -> list[Recording]:
    """A challenge test set: one Recording per segment (envelope from ``label_dir`` when given)."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("sub-*.json"))
    if not files:
        raise DataError(f"{folder}: no challenge 'sub-XXX.json' files found")
    labels = read_challenge_labels(label_dir) if label_dir is not None else {}
    recs = []
    for p in files:
        for key, eeg in read_challenge_segments(p).items():
            env = None
            if key in labels:
                env = labels[key].astype(np.float32)[:, None]
                eeg, env = match_lengths(eeg, env, p, label_dir)
            recs.append(Recording(_subject_of_json(p), key, eeg, env, FS, str(p), "test"))
    return recs


# --------------------------------------------------------------------------- predictions


def write_predictions(result_dir, predictions: dict[str, dict[str, np.ndarray]]) -> list[Path]:
    """Write {subject: {segment_id: (T,) prediction}} as ``result_dir/sub-XXX.json`` files, atomically."""
    paths = []
    for subject, segs in sorted(predictions.items()):
        obj = {k: np.asarray(v, dtype=np.float64).reshape(-1).tolist() for k, v in segs.items()}
        p = Path(result_dir) / f"{subject}.json"
        atomic_write_json(p, obj)
        paths.append(p)
    return paths


def read_predictions(result_dir) -> dict[str, np.ndarray]:
    """Merge every prediction file in ``result_dir`` -> {segment_id: (T,) float64}."""
    merged = {}
    for p in sorted(Path(result_dir).glob("sub-*.json")):
        data = _read_json(p)
        if not isinstance(data, dict):
            raise DataError(f"{p}: expected a JSON object {{segment_id: [floats]}}")
        for k, v in data.items():
            try:
                merged[k] = np.asarray(v, dtype=np.float64).reshape(-1)
            except (ValueError, TypeError) as exc:
                raise DataError(f"{p}: prediction {k!r} is not a list of numbers ({exc})") from exc
    return merged


# --------------------------------------------------------------------------- scoring


def segment_subject(segment_id: str) -> str:
    """'sub-002_13' -> 'sub-002' (the challenge's segment naming)."""
    return segment_id.rsplit("_", 1)[0]


def mean_by_subject(subjects: Iterable[str], rs: Iterable[float]) -> dict[str, float]:
    """Mean r per subject, subjects in natural order (S2 before S10): the field's first averaging step."""
    by_subject: dict[str, list[float]] = {}
    for s, r in zip(subjects, rs, strict=True):
        by_subject.setdefault(s, []).append(float(r))
    return {s: float(np.mean(by_subject[s])) for s in sorted(by_subject, key=natural_key)}


def score(predictions, labels, seen_subjects: Iterable[str] | None = None) -> dict:
    """The official challenge scoring.

    predictions: {segment_id: (T',) array} (merged over files; see ``read_predictions``), or a
      folder of prediction files. labels: {segment_id: (T,) array}, or a label folder.
    For every label: a missing prediction scores 0; a prediction is zero-padded or truncated to
    the label's length; r = Pearson(prediction, label). Subject score = mean r of its segments.
    Total = plain mean over subjects, or 2/3 * mean(seen) + 1/3 * mean(held-out) when
    ``seen_subjects`` is given (subjects not in it are held-out).
    Returns {'per_subject': {subject: r}, 'per_segment': {...}, 'total': r, and 'seen'/'heldout'
    when grouped}.
    """
    if isinstance(predictions, (str, os.PathLike)):
        predictions = read_predictions(predictions)
    if isinstance(labels, (str, os.PathLike)):
        labels = read_challenge_labels(labels)
    per_segment = {}
    for key, lab in labels.items():
        lab = np.asarray(lab, dtype=np.float64).reshape(-1)
        pred = predictions.get(key)
        if pred is None:
            per_segment[key] = 0.0
            continue
        pred = np.asarray(pred, dtype=np.float64).reshape(-1)[: len(lab)]
        pred = np.pad(pred, (0, len(lab) - len(pred)))
        per_segment[key] = float(metrics.pearson(pred, lab, dim=0))
    per_subject = mean_by_subject(map(segment_subject, per_segment), per_segment.values())
    out = {"per_subject": per_subject, "per_segment": per_segment}
    if seen_subjects is None:
        out["total"] = float(np.mean(list(per_subject.values()))) if per_subject else 0.0
        return out
    seen_subjects = set(seen_subjects)
    seen = [v for s, v in per_subject.items() if s in seen_subjects]
    held = [v for s, v in per_subject.items() if s not in seen_subjects]
    out["seen"] = float(np.mean(seen)) if seen else None
    out["heldout"] = float(np.mean(held)) if held else None
    if seen and held:
        out["total"] = 2 / 3 * out["seen"] + 1 / 3 * out["heldout"]
    else:  # only one group present: the weighting has nothing to weigh
        out["total"] = out["seen"] if seen else out["heldout"]
    return out
