"""Precision: amp='auto' picks bfloat16 only where the device has fast bf16 matrix units; a bf16
training step stays close to float32; bf16 training is deterministic; the checkpoint records the
precision and test.py infers in it unless told otherwise."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

import newmodel
import runtime
import train
from metrics import pearson_loss

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("test_script_precision", ROOT / "test.py")
test_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_script)

TINY = ["--model=ivlaai", "--ivlaai_width=8", "--ivlaai_layers=1", "--ivlaai_blocks=1", "--window_s=1", "--threads=1",
        "--epochs=2", "--avg_epochs=1"]


def test_auto_is_bf16_only_with_amx_or_a_bf16_gpu(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"cpu_name": "X", "amx_bf16": False})
    assert runtime.resolve_amp("auto", cpu) == ("none", "amp=auto: CPU X has no AMX bfloat16 tiles")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"cpu_name": "X", "amx_bf16": True})
    monkeypatch.setattr(torch.cpu, "_init_amx", lambda: True)
    assert runtime.resolve_amp("auto", cpu) == ("bf16", "amp=auto: CPU X has AMX bfloat16 tiles")
    monkeypatch.setattr(torch.cpu, "_init_amx", lambda: False)  # the OS refuses the tiles
    assert runtime.resolve_amp("auto", cpu)[0] == "none"
    assert runtime.resolve_amp("none", cpu) == ("none", "amp=none")  # --amp=none forces float32
    assert runtime.resolve_amp("bf16", cpu) == ("bf16", "amp=bf16")


def test_a_bf16_training_step_loss_is_within_0_01_of_float32():
    """Same weights, same batch: the -Pearson loss under bf16 autocast is within 0.01 of float32's
    (bf16 keeps 8 bits of mantissa; the loss and its reductions run in float32)."""
    torch.manual_seed(0)
    model = newmodel.MODELS["ivlaai"](**newmodel.model_args("ivlaai", {
        **{k: v for k, v in __import__("cli").defaults("train").items()}, "n_chans": 16, "n_subjects": 0,
        "ivlaai_width": 32, "ivlaai_blocks": 2}))
    g = torch.Generator().manual_seed(1)
    env = torch.randn(8, 320, 1, generator=g)
    eeg = env @ torch.randn(1, 16, generator=g) + torch.randn(8, 320, 16, generator=g)
    mask = torch.ones(8, 320, 1)
    model.eval()  # no dropout: the two passes see the same network
    losses, grads = {}, {}
    for amp in ("none", "bf16"):
        model.zero_grad()
        with runtime.autocast(torch.device("cpu"), amp):
            pred = model(eeg)
        loss = pearson_loss(pred.float(), env, mask)
        loss.backward()
        losses[amp] = float(loss.detach())
        grads[amp] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert abs(losses["bf16"] - losses["none"]) < 0.01, losses
    cos = float(torch.nn.functional.cosine_similarity(grads["bf16"], grads["none"], dim=0))
    assert cos > 0.98, cos  # the step goes the same way


def test_bf16_training_is_deterministic_and_recorded(tmp_path, capsys):
    data = tmp_path / "npz"
    data.mkdir()
    rng = np.random.default_rng(0)
    mix = rng.standard_normal(64)
    for s in (1, 2):
        for t in (1, 2):
            env = np.abs(np.convolve(rng.standard_normal(64 * 20 + 15), np.ones(16) / 16, "valid"))[:, None]
            eeg = env * mix + 0.5 * rng.standard_normal((len(env), 64))
            np.savez(data / f"DTU_S{s}_{t:03d}.npz", eeg=eeg.astype(np.float32), envelope=env.astype(np.float32))
    cks = []
    for name in ("a", "b"):
        train.main([f"--data_dir={data}", *TINY, f"--run_dir={tmp_path / name}", "--amp=bf16"])
        cks.append(torch.load(tmp_path / name / "ivlaai" / "seed-1" / "best.pt", weights_only=True))
    assert "bfloat16 autocast (amp=bf16)" in capsys.readouterr().out
    assert cks[0]["precision"] == "bf16" and all(torch.equal(cks[0]["model"][k], cks[1]["model"][k])
                                                 for k in cks[0]["model"])
    # the weights stay float32
    assert all(v.dtype == torch.float32 for v in cks[0]["model"].values() if v.is_floating_point())
    # test.py infers in the checkpoint's precision unless --amp is given
    seen = []
    real = test_script.predict

    def spy(model, eeg, subject_index, device, amp="none"):
        seen.append(amp)
        return real(model, eeg, subject_index, device, amp)

    test_script.predict = spy
    try:
        for extra, want in (([], "bf16"), (["--amp=none"], "none")):
            seen.clear()
            test_script.main([f"--run_dir={tmp_path / 'a'}", "--test_dir=None", f"--eval_dir={data}",
                              f"--result_dir={tmp_path / ('p' + want)}", "--chance_draws=10", *extra])
            assert seen and set(seen) == {want}
    finally:
        test_script.predict = real
