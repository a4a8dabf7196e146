"""Tests of averaging.py: uniform averages of state dicts, EMA and last-K epoch averages, and resuming them."""
from __future__ import annotations

import pytest
import torch

from averaging import WeightAverage, average_state_dicts


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


def _set(model, value: float, steps: int = 0):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        model.steps.fill_(steps)


def _values(model) -> set:
    return {float(v) for p in model.parameters() for v in p.detach().flatten()}


def test_average_state_dicts():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(1), "h": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7), "h": torch.tensor([2.0], dtype=torch.float16)}
    out = average_state_dicts([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert out["n"] == 7 and out["n"].dtype == torch.long  # integers: the last one's
    assert out["h"].dtype == torch.float16 and float(out["h"]) == 1.5
    assert torch.equal(average_state_dicts([a])["w"], a["w"])


def test_no_averaging_evaluates_the_model_itself():
    m = Tiny()
    avg = WeightAverage(m)
    assert avg.eval_model is m and not avg.averaging
    avg.after_step()
    avg.after_epoch()
    assert avg.state() == {}


def test_the_last_two_epochs_are_averaged():
    m = Tiny()
    avg = WeightAverage(m, avg_epochs=2)
    assert avg.averaging and avg.eval_model is not m
    for epoch, value in enumerate([1.0, 3.0, 7.0], start=1):
        _set(m, value, steps=epoch)
        avg.after_step()  # no effect without EMA
        avg.after_epoch()
        want = {1: 1.0, 2: 2.0, 3: 5.0}[epoch]  # epoch 1 alone, then the mean of the last two
        assert _values(avg.eval_model) == {want}, epoch
        assert int(avg.eval_model.steps) == epoch
        assert _values(m) == {value}  # the trained weights are untouched
    assert len(avg.recent) == 2


def test_recent_states_are_copies_not_views_of_the_live_weights():
    m = Tiny()
    avg = WeightAverage(m, avg_epochs=3)
    _set(m, 1.0)
    avg.after_epoch()
    _set(m, 5.0)  # changing the model afterwards must not change the kept epoch
    assert {float(v) for v in avg.recent[0]["lin.weight"].flatten()} == {1.0}


def test_ema_follows_the_model_each_step():
    m = Tiny()
    _set(m, 0.0)
    avg = WeightAverage(m, ema_decay=0.5)
    assert avg.averaging
    _set(m, 1.0)
    avg.after_step()  # the first update copies the model
    _set(m, 3.0)
    avg.after_step()  # 0.5 * 1 + 0.5 * 3
    assert _values(avg.eval_model) == {2.0}
    avg.after_epoch()  # no epoch averaging with EMA
    assert _values(avg.eval_model) == {2.0}
    assert int(avg.state()["ema_n_averaged"]) == 2


@pytest.mark.parametrize("kw", [dict(ema_decay=0.9, avg_epochs=2), dict(ema_decay=0.5, avg_epochs=5)])
def test_ema_and_epoch_average_together_are_refused(kw):
    with pytest.raises(ValueError) as exc:
        WeightAverage(Tiny(), **kw)
    assert "avg_epochs" in str(exc.value) and "ema_decay" in str(exc.value)


def _checkpoint(avg: WeightAverage) -> dict:
    """What train.py saves: 'model' holds eval_model's weights, plus avg.state()."""
    return {"model": {k: v.clone() for k, v in avg.eval_model.state_dict().items()}, **avg.state()}


def test_state_and_load_round_trip_of_an_epoch_average():
    m = Tiny()
    avg = WeightAverage(m, avg_epochs=2)
    for value in (1.0, 3.0):
        _set(m, value)
        avg.after_epoch()
    _set(m, 4.0)  # trained on after the last epoch's end
    ck = _checkpoint(avg)
    assert set(ck) == {"model", "raw_model", "recent_states"}

    m2 = Tiny()
    resumed = WeightAverage(m2, avg_epochs=2)
    resumed.load(ck)
    assert _values(m2) == {4.0} and _values(resumed.eval_model) == {2.0}
    # and it goes on exactly as the run that was not interrupted
    for a, model in ((avg, m), (resumed, m2)):
        _set(model, 9.0)
        a.after_epoch()
    assert _values(resumed.eval_model) == _values(avg.eval_model) == {6.0}


def test_state_and_load_round_trip_of_an_ema():
    m = Tiny()
    avg = WeightAverage(m, ema_decay=0.5)
    for value in (1.0, 3.0):
        _set(m, value)
        avg.after_step()
    ck = _checkpoint(avg)
    assert set(ck) == {"model", "raw_model", "ema_n_averaged"}

    m2 = Tiny()
    resumed = WeightAverage(m2, ema_decay=0.5)
    resumed.load(ck)
    assert _values(m2) == {3.0} and _values(resumed.eval_model) == {2.0}
    assert int(resumed.ema.n_averaged) == 2
    for a, model in ((avg, m), (resumed, m2)):
        _set(model, 6.0)
        a.after_step()
    assert _values(resumed.eval_model) == _values(avg.eval_model) == {4.0}


def test_load_without_averaging_restores_the_model():
    m = Tiny()
    _set(m, 2.0)
    ck = _checkpoint(WeightAverage(m))
    m2 = Tiny()
    WeightAverage(m2).load(ck)
    assert _values(m2) == {2.0}
