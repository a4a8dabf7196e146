"""Models that reconstruct the speech envelope from EEG.

All models take EEG time-first and return one envelope value per EEG sample:

    forward(eeg, subject=None): eeg (batch, time, n_chans) -> (batch, time, 1)

``subject`` is an optional LongTensor (batch,) of subject indices; only ``ImprovedVLAAI`` with
``n_subjects > 0`` uses it, the others ignore it.  Every model works for any time length
(1 sample included); samples outside the recording are taken as zeros.

Models (``build_model`` names):
    'vlaai'        VLAAI (Accou et al. 2023), exact re-creation, 1,740,289 parameters (config.py's default).
    'linear'       RidgeDecoder: ridge backward model over EEG lags 0..400 ms, closed-form fit.
    'linear_conv'  LinearConv: the challenge's Conv1D linear baseline, trained by gradient descent.
    'ivlaai'       ImprovedVLAAI: the project's network, 797,505 parameters.

Receptive field convention, in samples: ``(before, after)`` means that output ``t`` depends on
input samples ``t - before .. t + after`` and on nothing else.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import cli
from metrics import pearson

__all__ = [
    "VLAAI", "RidgeDecoder", "LinearConv", "ImprovedVLAAI",
    "build_model", "model_args", "receptive_field", "MODEL_NAMES",
]


_LEAK = 0.3      # Keras LeakyReLU default slope
_LN_EPS = 1e-3   # Keras LayerNormalization default epsilon


def _keras_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every Conv1d/Linear (Keras defaults)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _conv_span(conv: nn.Conv1d) -> int:
    """Number of extra samples a Conv1d sees besides the current one: dilation * (kernel - 1)."""
    return conv.dilation[0] * (conv.kernel_size[0] - 1)


def _conv_time(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int = 1,
               groups: int = 1) -> torch.Tensor:
    """A Conv1d over time, 'valid', on a time-first tensor: (B, T, Cin) -> (B, T - span, Cout).

    ``weight`` (Cout, Cin / groups, k) and ``bias`` (Cout,) are a Conv1d's. Runs as a conv2d on
    the (B, Cin, 1, T) channels-last view of ``x``, with no transposing copies: oneDNN then
    convolves the time-first memory in place with its brgemm kernel, about 1.3x faster on CPU
    than ``nn.Conv1d`` on a channels-first copy (blocked kernel plus a layout reorder around every
    conv). The output is the (B, T', Cout) view of a channels-last result. The parameters stay
    ``nn.Conv1d``'s, so checkpoints are unchanged. Needs T > span.
    """
    y = F.conv2d(x.contiguous().transpose(1, 2).unsqueeze(2), weight.unsqueeze(2), bias,
                 dilation=(1, dilation), groups=groups)
    return y.squeeze(2).transpose(1, 2)


def _apply_conv(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``_conv_time`` with an ``nn.Conv1d``'s parameters and settings."""
    return _conv_time(x, conv.weight, conv.bias, conv.dilation[0], conv.groups)


def _pad_time(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Zeros added before and after the time axis of a (B, T, C) tensor."""
    return F.pad(x, (0, 0, before, after))


# ----------------------------------------------------------------------------------------------
# VLAAI
# ----------------------------------------------------------------------------------------------
class _VLAAIExtractor(nn.Module):
    """VLAAI extractor: 5 x [Conv1D 'valid' -> LayerNorm -> LeakyReLU -> zero-pad k-1 at the END].

    (batch, time, in_chans) -> (batch, time, filters[-1]). Output t sees inputs t..t+35.
    The last k-1 outputs of every layer are zeros, as in the Keras reference (pad after the
    activation), computed in that order.
    """

    def __init__(self, in_chans: int = 64, filters: Sequence[int] = (256, 256, 256, 128, 128),
                 kernel: int = 8):
        super().__init__()
        chans = [in_chans, *filters]
        self.convs = nn.ModuleList(nn.Conv1d(chans[i], chans[i + 1], kernel) for i in range(len(filters)))
        self.norms = nn.ModuleList(nn.LayerNorm(f, eps=_LN_EPS) for f in filters)
        self.act = nn.LeakyReLU(_LEAK)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, time, in_chans) -> (batch, time, filters[-1])."""
        T = x.shape[1]
        for conv, norm in zip(self.convs, self.norms, strict=True):
            k = _conv_span(conv)
            if T <= k:   # 'valid' leaves nothing: every output is a padded zero
                x = x.new_zeros(x.shape[0], T, conv.out_channels)
                continue
            x = _pad_time(self.act(norm(_apply_conv(x, conv))), 0, k)
        return x

    def span(self) -> int:
        return sum(_conv_span(c) for c in self.convs)


class _VLAAIOutputContext(nn.Module):
    """VLAAI output context: zero-pad k-1 at the START -> Conv1D(k) -> LayerNorm -> LeakyReLU.

    (batch, time, chans) -> (batch, time, filters). Output t sees inputs t-31..t.
    """

    def __init__(self, in_chans: int = 64, filters: int = 64, kernel: int = 32):
        super().__init__()
        self.conv = nn.Conv1d(in_chans, filters, kernel)
        self.norm = nn.LayerNorm(filters, eps=_LN_EPS)
        self.act = nn.LeakyReLU(_LEAK)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, time, in_chans) -> (batch, time, filters)."""
        y = _apply_conv(_pad_time(x, _conv_span(self.conv), 0), self.conv)
        return self.act(self.norm(y))

    def span(self) -> int:
        return _conv_span(self.conv)


class VLAAI(nn.Module):
    """VLAAI (Accou et al., Sci. Rep. 13:812, 2023), as in the public Keras reference.

    4 blocks; each block = shared extractor -> its own Dense(n_chans) -> shared output context.
    Block input = EEG + previous block's output (first block: EEG). Then Dense(1).
    With n_chans=64 this has 1,740,289 parameters. Receptive field: 124 samples before, 140 after.
    Weights are Glorot-uniform / zero-bias initialised like Keras.
    """

    closed_form = False

    def __init__(self, n_chans: int = 64, n_blocks: int = 4,
                 filters: Sequence[int] = (256, 256, 256, 128, 128), kernel: int = 8,
                 context_kernel: int = 32):
        super().__init__()
        self.n_chans = n_chans
        self.n_blocks = n_blocks
        self.extractor = _VLAAIExtractor(n_chans, filters, kernel)          # shared by all blocks
        self.dense = nn.ModuleList(nn.Linear(filters[-1], n_chans) for _ in range(n_blocks))
        self.output_context = _VLAAIOutputContext(n_chans, n_chans, context_kernel)  # shared
        self.final = nn.Linear(n_chans, 1)
        _keras_init(self)

    def blocks(self) -> list[tuple[nn.Module, nn.Module, nn.Module]]:
        """The modules each block applies, in order: [(extractor, dense_i, output_context), ...]."""
        return [(self.extractor, d, self.output_context) for d in self.dense]

    def forward(self, eeg: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """eeg: (batch, time, n_chans) -> (batch, time, 1). ``subject`` is ignored."""
        x = eeg
        for i, dense in enumerate(self.dense):
            inp = eeg if i == 0 else eeg + x
            x = self.output_context(dense(self.extractor(inp)))
        return self.final(x)

    def receptive_field(self) -> tuple[int, int]:
        return self.n_blocks * self.output_context.span(), self.n_blocks * self.extractor.span()


# ----------------------------------------------------------------------------------------------
# Linear decoders
# ----------------------------------------------------------------------------------------------
def _forward_lag_conv(eeg: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """out[t] = bias + sum_k weight[0, :, k] . eeg[t + k]; zeros past the end. (B,T,C) -> (B,T,1)."""
    return _conv_time(_pad_time(eeg, 0, weight.shape[-1] - 1), weight, bias)


class RidgeDecoder(nn.Module):
    """Linear backward model (stimulus reconstruction) fitted in closed form by ridge regression.

    output[t] = bias + sum_{k=0..lags-1} W[k] . eeg[t + k]   (EEG after t; zeros past the end).
    ``lags=26`` covers 0-400 ms at 64 Hz. Weights start at zero; call ``fit``.
    Parameters: ``weight`` (1, n_chans, lags), ``bias`` (1,), so state_dict round-trips.
    """

    closed_form = True

    def __init__(self, n_chans: int, lags: int):
        super().__init__()
        self.n_chans, self.lags = n_chans, lags
        self.weight = nn.Parameter(torch.zeros(1, n_chans, lags))
        self.bias = nn.Parameter(torch.zeros(1))
        self.register_buffer("alpha", torch.tensor(float("nan"), dtype=torch.float64))

    def forward(self, eeg: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """eeg: (batch, time, n_chans) -> (batch, time, 1). ``subject`` is ignored."""
        return _forward_lag_conv(eeg, self.weight, self.bias)

    def receptive_field(self) -> tuple[int, int]:
        return 0, self.lags - 1

    # -- fitting ---------------------------------------------------------------------------------
    def _lagged(self, eeg: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 of the lag matrix: X[t, k*C + c] = eeg[t + k, c] (0 past the end)."""
        T, C = eeg.shape
        X = np.zeros((stop - start, self.lags * C), dtype=np.float64)
        for k in range(self.lags):
            a, b = start + k, min(stop + k, T)
            if b > a:
                X[: b - a, k * C:(k + 1) * C] = eeg[a:b]
        return X

    def _chunks(self, eeg: np.ndarray, chunk: int):
        for s in range(0, eeg.shape[0], chunk):
            yield s, self._lagged(eeg, s, min(s + chunk, eeg.shape[0]))

    @staticmethod
    def _check(rec, n_chans):
        eeg, env = rec
        eeg = np.asarray(eeg, dtype=np.float64)
        env = np.asarray(env, dtype=np.float64).reshape(len(env), -1)
        if eeg.ndim != 2 or eeg.shape[1] != n_chans or env.shape != (eeg.shape[0], 1):
            raise ValueError(f"RidgeDecoder.fit: expected eeg (T, {n_chans}) and env (T, 1), "
                             f"got {eeg.shape} and {env.shape}")
        return eeg, env

    @torch.no_grad()
    def fit(self, train: Iterable, val: Iterable, alphas: Sequence[float] | None = None,
            chunk: int = 4096) -> dict:
        """Fit by ridge regression; choose the ridge strength on validation data.

        train, val: lists of (eeg (T, n_chans), env (T, 1)) float arrays, whole (standardized)
          recordings. X^T X and X^T y of the lagged EEG are accumulated recording by recording,
          ``chunk`` rows at a time (no giant lag matrix), in float64.
        alphas: ridge strengths *relative* to the mean diagonal of the centred X^T X, i.e. the
          penalty is ``alpha * mean(diag(Xc^T Xc)) * I`` (so the grid does not depend on the
          amount of data). Default ``10.0 ** np.arange(-6, 3)`` (1e-6 .. 1e2).
        The weights of the alpha with the best mean validation Pearson r (one r per val
        recording) are stored in ``weight``/``bias``.
        Returns {'alpha': best relative alpha, 'alpha_abs': its absolute penalty,
                 'val_r': best mean val r, 'val_r_per_alpha': {alpha: mean val r}}.
        """
        alphas = 10.0 ** np.arange(-6, 3) if alphas is None else np.asarray(alphas, dtype=np.float64)
        alphas = np.atleast_1d(alphas).astype(np.float64)
        C, D = self.n_chans, self.n_chans * self.lags
        xtx = np.zeros((D, D))
        xty = np.zeros(D)
        sx, sy, n = np.zeros(D), 0.0, 0
        for rec in train:
            eeg, env = self._check(rec, C)
            for s, X in self._chunks(eeg, chunk):
                y = env[s:s + len(X), 0]
                xtx += X.T @ X
                xty += X.T @ y
                sx += X.sum(0)
                sy += y.sum()
                n += len(X)
        if n == 0:
            raise ValueError("RidgeDecoder.fit: no training data")
        mx, my = sx / n, sy / n
        xtx_c = xtx - n * np.outer(mx, mx)          # centred: the bias is fitted, not penalised
        xty_c = xty - n * mx * my
        scale = float(np.mean(np.diag(xtx_c)))
        scale = scale if scale > 0 else 1.0
        evals, evecs = np.linalg.eigh(xtx_c)
        evals = np.clip(evals, 0.0, None)
        proj = evecs.T @ xty_c
        # One weight vector per alpha: W (D, n_alpha), b (n_alpha,)
        W = evecs @ (proj[:, None] / (evals[:, None] + alphas[None, :] * scale))
        b = my - mx @ W

        rs = []
        for rec in val:
            eeg, env = self._check(rec, C)
            pred = np.concatenate([X @ W for _, X in self._chunks(eeg, chunk)], axis=0) + b
            r = pearson(pred, np.repeat(env, len(alphas), axis=1), dim=0)   # (n_alpha,)
            rs.append(r.numpy())
        if not rs:
            raise ValueError("RidgeDecoder.fit: no validation recordings to choose alpha on")
        mean_r = np.mean(np.stack(rs), axis=0)
        best = int(np.argmax(mean_r))

        w = W[:, best].reshape(self.lags, C).T          # (C, lags): w[c, k] = W[k*C + c]
        self.weight.copy_(torch.as_tensor(w[None], dtype=self.weight.dtype))
        self.bias.fill_(float(b[best]))
        self.alpha.fill_(float(alphas[best]))
        return {
            "alpha": float(alphas[best]),
            "alpha_abs": float(alphas[best] * scale),
            "val_r": float(mean_r[best]),
            "val_r_per_alpha": {float(a): float(r) for a, r in zip(alphas, mean_r, strict=True)},
        }


class LinearConv(nn.Module):
    """The challenge's linear baseline: one Conv1D n_chans -> 1 with ``taps`` taps, trained by SGD.

    output[t] = bias + sum_{k=0..taps-1} W[k] . eeg[t + k]  (looks forward, zeros past the end).
    """

    closed_form = False

    def __init__(self, n_chans: int, taps: int):
        super().__init__()
        self.n_chans, self.taps = n_chans, taps
        self.conv = nn.Conv1d(n_chans, 1, taps)
        _keras_init(self)

    def forward(self, eeg: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """eeg: (batch, time, n_chans) -> (batch, time, 1). ``subject`` is ignored."""
        return _forward_lag_conv(eeg, self.conv.weight, self.conv.bias)

    def receptive_field(self) -> tuple[int, int]:
        return 0, _conv_span(self.conv)


# ----------------------------------------------------------------------------------------------
# Improved VLAAI
# ----------------------------------------------------------------------------------------------
class _Dropout(nn.Module):
    """Dropout (rate ``p``, survivors scaled up) whose CPU mask costs a quarter of ``nn.Dropout``'s.

    torch's CPU dropout draws one Bernoulli per element (about a fifth of ivlaai's training step).
    Here each element gets 16 random bits instead, 4 per 64-bit draw, and is dropped when they
    fall below ``round(p * 65536)``: ``p`` is used to the nearest 1/65536 (0.2 -> 0.199997), and
    survivors are scaled by the exact inverse of the kept fraction, so the mean is unchanged.
    Masks come from torch's seeded CPU generator. Other devices use ``F.dropout``.
    x: any shape -> the same shape.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        self._dropped = round(self.p * 65536)          # out of 65536 equally likely 16-bit values

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, None)
        u16 = bits.view(torch.int16)[:n].view(x.shape)  # uniform on -32768..32767
        keep = u16 >= self._dropped - 32768
        return x * (keep.to(x.dtype) * (65536 / (65536 - self._dropped)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _ConvNormAct(nn.Module):
    """Conv1d (optionally depthwise-separable) -> LayerNorm(channels) -> LeakyReLU -> Dropout.

    ``look='ahead'``: output t sees inputs t..t+span (zeros padded at the end);
    ``look='back'``: output t sees t-span..t (zeros padded at the start). (B,T,Cin) -> (B,T,Cout).
    """

    def __init__(self, cin: int, cout: int, kernel: int, look: str, separable: bool, dropout: float):
        super().__init__()
        if look not in ("ahead", "back"):
            raise ValueError(look)
        self.look = look
        if separable:
            self.conv = nn.Conv1d(cin, cin, kernel, groups=cin, bias=False)  # depthwise (time)
            self.point = nn.Conv1d(cin, cout, 1)                             # pointwise (channels)
        else:
            self.conv = nn.Conv1d(cin, cout, kernel)
            self.point = None
        self.norm = nn.LayerNorm(cout, eps=_LN_EPS)
        self.act = nn.LeakyReLU(_LEAK)
        self.drop = _Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, time, cin) -> (batch, time, cout)."""
        k = _conv_span(self.conv)
        y = _apply_conv(_pad_time(x, 0, k) if self.look == "ahead" else _pad_time(x, k, 0), self.conv)
        if self.point is not None:
            y = _apply_conv(y, self.point)
        return self.drop(self.act(self.norm(y)))

    def span(self) -> int:
        return _conv_span(self.conv)


class _Extractor(nn.Sequential):
    """Stack of look-ahead conv layers: (B, T, cin) -> (B, T, width)."""

    def __init__(self, cin, width, layers, kernel, separable, dropout):
        super().__init__(*[_ConvNormAct(cin if i == 0 else width, width, kernel, "ahead", separable, dropout)
                           for i in range(layers)])

    def span(self) -> int:
        return sum(m.span() for m in self)


class ImprovedVLAAI(nn.Module):
    """The project's network ('ivlaai'): a smaller, regularised, optionally subject-aware VLAAI.

    Per block i (i = 1..n_blocks):
        x_i = proj_i(concat(EEG, o_1..o_{i-1}))      if concat (ConvConcatNet-style, dense links)
            = stem(EEG) + o_{i-1}                     otherwise (VLAAI-style add; o_0 = 0)
        x_i += subject vector                         if n_subjects > 0 and subject given
        o_i = context(dense_i(extractor(x_i)))        extractor/context shared across blocks if shared
    Output = Linear(concat(o_1..o_n)) if concat else Linear(o_n).

    extractor: ``layers`` x [conv (kernel, look-ahead, depthwise-separable if ``separable``),
    LayerNorm, LeakyReLU(0.3), Dropout]; dense_i: Linear(width -> feat) + Dropout;
    context: look-back conv (``context`` taps) feat -> feat, LayerNorm, LeakyReLU.
    Receptive field (defaults): before = n_blocks * (context - 1) = 124, after =
    n_blocks * layers * (kernel - 1) = 140 samples, the same as VLAAI.

    Subjects: ``n_subjects > 0`` adds a learned vector (zero-initialised, HappyQuokka-style) per
    subject at every time step of every block input. ``subject`` indices outside
    [0, n_subjects) (e.g. -1) and ``subject=None`` mean 'unknown subject' (no vector). While
    training, each subject is replaced by 'unknown' with prob. ``subject_dropout`` so the model
    also learns the unknown-subject case (held-out listeners).

    ``chan_dropout`` > 0: while training, each EEG channel of each window is zeroed with this
    probability (the rest scaled by 1 / (1 - p)), before the first block.
    """

    closed_form = False

    def __init__(self, n_chans: int, *, n_blocks: int, concat: bool, separable: bool, shared: bool, width: int,
                 layers: int, kernel: int, feat: int, context: int, dropout: float, n_subjects: int,
                 subject_dropout: float, chan_dropout: float):
        # No defaults here: config.py holds them (build_model / model_args), written once.
        super().__init__()
        if n_blocks < 1 or layers < 1 or kernel < 1 or context < 1:
            raise ValueError("ImprovedVLAAI: n_blocks, layers, kernel and context must be >= 1")
        self.n_chans, self.n_blocks, self.concat, self.shared = n_chans, n_blocks, concat, shared
        self.n_subjects = int(n_subjects or 0)
        self.subject_dropout = float(subject_dropout)
        # Zeroes whole EEG channels of a window while training (an augmentation: the decoder cannot
        # lean on one electrode, whose usefulness differs between listeners); off at eval.
        self.chan_drop = nn.Dropout1d(chan_dropout) if chan_dropout > 0 else None

        if concat:
            self.proj = nn.ModuleList(nn.Linear(n_chans + i * feat, feat) for i in range(n_blocks))
            self.stem = None
        else:
            self.proj = None
            self.stem = nn.Linear(n_chans, feat)

        def make_extractor():
            return _Extractor(feat, width, layers, kernel, separable, dropout)

        def make_context():
            return _ConvNormAct(feat, feat, context, "back", False, 0.0)

        n_own = 1 if shared else n_blocks
        self.extractors = nn.ModuleList(make_extractor() for _ in range(n_own))
        self.contexts = nn.ModuleList(make_context() for _ in range(n_own))
        self.dense = nn.ModuleList(nn.Sequential(nn.Linear(width, feat), _Dropout(dropout))
                                   for _ in range(n_blocks))
        self.head = nn.Linear(feat * n_blocks if concat else feat, 1)
        _keras_init(self)
        if self.n_subjects > 0:
            # row n_subjects = 'unknown subject': always zero, never trained
            self.subject_emb = nn.Embedding(self.n_subjects + 1, feat, padding_idx=self.n_subjects)
            nn.init.zeros_(self.subject_emb.weight)
        else:
            self.subject_emb = None

    def _subject_vector(self, subject: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.subject_emb is None or subject is None:
            return None
        idx = torch.as_tensor(subject, device=self.head.weight.device).long().reshape(batch)
        unknown = torch.full_like(idx, self.n_subjects)
        idx = torch.where((idx >= 0) & (idx < self.n_subjects), idx, unknown)
        if self.training and self.subject_dropout > 0:
            drop = torch.rand(idx.shape, device=idx.device) < self.subject_dropout
            idx = torch.where(drop, unknown, idx)
        return self.subject_emb(idx).unsqueeze(1)        # (batch, 1, feat)

    def forward(self, eeg: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """eeg: (batch, time, n_chans), subject: optional (batch,) long -> (batch, time, 1)."""
        sub = self._subject_vector(subject, eeg.shape[0])
        if self.chan_drop is not None:
            eeg = self.chan_drop(eeg.transpose(1, 2)).transpose(1, 2)  # Dropout1d wants (batch, chans, time)
        base = self.stem(eeg) if self.stem is not None else None
        feats = [eeg]
        o = None
        outs = []
        for i in range(self.n_blocks):
            if self.proj is not None:
                x = self.proj[i](torch.cat(feats, dim=-1))
            else:
                x = base if o is None else base + o
            if sub is not None:
                x = x + sub
            j = 0 if self.shared else i
            o = self.contexts[j](self.dense[i](self.extractors[j](x)))
            outs.append(o)
            feats.append(o)
        return self.head(torch.cat(outs, dim=-1) if self.concat else o)

    def receptive_field(self) -> tuple[int, int]:
        before = sum(self.contexts[0 if self.shared else i].span() for i in range(self.n_blocks))
        after = sum(self.extractors[0 if self.shared else i].span() for i in range(self.n_blocks))
        return before, after


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------
def model_args(name: str, config: dict) -> dict:
    """The constructor arguments of model ``name`` from a config dict.

    ``config`` may be a whole run config: only the model's keys (cli.model_keys(), plus
    ``n_chans`` and ``n_subjects``) are read; a missing key takes its default from config.py, the
    one place model defaults are written. A checkpoint stores the result, so a model is rebuilt
    from its own arguments, whatever config.py says later.
    """
    base = cli.defaults()

    def get(key):
        v = config.get(key)
        return base.get(key, 0) if v is None else v

    if name == "vlaai":
        return {"n_chans": int(get("n_chans"))}
    if name == "linear":
        return {"n_chans": int(get("n_chans")), "lags": int(get("linear_lags"))}
    if name == "linear_conv":
        return {"n_chans": int(get("n_chans")), "taps": int(get("linear_conv_taps"))}
    if name == "ivlaai":
        return {"n_chans": int(get("n_chans")), "n_blocks": int(get("ivlaai_blocks")),
                "concat": bool(get("ivlaai_concat")), "separable": bool(get("ivlaai_separable")),
                "shared": bool(get("ivlaai_shared")), "width": int(get("ivlaai_width")),
                "layers": int(get("ivlaai_layers")), "kernel": int(get("ivlaai_kernel")),
                "feat": int(get("ivlaai_feat")), "context": int(get("ivlaai_context")),
                "dropout": float(get("dropout")), "n_subjects": int(get("n_subjects")),
                "subject_dropout": float(get("ivlaai_subject_dropout")),
                "chan_dropout": float(get("ivlaai_chan_dropout"))}
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")


MODELS = {"vlaai": VLAAI, "linear": RidgeDecoder, "linear_conv": LinearConv, "ivlaai": ImprovedVLAAI}
MODEL_NAMES = tuple(MODELS)


def build_model(name: str, /, **config) -> nn.Module:
    """Build model ``name`` ('vlaai', 'linear', 'linear_conv', 'ivlaai') from a config dict.

    ``config`` may be the whole project config: see ``model_args``.
    """
    args = model_args(name, config)  # an unknown name is a ValueError listing the valid ones
    return MODELS[name](**args)


def receptive_field(model_or_name, /, **config) -> tuple[int, int]:
    """(before, after) in samples: output t depends on inputs t-before .. t+after.

    Computed from the models' conv kernels/dilations and paddings, not by probing.
    ``model_or_name``: a model instance, or a build_model name (built with ``config``).
    """
    model = build_model(model_or_name, **config) if isinstance(model_or_name, str) else model_or_name
    return tuple(int(v) for v in model.receptive_field())
