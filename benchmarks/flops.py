"""FLOPs per sample of a model, counted three ways so that a wrong count shows up as a disagreement:
``torch.utils.flop_counter.FlopCounterMode`` (forward, and training with grouped convolutions'
weight gradients counted right), the conv1d/conv2d/linear calls a forward makes, and, for VLAAI,
by hand. Also ``make_batch``, the synthetic batch every benchmark figure is measured on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

import runtime
from metrics import pearson_loss

VLAAI_HAND_MFLOP = 13.697152     # see vlaai_hand_flops()


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    """convolution_backward FLOPs with grouped convs counted right.

    For a (non-transposed) convolution, the input gradient and the weight gradient each cost what
    the forward costs: 2 x output elements x (in_channels / groups) x kernel. torch 2.13's formula
    builds the weight-gradient count from batch/channel-swapped shapes, which loses the division
    by ``groups``. Transposed convs are not used by these models; they keep torch's formula.
    """
    if transposed:
        from torch.utils.flop_counter import conv_backward_flop
        raw = getattr(conv_backward_flop, "__wrapped__", conv_backward_flop)
        return raw(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                   _output_padding, groups, output_mask, out_shape)
    fwd = conv_flop_count(x_shape, w_shape, grad_out_shape)
    return fwd * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


CORRECTED = {torch.ops.aten.convolution_backward: _conv_backward_flop}


def make_batch(batch: int, window: int, n_chans: int = 64, device="cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, window, n_chans, generator=g)
    y = torch.randn(batch, window, 1, generator=g)
    mask = torch.ones(batch, window, 1)
    subj = torch.zeros(batch, dtype=torch.long)
    return [t.to(device) for t in (x, y, mask, subj)]


def count_flops(model, x, y, mask, subj, amp: str = "none") -> dict:
    """FLOPs of one forward, and of forward + loss + backward (as counted and corrected)."""
    device = x.device
    model.train()
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad(), runtime.autocast(device, amp):
            model(x, subject=subj)
    fwd = fc.get_total_flops()
    res = {}
    for key, mapping in (("train_counted", None), ("train", CORRECTED)):
        model.zero_grad(set_to_none=True)
        with FlopCounterMode(display=False, custom_mapping=mapping) as fc:
            with runtime.autocast(device, amp):
                pred = model(x, subject=subj)
            pearson_loss(pred.float(), y, mask).backward()
        res[key] = fc.get_total_flops()
    model.zero_grad(set_to_none=True)
    return {"forward": fwd, **res}


def flops_per_sample(model, window: int, batch: int = 2, amp: str = "none") -> dict:
    """count_flops of a copy of ``model`` on the meta device (shapes only: fast, same count), per sample."""
    import copy

    m = copy.deepcopy(model).to("meta")
    x, y, mask, subj = (t.to("meta") for t in make_batch(batch, window))
    c = count_flops(m, x, y, mask, subj, amp)
    return {k: v / (batch * window) for k, v in c.items()}


class _CallFlops(TorchFunctionMode):
    """Counts 2 x output elements x multiply-adds per output of every conv1d/conv2d/linear call."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (F.conv1d, F.conv2d, F.linear):
            w = args[1] if len(args) > 1 else kwargs["weight"]
            per_out = w.shape[1] if func is F.linear else w[0].numel()   # in/groups x kernel for convs
            self.total += 2 * out.numel() * per_out
        return out


def call_flops(model, x, subj) -> int:
    """Forward FLOPs from the functional calls (conv1d, conv2d, linear) the forward makes: a count
    independent of FlopCounterMode's aten-level one."""
    with torch.no_grad(), _CallFlops() as c:
        model(x, subject=subj)
    return c.total


def vlaai_hand_flops(window: int | None = None, n_chans=64, filters=(256, 256, 256, 128, 128), kernel=8,
                     context=32, blocks=4) -> float:
    """VLAAI forward FLOPs per output sample by hand: 2 x multiply-adds of every conv/dense layer.

    Per block: extractor convs 64->256->256->256->128->128 (kernel 8), dense 128->64, output
    context conv 64->64 (kernel 32); 4 blocks share nothing in FLOPs; then dense 64->1. The
    extractor convs are 'valid' (as in the reference): over a window of ``window`` samples each
    computes window - 7 outputs (the last 7 are padded zeros). ``window=None``: the long-window
    limit, 2 x (4 x (1,572,864 + 8,192 + 131,072) + 64) = 13,697,152.
    """
    chans = [n_chans, *filters]
    valid = 1.0 if window is None else (window - (kernel - 1)) / window
    per_block = valid * sum(kernel * chans[i] * chans[i + 1] for i in range(len(filters)))
    per_block += filters[-1] * n_chans + context * n_chans * n_chans
    return 2 * (blocks * per_block + n_chans)
