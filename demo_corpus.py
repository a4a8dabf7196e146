"""Built-in synthetic demo corpus: EEG that tracks a speech-like envelope, in the challenge's formats.

Lets users without data run training, testing and scoring end to end. The generating model is
documented, with its math, in ``docs/demo_corpus.md``. In short, for every subject s:

    eeg_s(t) = CAR[ g_s * a_s * (h_s * e~)(t) + pink_s(t) + alpha_s(t) + blinks_s(t) + white_s(t) ]
               * scale_s + offset_s

with e~ the (level-normalized, mean-removed) stimulus envelope, h_s a P1-N1-P2 temporal response
function, a_s a fronto-central spatial pattern, and a spatially correlated 1/f background,
an occipital alpha rhythm, frontal eye blinks and white sensor noise.

Files written under ``out_dir`` (formats of ``docs/reference.md``, "Data formats"):

    split_data/{split}_-_{subject}_-_{stimulus}_-_{eeg|envelope}.npy   (T, 64) / (T, 1) float32, raw
    auditory-eeg-test-dataset/sub-XXX.json   {"sub-XXX_i": [[64 floats] x T], ...}  (raw EEG)
    test_labels/sub-XXX.json                 {"sub-XXX_i": [[[e0], [e1], ...], "stimulus"], ...}
    demo_info.json                           parameters, subjects, measured reference figures

API: ``make_demo_corpus(...)``, ``linear_reference_r(out_dir)`` (a pooled ridge backward model
scored on the challenge-format test set of any corpus on disk), ``model_ceiling_r(out_dir)``
(a subject-specific ridge trained on ``factor`` x more data generated from the same model).
CLI: ``python demo_corpus.py [--out_dir=xfdata] [--n_subjects=8] [--seed=0] [--overwrite=True] ...``
"""
from __future__ import annotations

import ast
import contextlib
import ctypes
import io
import itertools
import json
import math
import os
import re
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import resample_poly

from metrics import pearson

GENERATOR_VERSION = 1

# Gain of the envelope-following response relative to the unit-variance 1/f background. Tuned so that
# the pooled linear backward model scores r ~ 0.2 on the 60 s test segments of the default corpus.
NEURAL_GAIN = 0.08

SPLIT_DIR = "split_data"
TEST_DIR = "auditory-eeg-test-dataset"
LABEL_DIR = "test_labels"
INFO_FILE = "demo_info.json"
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train / val / test, in time
RECORDING_MINUTES = 1.5  # typical length of one training recording
TEST_PREROLL_S = 2.0  # a test segment is cut from a longer listening period: 2 s of context before it
LAGS_S = 0.4  # linear decoder: EEG lags 0-400 ms after the envelope sample
_RIDGE_GRID = tuple(10.0 ** k for k in range(-3, 4))  # x mean diagonal of X'X

_OPENBLAS = []  # cached list of (set_num_threads, get_num_threads) of the loaded OpenBLAS libraries


def _openblas():
    """[(set_num_threads, get_num_threads)] of every OpenBLAS loaded in this process (Linux)."""
    if _OPENBLAS:
        return _OPENBLAS[0]
    found = []
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({ln.split()[-1] for ln in fh if "openblas" in ln and ln.split()[-1].startswith("/")})
        for path in paths:
            lib = ctypes.CDLL(path)
            for name in ("scipy_openblas_%s_num_threads64_", "scipy_openblas_%s_num_threads",
                         "openblas_%s_num_threads64_", "openblas_%s_num_threads"):
                try:
                    s, g = getattr(lib, name % "set"), getattr(lib, name % "get")
                except AttributeError:
                    continue
                s.argtypes, s.restype, g.restype = [ctypes.c_int], None, ctypes.c_int
                found.append((s, g))
                break
    except OSError:
        pass
    _OPENBLAS.append(found)
    return found


@contextlib.contextmanager
def single_thread_blas():
    """Run numpy's BLAS on one thread inside the block (restored after).

    The matrices here are small (64 x 64 blocks, a 1664-dim ridge); multi-threaded OpenBLAS on a
    busy machine makes them ~50x slower, one thread is fast everywhere. No-op where OpenBLAS
    cannot be found.
    """
    libs = _openblas()
    old = [g() for _, g in libs]
    for s, _ in libs:
        s(1)
    try:
        yield
    finally:
        for (s, _), n in zip(libs, old):
            s(max(int(n), 1))


_FILE_RE = re.compile(r"^(train|val|test)_-_(.+?)_-_(.+?)_-_(eeg|envelope)\.npy$")


# ---------------------------------------------------------------------------------------------
# random streams: one independent, reproducible stream per (seed, purpose, indices)
# ---------------------------------------------------------------------------------------------
def _rng(seed: int, *keys) -> np.random.Generator:
    words = [int(seed) & 0xFFFFFFFF]
    for k in keys:
        words.append(zlib.crc32(k.encode()) if isinstance(k, str) else int(k) & 0xFFFFFFFF)
    return np.random.default_rng(np.random.SeedSequence(words))


def subject_name(i: int) -> str:
    """0-based subject index -> 'sub-001'."""
    return f"sub-{i + 1:03d}"


# ---------------------------------------------------------------------------------------------
# head geometry and topographies
# ---------------------------------------------------------------------------------------------
def electrode_positions(n_chans: int = 64) -> np.ndarray:
    """(n_chans, 3) unit vectors spread evenly over the upper head (x right, y front, z up).

    A Fibonacci spiral over the cap z >= -0.25, ordered roughly front to back like a 10-20 montage.
    """
    i = np.arange(n_chans) + 0.5
    z = 1.0 - i / n_chans * 1.25
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    pos = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    order = np.lexsort((pos[:, 0], -np.round(pos[:, 1] * 4.0)))  # rows front -> back, left -> right
    return pos[order]


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _bump(pos: np.ndarray, center, width: float) -> np.ndarray:
    """Gaussian blob on the scalp: exp(-|p - c|^2 / (2 w^2)), chord distance, c on the unit sphere."""
    d2 = ((pos - _unit(center)) ** 2).sum(axis=1)
    return np.exp(-d2 / (2.0 * width * width))


# ---------------------------------------------------------------------------------------------
# speech-like envelope
# ---------------------------------------------------------------------------------------------
def speech_envelope(n_samples: int, fs: int, rng: np.random.Generator, level: float = 1.0) -> np.ndarray:
    """(n_samples,) float64, non-negative speech-like envelope at ``fs`` Hz.

    Phrases (lognormal, median 2 s) of words (1-3 syllables, one stressed) separated by pauses
    of 0.2-1 s. Syllables follow each other at ~4.5 Hz (gamma-distributed onset intervals); each
    is a smooth bump (fast rise, slower decay) whose amplitude declines over the phrase. The
    amplitude is built at 4 x fs, compressed with |.|^0.6 like the reference envelope, then
    resampled to fs with an anti-aliasing polyphase filter.
    """
    up = 4
    fh = fs * up
    nh = n_samples * up + 64
    amp = np.zeros(nh)
    dur = nh / fh
    t = rng.uniform(0.0, 0.3)
    while t < dur:
        phrase_end = t + float(np.clip(rng.lognormal(math.log(2.0), 0.45), 0.6, 6.0))
        phrase_gain = rng.lognormal(0.0, 0.3)
        t0 = t
        while t < phrase_end and t < dur:
            n_syl = int(rng.choice(3, p=(0.45, 0.35, 0.20))) + 1
            stress = int(rng.integers(n_syl))
            for k in range(n_syl):
                ioi = float(np.clip(rng.gamma(8.0, 1.0 / (4.5 * 8.0)), 0.09, 0.5))
                decl = 1.0 - 0.35 * min((t - t0) / max(phrase_end - t0, 1e-3), 1.0)
                a = phrase_gain * decl * (1.0 if k == stress else 0.55) * rng.lognormal(0.0, 0.25)
                d = ioi * rng.uniform(0.7, 0.95)  # syllable length
                rise = d * rng.uniform(0.2, 0.35)
                i0 = int(math.ceil(t * fh))
                i1 = min(int(t * fh + d * fh) + 1, nh)
                if i0 < i1:
                    u = np.arange(i0, i1) / fh - t
                    shape = np.where(
                        u < rise,
                        np.sin(0.5 * math.pi * np.clip(u / rise, 0.0, 1.0)) ** 2,
                        np.cos(0.5 * math.pi * np.clip((u - rise) / (d - rise), 0.0, 1.0)) ** 2,
                    )
                    amp[i0:i1] += a * shape
                t += ioi
            t += rng.exponential(0.04)  # small gap between words
        t += rng.uniform(0.2, 1.0)  # pause between phrases
    # fine-structure fluctuation (pitch / noise) and a faint background floor
    flutter = np.exp(0.12 * _lowpass_noise(nh, fh, 30.0, rng))
    amp = amp * flutter + 0.004 * np.exp(0.3 * _lowpass_noise(nh, fh, 2.0, rng))
    env = resample_poly(amp**0.6, 1, up)[:n_samples]
    return level * np.clip(env, 0.0, None)


def _lowpass_noise(n: int, fs: float, cutoff: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise with a Gaussian-shaped spectrum below ``cutoff`` Hz."""
    f = np.fft.rfftfreq(n, 1.0 / fs)
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * np.exp(-0.5 * (f / cutoff) ** 2), n)
    return x / (x.std() + 1e-12)


# ---------------------------------------------------------------------------------------------
# subjects and their EEG
# ---------------------------------------------------------------------------------------------
def temporal_response(fs: int, p1=(0.05, 0.015, 0.5), n1=(0.10, 0.02, -1.0), p2=(0.18, 0.035, 0.7),
                      length_s: float = 0.4) -> np.ndarray:
    """Causal TRF h(tau), tau = 0 .. length_s: sum of Gaussians (latency, width, amplitude)."""
    tau = np.arange(int(round(length_s * fs)) + 1) / fs
    return sum(a * np.exp(-0.5 * ((tau - m) / s) ** 2) for m, s, a in (p1, n1, p2))


def subject_model(seed: int, index: int, n_chans: int = 64, fs: int = 64, neural_gain: float = NEURAL_GAIN) -> dict:
    """The generating parameters of subject ``index`` (0-based); deterministic in (seed, index, neural_gain)."""
    r = _rng(seed, "subject", index)
    pos = electrode_positions(n_chans)
    # envelope-following response: fronto-central blob + a little individual structure
    center = (r.normal(0.0, 0.12), 0.3 + r.normal(0.0, 0.12), 0.95)
    pattern = _bump(pos, center, r.uniform(0.45, 0.7))
    for _ in range(3):
        pattern += 0.25 * r.standard_normal() * _bump(pos, r.normal(size=3) * (1, 1, 0) + (0, 0, 0.7),
                                                      r.uniform(0.3, 0.5))
    pattern /= np.sqrt(np.mean(pattern**2))
    lat = np.exp(r.normal(0.0, 0.06)) * np.exp(r.normal(0.0, 0.06, 3))  # common + per-peak jitter
    amp = np.exp(r.normal(0.0, 0.2, 3))
    peaks = [(0.05, 0.015, 0.5), (0.10, 0.02, -1.0), (0.18, 0.035, 0.7)]
    peaks = [(m * l, s * l, a * g) for (m, s, a), l, g in zip(peaks, lat, amp)]
    trf = temporal_response(fs, *peaks)
    return {
        "index": index,
        "name": subject_name(index),
        "fs": fs,
        "pos": pos,
        "pattern": pattern,
        "trf": trf,
        "trf_peaks": peaks,
        "gain": neural_gain * float(np.exp(r.normal(0.0, 0.25))),
        "pink_width": r.uniform(0.3, 0.45),
        "alpha_freq": r.uniform(8.5, 11.5),
        "alpha_amp": r.uniform(0.4, 1.2),
        "alpha_topo": _bump(pos, (r.normal(0.0, 0.15), -0.85, 0.35), r.uniform(0.4, 0.55)),
        "blink_rate": r.uniform(0.08, 0.25),  # per second
        "blink_amp": r.uniform(5.0, 10.0),
        "blink_topo": _bump(pos, (0.0, 1.0, -0.1), 0.4),
        "white": 0.15,
        "chan_gain": np.exp(r.normal(0.0, 0.1, n_chans)),
        "scale_uv": r.uniform(5.0, 15.0),
        "offset_uv": r.normal(0.0, 15.0, n_chans),
    }


def _pink(n: int, n_chans: int, fs: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n_chans) 1/f noise (power ~ 1/f), 0.5 Hz zero-phase high-pass, unit variance per column."""
    f = np.fft.rfftfreq(n, 1.0 / fs)
    shape = np.zeros_like(f)
    nz = f > 0
    shape[nz] = f[nz] ** -0.5 * f[nz] ** 2 / (f[nz] ** 2 + 0.25)
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal((n, n_chans)), axis=0) * shape[:, None], n, axis=0)
    return x / (x.std(axis=0, keepdims=True) + 1e-12)


def subject_eeg(model: dict, env: np.ndarray, level: float, rng: np.random.Generator,
                return_parts: bool = False):
    """EEG (T, C) float64 in microvolts for one listening period of ``env`` (T,), not standardized."""
    n = len(env)
    fs = model["fs"]
    pos = model["pos"]
    c = len(pos)
    e = env / level
    e = e - e.mean()
    neural = model["gain"] * np.convolve(e, model["trf"])[:n]  # causal: EEG lags the envelope
    signal = neural[:, None] * model["pattern"][None, :]
    # background: spatially smooth 1/f noise
    d2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    mix = np.exp(-d2 / (2.0 * model["pink_width"] ** 2))
    pink = _pink(n, c, fs, rng) @ mix
    pink /= np.sqrt(np.mean(pink.var(axis=0)))
    # alpha: narrow-band around alpha_freq, slowly waxing and waning
    f = np.fft.rfftfreq(n, 1.0 / fs)
    a = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * np.exp(-0.5 * ((f - model["alpha_freq"]) / 0.6) ** 2), n)
    a = a / (a.std() + 1e-12) * np.exp(0.6 * _lowpass_noise(n, fs, 0.1, rng))
    alpha = model["alpha_amp"] * a[:, None] * model["alpha_topo"][None, :]
    # eye blinks: Poisson, ~300 ms Hann-shaped bumps on frontal channels
    blink = np.zeros(n)
    for _ in range(rng.poisson(model["blink_rate"] * n / fs)):
        w = int(round(rng.uniform(0.25, 0.4) * fs))
        i0 = int(rng.integers(0, max(n - w, 1)))
        seg = np.hanning(w + 2)[1:-1] * model["blink_amp"] * rng.uniform(0.7, 1.3)
        blink[i0:i0 + w] += seg[: n - i0]
    blinks = blink[:, None] * model["blink_topo"][None, :]
    white = model["white"] * rng.standard_normal((n, c))
    x = (signal + pink + alpha + blinks + white) * model["chan_gain"][None, :]
    x -= x.mean(axis=1, keepdims=True)  # common average reference
    out = x * model["scale_uv"] + model["offset_uv"][None, :]
    if return_parts:
        return out, {"neural": neural, "signal": signal, "pink": pink, "alpha": alpha, "blinks": blinks}
    return out


# ---------------------------------------------------------------------------------------------
# corpus plan
# ---------------------------------------------------------------------------------------------
def _plan(seed, n_subjects, n_heldout, minutes, n_test_segments, segment_s, fs):
    """Which subject hears which stimulus for how long (training) and which test stimuli."""
    r = _rng(seed, "plan")
    n_rec = max(1, int(round(minutes / RECORDING_MINUTES)))
    n_pool = max(n_rec, int(math.ceil(n_subjects * n_rec / 2.0)))  # each stimulus heard by ~2 subjects
    n_books = (n_pool + 1) // 2
    pool = [f"audiobook_{k // 2 + 1}" if k % 2 == 0 else f"podcast_{k // 2 + 1}" for k in range(n_pool)]
    total = int(round(minutes * 60.0 * fs))
    recordings = {}
    for s in range(n_subjects):
        w = r.uniform(0.75, 1.25, n_rec)
        lens = np.floor(w / w.sum() * total).astype(int)
        lens[-1] = total - lens[:-1].sum()
        if lens.min() < 10 * fs // 2:
            raise ValueError(f"minutes={minutes} is too short for a recording (need >= 5 s each)")
        stims = r.choice(n_pool, n_rec, replace=False)
        recordings[subject_name(s)] = [(pool[k], int(n)) for k, n in zip(stims, lens)]
    n_all = n_subjects + n_heldout
    n_tpool = max(n_test_segments, int(math.ceil(n_all * n_test_segments / 3.0)))
    test_pool = [f"audiobook_{n_books + 1 + k}" for k in range(n_tpool)]
    tests = {}
    for s in range(n_all):
        picks = r.choice(n_tpool, n_test_segments, replace=False)
        tests[subject_name(s)] = [test_pool[k] for k in picks]
    stim_len = {}
    for recs in recordings.values():
        for name, n in recs:
            stim_len[name] = max(stim_len.get(name, 0), n)
    return recordings, tests, stim_len, test_pool


def _stimulus(seed: int, name: str, n: int, fs: int):
    """Envelope (n,) and loudness level of stimulus ``name``; deterministic in (seed, name)."""
    r = _rng(seed, "stimulus", name)
    level = float(r.uniform(0.05, 0.2))
    return speech_envelope(n, fs, r, level=level), level


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _file_mode() -> int:
    """0o666 minus the process umask: what open() would give (mkstemp makes files 0o600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to a temporary file in the same folder, then os.replace it onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _file_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _json_matrix(arr: np.ndarray, fmt: str) -> str:
    """(T, k) array -> '[[a, b], ...]' with a fixed number format (deterministic and compact)."""
    row = "[" + ", ".join([fmt] * arr.shape[1]) + "]"
    return "[" + ", ".join(row % tuple(v) for v in arr.tolist()) + "]"


def _round_eeg(x: np.ndarray) -> np.ndarray:
    """The values the test JSON holds (3 decimals, microvolts), as float32."""
    return np.round(x.astype(np.float32).astype(np.float64), 3).astype(np.float32)


def _our_files(out: Path):
    """Files of a previous demo corpus in ``out`` (the only ones overwrite=True removes)."""
    found = []
    if (out / INFO_FILE).is_file():
        found.append(out / INFO_FILE)
    d = out / SPLIT_DIR
    if d.is_dir():
        found += [p for p in d.iterdir() if p.is_file() and _FILE_RE.match(p.name)]
    for sub in (TEST_DIR, LABEL_DIR):
        d = out / sub
        if d.is_dir():
            found += [p for p in d.iterdir() if p.is_file() and re.match(r"^sub-\d+\.json$", p.name)]
    return found


# ---------------------------------------------------------------------------------------------
# main entry point
# ---------------------------------------------------------------------------------------------
@single_thread_blas()
def make_demo_corpus(out_dir="xfdata", n_subjects=8, n_heldout=2, minutes=4.0, n_test_segments=2,
                     segment_s=60.0, n_chans=64, fs=64, seed=0, overwrite=False, *,
                     measure=True, ceiling_factor=0) -> dict:
    """Write the synthetic demo corpus under ``out_dir`` and return a summary dict.

    n_subjects subjects (sub-001 ..) get ``minutes`` of training EEG each, in recordings of
    ~1.5 min split 80/10/10 in time (split_data); they and ``n_heldout`` further subjects get
    ``n_test_segments`` test segments of ``segment_s`` seconds each, from stimuli not in split_data.
    Same arguments -> byte-identical files. Refuses a non-empty ``out_dir`` unless ``overwrite``;
    then only files of a previous demo corpus are removed (see ``docs/demo_corpus.md``).

    measure: also fit the pooled linear backward model and score it on the test segments
    (~1 s). ceiling_factor > 0: also the "best r the model allows", a subject-specific ridge
    trained on ceiling_factor x ``minutes`` of freshly generated data per subject (10 is the
    documented setting; ~20-30 s for the default corpus, so off by default; also available later
    as ``model_ceiling_r(out_dir)``). Both figures go to demo_info.json and the summary.
    """
    t_start = time.perf_counter()
    n_subjects, n_heldout, n_test_segments = int(n_subjects), int(n_heldout), int(n_test_segments)
    n_chans, fs, seed = int(n_chans), int(fs), int(seed)
    minutes, segment_s = float(minutes), float(segment_s)
    if n_subjects < 1 or n_heldout < 0 or n_test_segments < 0 or n_chans < 1 or fs < 8 or seed < 0:
        raise ValueError("need n_subjects >= 1, n_heldout >= 0, n_test_segments >= 0, n_chans >= 1, "
                         "fs >= 8, seed >= 0")
    if minutes <= 0 or segment_s <= 0:
        raise ValueError("minutes and segment_s must be positive")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    # xfdata/ ships with a README.md only; that does not make it 'not empty'.
    if out.is_dir() and any(p.name != "README.md" for p in out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} already exists and is not empty; refusing to write the demo corpus into it. "
                f"Choose another out_dir, or pass overwrite=True (--overwrite=True) to replace a "
                f"previous demo corpus there.")
        for p in _our_files(out):
            p.unlink()
    for sub in (SPLIT_DIR, TEST_DIR, LABEL_DIR):
        (out / sub).mkdir(parents=True, exist_ok=True)

    recordings, tests, stim_len, test_pool = _plan(seed, n_subjects, n_heldout, minutes,
                                                  n_test_segments, segment_s, fs)
    stimuli = {name: _stimulus(seed, name, n, fs) for name, n in sorted(stim_len.items())}
    pre = int(round(TEST_PREROLL_S * fs))
    seg_n = int(round(segment_s * fs))
    used_tests = sorted({s for v in tests.values() for s in v})
    test_stimuli = {name: _stimulus(seed, name, pre + seg_n, fs) for name in used_tests}

    n_all = n_subjects + n_heldout
    models = [subject_model(seed, i, n_chans, fs, NEURAL_GAIN) for i in range(n_all)]
    n_files = 0
    nbytes = 0
    train_parts = {}  # (split, subject, stimulus) -> (eeg float32, env float32) for measuring
    for s in range(n_subjects):
        name = subject_name(s)
        for k, (stim, n) in enumerate(recordings[name]):
            env_full, level = stimuli[stim]
            env = env_full[:n]
            eeg = subject_eeg(models[s], env, level, _rng(seed, "eeg", s, k))
            eeg32 = eeg.astype(np.float32)
            env32 = env.astype(np.float32)[:, None]
            cuts = [0, int(SPLIT_FRACTIONS[0] * n), int((SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]) * n), n]
            for split, a, b in zip(("train", "val", "test"), cuts[:-1], cuts[1:]):
                train_parts[(split, name, stim)] = (eeg32[a:b], env32[a:b])
                for feat, arr in (("eeg", eeg32[a:b]), ("envelope", env32[a:b])):
                    data = _npy_bytes(arr)
                    _atomic_write(out / SPLIT_DIR / f"{split}_-_{name}_-_{stim}_-_{feat}.npy", data)
                    n_files += 1
                    nbytes += len(data)

    segments = {}  # subject -> {key: (eeg float32 as in the JSON, env float32, stimulus)}
    for s in range(n_all):
        name = subject_name(s)
        segments[name] = {}
        parts_eeg, parts_lab = [], []
        for j, stim in enumerate(tests[name]):
            env_full, level = test_stimuli[stim]
            eeg = subject_eeg(models[s], env_full, level, _rng(seed, "test_eeg", s, j))[pre:]
            env = env_full[pre:].astype(np.float32)
            eeg_r = _round_eeg(eeg)
            key = f"{name}_{j}"
            segments[name][key] = (eeg_r, env, stim)
            parts_eeg.append(f"{json.dumps(key)}: {_json_matrix(eeg_r, '%.3f')}")
            parts_lab.append(f"{json.dumps(key)}: [{_json_matrix(env[:, None], '%.9g')}, {json.dumps(stim)}]")
        for folder, parts in ((TEST_DIR, parts_eeg), (LABEL_DIR, parts_lab)):
            data = ("{" + ", ".join(parts) + "}").encode()
            _atomic_write(out / folder / f"{name}.json", data)
            n_files += 1
            nbytes += len(data)

    seen = [subject_name(i) for i in range(n_subjects)]
    heldout = [subject_name(i) for i in range(n_subjects, n_all)]
    figures = {}
    t_gen = time.perf_counter() - t_start
    if measure and n_test_segments > 0:
        figures["linear"] = _linear_reference(train_parts, segments, seen, heldout, fs)
    if ceiling_factor and n_test_segments > 0:
        figures["ceiling"] = _ceiling(seed, models, minutes, fs, ceiling_factor, segments, seen, heldout)

    params = dict(n_subjects=n_subjects, n_heldout=n_heldout, minutes=minutes,
                  n_test_segments=n_test_segments, segment_s=segment_s, n_chans=n_chans, fs=fs,
                  seed=seed, neural_gain=NEURAL_GAIN, generator_version=GENERATOR_VERSION)
    info = {
        "description": "Synthetic demo corpus (demo_corpus.py); generating model in docs/demo_corpus.md.",
        "parameters": params,
        "seen_subjects": seen,
        "heldout_subjects": heldout,
        "recordings": {k: [{"stimulus": s, "samples": n} for s, n in v] for k, v in recordings.items()},
        "test_segments": {k: {f"{k}_{j}": s for j, s in enumerate(v)} for k, v in tests.items()},
        "train_stimuli": sorted(stim_len),
        "test_stimuli": used_tests,
        "subjects": {
            m["name"]: {"neural_gain": round(m["gain"], 4),
                        "trf_peaks_s_width_amp": [[round(v, 4) for v in p] for p in m["trf_peaks"]],
                        "alpha_hz": round(m["alpha_freq"], 3), "blinks_per_s": round(m["blink_rate"], 3),
                        "scale_uv": round(m["scale_uv"], 3)}
            for m in models},
        "channel_positions_xyz": np.round(models[0]["pos"], 4).tolist(),
        "reference_figures": figures,
    }
    data = (json.dumps(info, indent=1) + "\n").encode()
    _atomic_write(out / INFO_FILE, data)
    n_files += 1
    nbytes += len(data)
    summary = {
        "out_dir": str(out),
        "split_data": str(out / SPLIT_DIR),
        "test_dir": str(out / TEST_DIR),
        "label_dir": str(out / LABEL_DIR),
        "info": str(out / INFO_FILE),
        "n_subjects": n_subjects,
        "n_heldout": n_heldout,
        "seen_subjects": seen,
        "heldout_subjects": heldout,
        "n_recordings": sum(len(v) for v in recordings.values()),
        "n_test_segments": n_all * n_test_segments,
        "n_files": n_files,
        "bytes": nbytes,
        "generation_s": round(t_gen, 2),
        "total_s": round(time.perf_counter() - t_start, 2),
    }
    if "linear" in figures:
        summary["linear_r"] = figures["linear"]["total"]
    if "ceiling" in figures:
        summary["ceiling_r"] = figures["ceiling"]["total"]
    summary["reference_figures"] = figures
    return summary


# ---------------------------------------------------------------------------------------------
# linear backward model (ridge over EEG lags 0 .. 400 ms), numpy only
# ---------------------------------------------------------------------------------------------
def _z(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std(axis=0, keepdims=True)
    return (x - x.mean(axis=0, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """The project's one Pearson function (metrics.pearson), on two 1-D series."""
    return float(pearson(np.ravel(a), np.ravel(b), dim=0))


class _RidgeStats:
    """Accumulates X'X and X'y of the lagged design X[t] = [x(t), x(t+1), .., x(t+L-1)] (T x L*C)."""

    def __init__(self, n_lags: int):
        self.L = n_lags
        self.R = None  # R[d] = sum_t x(t)' x(t+d), C x C (Toeplitz approximation of X'X blocks)
        self.c = None
        self.n = 0

    def add(self, eeg: np.ndarray, env: np.ndarray) -> None:
        x = _z(eeg).astype(np.float32)
        y = _z(env.reshape(len(env), -1)[:, :1])[:, 0].astype(np.float32)
        T, C, L = len(x), x.shape[1], self.L
        if T <= L:
            return
        if self.R is None:
            self.R = np.zeros((L, C, C))
            self.c = np.zeros((L, C))
        m = T - L + 1
        lagged = sliding_window_view(x, (L, C))[:, 0].reshape(m, L * C)  # row t: x(t), .., x(t+L-1)
        for a in range(0, m, 8192):
            b = min(a + 8192, m)
            blk = np.ascontiguousarray(lagged[a:b])  # copy of one chunk only
            self.R += (x[a:b].T @ blk).reshape(C, L, C).transpose(1, 0, 2)  # R[d] = sum_t x(t)' x(t+d)
            self.c += (y[a:b] @ blk).reshape(L, C)
        self.n += m

    def solve(self, lams) -> list[np.ndarray]:
        L, C = self.L, self.R.shape[1]
        xtx = np.empty((L * C, L * C))
        for a in range(L):
            for b in range(L):
                xtx[a * C:(a + 1) * C, b * C:(b + 1) * C] = self.R[b - a] if b >= a else self.R[a - b].T
        scale = np.trace(xtx) / (L * C)
        xty = self.c.reshape(-1)
        out = []
        for lam in lams:
            w = np.linalg.solve(xtx + lam * scale * np.eye(L * C), xty)
            out.append(w.reshape(L, C))
        return out


def ridge_predict(w: np.ndarray, eeg: np.ndarray) -> np.ndarray:
    """Backward-model output (T,) for one segment: z-score per channel, output(t) uses eeg[t .. t+L-1]
    (zero-padded at the end, so the output has the segment's length)."""
    x = _z(eeg)
    L = len(w)
    xp = np.concatenate([x, np.zeros((L - 1, x.shape[1]))])
    T = len(x)
    return sum(xp[l:l + T] @ w[l] for l in range(L))


@single_thread_blas()
def fit_ridge(train, val, fs=64, lags_s=LAGS_S, grid=_RIDGE_GRID):
    """Fit the ridge backward model on ``train`` [(eeg, env)], choosing lambda by mean r on ``val``.

    Each (eeg, env) pair is standardized on its own. Returns (w (L, C), lambda, val r).
    """
    n_lags = int(round(lags_s * fs)) + 1
    st = _RidgeStats(n_lags)
    for eeg, env in train:
        st.add(eeg, env)
    if st.R is None:
        raise ValueError("no training data longer than the decoder window")
    ws = st.solve(grid)
    if val:
        scores = [np.mean([_pearson(ridge_predict(w, e), np.ravel(y)) for e, y in val]) for w in ws]
        best = int(np.argmax(scores))
        return ws[best], grid[best], float(scores[best])
    best = len(grid) // 2
    return ws[best], grid[best], float("nan")


def _score(w, segments, seen, heldout) -> dict:
    """segments: subject -> {key: (eeg, env, stimulus)} -> challenge-style summary of Pearson r."""
    per_subject = {}
    preds = []
    for subj in sorted(segments):
        rs = []
        for key, (eeg, env, stim) in sorted(segments[subj].items()):
            p = ridge_predict(w, eeg)
            rs.append(_pearson(p, np.ravel(env)))
            preds.append((p, stim, np.ravel(env)))
        if rs:
            per_subject[subj] = float(np.mean(rs))
    # chance: predictions scored against the label of a different stimulus
    pairs = ((p, e) for i, (p, s, _) in enumerate(preds) for j, (_, s2, e) in enumerate(preds) if j > i and s2 != s)
    null = [_pearson(p[: min(len(p), len(e))], e[: min(len(p), len(e))]) for p, e in itertools.islice(pairs, 2000)]
    s_r = [per_subject[s] for s in seen if s in per_subject]
    h_r = [per_subject[s] for s in heldout if s in per_subject]
    res = {"mean": round(float(np.mean(list(per_subject.values()))), 4)}
    res["seen"] = round(float(np.mean(s_r)), 4) if s_r else None
    res["heldout"] = round(float(np.mean(h_r)), 4) if h_r else None
    if s_r and h_r:
        res["total"] = round(2.0 / 3.0 * res["seen"] + 1.0 / 3.0 * res["heldout"], 4)
    else:
        res["total"] = res["mean"]
    res["chance_sd"] = round(float(np.std(null)), 4) if null else None
    res["per_subject"] = {k: round(v, 4) for k, v in per_subject.items()}
    return res


def _linear_reference(parts, segments, seen, heldout, fs) -> dict:
    train = [v for (split, subj, _), v in sorted(parts.items()) if split == "train" and subj in seen]
    val = [v for (split, subj, _), v in sorted(parts.items()) if split == "val" and subj in seen]
    w, lam, val_r = fit_ridge(train, val, fs)
    res = {"what": "pooled (subject-independent) ridge over EEG lags 0-400 ms, trained on the train "
                   "parts of all seen subjects, lambda chosen on the val parts; Pearson r on the 60 s "
                   "test segments; total = 2/3 seen + 1/3 held-out",
           "lambda_rel": lam, "val_r": round(val_r, 4)}
    res.update(_score(w, segments, seen, heldout))
    return res


def _ceiling(seed, models, minutes, fs, factor, segments, seen, heldout) -> dict:
    """Subject-specific ridge per subject on factor x minutes of fresh data from its own model."""
    pre = int(round(TEST_PREROLL_S * fs))
    per, lams = {}, {}
    n_rec = max(1, int(round(factor * minutes / RECORDING_MINUTES)))
    n = int(round(factor * minutes * 60.0 * fs / n_rec))
    for m in models:
        name = m["name"]
        if name not in segments or not segments[name]:
            continue
        train, val = [], []
        for k in range(n_rec):
            env, level = _stimulus(seed, f"ceiling_{m['index']}_{k}", n + pre, fs)
            eeg = subject_eeg(m, env, level, _rng(seed, "ceiling_eeg", m["index"], k))[pre:]
            env = env[pre:]
            cut = int(0.9 * n)
            train.append((eeg[:cut], env[:cut]))
            val.append((eeg[cut:], env[cut:]))
        w, lam, _ = fit_ridge(train, val, fs, grid=(1e-3, 1e-2, 1e-1, 1.0))  # plenty of data: small lambda
        lams[name] = lam
        per[name] = _score(w, {name: segments[name]}, [name], [])["mean"]
    s_r = [per[s] for s in seen if s in per]
    h_r = [per[s] for s in heldout if s in per]
    res = {"what": f"subject-specific ridge (lags 0-400 ms) per subject, trained on {factor} x "
                   f"{minutes:g} min of fresh data generated from that subject's model; same test segments",
           "factor": factor,
           "mean": round(float(np.mean(list(per.values()))), 4),
           "seen": round(float(np.mean(s_r)), 4) if s_r else None,
           "heldout": round(float(np.mean(h_r)), 4) if h_r else None}
    res["total"] = round(2 / 3 * res["seen"] + 1 / 3 * res["heldout"], 4) if s_r and h_r else res["mean"]
    res["per_subject"] = per
    res["lambda_rel"] = lams
    return res


# ---------------------------------------------------------------------------------------------
# the same figures from files on disk (works on any corpus in these formats)
# ---------------------------------------------------------------------------------------------
def _read_parts(split_dir: Path):
    files = {}
    for p in sorted(split_dir.iterdir()):
        m = _FILE_RE.match(p.name)
        if m:
            files.setdefault(m.group(1, 2, 3), {})[m.group(4)] = p
    parts = {}
    for key, feats in files.items():
        if "eeg" in feats and "envelope" in feats:
            eeg = np.load(feats["eeg"])
            env = np.load(feats["envelope"])
            if eeg.shape[0] == 64 and eeg.shape[1] != 64:  # channels first
                eeg = eeg.T
            n = min(len(eeg), len(env))
            parts[key] = (eeg[:n], env[:n])
    return parts


def _read_segments(test_dir: Path, label_dir: Path):
    segments = {}
    for p in sorted(label_dir.glob("sub-*.json")):
        labels = json.loads(p.read_text())
        tp = test_dir / p.name
        eegs = json.loads(tp.read_text()) if tp.is_file() else {}
        subj = p.stem
        segments[subj] = {}
        for key, (env, stim) in labels.items():
            if key in eegs:
                segments[subj][key] = (np.asarray(eegs[key], dtype=np.float32),
                                       np.asarray(env, dtype=np.float32).reshape(-1), stim)
    return segments


@single_thread_blas()
def linear_reference_r(out_dir="xfdata", fs=64) -> dict:
    """Pooled ridge backward model (lags 0-400 ms) on ``out_dir``'s split_data, scored on its
    challenge-format test set against test_labels. Seen / held-out grouping from demo_info.json
    when present, else subjects with split_data are 'seen'. Returns the figures dict
    ({'total', 'seen', 'heldout', 'mean', 'chance_sd', 'per_subject', ...})."""
    out = Path(out_dir)
    parts = _read_parts(out / SPLIT_DIR)
    segments = _read_segments(out / TEST_DIR, out / LABEL_DIR)
    info_p = out / INFO_FILE
    if info_p.is_file():
        info = json.loads(info_p.read_text())
        seen, heldout = info["seen_subjects"], info["heldout_subjects"]
    else:
        with_train = {s for (_, s, _) in parts}
        seen = sorted(with_train)
        heldout = sorted(set(segments) - with_train)
    return _linear_reference(parts, segments, seen, heldout, fs)


@single_thread_blas()
def model_ceiling_r(out_dir="xfdata", factor=10) -> dict:
    """'Best r the model allows' for the demo corpus in ``out_dir`` (re-generates its subjects from
    demo_info.json's parameters): a subject-specific ridge per subject trained on ``factor`` x the
    subject's minutes of fresh data, scored on the corpus's test segments."""
    out = Path(out_dir)
    info = json.loads((out / INFO_FILE).read_text())
    p = info["parameters"]
    if p.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(f"{out} was made by demo generator version {p.get('generator_version')}, "
                         f"this is version {GENERATOR_VERSION}")
    models = [subject_model(p["seed"], i, p["n_chans"], p["fs"], p["neural_gain"])
              for i in range(p["n_subjects"] + p["n_heldout"])]
    segments = _read_segments(out / TEST_DIR, out / LABEL_DIR)
    return _ceiling(p["seed"], models, p["minutes"], p["fs"], factor, segments,
                    info["seen_subjects"], info["heldout_subjects"])


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _parse_args(argv):
    kw = {}
    for a in argv:
        if a in ("-h", "--help"):
            print(__doc__)
            print("Options (--key=value): out_dir, n_subjects, n_heldout, minutes, n_test_segments, "
                  "segment_s, n_chans, fs, seed, overwrite, measure, ceiling_factor")
            sys.exit(0)
        if not a.startswith("--") or "=" not in a:
            raise SystemExit(f"demo_corpus.py: expected --key=value, got {a!r}")
        k, v = a[2:].split("=", 1)
        k = k.replace("-", "_")
        try:
            kw[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            kw[k] = v
    return kw


def main(argv=None) -> int:
    kw = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        summary = make_demo_corpus(**kw)
    except (FileExistsError, ValueError, TypeError) as e:
        print(f"demo_corpus.py: {e}", file=sys.stderr)
        return 2
    figs = summary.pop("reference_figures")
    print(json.dumps(summary, indent=1))
    for name, f in figs.items():
        print(f"{name}: total r = {f['total']} (seen {f['seen']}, held-out {f['heldout']}, mean {f['mean']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
