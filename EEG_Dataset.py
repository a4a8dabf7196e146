"""Read the field's EEG/envelope formats, split and standardize them, window them for training,
and read, write and score the challenge's test-set files.

Formats (detected from what a folder contains, see ``detect_format``):
  split_data  SparrKULee / challenge files ``{split}_-_{subject}_-_{stimulus}_-_{feature}.npy``
              (feature ``eeg`` (T, C) or ``envelope`` (T, 1)); memory-mapped, never loaded whole.
  npz         DTU-style trials ``<prefix>_<subject>_<trial>.npz`` with keys ``eeg`` and ``envelope``;
              ``DTU_S3_004.npz`` is subject ``S3``, recording ``DTU_S3_004``.
  challenge   a test set of ``sub-XXX.json`` files ``{segment_id: [[C floats] x T]}``, without labels;
              labels (when given) ``{segment_id: [[[e0], [e1], ...], stimulus]}``.
  sparrkulee  SparrKULee as downloaded (the dataset root, or its ``derivatives/`` folder):
              ``derivatives/{preprocessed_eeg|eeg}/sub-*/ses-*/..._desc-preproc-audio-<stimulus>_eeg.npy``
              (channels-first (64, T) float64) paired by stimulus with
              ``derivatives/{preprocessed_stimuli|stimuli}/<stimulus>_-_envelope.npy``; both cut to
              the shorter; memory-mapped and converted per window (``LazyEEG``), never loaded whole.
              Subject ``sub-XXX``, recording ``sub-XXX_-_ses-YYY_-_<stimulus>``.

Every reader yields ``Recording(subject, rec_id, eeg (T, C) float32, envelope (T, 1) float32 or
None, fs=64, path, split)``; eeg may be a memory map or a ``LazyEEG`` view (sliced lazily, read
with ``np.asarray``). ``load_corpus`` then splits each recording (split_data keeps its own
train/val/test; everything else is cut in time 80/10/10) and standardizes each recording's EEG
(per channel) and envelope with the mean and std of *that recording's train part* - whatever the
files claim, because the field's split scripts save unstandardized arrays by mistake.
"""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fileio import atomic_write_json, read_json
from metrics import pearson

FS = 64  # Hz: the field's EEG and envelope rate; every format here is at 64 Hz
LENGTH_TOLERANCE = 4  # samples: EEG and envelope may differ this much (rounding at resampling)
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # the field's per-recording split in time
TIME_FOLDS = 10  # time_fold k in 0..9 rotates that split by k tenths (see time_split)
SEP = "_-_"


class DataError(ValueError):
    """Bad input data. The message names the file and what is wrong with it."""


@dataclass
class Recording:
    """One recording (or one part of one, for split_data) as read from disk, not standardized.

    eeg: (T, C) float32, possibly a read-only memory map or a ``LazyEEG`` view of one (SparrKULee
    derivatives). envelope: (T, 1) float32 or None
    (challenge test set without labels). split: 'train'/'val'/'test' when the files fix it.
    """

    subject: str
    rec_id: str
    eeg: np.ndarray
    envelope: np.ndarray | None
    fs: int = FS
    path: str = ""
    split: str | None = None


# --------------------------------------------------------------------------- checks


def _check_finite(arr: np.ndarray, path, what: str, chunk: int = 1 << 16) -> None:
    """Raise DataError if ``arr`` holds NaN or Inf. Reads memory maps in chunks."""
    for start in range(0, arr.shape[0], chunk):
        block = np.asarray(arr[start : start + chunk])
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise DataError(
                f"{path}: {what} holds NaN or Inf values (first at sample {start + bad[0]}"
                + (f", channel {bad[1]}" if block.ndim > 1 else "") + ")"
            )


def _check_dtype(arr: np.ndarray, path, what: str) -> None:
    """Real numbers only: a complex array would lose its imaginary part, a boolean one is no signal."""
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: {what} must hold real numbers, got dtype {arr.dtype}")


def _as_eeg(arr: np.ndarray, path) -> np.ndarray:
    if arr.ndim != 2:
        raise DataError(f"{path}: EEG must be 2-D (time, channels), got shape {arr.shape}")
    if min(arr.shape) < 2:
        raise DataError(f"{path}: EEG too short ({arr.shape[0]} samples x {arr.shape[1]} channels)")
    if arr.shape[1] > arr.shape[0]:
        raise DataError(
            f"{path}: EEG of shape {arr.shape} looks channels-first; expected (time, channels). "
            "Transpose it (raw SparrKULee derivatives are stored (64, T))."
        )
    return arr


def _as_envelope(arr: np.ndarray, path) -> np.ndarray:
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != 1:
        raise DataError(f"{path}: envelope must be (time,) or (time, 1), got shape {arr.shape}")
    return arr


def _match_lengths(eeg, env, path_eeg, path_env=None):
    """Trim EEG and envelope to a common length if they differ by at most LENGTH_TOLERANCE."""
    if env is None or len(eeg) == len(env):
        return eeg, env
    if abs(len(eeg) - len(env)) > LENGTH_TOLERANCE:
        where = f"{path_eeg}" + (f" and {path_env}" if path_env else "")
        raise DataError(
            f"{where}: EEG has {len(eeg)} samples but the envelope has {len(env)} "
            f"(more than {LENGTH_TOLERANCE} apart); they must cover the same time span"
        )
    n = min(len(eeg), len(env))
    return eeg[:n], env[:n]


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
    if _derivatives_folder(folder) is not None:
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
        eeg = _load_npy(files["eeg"])
        env = _load_npy(files["envelope"])
        eeg = _as_eeg(eeg, files["eeg"])
        env = _as_envelope(env, files["envelope"])
        eeg, env = _match_lengths(eeg, env, files["eeg"], files["envelope"])
        _check_finite(eeg, files["eeg"], "EEG")
        _check_finite(env, files["envelope"], "envelope")
        recs.append(Recording(subject, f"{subject}{SEP}{stimulus}", eeg, env, FS, str(files["eeg"]), split))
    if not recs:
        raise DataError(f"{folder}: no split_data recordings found")
    return recs


def _load_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if magic != b"\x93NUMPY":
        raise DataError(f"{path}: not a .npy file")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        raise DataError(f"{path}: cannot read as a .npy array ({exc})") from exc
    _check_dtype(arr, path, "array")
    if arr.dtype != np.float32:
        # Rare (e.g. float64 derivatives); converting loads this one file into memory.
        arr = np.asarray(arr, dtype=np.float32)
    return arr


class LazyEEG:
    """A read-only, lazy (time, channels) float32 view of a 2-D array on disk.

    SparrKULee's derivatives store EEG channels-first (64, T) in float64. Wrapped around the
    file's memory map, this view is the (T, C) float32 array ``Recording`` and ``SplitRecording``
    expect, without a copy: slicing in time (``v[a:b]``, step 1) gives another view, and samples
    are read and converted (transposed, rounded to float32) only when a view becomes an array,
    ``np.asarray(v[a:b])``: one window in ``SplitRecording.get``, one chunk in ``_mean_std`` and
    ``_check_finite``. Any other index (an integer, a step, channels) converts the view's time
    span and indexes that. ``channels_first=False`` wraps a time-first (T, C) array of another
    dtype the same way. Pickles by file name when made by ``open`` (DataLoader workers that
    spawn re-open the memory map instead of copying it).
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, base, channels_first: bool = True, start: int = 0, stop: int | None = None,
                 path: str | None = None):
        if base.ndim != 2:
            raise ValueError(f"LazyEEG needs a 2-D array, got shape {base.shape}")
        self.base, self.channels_first, self.path = base, bool(channels_first), path
        n = base.shape[1] if self.channels_first else base.shape[0]
        self.start, self.stop, _ = slice(start, stop).indices(n)
        self.stop = max(self.start, self.stop)

    @classmethod
    def open(cls, path, channels_first: bool = True) -> "LazyEEG":
        """Memory-map the .npy file ``path`` (no data read)."""
        return cls(np.load(path, mmap_mode="r", allow_pickle=False), channels_first, path=str(path))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.stop - self.start, self.base.shape[0] if self.channels_first else self.base.shape[1])

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def __len__(self) -> int:
        return self.stop - self.start

    def __repr__(self) -> str:
        return (f"LazyEEG(shape={self.shape}, {'channels-first' if self.channels_first else 'time-first'} "
                f"{self.base.dtype} samples {self.start}:{self.stop} of {self.path or 'an array'})")

    def __getitem__(self, key):
        t, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        if isinstance(t, slice) and t.step in (None, 1) and not rest:
            a, b, _ = t.indices(len(self))
            return LazyEEG(self.base, self.channels_first, self.start + a, self.start + max(a, b), self.path)
        if isinstance(t, (int, np.integer)) and not rest:  # one time sample
            i = range(len(self))[t]
            return np.asarray(self[i : i + 1])[0]
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("LazyEEG: converting to an array always copies")
        if self.channels_first:
            block = self.base[:, self.start : self.stop].T
        else:
            block = self.base[self.start : self.stop]
        out = np.ascontiguousarray(block, dtype=np.float32)  # one pass: read, transpose, round
        return out if dtype is None or np.dtype(dtype) == out.dtype else out.astype(dtype)

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.path is not None and isinstance(self.base, np.memmap):
            state["base"] = None  # re-opened from self.path
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.base is None:
            self.base = np.load(self.path, mmap_mode="r", allow_pickle=False)


# SparrKULee derivatives (as ExpORL's brain_pipe writes them and as the dataset is downloaded):
#   <root>/derivatives/{preprocessed_eeg|eeg}/sub-*/ses-*/<...>_desc-preproc-audio-<stimulus>_eeg.npy
#   <root>/derivatives/{preprocessed_stimuli|stimuli}/<stimulus>_-_envelope.npy (or <stimulus>_envelope.npy)
_DERIV_EEG_DIRS = ("preprocessed_eeg", "eeg")
_DERIV_STIM_DIRS = ("preprocessed_stimuli", "stimuli")
_DERIV_EEG_RE = re.compile(r"^(sub-[A-Za-z0-9]+)_(?:.*?_)?desc-preproc-audio-(.+)_eeg\.npy$")
_DERIV_ENTITY_RE = re.compile(r"(?:^|_)((?:ses|run)-[A-Za-z0-9]+)(?=_)")
MIN_RECORDING_SAMPLES = 5 * FS  # one 5 s window, the default training window


def _derivatives_folder(folder: Path) -> Path | None:
    """The SparrKULee derivatives folder of ``folder`` (the dataset root holding ``derivatives/``,
    or the derivatives folder itself): the one holding a ``preprocessed_eeg`` or ``eeg`` folder
    with ``sub-*`` folders in it. None if there is none."""
    for d in (folder / "derivatives", folder):
        for name in _DERIV_EEG_DIRS:
            eeg = d / name
            if eeg.is_dir() and any(p.is_dir() and p.name.startswith("sub-") for p in eeg.iterdir()):
                return d
    return None


def read_sparrkulee(folder, min_samples: int = MIN_RECORDING_SAMPLES) -> list[Recording]:
    """SparrKULee derivatives: one Recording per EEG file, paired with its stimulus's envelope.

    ``folder``: the dataset root (holding ``derivatives/``) or the derivatives folder. EEG files
    ``{preprocessed_eeg|eeg}/sub-*/ses-*/..._desc-preproc-audio-<stimulus>_eeg.npy`` (channels-first
    (C, T), any float dtype: float64 as downloaded) are memory-mapped and wrapped in a ``LazyEEG``
    (time-first, float32, converted per window), so no copy of the corpus is held; a time-first
    file (T, C) is read the same way. The envelope ``{preprocessed_stimuli|stimuli}/<stimulus>_-_envelope.npy``
    (or ``<stimulus>_envelope.npy``; (T,) or (T, 1)) is loaded as float32, once per stimulus. Both
    are cut to the shorter of the two, as SparrKULee's split script does (they differ by seconds,
    so LENGTH_TOLERANCE does not apply). Subject ``sub-XXX``; recording id
    ``sub-XXX_-_ses-YYY_-_<stimulus>`` (``_-_run-ZZ`` added where one session has the stimulus twice).
    min_samples: a recording shorter than this after the cut (default one 5 s window) is an error.
    """
    folder = Path(folder)
    deriv = _derivatives_folder(folder)
    if deriv is None:
        raise DataError(f"{folder}: no SparrKULee derivatives (expected derivatives/"
                        f"{{{'|'.join(_DERIV_EEG_DIRS)}}}/sub-*/ses-*/*_eeg.npy)")
    eeg_dir = next(deriv / n for n in _DERIV_EEG_DIRS if (deriv / n).is_dir())
    stim_dir = next((deriv / n for n in _DERIV_STIM_DIRS if (deriv / n).is_dir()), None)
    if stim_dir is None:
        raise DataError(f"{deriv}: SparrKULee EEG in {eeg_dir.name}/ but no stimulus folder "
                        f"({' or '.join(n + '/' for n in _DERIV_STIM_DIRS)}) with the envelopes")
    eeg_files = sorted(p for p in eeg_dir.glob("sub-*/**/*_eeg.npy") if p.is_file())
    if not eeg_files:
        gz = sorted(eeg_dir.glob("sub-*/**/*_eeg.npy.gz"))
        hint = f" (found {gz[0]}: compressed files cannot be memory-mapped; gunzip them first)" if gz else ""
        raise DataError(f"{eeg_dir}: no EEG files 'sub-*/ses-*/*_desc-preproc-audio-<stimulus>_eeg.npy'{hint}")
    envelopes: dict[Path, np.ndarray] = {}
    recs: list[Recording] = []
    ids: set[tuple[str, str]] = set()
    for p in eeg_files:
        m = _DERIV_EEG_RE.match(p.name)
        if not m:
            raise DataError(f"{p}: cannot tell the stimulus from the file name; expected "
                            "'sub-XXX_ses-YYY_..._desc-preproc-audio-<stimulus>_eeg.npy'")
        subject, stimulus = m.groups()
        entities = dict(e.split("-", 1) for e in _DERIV_ENTITY_RE.findall(p.name.split("_desc-")[0] + "_"))
        env_path = next((stim_dir / f"{stimulus}{s}" for s in ("_-_envelope.npy", "_envelope.npy")
                         if (stim_dir / f"{stimulus}{s}").is_file()), None)
        if env_path is None:
            gz = stim_dir / f"{stimulus}_-_envelope.npy.gz"
            hint = f"; found {gz.name}: gunzip it first" if gz.is_file() else ""
            raise DataError(f"{p}: no envelope for stimulus {stimulus!r}: expected "
                            f"{stim_dir / (stimulus + '_-_envelope.npy')}{hint}")
        try:
            raw = np.load(p, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file named
            raise DataError(f"{p}: cannot read as a .npy array ({exc})") from exc
        if raw.ndim != 2:
            raise DataError(f"{p}: EEG must be 2-D (channels, time), got shape {raw.shape}")
        _check_dtype(raw, p, "EEG")
        # channels-first (C, T) as SparrKULee stores it; a (T, C) file is read time-first
        eeg = LazyEEG(raw, channels_first=raw.shape[0] <= raw.shape[1], path=str(p))
        if env_path not in envelopes:
            # small: (T, 1) float32 in memory, one per stimulus, shared by its listeners
            env = np.asarray(_as_envelope(_load_npy(env_path), env_path), dtype=np.float32)
            _check_finite(env, env_path, "envelope")
            envelopes[env_path] = env
        env = envelopes[env_path]
        n = min(len(eeg), len(env))
        if n < min_samples:
            short = env_path if len(env) <= len(eeg) else p
            other = p if short == env_path else env_path
            raise DataError(f"{short}: {'envelope' if short == env_path else 'EEG'} has {n} samples "
                            f"(with {other.name}), shorter than one {min_samples / FS:g} s window "
                            f"({min_samples} samples at {FS} Hz)")
        eeg, env = eeg[:n], env[:n]
        _check_finite(eeg, p, "EEG")
        rec_id = SEP.join([subject, *(["ses-" + entities["ses"]] if "ses" in entities else []), stimulus])
        if (subject, rec_id) in ids:
            rec_id += SEP + ("run-" + entities["run"] if "run" in entities else p.stem)
        if (subject, rec_id) in ids:
            raise DataError(f"{p}: a second recording of {rec_id!r}")
        ids.add((subject, rec_id))
        recs.append(Recording(subject, rec_id, eeg, env, FS, str(p)))
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
                _check_dtype(z["eeg"], p, "eeg")
                _check_dtype(z["envelope"], p, "envelope")
                eeg = np.asarray(z["eeg"], dtype=np.float32)
                env = np.asarray(z["envelope"], dtype=np.float32)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{p}: cannot read as an .npz archive ({exc})") from exc
        eeg = _as_eeg(eeg, p)
        env = _as_envelope(env, p)
        eeg, env = _match_lengths(eeg, env, p)
        _check_finite(eeg, p, "EEG")
        _check_finite(env, p, "envelope")
        recs.append(Recording(m.group(1), p.stem, eeg, env, FS, str(p)))
    if not recs:
        raise DataError(f"{folder}: no .npz trials found")
    return recs


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
        _as_eeg(arr, f"{path} segment {key!r}")
        _check_finite(arr, f"{path} segment {key!r}", "EEG")
        out[key] = arr
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
            _check_finite(arr, f"{p} label {key!r}", "envelope")
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
                eeg, env = _match_lengths(eeg, env, p, label_dir)
            recs.append(Recording(_subject_of_json(p), key, eeg, env, FS, str(p), "test"))
    return recs


def read_folder(folder, label_dir=None) -> tuple[str, list[Recording]]:
    """Detect the format of ``folder`` and read it. Returns (format, recordings).

    A folder that holds a ``split_data`` sub-folder (like the demo corpus's ``xfdata/``) is read
    through it, unless it is a SparrKULee derivatives folder (its own EEG is read then).
    """
    folder = Path(folder)
    if (folder.is_dir() and not any(p.is_file() for p in folder.iterdir()) and (folder / "split_data").is_dir()
            and _derivatives_folder(folder) is None):
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


def natural_key(s: str):
    """Sort 'S2' before 'S10'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


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


def fixed_windows(rec: SplitRecording, part: str, window: int, hop: int | None = None):
    """Standardized fixed windows of one part: list of (eeg (window, C), env (window, 1)).

    hop defaults to ``window`` (no overlap); parts shorter than a window give one short window.
    """
    eeg, env = rec.get(part)
    hop = hop or window
    if len(eeg) <= window:
        return [(eeg, env)]
    return [(eeg[s : s + window], env[s : s + window]) for s in range(0, len(eeg) - window + 1, hop)]


# --------------------------------------------------------------------------- challenge I/O & scoring


def zscore(eeg: np.ndarray) -> np.ndarray:
    """Per-channel z-score of one segment (T, C), as the reference inference does."""
    m = eeg.mean(0, keepdims=True, dtype=np.float64)
    s = eeg.std(0, keepdims=True, dtype=np.float64)
    s[s < 1e-12] = 1.0
    return ((eeg - m) / s).astype(np.float32)


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


def segment_subject(segment_id: str) -> str:
    """'sub-002_13' -> 'sub-002' (the challenge's segment naming)."""
    return segment_id.rsplit("_", 1)[0]


def mean_by_subject(subjects: Iterable[str], rs: Iterable[float]) -> dict[str, float]:
    """Mean r per subject, subjects in natural order (S2 before S10): the field's first averaging step."""
    by_subject: dict[str, list[float]] = {}
    for s, r in zip(subjects, rs):
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
        per_segment[key] = float(pearson(pred, lab, dim=0))
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
