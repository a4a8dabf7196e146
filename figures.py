"""PNG figures of a score and of training: what a reader checks before trusting a number.

``score_figure``: r per subject against its chance level, the total, and stretches of the
reconstruction over the true envelope. ``curves_figure``: train / validation (/ monitor) r per
epoch. matplotlib (its Agg canvas: no display needed, pyplot never loaded) is imported only when
a figure is drawn, so this module imports without it. Every PNG is written atomically (fileio.atomic_write_bytes: a
temp file in the same folder, then a rename), so a killed process never leaves half a picture.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from fileio import atomic_write_bytes


def _figure(**kwargs):
    """A matplotlib Figure drawn by the Agg canvas. pyplot is never loaded, so no display is opened
    and the backend of a caller that uses pyplot itself is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(layout="constrained", **kwargs)  # room for outside legends and rotated labels
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    """Render ``fig`` to PNG bytes and write them atomically to ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _zs(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else x - x.mean()


def score_figure(path, per_subject: dict, total: float, chance_band: dict | None = None,
                 traces: Sequence = (), trace_s: float = 15.0, title: str = "") -> Path:
    """Bars of r per subject with each subject's chance level, the total as a line, and traces.

    per_subject: {subject: r}; total: the score (mean over subjects, or the challenge weighting).
    chance_band: ``significance.chance``'s dict, or any dict with 'per_subject_p95' {subject: r} and
      'total_p95' r; drawn as a grey band from 0 to each subject's 95th percentile of the null,
      and the total's as a dashed line. None: no chance level drawn.
    traces: (title, prediction (T,), envelope (T,), fs in Hz) each; the first ``trace_s`` seconds
      of each, both z-scored, one panel per trace (e.g. the best and the median subject).
    Returns the PNG's path.
    """
    subjects = list(per_subject)
    n_tr = len(traces)
    fig = _figure(figsize=(max(8.5, 0.32 * len(subjects) + 4), 3.6 + 1.9 * n_tr))
    grid = fig.add_gridspec(1 + n_tr, 1, height_ratios=[2.0] + [1.0] * n_tr)
    ax = fig.add_subplot(grid[0])
    x = np.arange(len(subjects))
    ax.bar(x, [per_subject[s] for s in subjects], width=0.7, color="tab:blue", label="r per subject", zorder=2)
    if chance_band:
        p95 = chance_band.get("per_subject_p95") or {}
        for i, s in enumerate(subjects):
            if s in p95:  # the band spans the bar's slot, so a bar inside it reads as 'not above chance'
                ax.fill_between([i - 0.45, i + 0.45], 0, p95[s], color="0.55", alpha=0.45, lw=0, zorder=3,
                                label="chance (null 95th pct)" if i == 0 else None)
        if chance_band.get("total_p95") is not None:
            ax.axhline(chance_band["total_p95"], color="0.3", ls="--", lw=1, zorder=4,
                       label=f"chance of total {chance_band['total_p95']:.3f}")
    ax.axhline(total, color="tab:red", lw=1.5, zorder=4, label=f"total {total:.3f}")
    ax.axhline(0, color="black", lw=0.6, zorder=1)
    ax.set_xticks(x)
    crowded = sum(len(str(s)) + 2 for s in subjects) > 70  # labels that would run into each other
    ax.set_xticklabels(subjects, rotation=45 if crowded else 0, ha="right" if crowded else "center",
                       rotation_mode="anchor", fontsize=8 if crowded else 10)
    ax.set_ylabel("Pearson r")
    ax.set_title(title or "reconstruction r per subject")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    for k, (name, pred, env, fs) in enumerate(traces):
        axt = fig.add_subplot(grid[1 + k])
        pred, env = np.asarray(pred).reshape(-1), np.asarray(env).reshape(-1)
        n = min(len(pred), len(env), int(round(trace_s * fs)))
        r = float(np.mean(_zs(pred) * _zs(env))) if len(pred) == len(env) and len(pred) > 1 else math.nan
        t = np.arange(n) / fs
        axt.plot(t, _zs(env)[:n], color="0.35", lw=1.0, label="envelope")
        axt.plot(t, _zs(pred)[:n], color="tab:blue", lw=1.0, alpha=0.85, label="reconstruction")
        axt.set_title(f"{name}  (r {r:.3f} over {len(pred) / fs:.0f} s; first {n / fs:.0f} s shown)", fontsize=9)
        axt.set_ylabel("z")
        axt.set_xlim(0, max(n - 1, 1) / fs)
        if k == n_tr - 1:
            axt.set_xlabel("time (s)")
        if k == 0:
            axt.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def _number(v) -> float:
    """A log value (float, or log.csv's text; '' or None when absent) -> float, NaN when absent."""
    if v is None or v == "":
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def curves_figure(path, history: Sequence[dict], title: str = "") -> Path:
    """Training curves: train r, validation r and (when present) monitor r per epoch.

    history: rows with 'epoch', 'train_r', 'val_r' and optional 'monitor_r' (a checkpoint's
    history or runs.read_log's rows, whose values are text; missing values are left out).
    Raises ValueError when there are no rows. Returns the PNG's path.
    """
    if not history:
        raise ValueError(f"curves_figure: {path}: no epochs to draw")
    epochs = np.array([_number(row.get("epoch")) for row in history])
    fig = _figure(figsize=(7.0, 4.0))
    ax = fig.add_subplot()
    for key, label, style in (("train_r", "train r", "-o"), ("val_r", "validation r", "-s"),
                              ("monitor_r", "monitor r", "--^")):
        y = np.array([_number(row.get(key)) for row in history])
        ok = np.isfinite(y) & np.isfinite(epochs)
        if ok.any():
            ax.plot(epochs[ok], y[ok], style, ms=4, lw=1.3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("Pearson r")
    ax.set_title(title or "training curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if np.isfinite(epochs).any() and np.nanmax(epochs) - np.nanmin(epochs) < 30:
        ax.set_xticks(np.unique(epochs[np.isfinite(epochs)]).astype(int))
    return _save(fig, path)
