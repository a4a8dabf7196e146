"""ivlaai variants under the held-out recipe, judged on inner held-out listeners (validation data only).

    experiments/ablation_runs.sh                  # trains bench_runs/ablate-<variant>/inner-*/ivlaai/seed-*
    python -m experiments.ablation [--runs='bench_runs/ablate-*/*/*/seed-*'] [--baseline='bench_runs/select/*/*/seed-*']
                                   [--epochs=10] [--avg=5] [--judge=monitor|unseen] [--out=bench_runs/ablate.json]

Every ablation run trains with the recipe (10 epochs, average of epochs 6-10 kept), so the monitor
r logged for its last epoch is the inner listeners' whole-trial r of the weights the benchmark
keeps. The baseline is the stopping-rule study's runs (trained 30 epochs with every epoch kept):
their "epoch 10, average of 5" weights are what a 10-epoch recipe run trains (there is no learning
rate schedule), read from their selection.json cache (experiments/selection.py). Variants are
compared with base ivlaai run by run (same inner listeners, same seed), the comparison that
cancels the large differences between listener groups.

``--judge=unseen`` compares the same runs on the inner listeners' unseen speech instead (the last
10 % of each of their trials, which no model trained on; see experiments/selection.py): the recipe
weights (best.pt) are scored there, and the baseline's from its ``unseen.json`` cache.
"""
from __future__ import annotations

import csv
import glob
from pathlib import Path

import numpy as np
import torch

import cli
from checkpoint import load_checkpoint, load_model
from evaluation import evaluate
from experiments.selection import JUDGES, inner_unseen, study_run, unseen_run
from fileio import atomic_write_json
from metrics import paired_differences

OPTIONS = {
    "runs": ("bench_runs/ablate-*/*/*/seed-*", "glob pattern of the recipe runs' seed directories"),
    "baseline": ("bench_runs/select/*/*/seed-*", "glob pattern of the stopping-rule study's seed directories"),
    "epochs": cli.like("epochs", 10, "the recipe's epoch count"),
    "avg": (5, "the recipe's K: it keeps the average of the last K epochs' weights"),
    "judge": ("monitor", "'monitor': inner listeners' whole trials; 'unseen': their last 10 % (new speech)"),
    "out": ("", "also write the table to this JSON file ('': do not)"),
}


@torch.no_grad()
def unseen_r(seed_dir: Path) -> float:
    """Inner listeners' unseen-speech r of a run's kept weights (best.pt)."""
    model, ck = load_model(seed_dir / "best.pt", torch.device("cpu"))
    recs = inner_unseen(ck["config"])
    return evaluate(model, recs, "test", torch.device("cpu"), {s: i for i, s in enumerate(ck["subjects"])})["r"]


def n_params(state: dict) -> int:
    """Parameters (and buffers) in a checkpoint's model state."""
    return sum(int(v.numel()) for v in state.values())


def recipe_run(seed_dir: Path, epochs: int, judge: str = "monitor") -> dict | None:
    """Inner listeners' r of a finished recipe run: the monitor r logged for its last epoch."""
    log = seed_dir / "log.csv"
    if not log.exists():
        print(f"{seed_dir}: no epoch finished yet, left out")
        return None
    with open(log) as f:
        rows = list(csv.DictReader(f))
    ck = load_checkpoint(seed_dir / "best.pt")
    cfg = ck["config"]
    if not cfg.get("monitor_recordings"):
        raise SystemExit(f"{seed_dir}: trained without --monitor_recordings; nothing to judge it by")
    if len(rows) < epochs and cfg["select"] == "last" and cfg["epochs"] == epochs:
        print(f"{seed_dir}: still training ({len(rows)} of {epochs} epochs), left out")
        return None
    if len(rows) != epochs or cfg["select"] != "last":
        raise SystemExit(f"{seed_dir}: {len(rows)} epochs logged with select={cfg['select']!r}; "
                         f"a recipe run has {epochs} epochs and select='last'")
    return {"variant": seed_dir.resolve().parts[-4], "inner": "/".join(cfg["monitor_recordings"]), "seed": ck["seed"],
            "monitor_r": float(rows[-1]["monitor_r"]) if judge == "monitor" else unseen_r(seed_dir),
            "val_r": float(rows[-1]["val_r"]),
            "avg_epochs": cfg["avg_epochs"], "params": n_params(ck["model"]),
            "s_per_epoch": float(np.mean([float(r["seconds"]) for r in rows]))}


def baseline_run(seed_dir: Path, epochs: int, avg: int, judge: str = "monitor") -> dict:
    """The same figure for a stopping-rule study run: its epoch-`epochs`, average-of-`avg` weights."""
    avgs = sorted({1, 3, 5, avg})  # the study's K values: its caches are read, not recomputed
    run = study_run(seed_dir, avgs)
    c = run["curves"][f"avg{avg}"]
    if judge == "unseen":
        c = dict(c, monitor_r=unseen_run(seed_dir, avgs)[f"avg{avg}"])
    ck = load_checkpoint(min((seed_dir / "epochs").glob("epoch-*.pt")))
    return {"variant": run["model"].replace("/", "-"), "inner": "/".join(run["monitor"]), "seed": run["seed"],
            "monitor_r": c["monitor_r"][epochs - 1], "val_r": c["val_r"][epochs - 1], "avg_epochs": avg,
            "params": n_params(ck["model"]), "s_per_epoch": None}


def main(argv=None) -> dict:
    cfg, _ = cli.parse_or_exit(argv, program=None, extra=OPTIONS)
    epochs, avg, judge = cfg["epochs"], cfg["avg"], cfg["judge"]
    if judge not in JUDGES:
        raise SystemExit(f"--judge={judge}: use 'monitor' (whole trials) or 'unseen' (their last 10 %)")
    torch.set_num_threads(1)
    runs = [baseline_run(Path(d), epochs, avg, judge)
            for d in sorted(glob.glob(cfg["baseline"]))]
    runs += [r for d in sorted(glob.glob(cfg["runs"]))
             if (r := recipe_run(Path(d), epochs, judge)) is not None]
    if not runs:
        raise SystemExit("no runs found")
    base = {(r["inner"], r["seed"]): r["monitor_r"] for r in runs if r["variant"] == "select-ivlaai"}
    keys = sorted({(r["inner"], r["seed"]) for r in runs})
    print(f"inner held-out listeners' {'trial' if judge == 'monitor' else 'unseen-speech (last 10 %)'} r of the "
          f"recipe's weights (epoch {epochs}, average of {avg}); "
          "diff: against select-ivlaai, same inner listeners and seed (mean ± standard error, runs higher)")
    print("| variant | params | " + " | ".join(f"{i} s{s}" for i, s in keys) + " | mean | diff vs ivlaai | s/epoch |")
    print("|---" * (len(keys) + 5) + "|")
    table = {}
    for v in dict.fromkeys(r["variant"] for r in runs):
        mine = {(r["inner"], r["seed"]): r for r in runs if r["variant"] == v}
        d = paired_differences({k: r["monitor_r"] for k, r in mine.items()}, base)
        table[v] = {"runs": list(mine.values()), "mean": float(np.mean([r["monitor_r"] for r in mine.values()])),
                    "diff_mean": d["diff"], "diff_sem": d["sem"], "wins": d["higher"], "paired": d["n"]}
        t = table[v]
        diff = ("-" if t["diff_sem"] is None
                else f"{t['diff_mean']:+.4f} ± {t['diff_sem']:.4f} ({t['wins']}/{t['paired']})")
        sec = [r["s_per_epoch"] for r in mine.values() if r["s_per_epoch"]]
        cells = " | ".join(f"{mine[k]['monitor_r']:.4f}" if k in mine else "-" for k in keys)
        print(f"| {v} | {next(iter(mine.values()))['params']:,} | {cells} | {t['mean']:.4f} | {diff} | "
              + (f"{np.mean(sec):.0f} |" if sec else "- |"))
    if cfg["out"]:
        atomic_write_json(Path(cfg["out"]), {"judge": judge, "epochs": epochs, "avg": avg, "variants": table})
        print(f"written to {cfg['out']}")
    return table


if __name__ == "__main__":
    main()
