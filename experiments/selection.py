"""Which stopping rule picks the weights that decode new listeners best? An offline study.

    experiments/selection_runs.sh            # trains bench_runs/select/inner-*/{ivlaai,vlaai}/seed-*
    python -m experiments.selection [--runs='bench_runs/select/*/*/seed-*'] [--patience=10] [--avg=[1,3,5]]
                                    [--fixed=[10,20,30]] [--judge=monitor|unseen] [--out=FILE.json]

Each run must have been trained with ``--keep_epochs`` (the weights of every epoch) and
``--monitor_recordings`` (whole recordings of listeners it never trains on, e.g. inner held-out
subjects of the training set). For every epoch e and every K in ``--avg`` this scores the uniform
average of the weights of epochs e-K+1..e on the run's validation parts and on its monitor
recordings (K=1, the epoch's own weights, takes the val r and monitor r train.py logged in the
epoch file), then applies the stopping rules:

- ``best val, avg K``: early stopping as train.py does it (the best validation r so far, stopping
  after ``patience`` epochs without a better one), on the K-epoch averaged weights;
- ``epoch N, avg K``: a fixed number of epochs.

``--judge=unseen`` judges the same rules by the inner listeners' unseen speech instead of their
whole trials: the last 10 % of each of their recordings, the one part of the DTU folder that is a
new listener *and* speech no model trained on (every trial there carries the same envelope).
Those curves are cached in ``<run>/unseen.json``.

It prints, per rule, the monitor r of the weights the rule keeps (mean per monitor subject, then
over subjects, as train.py reports it), per run and as mean ± sd over runs, and writes the whole
table (every epoch, every K) to ``--out`` (JSON). The rules see validation r only; the monitor r
is what they are judged by. Averaging is over weights; no model here uses batch statistics.
Runs are grouped by study folder and model (``select/ivlaai``, ``select-w256/ivlaai``: a variant
goes in its own study folder). Each run's curves are cached in ``<run>/selection.json``, so runs
can be scored as they finish and the final table only reads the caches.
"""
from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch

import cli
from averaging import average_state_dicts
from checkpoint import load_checkpoint, load_model
from evaluation import evaluate
from experiments import as_list
from fileio import atomic_write_json, json_cached, sha256_file
from runs import corpus_from_config

JUDGES = ("monitor", "unseen")
OPTIONS = {
    "runs": ("bench_runs/select/*/*/seed-*", "seed directories: a glob pattern, or several joined by commas"),
    "patience": cli.like("patience", 10, "patience of the 'best val' rules, in epochs"),
    "avg": ([1, 3, 5], "K values: rules keep the average of the last K epochs' weights"),
    "fixed": ([10, 20, 30], "epoch counts of the 'epoch N' rules"),
    "judge": ("monitor", "'monitor': inner listeners' whole trials; 'unseen': their last 10 % (new speech)"),
    "threads": cli.like("threads", 1, "torch CPU threads"),
    "out": ("", "also write the whole table to this JSON file ('': do not)"),
}


def early_stop(val: list[float], patience: int) -> int:
    """Index of the epoch train.py's early stopping keeps, given the validation r of every epoch:
    the best so far (strictly higher wins), stopping after ``patience`` epochs without one."""
    best, best_i, bad = -np.inf, 0, 0
    for i, v in enumerate(val):
        if v > best:
            best, best_i, bad = v, i, 0
        else:
            bad += 1
            if bad >= patience:
                break
    return best_i


def run_label(seed_dir: Path, model_name: str) -> str:
    """What runs are grouped by: the study folder (two levels above the model folder, e.g.
    'select' or 'select-w256' in bench_runs/<study>/<inner>/<model>/seed-N) and the model name, so
    variants of one model trained into different study folders are kept apart."""
    parts = seed_dir.resolve().parts
    return f"{parts[-4]}/{model_name}" if len(parts) >= 4 else model_name


def kept_epochs(seed_dir: Path, avgs: list[int]) -> tuple[list[Path], dict]:
    """A run's kept epoch files and the cache key of its curves: the K values and every file's sha256."""
    files = sorted((seed_dir / "epochs").glob("epoch-*.pt"))
    if not files:
        raise SystemExit(f"{seed_dir}: no epochs/epoch-*.pt; train with --keep_epochs")
    return files, {"avg": avgs, "epoch_sha256": [sha256_file(f) for f in files]}


def study_run(seed_dir: Path, avgs: list[int]) -> dict:
    """study_run_uncached, cached in <seed_dir>/selection.json, keyed by the sha256 of every kept
    epoch file and the K values; a run that is still training or was extended is re-scored."""
    files, key = kept_epochs(seed_dir, avgs)
    return json_cached(seed_dir / "selection.json", key, lambda: study_run_uncached(seed_dir, files, avgs))[0]


@torch.no_grad()
def study_run_uncached(seed_dir: Path, files: list[Path], avgs: list[int]) -> dict:
    """val r and monitor r of every epoch's K-averaged weights of one run (seed directory)."""
    device = torch.device("cpu")
    model, first = load_model(files[0], device)
    cfg = first["config"]
    if not cfg.get("monitor_recordings"):
        raise SystemExit(f"{seed_dir}: trained without --monitor_recordings; nothing to judge the rules by")
    corpus = corpus_from_config(cfg)
    val, mon = corpus.with_part("val"), corpus.with_part("monitor")
    index = {s: i for i, s in enumerate(first["subjects"])}
    states, epochs, table = [], [], {f"avg{k}": {"val_r": [], "monitor_r": []} for k in avgs}
    for f in files:
        ck = load_checkpoint(f)
        if ck["epoch"] != len(epochs) + 1:
            raise SystemExit(f"{f}: epoch {ck['epoch']} out of order (epochs kept: {len(epochs)})")
        epochs.append(ck["epoch"])
        states = (states + [ck["model"]])[-max(avgs):]
        for k in avgs:
            if k == 1:  # the epoch's own weights: train.py scored them already (tested to agree)
                for part in ("val", "monitor"):
                    table["avg1"][f"{part}_r"].append(float(ck[f"{part}_r"]))
                continue
            model.load_state_dict(average_state_dicts(states[-k:]))
            for part, recs in (("val", val), ("monitor", mon)):
                table[f"avg{k}"][f"{part}_r"].append(evaluate(model, recs, part, device, index)["r"])
    return {"dir": str(seed_dir), "model": run_label(seed_dir, first["model_name"]), "seed": first["seed"],
            "epochs": epochs,
            "monitor": sorted({r.subject for r in mon}), "curves": table}


def inner_unseen(cfg: dict) -> list:
    """The inner listeners' unseen speech: the last 10 % (time split's test part) of each of their
    recordings. In the DTU folder every trial carries the same 50 s of speech and training
    sees seconds 0-40 of it, so a whole monitor trial is 80 % speech the model was trained on;
    this part is both a new listener and new speech (validation data only: the inner listeners
    belong to the training set, the test subjects are never read)."""
    c = dict(cfg, subjects=list(cfg["monitor_recordings"]), exclude_subjects=None, val_recordings=None,
             test_recordings=None, monitor_recordings=None, split="time")
    return corpus_from_config(c).with_part("test")


def unseen_run(seed_dir: Path, avgs: list[int]) -> dict:
    """{'avgK': [inner listeners' unseen-speech r per epoch]}, cached in <seed_dir>/unseen.json
    (keyed like selection.json)."""
    files, key = kept_epochs(seed_dir, avgs)
    return json_cached(seed_dir / "unseen.json", key, lambda: unseen_run_uncached(files, avgs))[0]


@torch.no_grad()
def unseen_run_uncached(files: list[Path], avgs: list[int]) -> dict:
    device = torch.device("cpu")
    model, first = load_model(files[0], device)
    if not first["config"].get("monitor_recordings"):
        raise SystemExit(f"{files[0]}: trained without --monitor_recordings; no inner listeners")
    recs = inner_unseen(first["config"])
    index = {s: i for i, s in enumerate(first["subjects"])}
    states, table = [], {f"avg{k}": [] for k in avgs}
    for f in files:
        states = (states + [load_checkpoint(f)["model"]])[-max(avgs):]
        for k in avgs:
            model.load_state_dict(average_state_dicts(states[-k:]))
            table[f"avg{k}"].append(evaluate(model, recs, "test", device, index)["r"])
    return table


def apply_rules(run: dict, patience: int, fixed: list[int]) -> dict:
    """{rule name: (chosen epoch, monitor r of the kept weights)} for one run."""
    out = {}
    for name, c in run["curves"].items():
        i = early_stop(c["val_r"], patience)
        out[f"best val, {name}"] = (run["epochs"][i], c["monitor_r"][i])
        for n in fixed:
            if n <= len(run["epochs"]):
                out[f"epoch {n}, {name}"] = (n, c["monitor_r"][n - 1])
    return out


def int_list(cfg: dict, key: str, empty_ok: bool = False) -> list[int]:
    """cfg[key] as a list of integers >= 1 (a single integer is a list of one), or exit."""
    v = as_list(cfg[key])
    if not (v or empty_ok) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v):
        raise SystemExit(f"--{key}={cfg[key]!r}: expected a list of integers >= 1, e.g. --{key}=[1,3,5]")
    return v


def main(argv=None) -> dict:
    cfg, _ = cli.parse_or_exit(argv, program=None, extra=OPTIONS)
    patience = cfg["patience"]
    if patience < 1:
        raise SystemExit(f"--patience={patience}: must be >= 1")
    avgs, fixed = sorted(set(int_list(cfg, "avg"))), int_list(cfg, "fixed", empty_ok=True)
    judge = cfg["judge"]
    if judge not in JUDGES:
        raise SystemExit(f"--judge={judge}: use one of {JUDGES}")
    torch.set_num_threads(cfg["threads"])
    dirs = sorted({Path(p) for pat in cfg["runs"].split(",") for p in glob.glob(pat)})
    if not dirs:
        raise SystemExit(f"--runs={cfg['runs']}: no such run directories")
    runs = [study_run(d, avgs) for d in dirs]
    if judge == "unseen":  # judge the same rules by the inner listeners' unseen speech instead
        for d, r in zip(dirs, runs, strict=True):
            for k, curve in unseen_run(d, avgs).items():
                r["curves"][k]["monitor_r"] = curve
    rules = [apply_rules(r, patience, fixed) for r in runs]
    names = [n for n in rules[0] if all(n in x for x in rules)]
    print(f"stopping rules judged by the {'whole-trial' if judge == 'monitor' else 'unseen-speech (last 10 %)'} r "
          f"of inner held-out listeners; patience {patience}; {len(runs)} runs")
    print("| rule | " + " | ".join(f"{r['model']} s{r['seed']} {'/'.join(r['monitor'])}" for r in runs)
          + " | mean per model |")
    print("|---" * (len(runs) + 2) + "|")
    summary = {}
    for n in names:
        cells = [f"{x[n][1]:.4f} (ep {x[n][0]})" for x in rules]
        by_model = {}
        for r, x in zip(runs, rules, strict=True):
            by_model.setdefault(r["model"], []).append(x[n][1])
        summary[n] = {m: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                          "n": len(v)} for m, v in by_model.items()}
        print(f"| {n} | " + " | ".join(cells) + " | "
              + ", ".join(f"{m} {s['mean']:.4f} ± {s['sd']:.4f}" for m, s in summary[n].items()) + " |")
    for r in runs:  # does validation r track the new listeners' r across epochs?
        c = r["curves"]["avg1"] if "avg1" in r["curves"] else next(iter(r["curves"].values()))
        cc = np.corrcoef(c["val_r"], c["monitor_r"])[0, 1] if len(c["val_r"]) > 2 else float("nan")
        half = c["monitor_r"][len(c["monitor_r"]) // 2:]  # the model's level once past the early epochs
        print(f"{r['dir']}: corr(val r, monitor r) over epochs {cc:.2f}; monitor r over epochs "
              f"{len(c['monitor_r']) - len(half) + 1}-{len(c['monitor_r'])}: mean {np.mean(half):.4f}, "
              f"sd {np.std(half, ddof=1) if len(half) > 1 else 0.0:.4f}")
    result = {"judge": judge, "patience": patience, "avg": avgs, "fixed": fixed, "runs": runs,
              "rules": [{k: list(v) for k, v in x.items()} for x in rules], "summary": summary}
    if cfg["out"]:
        atomic_write_json(Path(cfg["out"]), result)
        print(f"written to {cfg['out']}")
    return result


if __name__ == "__main__":
    main()
