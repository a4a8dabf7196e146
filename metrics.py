"""The project's one Pearson correlation, shared by the loss, the metrics and the scorer, and its one
z-score, shared by the test-set EEG and the seeds' predictions; both treat a constant series alike."""
from __future__ import annotations

import numpy as np
import torch


def pearson(x, y, dim: int = -2, mask=None, eps: float = 1e-8) -> torch.Tensor:
    """Pearson r between ``x`` and ``y`` along ``dim`` (time), batched over all other dims.

    x, y: tensors (or arrays) of the same shape, e.g. (batch, time, 1) -> (batch, 1).
    mask: optional 0/1 weights broadcastable to x (e.g. (batch, time, 1)); only samples with
      mask 1 count. Training windows at recording edges use it so that every sample is
      scored once per epoch.
    A constant input (zero variance) gives r = 0, not NaN, as the challenge reference does.
    NumPy inputs are computed in float64 and returned as a tensor.
    """
    if not torch.is_tensor(x):
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if not torch.is_tensor(y):
        y = torch.as_tensor(np.asarray(y, dtype=np.float64), device=x.device)
    if x.shape != y.shape:
        raise ValueError(f"pearson: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    if mask is None:
        xc = x - x.mean(dim=dim, keepdim=True)
        yc = y - y.mean(dim=dim, keepdim=True)
    else:
        mask = torch.as_tensor(mask, dtype=x.dtype, device=x.device).expand_as(x)
        n = mask.sum(dim=dim, keepdim=True).clamp_min(1)
        xc = (x - (x * mask).sum(dim=dim, keepdim=True) / n) * mask
        yc = (y - (y * mask).sum(dim=dim, keepdim=True) / n) * mask
        x, y = x * mask, y * mask
    cov = (xc * yc).sum(dim=dim)
    sx = xc.pow(2).sum(dim=dim)
    sy = yc.pow(2).sum(dim=dim)
    # A series counts as constant when its spread is at rounding level relative to its size
    # (a float32 constant's mean is not exact, so its residuals are tiny but not zero).
    rel = (16 * torch.finfo(x.dtype).eps) ** 2
    const = (sx <= rel * x.pow(2).sum(dim=dim)) | (sy <= rel * y.pow(2).sum(dim=dim))
    denom = torch.sqrt((sx * sy).clamp_min(eps**4))  # clamp inside: sqrt'(0) would make NaN gradients
    return torch.where(const, torch.zeros_like(cov), cov / denom)


def _constant(std, x, dim: int):
    """Where a series counts as constant, by the rule ``pearson`` uses: its std at rounding level
    relative to its size (a float32 constant's mean is not exact, so its residuals are tiny but not zero)."""
    if torch.is_tensor(x):
        size, eps = x.pow(2).mean(dim, keepdim=True).sqrt(), torch.finfo(std.dtype).eps
    else:
        size, eps = np.sqrt(np.square(x, dtype=std.dtype).mean(dim, keepdims=True)), np.finfo(std.dtype).eps
    return std <= 16 * eps * size


def zscore(x, dim: int = -1, dtype=None):
    """``x`` standardized along ``dim``: mean 0, population std 1. Arrays and tensors alike.

    A constant series (the rule ``pearson`` uses) becomes zeros, never rounding noise divided by
    ~0. dtype: the dtype NumPy computes the mean and std in (default x's own; e.g. float64 for
    float32 EEG); tensors are computed in their own dtype. The result is x's type, in the dtype of
    x's arithmetic with the statistics.
    """
    if torch.is_tensor(x):
        mean = x.mean(dim, keepdim=True)
        std = x.std(dim, keepdim=True, correction=0)
        const = _constant(std, x, dim)
        return torch.where(const, torch.zeros_like(x), (x - mean) / torch.where(const, torch.ones_like(std), std))
    mean = x.mean(dim, keepdims=True, dtype=dtype)
    std = x.std(dim, keepdims=True, dtype=dtype)
    const = _constant(std, x, dim)
    return np.where(const, 0, (x - mean) / np.where(const, np.ones_like(std), std))


def pearson_loss(pred: torch.Tensor, target: torch.Tensor, mask=None) -> torch.Tensor:
    """Negative Pearson r, averaged over batch and outputs.

    pred, target: (batch, time, k); mask: optional (batch, time, 1) -> scalar.
    With a mask, each window's r is weighted by its number of valid samples, so a short
    edge piece counts for what it holds; with full masks this is the plain mean.
    """
    r = pearson(pred, target, dim=1, mask=mask)
    if mask is None:
        return -r.mean()
    n = torch.as_tensor(mask, dtype=r.dtype).sum(dim=1).expand_as(r)
    return -(r * n).sum() / n.sum().clamp_min(1)


def paired_differences(a: dict, b: dict) -> dict:
    """Per-key differences a[k] - b[k] over the keys both have (e.g. subjects, or runs), the way
    the project compares two models: {'n', 'diff' (mean), 'sem' (standard error; None below 2),
    'higher' (how many keys a is higher on)}. Pairing cancels the large differences between
    subjects that a comparison of two means would carry."""
    d = np.array([a[k] - b[k] for k in a if k in b], dtype=np.float64)
    return {"n": len(d), "diff": float(d.mean()) if len(d) else None,
            "sem": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None, "higher": int((d > 0).sum())}
