"""From raw recordings (speech audio + EEG files) to the split_data folder that train.py reads.

    python preprocess.py --pairs=pairs.csv --out_dir=data/split_data
    python train.py --data_dir=data/split_data

``pairs.csv`` has one row per recording: ``subject,eeg_file,audio_file[,onset_s]`` (paths relative
to the CSV's folder; an optional header row starting with ``subject``). Every other setting is a
``pre_*`` key in config.py (see docs/preprocess.md for the pipeline and each key).

Envelope (per audio file, ``envelope.py``): gammatone filterbank (28 bands, centres ERB-spaced
50-5000 Hz, designed by ``scipy.signal.gammatone``), ``|band| ** 0.6`` summed over bands, polyphase
resampling to ``fs``.
EEG (per EEG file, via MNE): channel selection, 0.5 Hz high-pass (1st-order Butterworth, zero-phase),
optional artifact interpolation, alignment to the stimulus onset (trigger or ``onset_s``), polyphase
resampling to ``fs``, common average reference, cut to the envelope's duration.
Output: ``{split}_-_{subject}_-_{stimulus}_-_{eeg|envelope}.npy`` cut 80/10/10 in time, plus
``manifest.json`` (every file written with its size, inputs with sizes and hashes, every parameter,
library versions). Every input is checked before any output is touched, and the run holds a lock
beside ``out_dir`` (``.NAME.lock``) throughout: a second run into the same ``out_dir`` stops at once,
naming the pid. A new ``out_dir`` is built beside it under a temp name and renamed into place only
when everything succeeded. An existing non-empty ``out_dir`` is written only with ``--overwrite`` and
only when it is an earlier output of this program (it holds its ``manifest.json``): the new files
are built in a staging folder inside it and replace just the files the earlier manifest lists;
anything else there (notes, subfolders, runs) is kept, and an ``out_dir`` where another process
holds a lock (a train.py training into a folder there) is refused. An ``out_dir`` that holds the
pairs CSV or any file it lists is always refused.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy
import scipy.ndimage
import scipy.signal

import cli
from EEG_Dataset import SEP, SPLIT_FRACTIONS, SPLITS, DataError, time_split
from envelope import erb_space, min_audio_fs, rational, read_audio, speech_envelope
from fileio import FileError, atomic_write_bytes, atomic_write_json, dir_mode, read_json, sha256_file
from outputs import JOURNAL, LOCK_FILE, STAGING_PREFIX, FolderLock, OutputError, lock_holder_of, recover, sibling_lock

MANIFEST = "manifest.json"
MARGIN_OUT = 64  # output samples of EEG kept on each side of a cut while resampling, so the
#                  resampling filter's edge transient falls outside the kept part
BLOCK_SAMPLES = 1 << 25  # EEG values (samples x channels) filtered at once: bounds memory for long recordings
EXCLUDED_ANNOTATIONS = ("bad", "edge", "new segment")  # annotation prefixes that never mark a stimulus


@dataclass
class Pair:
    """One row of pairs.csv: a subject's EEG recording and the audio they heard in it."""

    subject: str
    eeg_path: Path
    audio_path: Path
    onset_s: float | None  # stimulus onset in seconds from the EEG file's first sample; None: use triggers
    where: str  # 'pairs.csv:LINE', for messages

    @property
    def stimulus(self) -> str:
        return self.audio_path.stem


@dataclass(eq=False)  # compared by identity: it holds arrays
class Result:
    """What preprocessing one pair produced; ``info`` goes to the manifest."""

    pair: Pair
    eeg: np.ndarray = None  # (T, C) float32, microvolts, common average reference
    envelope: np.ndarray = None  # (T,) float32
    info: dict = field(default_factory=dict)


# ============================================================================= pairs.csv


def read_pairs(csv_path) -> list[Pair]:
    """Parse pairs.csv. Every problem is a DataError naming the file and line."""
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")  # -sig: spreadsheet programs prepend a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: cannot read the pairs file ({exc})") from exc
    pairs, seen = [], {}
    for line_no, row in enumerate(csv.reader(text.splitlines()), start=1):
        row = [c.strip() for c in row]
        if not any(row) or row[0].startswith("#"):
            continue
        where = f"{csv_path}:{line_no}"
        if not pairs and row[0].lower() == "subject":
            continue  # header row
        if len(row) not in (3, 4):
            raise DataError(f"{where}: expected 3 or 4 columns 'subject,eeg_file,audio_file[,onset_s]', "
                            f"got {len(row)}: {row}")
        subject, eeg_file, audio_file = row[:3]
        onset_s = None
        if len(row) == 4 and row[3]:
            try:
                onset_s = float(row[3])
            except ValueError:
                raise DataError(f"{where}: onset_s must be a number of seconds, got {row[3]!r}") from None
            if not math.isfinite(onset_s) or onset_s < 0:
                raise DataError(f"{where}: onset_s must be a finite number >= 0, got {row[3]!r}")
        if not subject or SEP in subject or "/" in subject or "\\" in subject:
            raise DataError(f"{where}: subject {subject!r} must be non-empty, without '/', '\\' or {SEP!r} "
                            "(it becomes part of the output file names)")
        paths = []
        for what, name in (("eeg_file", eeg_file), ("audio_file", audio_file)):
            if not name:
                raise DataError(f"{where}: {what} is empty")
            p = Path(name).expanduser()
            p = p if p.is_absolute() else csv_path.parent / p
            if not p.is_file():
                raise DataError(f"{where}: {what} {p} does not exist")
            _check_readable(p, where, what)
            paths.append(p)
        pair = Pair(subject, paths[0], paths[1], onset_s, where)
        if SEP in pair.stimulus:
            raise DataError(f"{where}: audio file name {paths[1].name!r} contains {SEP!r}, the split_data separator")
        key = (pair.subject, pair.stimulus)
        if key in seen:
            raise DataError(f"{where}: subject {subject!r} with stimulus {pair.stimulus!r} already appears at "
                            f"{seen[key]}; each (subject, audio file name) pair must be unique")
        seen[key] = where
        pairs.append(pair)
    if not pairs:
        raise DataError(f"{csv_path}: no rows; expected 'subject,eeg_file,audio_file[,onset_s]' lines")
    return pairs


def _check_readable(path: Path, where: str, what: str) -> None:
    """Open ``path`` for reading, so that an unreadable input stops the run before any output is touched."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise DataError(f"{where}: {what} {path} cannot be read ({exc.strerror or exc})") from exc


# ============================================================================= EEG


def open_eeg(path):
    """An MNE Raw (not loaded into memory) for BDF, EDF, FIF, BrainVision (.vhdr) or any format MNE reads."""
    import mne  # here, so that importing this module (and the rest of the repository) works without MNE

    path = Path(path)
    try:
        return mne.io.read_raw(path, preload=False, verbose="error")
    except Exception as exc:  # re-raised with the file named
        raise DataError(f"{path}: cannot read as EEG with MNE ({type(exc).__name__}: {exc})") from exc


def select_channels(raw, spec, path) -> list[str]:
    """Names of the EEG channels to keep. spec: a count N (the first N channels of type EEG, in file
    order) or a list of channel names (kept in that order)."""
    import mne

    if isinstance(spec, list):
        missing = [c for c in spec if c not in raw.ch_names]
        if missing:
            raise DataError(f"{path}: channel(s) {missing[:8]}{' ...' if len(missing) > 8 else ''} not in the file; "
                            f"it has {raw.ch_names[:8]}{' ...' if len(raw.ch_names) > 8 else ''}")
        return list(spec)
    eeg = [raw.ch_names[i] for i in mne.pick_types(raw.info, eeg=True, exclude=[])]
    if len(eeg) < spec:
        raise DataError(f"{path}: has {len(eeg)} EEG channels, but pre_channels asks for {spec}; "
                        "set --pre_channels to a smaller count or a list of names")
    return eeg[:spec]


def find_triggers(raw, path, source: str, code, stim_channel) -> tuple[list[int], str]:
    """Stimulus-onset triggers: (sample indices counted from the file's first sample, where they came
    from). source 'stim': a stim channel's onsets (mne.find_events); 'annotations': annotation onsets;
    'auto': the stim channel if the file has one and it holds events, else annotations.
    code: int (stim value, or the number an annotation ends with, e.g. BrainVision 'Stimulus/S  1'),
    str (annotation text), or None: any (annotations starting BAD, EDGE or New Segment never count).
    """
    import mne

    has_stim = stim_channel is not None or len(mne.pick_types(raw.info, stim=True, eeg=False, exclude=[])) > 0
    if source == "stim" or (source == "auto" and has_stim):
        try:
            events = mne.find_events(raw, stim_channel=stim_channel, shortest_event=1, initial_event=True,
                                     consecutive=True, verbose="error")
        except Exception as exc:  # e.g. no stim channel
            if source == "stim":
                raise DataError(f"{path}: cannot read triggers from a stim channel ({exc})") from exc
            events = np.zeros((0, 3), int)
        if source == "stim" or len(events):
            if isinstance(code, str):
                raise DataError(f"{path}: pre_trigger_code {code!r} is a text, but the triggers come from a stim "
                                "channel (integer codes); give an int or --pre_trigger_source=annotations")
            if code is not None:
                events = events[events[:, 2] == code]
            return sorted(int(s) - raw.first_samp for s in events[:, 0]), "stim channel"
    events, event_id = mne.events_from_annotations(raw, event_id=None, verbose="error")
    desc = {v: k for k, v in event_id.items()}
    samples = []
    for sample, _, eid in events:
        text = desc[eid]
        if text.lower().startswith(EXCLUDED_ANNOTATIONS):
            continue
        if code is None or text == str(code) or (isinstance(code, int) and re.search(rf"(?<!\d){code}\s*$", text)):
            samples.append(int(sample) - raw.first_samp)
    return sorted(samples), "annotations"


def highpass(x: np.ndarray, fs: float, cutoff_hz: float) -> np.ndarray:
    """(T, C) -> (T, C): 1st-order Butterworth high-pass run forward and backward (zero-phase; so the
    magnitude is squared: -6 dB at cutoff_hz). Initial conditions are the steady state of the edge
    samples, so a DC offset leaves no transient at the start."""
    if cutoff_hz <= 0:
        return x
    sos = scipy.signal.butter(1, cutoff_hz, "highpass", fs=fs, output="sos")
    return scipy.signal.sosfiltfilt(sos, x, axis=0)


def interpolate_artifacts(x: np.ndarray, fs: float, k: float, uv: float, pad_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Replace artifact samples by linear interpolation, per channel. x: (T, C) in microvolts.

    A sample is an artifact when |x - median| > k * 1.4826 * MAD (k > 0; MAD = median |x - median|
    of that channel, so 1.4826 * MAD is its SD were it Gaussian) or |x| > uv (uv > 0). Each artifact
    is widened by pad_s on both sides; the marked samples are replaced by a straight line between the
    nearest unmarked samples before and after (held flat at the recording's edges). A channel with
    no unmarked sample is set to 0. Returns (x, fraction of samples replaced per channel (C,)).
    """
    if k <= 0 and uv <= 0:
        return x, np.zeros(x.shape[1])
    x = np.array(x, dtype=np.float64, copy=True)
    pad = int(round(pad_s * fs))
    idx = np.arange(len(x))
    fractions = np.zeros(x.shape[1])
    for c in range(x.shape[1]):
        v = x[:, c]
        bad = np.zeros(len(v), bool)
        if k > 0:
            med = np.median(v)
            scale = 1.4826 * np.median(np.abs(v - med))
            bad |= np.abs(v - med) > k * scale
        if uv > 0:
            bad |= np.abs(v) > uv
        if pad > 0 and bad.any():
            bad = scipy.ndimage.maximum_filter1d(bad.view(np.uint8), size=2 * pad + 1) > 0  # O(T) for any pad
        fractions[c] = bad.mean()
        if bad.all():
            v[:] = 0.0
        elif bad.any():
            v[bad] = np.interp(idx[bad], idx[~bad], v[~bad])
    return x, fractions


def common_average(x: np.ndarray) -> np.ndarray:
    """(T, C) -> (T, C) minus the mean over channels at every sample."""
    return x - x.mean(axis=1, keepdims=True)


def file_record(path: Path) -> dict:
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _integer_eeg_rate(raw, eeg_path: Path, fs_out: int) -> int:
    """The EEG file's sampling rate in Hz, refused unless it is a whole number (polyphase resampling
    needs an integer ratio) and at least the output rate (the pipeline only ever downsamples)."""
    fs_eeg = float(raw.info["sfreq"])
    if not float(fs_eeg).is_integer():
        raise DataError(f"{eeg_path}: EEG sampling rate {fs_eeg} Hz is not a whole number; polyphase "
                        "resampling needs one (resample the file in MNE first)")
    fs_eeg = int(fs_eeg)
    if fs_eeg < fs_out:
        raise DataError(f"{eeg_path}: EEG sampled at {fs_eeg} Hz, below the output rate {fs_out} Hz")
    return fs_eeg


def _file_triggers(raw, eeg_path: Path, results: list[Result], cfg: dict) -> tuple[list[Result], list[int], str | None]:
    """(the results of this file aligned by triggers, the file's matching triggers, where they came
    from). The k-th such pair takes the k-th trigger, so a file with fewer triggers than pairs
    aligned by them is refused here, before any EEG is read."""
    by_trigger = [r for r in results if cfg["pre_align"] == "trigger" or
                  (cfg["pre_align"] == "auto" and r.pair.onset_s is None)]
    triggers, trigger_source = [], None
    if by_trigger:
        triggers, trigger_source = find_triggers(raw, eeg_path, cfg["pre_trigger_source"], cfg["pre_trigger_code"],
                                                 cfg["pre_stim_channel"])
        if len(triggers) < len(by_trigger):
            code = "any code" if cfg["pre_trigger_code"] is None else f"code {cfg['pre_trigger_code']!r}"
            rows = ", ".join(r.pair.where for r in by_trigger)
            raise DataError(f"{eeg_path}: {len(by_trigger)} pair(s) ({rows}) are aligned by triggers, but the file "
                            f"holds {len(triggers)} matching trigger(s) ({code}, source "
                            f"{cfg['pre_trigger_source']!r}). Give onset_s in pairs.csv or set "
                            "--pre_trigger_code / --pre_trigger_source")
    return by_trigger, triggers, trigger_source


def _stimulus_onset(r: Result, by_trigger: list[Result], triggers: list[int], trigger_source: str | None,
                    fs_eeg: int) -> tuple[int, str]:
    """One pair's stimulus onset in EEG samples from the file's first sample, and where it came from
    (the manifest records it, so a misaligned pair can be traced to its trigger or onset_s)."""
    p = r.pair
    if r in by_trigger:
        k = by_trigger.index(r)  # the k-th pair of this file aligned by triggers takes the k-th trigger
        return triggers[k], f"trigger {k + 1} of {len(triggers)} ({trigger_source})"
    if p.onset_s is None:
        raise DataError(f"{p.where}: pre_align='onset' but this row has no onset_s column")
    return int(round(p.onset_s * fs_eeg)), "onset_s column"


def _plan_cut(eeg_path: Path, r: Result, onset: int, how: str, n_total: int, fs_eeg: int, fs_out: int,
              n_channels: int, cfg: dict) -> tuple:
    """Decide which EEG samples one pair keeps; returns (r, start, stop, lead, n) for the filter pass.

    Refuses EEG that ends more than pre_tolerance_s before the audio, and a recording so short that
    a part of the 80/10/10 split would be unreadable. Allocates ``r.eeg``, trims ``r.envelope`` to
    the common length n and records the onset in ``r.info``, so the filter pass only fills in data.
    """
    p = r.pair
    step_out = fs_out // math.gcd(fs_eeg, fs_out)  # output samples that span a whole number of EEG samples
    n_env = len(r.envelope)
    n_avail = (n_total - onset) * fs_out // fs_eeg if onset < n_total else 0
    if n_avail < n_env:
        short_s = (n_env - n_avail) / fs_out
        if short_s > cfg["pre_tolerance_s"]:
            raise DataError(
                f"{eeg_path}: only {max(n_total - onset, 0) / fs_eeg:.3f} s of EEG after the stimulus onset at "
                f"{onset / fs_eeg:.3f} s ({how}), but {p.audio_path} lasts {n_env / fs_out:.3f} s "
                f"({short_s:.3f} s short; tolerance pre_tolerance_s={cfg['pre_tolerance_s']} s) [{p.where}]")
    n = min(n_env, n_avail)
    if min(hi - lo for _, lo, hi in time_split(n)) < n_channels:
        # EEG_Dataset reads a part with fewer samples than channels as channels-first and refuses it
        raise DataError(f"{p.where}: {p.audio_path} gives {n / fs_out:.2f} s, too short: each part of the "
                        f"80/10/10 split must hold at least as many samples as channels ({n_channels}), i.e. "
                        f">= {n_channels / min(SPLIT_FRACTIONS) / fs_out:.1f} s")
    # Resample from a point before the onset that lies on the output grid, so that an output
    # sample falls exactly on the onset; keep up to MARGIN_OUT output samples of lead-in.
    lead = min(MARGIN_OUT, onset * fs_out // fs_eeg) // step_out * step_out
    start = onset - lead * fs_eeg // fs_out
    stop = min(n_total, onset + -(-(n + MARGIN_OUT) * fs_eeg // fs_out))
    r.eeg = np.zeros((n, n_channels), np.float32)
    r.envelope = r.envelope[:n]
    r.info.update(onset_s=onset / fs_eeg, onset_sample=int(onset), onset_from=how, n_samples=int(n),
                  duration_s=n / fs_out)
    return r, start, stop, lead, n


def _filter_and_resample(raw, eeg_path: Path, names: list[str], plans: list[tuple], fs_eeg: int, fs_out: int,
                         cfg: dict) -> np.ndarray:
    """High-pass and artifact-clean the whole recording in channel blocks, then resample each pair's
    cut into its ``r.eeg``. Blocks bound memory for long recordings; each block spans the whole
    recording because the high-pass needs the context. Returns the artifact fraction per channel."""
    up, down = rational(fs_out, fs_eeg)
    n_total = raw.n_times
    per_block = max(1, BLOCK_SAMPLES // max(n_total, 1))
    artifact_fraction = np.zeros(len(names))
    for b0 in range(0, len(names), per_block):
        block = names[b0: b0 + per_block]
        try:
            x = raw.get_data(picks=block, units="uV").T  # (T, c), volts -> microvolts
        except Exception as exc:  # re-raised with the file named
            raise DataError(f"{eeg_path}: cannot read channels {block[:4]}... ({type(exc).__name__}: {exc})") from exc
        if not np.isfinite(x).all():
            raise DataError(f"{eeg_path}: EEG holds NaN or Inf values in channels {block}")
        x = highpass(x, fs_eeg, cfg["pre_highpass_hz"])
        x, frac = interpolate_artifacts(x, fs_eeg, cfg["pre_artifact_k"], cfg["pre_artifact_uv"],
                                        cfg["pre_artifact_pad_s"])
        artifact_fraction[b0: b0 + len(block)] = frac
        for r, start, stop, lead, n in plans:
            y = scipy.signal.resample_poly(x[start:stop], up, down, axis=0)
            r.eeg[:, b0: b0 + len(block)] = y[lead: lead + n]
    return artifact_fraction


def process_eeg_file(eeg_path: Path, results: list[Result], cfg: dict) -> dict:
    """Preprocess one EEG file for all the pairs recorded in it (``results``, whose ``envelope`` is
    set). Fills each result's ``eeg`` (T, C) float32 and trims its envelope to a common length.

    Order: pick channels -> high-pass -> artifacts -> [cut at onset, resample] -> common average.
    Resampling and the common average are both linear per channel, so they commute: averaging at
    the output rate gives what averaging first would, and lets channels be read in blocks.
    Returns the file-level facts for the manifest.
    """
    raw = open_eeg(eeg_path)
    fs_out = int(cfg["fs"])
    fs_eeg = _integer_eeg_rate(raw, eeg_path, fs_out)
    names = select_channels(raw, cfg["pre_channels"], eeg_path)
    n_total = raw.n_times
    by_trigger, triggers, trigger_source = _file_triggers(raw, eeg_path, results, cfg)
    plans = []
    for r in results:
        onset, how = _stimulus_onset(r, by_trigger, triggers, trigger_source, fs_eeg)
        plans.append(_plan_cut(eeg_path, r, onset, how, n_total, fs_eeg, fs_out, len(names), cfg))
    artifact_fraction = _filter_and_resample(raw, eeg_path, names, plans, fs_eeg, fs_out, cfg)
    for r in results:
        r.eeg = common_average(r.eeg).astype(np.float32)
    return {"eeg_fs_hz": fs_eeg, "eeg_channels_in_file": len(raw.ch_names), "channels": names,
            "artifact_fraction_per_channel": [round(float(f), 6) for f in artifact_fraction]
            if cfg["pre_artifact_k"] > 0 or cfg["pre_artifact_uv"] > 0 else None}


# ============================================================================= output


def save_npy(path: Path, arr: np.ndarray) -> None:
    """Write one .npy file atomically (fileio.atomic_write_bytes): a full disk or a read-only folder
    is a FileError naming the file, and no half-written file stays."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def recording_files(subject: str, stimulus: str) -> list[str]:
    """The names of the split_data files ``write_recording`` writes for one recording."""
    return [f"{split}{SEP}{subject}{SEP}{stimulus}{SEP}{feat}.npy" for split in SPLITS for feat in ("eeg", "envelope")]


def write_recording(folder: Path, subject: str, stimulus: str, eeg: np.ndarray, envelope: np.ndarray) -> dict:
    """Save one recording as split_data files, cut 80/10/10 in time as EEG_Dataset.load_corpus cuts
    recordings that come unsplit. eeg (T, C), envelope (T,). Returns {split: [start, stop)}."""
    bounds = {}
    for split, lo, hi in time_split(len(envelope)):
        stem = f"{split}{SEP}{subject}{SEP}{stimulus}{SEP}"
        save_npy(folder / f"{stem}eeg.npy", np.ascontiguousarray(eeg[lo:hi], dtype=np.float32))
        save_npy(folder / f"{stem}envelope.npy", np.ascontiguousarray(envelope[lo:hi, None], dtype=np.float32))
        bounds[split] = [lo, hi]
    return bounds


def check_config(cfg: dict) -> None:
    """What no single key's check (config.py) can see: the required keys and the envelope's band range."""
    bad = []
    if not cfg["pairs"]:
        bad.append("--pairs=FILE.csv is required")
    if not cfg["out_dir"]:
        bad.append("--out_dir=FOLDER is required")
    if cfg["pre_env_fmin_hz"] > cfg["pre_env_fmax_hz"]:
        bad.append("need pre_env_fmin_hz <= pre_env_fmax_hz")
    if bad:
        raise cli.ConfigError("; ".join(bad))


def read_manifest(folder: Path):
    """The manifest.json of an earlier preprocess.py run in ``folder``, or None (missing, unreadable,
    not JSON, or written by something else)."""
    try:
        manifest = read_json(folder / MANIFEST)
    except ValueError:
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("created_by") == "preprocess.py" else None


def is_preprocess_output(folder: Path) -> bool:
    """Whether ``folder`` holds the manifest.json of an earlier preprocess.py run."""
    return read_manifest(folder) is not None


def manifest_files(manifest: dict) -> set[str]:
    """The files an earlier run wrote, as its manifest lists them (its ``files``; for a manifest
    written before it listed them, the names its recordings give), manifest.json included: the
    only files --overwrite replaces or removes."""
    if isinstance(manifest.get("files"), dict):
        return set(manifest["files"]) | {MANIFEST}
    return {name for rec in manifest.get("recordings") or []
            for split in rec.get("splits") or {} for feat in ("eeg", "envelope")
            for name in [f"{split}{SEP}{rec['subject']}{SEP}{rec['stimulus']}{SEP}{feat}.npy"]} | {MANIFEST}


def _inside(path, folder: Path) -> bool:
    """Whether ``path`` lies in ``folder`` or below it, as written or with symlinks resolved."""
    paths = {Path(os.path.abspath(path)), Path(path).resolve()}
    folders = {Path(os.path.abspath(folder)), folder.resolve()}
    return any(p.is_relative_to(f) for p in paths for f in folders)


def _is_machinery(name: str) -> bool:
    """Names of this program's own work in out_dir: a build's staging folder and commit journal."""
    return name == JOURNAL or name.startswith(STAGING_PREFIX)


def refuse_locked(out: Path) -> None:
    """Refuse an out_dir where a live process holds a lock file (``.lock``, ``.NAME.lock``) in any
    folder, e.g. a train.py training into a run folder there: its outputs are not replaced under it."""
    for folder, _, names in os.walk(out):
        for name in sorted(names):
            if name == LOCK_FILE or name.endswith(".lock"):
                pid = lock_holder_of(Path(folder) / name)
                if pid is not None:
                    locked = Path(folder) if name == LOCK_FILE else Path(folder) / name
                    raise DataError(f"{locked}: a running process (pid {pid if pid > 0 else '?'}) holds its lock "
                                    f"(e.g. train.py training into it), so preprocess.py does not write {out}; "
                                    "wait for it or choose another --out_dir")


def check_out_dir(out: Path, overwrite: bool, inputs=(), new_files=()) -> set[str]:
    """Refuse an out_dir that preprocess.py may not write; return the files of the earlier output
    there that the run replaces or removes (those its manifest lists; none for a new out_dir).

    It never writes into a folder holding an input (``inputs``: (what, path) pairs, e.g. the pairs
    CSV and the files it lists). A non-empty out_dir is written only with ``overwrite``, only when it
    is an earlier preprocess.py output (its manifest.json says so), only when no live process holds
    a lock in it, and only when none of ``new_files`` (the names this run writes) is a file its
    manifest does not list: anything else there is not ours to replace. Changes nothing."""
    if out.is_symlink() and not out.exists():
        raise DataError(f"{out}: out_dir is a symlink that points nowhere")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: out_dir exists and is not a folder")
    for what, path in inputs:
        if _inside(path, out):
            raise DataError(f"{out}: out_dir holds the {what} {path}; preprocess.py replaces the files of its "
                            "out_dir, so it never writes into a folder holding its inputs; choose another --out_dir")
    if not (out.is_dir() and any(not _is_machinery(p.name) for p in out.iterdir())):
        return set()
    manifest = read_manifest(out)
    if manifest is None:
        raise DataError(f"{out}: out_dir already exists, is not empty and holds no {MANIFEST} written by "
                        "preprocess.py, so it is not replaced, not even with --overwrite (that would delete files "
                        "preprocess.py did not write); choose another --out_dir")
    if not overwrite:
        raise DataError(f"{out}: out_dir already exists and is not empty; pass --overwrite to replace it "
                        "(it holds an earlier preprocess.py output) or choose another --out_dir")
    refuse_locked(out)
    listed = manifest_files(manifest)
    clash = sorted(n for n in set(new_files) - listed if os.path.lexists(out / n))
    if clash:
        raise DataError(f"{out / clash[0]}: this run would write it, but {out / MANIFEST} does not list it, so it "
                        "is not ours to replace; move it away or choose another --out_dir")
    return listed


def versions() -> dict:
    import mne

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "mne": mne.__version__}


def _audio_envelope(a: Path, fs_out: int, cfg: dict) -> tuple[np.ndarray, dict]:
    """Read one audio file and compute its envelope at fs_out; returns (envelope, facts for the
    manifest). Refuses audio whose rate cannot hold the top gammatone band, since that band would
    silently be aliased, and audio too short to give one output sample."""
    audio, fs_audio, n_ch = read_audio(a)
    need = min_audio_fs(cfg["pre_env_fmax_hz"])
    if fs_audio < need:
        raise DataError(f"{a}: audio sampled at {fs_audio} Hz cannot hold the top gammatone band "
                        f"({cfg['pre_env_fmax_hz']} Hz + 1 ERB); need >= {need:.0f} Hz "
                        "(or a lower --pre_env_fmax_hz)")
    if len(audio) * fs_out // fs_audio < 1:
        raise DataError(f"{a}: audio is shorter than one output sample")
    env = speech_envelope(audio, fs_audio, fs_out, cfg["pre_env_bands"], cfg["pre_env_fmin_hz"],
                          cfg["pre_env_fmax_hz"], cfg["pre_env_power"])
    return env, {"audio_fs_hz": fs_audio, "audio_channels": n_ch, "audio_duration_s": len(audio) / fs_audio,
                 "mono": "as recorded" if n_ch == 1 else f"average of {n_ch} channels"}


def _write_recordings(pairs: list[Pair], tmp: Path, cfg: dict) -> dict:
    """Preprocess every pair and write its split_data files into ``tmp``; returns {id(pair): manifest
    record}. Pairs are processed one EEG file at a time, because the high-pass runs over the whole
    recording and several pairs may share it; each audio file's envelope is computed once."""
    fs_out = int(cfg["fs"])
    envelopes, hashes = {}, {}
    records = {}
    results = {id(p): Result(p) for p in pairs}
    by_eeg: dict[Path, list[Pair]] = {}
    for p in pairs:
        by_eeg.setdefault(p.eeg_path.resolve(), []).append(p)
    done = 0
    for group in by_eeg.values():
        group_results = [results[id(p)] for p in group]
        for r in group_results:
            a = r.pair.audio_path.resolve()
            if a not in envelopes:
                envelopes[a] = _audio_envelope(a, fs_out, cfg)
            r.envelope = envelopes[a][0].copy()
            r.info.update(envelopes[a][1])
        file_info = process_eeg_file(Path(group[0].eeg_path), group_results, cfg)
        for r in group_results:
            p = r.pair
            bounds = write_recording(tmp, p.subject, p.stimulus, r.eeg, r.envelope.astype(np.float32))
            for path in (p.eeg_path, p.audio_path):
                if path.resolve() not in hashes:
                    hashes[path.resolve()] = file_record(path)
            records[id(p)] = {"subject": p.subject, "stimulus": p.stimulus, "row": p.where,
                              "eeg_file": hashes[p.eeg_path.resolve()], "audio_file": hashes[p.audio_path.resolve()],
                              **r.info, **file_info, "splits": bounds}
            done += 1
            print(f"[{done}/{len(pairs)}] {p.subject} / {p.stimulus}: {r.info['duration_s']:.1f} s, "
                  f"{len(file_info['channels'])} ch from {file_info['eeg_fs_hz']} Hz, onset "
                  f"{r.info['onset_s']:.3f} s ({r.info['onset_from']})", flush=True)
            r.eeg = None  # written; free it
    return records


def _manifest(cfg: dict, recordings: list[dict], t0: float, files: dict) -> dict:
    """The manifest.json content: every file written with its size (``files``; the only files a
    later --overwrite replaces), inputs, every parameter, a description of each step and library
    versions, so that an output folder says how it was made. ``t0``: when the run started."""
    fs_out = int(cfg["fs"])
    return {
        "created_by": "preprocess.py",
        "created_unix_s": round(time.time(), 3),
        "pairs_csv": file_record(Path(cfg["pairs"])),
        "parameters": {k: v for k, v in cfg.items() if k.startswith("pre_") or k in ("fs", "pairs", "out_dir")},
        "envelope": {
            "filterbank": "scipy.signal.gammatone(ftype='iir'): 4th-order gammatone (Slaney 1993), bandwidth "
                          "1.019 ERB, unit gain at the centre; run as an FIR numerator + 4 pole-pair sections",
            "centre_hz": [round(float(f), 4) for f in erb_space(cfg["pre_env_fmin_hz"], cfg["pre_env_fmax_hz"],
                                                                cfg["pre_env_bands"])],
            "erb": "Glasberg & Moore 1990: ERB(f) = 24.7 (4.37 f/1000 + 1); centres equally spaced in ERB number",
            "formula": f"sum over bands of |band| ** {cfg['pre_env_power']}, then "
                       f"scipy.signal.resample_poly to {fs_out} Hz; multi-channel audio averaged to mono first",
        },
        "eeg": {
            "steps": ["channel selection", f"high-pass {cfg['pre_highpass_hz']} Hz 1st-order Butterworth, "
                      "zero-phase (sosfiltfilt)", "artifact interpolation" + (
                          "" if cfg["pre_artifact_k"] > 0 or cfg["pre_artifact_uv"] > 0 else " (off)"),
                      "cut at the stimulus onset", f"scipy.signal.resample_poly to {fs_out} Hz",
                      "common average reference", "cut to the envelope's duration"],
            "units": "microvolts",
            "standardized": False,
        },
        "split": {"fractions": list(SPLIT_FRACTIONS), "order": list(SPLITS)},
        "versions": versions(),
        "recordings": recordings,
        "files": files,
        "seconds": round(time.time() - t0, 2),
    }


def _clear_killed_runs(out: Path) -> None:
    """Under out_dir's lock: finish the commit of a run killed while committing (outputs.recover),
    and delete the build folders killed runs left inside and beside out_dir (no other run can be
    using them while this one holds the lock)."""
    leftover = re.compile(rf"^\.{re.escape(out.name)}\.[a-z0-9_]{{8}}\.(tmp|old)$")
    if out.parent.is_dir():
        for p in out.parent.iterdir():
            if leftover.match(p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
    if out.is_dir():
        recover(out)


def _new_build_dir(out: Path, inside: bool) -> Path:
    """Where the new files are built: with ``inside``, a staging folder inside the existing out_dir
    (committed file by file, so nothing else there moves), else a temp folder beside out_dir
    (renamed to it at the end)."""
    where = out if inside else out.parent
    try:
        if inside:
            return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise DataError(f"{where}: cannot write ({exc.strerror or exc})") from exc


def _commit(build: Path, out: Path, inside: bool, old: set[str]) -> None:
    """Put the finished build in place. Beside out_dir: rename it to out_dir. Inside: a journal
    commit (outputs.recover) removes the earlier output's files that this run does not write again,
    moves the new files in and manifest.json last; a run killed midway leaves the journal and the
    next run finishes it under the lock. Files the earlier manifest does not list never move."""
    try:
        os.chmod(build, dir_mode())  # mkdtemp makes 0700; the output should be as readable as any folder
        if not inside:
            os.replace(build, out)
            return
        files = sorted(p.name for p in build.iterdir() if p.name != MANIFEST) + [MANIFEST]
        atomic_write_json(out / JOURNAL, {"stage": build.name, "files": files, "remove": sorted(old),
                                          "manifest_name": None, "manifest": None})
        recover(out)
    except OSError as exc:
        if inside and (out / JOURNAL).is_file():
            raise DataError(f"{out}: cannot move the new files into place ({exc.strerror or exc}); the next "
                            "preprocess.py run into it finishes the move") from exc
        raise DataError(f"{_write_error(exc, out)}; {out} was left as it was") from exc


def _write_error(exc: OSError, out: Path) -> str:
    """One line for a failed write: the file (FileError names it) or folder, and what went wrong."""
    if isinstance(exc, FileError):
        return str(exc)
    what = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return f"{exc.filename or out}: cannot write ({what})"


def _build_and_commit(pairs: list[Pair], out: Path, cfg: dict, checks: dict, t0: float) -> dict:
    """Under out_dir's lock: preprocess every pair into a new build folder, write the manifest, check
    out_dir once more and commit. Any failure before the commit removes the build folder and leaves
    out_dir as it was; a failed write (full disk, read-only folder) is a DataError naming the file."""
    inside = out.is_dir()
    build = _new_build_dir(out, inside)
    committing = False
    try:
        try:
            records = _write_recordings(pairs, build, cfg)
            files = {p.name: p.stat().st_size for p in sorted(build.iterdir())}
            manifest = _manifest(cfg, [records[id(p)] for p in pairs], t0, files)
            atomic_write_bytes(build / MANIFEST, json.dumps(manifest, indent=1).encode())
        except OSError as exc:
            raise DataError(f"{_write_error(exc, out)}; {out} was left as it was") from exc
        old = check_out_dir(out, cfg["overwrite"], **checks)
        committing = True
        _commit(build, out, inside, old)
    except BaseException:
        if not (committing and (out / JOURNAL).is_file()):  # a journal: the next run finishes the commit
            shutil.rmtree(build, ignore_errors=True)
        raise
    return manifest


def preprocess(cfg: dict) -> dict:
    """Run the whole pipeline for a parsed config; returns the manifest. Raises DataError (naming the
    file) on bad input or a failed write, leaving out_dir as it was. Order: every check that needs
    no output (config, pairs CSV, every input readable, out_dir may be written), then out_dir's lock,
    the checks again under it, the work, and the commit."""
    check_config(cfg)
    t0 = time.time()
    out = Path(cfg["out_dir"])
    pairs = read_pairs(cfg["pairs"])
    inputs = [("pairs CSV", Path(cfg["pairs"]))]
    inputs += [(what, path) for p in pairs for what, path in (("EEG file", p.eeg_path), ("audio file", p.audio_path))]
    checks = dict(inputs=inputs, new_files=[n for p in pairs for n in recording_files(p.subject, p.stimulus)])
    if not (out / JOURNAL).exists():  # a killed commit is finished under the lock first, then checked
        check_out_dir(out, cfg["overwrite"], **checks)
    with FolderLock(out, lock_path=sibling_lock(out), busy="preprocessing into this folder",
                    hint="wait for it or choose another --out_dir", error=DataError):
        _clear_killed_runs(out)
        old = check_out_dir(out, cfg["overwrite"], **checks)
        kept = sorted(p.name for p in out.iterdir() if p.name not in old and not _is_machinery(p.name)) if old else []
        manifest = _build_and_commit(pairs, out, cfg, checks, t0)
    if kept:
        entries = f"{len(kept)} entr{'y' if len(kept) == 1 else 'ies'}"
        print(f"--overwrite: replaced the earlier output in {out}/; kept {entries} its {MANIFEST} does not list: "
              f"{', '.join(kept[:5])}{' ...' if len(kept) > 5 else ''}", flush=True)
    print(f"wrote {len(pairs)} recording(s) to {out}/ ({manifest['seconds']:.1f} s); "
          f"train with: python train.py --data_dir={out}", flush=True)
    return manifest


def main(argv=None) -> dict:
    cfg, _ = cli.parse_or_exit(argv, program="preprocess")
    try:
        return preprocess(cfg)
    except cli.ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from exc
    except (DataError, OSError, OutputError) as exc:
        raise SystemExit(f"preprocess error: {exc}") from exc


if __name__ == "__main__":
    main()
    sys.exit(0)
