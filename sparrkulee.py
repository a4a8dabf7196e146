"""SparrKULee as downloaded: its derivatives folder read as recordings, and ``LazyEEG``, the lazy
time-first float32 view of the channels-first float64 files it stores.

Layout (the dataset root, or its ``derivatives/`` folder):
``derivatives/{preprocessed_eeg|eeg}/sub-*/ses-*/..._desc-preproc-audio-<stimulus>_eeg.npy``
(channels-first (64, T) float64) paired by stimulus with
``derivatives/{preprocessed_stimuli|stimuli}/<stimulus>_-_envelope.npy``; both cut to the shorter;
memory-mapped and converted per window (``LazyEEG``), never loaded whole. Subject ``sub-XXX``,
recording ``sub-XXX_-_ses-YYY_-_<stimulus>``. ``EEG_Dataset`` detects the layout with
``derivatives_folder`` and reads it with ``read_sparrkulee``.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from recording import FS, SEP, DataError, Recording, as_envelope, check_dtype, check_finite, load_npy


class LazyEEG:
    """A read-only, lazy (time, channels) float32 view of a 2-D array on disk.

    SparrKULee's derivatives store EEG channels-first (64, T) in float64. Wrapped around the
    file's memory map, this view is the (T, C) float32 array ``Recording`` and ``SplitRecording``
    expect, without a copy: slicing in time (``v[a:b]``, step 1) gives another view, and samples
    are read and converted (transposed, rounded to float32) only when a view becomes an array,
    ``np.asarray(v[a:b])``: one window in ``SplitRecording.get``, one chunk in ``check_finite``
    and in EEG_Dataset's ``_mean_std``. Any other index (an integer, a step, channels) converts
    the view's time span and indexes that. ``channels_first=False`` wraps a time-first (T, C)
    array of another dtype the same way. Pickles by file name when made by ``open`` (DataLoader
    workers that spawn re-open the memory map instead of copying it).
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


def derivatives_folder(folder: Path) -> Path | None:
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
    deriv = derivatives_folder(folder)
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
        except Exception as exc:  # re-raised with the file named
            raise DataError(f"{p}: cannot read as a .npy array ({exc})") from exc
        if raw.ndim != 2:
            raise DataError(f"{p}: EEG must be 2-D (channels, time), got shape {raw.shape}")
        check_dtype(raw, p, "EEG")
        # channels-first (C, T) as SparrKULee stores it; a (T, C) file is read time-first
        eeg = LazyEEG(raw, channels_first=raw.shape[0] <= raw.shape[1], path=str(p))
        if env_path not in envelopes:
            # small: (T, 1) float32 in memory, one per stimulus, shared by its listeners
            env = np.asarray(as_envelope(load_npy(env_path), env_path), dtype=np.float32)
            check_finite(env, env_path, "envelope")
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
        check_finite(eeg, p, "EEG")
        rec_id = SEP.join([subject, *(["ses-" + entities["ses"]] if "ses" in entities else []), stimulus])
        if (subject, rec_id) in ids:
            rec_id += SEP + ("run-" + entities["run"] if "run" in entities else p.stem)
        if (subject, rec_id) in ids:
            raise DataError(f"{p}: a second recording of {rec_id!r}")
        ids.add((subject, rec_id))
        recs.append(Recording(subject, rec_id, eeg, env, FS, str(p)))
    return recs
