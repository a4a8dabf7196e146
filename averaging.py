"""Weight averaging: what is validated, kept in best.pt and tested can be an average of weights,
which moves less from step to step than the raw weights (seed and epoch noise)."""
from __future__ import annotations

import copy

import torch


def average_state_dicts(states: list[dict]) -> dict:
    """Uniform average of state dicts: floating tensors averaged (in float64, then cast back),
    others (e.g. integer counters) taken from the last."""
    out = {}
    for k, v in states[-1].items():
        out[k] = torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
    return out


class WeightAverage:
    """The weights a run evaluates: the model itself, an exponential moving average updated every
    step (``ema_decay`` > 0), or the uniform average of the last ``avg_epochs`` epochs' weights,
    each taken at its epoch's end.

    ``eval_model`` is the module to validate and save; ``state()`` / ``load()`` carry what a
    resumed run needs."""

    def __init__(self, model: torch.nn.Module, ema_decay: float = 0.0, avg_epochs: int = 1):
        if ema_decay > 0 and avg_epochs > 1:
            raise ValueError("--avg_epochs and --ema_decay both average the weights: use one of them")
        self.model, self.avg_epochs, self.recent = model, avg_epochs, []
        self.ema = None
        if ema_decay > 0:
            self.ema = torch.optim.swa_utils.AveragedModel(
                model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.eval_model = self.ema.module
        elif avg_epochs > 1:
            self.eval_model = copy.deepcopy(model)
        else:
            self.eval_model = model

    @property
    def averaging(self) -> bool:
        return self.eval_model is not self.model

    def after_step(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def after_epoch(self) -> None:
        if self.avg_epochs > 1:
            self.recent = (self.recent + [{k: v.detach().clone() for k, v in self.model.state_dict().items()}])
            self.recent = self.recent[-self.avg_epochs:]
            self.eval_model.load_state_dict(average_state_dicts(self.recent))

    def state(self) -> dict:
        """Checkpoint entries beside 'model' (which holds eval_model's weights)."""
        out = {}
        if self.averaging:
            out["raw_model"] = self.model.state_dict()
        if self.ema is not None:
            out["ema_n_averaged"] = self.ema.n_averaged.clone()
        if self.avg_epochs > 1:
            out["recent_states"] = self.recent
        return out

    def load(self, ck: dict) -> None:
        self.model.load_state_dict(ck["raw_model"] if self.averaging else ck["model"])
        if self.averaging:
            self.eval_model.load_state_dict(ck["model"])
        if self.avg_epochs > 1:
            self.recent = list(ck["recent_states"])
        if self.ema is not None:
            self.ema.n_averaged.copy_(ck["ema_n_averaged"])
