"""Tests of config.py: command-line literals, config files read as data, validation."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cli
import config

ROOT = Path(__file__).resolve().parents[1]


def parse(*args, program="train"):
    cfg, given = cli.parse(list(args), program)
    return cfg, given


# --------------------------------------------------------------------------------------- defaults
def test_documented_keys_exist_with_sane_defaults():
    d = cli.defaults()
    for key in ("data_dir", "model", "seeds", "epochs", "run_dir", "test_dir", "label_dir", "result_dir"):
        assert key in d, key
    assert isinstance(d["seeds"], list) and len(d["seeds"]) == 1 and isinstance(d["seeds"][0], int)
    assert d["model"] in ("ivlaai", "vlaai", "linear", "linear_conv")
    # module internals (imports, helpers) are not config keys
    for internal in ("ast", "sys", "Path", "annotations", "parse", "defaults"):
        assert internal not in d
    cfg, given = parse()  # the default program is train
    assert cfg == cli.defaults("train") and given == set()
    assert cli.parse([]) == (cfg, given)


def test_parsed_config_does_not_alias_the_defaults():
    cfg, _ = parse()
    cfg["seeds"].append(99)  # a caller changing its config must not change the defaults
    assert 99 not in cli.defaults()["seeds"]
    assert 99 not in parse()[0]["seeds"]


# --------------------------------------------------------------------------------------- literals
@pytest.mark.parametrize(
    "arg, key, value, program",
    [c if len(c) == 4 else (*c, "train") for c in [
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
        ("--test_dir=None", "test_dir", None, "test"),
        ("--seen_subjects=auto", "seen_subjects", "auto", "test"),
        ("--seen_subjects=[S1,S2]", "seen_subjects", ["S1", "S2"], "test"),
        ("--pre_channels=[Fz,Cz]", "pre_channels", ["Fz", "Cz"], "preprocess"),
        ("--pre_trigger_code=7", "pre_trigger_code", 7, "preprocess"),
        ("--demo_minutes=1", "demo_minutes", 1.0, "demo"),
    ]],
)
def test_key_value_literals(arg, key, value, program):
    cfg, given = parse(arg, program=program)
    assert cfg[key] == value
    assert type(cfg[key]) is type(value)
    if isinstance(value, list):
        assert [type(v) for v in cfg[key]] == [type(v) for v in value]
    assert given == {key}
    # everything else keeps its default
    d = cli.defaults(program)
    assert {k: v for k, v in cfg.items() if k != key} == {k: v for k, v in d.items() if k != key}


def test_bare_flag_is_true_and_later_args_win():
    cfg, given = parse("--resume", "--overwrite")
    assert cfg["resume"] is True and cfg["overwrite"] is True
    assert given == {"resume", "overwrite"}
    cfg, _ = parse("--epochs=3", "--epochs=5")
    assert cfg["epochs"] == 5


# --------------------------------------------------------------------------------------- rejections
def test_unknown_key_lists_valid_keys():
    with pytest.raises(cli.ConfigError) as exc:
        parse("--epoch=3")
    msg = str(exc.value)
    assert "epoch" in msg and "unknown" in msg.lower()
    for key in ("data_dir", "epochs", "model", "seeds", "run_dir", "demo_dir"):
        assert key in msg
    assert "\n" not in msg


@pytest.mark.parametrize("arg, program, other", [
    ("--pre_highpass_hz=1", "train", "preprocess"),  # a preprocess key given to train
    ("--result_dir=out", "train", "test"),
    ("--lr=1", "test", "train"),  # a training key given to test
    ("--epochs=3", "test", "train"),
    ("--lr=1", "preprocess", "train"),
    ("--model=vlaai", "demo", "train"),
])
def test_a_key_of_another_program_is_rejected_listing_the_accepted_keys(arg, program, other):
    key = arg[2:].split("=")[0]
    assert key in cli.defaults(other)  # a real key, just not this program's
    with pytest.raises(cli.ConfigError) as exc:
        parse(arg, program=program)
    msg = str(exc.value)
    assert repr(key) in msg and "\n" not in msg
    accepted = msg.split("accepts:")[1]
    assert sorted(k.strip() for k in accepted.split(",")) == sorted(cli.read_by(program))
    assert key in parse(arg, program=other)[1]  # the program that reads it takes it


def test_a_key_of_another_program_in_a_config_file_is_rejected(tmp_path):
    f = tmp_path / "over.py"
    f.write_text("epochs = 3\npre_highpass_hz = 1.0\n")
    with pytest.raises(cli.ConfigError, match="pre_highpass_hz"):
        parse(f"--config={f}")
    f.write_text("pre_highpass_hz = 1.0\n")
    assert parse(f"--config={f}", program="preprocess")[0]["pre_highpass_hz"] == 1.0


def test_unknown_program_is_refused():
    with pytest.raises(ValueError, match="unknown program"):
        cli.parse([], "tran")


def test_unknown_key_through_parse_or_exit_is_a_clean_exit():
    with pytest.raises(SystemExit) as exc:
        cli.parse_or_exit(["--no_such_key=1"])
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
    with pytest.raises(cli.ConfigError) as exc:
        parse(arg)
    assert f"--{key}" in str(exc.value)


@pytest.mark.parametrize("arg", ["--epochs={[1]: 2}", "--seeds={[1]: 2}", "--lr=[[[[[[[[[["])
def test_unparseable_literal_is_a_config_error_not_a_crash(arg):
    with pytest.raises(cli.ConfigError):
        parse(arg)


def test_unparseable_text_for_a_string_key_is_the_text():
    assert parse("--subjects={[1]: 2}")[0]["subjects"] == "{[1]: 2}"
    assert parse("--data_dir=None")[0]["data_dir"] == "None"  # data_dir cannot be None: a folder name


def test_positional_argument_rejected():
    with pytest.raises(cli.ConfigError) as exc:
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
        "val_recordings = None\n"
        "weight_decay = -0.0\n"
    )
    cfg, given = parse(f"--config={f}")
    assert cfg["model"] == "vlaai" and cfg["seeds"] == [7, 8] and cfg["epochs"] == 3
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert cfg["subjects"] == ["S1", "S2"] and cfg["val_recordings"] is None
    assert given == {"model", "seeds", "epochs", "lr", "subjects", "val_recordings", "weight_decay"}
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
    with pytest.raises(cli.ConfigError) as exc:
        parse(f"--config={f}")
    assert str(f) in str(exc.value)


def test_config_file_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.py"
    f.write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
        f"epochs = __import__('pathlib').Path({str(marker)!r}).write_text('x')\n"
    )
    with pytest.raises(cli.ConfigError):
        parse(f"--config={f}")
    f.write_text(f"epochs = __import__('pathlib').Path({str(marker)!r}).write_text('x')\n")
    with pytest.raises(cli.ConfigError):
        parse(f"--config={f}")
    assert not marker.exists()


def test_config_file_errors(tmp_path):
    with pytest.raises(cli.ConfigError) as exc:
        parse(f"--config={tmp_path / 'missing.py'}")
    assert "missing.py" in str(exc.value)
    bad = tmp_path / "syntax.py"
    bad.write_text("epochs = = 3\n")
    with pytest.raises(cli.ConfigError) as exc:
        parse(f"--config={bad}")
    assert "syntax.py" in str(exc.value)
    unknown = tmp_path / "unknown.py"
    unknown.write_text("epoch = 3\n")
    with pytest.raises(cli.ConfigError) as exc:
        parse(f"--config={unknown}")
    assert "epoch" in str(exc.value) and "epochs" in str(exc.value)  # valid keys listed
    wrong = tmp_path / "wrong.py"
    wrong.write_text("epochs = 'many'\n")
    with pytest.raises(cli.ConfigError) as exc:
        parse(f"--config={wrong}")
    assert "--epochs" in str(exc.value)
    with pytest.raises(cli.ConfigError):
        parse("--config")  # no file given


def test_a_key_set_twice_in_a_config_file_is_an_error(tmp_path):
    f = tmp_path / "twice.py"
    f.write_text("epochs = 3\nlr = 1e-3\nepochs = 5\n")
    with pytest.raises(cli.ConfigError) as exc:
        parse(f"--config={f}")
    msg = str(exc.value)
    assert msg.startswith(f"{f}:3:") and "'epochs'" in msg and "twice" in msg and "\n" not in msg


# --------------------------------------------------------------------------------------- values that cannot work
@pytest.mark.parametrize("arg, program", [
    ("--fs=0", "train"),
    ("--fs=-64", "test"),
    ("--fs=0", "preprocess"),
    ("--lr=0", "train"),
    ("--lr=-1", "train"),
    ("--lr=1e999", "train"),  # reads as inf
    ("--lr=-1e999", "train"),
    ("--lr=True", "train"),  # a boolean is not a number here
    ("--dropout=2", "train"),
    ("--dropout=1", "train"),  # a rate of 1 drops everything
    ("--dropout=-0.1", "train"),
    ("--ema_decay=1.0", "train"),
    ("--seeds=[4294967296]", "train"),  # 2**32: outside numpy's seed range
    ("--seeds=4294967296", "test"),
    ("--seeds=[1,-1]", "train"),
    ("--epochs=0", "train"),
    ("--batch_size=0", "train"),
    ("--window_s=0", "train"),
    ("--weight_decay=-1", "train"),
    ("--n_chans=0", "train"),
    ("--demo_subjects=0", "demo"),
    ("--pre_env_bands=0", "preprocess"),
    ("--pre_highpass_hz=-0.5", "preprocess"),
    ("--pre_env_power=0", "preprocess"),
    ("--pre_channels=0", "preprocess"),
    ("--pre_channels=[]", "preprocess"),
    ("--pre_channels=[Cz,Cz]", "preprocess"),
    ("--pre_channels=[Cz,3]", "preprocess"),
    ("--eval_hop_s=0", "test"),
])
def test_values_that_cannot_work_are_one_line_errors_naming_the_key(arg, program):
    key = arg[2:].split("=")[0]
    with pytest.raises(cli.ConfigError) as exc:
        parse(arg, program=program)
    msg = str(exc.value)
    assert msg.startswith(f"--{key}:") and "\n" not in msg
    with pytest.raises(SystemExit) as exit_:  # and the program stops with that one line
        cli.parse_or_exit([arg], program)
    assert f"--{key}" in str(exit_.value.code) and "\n" not in str(exit_.value.code)


def test_value_errors_say_what_is_wanted():
    for arg, want in (("--fs=0", "> 0"), ("--lr=1e999", "finite"), ("--dropout=2", "[0, 1)"),
                      ("--seeds=[4294967296]", "2**32"), ("--lr=True", "boolean"), ("--epochs=0", ">= 1")):
        with pytest.raises(cli.ConfigError) as exc:
            parse(arg)
        assert want in str(exc.value), (arg, str(exc.value))


def test_values_that_cannot_work_in_a_config_file(tmp_path):
    f = tmp_path / "bad.py"
    for text, key in (("lr = 1e999\n", "lr"), ("fs = 0\n", "fs"), ("dropout = 2\n", "dropout"),
                      ("seeds = [1, 2**32]\n", None), ("seeds = [4294967296]\n", "seeds")):
        f.write_text(text)
        with pytest.raises(cli.ConfigError) as exc:
            parse(f"--config={f}")
        assert "\n" not in str(exc.value)
        if key:
            assert f"--{key}" in str(exc.value)


@pytest.mark.parametrize("arg, key, value", [
    ("--fs=1", "fs", 1),
    ("--lr=1e-12", "lr", 1e-12),
    ("--dropout=0", "dropout", 0.0),
    ("--dropout=0.999", "dropout", 0.999),
    ("--seeds=[0,4294967295]", "seeds", [0, 2**32 - 1]),  # the ends of the seed range
    ("--weight_decay=0", "weight_decay", 0.0),
    ("--grad_clip=0", "grad_clip", 0.0),
    ("--epochs=1", "epochs", 1),
])
def test_values_at_the_edge_of_their_range_are_accepted(arg, key, value):
    assert parse(arg)[0][key] == value


# --------------------------------------------------------------------------------------- programs
def test_each_programs_keys_are_config_keys_once():
    d = cli.defaults()
    assert set(cli.PROGRAMS) >= {"train", "test", "preprocess", "demo"}
    for program in cli.PROGRAMS:
        keys = cli.read_by(program)
        assert len(set(keys)) == len(keys), program
        for key in keys:
            assert key in d, (program, key)
        assert cli.defaults(program) == {k: d[k] for k in keys}
        assert parse(program=program) == (cli.defaults(program), set())


def test_every_config_key_is_declared_once_and_read_by_some_program():
    """A key is one annotated line of config.py: a plain assignment without Key(...) would be a key
    no program reads and nothing checks, and a reader name that is not a program reads nothing."""
    import ast
    tree = ast.parse((ROOT / "config.py").read_text())
    plain = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets]
    annotated = [node.target.id for node in tree.body if isinstance(node, ast.AnnAssign)]
    assert plain == [] and annotated == list(cli.declared())
    for key, spec in cli.declared().items():
        assert isinstance(spec, cli.Key) and spec.read_by, key
        assert set(spec.read_by) <= {*cli.PROGRAMS, cli.MODEL_BUILDER}, (key, spec.read_by)
        assert set(spec.read_by) & set(cli.PROGRAMS), key  # a model key is also set through a program
    read = {k for program in cli.PROGRAMS for k in cli.read_by(program)}
    assert set(cli.defaults()) == read


def test_a_tools_own_key_is_checked_by_the_tool_not_by_config_py():
    """A tool key that shares a name with a config.py key (amp, model, device) takes the tool's values."""
    extra = {"amp": (["none"], "precisions to time", (list, str)), "model": ("mlp", "a tool's model")}
    cfg, _ = cli.parse(["--amp=[none,bf16]", "--model=mlp"], None, extra)
    assert cfg["amp"] == ["none", "bf16"] and cfg["model"] == "mlp"
    with pytest.raises(cli.ConfigError, match="--amp: expected one of"):  # config.py's own check still holds
        cli.parse(["--amp=[none,bf16]"], "train")


def test_every_model_key_is_read_by_train_and_build_model():
    """build_model reads these keys from the config: a key train does not accept could never be set."""
    import newmodel

    train = set(cli.read_by("train"))
    assert set(cli.model_keys()) <= train and "n_chans" in train and "model" in train
    # each model key changes what model_args gives for some model (none is dead)
    d = cli.defaults()
    for key in cli.model_keys():
        if key == "subject_embedding":  # train.py turns it into n_subjects
            continue
        v = d[key]
        other = (not v) if isinstance(v, bool) else (v + 1 if isinstance(v, int) else min(v + 0.1, 0.5) or 0.3)
        changed = [m for m in newmodel.MODELS
                   if newmodel.model_args(m, dict(d, **{key: other})) != newmodel.model_args(m, d)]
        assert changed, key


def test_comments_document_every_key():
    notes = cli.comments()
    for key in cli.defaults():
        assert notes.get(key), key
    assert "monitor set" in notes["monitor_recordings"] and "log.csv" in notes["monitor_recordings"]  # continued line


def _run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_python_config_py_prints_every_programs_keys_with_comments():
    out = _run("config.py")
    assert out.returncode == 0, out.stderr
    notes = cli.comments()
    for program in cli.PROGRAMS:
        for key in cli.read_by(program):
            assert f"--{key}=" in out.stdout, key
    for key in ("lr", "pre_highpass_hz", "result_dir", "demo_seed"):
        assert notes[key] in out.stdout
    assert f"--lr={config.lr!r}\n      {notes['lr']}" in out.stdout


def test_train_help_prints_train_keys_with_comments_only():
    out = _run("train.py", "--help")
    assert out.returncode == 0, out.stderr
    notes = cli.comments()
    for key in cli.read_by("train"):
        assert f"--{key}=" in out.stdout and notes[key] in out.stdout, key
    for key in ("pre_highpass_hz", "result_dir", "label_dir"):  # other programs' keys
        assert f"--{key}=" not in out.stdout, key


def test_help_text_of_extra_keys():
    extra = {"protocols": (["seen"], "which protocols to run"), "limit": (None, "a cap", (int, type(None)))}
    text = cli.help_text(None, extra)
    assert "--protocols=['seen']\n      which protocols to run" in text
    assert "--limit=None\n      a cap" in text
    assert "--lr=" not in text


# --------------------------------------------------------------------------------------- extra keys
def test_extra_keys_with_a_types_tuple():
    extra = {"limit": (None, "a cap", (int, type(None))),
             "rate": (0.5, "a float"),
             "label": ("x", "a string"),
             "where": (None, "anything")}
    cfg, given = cli.parse([], None, extra)
    assert cfg == {"limit": None, "rate": 0.5, "label": "x", "where": None} and given == set()
    cfg, given = cli.parse(["--limit=3", "--rate=2", "--label=7"], None, extra)
    assert cfg["limit"] == 3 and cfg["rate"] == 2.0 and isinstance(cfg["rate"], float) and cfg["label"] == "7"
    assert given == {"limit", "rate", "label"}
    assert cli.parse(["--limit=None"], None, extra)[0]["limit"] is None
    for bad in ("--limit=abc", "--limit=2.5", "--limit=True", "--rate=fast"):
        with pytest.raises(cli.ConfigError) as exc:
            cli.parse([bad], None, extra)
        assert str(exc.value).startswith(bad.split("=")[0] + ":"), bad
    with pytest.raises(cli.ConfigError, match="accepts: label, limit, rate, where"):
        cli.parse(["--lr=1"], None, extra)  # program=None: only the extra keys


def test_extra_keys_add_to_a_programs_keys():
    extra = {"limit": (None, "a cap", (int, type(None)))}
    cfg, given = cli.parse(["--limit=4", "--epochs=2"], "train", extra)
    assert cfg["limit"] == 4 and cfg["epochs"] == 2 and given == {"limit", "epochs"}
    assert set(cfg) == set(cli.read_by("train")) | {"limit"}
    assert "limit" not in cli.parse([], "train")[0]  # not kept for later calls


def test_time_fold_range_matches_the_dataset_and_is_checked():
    from EEG_Dataset import TIME_FOLDS
    assert parse(f"--time_fold={TIME_FOLDS - 1}")[0]["time_fold"] == TIME_FOLDS - 1
    assert parse("--time_fold=0")[0]["time_fold"] == 0
    for bad in (f"--time_fold={TIME_FOLDS}", "--time_fold=-1"):
        with pytest.raises(cli.ConfigError, match="time_fold: expected one of"):
            parse(bad)


def test_a_tool_key_like_a_config_key_takes_its_check_and_help():
    extra = {"threads": cli.like("threads", 1, "threads of the tool"), "device": cli.like("device")}
    cfg, _ = cli.parse([], None, extra)
    assert cfg == {"threads": 1, "device": config.device}
    text = cli.help_text(None, extra)
    assert "threads of the tool" in text and cli.comments()["device"] in text
    for bad, says in (("--threads=-1", "--threads: must be >= 0"), ("--device=tpu", "--device: expected one of")):
        with pytest.raises(cli.ConfigError, match=says):
            cli.parse([bad], None, extra)
