"""Tests for newmodel.py (models, factory, receptive fields, ridge fit) and metrics.pearson."""

import numpy as np
import pytest
import scipy.stats
import torch

import cli
import config
import newmodel
from metrics import paired_differences, pearson, pearson_loss
from newmodel import (
    VLAAI,
    ImprovedVLAAI,
    LinearConv,
    RidgeDecoder,
    build_model,
    receptive_field,
)

ALL = ["vlaai", "linear", "linear_conv", "ivlaai"]

# Extra ivlaai variants checked for shape / receptive field / gradients.
IVLAAI_VARIANTS = {
    "ivlaai_add": dict(ivlaai_concat=False),
    "ivlaai_separable": dict(ivlaai_separable=True, ivlaai_width=32),
    "ivlaai_unshared": dict(ivlaai_shared=False, ivlaai_blocks=3, ivlaai_width=32,
                            ivlaai_kernel=5, ivlaai_layers=3, ivlaai_context=9),
    "ivlaai_subjects": dict(n_subjects=5),
    "ivlaai_chan_dropout": dict(ivlaai_chan_dropout=0.3),
}
CASES = {name: ("ivlaai" if name.startswith("ivlaai") and name != "ivlaai" else name,
                IVLAAI_VARIANTS.get(name, {}))
         for name in ALL + list(IVLAAI_VARIANTS)}


def make(case):
    torch.manual_seed(0)
    name, cfg = CASES[case]
    m = build_model(name, **cfg)
    if isinstance(m, RidgeDecoder):                     # unfitted ridge is all zeros
        with torch.no_grad():
            m.weight.normal_()
            m.bias.normal_()
    return m


# ---------------------------------------------------------------------------------------------
# Factory / config
# ---------------------------------------------------------------------------------------------
def test_vlaai_param_count():
    m = build_model("vlaai")
    assert sum(p.numel() for p in m.parameters()) == 1_740_289


def test_ivlaai_default_param_count():
    """The default ivlaai (full extractor convs since the speech cross-validation) and the
    depthwise-separable option; a change to either count is a change of design, not noise."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_model("ivlaai")) == 797_505
    assert count(build_model("ivlaai", ivlaai_separable=True)) == 286_017


def test_vlaai_extractor_is_shared():
    m = build_model("vlaai")
    blocks = m.blocks()
    assert len(blocks) == 4
    for ext, _dense, ctx in blocks:
        assert ext is m.extractor and ctx is m.output_context
    assert len({id(d) for _, d, _ in blocks}) == 4            # own dense layer per block
    # extractor parameters appear once: 5 convs + 5 layer norms, weight and bias each
    names = [n for n, _ in m.named_parameters()]
    assert sum(n.startswith("extractor.") for n in names) == 20
    assert sum("extractor" in n for n in names) == 20
    assert sum(n.startswith("output_context.") for n in names) == 4
    # and forward really runs the one extractor / context four times
    calls = {"ext": 0, "ctx": 0}
    m.extractor.register_forward_hook(lambda *a: calls.__setitem__("ext", calls["ext"] + 1))
    m.output_context.register_forward_hook(lambda *a: calls.__setitem__("ctx", calls["ctx"] + 1))
    m(torch.randn(1, 40, 64))
    assert calls == {"ext": 4, "ctx": 4}
    # LayerNorms are built in __init__ with Keras eps, over channels
    lns = [mod for mod in m.modules() if isinstance(mod, torch.nn.LayerNorm)]
    assert len(lns) == 6 and all(ln.eps == 1e-3 for ln in lns)


def test_build_model_ignores_unrelated_keys_and_reads_its_own():
    cfg = dict(epochs=5, seeds=[1, 2], data_dir="/nowhere", model="vlaai", lr=1e-3,
               n_chans=32, dropout=0.0, ivlaai_blocks=2, ivlaai_concat=False, n_subjects=None)
    m = build_model("ivlaai", **cfg)
    assert isinstance(m, ImprovedVLAAI)
    assert m.n_chans == 32 and m.n_blocks == 2 and not m.concat and m.subject_emb is None
    assert receptive_field(m) == (62, 70)
    assert receptive_field("ivlaai", **cfg) == (62, 70)
    assert m(torch.randn(2, 50, 32)).shape == (2, 50, 1)
    assert isinstance(build_model("vlaai", **cfg), VLAAI)
    assert isinstance(build_model("linear", **cfg), RidgeDecoder)
    assert isinstance(build_model("linear_conv", **cfg), LinearConv)
    assert build_model("linear", linear_lags=10).weight.shape == (1, 64, 10)
    assert cli.defaults()["model"] == "vlaai" and isinstance(build_model(cli.defaults()["model"]), VLAAI)
    assert RidgeDecoder.closed_form is True


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_build_model_without_config_uses_config_py_defaults(monkeypatch):
    """Model defaults live only in config.py: build_model with no keys reads them from there."""
    assert _n_params(build_model("ivlaai")) == 797_505
    d = cli.defaults()
    assert _n_params(build_model("ivlaai")) == _n_params(build_model("ivlaai", **d))
    m = build_model("ivlaai")
    assert m.n_chans == d["n_chans"] and m.n_blocks == d["ivlaai_blocks"] and m.concat == d["ivlaai_concat"]
    assert build_model("linear").weight.shape == (1, d["n_chans"], d["linear_lags"])
    # a changed default in config.py is what build_model uses (no second copy of the defaults)
    monkeypatch.setattr(config, "ivlaai_blocks", 2)
    monkeypatch.setattr(config, "linear_lags", 7)
    assert build_model("ivlaai").n_blocks == 2
    assert build_model("linear").weight.shape == (1, d["n_chans"], 7)


def test_every_model_argument_comes_from_a_config_key():
    """model_args reads only cli.model_keys(), n_chans and n_subjects: each exists in config.py."""
    d = cli.defaults()
    for key in cli.model_keys() + ("n_chans",):
        assert key in d, key
    assert "n_subjects" not in d  # derived from the data by train.py, default 0
    assert newmodel.model_args("ivlaai", {})["n_subjects"] == 0


@pytest.mark.parametrize("name, cfg", [
    ("ivlaai", {}),
    ("ivlaai", dict(n_chans=32, ivlaai_blocks=2, ivlaai_concat=False, ivlaai_separable=True, ivlaai_width=16,
                    n_subjects=4, dropout=0.1)),
    ("ivlaai", dict(ivlaai_shared=False, ivlaai_blocks=2, ivlaai_width=16, ivlaai_feat=8, ivlaai_context=5)),
    ("vlaai", dict(n_chans=20)),
    ("linear", dict(n_chans=10, linear_lags=5)),
    ("linear_conv", dict(n_chans=10, linear_conv_taps=7)),
])
def test_model_args_round_trips(name, cfg):
    """A checkpoint stores model_args: the class built from them is the model build_model gives."""
    full = dict(cli.defaults(), **cfg)  # a whole run config; unrelated keys are ignored
    args = newmodel.model_args(name, full)
    rebuilt = newmodel.MODELS[name](**args)
    built = build_model(name, **full)
    assert type(rebuilt) is type(built)
    assert _n_params(rebuilt) == _n_params(built)
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == \
        [(k, v.shape) for k, v in built.state_dict().items()]
    rebuilt.load_state_dict(built.state_dict())  # weights of one fit the other
    assert all(isinstance(v, (int, float, bool)) for v in args.values())  # plain values, safe in a checkpoint


def test_unknown_model_name():
    with pytest.raises(ValueError) as e:
        build_model("transformer")
    for name in ALL:
        assert name in str(e.value)


def test_ivlaai_default_size():
    m = build_model("ivlaai")
    n = sum(p.numel() for p in m.parameters())
    assert n < 1_000_000
    before, after = receptive_field(m)
    assert 32 <= before <= 160 and 32 <= after <= 160       # roughly 0.5 - 2 s each side at 64 Hz


def test_receptive_field_values():
    assert receptive_field("vlaai") == (124, 140)
    assert receptive_field("linear") == (0, 25)
    assert receptive_field("linear_conv") == (0, 31)
    assert receptive_field(build_model("vlaai")) == (124, 140)


# ---------------------------------------------------------------------------------------------
# Shapes, receptive field probe, gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_shapes_odd_lengths(case):
    m = make(case)
    n_chans = 64
    subj = torch.tensor([0, -1]) if CASES[case][1].get("n_subjects") else None
    for train in (False, True):
        m.train(train)
        for T in (1, 37, 321):
            y = m(torch.randn(2, T, n_chans), subject=subj)
            assert y.shape == (2, T, 1)
            assert torch.isfinite(y).all()
            assert m(torch.randn(2, T, n_chans)).shape == (2, T, 1)   # subject optional


@pytest.mark.parametrize("case", list(CASES))
def test_receptive_field_probe(case):
    """Perturb the input at time t; exactly outputs t-after..t+before may change.

    (Output t' sees inputs t'-before..t'+after.) Two probes, float64, eval mode:
    - finite perturbation: outputs outside the range are bit-identical, most inside change;
    - infinitesimal perturbation (forward-mode JVP): the set of outputs that change is exactly
      the range. The edge samples of deep nets are reached only through one corner tap per
      layer (a product of ~24 small weights, ~1e-30), which a finite difference cannot see.
    """
    m = make(case).double().eval()
    before, after = receptive_field(m)
    T, t = 360, 165
    assert t - after >= 20 and t + before <= T - 60          # probe away from the edges
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, T, 64, dtype=torch.float64, generator=g)
    v = torch.zeros_like(x)
    v[0, t] = torch.randn(64, dtype=torch.float64, generator=g)
    subj = torch.tensor([1]) if CASES[case][1].get("n_subjects") else None
    if subj is not None:
        with torch.no_grad():
            m.subject_emb.weight.normal_()
    inside = torch.zeros(T, dtype=torch.bool)
    inside[t - after:t + before + 1] = True

    with torch.no_grad():
        d = (m(x + v, subject=subj) - m(x, subject=subj))[0, :, 0].abs()
    assert (d[~inside] == 0).all(), torch.nonzero(d[~inside]).flatten()
    assert (d[inside] > 0).float().mean() > 0.5
    assert d.max() > 1e-3

    _, tangent = torch.func.jvp(lambda inp: m(inp, subject=subj), (x,), (v,))
    changed = torch.nonzero(tangent[0, :, 0] != 0).flatten()
    assert changed.min().item() == t - after
    assert changed.max().item() == t + before
    assert len(changed) == before + after + 1                # every output inside changes


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_reach_every_parameter(case):
    m = make(case).train()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 200, 64, generator=g)
    target = torch.randn(3, 200, 1, generator=g)
    subj = None
    if CASES[case][1].get("n_subjects"):
        m.subject_dropout = 0.0
        subj = torch.tensor([0, 3, -1])
    y = m(x, subject=subj)
    # MSE as well as -r: Pearson alone is blind to the output bias
    loss = pearson_loss(y, target) + ((y - target) ** 2).mean()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    if subj is not None:
        gw = m.subject_emb.weight.grad
        assert gw[0].abs().sum() > 0 and gw[3].abs().sum() > 0
        assert gw[1].abs().sum() == 0 and gw[-1].abs().sum() == 0   # unused / 'unknown' row


def test_subject_embedding_semantics():
    torch.manual_seed(0)
    m = build_model("ivlaai", n_subjects=3, ivlaai_width=16, ivlaai_blocks=2).eval()
    with torch.no_grad():
        m.subject_emb.weight[:3].normal_()
    x = torch.randn(4, 60, 64)
    y_none = m(x)
    y_unknown = m(x, subject=torch.tensor([-1, -1, 7, 3]))        # all outside [0, 3)
    assert torch.allclose(y_none, y_unknown)
    y_known = m(x, subject=torch.tensor([0, 1, 2, 0]))
    assert not torch.allclose(y_none, y_known)
    # models that do not use subjects ignore them
    v = build_model("linear_conv")
    assert torch.equal(v(x), v(x, subject=torch.tensor([0, 1, 2, 0])))


def test_channel_dropout_zeroes_whole_channels_in_training_only():
    torch.manual_seed(0)
    cfg = dict(ivlaai_width=16, ivlaai_blocks=2, dropout=0.0)
    m = build_model("ivlaai", ivlaai_chan_dropout=0.5, **cfg)
    plain = build_model("ivlaai", **cfg)
    plain.load_state_dict(m.state_dict())              # no new parameters
    seen = []
    m.proj[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0][..., :64].detach()))
    x = torch.randn(8, 50, 64) + 3.0                   # no channel is zero by chance
    m.train()(x)
    eeg_in = seen[-1]
    zeroed = (eeg_in == 0).all(dim=1)                  # (batch, chans): whole channel over time
    kept = torch.isclose(eeg_in, 2 * x).all(dim=1)     # survivors scaled by 1 / (1 - p)
    assert (zeroed | kept).all()
    assert 0.3 < zeroed.float().mean() < 0.7
    assert not torch.equal(zeroed[0], zeroed[1])       # drawn per window
    assert torch.equal(m.eval()(x), plain.eval()(x))   # evaluation is untouched


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------
def _synthetic(n, T, C, h, g):
    """env[t] = sum_k h[:, k] . eeg[t + k] + small noise (the linear forward-looking decoder)."""
    eeg = torch.randn(n, T, C, generator=g)
    x = torch.nn.functional.pad(eeg.transpose(1, 2), (0, h.shape[1] - 1))
    env = torch.nn.functional.conv1d(x, h[None]).transpose(1, 2)
    return eeg, env + 0.1 * env.std() * torch.randn(env.shape, generator=g)


@pytest.mark.parametrize("name,cfg,steps", [
    ("linear_conv", dict(n_chans=8, linear_conv_taps=12), 200),
    ("ivlaai", dict(n_chans=8, dropout=0.0, ivlaai_blocks=1, ivlaai_width=32, ivlaai_feat=16,
                    ivlaai_layers=2, ivlaai_kernel=6, ivlaai_context=4), 250),
])
def test_learns_synthetic_linear_mapping(name, cfg, steps):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    h = torch.randn(8, 10, generator=g)
    m = build_model(name, **cfg)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(steps):
        eeg, env = _synthetic(16, 96, 8, h, g)
        opt.zero_grad()
        pearson_loss(m(eeg), env).backward()
        opt.step()
    m.eval()
    eeg, env = _synthetic(8, 400, 8, h, g)
    with torch.no_grad():
        r = pearson(m(eeg)[:, 20:-20], env[:, 20:-20], dim=1).mean().item()
    assert r > 0.9, r


def _ridge_data(n_rec, T, C, lags, w, noise, rng):
    recs = []
    for _ in range(n_rec):
        eeg = rng.standard_normal((T, C)).astype(np.float32)
        pad = np.concatenate([eeg, np.zeros((lags - 1, C), np.float32)])
        env = sum(pad[k:k + T] @ w[k] for k in range(lags)) + 3.0
        env = env + noise * env.std() * rng.standard_normal(T)
        recs.append((eeg, env[:, None].astype(np.float32)))
    return recs


def test_ridge_recovers_known_filter_and_picks_alpha_on_val():
    rng = np.random.default_rng(0)
    C, lags = 16, 26
    w = rng.standard_normal((lags, C))
    train = _ridge_data(4, 1500, C, lags, w, 0.2, rng)
    val = _ridge_data(2, 800, C, lags, w, 0.2, rng)
    test = _ridge_data(2, 800, C, lags, w, 0.2, rng)
    m = build_model("linear", n_chans=C, linear_lags=lags, epochs=3)
    res = m.fit(train, val)
    per = res["val_r_per_alpha"]
    assert len(per) > 3
    assert res["alpha"] == max(per, key=per.get)
    assert res["val_r"] == pytest.approx(max(per.values()))
    assert float(m.alpha) == res["alpha"]
    # the forward pass uses the same lag convention as the fit
    with torch.no_grad():
        val_r = np.mean([pearson(m(torch.from_numpy(e)[None]), torch.from_numpy(v)[None], dim=1).item()
                         for e, v in val])
        test_r = np.mean([pearson(m(torch.from_numpy(e)[None]), torch.from_numpy(v)[None], dim=1).item()
                          for e, v in test])
    assert val_r == pytest.approx(res["val_r"], abs=1e-4)
    assert test_r > 0.95
    w_hat = m.weight.detach().numpy()[0].T                        # (lags, C)
    assert np.corrcoef(w_hat.ravel(), w.ravel())[0, 1] > 0.95
    assert m.bias.item() == pytest.approx(3.0, abs=0.3)          # intercept fitted, not penalised
    # state_dict round trip
    m2 = RidgeDecoder(n_chans=C, lags=lags)
    m2.load_state_dict(m.state_dict())
    x = torch.from_numpy(test[0][0])[None]
    assert torch.equal(m(x), m2(x))

    # few samples, many lags, heavy noise: validation must pick strong regularisation
    rng = np.random.default_rng(1)
    small = _ridge_data(1, 500, C, lags, w, 1.0, rng)
    val2 = _ridge_data(2, 800, C, lags, w, 1.0, rng)
    m3 = RidgeDecoder(n_chans=C, lags=lags)
    res3 = m3.fit(small, val2)
    per3 = res3["val_r_per_alpha"]
    assert res3["alpha"] == max(per3, key=per3.get)
    assert min(per3) < res3["alpha"] < max(per3)             # an interior optimum
    assert per3[res3["alpha"]] > per3[min(per3)] + 0.03
    assert per3[res3["alpha"]] > per3[max(per3)] + 0.01

    # explicit grid is used as given
    res4 = RidgeDecoder(n_chans=C, lags=lags).fit(train, val, alphas=[1e-3, 1e-2])
    assert set(res4["val_r_per_alpha"]) == {1e-3, 1e-2}


# ---------------------------------------------------------------------------------------------
# metrics.pearson
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-10)])
def test_pearson_matches_scipy(dtype, tol):
    rng = np.random.default_rng(5)
    for B, T, K in [(1, 10, 1), (4, 320, 1), (3, 57, 5), (2, 2, 3)]:
        x = rng.standard_normal((B, T, K))
        y = 0.3 * x + rng.standard_normal((B, T, K)) + 2.0
        r = pearson(torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype), dim=1)
        r_default = pearson(torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype))  # dim=-2
        assert r.shape == (B, K) and r.dtype == dtype
        ref = np.array([[scipy.stats.pearsonr(x[b, :, k], y[b, :, k])[0] for k in range(K)]
                        for b in range(B)])
        np.testing.assert_allclose(r.numpy(), ref, atol=tol, rtol=0)
        np.testing.assert_allclose(r_default.numpy(), ref, atol=tol, rtol=0)
        # numpy input: computed in float64
        np.testing.assert_allclose(pearson(x, y, dim=1).numpy(), ref, atol=1e-10, rtol=0)
        # other axis
        ref0 = np.array([[scipy.stats.pearsonr(x[:, t, k], y[:, t, k])[0] for k in range(K)]
                         for t in range(T)]) if B > 2 else None
        if ref0 is not None:
            np.testing.assert_allclose(pearson(torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=dtype),
                                               dim=0).numpy(), ref0, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [0.0, 3.0, 0.1, -7.25])
def test_pearson_constant_gives_zero(dtype, value):
    y = torch.randn(3, 50, 1, dtype=dtype)
    c = torch.full((3, 50, 1), value, dtype=dtype)
    for a, b in ((c, y), (y, c), (c, c)):
        r = pearson(a, b, dim=1)
        assert not torch.isnan(r).any()
        assert (r == 0).all()


@pytest.mark.parametrize("value", [0.0, 3.0, 0.1])
def test_pearson_loss_gradient_finite_for_constant_prediction(value):
    pred = torch.full((2, 64, 1), value, requires_grad=True)
    target = torch.randn(2, 64, 1)
    loss = pearson_loss(pred, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pred.grad).all(), f"NaN/inf gradient for constant prediction {value}"
    # a model whose output collapses to a constant must still train
    m = LinearConv(n_chans=4, taps=3)
    with torch.no_grad():
        m.conv.weight.zero_()
        m.conv.bias.fill_(value)
    pearson_loss(m(torch.randn(2, 30, 4)), torch.randn(2, 30, 1)).backward()
    assert torch.isfinite(m.conv.weight.grad).all()


def test_paired_differences_over_shared_keys_matches_scipy():
    a = {"S1": 0.30, "S2": 0.10, "S3": 0.25, "S4": 0.5}
    b = {"S1": 0.20, "S2": 0.15, "S3": 0.05, "S9": 0.0}  # S4 / S9 are unpaired and left out
    d = np.array([0.10, -0.05, 0.20])
    out = paired_differences(a, b)
    assert out["n"] == 3 and out["higher"] == 2
    assert out["diff"] == pytest.approx(d.mean()) and out["sem"] == pytest.approx(scipy.stats.sem(d))
    assert paired_differences({"S1": 1.0}, {"S1": 0.5})["sem"] is None
    assert paired_differences({"S1": 1.0}, {"S2": 0.5}) == {"n": 0, "diff": None, "sem": None, "higher": 0}


# ---------------------------------------------------------------------------------------------
# Building blocks: time-first convolution, CPU dropout
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cin,cout,kernel,dilation,groups", [(5, 7, 4, 1, 1), (6, 6, 3, 2, 6), (8, 4, 1, 1, 2)])
def test_conv_time_matches_conv1d_on_channels_first(cin, cout, kernel, dilation, groups):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(cin, cout, kernel, dilation=dilation, groups=groups).double()
    x = torch.randn(3, 29, cin, dtype=torch.float64)
    want = conv(x.transpose(1, 2)).transpose(1, 2)
    got = newmodel._apply_conv(x, conv)
    assert got.shape == want.shape == (3, 29 - dilation * (kernel - 1), cout)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    x32 = torch.randn(2, 40, cin).transpose(0, 1).transpose(0, 1)       # non-contiguous input
    torch.testing.assert_close(newmodel._apply_conv(x32[:, ::2], conv.float()),
                               conv.float()(x32[:, ::2].transpose(1, 2)).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_dropout_rate_scale_and_eval():
    drop = newmodel._Dropout(0.2).train()
    x = torch.ones(400, 1000)
    torch.manual_seed(3)
    y = drop(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.005                      # 400,000 draws: sd 0.0006
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 65536 / (65536 - round(0.2 * 65536))))
    assert abs(y.mean().item() - 1) < 0.01                 # the mean is kept
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(newmodel._Dropout(0.0).train()(x), x)


def test_dropout_masks_are_seeded_independent_and_differentiable():
    drop = newmodel._Dropout(0.5).train()
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(7)
    a = drop(x)
    torch.manual_seed(7)
    b = drop(x)
    assert torch.equal(a, b)                               # same seed, same mask
    c = drop(x)
    assert not torch.equal(a == 0, c == 0)                 # the next call draws a new mask
    # elements are dropped independently: neighbours agree about half the time at p = 0.5
    zero = (drop(torch.ones(1000, 1000)) == 0)
    assert abs((zero[:, 1:] == zero[:, :-1]).float().mean().item() - 0.5) < 0.01
    a.sum().backward()
    torch.testing.assert_close(x.grad, (a.detach() != 0).float() * 2.0)
