"""Is a score above chance? Null distributions by circular shifts, and the match-mismatch task.

A reconstruction score (Pearson r per segment, mean per subject, mean over subjects) means little
without the score a model with no access to the EEG would get on the same envelopes. Circularly
shifting each envelope against its prediction keeps both signals' spectra and lengths and only
breaks their alignment, so the scores of shifted pairs are the chance distribution of that very
score. The shift stays ``min_shift_s`` away from zero (and, being circular, from the full length)
so that the envelope's own autocorrelation cannot carry the real alignment into the null.

The match-mismatch task (Auditory-EEG challenge, ICASSP 2023: 2 candidates; 2024: 5 candidates)
asks which of several envelope windows the listener heard; ``match_mismatch`` answers it from an
envelope reconstruction by picking the candidate with the highest Pearson r.

Everything here is seeded (``numpy.random.default_rng(seed)``) and deterministic, and uses numpy only.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from recording import natural_key

__all__ = ["null_scores", "circular_r", "min_length", "chance", "format_chance", "match_mismatch"]


def _zscore(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Population z-score along ``axis``; a constant series becomes zeros, so its r is 0 (as metrics.pearson).

    The same figures as ``metrics.zscore`` on finite series; kept apart because metrics needs torch and
    because a series holding NaN or Inf becomes zeros here (r = 0) where metrics.zscore gives NaN."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=axis, keepdims=True)
    sd = np.sqrt((xc ** 2).mean(axis=axis, keepdims=True))
    # constant at rounding level relative to the series' size: the same rule as metrics.pearson
    tiny = 16 * np.finfo(np.float64).eps * np.sqrt((x ** 2).mean(axis=axis, keepdims=True))
    return np.where(sd > tiny, xc / np.where(sd > tiny, sd, 1.0), 0.0)


def circular_r(pred, env) -> np.ndarray:
    """Pearson r of ``pred`` with ``np.roll(env, k)`` for every lag k = 0 .. T-1, via one FFT.

    pred, env: (T,) arrays of the same length. Returns (T,) float64; element 0 is the real r.
    Mean and SD do not change under a circular shift, so one z-score serves every lag:
    r[k] = mean_t zp[t] * ze[t - k] = irfft(rfft(zp) * conj(rfft(ze)))[k] / T.
    """
    pred, env = np.asarray(pred, dtype=np.float64).reshape(-1), np.asarray(env, dtype=np.float64).reshape(-1)
    if pred.shape != env.shape:
        raise ValueError(f"circular_r: prediction has {pred.size} samples, envelope {env.size}")
    n = pred.size
    return np.fft.irfft(np.fft.rfft(_zscore(pred)) * np.conj(np.fft.rfft(_zscore(env))), n=n) / n


def min_length(fs: float = 64, min_shift_s: float = 2.0) -> int:
    """Fewest samples a segment needs for a shift ``min_shift_s`` from zero and from its end:
    2 * min_shift + 1, so at least two shifts are possible."""
    return 2 * _shift_samples(fs, min_shift_s) + 1


def _shift_samples(fs: float, seconds: float) -> int:
    return int(math.ceil(seconds * fs - 1e-9))  # the shift is never shorter than asked


def _total(per_subject: dict, seen_subjects) -> np.ndarray | float:
    """Mean over subjects, or the challenge's 2/3 seen + 1/3 held-out weighting when ``seen_subjects``
    is given (challenge.score's rule). Works on floats and on (n,) arrays alike."""
    values = list(per_subject.values())
    if seen_subjects is None:
        return np.mean(values, axis=0)
    seen_subjects = set(seen_subjects)
    seen = [v for s, v in per_subject.items() if s in seen_subjects]
    held = [v for s, v in per_subject.items() if s not in seen_subjects]
    if seen and held:
        return 2 / 3 * np.mean(seen, axis=0) + 1 / 3 * np.mean(held, axis=0)
    return np.mean(seen or held, axis=0)


def null_scores(preds: Sequence, envs: Sequence, groups: Sequence, n: int = 1000, seed: int = 0, fs: float = 64,
                min_shift_s: float = 2.0, *, names: Sequence[str] | None = None,
                seen_subjects: Iterable[str] | None = None, return_shifts: bool = False) -> dict:
    """Chance distribution of the score by circular shifts of each envelope against its prediction.

    preds, envs: lists of (T_i,) arrays, prediction and true envelope of segment i (equal lengths
      per pair; a prediction of another length must be padded or cut first, as the scorer does).
    groups: the subject of each segment. names: optional segment ids, used in error messages.
    n: null draws. In draw j every segment i gets its own shift s_ij, uniform on the integers
      [m, T_i - m] with m = ceil(min_shift_s * fs) samples, and the draw is scored exactly as the
      real score: r per segment, mean per subject, then mean over subjects (or the 2/3 seen +
      1/3 held-out weighting when ``seen_subjects`` is given, as challenge.score does).
    A segment shorter than ``min_length(fs, min_shift_s)`` samples raises a one-line ValueError
    naming it: leaving it out would make the null describe another score than the observed one,
    so the caller decides (e.g. score and test only the segments long enough).

    Returns {'total': (n,) null totals, 'per_subject': {subject: (n,) null means},
    'observed': {'total': float, 'per_subject': {subject: float}} (the real score, lag 0),
    'n': n, 'min_shift_samples': m, 'method': one line describing the null}
    and, with ``return_shifts``, 'shifts': [(n,) int array per segment], the drawn lags
    (the envelope of draw j is np.roll(env_i, shifts[i][j])).
    """
    if not len(preds) == len(envs) == len(groups):
        raise ValueError(f"null_scores: {len(preds)} predictions, {len(envs)} envelopes, {len(groups)} subjects")
    if not preds:
        raise ValueError("null_scores: no segments")
    if n < 1:
        raise ValueError(f"null_scores: n must be >= 1, got {n}")
    m = _shift_samples(fs, min_shift_s)
    rng = np.random.default_rng(seed)
    subjects = sorted(set(groups), key=natural_key)  # 'S2' before 'S10', as challenge.mean_by_subject orders them
    col = {s: i for i, s in enumerate(subjects)}
    sums, counts = np.zeros((n, len(subjects))), np.zeros(len(subjects))
    observed_sums = np.zeros(len(subjects))
    shifts = []
    for i, (p, e, g) in enumerate(zip(preds, envs, groups, strict=True)):
        name = f"segment {names[i]!r}" if names is not None else f"segment {i}"
        p, e = np.asarray(p).reshape(-1), np.asarray(e).reshape(-1)
        if p.size != e.size:
            raise ValueError(f"null_scores: {name}: prediction has {p.size} samples, envelope {e.size}")
        if p.size < 2 * m + 1:
            raise ValueError(f"null_scores: {name} has {p.size} samples, fewer than the {2 * m + 1} a circular shift "
                             f"of at least {min_shift_s:g} s from both ends needs at {fs:g} Hz")
        r_all = circular_r(p, e)
        k = rng.integers(m, p.size - m, size=n, endpoint=True)
        sums[:, col[g]] += r_all[k]
        counts[col[g]] += 1
        observed_sums[col[g]] += r_all[0]
        if return_shifts:
            shifts.append(k)
    null_sub = sums / counts
    per_subject = {s: null_sub[:, col[s]] for s in subjects}
    observed = {s: float(observed_sums[col[s]] / counts[col[s]]) for s in subjects}
    out = {"total": np.asarray(_total(per_subject, seen_subjects), dtype=np.float64),
           "per_subject": per_subject,
           "observed": {"total": float(_total(observed, seen_subjects)), "per_subject": observed},
           "n": int(n), "min_shift_samples": m,
           "method": (f"{n} circular shifts of each envelope against its prediction, uniform on "
                      f"[{min_shift_s:g} s, length - {min_shift_s:g} s], scored as the real score "
                      f"(r per segment, mean per subject, mean over subjects); seed {seed}")}
    if return_shifts:
        out["shifts"] = shifts
    return out


def _p_value(observed: float, null: np.ndarray) -> float:
    """One-sided: (1 + #(null >= observed)) / (1 + n); never 0, since the observed is one of the draws under H0."""
    null = np.asarray(null, dtype=np.float64)
    return float((1 + np.count_nonzero(null >= observed)) / (1 + null.size))


def chance(observed_total: float, observed_per_subject: dict, null_total, null_per_subject: dict,
           method_text: str) -> dict:
    """Chance level of a score and its one-sided p values, from ``null_scores``' distributions.

    null_total: (n,) array; null_per_subject: {subject: (n,) array} (subjects of observed_per_subject
    missing there raise a KeyError naming them).
    Returns {'total_p95': 95th percentile of the null total, 'p_value': p of the total,
    'per_subject_p95': {subject: float}, 'per_subject_p': {subject: float}, 'n': draws,
    'method': method_text}, p = (1 + #(null >= observed)) / (1 + n).
    """
    missing = [s for s in observed_per_subject if s not in null_per_subject]
    if missing:
        raise KeyError(f"chance: no null distribution for subject(s) {', '.join(map(str, missing))}")
    null_total = np.asarray(null_total, dtype=np.float64)
    return {"total_p95": float(np.percentile(null_total, 95)),
            "p_value": _p_value(observed_total, null_total),
            "per_subject_p95": {s: float(np.percentile(null_per_subject[s], 95)) for s in observed_per_subject},
            "per_subject_p": {s: _p_value(v, null_per_subject[s]) for s, v in observed_per_subject.items()},
            "n": int(null_total.size), "method": method_text}


def format_p(p: float, n: int) -> str:
    """'p < 0.001' when no null draw reached the observed score (p is then 1/(n+1), below 1/n), else
    'p = ' with two significant digits, e.g. 'p = 0.002', 'p = 0.048', 'p = 0.51'."""
    if p <= 1 / (n + 1) + 1e-15:
        return f"p < {1 / n:.2g}"
    return f"p = {p:.2g}"


def format_chance(total: float, ch: dict, label: str = "total") -> str:
    """One line, e.g. 'total 0.2073 (chance 95th percentile 0.030, p < 0.001)'. ch: ``chance``'s dict."""
    return f"{label} {total:.4f} (chance 95th percentile {ch['total_p95']:.3f}, {format_p(ch['p_value'], ch['n'])})"


def _window_r(pred_w: np.ndarray, env_w: np.ndarray) -> np.ndarray:
    """Pearson r of every reconstruction window with every envelope window: (a, W), (b, W) -> (a, b)."""
    return _zscore(pred_w) @ _zscore(env_w).T / pred_w.shape[1]


def match_mismatch(preds: Sequence, envs: Sequence, groups: Sequence, window_s: float = 5.0, fs: float = 64,
                   candidates: int = 5, seed: int = 0, hop_s: float | None = None) -> dict:
    """Match-mismatch accuracy of an envelope reconstruction (challenge task 1: 2024 with
    candidates=5, 2023 with candidates=2).

    preds, envs, groups: as ``null_scores`` ((T_i,) arrays per segment, subject per segment).
    Each segment is tiled into non-overlapping windows of W = round(window_s * fs) samples
    starting at 0, W, 2W, ...; the windows scored ("heard") are those tiles, or with ``hop_s``
    windows starting every round(hop_s * fs) samples. For a heard window the imposters are
    ``candidates - 1`` distinct tiles of the same segment's envelope that do not overlap it, drawn
    without replacement from one seeded generator (segments in order). The reconstruction of the
    heard window picks the candidate with the highest Pearson r; a tie at the top counts
    1 / (number tied), so a constant reconstruction scores chance, not 1.
    A window whose segment has too few other tiles to supply the imposters is skipped and counted.
    The challenges build their own candidate sets from their test stimuli; this rule is stated here so
    that a figure says what it measured, and it keeps every imposter inside the stimulus the
    reconstruction came from (the same speech material, so only the timing tells them apart).
    Accuracy per subject = mean over all its scored windows; 'accuracy' = mean over subjects (as the
    reconstruction score averages). Raises ValueError when no window can be scored.

    Returns {'candidates', 'window_s', 'hop_s' (None: non-overlapping), 'accuracy', 'chance'
    (1 / candidates), 'per_subject': {subject: accuracy}, 'n_windows' (scored),
    'skipped': {'windows': windows skipped for lack of imposters, 'segments': segments that gave
    no scored window (too short for one window, or for the imposters)}}.
    """
    if not len(preds) == len(envs) == len(groups):
        raise ValueError(f"match_mismatch: {len(preds)} predictions, {len(envs)} envelopes, {len(groups)} subjects")
    if candidates < 2:
        raise ValueError(f"match_mismatch: candidates must be >= 2, got {candidates}")
    win = int(round(window_s * fs))
    hop = win if hop_s is None else int(round(hop_s * fs))
    if win < 2 or hop < 1:
        raise ValueError(f"match_mismatch: window {window_s:g} s / hop {hop_s} s at {fs:g} Hz is under 2 / 1 samples")
    rng = np.random.default_rng(seed)
    hits: dict = {}
    skipped_windows = skipped_segments = 0
    for i, (p, e, g) in enumerate(zip(preds, envs, groups, strict=True)):
        p, e = np.asarray(p, dtype=np.float64).reshape(-1), np.asarray(e, dtype=np.float64).reshape(-1)
        if p.size != e.size:
            raise ValueError(f"match_mismatch: segment {i}: prediction has {p.size} samples, envelope {e.size}")
        n_tiles = p.size // win
        starts = np.arange(0, p.size - win + 1, hop)
        tile_starts = np.arange(n_tiles) * win
        if not starts.size:
            skipped_segments += 1
            continue
        tiles = e[: n_tiles * win].reshape(n_tiles, win)
        pred_w = np.stack([p[s:s + win] for s in starts])
        heard_r = (_zscore(pred_w) * _zscore(np.stack([e[s:s + win] for s in starts]))).mean(axis=1)
        tile_r = _window_r(pred_w, tiles)  # (heard windows, tiles)
        scored = 0
        for j, s in enumerate(starts):
            free = np.flatnonzero((tile_starts + win <= s) | (tile_starts >= s + win))  # tiles not overlapping it
            if free.size < candidates - 1:
                skipped_windows += 1
                continue
            imposters = tile_r[j, rng.choice(free, size=candidates - 1, replace=False)]
            top = max(heard_r[j], imposters.max())
            hit = 0.0 if heard_r[j] < top else 1.0 / (1 + np.count_nonzero(imposters == top))
            hits.setdefault(g, []).append(hit)
            scored += 1
        skipped_segments += scored == 0
    if not hits:
        raise ValueError(f"match_mismatch: no window could be scored: every segment is shorter than {candidates} "
                         f"non-overlapping {window_s:g} s windows")
    per_subject = {s: float(np.mean(hits[s])) for s in sorted(hits, key=natural_key)}
    return {"candidates": int(candidates), "window_s": float(window_s), "hop_s": hop_s,
            "accuracy": float(np.mean(list(per_subject.values()))), "chance": 1.0 / candidates,
            "per_subject": per_subject, "n_windows": int(sum(len(v) for v in hits.values())),
            "skipped": {"windows": int(skipped_windows), "segments": int(skipped_segments)}}
