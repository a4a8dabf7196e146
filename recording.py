"""One recording as every data reader yields it, the error bad input data raises, and the checks
every reader applies to the arrays it reads (shape, dtype, finite values, EEG/envelope lengths).

The readers themselves are in ``EEG_Dataset`` (split_data, DTU-style npz, format detection),
``sparrkulee`` (SparrKULee as downloaded) and ``challenge`` (the challenge's test set).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FS = 64  # Hz: the field's EEG and envelope rate; every format here is at 64 Hz
LENGTH_TOLERANCE = 4  # samples: EEG and envelope may differ this much (rounding at resampling)
SEP = "_-_"


class DataError(ValueError):
    """Bad input data. The message names the file and what is wrong with it."""


@dataclass
class Recording:
    """One recording (or one part of one, for split_data) as read from disk, not standardized.

    eeg: (T, C) float32, possibly a read-only memory map or a ``sparrkulee.LazyEEG`` view of one
    (SparrKULee derivatives). envelope: (T, 1) float32 or None
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


def check_finite(arr: np.ndarray, path, what: str, chunk: int = 1 << 16) -> None:
    """Raise DataError if ``arr`` holds NaN or Inf. Reads memory maps in chunks."""
    for start in range(0, arr.shape[0], chunk):
        block = np.asarray(arr[start : start + chunk])
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise DataError(
                f"{path}: {what} holds NaN or Inf values (first at sample {start + bad[0]}"
                + (f", channel {bad[1]}" if block.ndim > 1 else "") + ")"
            )


def check_dtype(arr: np.ndarray, path, what: str) -> None:
    """Real numbers only: a complex array would lose its imaginary part, a boolean one is no signal."""
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{path}: {what} must hold real numbers, got dtype {arr.dtype}")


def as_eeg(arr: np.ndarray, path) -> np.ndarray:
    """``arr`` if it is time-first EEG (time, channels) of at least 2 x 2; DataError otherwise."""
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


def as_envelope(arr: np.ndarray, path) -> np.ndarray:
    """An envelope (time,) or (time, 1) as (time, 1); DataError for any other shape."""
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != 1:
        raise DataError(f"{path}: envelope must be (time,) or (time, 1), got shape {arr.shape}")
    return arr


def match_lengths(eeg, env, path_eeg, path_env=None):
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


def load_npy(path: Path) -> np.ndarray:
    """A .npy file, memory-mapped (never unpickled); float32, converted in memory if stored otherwise."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if magic != b"\x93NUMPY":
        raise DataError(f"{path}: not a .npy file")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # re-raised with the file named
        raise DataError(f"{path}: cannot read as a .npy array ({exc})") from exc
    check_dtype(arr, path, "array")
    if arr.dtype != np.float32:
        # Rare (e.g. float64 derivatives); converting loads this one file into memory.
        arr = np.asarray(arr, dtype=np.float32)
    return arr


def natural_key(s: str):
    """Sort 'S2' before 'S10'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]
