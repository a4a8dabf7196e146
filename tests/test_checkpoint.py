"""Tests of checkpoint.py: the one checkpoint schema, version-1 upgrade, and one-line errors naming the file."""
from __future__ import annotations

import pytest
import torch

import cli
import config
import newmodel
from checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
    save_checkpoint,
)

# a tiny ivlaai (a few hundred parameters) so that every file is small and quick
SMALL = dict(n_chans=4, ivlaai_blocks=1, ivlaai_width=8, ivlaai_feat=4, ivlaai_layers=1, ivlaai_kernel=3,
             ivlaai_context=3)


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


def _checkpoint(name="ivlaai", cfg=SMALL, subjects=("S1", "S2"), seed=3) -> dict:
    torch.manual_seed(seed)
    run_cfg = dict(cli.defaults("train"), model=name, **cfg)
    args = newmodel.model_args(name, run_cfg)
    model = newmodel.MODELS[name](**args)
    return {"model_name": name, "model_args": args, "model": model.state_dict(), "subjects": list(subjects),
            "seed": seed, "n_params": _n_params(model), "n_chans": run_cfg["n_chans"], "config": run_cfg,
            "epoch": 2, "history": [{"epoch": 1, "val_r": 0.1}], "finished": True}


def _assert_one_line_naming(exc, path):
    msg = str(exc.value)
    assert msg.startswith(f"{path}: "), msg
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------------------- round trip
def test_save_and_load_round_trip(tmp_path):
    ck = _checkpoint()
    path = tmp_path / "run" / "best.pt"
    save_checkpoint(path, ck)
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]  # no temp left
    assert "version" not in ck  # the caller's dict is not changed
    back = load_checkpoint(path)
    assert back["version"] == FORMAT_VERSION
    assert {k: v for k, v in back.items() if k not in ("model", "version")} == \
        {k: v for k, v in ck.items() if k != "model"}
    for k, v in ck["model"].items():
        assert torch.equal(back["model"][k], v), k
    model, ck2 = load_model(path, "cpu")
    assert not model.training and isinstance(model, newmodel.ImprovedVLAAI)
    assert _n_params(model) == ck["n_params"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["model"][k]), k
    assert load_model(path, torch.device("cpu"), model_name="ivlaai")[1]["seed"] == 3


@pytest.mark.parametrize("name, cfg", [("vlaai", dict(n_chans=6)), ("linear", dict(n_chans=5, linear_lags=4)),
                                       ("linear_conv", dict(n_chans=5, linear_conv_taps=3))])
def test_round_trip_of_every_model(tmp_path, name, cfg):
    ck = _checkpoint(name, cfg)
    save_checkpoint(tmp_path / "best.pt", ck)
    model, _ = load_model(tmp_path / "best.pt", "cpu", model_name=name)
    assert type(model) is newmodel.MODELS[name] and _n_params(model) == ck["n_params"]


def test_the_model_is_rebuilt_from_its_own_arguments_not_from_config_py(tmp_path, monkeypatch):
    """A later change of a default in config.py does not change a saved model."""
    ck = _checkpoint()
    save_checkpoint(tmp_path / "best.pt", ck)
    monkeypatch.setattr(config, "ivlaai_width", 99)
    monkeypatch.setattr(config, "n_chans", 17)
    model, _ = load_model(tmp_path / "best.pt", "cpu")
    assert _n_params(model) == ck["n_params"] and model.n_chans == 4


# --------------------------------------------------------------------------------------- version 1
def _v1(subject_embedding=False, subjects=("S1", "S2", "S3")):
    """What train.py wrote before checkpoints had a version: no 'version', no 'model_args'."""
    cfg = dict(cli.defaults("train"), model="ivlaai", subject_embedding=subject_embedding, **SMALL)
    torch.manual_seed(0)
    model = newmodel.build_model("ivlaai", **dict(cfg, n_subjects=len(subjects) if subject_embedding else 0))
    return {"seed": 1, "model_name": "ivlaai", "subjects": list(subjects), "n_chans": 4,
            "n_params": _n_params(model), "config": cfg, "model": model.state_dict(), "epoch": 3,
            "finished": True}, model


@pytest.mark.parametrize("subject_embedding", [False, True])
def test_a_version_1_checkpoint_is_upgraded_and_rebuilds_the_model(tmp_path, subject_embedding):
    old, model = _v1(subject_embedding)
    path = tmp_path / "last.pt"
    torch.save(old, path)
    ck = load_checkpoint(path)
    assert ck["version"] == FORMAT_VERSION
    assert ck["model_args"] == newmodel.model_args("ivlaai",
                                                   dict(old["config"], n_subjects=3 if subject_embedding else 0))
    assert ck["model_args"]["n_subjects"] == (3 if subject_embedding else 0)
    rebuilt, ck2 = load_model(path, "cpu", model_name="ivlaai")
    assert _n_params(rebuilt) == old["n_params"]
    x = torch.randn(2, 30, 4)
    subj = torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(rebuilt(x, subject=subj), model.eval()(x, subject=subj))
    assert ck2["seed"] == 1 and ck2["subjects"] == ["S1", "S2", "S3"]


def test_a_version_1_checkpoint_with_channels_other_than_the_config_default(tmp_path):
    """The v1 n_chans entry (the data's channel count) wins over the saved config's n_chans key."""
    old, _ = _v1()
    old["config"] = dict(old["config"], n_chans=64)
    torch.save(old, tmp_path / "best.pt")
    model, _ = load_model(tmp_path / "best.pt", "cpu")
    assert model.n_chans == 4


# --------------------------------------------------------------------------------------- broken files
def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "best.pt")
    _assert_one_line_naming(exc, tmp_path / "best.pt")


def test_empty_file(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "empty" in _assert_one_line_naming(exc, path)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.1])
def test_truncated_file(tmp_path, fraction):
    save_checkpoint(tmp_path / "full.pt", _checkpoint())
    data = (tmp_path / "full.pt").read_bytes()
    path = tmp_path / "best.pt"
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(CheckpointError) as exc:
        load_model(path, "cpu")
    assert "truncated" in _assert_one_line_naming(exc, path)


@pytest.mark.parametrize("text", [
    "notes about this run\n",
    '{"r": 0.2}\n',
    "12345\n",
    "hello world\n",
    "epoch,train_loss,val_r\n1,0.5,0.1\n",  # log.csv given as a checkpoint
])
def test_a_text_file(tmp_path, text):
    path = tmp_path / "best.pt"
    path.write_text(text)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, "cpu")
    _assert_one_line_naming(exc, path)


class NotATensor:
    def __init__(self):
        self.value = 1


def test_a_pickle_of_other_objects_is_not_loaded_and_weights_only_false_is_not_suggested(tmp_path):
    path = tmp_path / "best.pt"
    torch.save({"x": NotATensor(), "model_name": "ivlaai", "model": {}}, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, "cpu")
    msg = _assert_one_line_naming(exc, path)
    assert "weights_only" not in msg and "not loaded" in msg


@pytest.mark.parametrize("obj", [torch.zeros(3), [1, 2], {"model": {}}, {"model_name": "ivlaai"}, {"weights": {}}])
def test_a_torch_file_that_is_not_a_checkpoint(tmp_path, obj):
    path = tmp_path / "best.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "not a checkpoint" in _assert_one_line_naming(exc, path)


@pytest.mark.parametrize("version", [3, 0, "2", None])
def test_another_format_version(tmp_path, version):
    path = tmp_path / "best.pt"
    torch.save(dict(_checkpoint(), version=version), path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "version" in _assert_one_line_naming(exc, path)


def test_unknown_model_name(tmp_path):
    path = tmp_path / "best.pt"
    torch.save(dict(_checkpoint(), model_name="transformer", version=FORMAT_VERSION), path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "transformer" in _assert_one_line_naming(exc, path)


def test_weights_of_another_shape(tmp_path):
    ck = _checkpoint()
    ck["model_args"] = dict(ck["model_args"], width=16)  # the weights are of width 8
    path = tmp_path / "best.pt"
    save_checkpoint(path, ck)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, "cpu")
    msg = _assert_one_line_naming(exc, path)
    assert "do not fit ivlaai" in msg and "size mismatch" in msg


def test_weights_with_missing_or_extra_entries(tmp_path):
    ck = _checkpoint()
    ck["model"] = dict(ck["model"], extra_weight=torch.zeros(2))
    path = tmp_path / "best.pt"
    save_checkpoint(path, ck)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, "cpu")
    assert "extra_weight" in _assert_one_line_naming(exc, path)


def test_arguments_the_model_does_not_take(tmp_path):
    ck = _checkpoint()
    ck["model_args"] = dict(ck["model_args"], n_heads=4)
    path = tmp_path / "best.pt"
    save_checkpoint(path, ck)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, "cpu")
    assert "n_heads" in _assert_one_line_naming(exc, path)


def test_load_model_refuses_another_model_than_expected(tmp_path):
    path = tmp_path / "vlaai" / "seed-1" / "best.pt"  # e.g. a file copied into another model's folder
    save_checkpoint(path, _checkpoint())
    with pytest.raises(CheckpointError) as exc:
        load_model(path, "cpu", model_name="vlaai")
    msg = _assert_one_line_naming(exc, path)
    assert "ivlaai" in msg and "vlaai" in msg


def test_model_from_checkpoint_names_the_given_path(tmp_path):
    ck = _checkpoint()
    ck["model_args"] = dict(ck["model_args"], width=16)
    with pytest.raises(CheckpointError) as exc:
        model_from_checkpoint(ck, tmp_path / "x.pt")
    _assert_one_line_naming(exc, tmp_path / "x.pt")


# --------------------------------------------------------------------------------------- malformed entries
@pytest.mark.parametrize("case", ["v1 without config", "v1 of an unknown model", "v2 without model_args"])
def test_a_checkpoint_with_missing_entries_is_a_checkpoint_error(tmp_path, case):
    path = tmp_path / "best.pt"
    if case == "v1 without config":
        obj = {"model_name": "ivlaai", "model": {}}
    elif case == "v1 of an unknown model":
        obj = {"model_name": "transformer", "model": {}, "config": {}, "n_chans": 4, "subjects": []}
    else:
        obj = {k: v for k, v in _checkpoint().items() if k != "model_args"}
        obj["version"] = FORMAT_VERSION
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path, "cpu")
    _assert_one_line_naming(exc, path)
