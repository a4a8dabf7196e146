"""The speech envelope of an audio signal: a gammatone filterbank (28 bands, centres ERB-spaced
50-5000 Hz, designed by ``scipy.signal.gammatone``), ``|band| ** 0.6`` summed over bands, polyphase
resampling to the output rate; and the audio reader that feeds it (wav, or npz with 'audio' and 'fs').

``speech_envelope`` is the reference pipeline's envelope; preprocess.py computes one per audio file.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.signal
from scipy.io import wavfile

from recording import DataError


def erb_hz(f_hz):
    """Equivalent rectangular bandwidth (Hz) of the auditory filter at ``f_hz`` (Glasberg & Moore 1990)."""
    return 24.7 * (4.37 * np.asarray(f_hz, dtype=np.float64) / 1000 + 1)


def erb_number(f_hz):
    """ERB-rate scale (number of ERBs below ``f_hz``); equal steps on it are 'ERB-spaced'."""
    return 21.4 * np.log10(4.37 * np.asarray(f_hz, dtype=np.float64) / 1000 + 1)


def erb_number_to_hz(e):
    return (10 ** (np.asarray(e, dtype=np.float64) / 21.4) - 1) * 1000 / 4.37


def erb_space(fmin_hz: float, fmax_hz: float, n: int) -> np.ndarray:
    """(n,) centre frequencies in Hz, equally spaced on the ERB-rate scale from fmin_hz to fmax_hz."""
    return erb_number_to_hz(np.linspace(erb_number(fmin_hz), erb_number(fmax_hz), n))


@dataclass
class GammatoneBand:
    """One 4th-order gammatone filter: a 4-tap FIR numerator, then four copies of one pole pair."""

    centre_hz: float
    b: np.ndarray  # (5,) numerator, as scipy.signal.gammatone designs it
    sos: np.ndarray  # (4, 6) second-order sections holding the denominator only


def gammatone_band(centre_hz: float, fs: float) -> GammatoneBand:
    """scipy.signal.gammatone's IIR design (Slaney 1993; bandwidth 1.019 ERB; unit gain at the centre),
    rearranged for stable filtering.

    scipy returns the 8th-order denominator multiplied out. For low centres at audio rates (50 Hz at
    48 kHz) its four coincident pole pairs lie so close to z = 1 that float rounding of the expanded
    polynomial puts poles outside the unit circle: filtering with it directly blows up. The
    denominator is exactly (1 - 2 r cos(w) z^-1 + r^2 z^-2)^4, so r and cos(w) are read off its last
    and second coefficients and the filter runs as four copies of that section.
    """
    b, a = scipy.signal.gammatone(centre_hz, "iir", fs=fs)
    r = a[8] ** (1 / 8)
    cos_w = -a[1] / (8 * r)
    section = np.array([1.0, -2 * r * cos_w, r * r])
    rebuilt = np.convolve(np.convolve(section, section), np.convolve(section, section))
    if not np.allclose(rebuilt, a, rtol=0, atol=1e-9 * np.abs(a).max()):
        raise RuntimeError(f"scipy.signal.gammatone's denominator at {centre_hz} Hz is not a 4th power of one "
                           "pole pair any more (scipy changed its design?); cannot rearrange it")
    sos = np.tile(np.concatenate([[1.0, 0.0, 0.0], section]), (4, 1))
    return GammatoneBand(float(centre_hz), np.asarray(b, dtype=np.float64), sos)


def gammatone_bank(fs: float, fmin_hz: float = 50.0, fmax_hz: float = 5000.0, n_bands: int = 28) -> list[GammatoneBand]:
    return [gammatone_band(f, fs) for f in erb_space(fmin_hz, fmax_hz, n_bands)]


def gammatone_filter(band: GammatoneBand, x: np.ndarray) -> np.ndarray:
    """Filter (T,) -> (T,)."""
    return scipy.signal.sosfilt(band.sos, scipy.signal.lfilter(band.b, [1.0], x))


def band_response(band: GammatoneBand, f_hz, fs: float) -> np.ndarray:
    """Complex frequency response of one band at the frequencies ``f_hz`` (any shape)."""
    f_hz = np.asarray(f_hz, dtype=np.float64)
    _, h_num = scipy.signal.freqz(band.b, [1.0], worN=f_hz.ravel(), fs=fs)
    _, h_den = scipy.signal.sosfreqz(band.sos, worN=f_hz.ravel(), fs=fs)
    return (h_num * h_den).reshape(f_hz.shape)


def min_audio_fs(fmax_hz: float) -> float:
    """Lowest audio rate that holds the top band: its centre plus one ERB must lie below Nyquist."""
    return 2 * float(fmax_hz + erb_hz(fmax_hz))


def rational(fs_out: int, fs_in: int) -> tuple[int, int]:
    """(up, down) for scipy.signal.resample_poly from fs_in to fs_out, both integers in Hz."""
    g = math.gcd(int(fs_out), int(fs_in))
    return int(fs_out) // g, int(fs_in) // g


def speech_envelope(audio: np.ndarray, fs_audio: int, fs_out: int = 64, n_bands: int = 28,
                    fmin_hz: float = 50.0, fmax_hz: float = 5000.0, power: float = 0.6) -> np.ndarray:
    """The reference pipeline's envelope: (T_audio,) mono audio at fs_audio -> (T_out,) at fs_out.

    sum over gammatone bands of |band(t)| ** power, then polyphase resampling (scipy.signal.resample_poly,
    its default Kaiser-window anti-aliasing filter). T_out = floor(T_audio * fs_out / fs_audio):
    output sample k is audio time k / fs_out, and only samples inside the audio are kept.
    """
    audio = np.asarray(audio, dtype=np.float64)
    total = np.zeros(len(audio))
    for band in gammatone_bank(fs_audio, fmin_hz, fmax_hz, n_bands):
        total += np.abs(gammatone_filter(band, audio)) ** power  # one band at a time: memory of 2 signals
    up, down = rational(fs_out, fs_audio)
    env = scipy.signal.resample_poly(total, up, down)
    return env[: len(audio) * int(fs_out) // int(fs_audio)]


def read_audio(path) -> tuple[np.ndarray, int, int]:
    """A wav file, or an npz with keys 'audio' ((T,) or (T, channels)) and 'fs' -> (mono (T,) float64,
    fs in Hz, number of channels averaged into it)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as z:
                missing = {"audio", "fs"} - set(z.files)
                if missing:
                    raise DataError(f"{path}: audio npz lacks key(s) {sorted(missing)}; found {z.files}")
                audio, fs = np.asarray(z["audio"]), float(np.asarray(z["fs"]).reshape(-1)[0])
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", wavfile.WavFileWarning)  # e.g. unknown chunks: harmless
                fs, audio = wavfile.read(path)
    except DataError:
        raise
    except Exception as exc:  # re-raised with the file named
        raise DataError(f"{path}: cannot read the audio as wav (or npz with 'audio' and 'fs'): {exc}") from exc
    if audio.dtype == np.uint8:  # 8-bit wav is unsigned, centred on 128
        audio = (audio.astype(np.float64) - 128) / 128
    elif audio.dtype.kind == "i":  # integer PCM -> [-1, 1) (the scale does not matter after standardizing)
        audio = audio.astype(np.float64) / (np.iinfo(audio.dtype).max + 1)
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.ndim != 2 or audio.shape[0] < audio.shape[1]:
        raise DataError(f"{path}: audio must be (time,) or (time, channels), got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise DataError(f"{path}: audio holds NaN or Inf values")
    if not (fs > 0 and float(fs).is_integer()):
        raise DataError(f"{path}: audio sampling rate must be a whole number of Hz, got {fs}")
    return audio.mean(axis=1), int(fs), audio.shape[1]
