"""Every hyperparameter, path and seed, as plain Python. Override any key on the command line.

    python train.py --model=vlaai --seeds=[1,2,3] --epochs=20 --data_dir=../shared/data/dtu
    python train.py --config=my_overrides.py --lr=5e-4

Values are Python literals (numbers, lists, booleans, None); a bare word is a string; a bare
``--flag`` means True. ``--config=path.py`` reads a file of ``key = literal`` lines (read as data,
never executed). Unknown keys and values of the wrong type are rejected.
"""
from __future__ import annotations

import ast
import copy
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
ivlaai_separable = False  # ivlaai: depthwise-separable extractor convolutions (True: 286,017 parameters; lost on new speech, docs/model.md)
ivlaai_shared = True  # ivlaai: one extractor + output context shared by all blocks (as VLAAI)
ivlaai_chan_dropout = 0.0  # ivlaai: while training, zero each whole EEG input channel with this probability
ivlaai_subject_dropout = 0.1  # ivlaai: while training, replace a subject by 'unknown' with this probability
linear_lags = 26  # linear: EEG lags 0..linear_lags-1 samples after the envelope (26 = 0-400 ms at 64 Hz)
linear_conv_taps = 32  # linear_conv: taps of the challenge's Conv1D linear baseline (500 ms)

# ---- training -------------------------------------------------------------------------------
seeds = [1]  # one model is trained per seed; edit this list (or --seeds=[1,2,3]) to change seeds
epochs = 30  # maximum number of epochs
patience = 5  # stop after this many epochs without a better validation r
batch_size = 64  # windows per step (the VLAAI recipe uses 64)
lr = 1e-3  # Adam learning rate
weight_decay = 0.0  # Adam weight decay (L2)
ema_decay = 0.0  # >0: validate, keep and test an exponential moving average of the weights (e.g. 0.999)
avg_epochs = 1  # >1: validate, keep and test the uniform average of the last avg_epochs epochs' weights
select = "best_val"  # what best.pt keeps: 'best_val' (highest validation r; stop after patience epochs
#   without a better one) or 'last' (the final epoch's weights; train all epochs, patience unused)
grad_clip = 0.0  # clip the gradient norm to this (0: no clipping)
num_workers = 0  # DataLoader worker processes (0: load in the training process)
device = "auto"  # 'auto' (CUDA when present), 'cpu' or 'cuda'
deterministic = True  # use deterministic kernels, so one seed gives the same model on one machine
threads = 0  # torch CPU threads (0: torch's default)
amp = "none"  # mixed precision: 'none' (float32) or 'bf16' (bfloat16 autocast; fast on recent GPUs)
compile = False  # torch.compile the model (pays a one-off compile time; worth it for long GPU runs)
jobs = 1  # train this many seeds at once in separate processes (one per GPU when several are visible)

# ---- outputs --------------------------------------------------------------------------------
run_dir = "runs"  # checkpoints and logs go to run_dir/<model>/seed-<seed>/
resume = False  # continue an interrupted run from its last.pt
keep_epochs = False  # also keep every epoch's weights in epochs/epoch-NNN.pt (benchmarks/selection.py studies them)
overwrite = False  # allow replacing an existing run or result folder (otherwise a clash stops)

# ---- test / scoring -------------------------------------------------------------------------
test_dir = "xfdata/auditory-eeg-test-dataset"  # challenge-format test set (sub-XXX.json); None: skip
label_dir = "xfdata/test_labels"  # labels of test_dir; scored when this folder exists
result_dir = "prediction_result"  # predictions sub-XXX.json and score.json are written here
seen_subjects = None  # scoring: None = plain mean over subjects; 'auto' = the training subjects; or a list
eval_dir = None  # test.py: also score the test split of this labelled data folder (any readable format)
eval_window_s = 5.0  # eval_dir: also score windows of this length (0: whole recordings only)
eval_hop_s = 1.0  # eval_dir: hop between those windows

# ---- demo corpus ----------------------------------------------------------------------------
demo_subjects = 8  # subjects in the built-in demo corpus
demo_minutes = 4.0  # minutes of EEG per demo subject
demo_seed = 0  # seed of the demo corpus generator

# ---- preprocess -----------------------------------------------------------------------------
# preprocess.py: raw recordings (wav/npz audio + BDF/EDF/FIF/BrainVision EEG) -> a split_data folder
# that train.py reads. Output rate: fs; see docs/preprocess.md.
pairs = None  # CSV of 'subject,eeg_file,audio_file[,onset_s]' rows; paths relative to the CSV's folder
out_dir = None  # output split_data folder; built in a temp folder beside it, then renamed (see overwrite)
pre_channels = 64  # EEG channels to keep: a count (the first N channels of type EEG, in file order) or a list of names
pre_highpass_hz = 0.5  # EEG high-pass cut-off: 1st-order Butterworth, run forward and backward (zero-phase); 0: off
pre_artifact_k = 0.0  # >0: interpolate EEG samples more than k robust SDs (1.4826 * MAD) from the channel median; 0: off
pre_artifact_uv = 0.0  # >0: interpolate EEG samples whose |value| exceeds this many microvolts (reference recipe: 500); 0: off
pre_artifact_pad_s = 0.05  # widen each artifact by this many seconds on both sides before interpolating
pre_align = "auto"  # stimulus onset: 'auto' (a row's onset_s column if given, else triggers), 'trigger' or 'onset'
pre_trigger_source = "auto"  # triggers from: 'auto' (stim channel if the file has one, else annotations), 'stim', 'annotations'
pre_trigger_code = None  # the trigger marking stimulus onset: an int code, an annotation text, or None (any trigger)
pre_stim_channel = None  # stim channel name for stim triggers (None: MNE's choice, e.g. 'STI 014' or BioSemi 'Status')
pre_env_bands = 28  # envelope: gammatone bands, centres ERB-spaced from pre_env_fmin_hz to pre_env_fmax_hz
pre_env_fmin_hz = 50.0  # envelope: lowest band centre in Hz
pre_env_fmax_hz = 5000.0  # envelope: highest band centre in Hz
pre_env_power = 0.6  # envelope: sum over bands of |band output| ** pre_env_power
pre_tolerance_s = 0.0625  # EEG may end up to this long before the stimulus does (both are cut); longer is an error

# Keys whose default is None (or whose type may vary) accept these types.
_TYPES = {
    "subjects": (list, str, type(None)),
    "exclude_subjects": (list, str, type(None)),
    "val_recordings": (list, str, type(None)),
    "test_recordings": (list, str, type(None)),
    "monitor_recordings": (list, str, type(None)),
    "seen_subjects": (list, str, type(None)),
    "eval_dir": (str, type(None)),
    "test_dir": (str, type(None)),
    "label_dir": (str, type(None)),
    "seeds": (list, int),
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
    "amp": ("none", "bf16"),
    "select": ("best_val", "last"),
    "pre_align": ("auto", "trigger", "onset"),
    "pre_trigger_source": ("auto", "stim", "annotations"),
}


def defaults() -> dict:
    """All keys with their default values."""
    return {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, str, list, bool, type(None)))}


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


def _check(key: str, value, base: dict):
    if key not in base:
        valid = ", ".join(sorted(base))
        raise ConfigError(f"unknown config key {key!r}. Valid keys: {valid}")
    default = base[key]
    allowed = _TYPES.get(key, (type(default),))
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"--{key}: expected {'/'.join(t.__name__ for t in allowed)}, got {value!r} (bool)")
    if not isinstance(value, allowed):
        raise ConfigError(
            f"--{key}: expected {'/'.join(t.__name__ for t in allowed)}, got {value!r} "
            f"({type(value).__name__}). Valid keys: {', '.join(sorted(base))}"
        )
    if key == "seeds":
        value = [value] if isinstance(value, int) else value
        if not value or not all(isinstance(s, int) and not isinstance(s, bool) for s in value):
            raise ConfigError(f"--seeds: expected a non-empty list of integers, got {value!r}")
        if len(set(value)) != len(value):
            raise ConfigError(f"--seeds: each seed once, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"--{key}: expected one of {_CHOICES[key]}, got {value!r}")
    return value


def read_config_file(path) -> dict:
    """A file of ``key = literal`` assignments (comments allowed), parsed as data, not executed."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from exc
    except SyntaxError as exc:
        raise ConfigError(f"{path}: not valid Python syntax (line {exc.lineno}: {exc.msg})") from exc
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ConfigError(f"{path}:{node.lineno}: only 'key = value' lines are allowed in a config file")
        try:
            out[node.targets[0].id] = ast.literal_eval(node.value)
        except (ValueError, TypeError, MemoryError, RecursionError) as exc:
            raise ConfigError(f"{path}:{node.lineno}: the value must be a Python literal ({exc})") from exc
    return out


def parse(argv=None, base: dict | None = None) -> tuple[dict, set]:
    """Resolve the config from defaults, ``--config=file.py`` and ``--key=value`` arguments.

    Returns (config, keys the user set explicitly).
    """
    argv = sys.argv[1:] if argv is None else argv
    base = copy.deepcopy(defaults() if base is None else base)  # callers may mutate lists in cfg
    cfg, given = copy.deepcopy(base), set()
    for arg in argv:
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --key=value. Valid keys: {', '.join(sorted(base))}")
        key, eq, text = arg[2:].partition("=")
        if key == "config":
            if not eq:
                raise ConfigError("--config needs a file: --config=path.py")
            for k, v in read_config_file(text).items():
                cfg[k] = _check(k, v, base)
                given.add(k)
            continue
        value = literal(text) if eq else True
        if isinstance(value, tuple):  # --seeds=1,2 reads as a tuple
            value = list(value)
        allowed = _TYPES.get(key, (type(base.get(key)),))
        if eq and str in allowed and not isinstance(value, allowed):
            value = text  # e.g. --run_dir=2024 is a folder name, not a number
        cfg[key] = _check(key, value, base)
        given.add(key)
    return cfg, given


def parse_or_exit(argv=None) -> tuple[dict, set]:
    try:
        return parse(argv)
    except ConfigError as exc:
        sys.exit(f"config error: {exc}")
