"""Summarize speech cross-validation runs: decoding of speech no model heard, new and seen listeners.

    experiments/speech_cv_runs.sh VARIANT         # trains + scores bench_runs/speech_cv/VARIANT/tfK
    python -m experiments.speech_cv [--root=bench_runs/speech_cv] [--ref=vlaai] [--out=FILE.json]
                                    [--folds=[1,4,6,9]] [--seeds=[1,2,3]]

Every run (one per time fold K) trained without three listeners and without tenth K of the
speech, and test.py scored tenth K of all listeners' trials, each seed on its own
(``eval/seed-N/eval_score.json``; a fold's r is the mean over its seeds). A
listener's score is:

* **new listeners**: its r in the run(s) that held it out (a listener no model trained on, on
  speech no model heard);
* **seen listeners**: the mean of its r over the runs that trained on it (new EEG trials of a
  listener the model knows, again on speech no model heard).

Figures are the mean over listeners. Variants are compared with ``--ref`` listener by listener,
on the folds both have (mean difference ± standard error over listeners, listeners higher), and
fold by fold (each fold's mean r paired with the reference's; mean ± standard error over folds,
folds higher). The listeners of one fold share one trained model and one piece of speech, so
the per-fold error bar is the one that counts the independent repeats.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import cli
from checkpoint import load_checkpoint
from experiments import as_list
from fileio import atomic_write_json, read_json
from metrics import paired_differences

OPTIONS = {
    "root": ("bench_runs/speech_cv", "folder of VARIANT/tfK run folders (experiments/speech_cv_runs.sh)"),
    "ref": ("vlaai", "the variant every other one is compared with"),
    "folds": ([], "time folds to summarize, e.g. [1,4,6,9] ([]: all)"),
    "seeds": ([], "seeds to summarize, e.g. [1,2,3] ([]: all)"),
    "out": ("", "also write the table to this JSON file ('': do not)"),
}


def read_runs(root: Path, folds=None, seeds=None) -> dict:
    """{variant: {fold: {'held_out': [subjects], 'r': {subject: r}, 'val_r': float, 'epoch': [int],
    'seeds': {seed: {'r': {subject: r}, 'val_r': float, 'epoch': int}}}}} of scored runs.

    Every seed is its own trained model, scored on its own (``eval/seed-N/eval_score.json``; an
    ``eval/eval_score.json`` that scores a run's seeds in one test.py call is read too). A fold's
    ``r`` and ``val_r`` are the means over its seeds, so more seeds average run-to-run noise out
    of a fold's figure.
    ``folds`` / ``seeds``: keep only these (None: all)."""
    out: dict = {}
    scores = sorted(root.glob("*/tf*/eval/eval_score.json")) + sorted(root.glob("*/tf*/eval/seed-*/eval_score.json"))
    for score in scores:
        fold_dir = score.parents[1] if score.parent.name == "eval" else score.parents[2]
        variant, fold = fold_dir.parent.name, int(fold_dir.name[2:])
        if folds is not None and fold not in folds:
            continue
        ev = read_json(score, SystemExit)
        if ev.get("time_fold") != fold:
            raise SystemExit(f"{score}: scored time_fold {ev.get('time_fold')}, folder says {fold}")
        for seed_key, sc in ev["per_seed"].items():
            seed = int(seed_key.split("-", 1)[1])
            if seeds is not None and seed not in seeds:
                continue
            best = sorted(fold_dir.glob(f"*/{seed_key}/best.pt"))
            if len(best) != 1:
                raise SystemExit(f"{score}: scores {seed_key}, but {fold_dir} holds {len(best)} trained {seed_key}")
            ck = load_checkpoint(best[0])
            if ck["config"].get("time_fold") != fold:
                raise SystemExit(f"{score}: scored time_fold {fold}, trained {ck['config'].get('time_fold')}")
            held = list(ck["config"]["exclude_subjects"] or [])
            run = out.setdefault(variant, {}).setdefault(fold, {"held_out": held, "seeds": {}})
            if held != run["held_out"]:
                raise SystemExit(f"{best[0]}: held out {held}, another seed of {fold_dir} held out {run['held_out']}")
            rec = {"r": sc["per_subject"], "val_r": float(ck["best_val_r"]), "epoch": int(ck["epoch"])}
            prev = run["seeds"].get(seed)
            if prev is not None and any(abs(prev["r"][s] - rec["r"].get(s, np.nan)) > 1e-6 for s in prev["r"]):
                raise SystemExit(f"{score}: {seed_key} scored twice in {fold_dir / 'eval'} with different figures")
            run["seeds"][seed] = rec
    for variant in out.values():
        for run in variant.values():
            per = [run["seeds"][s] for s in sorted(run["seeds"])]
            run["r"] = {s: float(np.mean([p["r"][s] for p in per])) for s in per[0]["r"]}
            run["val_r"] = float(np.mean([p["val_r"] for p in per]))
            run["epoch"] = [p["epoch"] for p in per]
    return out


def listener_scores(runs: dict, folds) -> tuple[dict, dict]:
    """({subject: mean r as a new listener}, {subject: mean r as a seen listener}) over ``folds``
    (a listener held out by several folds is averaged over them, as a seen one is)."""
    new, seen = {}, {}
    for k in folds:
        for s, r in runs[k]["r"].items():
            (new if s in runs[k]["held_out"] else seen).setdefault(s, []).append(r)
    return ({s: float(np.mean(v)) for s, v in new.items()}, {s: float(np.mean(v)) for s, v in seen.items()})


def fold_differences(runs: dict, ref_runs: dict, folds) -> dict:
    """Paired differences over ``folds`` of each fold's mean r (new listeners, and seen listeners),
    ``runs`` minus ``ref_runs``: {'new': paired_differences, 'seen': paired_differences}."""
    means = {}
    for name, rr in (("mine", runs), ("ref", ref_runs)):
        per = {k: listener_scores(rr, [k]) for k in folds}
        means[name] = [{k: float(np.mean(list(per[k][i].values()))) for k in folds} for i in (0, 1)]
    return {"new": paired_differences(means["mine"][0], means["ref"][0]),
            "seen": paired_differences(means["mine"][1], means["ref"][1])}


def _diff_cell(p: dict) -> str:
    """A paired_differences result as a table cell: '+0.0143 ± 0.0171 (6/12)', or '-' if empty."""
    return f"{p['diff']:+.4f} ± {p['sem'] or 0:.4f} ({p['higher']}/{p['n']})" if p["n"] else "-"


def main(argv=None) -> dict:
    cfg, _ = cli.parse_or_exit(argv, program=None, extra=OPTIONS)
    root, ref = Path(cfg["root"]), cfg["ref"]
    picks = {}
    for key in ("folds", "seeds"):
        v = as_list(cfg[key])
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise SystemExit(f"--{key}={cfg[key]!r}: expected a list of integers, e.g. --{key}=[1,4,6,9]")
        if v:
            picks[key] = set(v)
    runs = read_runs(root, picks.get("folds"), picks.get("seeds"))
    if not runs:
        raise SystemExit(f"{root}: no scored runs (*/tf*/eval/[seed-N/]eval_score.json"
                         + (f" with folds {sorted(picks['folds'])}" if "folds" in picks else "")
                         + (f" and seeds {sorted(picks['seeds'])}" if "seeds" in picks else "")
                         + "); run experiments/speech_cv_runs.sh")
    table: dict = {}
    print(f"speech cross-validation, {root}: r on speech no model heard (one tenth of every trial per fold)")
    print(f"| variant | folds | seeds | new listeners r | seen listeners r | val r | new: diff vs {ref} "
          f"| seen: diff vs {ref} |")
    print("|---|---|---|---|---|---|---|---|")
    for v in sorted(runs, key=lambda v: (v != ref, v)):
        folds = sorted(runs[v])
        new, seen = listener_scores(runs[v], folds)
        row = {"folds": folds, "new": float(np.mean(list(new.values()))), "seen": float(np.mean(list(seen.values()))),
               "new_per_subject": new, "seen_per_subject": seen,
               "val_r": float(np.mean([runs[v][k]["val_r"] for k in folds]))}
        cells = ["-", "-"]
        if ref in runs and v != ref:
            common = sorted(set(folds) & set(runs[ref]))
            mine, theirs = listener_scores(runs[v], common), listener_scores(runs[ref], common)
            row["vs_ref"] = {"folds": common, "new": paired_differences(mine[0], theirs[0]),
                             "seen": paired_differences(mine[1], theirs[1]),
                             "per_fold": fold_differences(runs[v], runs[ref], common)}
            cells = [_diff_cell(p) for p in (row["vs_ref"]["new"], row["vs_ref"]["seen"])]
        table[v] = row
        row["seeds"] = {k: sorted(runs[v][k]["seeds"]) for k in folds}
        n_seeds = sorted({len(x) for x in row["seeds"].values()})
        print(f"| {v} | {','.join(map(str, folds))} | {'-'.join(map(str, n_seeds))} | "
              f"{row['new']:.4f} ({len(new)}) | {row['seen']:.4f} ({len(seen)}) | "
              f"{row['val_r']:.4f} | {cells[0]} | {cells[1]} |")
    print("(seeds: trained seeds per fold, a fold's r is their mean; new listeners: mean over the runs that held it "
          "out; seen: mean over the runs that trained on it; (n) listeners; diff: mean ± standard error over "
          "listeners, on the folds both variants have, (higher/n))")
    compared = [v for v in table if "vs_ref" in table[v] and table[v]["vs_ref"]["folds"]]
    if compared:
        # the listeners of one fold share one trained model and one piece of speech, so the folds,
        # not the listeners, are the independent repeats: this is the more honest error bar
        print(f"\nper fold, paired with {ref}: mean ± standard error over folds of (fold mean r - {ref}'s), "
              "(folds higher/folds)")
        print("| variant | folds | new listeners | seen listeners |")
        print("|---|---|---|---|")
        for v in compared:
            pf = table[v]["vs_ref"]["per_fold"]
            cells = [_diff_cell(p) for p in (pf["new"], pf["seen"])]
            print(f"| {v} | {','.join(map(str, table[v]['vs_ref']['folds']))} | {cells[0]} | {cells[1]} |")
    print("\nper fold (tenth of the stimulus tested): r of new / seen listeners (mean over seeds), "
          "validation r, kept epoch(s)")
    folds = sorted({k for v in runs for k in runs[v]})
    held_out = {k: "/".join(next(runs[v][k] for v in runs if k in runs[v])["held_out"]) for k in folds}
    print("| variant | " + " | ".join(f"tf{k} ({held_out[k]} new)" for k in folds) + " |")
    print("|---" * (len(folds) + 1) + "|")
    for v in table:
        cells = []
        for k in folds:
            if k not in runs[v]:
                cells.append("-")
                continue
            new, seen = listener_scores(runs[v], [k])
            run = runs[v][k]
            if len(run["seeds"]) == 1:
                extra = ""
            else:  # how far one seed's fold figure strays from another's: the run-to-run noise
                sd = np.std([np.mean([r for s, r in rec["r"].items() if s in run["held_out"]])
                             for rec in run["seeds"].values()], ddof=1)
                extra = f"{len(run['seeds'])} seeds, new sd {sd:.3f}, "
            cells.append(f"{np.mean(list(new.values())):.3f} / {np.mean(list(seen.values())):.3f} "
                         f"({extra}val {run['val_r']:.3f}, ep {','.join(map(str, run['epoch']))})")
        print(f"| {v} | " + " | ".join(cells) + " |")
    if cfg["out"]:
        atomic_write_json(Path(cfg["out"]), table)
        print(f"written to {cfg['out']}")
    return table


if __name__ == "__main__":
    main()
