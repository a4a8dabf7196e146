"""Built-in synthetic demo corpus: EEG that tracks a speech-like envelope, in the challenge's formats.

Lets users without data run training, testing and scoring end to end. The generating model is
documented, with its math, in ``docs/demo_corpus.md``. In short, for every subject s:

    eeg_s(t) = CAR[ g_s * a_s * (h_s * e~)(t) + pink_s(t) + alpha_s(t) + blinks_s(t) + white_s(t) ]
               * scale_s + offset_s

with e~ the (level-normalized, mean-removed) stimulus envelope, h_s a P1-N1-P2 temporal response
function, a_s a fronto-central spatial pattern, and a spatially correlated 1/f background,
an occipital alpha rhythm, frontal eye blinks and white sensor noise.

Files written under ``out_dir``, in the formats of the ICASSP 2023 Auditory EEG Decoding Challenge
(KU Leuven; task 2, envelope regression): its SparrKULee ``split_data`` files, test set and labels:

    split_data/{split}_-_{subject}_-_{stimulus}_-_{eeg|envelope}.npy   (T, 64) / (T, 1) float32, raw
    auditory-eeg-test-dataset/sub-XXX.json   {"sub-XXX_i": [[64 floats] x T], ...}  (raw EEG)
    test_labels/sub-XXX.json                 {"sub-XXX_i": [[[e0], [e1], ...], "stimulus"], ...}
    demo_info.json                           parameters, subjects, measured reference figures

API: ``make_demo_corpus(...)``; the reference figures of a corpus on disk are ``demo_reference``'s
``linear_reference_r(out_dir)`` (a pooled ridge backward model scored on the challenge-format test
set of any corpus) and ``model_ceiling_r(out_dir)`` (a subject-specific ridge trained on ``factor``
x more data generated from the same model).
CLI: ``python demo_corpus.py [--demo_dir=xfdata] [--demo_subjects=8] [--demo_minutes=1.0] [--demo_seed=0]
[--overwrite]`` (the keys of program "demo" in config.py; ``--help`` lists them).
"""
from __future__ import annotations

import io
import json
import math
import sys
import time
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.signal import resample_poly

import cli
from EEG_Dataset import SEP, SPLIT_FRACTIONS, SPLITS
from fileio import atomic_write_bytes, read_json
from outputs import JOURNAL, LOCK_FILE, STAGING_PREFIX, FolderLock, OutputError, Staging, recover

GENERATOR_VERSION = 1

# Gain of the envelope-following response relative to the unit-variance 1/f background. Tuned so that
# the pooled linear backward model scores r ~ 0.2 on the 60 s test segments of the default corpus.
NEURAL_GAIN = 0.08

SPLIT_DIR = "split_data"
TEST_DIR = "auditory-eeg-test-dataset"
LABEL_DIR = "test_labels"
INFO_FILE = "demo_info.json"
RECORDING_MINUTES = 1.5  # typical length of one training recording
TEST_PREROLL_S = 2.0  # a test segment is cut from a longer listening period: 2 s of context before it
SUBFOLDERS = (SPLIT_DIR, TEST_DIR, LABEL_DIR)
# The corpus shape train.py's demo uses besides its three config keys (demo_subjects,
# demo_minutes, demo_seed): the arguments ``ensure_demo_corpus`` builds and checks with.
DEMO_SHAPE = dict(n_heldout=2, n_test_segments=2, segment_s=60.0, n_chans=64, fs=64, measure=True)
# The config key behind each corpus parameter, for messages.
CONFIG_KEYS = {"n_subjects": "demo_subjects", "minutes": "demo_minutes", "seed": "demo_seed"}


# ---------------------------------------------------------------------------------------------
# random streams: one independent, reproducible stream per (seed, purpose, indices)
# ---------------------------------------------------------------------------------------------
def random_stream(seed: int, *keys) -> np.random.Generator:
    """The generator of one purpose (a string) and its indices under ``seed``; keys are hashed with crc32."""
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
def synthetic_speech_envelope(n_samples: int, fs: int, rng: np.random.Generator, level: float = 1.0) -> np.ndarray:
    """(n_samples,) float64, non-negative speech-like envelope at ``fs`` Hz, generated (not computed
    from audio: that is envelope.speech_envelope, for real recordings).

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
    r = random_stream(seed, "subject", index)
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
    peaks = [(m * k, s * k, a * g) for (m, s, a), k, g in zip(peaks, lat, amp, strict=True)]
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
    r = random_stream(seed, "plan")
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
        recordings[subject_name(s)] = [(pool[k], int(n)) for k, n in zip(stims, lens, strict=True)]
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


def stimulus_envelope(seed: int, name: str, n: int, fs: int):
    """Envelope (n,) and loudness level of stimulus ``name``; deterministic in (seed, name)."""
    r = random_stream(seed, "stimulus", name)
    level = float(r.uniform(0.05, 0.2))
    return synthetic_speech_envelope(n, fs, r, level=level), level


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
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


def _is_split_file(name: str) -> bool:
    """A split_data file name: {split}_-_{subject}_-_{stimulus}_-_{eeg|envelope}.npy."""
    parts = name.split(SEP)
    return len(parts) == 4 and parts[0] in SPLITS and parts[3] in ("eeg.npy", "envelope.npy") and all(parts)


def _our_files(out: Path) -> list[Path]:
    """Files of a previous demo corpus in ``out`` by their names (what overwrite=True removes)."""
    found = []
    if (out / INFO_FILE).is_file():
        found.append(out / INFO_FILE)
    d = out / SPLIT_DIR
    if d.is_dir():
        found += [p for p in d.iterdir() if p.is_file() and _is_split_file(p.name)]
    for sub in (TEST_DIR, LABEL_DIR):
        d = out / sub
        if d.is_dir():
            found += [p for p in d.iterdir() if p.is_file() and p.name.startswith("sub-") and p.suffix == ".json"
                      and p.stem[4:].isdigit()]
    return found


def _cuts(n: int) -> list[int]:
    """Bounds of the train/val/test parts of an n-sample recording: the field's fractions with
    floored cut points (time_split rounds them), so the same arguments keep giving the same files."""
    return [0, int(SPLIT_FRACTIONS[0] * n), int((SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]) * n), n]


def _npy_size(shape) -> int:
    """Bytes of the .npy file np.save writes for a float32 array of ``shape``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return len(buf.getvalue()) + 4 * math.prod(shape)


# ---------------------------------------------------------------------------------------------
# what a complete corpus is: demo_info.json, written last, lists every file with its size
# ---------------------------------------------------------------------------------------------
def _corpus_args(n_subjects, minutes, seed, n_heldout, n_test_segments, segment_s, n_chans, fs) -> dict:
    """The arguments that decide a corpus's files, as the types demo_info.json records them."""
    return dict(n_subjects=int(n_subjects), n_heldout=int(n_heldout), minutes=float(minutes),
                n_test_segments=int(n_test_segments), segment_s=float(segment_s), n_chans=int(n_chans),
                fs=int(fs), seed=int(seed))


def _params(args: dict) -> dict:
    """demo_info.json's ``parameters``: equal parameters, byte-identical files."""
    return dict(args, neural_gain=NEURAL_GAIN, generator_version=GENERATOR_VERSION)


def _planned_files(args: dict) -> dict:
    """{path relative to out_dir: size in bytes, None where only generating tells} of every file a
    build with ``args`` writes, demo_info.json aside."""
    recordings, _, _, _ = _plan(args["seed"], args["n_subjects"], args["n_heldout"], args["minutes"],
                                args["n_test_segments"], args["segment_s"], args["fs"])
    files = {}
    for name, recs in recordings.items():
        for stim, n in recs:
            cuts = _cuts(n)
            for split, a, b in zip(SPLITS, cuts[:-1], cuts[1:], strict=True):
                stem = f"{SPLIT_DIR}/{split}{SEP}{name}{SEP}{stim}{SEP}"
                files[f"{stem}eeg.npy"] = _npy_size((b - a, args["n_chans"]))
                files[f"{stem}envelope.npy"] = _npy_size((b - a, 1))
    for s in range(args["n_subjects"] + args["n_heldout"]):
        for sub in (TEST_DIR, LABEL_DIR):
            files[f"{sub}/{subject_name(s)}.json"] = None
    return files


def _read_info(out: Path):
    """out_dir's demo_info.json: the dict, None when there is none, {} when it is unreadable."""
    if not (out / INFO_FILE).exists():
        return None
    try:
        info = read_json(out / INFO_FILE)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _listed_files(info) -> set:
    """The files (relative paths) a demo_info.json says its build wrote: its ``files``; for one
    written before it listed them, the names its recordings and subjects give."""
    if not info:
        return set()
    if isinstance(info.get("files"), dict):
        return set(info["files"])
    listed = set()
    for name, recs in (info.get("recordings") or {}).items():
        for rec in recs:
            listed |= {f"{SPLIT_DIR}/{split}{SEP}{name}{SEP}{rec['stimulus']}{SEP}{feat}.npy"
                       for split in SPLITS for feat in ("eeg", "envelope")}
    for name in [*(info.get("seen_subjects") or []), *(info.get("heldout_subjects") or [])]:
        listed |= {f"{TEST_DIR}/{name}.json", f"{LABEL_DIR}/{name}.json"}
    return listed


def _present_files(out: Path) -> dict:
    """{path relative to out_dir: size} of every file in the three corpus subfolders."""
    found = {}
    for sub in SUBFOLDERS:
        if (out / sub).is_dir():
            found.update({f"{sub}/{p.name}": p.stat().st_size for p in sorted((out / sub).iterdir()) if p.is_file()})
    return found


def _planned_present(present: dict, planned: dict) -> set:
    """The present files that a build with these arguments writes, by name and (for .npy) size:
    the leftovers of a build that stopped before demo_info.json. JSON files count only beside such
    .npy files, since a challenge test set of the user's has the same names."""
    ours = {rel for rel, size in present.items() if rel in planned and planned[rel] in (None, size)}
    return ours if any(rel.startswith(f"{SPLIT_DIR}/") for rel in ours) else set()


class CorpusState(NamedTuple):
    """What a demo folder holds compared with the corpus some arguments build (``corpus_state``)."""

    state: str  # 'complete', 'absent', 'rebuild', 'foreign' or 'blocked'
    reason: str  # one line: why it is not complete ('' when it is)
    ours: set  # files (relative paths) of a demo build found there: what a rebuild may remove


def _info_problem(out: Path, info, args: dict) -> str:
    """Why the corpus that ``info`` (out_dir's demo_info.json) describes is not the complete corpus
    of ``args``; '' when it is."""
    where = f"the demo corpus in {out}/"
    if not info:
        return f"{where} is incomplete ({INFO_FILE} is unreadable)"
    was, now = info.get("parameters") or {}, _params(args)
    changed = [f"{CONFIG_KEYS.get(k, k)}={was.get(k)!r} (now {now[k]!r})" for k in now if was.get(k) != now[k]]
    if changed:
        return f"{where} was built with {', '.join(changed)}"
    if not isinstance(info.get("files"), dict):
        return f"{where} was built by an older demo_corpus.py ({INFO_FILE} lists no files)"
    for rel, size in sorted(info["files"].items()):
        path = out / rel
        if not path.is_file():
            return f"{where} is incomplete ({rel} is missing)"
        if path.stat().st_size != size:
            return f"{where} is incomplete ({rel} has {path.stat().st_size} bytes, {INFO_FILE} says {size})"
    return ""


def corpus_state(out_dir, n_subjects, minutes, seed, **shape) -> CorpusState:
    """Compare ``out_dir`` with the corpus ``make_demo_corpus`` builds from these arguments
    (``shape``: its other corpus arguments, DEMO_SHAPE's by default). Changes nothing. States:

    complete  demo_info.json has these parameters and every file it lists is there at its size;
    absent    no demo_info.json and no file in the corpus subfolders;
    rebuild   a demo corpus (demo_info.json says so, or every file is one this build writes) that is
              incomplete or of other parameters, or a build's unfinished commit (a journal, which
              outputs.recover finishes under the lock before the state is taken again); ``reason``
              says which;
    foreign   no demo_info.json, and the subfolders hold files no demo build wrote: the user's data;
    blocked   a demo corpus to rebuild, but its subfolders also hold a file no demo build wrote.
    """
    out = Path(out_dir)
    shape = {k: v for k, v in {**DEMO_SHAPE, **shape}.items() if k != "measure"}
    args = _corpus_args(n_subjects, minutes, seed, **shape)
    if (out / JOURNAL).exists():
        return CorpusState("rebuild", f"the demo corpus in {out}/ is incomplete (a build was interrupted while "
                                      "moving its files into place)", set())
    info, present = _read_info(out), _present_files(out)
    if info is None and not present:
        return CorpusState("absent", f"no demo corpus in {out}/", set())
    problem = _info_problem(out, info, args) if info is not None else ""
    if info is not None and not problem:
        return CorpusState("complete", "", _listed_files(info))
    ours = _listed_files(info) | _planned_present(present, _planned_files(args))
    foreign = sorted(set(present) - ours)
    if info is None and foreign:
        return CorpusState("foreign", f"{out / foreign[0]} is not a file of the demo corpus ({out / INFO_FILE} does "
                                      "not exist); choose another --demo_dir, or give your data as --data_dir", ours)
    if info is None:
        problem = f"the demo corpus in {out}/ is incomplete (no {INFO_FILE}: its build was interrupted)"
    if foreign:
        return CorpusState("blocked", f"{problem}, but {out / foreign[0]} is not one of its files; move it away "
                                      "or choose another --demo_dir", ours)
    return CorpusState("rebuild", problem, ours)


# ---------------------------------------------------------------------------------------------
# main entry point
# ---------------------------------------------------------------------------------------------
def _check_corpus_args(n_subjects, n_heldout, n_test_segments, n_chans, fs, seed, minutes, segment_s) -> None:
    """Refuse corpus sizes the generator cannot honour, before anything is written to disk."""
    if n_subjects < 1 or n_heldout < 0 or n_test_segments < 0 or n_chans < 1 or fs < 8 or seed < 0:
        raise ValueError("need n_subjects >= 1, n_heldout >= 0, n_test_segments >= 0, n_chans >= 1, "
                         "fs >= 8, seed >= 0")
    if minutes <= 0 or segment_s <= 0:
        raise ValueError("minutes and segment_s must be positive")


def _is_machinery(name: str) -> bool:
    """Names that never make a demo folder 'not empty': the README that xfdata/ ships with, the
    lock, and the journal and staging folders of a build."""
    return name in ("README.md", LOCK_FILE, JOURNAL) or name.startswith(STAGING_PREFIX)


def _check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is not a folder, or that is not empty unless ``overwrite``. Changes nothing."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if not overwrite and out.is_dir() and any(not _is_machinery(p.name) for p in out.iterdir()):
        raise FileExistsError(
            f"{out} already exists and is not empty; refusing to write the demo corpus into it. "
            f"Choose another out_dir, or pass overwrite=True (--overwrite=True) to replace a "
            f"previous demo corpus there.")


def _demo_lock(out: Path) -> FolderLock:
    """The lock (out/.lock) a build holds from its first check to its demo_info.json."""
    return FolderLock(out, busy="building the demo corpus in this folder",
                      hint="wait for it to finish, then run this command again", error=OutputError)


def _write_split_data(out: Path, seed: int, n_subjects: int, recordings: dict, stimuli: dict, models: list):
    """Generate and write every training recording of the seen subjects as split_data files.

    Returns (parts, files written, bytes written); parts are (split, subject, stimulus, eeg float32,
    env float32) exactly as read back from split_data, so the reference figures see what users load.
    """
    n_files = 0
    nbytes = 0
    train_parts = []
    for s in range(n_subjects):
        name = subject_name(s)
        for k, (stim, n) in enumerate(recordings[name]):
            env_full, level = stimuli[stim]
            env = env_full[:n]
            eeg = subject_eeg(models[s], env, level, random_stream(seed, "eeg", s, k))
            eeg32 = eeg.astype(np.float32)
            env32 = env.astype(np.float32)[:, None]
            cuts = _cuts(n)
            for split, a, b in zip(SPLITS, cuts[:-1], cuts[1:], strict=True):
                train_parts.append((split, name, stim, eeg32[a:b], env32[a:b]))
                for feat, arr in (("eeg", eeg32[a:b]), ("envelope", env32[a:b])):
                    data = _npy_bytes(arr)
                    atomic_write_bytes(out / SPLIT_DIR / f"{split}{SEP}{name}{SEP}{stim}{SEP}{feat}.npy", data)
                    n_files += 1
                    nbytes += len(data)
    return train_parts, n_files, nbytes


def _write_test_set(out: Path, seed: int, n_all: int, tests: dict, test_stimuli: dict, models: list, pre: int):
    """Generate every subject's test segments and write them in the challenge formats (EEG JSON and
    label JSON per subject); ``pre`` samples of lead-in are generated and dropped, so a segment
    starts mid-listening as a real one does.

    Returns (segments, files written, bytes written); segments maps a segment id to (eeg float32 as
    in the JSON, env float32, stimulus), the values the reference figures score.
    """
    n_files = 0
    nbytes = 0
    segments = {}
    for s in range(n_all):
        name = subject_name(s)
        parts_eeg, parts_lab = [], []
        for j, stim in enumerate(tests[name]):
            env_full, level = test_stimuli[stim]
            eeg = subject_eeg(models[s], env_full, level, random_stream(seed, "test_eeg", s, j))[pre:]
            env = env_full[pre:].astype(np.float32)
            eeg_r = _round_eeg(eeg)
            key = f"{name}_{j}"
            segments[key] = (eeg_r, env, stim)
            parts_eeg.append(f"{json.dumps(key)}: {_json_matrix(eeg_r, '%.3f')}")
            parts_lab.append(f"{json.dumps(key)}: [{_json_matrix(env[:, None], '%.9g')}, {json.dumps(stim)}]")
        for folder, parts in ((TEST_DIR, parts_eeg), (LABEL_DIR, parts_lab)):
            data = ("{" + ", ".join(parts) + "}").encode()
            atomic_write_bytes(out / folder / f"{name}.json", data)
            n_files += 1
            nbytes += len(data)
    return segments, n_files, nbytes


def _demo_info(params: dict, seen: list, heldout: list, recordings: dict, tests: dict, train_stimuli: list,
               test_stimuli: list, models: list, figures: dict, files: dict) -> dict:
    """The demo_info.json content: parameters, the corpus plan, each subject's generating model
    parameters and the reference figures, so users can compare their scores with what the
    corpus allows; and every file with its size, so a reader can tell a complete corpus."""
    return {
        "description": "Synthetic demo corpus (demo_corpus.py); generating model in docs/demo_corpus.md.",
        "parameters": params,
        "seen_subjects": seen,
        "heldout_subjects": heldout,
        "recordings": {k: [{"stimulus": s, "samples": n} for s, n in v] for k, v in recordings.items()},
        "test_segments": {k: {f"{k}_{j}": s for j, s in enumerate(v)} for k, v in tests.items()},
        "train_stimuli": train_stimuli,
        "test_stimuli": test_stimuli,
        "subjects": {
            m["name"]: {"neural_gain": round(m["gain"], 4),
                        "trf_peaks_s_width_amp": [[round(v, 4) for v in p] for p in m["trf_peaks"]],
                        "alpha_hz": round(m["alpha_freq"], 3), "blinks_per_s": round(m["blink_rate"], 3),
                        "scale_uv": round(m["scale_uv"], 3)}
            for m in models},
        "channel_positions_xyz": np.round(models[0]["pos"], 4).tolist(),
        "reference_figures": figures,
        "files": files,
    }


def make_demo_corpus(out_dir="xfdata", n_subjects=8, n_heldout=2, minutes=1.0, n_test_segments=2,
                     segment_s=60.0, n_chans=64, fs=64, seed=0, overwrite=False, *,
                     measure=True, ceiling_factor=0) -> dict:
    """Write the synthetic demo corpus under ``out_dir`` and return a summary dict.

    n_subjects subjects (sub-001 ..) get ``minutes`` of training EEG each, in recordings of
    ~1.5 min split 80/10/10 in time (split_data); they and ``n_heldout`` further subjects get
    ``n_test_segments`` test segments of ``segment_s`` seconds each, from stimuli not in split_data.
    Same arguments -> byte-identical files. Refuses a non-empty ``out_dir`` unless ``overwrite``;
    then only files of a previous demo corpus are removed (see ``docs/demo_corpus.md``). The build
    holds ``out_dir/.lock`` throughout (a second build there stops at once, naming the pid),
    writes into a staging folder, moves the files into place and writes demo_info.json last.

    measure: also fit the pooled linear backward model and score it on the test segments
    (~5 s). ceiling_factor > 0: also the "best r the model allows", a subject-specific ridge
    trained on ceiling_factor x ``minutes`` of freshly generated data per subject (10 is the
    documented setting; minutes for the default corpus, so off by default; also available later
    as ``demo_reference.model_ceiling_r(out_dir)``). Both figures go to demo_info.json and the summary.
    """
    args = _corpus_args(n_subjects, minutes, seed, n_heldout, n_test_segments, segment_s, n_chans, fs)
    _check_corpus_args(**args)
    out = Path(out_dir)
    _check_out_dir(out, overwrite)  # before anything is touched
    with _demo_lock(out):
        recover(out)  # finish the commit of a killed build, drop its staging folder
        _check_out_dir(out, overwrite)
        remove = set()
        if overwrite:
            remove = {str(p.relative_to(out)) for p in _our_files(out)} | _listed_files(_read_info(out))
        return _build(out, args, remove, measure, ceiling_factor)


def ensure_demo_corpus(out_dir, n_subjects, minutes, seed, say=print, **shape) -> bool:
    """Make ``out_dir`` hold the complete demo corpus of these arguments (``shape``: the other
    corpus arguments and ``measure``, DEMO_SHAPE's by default): build it when it is absent,
    incomplete or of other parameters, removing only files of a demo build; ``say`` gets one line
    saying why. Returns whether it built. Raises OutputError naming the folder and pid while another
    process builds there, and naming a file when the corpus subfolders hold one no demo build wrote."""
    shape = {**DEMO_SHAPE, **shape}
    measure = shape.pop("measure")
    args = _corpus_args(n_subjects, minutes, seed, **shape)
    _check_corpus_args(**args)
    out = Path(out_dir)
    state = corpus_state(out, n_subjects, minutes, seed, **shape)
    if state.state == "complete":
        return False
    if state.state in ("foreign", "blocked"):
        raise OutputError(state.reason)
    with _demo_lock(out):
        recover(out)
        state = corpus_state(out, n_subjects, minutes, seed, **shape)  # another build may have finished
        if state.state == "complete":
            return False
        if state.state in ("foreign", "blocked"):
            raise OutputError(state.reason)
        verb = "rebuilding" if state.state == "rebuild" else "building"
        say(f"{state.reason}: {verb} it ({args['n_subjects']} subjects x {args['minutes']:g} min, seed {args['seed']})")
        _build(out, args, state.ours, measure, 0)
    return True


def _build(out: Path, args: dict, remove: set, measure: bool, ceiling_factor) -> dict:
    """Generate the corpus of ``args`` into a staging folder inside ``out`` (held under its lock),
    then commit it: the old files ``remove`` lists and the old demo_info.json go, the new files move
    into place, and the new demo_info.json, listing them, is written last. Returns the summary."""
    t_start = time.perf_counter()
    seed, n_subjects, n_heldout, fs = args["seed"], args["n_subjects"], args["n_heldout"], args["fs"]
    recordings, tests, stim_len, test_pool = _plan(seed, n_subjects, n_heldout, args["minutes"],
                                                  args["n_test_segments"], args["segment_s"], fs)
    stimuli = {name: stimulus_envelope(seed, name, n, fs) for name, n in sorted(stim_len.items())}
    pre = int(round(TEST_PREROLL_S * fs))
    seg_n = int(round(args["segment_s"] * fs))
    used_tests = sorted({s for v in tests.values() for s in v})
    test_stimuli = {name: stimulus_envelope(seed, name, pre + seg_n, fs) for name in used_tests}

    n_all = n_subjects + n_heldout
    models = [subject_model(seed, i, args["n_chans"], fs, NEURAL_GAIN) for i in range(n_all)]
    seen = [subject_name(i) for i in range(n_subjects)]
    heldout = [subject_name(i) for i in range(n_subjects, n_all)]
    figures = {}
    with Staging(out) as stage:
        train_parts, n_train_files, train_bytes = _write_split_data(stage.stage, seed, n_subjects, recordings,
                                                                    stimuli, models)
        segments, n_test_files, test_bytes = _write_test_set(stage.stage, seed, n_all, tests, test_stimuli,
                                                             models, pre)
        t_gen = time.perf_counter() - t_start
        if (measure or ceiling_factor) and args["n_test_segments"] > 0:
            # imported here, not at the top: demo_reference imports this module's generator
            from demo_reference import linear_reference, model_ceiling
            if measure:
                figures["linear"] = linear_reference(sorted(train_parts, key=lambda p: p[:3]), segments, seen, fs)
            if ceiling_factor:
                figures["ceiling"] = model_ceiling(seed, models, args["minutes"], fs, ceiling_factor, segments,
                                                   seen)
        files = {rel: (stage.stage / rel).stat().st_size for rel in stage.files()}
        info = _demo_info(_params(args), seen, heldout, recordings, tests, sorted(stim_len), used_tests, models,
                          figures, files)
        try:
            stage.commit(remove=sorted(set(remove) | {INFO_FILE}))
        except BaseException:
            if (out / JOURNAL).is_file():  # the journal names the staged files: keep them for the next recover
                stage.stage = None
            raise
    for sub in SUBFOLDERS:
        (out / sub).mkdir(exist_ok=True)
    data = (json.dumps(info, indent=1) + "\n").encode()
    atomic_write_bytes(out / INFO_FILE, data)  # last: only now is the corpus complete
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
        "n_test_segments": n_all * args["n_test_segments"],
        "n_files": n_train_files + n_test_files + 1,
        "bytes": train_bytes + test_bytes + len(data),
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
# CLI: the config keys of program "demo" (config.py)
# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    cfg, _ = cli.parse_or_exit(argv, program="demo")
    try:
        summary = make_demo_corpus(out_dir=cfg["demo_dir"], n_subjects=cfg["demo_subjects"],
                                   minutes=cfg["demo_minutes"], seed=cfg["demo_seed"], overwrite=cfg["overwrite"])
    except (OSError, ValueError, TypeError, OutputError) as e:
        print(f"demo_corpus.py: {e}", file=sys.stderr)
        return 2
    figs = summary.pop("reference_figures")
    print(json.dumps(summary, indent=1))
    for name, f in figs.items():
        print(f"{name}: total r = {f['total']} (seen {f['seen']}, held-out {f['heldout']}, mean {f['mean']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
