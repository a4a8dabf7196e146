"""Read the field's EEG/envelope formats, split and standardize them, and window them for training.

Formats (detected from what a folder contains, see ``detect_format``):
  split_data  SparrKULee / challenge files ``{split}_-_{subject}_-_{stimulus}_-_{feature}.npy``
              (feature ``eeg`` (T, C) or ``envelope`` (T, 1)); memory-mapped, never loaded whole.
  npz         DTU-style trials ``<prefix>_<subject>_<trial>.npz`` with keys ``eeg`` and ``envelope``;
              ``DTU_S3_004.npz`` is subject ``S3``, recording ``DTU_S3_004``.
  challenge   a test set of ``sub-XXX.json`` files ``{segment_id: [[C floats] x T]}``, without labels;
              labels (when given) ``{segment_id: [[[e0], [e1], ...], stimulus]}``; read by ``challenge``,
              which also writes, reads and scores predictions.
  sparrkulee  SparrKULee as downloaded (the dataset root, or its ``derivatives/`` folder); read by
              ``sparrkulee``, lazily (``LazyEEG``), never loaded whole. Subject ``sub-XXX``,
              recording ``sub-XXX_-_ses-YYY_-_<stimulus>``.

Every reader yields ``Recording(subject, rec_id, eeg (T, C) float32, envelope (T, 1) float32 or
None, fs=64, path, split)`` (``recording``); eeg may be a memory map or a ``LazyEEG`` view (sliced
lazily, read with ``np.asarray``). ``load_corpus`` then splits each recording (split_data keeps its own
train/val/test; everything else is cut in time 80/10/10) and standardizes each recording's EEG
(per channel) and envelope with the mean and std of *that recording's train part* - whatever the
files claim, because the field's split scripts save unstandardized arrays by mistake.

``DataError``, ``Recording``, ``FS``, ``SEP`` and ``natural_key`` are defined in ``recording`` and
importable from here as well.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from challenge import read_challenge_folder
from recording import (
    FS,
    SEP,
    DataError,
    Recording,
    as_eeg,
    as_envelope,
    check_dtype,
    check_finite,
    load_npy,
    match_lengths,
    natural_key,
)
from sparrkulee import derivatives_folder, read_sparrkulee

SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # the field's per-recording split in time
TIME_FOLDS = 10  # time_fold k in 0..9 rotates that split by k tenths (see time_split)


# --------------------------------------------------------------------------- checks


def _check_channels(recordings: Sequence[Recording], n_chans: int | None = None) -> int:
    """All recordings must have one channel count (``n_chans`` if given). Returns it."""
    if not recordings:
        raise DataError("no recordings to check")
    ref = recordings[0]
    want = n_chans if n_chans is not None else ref.eeg.shape[1]
    for rec in recordings:
        if rec.eeg.shape[1] != want:
            origin = f"the expected {n_chans}" if n_chans is not None else f"{want} in {ref.path}"
            raise DataError(
                f"{rec.path}: EEG has {rec.eeg.shape[1]} channels, but {origin}; "
                "all recordings must have the same channels"
            )
    return want


# --------------------------------------------------------------------------- readers

_SPLIT_RE = re.compile(r"^(train|val|test)_-_(.+?)_-_(.+)_-_([A-Za-z0-9]+)\.npy$")
_NPZ_SUBJECT_RE = re.compile(r"^(?:.*?_)?(S\d+|sub-\w+?)_(\d+)$")


def detect_format(folder) -> str:
    """'split_data', 'npz', 'challenge' or 'sparrkulee', from what ``folder`` holds; DataError otherwise.

    'sparrkulee': ``folder`` is a SparrKULee root (holds ``derivatives/``) or its derivatives
    folder (see ``read_sparrkulee``); checked after the file-based formats."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder does not exist")
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    if any(_SPLIT_RE.match(n) and n.endswith("_-_eeg.npy") for n in names):
        return "split_data"
    if any(n.endswith(".npz") for n in names):
        return "npz"
    if any(n.startswith("sub-") and n.endswith(".json") for n in names):
        return "challenge"
    if derivatives_folder(folder) is not None:
        return "sparrkulee"
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "") if names else "nothing"
    raise DataError(
        f"{folder}: no recognizable EEG data (found {shown}). Expected split_data files "
        "'{split}_-_{subject}_-_{stimulus}_-_eeg.npy' + '..._-_envelope.npy', DTU-style "
        "'*_S<n>_<trial>.npz' with keys eeg/envelope, a challenge test set of 'sub-XXX.json', "
        "or SparrKULee derivatives 'derivatives/preprocessed_eeg/sub-*/ses-*/*_eeg.npy'"
    )


def read_split_data(folder) -> list[Recording]:
    """SparrKULee / challenge split_data: one Recording per (split, subject, stimulus), memory-mapped."""
    folder = Path(folder)
    groups: dict[tuple[str, str, str], dict[str, Path]] = {}
    for p in sorted(folder.glob("*.npy")):
        m = _SPLIT_RE.match(p.name)
        if m:
            split, subject, stimulus, feature = m.groups()
            groups.setdefault((split, subject, stimulus), {})[feature] = p
    recs = []
    for (split, subject, stimulus), files in sorted(groups.items()):
        if "eeg" not in files:
            raise DataError(f"{next(iter(files.values()))}: no matching '_-_eeg.npy' file for this recording")
        if "envelope" not in files:
            raise DataError(f"{files['eeg']}: no matching '_-_envelope.npy' file for this recording")
        eeg = load_npy(files["eeg"])
        env = load_npy(files["envelope"])
        eeg = as_eeg(eeg, files["eeg"])
        env = as_envelope(env, files["envelope"])
        eeg, env = match_lengths(eeg, env, files["eeg"], files["envelope"])
        check_finite(eeg, files["eeg"], "EEG")
        check_finite(env, files["envelope"], "envelope")
        recs.append(Recording(subject, f"{subject}{SEP}{stimulus}", eeg, env, FS, str(files["eeg"]), split))
    if not recs:
        raise DataError(f"{folder}: no split_data recordings found")
    return recs


def read_npz_folder(folder) -> list[Recording]:
    """DTU-style ``*.npz`` trials with keys ``eeg`` (T, C) and ``envelope`` (T, 1)."""
    folder = Path(folder)
    recs = []
    for p in sorted(folder.glob("*.npz")):
        m = _NPZ_SUBJECT_RE.match(p.stem)
        if not m:
            raise DataError(
                f"{p}: cannot tell the subject from the file name; expected e.g. 'DTU_S3_004.npz' "
                "(<prefix>_<subject>_<trial>.npz, subject like S3 or sub-003)"
            )
        try:
            with np.load(p, allow_pickle=False) as z:
                missing = {"eeg", "envelope"} - set(z.files)
                if missing:
                    raise DataError(f"{p}: missing key(s) {sorted(missing)}; found {z.files}")
                check_dtype(z["eeg"], p, "eeg")
                check_dtype(z["envelope"], p, "envelope")
                eeg = np.asarray(z["eeg"], dtype=np.float32)
                env = np.asarray(z["envelope"], dtype=np.float32)
        except DataError:
            raise
        except Exception as exc:  # re-raised with the file named
            raise DataError(f"{p}: cannot read as an .npz archive ({exc})") from exc
        eeg = as_eeg(eeg, p)
        env = as_envelope(env, p)
        eeg, env = match_lengths(eeg, env, p)
        check_finite(eeg, p, "EEG")
        check_finite(env, p, "envelope")
        recs.append(Recording(m.group(1), p.stem, eeg, env, FS, str(p)))
    if not recs:
        raise DataError(f"{folder}: no .npz trials found")
    return recs


def read_folder(folder, label_dir=None) -> tuple[str, list[Recording]]:
    """Detect the format of ``folder`` and read it. Returns (format, recordings).

    A folder that holds a ``split_data`` sub-folder (like the demo corpus's ``xfdata/``) is read
    through it, unless it is a SparrKULee derivatives folder (its own EEG is read then).
    """
    folder = Path(folder)
    if (folder.is_dir() and not any(p.is_file() for p in folder.iterdir()) and (folder / "split_data").is_dir()
            and derivatives_folder(folder) is None):
        folder = folder / "split_data"
    fmt = detect_format(folder)
    if fmt == "split_data":
        recs = read_split_data(folder)
    elif fmt == "npz":
        recs = read_npz_folder(folder)
    elif fmt == "sparrkulee":
        recs = read_sparrkulee(folder)
    else:
        recs = read_challenge_folder(folder, label_dir)
    _check_channels(recs)
    return fmt, recs


# --------------------------------------------------------------------------- splits & standardization


@dataclass
class SplitRecording:
    """A recording cut into parts, with the statistics it is standardized by.

    parts: {'train'|'val'|'test': (eeg (T, C), envelope (T, 1) or None, path)}; raw views into the
    files (memory maps stay memory maps). Standardization is applied per access, so no
    standardized copy of the corpus is ever held.
    stats_from: which part gave the statistics ('train', or the part itself when a recording has
    no train part, e.g. a whole held-out trial).
    piece_of: set on the second train piece of a recording cut by a time fold (see load_corpus).
    """

    subject: str
    rec_id: str
    parts: dict
    eeg_mean: np.ndarray = field(default=None)
    eeg_std: np.ndarray = field(default=None)
    env_mean: float = 0.0
    env_std: float = 1.0
    stats_from: str = "train"
    piece_of: str | None = None  # rec_id of the recording whose later train piece this is (time folds)

    def length(self, part: str) -> int:
        return len(self.parts[part][0]) if part in self.parts else 0

    def get(self, part: str, start: int = 0, stop: int | None = None):
        """Standardized (eeg (n, C) float32, envelope (n, 1) float32 or None) for [start, stop)."""
        eeg, env, _ = self.parts[part]
        x = (np.asarray(eeg[start:stop], dtype=np.float32) - self.eeg_mean) / self.eeg_std
        y = None
        if env is not None:
            y = (np.asarray(env[start:stop], dtype=np.float32) - self.env_mean) / self.env_std
        return x, y


def time_split(n: int, time_fold: int = 0) -> list[tuple[str, int, int]]:
    """The 80/10/10 split of an ``n``-sample recording, rotated by ``time_fold`` tenths.

    Returns [(part, lo, hi), ...] in time order; 'train' appears twice when the test tenth lies
    inside the recording. Fold 0 is the field's split (train 0-80 %, val 80-90 %, test 90-100 %);
    fold k tests the (k+1)-th tenth from the end and validates on the tenth before it
    (circularly: fold 9 tests 0-10 % and validates on 90-100 %). Folds 0-9 together test every
    sample once, so a model trained per fold has decoded all of a stimulus without hearing it,
    which matters for a folder whose trials all carry the same speech.
    """
    if not 0 <= int(time_fold) < TIME_FOLDS:
        raise ValueError(f"time_fold must be in 0..{TIME_FOLDS - 1}, got {time_fold!r}")
    if time_fold == 0:  # the field's cut points, rounded as they always were here
        a, b = int(round(n * SPLIT_FRACTIONS[0])), int(round(n * sum(SPLIT_FRACTIONS[:2])))
        return [("train", 0, a), ("val", a, b), ("test", b, n)]
    edges = [int(round(n * i / TIME_FOLDS)) for i in range(TIME_FOLDS + 1)]
    t = TIME_FOLDS - 1 - int(time_fold)
    v = (t - 1) % TIME_FOLDS
    roles = ["train"] * TIME_FOLDS
    roles[t], roles[v] = "test", "val"
    out: list[tuple[str, int, int]] = []
    for i, role in enumerate(roles):  # merge neighbouring tenths of the same role
        if out and out[-1][0] == role:
            out[-1] = (role, out[-1][1], edges[i + 1])
        else:
            out.append((role, edges[i], edges[i + 1]))
    return out


def _mean_std(arr: np.ndarray, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std in float64, chunked so memory maps are not loaded whole."""
    n = len(arr)
    s = np.zeros(arr.shape[1])
    for i in range(0, n, chunk):
        s += np.asarray(arr[i : i + chunk], dtype=np.float64).sum(0)
    mean = s / max(n, 1)
    ss = np.zeros(arr.shape[1])
    for i in range(0, n, chunk):
        ss += ((np.asarray(arr[i : i + chunk], dtype=np.float64) - mean) ** 2).sum(0)
    std = np.sqrt(ss / max(n, 1))
    return mean, std


def _pooled_mean_std(arrays) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std of several arrays taken together, without concatenating them."""
    if len(arrays) == 1:  # bit-identical to the single-part statistics used before time folds
        return _mean_std(arrays[0])
    parts = [(len(a), *_mean_std(a)) for a in arrays]
    n = sum(k for k, _, _ in parts)
    mean = sum(k * m for k, m, _ in parts) / max(n, 1)
    var = sum(k * (s**2 + (m - mean) ** 2) for k, m, s in parts) / max(n, 1)
    return mean, np.sqrt(var)


def standardize_stats(rec: SplitRecording, path: str = "", pieces=()) -> SplitRecording:
    """Set ``rec``'s statistics from its train part (or its only part). Flat channels get std 1.

    pieces: more SplitRecordings holding the rest of the same recording's train part (a time
    fold whose test tenth lies inside the recording leaves train in two pieces); the statistics
    pool all pieces and are given to each of them too.
    """
    src = "train" if "train" in rec.parts else next(iter(rec.parts))
    eeg, env, path = rec.parts[src]
    eegs, envs = [eeg, *(p.parts["train"][0] for p in pieces)], [env, *(p.parts["train"][1] for p in pieces)]
    if sum(len(e) for e in eegs) < 2:
        raise DataError(f"{path}: the {src} part has {sum(len(e) for e in eegs)} samples; too short to standardize")
    m, s = _pooled_mean_std(eegs)
    # A dead channel (std 0) would divide by zero; leave it centred instead.
    s[s < 1e-12] = 1.0
    rec.eeg_mean, rec.eeg_std = m.astype(np.float32), s.astype(np.float32)
    if env is not None:
        em, es = _pooled_mean_std(envs)
        rec.env_mean, rec.env_std = float(em[0]), float(es[0]) if es[0] > 1e-12 else 1.0
    rec.stats_from = src
    for p in pieces:
        p.eeg_mean, p.eeg_std, p.env_mean, p.env_std, p.stats_from = (
            rec.eeg_mean, rec.eeg_std, rec.env_mean, rec.env_std, src)
    return rec


def _matches(rec: Recording, patterns) -> bool:
    if not patterns:
        return False
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(rec.rec_id, p) or fnmatch.fnmatchcase(rec.subject, p) for p in patterns)


@dataclass
class Corpus:
    """Recordings of one data folder, split and with their standardization statistics."""

    fmt: str
    folder: str
    recordings: list[SplitRecording]
    n_chans: int
    fs: int = FS

    @property
    def subjects(self) -> list[str]:
        return sorted({r.subject for r in self.recordings}, key=natural_key)

    def with_part(self, part: str) -> list[SplitRecording]:
        return [r for r in self.recordings if r.length(part) > 0]

    def n_samples(self, part: str) -> int:
        return sum(r.length(part) for r in self.recordings)


def load_corpus(
    folder,
    *,
    subjects=None,
    exclude_subjects=None,
    val_recordings=None,
    test_recordings=None,
    monitor_recordings=None,
    split: str = "time",
    time_fold: int = 0,
    n_chans: int | None = None,
    label_dir=None,
) -> Corpus:
    """Read ``folder``, split every recording and compute its standardization statistics.

    subjects / exclude_subjects: glob patterns of subjects to keep / drop (None: all).
    val_recordings / test_recordings: glob patterns (matched on recording id or subject) of
      recordings that go whole to val / test (e.g. ``['*_007']``, or a held-out subject ``'S3'``).
    monitor_recordings: glob patterns of recordings that go whole to a 'monitor' part, which
      training never uses except to report it (train.py's log.csv monitor_r).
    split: what happens to the other recordings: 'time' cuts each 80/10/10 in time (split_data
      keeps the split its files give); 'whole' puts them whole into train.
    time_fold: with split='time', which tenth of each recording is test (``time_split``; 0 is
      the field's 80/10/10). The train part around an inner test tenth becomes two recordings,
      '<rec_id>' and '<rec_id>@<first sample>', standardized together, so no training window
      spans the held-out speech.
    n_chans: the channel count every recording must have (None: whatever the first one has).
    Standardization: per recording, from its train part; a recording with no train part (whole
    val/test trial) is standardized by its own statistics, as the benchmark protocol does.
    """
    if split not in ("time", "whole"):
        raise ValueError(f"split must be 'time' or 'whole', got {split!r}")
    time_split(TIME_FOLDS, time_fold)  # a bad fold fails before any file is read
    if time_fold and split != "time":
        raise ValueError(f"time_fold={time_fold} needs split='time' (got split={split!r})")
    fmt, raw = read_folder(folder, label_dir=label_dir)
    if subjects:
        raw = [r for r in raw if _matches_subject(r, subjects)]
    if exclude_subjects:
        raw = [r for r in raw if not _matches_subject(r, exclude_subjects)]
    if not raw:
        raise DataError(f"{folder}: no recordings left after selecting subjects={subjects} exclude={exclude_subjects}")
    chans = _check_channels(raw, n_chans)

    grouped: dict[tuple[str, str], SplitRecording] = {}
    pieces: dict[tuple[str, str], list[SplitRecording]] = {}  # a recording's further train pieces
    for r in raw:
        key = (r.subject, r.rec_id)
        rec = grouped.setdefault(key, SplitRecording(r.subject, r.rec_id, {}))
        role = _whole_role(r, test_recordings, monitor_recordings, val_recordings, split, time_fold)
        if role is not None:
            if role in rec.parts:
                raise DataError(f"{r.path}: recording {r.rec_id!r} has two '{role}' parts")
            rec.parts[role] = (r.eeg, r.envelope, r.path)
            continue
        for part, lo, hi in time_split(len(r.eeg), time_fold):
            if hi > lo:
                env = r.envelope[lo:hi] if r.envelope is not None else None
                if part in rec.parts:  # the train piece after an inner test tenth
                    piece = SplitRecording(r.subject, f"{r.rec_id}@{lo}", {part: (r.eeg[lo:hi], env, r.path)},
                                           piece_of=r.rec_id)
                    pieces.setdefault(key, []).append(piece)
                else:
                    rec.parts[part] = (r.eeg[lo:hi], env, r.path)
    recs = [standardize_stats(rec, pieces=pieces.get(key, ())) for key, rec in grouped.items()]
    recs += [p for ps in pieces.values() for p in ps]
    recs.sort(key=lambda r: (natural_key(r.subject), natural_key(r.rec_id)))
    return Corpus(fmt, str(folder), recs, chans)


def _whole_role(r: Recording, test_recordings, monitor_recordings, val_recordings, split: str,
                time_fold: int) -> str | None:
    """The part a recording goes to whole ('test', 'monitor', 'val', 'train' or a split_data file's
    own split), or None when it is cut in time. The patterns are tried in that order, so a recording
    named by several goes where it is held out most strictly."""
    if _matches(r, test_recordings):
        return "test"
    if _matches(r, monitor_recordings):
        return "monitor"
    if _matches(r, val_recordings):
        return "val"
    if r.split is not None:
        if time_fold:
            raise DataError(f"{r.path}: split_data files fix their own train/val/test split, so "
                            f"time_fold={time_fold} cannot apply; use time_fold=0 or a DTU-style npz folder")
        return r.split
    if split == "whole":
        return "train"
    return None


def _matches_subject(r: Recording, patterns) -> bool:
    if isinstance(patterns, str):
        patterns = [patterns]
    return any(fnmatch.fnmatchcase(r.subject, p) for p in patterns)


# --------------------------------------------------------------------------- training windows


class WindowDataset(Dataset):
    """Seeded, non-overlapping windows over the train part of every recording.

    Item: {'eeg': (window, C) float32, 'envelope': (window, 1), 'mask': (window, 1),
    'subject': int64 index (or -1 if not in ``subject_index``)}.

    Each epoch (``set_epoch``) draws, from (seed, epoch), a random offset per recording and cuts
    it into windows that start there; the samples before the offset and after the last full
    window become two edge windows that hold real EEG but whose ``mask`` marks only the samples
    no other window covers. So every train sample counts exactly once per epoch, every window
    has the same length, and nothing is copied ahead: items are sliced from the (memory-mapped)
    recordings on access. ``shuffle`` permutes the window order, also from (seed, epoch).
    ``rank``/``world_size`` take a disjoint strided shard of the epoch's windows.
    """

    def __init__(
        self,
        recordings: Sequence[SplitRecording],
        window: int,
        *,
        part: str = "train",
        seed: int = 0,
        shuffle: bool = True,
        subject_index: dict | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.recs = [r for r in recordings if r.length(part) > 0]
        if not self.recs:
            raise DataError(f"no recordings with a '{part}' part to make windows from")
        if window < 1:
            raise ValueError(f"window must be at least 1 sample, got {window}")
        self.window, self.part, self.seed, self.shuffle = int(window), part, int(seed), shuffle
        self.subject_index = subject_index or {}
        self.rank, self.world_size = rank, world_size
        self.n_chans = self.recs[0].parts[part][0].shape[1]
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, int(epoch)])
        w = self.window
        rows = []  # (recording, start, valid_lo, valid_hi) with valid range in window coordinates
        for i, rec in enumerate(self.recs):
            n = rec.length(self.part)
            if n <= w:
                rows.append((i, 0, 0, n))
                continue
            off = int(rng.integers(0, w))
            if off > 0:
                rows.append((i, 0, 0, off))
            n_full = (n - off) // w
            rows.extend((i, off + k * w, 0, w) for k in range(n_full))
            end = off + n_full * w
            if end < n:
                rows.append((i, n - w, end - (n - w), w))
        index = np.asarray(rows, dtype=np.int64)
        if self.shuffle:
            index = index[rng.permutation(len(index))]
        if self.world_size > 1 and len(index) % self.world_size:
            # Pad with fully masked windows (weight 0) so every rank gets the same number of
            # windows, hence of steps: DDP needs every rank in every step.
            pad = self.world_size - len(index) % self.world_size
            index = np.concatenate([index, np.repeat(np.array([[index[0, 0], 0, 0, 0]]), pad, axis=0)])
        # A strided shard keeps every rank's share of edge windows similar, and one step of all
        # ranks (batch_size / world_size each) covers the same windows as one single-process step.
        self.index = index[self.rank :: self.world_size]
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        r, start, lo, hi = (int(v) for v in self.index[i])
        rec = self.recs[r]
        eeg, env = rec.get(self.part, start, start + self.window)
        n = len(eeg)
        if n < self.window:  # a recording shorter than one window: zero-pad (masked out)
            eeg = np.pad(eeg, ((0, self.window - n), (0, 0)))
            env = np.pad(env, ((0, self.window - n), (0, 0)))
        mask = np.zeros((self.window, 1), np.float32)
        mask[lo:hi] = 1.0
        return {
            "eeg": torch.from_numpy(eeg),
            "envelope": torch.from_numpy(env),
            "mask": torch.from_numpy(mask),
            "subject": torch.tensor(self.subject_index.get(rec.subject, -1), dtype=torch.long),
        }

    def coverage(self) -> dict:
        """{(recording index): count per sample} for this epoch's windows; for tests."""
        counts = {i: np.zeros(r.length(self.part), np.int64) for i, r in enumerate(self.recs)}
        for r, start, lo, hi in self.index:
            counts[int(r)][start + lo : start + hi] += 1
        return counts
