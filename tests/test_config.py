"""Tests of config.py: command-line literals, config files read as data, validation."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import config  # noqa: E402


def parse(*args):
    cfg, given = config.parse(list(args))
    return cfg, given


# --------------------------------------------------------------------------------------- defaults
def test_documented_keys_exist_with_sane_defaults():
    d = config.defaults()
    for key in ("data_dir", "model", "seeds", "epochs", "run_dir", "test_dir", "label_dir", "result_dir"):
        assert key in d, key
    assert isinstance(d["seeds"], list) and len(d["seeds"]) == 1 and isinstance(d["seeds"][0], int)
    assert d["model"] in ("ivlaai", "vlaai", "linear", "linear_conv")
    # module internals (imports, helpers) are not config keys
    for internal in ("ast", "sys", "Path", "annotations", "parse", "defaults"):
        assert internal not in d
    cfg, given = parse()
    assert cfg == d and given == set()


def test_parsed_config_does_not_alias_the_defaults():
    cfg, _ = parse()
    cfg["seeds"].append(99)  # a caller changing its config must not change the defaults
    assert 99 not in config.defaults()["seeds"]
    assert 99 not in parse()[0]["seeds"]


# --------------------------------------------------------------------------------------- literals
@pytest.mark.parametrize(
    "arg, key, value",
    [
        ("--epochs=7", "epochs", 7),
        ("--lr=5e-4", "lr", 5e-4),
        ("--lr=1", "lr", 1.0),  # an int where a float is expected is widened
        ("--dropout=0", "dropout", 0.0),
        ("--seeds=[1,2,3]", "seeds", [1, 2, 3]),
        ("--seeds=[4, 5]", "seeds", [4, 5]),
        ("--seeds=3", "seeds", [3]),  # one seed -> list of one
        ("--seeds=1,2", "seeds", [1, 2]),  # a tuple literal becomes a list
        ("--resume=True", "resume", True),
        ("--deterministic=False", "deterministic", False),
        ("--test_dir=None", "test_dir", None),
        ("--subjects=None", "subjects", None),
        ("--model=linear", "model", "linear"),  # bare word -> string
        ("--data_dir=../shared/data/dtu", "data_dir", "../shared/data/dtu"),
        ("--data_dir='quoted dir'", "data_dir", "quoted dir"),
        ("--run_dir=2024", "run_dir", "2024"),  # a number where only a string fits is the text
        ("--subjects=[S1,S2]", "subjects", ["S1", "S2"]),  # bare words in a list -> strings
        ("--subjects=['S1', 'S3']", "subjects", ["S1", "S3"]),
        ("--val_recordings=[*_007]", "val_recordings", ["*_007"]),
        ("--test_recordings=[*_008, *_009]", "test_recordings", ["*_008", "*_009"]),
        ("--exclude_subjects=S4", "exclude_subjects", "S4"),
        ("--seen_subjects=auto", "seen_subjects", "auto"),
    ],
)
def test_key_value_literals(arg, key, value):
    cfg, given = parse(arg)
    assert cfg[key] == value
    assert type(cfg[key]) is type(value)
    if isinstance(value, list):
        assert [type(v) for v in cfg[key]] == [type(v) for v in value]
    assert given == {key}
    # everything else keeps its default
    d = config.defaults()
    assert {k: v for k, v in cfg.items() if k != key} == {k: v for k, v in d.items() if k != key}


def test_bare_flag_is_true_and_later_args_win():
    cfg, given = parse("--resume", "--overwrite")
    assert cfg["resume"] is True and cfg["overwrite"] is True
    assert given == {"resume", "overwrite"}
    cfg, _ = parse("--epochs=3", "--epochs=5")
    assert cfg["epochs"] == 5


# --------------------------------------------------------------------------------------- rejections
def test_unknown_key_lists_valid_keys():
    with pytest.raises(config.ConfigError) as exc:
        parse("--epoch=3")
    msg = str(exc.value)
    assert "epoch" in msg and "unknown" in msg.lower()
    for key in ("data_dir", "epochs", "model", "seeds", "run_dir", "result_dir"):
        assert key in msg


def test_unknown_key_through_parse_or_exit_is_a_clean_exit():
    with pytest.raises(SystemExit) as exc:
        config.parse_or_exit(["--no_such_key=1"])
    assert "no_such_key" in str(exc.value.code) and "epochs" in str(exc.value.code)


@pytest.mark.parametrize(
    "arg",
    [
        "--epochs=2.5",  # float for int
        "--epochs=abc",  # string for int
        "--epochs=True",  # bool is not an int here
        "--lr=fast",
        "--lr=[1e-3]",
        "--resume=1",  # int is not a bool
        "--resume=yes",
        "--seeds=[]",
        "--seeds=[1.5]",
        "--seeds=[True]",
        "--seeds=[a,b]",
        "--seeds=abc",
        "--model=transformer",  # not one of the choices
        "--split=random",
        "--device=tpu",
        "--window_s=[5]",
    ],
)
def test_wrong_type_rejected(arg):
    key = arg[2:].split("=")[0]
    with pytest.raises(config.ConfigError) as exc:
        parse(arg)
    assert f"--{key}" in str(exc.value)


@pytest.mark.parametrize("arg", ["--epochs={[1]: 2}", "--seeds={[1]: 2}", "--lr=[[[[[[[[[["])
def test_unparseable_literal_is_a_config_error_not_a_crash(arg):
    with pytest.raises(config.ConfigError):
        parse(arg)


def test_unparseable_text_for_a_string_key_is_the_text():
    assert parse("--subjects={[1]: 2}")[0]["subjects"] == "{[1]: 2}"
    assert parse("--data_dir=None")[0]["data_dir"] == "None"  # data_dir cannot be None: a folder name


def test_positional_argument_rejected():
    with pytest.raises(config.ConfigError) as exc:
        parse("epochs=3")
    assert "--key=value" in str(exc.value)


# --------------------------------------------------------------------------------------- config files
def test_config_file_overrides(tmp_path):
    f = tmp_path / "over.py"
    f.write_text(
        '"""my overrides"""\n'
        "# a comment\n"
        "model = 'vlaai'\n"
        "seeds = [7, 8]\n"
        "epochs = 3  # trailing comment\n"
        "lr = 1  # int widened to float\n"
        "subjects = ['S1', 'S2']\n"
        "test_dir = None\n"
        "weight_decay = -0.0\n"
    )
    cfg, given = parse(f"--config={f}")
    assert cfg["model"] == "vlaai" and cfg["seeds"] == [7, 8] and cfg["epochs"] == 3
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert cfg["subjects"] == ["S1", "S2"] and cfg["test_dir"] is None
    assert given == {"model", "seeds", "epochs", "lr", "subjects", "test_dir", "weight_decay"}
    # command-line arguments after --config win; before it, the file wins
    cfg, _ = parse(f"--config={f}", "--epochs=9")
    assert cfg["epochs"] == 9
    cfg, _ = parse("--epochs=9", f"--config={f}")
    assert cfg["epochs"] == 3


@pytest.mark.parametrize(
    "text",
    [
        "import os\n",
        "from os import system\n",
        "epochs = int('3')\n",
        "epochs = 1 + 2\n",
        "epochs = __import__('os').getpid()\n",
        "print('hello')\n",
        "def f():\n    pass\n",
        "epochs: int = 3\n",
        "epochs = seeds = 3\n",
        "epochs += 1\n",
        "if True:\n    epochs = 3\n",
        "x = {[1]: 2}\n",
    ],
)
def test_config_file_is_data_not_code(tmp_path, text):
    f = tmp_path / "bad.py"
    f.write_text(text)
    with pytest.raises(config.ConfigError) as exc:
        parse(f"--config={f}")
    assert str(f) in str(exc.value)


def test_config_file_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.py"
    f.write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
        f"epochs = __import__('pathlib').Path({str(marker)!r}).write_text('x')\n"
    )
    with pytest.raises(config.ConfigError):
        parse(f"--config={f}")
    f.write_text(f"epochs = __import__('pathlib').Path({str(marker)!r}).write_text('x')\n")
    with pytest.raises(config.ConfigError):
        parse(f"--config={f}")
    assert not marker.exists()


def test_config_file_errors(tmp_path):
    with pytest.raises(config.ConfigError) as exc:
        parse(f"--config={tmp_path / 'missing.py'}")
    assert "missing.py" in str(exc.value)
    bad = tmp_path / "syntax.py"
    bad.write_text("epochs = = 3\n")
    with pytest.raises(config.ConfigError) as exc:
        parse(f"--config={bad}")
    assert "syntax.py" in str(exc.value)
    unknown = tmp_path / "unknown.py"
    unknown.write_text("epoch = 3\n")
    with pytest.raises(config.ConfigError) as exc:
        parse(f"--config={unknown}")
    assert "epoch" in str(exc.value) and "epochs" in str(exc.value)  # valid keys listed
    wrong = tmp_path / "wrong.py"
    wrong.write_text("epochs = 'many'\n")
    with pytest.raises(config.ConfigError) as exc:
        parse(f"--config={wrong}")
    assert "--epochs" in str(exc.value)
    with pytest.raises(config.ConfigError):
        parse("--config")  # no file given


def test_the_defaults_section_of_config_py_reads_as_a_config_file(tmp_path):
    """config.py's own key = literal lines are a valid config file and give the defaults."""
    src = Path(config.__file__).read_text()
    section = src[src.index("# ---- data") : src.index("# Keys whose default is None")]
    f = tmp_path / "copy_of_defaults.py"
    f.write_text(section)
    values = config.read_config_file(f)
    assert values == config.defaults()
    cfg, given = parse(f"--config={f}")
    assert cfg == config.defaults() and given == set(values)


def test_every_model_key_is_a_config_key_with_the_same_default():
    """build_model reads these keys from the config: a missing or renamed key would be ignored silently."""
    import newmodel

    d = config.defaults()
    for key, default in newmodel.MODEL_DEFAULTS.items():
        if key == "n_subjects":  # derived from the data and subject_embedding by train.py
            continue
        assert key in d, key
        assert d[key] == default, key


def test_time_fold_range_matches_the_dataset_and_is_checked():
    from EEG_Dataset import TIME_FOLDS
    assert parse("--time_fold=9")[0]["time_fold"] == 9
    assert config._CHOICES["time_fold"] == tuple(range(TIME_FOLDS))
    for bad in ("--time_fold=10", "--time_fold=-1"):
        with pytest.raises(config.ConfigError, match="time_fold: expected one of"):
            parse(bad)
