"""Every hyperparameter, path and seed, as plain Python: one line per key.

    name: Key(read_by, check) = default  # what it does (the --help text)

``read_by`` names the programs that read the key (train, test, preprocess, demo; ``newmodel``:
the model's own arguments, stored in each checkpoint) and ``check`` what a value must be
(cli.py: POSITIVE, RATE, one_of(...), ...). Any key is set from the command line:

    python train.py --model=vlaai --seeds=[1,2,3] --epochs=20 --data_dir=../shared/data/dtu
    python train.py --config=configs/heldout_listeners.py --lr=5e-4
    python config.py               # every program's keys, defaults and comments
    python train.py --help         # the keys of one program

cli.py parses them: Python literals, a bare word is a string, a bare ``--flag`` means True;
``--config=file.py`` is read as data, never executed; a key the program does not read, a value of
the wrong type and one that cannot work (``--lr=0``) are one-line errors naming the key.
"""
from cli import AT_LEAST_1, NON_NEGATIVE, POSITIVE, RATE, Key, count_or_names, one_of, seed_list, seed_or_none

# ---- data -----------------------------------------------------------------------------------
data_dir: Key("train") = "xfdata/split_data"  # training data: split_data folder, DTU-style npz folder; built-in demo if
#   missing/empty
subjects: Key("train test", types=(list, str, None)) = None  # glob patterns of subjects to use, e.g. ['S1', 'S2']
#   (None: all)
exclude_subjects: Key("train test", types=(list, str, None)) = None  # glob patterns of subjects to leave out, e.g.
#   held-out test subjects
val_recordings: Key("train test", types=(list, str, None)) = None  # glob patterns (recording id or subject) that go
#   whole to validation, e.g. ['*_007']
test_recordings: Key("train test", types=(list, str, None)) = None  # glob patterns that go whole to test, e.g.
#   ['*_008', '*_009']
monitor_recordings: Key("train", types=(list, str, None)) = None  # glob patterns that go whole to a monitor set: never
#   trained on, scored after every epoch into log.csv's monitor_r column and never used for any choice (e.g. an inner
#   held-out subject ['S9'])
split: Key("train test", one_of("time", "whole")) = "time"  # other recordings: 'time' = 80/10/10 in time (split_data
#   keeps its own); 'whole' = all train
time_fold: Key("train test", one_of(*range(10))) = 0  # split='time': 0 tests the last 10 % of each recording; k in 1..9
#   moves test (and val, the 10 % before it) k tenths earlier, training on the rest. Trials that share one stimulus
#   (e.g. the DTU folder) test speech the model never heard only this way; folds 0-9 cover it all. test.py takes the
#   run's fold
window_s: Key("train", POSITIVE) = 5.0  # training window length in seconds (the field's VLAAI recipe uses 5 s)
fs: Key("train test preprocess", POSITIVE) = 64  # sampling rate of EEG and envelope in Hz; all supported formats are at
#   64 Hz
n_chans: Key("train", AT_LEAST_1) = 64  # EEG channels every recording must have

# ---- model ----------------------------------------------------------------------------------
model: Key("train test", one_of("ivlaai", "vlaai", "linear", "linear_conv")) = "vlaai"  # 'vlaai' (as published),
#   'ivlaai' (ours: 46 % of the parameters, 1.9x the training speed), 'linear' (closed-form ridge) or 'linear_conv'.
#   The default is VLAAI as ivlaai is better on none of the recorded protocols (level on new speech and on another
#   lab's data, behind on held-out DTU listeners' trials with 2-4x VLAAI's seed-to-seed spread)
#   (docs/model.md#ivlaai-against-vlaai-the-bottom-line)
dropout: Key("train newmodel", RATE) = 0.2  # dropout rate inside ivlaai (VLAAI and the linear models use none)
subject_embedding: Key("train newmodel") = False  # ivlaai: learn a vector per training subject (helps subjects seen in
#   training)
ivlaai_blocks: Key("train newmodel", AT_LEAST_1) = 4  # ivlaai: number of blocks
ivlaai_width: Key("train newmodel", AT_LEAST_1) = 128  # ivlaai: channels of every extractor conv layer
ivlaai_layers: Key("train newmodel", AT_LEAST_1) = 5  # ivlaai: conv layers per extractor
ivlaai_kernel: Key("train newmodel", AT_LEAST_1) = 8  # ivlaai: extractor kernel (each layer looks kernel-1 samples
#   ahead, as VLAAI)
ivlaai_feat: Key("train newmodel", AT_LEAST_1) = 64  # ivlaai: width of each block's output (per-block dense layer)
ivlaai_context: Key("train newmodel", AT_LEAST_1) = 32  # ivlaai: output-context kernel (looks context-1 samples back,
#   as VLAAI)
ivlaai_concat: Key("train newmodel") = True  # ivlaai: blocks see [EEG, all earlier outputs] concatenated (False: added,
#   as VLAAI)
ivlaai_separable: Key("train newmodel") = False  # ivlaai: depthwise-separable extractor convolutions (True: 286,017
#   parameters; lost on new speech, docs/model.md)
ivlaai_shared: Key("train newmodel") = True  # ivlaai: one extractor + output context shared by all blocks (as VLAAI)
ivlaai_chan_dropout: Key("train newmodel", RATE) = 0.0  # ivlaai: while training, zero each whole EEG input channel with
#   this probability
ivlaai_subject_dropout: Key("train newmodel", RATE) = 0.1  # ivlaai: while training, replace a subject by 'unknown' with
#   this probability
linear_lags: Key("train newmodel", AT_LEAST_1) = 26  # linear: EEG lags 0..linear_lags-1 samples after the envelope (26
#   = 0-400 ms at 64 Hz)
linear_conv_taps: Key("train newmodel", AT_LEAST_1) = 32  # linear_conv: taps of the challenge's Conv1D linear baseline
#   (500 ms)

# ---- training -------------------------------------------------------------------------------
seeds: Key("train test", seed_list, types=(list, int)) = [1]  # one model is trained per seed; edit this list (or
#   --seeds=[1,2,3]) to change seeds. Several seeds and test.py's ensemble of them give a steadier result than any one
#   seed (README, "The default recipe")
data_seed: Key("train", seed_or_none, types=(int, None)) = None  # seed of the window order and the dropout masks (None:
#   each run's seed); the seed itself still sets the initial weights, so the two sources of seed-to-seed spread can be
#   told apart (docs/model.md)
epochs: Key("train", AT_LEAST_1) = 10  # number of epochs (select='best_val': the most). 10 epochs averaging the last 5
#   decoded inner held-out listeners better than early stopping (docs/model.md#the-default-recipe)
patience: Key("train", AT_LEAST_1) = 5  # select='best_val' only: stop after this many epochs without a better
#   validation r
batch_size: Key("train", AT_LEAST_1) = 64  # windows per step (the VLAAI recipe uses 64)
lr: Key("train", POSITIVE) = 3e-4  # Adam learning rate; 3e-4 reached a higher validation r than 1e-3
#   (docs/model.md#the-default-recipe)
weight_decay: Key("train", NON_NEGATIVE) = 0.0  # Adam weight decay (L2)
ema_decay: Key("train", RATE) = 0.0  # >0: validate, keep and test an exponential moving average of the weights (e.g.
#   0.999)
avg_epochs: Key("train", AT_LEAST_1) = 5  # >1: validate, keep and test the uniform average of the last avg_epochs
#   epochs' weights; 5 of 10 epochs beat early stopping on inner held-out listeners for both networks
#   (docs/model.md#the-default-recipe)
select: Key("train", one_of("best_val", "last")) = "last"  # what best.pt keeps: 'last' (the final epoch's weights, or
#   their average; trains all epochs) or 'best_val' (highest validation r; stops after patience epochs without a better
#   one). A 5 s validation piece per trial picks a lucky epoch for new listeners; best_val suits seen listeners with a
#   whole validation trial
grad_clip: Key("train", NON_NEGATIVE) = 0.0  # clip the gradient norm to this (0: no clipping)
num_workers: Key("train", NON_NEGATIVE) = 0  # DataLoader worker processes (0: load in the training process)
device: Key("train test", one_of("auto", "cpu", "cuda")) = "auto"  # 'auto' (CUDA when present), 'cpu' or 'cuda'
deterministic: Key("train") = True  # use deterministic kernels, so one seed gives the same model on one machine
threads: Key("train test", NON_NEGATIVE) = 0  # torch CPU threads (0: torch's default)
amp: Key("train test", one_of("none", "bf16", "auto")) = "none"  # precision: 'none' (float32), 'bf16' (bfloat16
#   autocast) or 'auto' (bf16 where the device has fast bf16 matrix units: a CPU with AMX or a CUDA GPU with bf16;
#   float32 elsewhere). test.py: the checkpoint's own precision unless --amp is given. The loss, optimizer state and
#   weight averages stay float32
compile: Key("train") = False  # torch.compile the model (pays a one-off compile time; worth it for long GPU runs)
init: Key("train", types=(str, None)) = None  # start from these weights (fine-tuning): a best.pt/last.pt or a Keras
#   VLAAI .h5; None: random init
jobs: Key("train", AT_LEAST_1) = 1  # train this many seeds at once in separate processes (one per GPU when several are
#   visible)

# ---- outputs --------------------------------------------------------------------------------
run_dir: Key("train test") = "runs"  # checkpoints and logs go to run_dir/<model>/seed-<seed>/
resume: Key("train") = False  # continue an interrupted run from its last.pt
keep_epochs: Key("train") = False  # also keep every epoch's weights in epochs/epoch-NNN.pt (for offline stopping-rule
#   studies)
overwrite: Key("train test preprocess demo") = False  # allow replacing an existing run or result folder (otherwise a
#   clash stops)

# ---- test / scoring -------------------------------------------------------------------------
test_dir: Key("test", types=(str, None)) = "xfdata/auditory-eeg-test-dataset"  # challenge-format test set
#   (sub-XXX.json); None: skip
label_dir: Key("test", types=(str, None)) = "xfdata/test_labels"  # labels of test_dir; scored when this folder exists
checkpoint: Key("test", types=(str, None)) = None  # test.py: use this one best.pt or Keras VLAAI .h5 instead of the
#   seeds in run_dir
result_dir: Key("test") = "prediction_result"  # predictions sub-XXX.json and score.json are written here
seen_subjects: Key("test", types=(list, str, None)) = None  # scoring: None = plain mean over subjects; 'auto' = the
#   training subjects; or a list
eval_dir: Key("test", types=(str, None)) = None  # test.py: also score the test split of this labelled data folder (any
#   readable format)
eval_window_s: Key("test", NON_NEGATIVE) = 5.0  # eval_dir: also score windows of this length (0: whole recordings only)
eval_hop_s: Key("test", POSITIVE) = 1.0  # eval_dir: hop between those windows
chance_draws: Key("test", NON_NEGATIVE) = 1000  # chance level of every score: null scores from this many random
#   circular shifts of the envelopes (0: none); the p value is one-sided, (1 + #null >= observed) / (1 + draws)
chance_min_shift_s: Key("test", POSITIVE) = 2.0  # the shifts stay at least this far from zero and from the ends, so the
#   envelope's own autocorrelation cannot carry the true alignment into the null
mm_window_s: Key("test", POSITIVE) = 5.0  # match-mismatch: window length; each heard window against 4 imposter windows
#   of the same segment

# ---- demo corpus ----------------------------------------------------------------------------
demo_subjects: Key("train demo", AT_LEAST_1) = 8  # subjects in the built-in demo corpus
demo_minutes: Key("train demo", POSITIVE) = 1.0  # minutes of EEG per demo subject (small, so the demo trains in a few
#   minutes on a 2-core CPU)
demo_seed: Key("train demo", NON_NEGATIVE) = 0  # seed of the demo corpus generator
demo_dir: Key("train demo") = "xfdata"  # where the demo corpus is written (split_data/, test set, labels); train.py
#   builds it here

# ---- preprocess -----------------------------------------------------------------------------
# preprocess.py: raw recordings (wav/npz audio + BDF/EDF/FIF/BrainVision EEG) -> a split_data folder
# that train.py reads. Output rate: fs; see docs/preprocess.md.
pairs: Key("preprocess", types=(str, None)) = None  # CSV of 'subject,eeg_file,audio_file[,onset_s]' rows; paths
#   relative to the CSV's folder
out_dir: Key("preprocess", types=(str, None)) = None  # output split_data folder; built in a temp folder beside it, then
#   renamed (see overwrite)
pre_channels: Key("preprocess", count_or_names, types=(int, list)) = 64  # EEG channels to keep: a count (the first N
#   channels of type EEG, in file order) or a list of names
pre_highpass_hz: Key("preprocess", NON_NEGATIVE) = 0.5  # EEG high-pass cut-off: 1st-order Butterworth, run forward and
#   backward (zero-phase); 0: off
pre_artifact_k: Key("preprocess", NON_NEGATIVE) = 0.0  # >0: interpolate EEG samples more than k robust SDs (1.4826 *
#   MAD) from the channel median; 0: off
pre_artifact_uv: Key("preprocess", NON_NEGATIVE) = 0.0  # >0: interpolate EEG samples whose |value| exceeds this many
#   microvolts (reference recipe: 500); 0: off
pre_artifact_pad_s: Key("preprocess", NON_NEGATIVE) = 0.05  # widen each artifact by this many seconds on both sides
#   before interpolating
pre_align: Key("preprocess", one_of("auto", "trigger", "onset")) = "auto"  # stimulus onset: 'auto' (a row's onset_s
#   column if given, else triggers), 'trigger' or 'onset'
pre_trigger_source: Key("preprocess", one_of("auto", "stim", "annotations")) = "auto"  # triggers from: 'auto' (stim
#   channel if the file has one, else annotations), 'stim', 'annotations'
pre_trigger_code: Key("preprocess", types=(int, str, None)) = None  # the trigger marking stimulus onset: an int code,
#   an annotation text, or None (any trigger)
pre_stim_channel: Key("preprocess", types=(str, None)) = None  # stim channel name for stim triggers (None: MNE's
#   choice, e.g. 'STI 014' or BioSemi 'Status')
pre_env_bands: Key("preprocess", AT_LEAST_1) = 28  # envelope: gammatone bands, centres ERB-spaced from pre_env_fmin_hz
#   to pre_env_fmax_hz
pre_env_fmin_hz: Key("preprocess", POSITIVE) = 50.0  # envelope: lowest band centre in Hz
pre_env_fmax_hz: Key("preprocess", POSITIVE) = 5000.0  # envelope: highest band centre in Hz
pre_env_power: Key("preprocess", POSITIVE) = 0.6  # envelope: sum over bands of |band output| ** pre_env_power
pre_tolerance_s: Key("preprocess", NON_NEGATIVE) = 0.0625  # EEG may end up to this long before the stimulus does (both
#   are cut); longer is an error


if __name__ == "__main__":
    import cli
    for name in cli.PROGRAMS:
        print(cli.help_text(name, title=f"python {'demo_corpus' if name == 'demo' else name}.py: keys and defaults"),
              end="\n\n")
    print("python benchmark.py --help: the benchmark's own keys")
