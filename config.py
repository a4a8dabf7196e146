"""Every hyperparameter, path and seed, as plain Python, with the programs that read each key.

    python train.py --model=vlaai --seeds=[1,2,3] --epochs=20 --data_dir=../shared/data/dtu
    python train.py --config=my_overrides.py --lr=5e-4
    python config.py               # every program's keys, defaults and comments
    python train.py --help         # the keys of one program

Values are Python literals (numbers, lists, booleans, None); a bare word is a string; a bare
``--flag`` means True. ``--config=path.py`` reads a file of ``key = literal`` lines (read as data,
never executed). A key the program does not read, a value of the wrong type and a value that
cannot work (e.g. ``--lr=0``) are rejected with a one-line message naming the key.
"""
from __future__ import annotations

import ast
import copy
import math
import re
import sys
from pathlib import Path

# ---- data -----------------------------------------------------------------------------------
data_dir = "xfdata/split_data"  # training data: split_data folder, DTU-style npz folder; built-in demo if missing/empty
subjects = None  # glob patterns of subjects to use, e.g. ['S1', 'S2'] (None: all)
exclude_subjects = None  # glob patterns of subjects to leave out, e.g. held-out test subjects
val_recordings = None  # glob patterns (recording id or subject) that go whole to validation, e.g. ['*_007']
test_recordings = None  # glob patterns that go whole to test, e.g. ['*_008', '*_009']
monitor_recordings = None  # glob patterns that go whole to a monitor set: never trained on, scored after every
#   epoch into log.csv's monitor_r column and never used for any choice (e.g. an inner held-out subject ['S9'])
split = "time"  # other recordings: 'time' = 80/10/10 in time (split_data keeps its own); 'whole' = all train
time_fold = 0  # split='time': 0 tests the last 10 % of each recording; k in 1..9 moves test (and val, the 10 %
#   before it) k tenths earlier, training on the rest. Trials that share one stimulus (e.g. the DTU folder)
#   test speech the model never heard only this way; folds 0-9 cover it all. test.py takes the run's fold
window_s = 5.0  # training window length in seconds (the field's VLAAI recipe uses 5 s)
fs = 64  # sampling rate of EEG and envelope in Hz; all supported formats are at 64 Hz
n_chans = 64  # EEG channels every recording must have

# ---- model ----------------------------------------------------------------------------------
model = "ivlaai"  # 'ivlaai' (ours), 'vlaai', 'linear' (closed-form ridge) or 'linear_conv'
dropout = 0.2  # dropout rate inside ivlaai (VLAAI and the linear models use none)
subject_embedding = False  # ivlaai: learn a vector per training subject (helps subjects seen in training)
ivlaai_blocks = 4  # ivlaai: number of blocks
ivlaai_width = 128  # ivlaai: channels of every extractor conv layer
ivlaai_layers = 5  # ivlaai: conv layers per extractor
ivlaai_kernel = 8  # ivlaai: extractor kernel (each layer looks kernel-1 samples ahead, as VLAAI)
ivlaai_feat = 64  # ivlaai: width of each block's output (per-block dense layer)
ivlaai_context = 32  # ivlaai: output-context kernel (looks context-1 samples back, as VLAAI)
ivlaai_concat = True  # ivlaai: blocks see [EEG, all earlier outputs] concatenated (False: added, as VLAAI)
ivlaai_separable = False  # ivlaai: depthwise-separable extractor convolutions (True: 286,017 parameters; lost on
#   new speech, docs/model.md)
ivlaai_shared = True  # ivlaai: one extractor + output context shared by all blocks (as VLAAI)
ivlaai_chan_dropout = 0.0  # ivlaai: while training, zero each whole EEG input channel with this probability
ivlaai_subject_dropout = 0.1  # ivlaai: while training, replace a subject by 'unknown' with this probability
linear_lags = 26  # linear: EEG lags 0..linear_lags-1 samples after the envelope (26 = 0-400 ms at 64 Hz)
linear_conv_taps = 32  # linear_conv: taps of the challenge's Conv1D linear baseline (500 ms)

# ---- training -------------------------------------------------------------------------------
seeds = [1]  # one model is trained per seed; edit this list (or --seeds=[1,2,3]) to change seeds. Several seeds
#   and test.py's ensemble of them give a steadier result than any one seed (README, "The default recipe")
data_seed = None  # seed of the window order and the dropout masks (None: each run's seed); the seed itself
#   still sets the initial weights, so the two sources of seed-to-seed spread can be told apart (docs/model.md)
epochs = 10  # number of epochs (select='best_val': the most). 10 epochs averaging the last 5 decoded inner
#   held-out listeners better than early stopping (docs/model.md#the-default-recipe)
patience = 5  # select='best_val' only: stop after this many epochs without a better validation r
batch_size = 64  # windows per step (the VLAAI recipe uses 64)
lr = 3e-4  # Adam learning rate; 3e-4 reached a higher validation r than 1e-3 (docs/model.md#the-default-recipe)
weight_decay = 0.0  # Adam weight decay (L2)
ema_decay = 0.0  # >0: validate, keep and test an exponential moving average of the weights (e.g. 0.999)
avg_epochs = 5  # >1: validate, keep and test the uniform average of the last avg_epochs epochs' weights; 5 of
#   10 epochs beat early stopping on inner held-out listeners for both networks (docs/model.md#the-default-recipe)
select = "last"  # what best.pt keeps: 'last' (the final epoch's weights, or their average; trains all epochs) or
#   'best_val' (highest validation r; stops after patience epochs without a better one). A 5 s validation piece
#   per trial picks a lucky epoch for new listeners; best_val suits seen listeners with a whole validation trial
grad_clip = 0.0  # clip the gradient norm to this (0: no clipping)
num_workers = 0  # DataLoader worker processes (0: load in the training process)
device = "auto"  # 'auto' (CUDA when present), 'cpu' or 'cuda'
deterministic = True  # use deterministic kernels, so one seed gives the same model on one machine
threads = 0  # torch CPU threads (0: torch's default)
amp = "none"  # precision: 'none' (float32), 'bf16' (bfloat16 autocast) or 'auto' (bf16 where the device has fast
#   bf16 matrix units: a CPU with AMX or a CUDA GPU with bf16; float32 elsewhere). test.py: the checkpoint's own
#   precision unless --amp is given. The loss, optimizer state and weight averages stay float32
compile = False  # torch.compile the model (pays a one-off compile time; worth it for long GPU runs)
init = None  # start from these weights (fine-tuning): a best.pt/last.pt or a Keras VLAAI .h5; None: random init
jobs = 1  # train this many seeds at once in separate processes (one per GPU when several are visible)

# ---- outputs --------------------------------------------------------------------------------
run_dir = "runs"  # checkpoints and logs go to run_dir/<model>/seed-<seed>/
resume = False  # continue an interrupted run from its last.pt
keep_epochs = False  # also keep every epoch's weights in epochs/epoch-NNN.pt (for offline stopping-rule studies)
overwrite = False  # allow replacing an existing run or result folder (otherwise a clash stops)

# ---- test / scoring -------------------------------------------------------------------------
test_dir = "xfdata/auditory-eeg-test-dataset"  # challenge-format test set (sub-XXX.json); None: skip
label_dir = "xfdata/test_labels"  # labels of test_dir; scored when this folder exists
checkpoint = None  # test.py: use this one best.pt or Keras VLAAI .h5 instead of the seeds in run_dir
result_dir = "prediction_result"  # predictions sub-XXX.json and score.json are written here
seen_subjects = None  # scoring: None = plain mean over subjects; 'auto' = the training subjects; or a list
eval_dir = None  # test.py: also score the test split of this labelled data folder (any readable format)
eval_window_s = 5.0  # eval_dir: also score windows of this length (0: whole recordings only)
eval_hop_s = 1.0  # eval_dir: hop between those windows
chance_draws = 1000  # chance level of every score: null scores from this many random circular shifts of the
#   envelopes (0: none); the p value is one-sided, (1 + #null >= observed) / (1 + draws)
chance_min_shift_s = 2.0  # the shifts stay at least this far from zero and from the ends, so the envelope's own
#   autocorrelation cannot carry the true alignment into the null
mm_window_s = 5.0  # match-mismatch: window length; each heard window against 4 imposter windows of the same segment

# ---- demo corpus ----------------------------------------------------------------------------
demo_subjects = 8  # subjects in the built-in demo corpus
demo_minutes = 1.0  # minutes of EEG per demo subject (small, so the demo trains in a few minutes on a 2-core CPU)
demo_seed = 0  # seed of the demo corpus generator
demo_dir = "xfdata"  # where the demo corpus is written (split_data/, test set, labels); train.py builds it here

# ---- preprocess -----------------------------------------------------------------------------
# preprocess.py: raw recordings (wav/npz audio + BDF/EDF/FIF/BrainVision EEG) -> a split_data folder
# that train.py reads. Output rate: fs; see docs/preprocess.md.
pairs = None  # CSV of 'subject,eeg_file,audio_file[,onset_s]' rows; paths relative to the CSV's folder
out_dir = None  # output split_data folder; built in a temp folder beside it, then renamed (see overwrite)
pre_channels = 64  # EEG channels to keep: a count (the first N channels of type EEG, in file order) or a list of names
pre_highpass_hz = 0.5  # EEG high-pass cut-off: 1st-order Butterworth, run forward and backward (zero-phase); 0: off
pre_artifact_k = 0.0  # >0: interpolate EEG samples more than k robust SDs (1.4826 * MAD) from the channel median;
#   0: off
pre_artifact_uv = 0.0  # >0: interpolate EEG samples whose |value| exceeds this many microvolts (reference recipe:
#   500); 0: off
pre_artifact_pad_s = 0.05  # widen each artifact by this many seconds on both sides before interpolating
pre_align = "auto"  # stimulus onset: 'auto' (a row's onset_s column if given, else triggers), 'trigger' or 'onset'
pre_trigger_source = "auto"  # triggers from: 'auto' (stim channel if the file has one, else annotations), 'stim',
#   'annotations'
pre_trigger_code = None  # the trigger marking stimulus onset: an int code, an annotation text, or None (any trigger)
pre_stim_channel = None  # stim channel name for stim triggers (None: MNE's choice, e.g. 'STI 014' or BioSemi 'Status')
pre_env_bands = 28  # envelope: gammatone bands, centres ERB-spaced from pre_env_fmin_hz to pre_env_fmax_hz
pre_env_fmin_hz = 50.0  # envelope: lowest band centre in Hz
pre_env_fmax_hz = 5000.0  # envelope: highest band centre in Hz
pre_env_power = 0.6  # envelope: sum over bands of |band output| ** pre_env_power
pre_tolerance_s = 0.0625  # EEG may end up to this long before the stimulus does (both are cut); longer is an error

# ---- which program reads which keys ---------------------------------------------------------
_DATA = ("data_dir", "subjects", "exclude_subjects", "val_recordings", "test_recordings", "monitor_recordings",
         "split", "time_fold", "window_s", "fs", "n_chans")
_MODEL = ("model", "dropout", "subject_embedding", "ivlaai_blocks", "ivlaai_width", "ivlaai_layers", "ivlaai_kernel",
          "ivlaai_feat", "ivlaai_context", "ivlaai_concat", "ivlaai_separable", "ivlaai_shared",
          "ivlaai_chan_dropout", "ivlaai_subject_dropout", "linear_lags", "linear_conv_taps")
_TRAINING = ("seeds", "data_seed", "epochs", "patience", "batch_size", "lr", "weight_decay", "ema_decay", "avg_epochs",
             "select", "grad_clip", "num_workers", "device", "deterministic", "threads", "amp", "compile", "jobs")
_DEMO = ("demo_subjects", "demo_minutes", "demo_seed", "demo_dir")  # train.py builds the demo from these too
PROGRAMS = {
    "train": (*_DATA, *_MODEL, *_TRAINING, "init", "run_dir", "resume", "keep_epochs", "overwrite", *_DEMO),
    "test": ("run_dir", "checkpoint", "model", "seeds", "device", "threads", "amp", "test_dir", "label_dir",
             "result_dir", "seen_subjects",
             "eval_dir", "eval_window_s", "eval_hop_s", "chance_draws", "chance_min_shift_s", "mm_window_s",
             "overwrite", "fs", "subjects", "exclude_subjects",
             "val_recordings", "test_recordings", "split", "time_fold"),
    "preprocess": ("pairs", "out_dir", "fs", "overwrite", "pre_channels", "pre_highpass_hz", "pre_artifact_k",
                   "pre_artifact_uv", "pre_artifact_pad_s", "pre_align", "pre_trigger_source", "pre_trigger_code",
                   "pre_stim_channel", "pre_env_bands", "pre_env_fmin_hz", "pre_env_fmax_hz", "pre_env_power",
                   "pre_tolerance_s"),
    "demo": (*_DEMO, "overwrite"),
}
MODEL_KEYS = _MODEL[1:]  # what newmodel.build_model reads (besides n_chans and n_subjects)

# Keys whose default is None (or whose type may vary) accept these types.
_TYPES = {
    "subjects": (list, str, type(None)),
    "exclude_subjects": (list, str, type(None)),
    "val_recordings": (list, str, type(None)),
    "test_recordings": (list, str, type(None)),
    "monitor_recordings": (list, str, type(None)),
    "seen_subjects": (list, str, type(None)),
    "eval_dir": (str, type(None)),
    "init": (str, type(None)),
    "checkpoint": (str, type(None)),
    "test_dir": (str, type(None)),
    "label_dir": (str, type(None)),
    "seeds": (list, int),
    "data_seed": (int, type(None)),
    "pairs": (str, type(None)),
    "out_dir": (str, type(None)),
    "pre_channels": (int, list),
    "pre_trigger_code": (int, str, type(None)),
    "pre_stim_channel": (str, type(None)),
}
_CHOICES = {
    "split": ("time", "whole"),
    "time_fold": tuple(range(10)),  # EEG_Dataset.TIME_FOLDS
    "model": ("ivlaai", "vlaai", "linear", "linear_conv"),
    "device": ("auto", "cpu", "cuda"),
    "amp": ("none", "bf16", "auto"),
    "select": ("best_val", "last"),
    "pre_align": ("auto", "trigger", "onset"),
    "pre_trigger_source": ("auto", "stim", "annotations"),
}
# Numeric keys and the values that can work: (lowest, highest, lowest allowed itself, highest allowed itself).
_POSITIVE, _AT_LEAST_1, _NON_NEGATIVE, _RATE = (0, math.inf, False, False), (1, math.inf, True, False), \
    (0, math.inf, True, False), (0, 1, True, False)
_RANGES = {
    "fs": _POSITIVE, "lr": _POSITIVE, "window_s": _POSITIVE, "eval_hop_s": _POSITIVE, "demo_minutes": _POSITIVE,
    "eval_window_s": _NON_NEGATIVE, "weight_decay": _NON_NEGATIVE, "grad_clip": _NON_NEGATIVE,
    "threads": _NON_NEGATIVE, "num_workers": _NON_NEGATIVE, "pre_highpass_hz": _NON_NEGATIVE,
    "pre_artifact_k": _NON_NEGATIVE, "pre_artifact_uv": _NON_NEGATIVE, "pre_artifact_pad_s": _NON_NEGATIVE,
    "pre_tolerance_s": _NON_NEGATIVE, "pre_env_fmin_hz": _POSITIVE, "pre_env_fmax_hz": _POSITIVE,
    "pre_env_power": _POSITIVE, "demo_seed": _NON_NEGATIVE, "chance_draws": _NON_NEGATIVE,
    "chance_min_shift_s": _POSITIVE, "mm_window_s": _POSITIVE,
    "dropout": _RATE, "ivlaai_chan_dropout": _RATE, "ivlaai_subject_dropout": _RATE, "ema_decay": _RATE,
    **{k: _AT_LEAST_1 for k in ("epochs", "patience", "batch_size", "avg_epochs", "jobs", "n_chans", "ivlaai_blocks",
                                "ivlaai_width", "ivlaai_layers", "ivlaai_kernel", "ivlaai_feat", "ivlaai_context",
                                "linear_lags", "linear_conv_taps", "demo_subjects", "pre_env_bands")},
}
MAX_SEED = 2**32 - 1  # numpy's seed range


def defaults(program: str | None = None) -> dict:
    """Every key with its default value (``program``: only the keys that program reads)."""
    every = {k: v for k, v in globals().items()
             if not k.startswith("_") and k.islower() and isinstance(v, (int, float, str, list, bool, type(None)))}
    return every if program is None else {k: every[k] for k in PROGRAMS[program]}


class ConfigError(ValueError):
    pass


def literal(text: str):
    """A command-line value: a Python literal, a [bare, word] list, or else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # e.g. {[1]: 2} is unhashable
        pass
    if text.startswith("[") and text.endswith("]"):  # [S1,S2] or ['*_008', 9]: bare words are strings
        return [literal(t.strip()) for t in text[1:-1].split(",") if t.strip()]
    return text  # a bare word is a string


def _kind(types) -> str:
    return "/".join("None" if t is type(None) else t.__name__ for t in types)


def _check_range(key: str, value) -> None:
    if key == "data_seed" and value is not None and not 0 <= value <= MAX_SEED:
        raise ConfigError(f"--data_seed: must be in 0 .. 2**32 - 1 or None, got {value}")
    if key == "seeds":
        bad = [s for s in value if not 0 <= s <= MAX_SEED]
        if bad:
            raise ConfigError(f"--seeds: each seed must be in 0 .. 2**32 - 1, got {bad[0]}")
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"--{key}: must be a finite number, got {value!r}")
    if key not in _RANGES or not isinstance(value, (int, float)):
        return
    lo, hi, lo_ok, hi_ok = _RANGES[key]
    if value < lo or value > hi or (value == lo and not lo_ok) or (value == hi and not hi_ok):
        want = {_POSITIVE: "> 0", _AT_LEAST_1: ">= 1", _NON_NEGATIVE: ">= 0", _RATE: "in [0, 1)"}[_RANGES[key]]
        raise ConfigError(f"--{key}: must be {want}, got {value!r}")


def _check(key: str, value, base: dict, types: dict):
    if key not in base:
        raise ConfigError(f"unknown config key {key!r} for this program. It accepts: {', '.join(sorted(base))}")
    default = base[key]
    allowed = types.get(key, (type(default),))
    if (float in allowed or isinstance(default, float)) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"--{key}: expected {_kind(allowed)}, got {value!r} (a boolean)")
    if not isinstance(value, allowed):
        raise ConfigError(f"--{key}: expected {_kind(allowed)}, got {value!r} ({type(value).__name__})")
    if key == "seeds":
        value = [value] if isinstance(value, int) else value
        if not value or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
            raise ConfigError(f"--seeds: expected a non-empty list of integers, got {value!r}")
        if len(set(value)) != len(value):
            raise ConfigError(f"--seeds: each seed once, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"--{key}: expected one of {_CHOICES[key]}, got {value!r}")
    _check_range(key, value)
    return value


def read_config_file(path) -> dict:
    """A file of ``key = literal`` assignments (comments allowed), parsed as data, not executed."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from exc
    except SyntaxError as exc:
        raise ConfigError(f"{path}: not valid Python syntax (line {exc.lineno}: {exc.msg})") from exc
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ConfigError(f"{path}:{node.lineno}: only 'key = value' lines are allowed in a config file")
        key = node.targets[0].id
        if key in out:
            raise ConfigError(f"{path}:{node.lineno}: {key!r} is set twice")
        try:
            out[key] = ast.literal_eval(node.value)
        except (ValueError, TypeError, MemoryError, RecursionError) as exc:
            raise ConfigError(f"{path}:{node.lineno}: the value must be a Python literal ({exc})") from exc
    return out


def _program_keys(program: str | None, extra: dict | None) -> tuple[dict, dict]:
    """(defaults, accepted types) of a program's keys plus its ``extra`` {key: (default, comment)}."""
    if program is not None and program not in PROGRAMS:
        raise ValueError(f"unknown program {program!r}; known: {', '.join(PROGRAMS)}")
    base = defaults(program) if program else {}
    types = {k: v for k, v in _TYPES.items() if k in base}
    for key, (default, _comment, *given_types) in (extra or {}).items():
        base[key] = default
        types[key] = (object,) if default is None else (type(default),)
        if given_types:  # a script may name the types a key accepts: (default, comment, (types...))
            types[key] = given_types[0]
            continue
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            types[key] = (int, float) if isinstance(default, float) else (int,)
        elif isinstance(default, (list, dict)) and key not in ("variants", "extra"):
            types[key] = (list, dict, int, float, str, type(None))  # e.g. a per-protocol dict or one value
    return base, types


def parse(argv=None, program: str | None = "train", extra: dict | None = None) -> tuple[dict, set]:
    """Resolve a program's config from defaults, ``--config=file.py`` and ``--key=value`` arguments.

    ``extra``: keys a script declares itself, {key: (default, comment[, accepted types])}; they are added to the
    program's keys (or are all the keys, with ``program=None``). Returns (config, keys the user set).
    """
    argv = sys.argv[1:] if argv is None else argv
    base, types = _program_keys(program, extra)
    cfg, given = copy.deepcopy(base), set()  # callers may mutate lists in cfg
    for arg in argv:
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --key=value. It accepts: {', '.join(sorted(base))}")
        key, eq, text = arg[2:].partition("=")
        if key == "config":
            if not eq:
                raise ConfigError("--config needs a file: --config=path.py")
            for k, v in read_config_file(text).items():
                cfg[k] = _check(k, v, base, types)
                given.add(k)
            continue
        value = literal(text) if eq else True
        if isinstance(value, tuple):  # --seeds=1,2 reads as a tuple
            value = list(value)
        allowed = types.get(key, (type(base.get(key)),))
        if eq and str in allowed and not isinstance(value, allowed):
            value = text  # e.g. --run_dir=2024 is a folder name, not a number
        cfg[key] = _check(key, value, base, types)
        given.add(key)
    return cfg, given


def comments() -> dict:
    """{key: comment} read from this file's ``key = value  # comment`` lines (and their ``#   ...``
    continuation lines), so that --help and the README cannot drift from the defaults."""
    out, last = {}, None
    for line in Path(__file__).read_text().splitlines():
        m = re.match(r"^([a-z_][a-z0-9_]*) = .*?  # (.*)$", line)
        if m:
            last = m.group(1)
            out[last] = m.group(2).strip()
        elif last and line.startswith("#   "):
            out[last] += " " + line[4:].strip()
        else:
            last = None
    return out


def help_text(program: str | None, extra: dict | None = None, title: str = "") -> str:
    base, _ = _program_keys(program, extra)
    notes = dict(comments(), **{k: (v[1] if len(v) > 1 else "") for k, v in (extra or {}).items()})
    lines = [title or f"{program or Path(sys.argv[0]).name}: keys (--key=value), defaults and what they do"]
    lines += [f"  --{k}={base[k]!r}\n      {notes.get(k, '')}" for k in base]
    return "\n".join(lines)


def parse_or_exit(argv=None, program: str | None = "train", extra: dict | None = None) -> tuple[dict, set]:
    """``parse``, with ``--help`` printing the keys and a config error ending the program in one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(help_text(program, extra))
        sys.exit(0)
    try:
        return parse(argv, program, extra)
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")


if __name__ == "__main__":
    for name in PROGRAMS:
        print(help_text(name, title=f"python {'demo_corpus' if name == 'demo' else name}.py: keys and defaults"),
              end="\n\n")
    print("python benchmark.py --help: the benchmark's own keys")
