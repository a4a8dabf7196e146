"""Benchmark models on real EEG with the field's two protocols (DTU-style npz folder).

    python benchmark.py --quick       # heldout fold S10-S12, 2 seeds, 6 epochs: 21 min on 2 CPU cores
    python benchmark.py               # heldout, speech CV and transfer, 3 seeds: hours on a CPU
    python benchmark.py --protocols=[transfer] --records_dir=results   # also write the committed records
    python benchmark.py --models=[linear,ivlaai] --seeds=[1,2] --protocols=[seen]
    python benchmark.py --variants="{'ivlaai_add': ['--model=ivlaai', '--ivlaai_concat=False']}"

Every model is trained with ``train.py`` and scored with ``test.py`` (the code users run), one run
folder per protocol/fold/model/seed under ``out_dir``. A finished run is never retrained, so an
interrupted benchmark resumes where it stopped: run the same command again. Results:
``out_dir/results.json``, ``out_dir/results.md`` and ``out_dir/results.png``.

Protocols (each trains with its recipe file in configs/: heldout_listeners.py, the defaults of
config.py, for all but seen, which uses seen_listeners.py)
  heldout  4 folds over S1-S12, test subjects {S1-3}, {S4-6}, {S7-9}, {S10-12}; train on the other
           9 (validation: each training trial's 80/10/10 time split). ``--quick``: fold S10-S12 only.
           Another folder's subjects are cut the same way: natural order, 4 consecutive runs.
  speechcv speech cross-validation: each run holds out 3 listeners and one tenth of the speech
           (``--time_fold=K``; K = 1, 4, 6, 9 paired with S7-9, S1-3, S10-12, S4-6) and scores that
           tenth of every listener: speech no model heard, of new and of seen listeners.
  transfer train on every listener of data_dir (80/10/10 in time), score the whole recordings of
           ``transfer_dir`` (default: the SparrKULee sample): other listeners, speech and lab.
  seen     train trials 000-006 of every subject, validate on 007, test 008 and 009 (its recipe:
           at most 30 epochs, early stopping on the whole validation trial, patience 10).
With ``records_dir``, each scored run writes one small JSON record there (protocol, fold, model,
seed, train config, commit, host, per-subject r, wall time), and each group of seeds the record of
its ensemble; ``python -m benchmarks.report`` builds the tables of README.md and docs/results.md
from them.
Scores: Pearson r of whole 50 s test trials and of 5 s windows (1 s hop), mean per subject, then
over subjects; each trial standardized per channel. Model choices use validation r only.
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import cli
import runtime
import test as test_script
from checkpoint import load_checkpoint
from EEG_Dataset import natural_key
from fileio import atomic_write_bytes, atomic_write_json, json_cached, read_json, sha256_file
from metrics import paired_differences
from runs import finished_run, log_seconds
from sweep import run_pool, threads_per_job, visible_gpus

ROOT = Path(__file__).resolve().parent
DTU_DEFAULT = str(ROOT.parent / "shared" / "data" / "dtu")
N_FOLDS = 4  # held-out-subject folds: the folder's subjects in natural order, cut into 4 runs (S1-S3 ... S10-S12)

# The benchmark's own keys: (default, comment). Each protocol trains with its recipe file
# (RECIPES); the recipe keys below override it, with one value for every protocol or a
# {protocol: value} dict (a protocol the dict leaves out, or None, keeps its file's value).
KEYS = {
    "data_dir": (DTU_DEFAULT, "DTU-style npz folder with subjects S1..S12"),
    "out_dir": (None, "run folders and result tables (None: bench_runs/full, or bench_runs/quick with --quick)",
                (str, type(None))),
    "protocols": (["heldout", "speechcv", "transfer"], "which protocols to run: heldout, speechcv, transfer, seen "
                  "(--quick: heldout only)"),
    "models": (["linear", "vlaai", "ivlaai"], "models (train.py --model names) to compare"),
    "variants": ({}, "extra named variants: {label: [train.py args]}, e.g. ablations", (dict,)),
    "seeds": cli.like("seeds", [1, 2, 3], "seeds per model (--quick: [1, 2])"),
    "lr": (None, "Adam learning rate (None: the recipe file's)", (float, int, dict, type(None))),
    "epochs": (None, "(maximum) epochs per run (--quick: 6, ~21 min on 2 CPU cores)", (int, dict, type(None))),
    "patience": (None, "early-stopping patience in epochs, where select is best_val (--quick: 6)",
                 (int, dict, type(None))),
    "select": (None, "train.py --select: the final epoch or the best val r", (str, dict, type(None))),
    "avg_epochs": (None, "train.py --avg_epochs: keep the average of the last N epochs (--quick: 3)",
                   (int, dict, type(None))),
    "threads": cli.like("threads", 0, "torch CPU threads per run (0: the cores split between the jobs)"),
    "jobs": cli.like("jobs", 1, "runs trained at once in separate processes: 2 one-thread jobs beat one "
                     "2-thread run on a 2-core CPU (--quick: 2)"),
    "quick": (False, "heldout fold S10-S12 only, 2 seeds, 6 epochs, 2 jobs: a check that ends in < 30 min"),
    "folds": (None, "heldout folds to run, by index 0-3 (None: all, or [3] with --quick)", (list, type(None))),
    "time_folds": ([1, 4, 6, 9], "speechcv: the tenths of the speech held out, 0-9 (each with a listener fold)"),
    "transfer_dir": (str(ROOT.parent / "shared" / "data" / "sparrkulee_sample"),
                     "transfer: the labelled folder whose whole recordings are scored"),
    "records_dir": (None, "also write one JSON record per scored run here (e.g. results, committed)",
                    (str, type(None))),
    "ensemble_sizes": ([], "also score the ensembles of the first k seeds, for each k given, e.g. [1,2,3,5]"),
    "extra": ([], "more train.py args for every run, e.g. ['--batch_size=32']", (list,)),
}
QUICK = {"protocols": ["heldout"], "folds": [3], "seeds": [1, 2], "epochs": 6, "patience": 6, "avg_epochs": 3,
         "jobs": 2}
RECIPE = ("lr", "epochs", "patience", "select", "avg_epochs")  # train.py options, per protocol or for all
PROTOCOLS = ("heldout", "speechcv", "transfer", "seen")
# The recipe each protocol trains with: a config file, read by train.py --config
RECIPES = {"heldout": "configs/heldout_listeners.py", "speechcv": "configs/heldout_listeners.py",
           "transfer": "configs/heldout_listeners.py", "seen": "configs/seen_listeners.py"}
# speechcv: the time fold (tenth of the speech tested) -> the listener fold held out with it, so that
# each listener is new once; 1, 4, 6, 9 are the tenths no choice of the model was made on
SPEECH_CV_PAIRS = {0: 0, 1: 2, 2: 1, 3: 3, 4: 0, 5: 2, 6: 3, 7: 3, 8: 1, 9: 1}
OURS = "ivlaai"  # the project's network: the comparisons in results.md are made against it


def parse_args(argv) -> dict:
    cfg, given = cli.parse_or_exit(argv, program=None, extra=KEYS)
    if cfg["quick"]:  # options given on the command line win over the quick settings
        cfg.update({k: v for k, v in QUICK.items() if k not in given})
        if "jobs" not in given and (os.cpu_count() or 1) < 2:
            cfg["jobs"] = 1
    if cfg["out_dir"] is None:  # a quick run never resumes (and so never mixes with) a full run's seeds
        cfg["out_dir"] = "bench_runs/quick" if cfg["quick"] else "bench_runs/full"
    if cfg["folds"] is None:
        cfg["folds"] = [0, 1, 2, 3]
    for key in RECIPE:
        for proto in PROTOCOLS:
            recipe_value(cfg, key, proto)  # a bad per-protocol dict stops here, before any training
    for proto in cfg["protocols"]:
        if proto not in PROTOCOLS:
            raise SystemExit(f"--protocols: unknown protocol {proto!r}; known: {', '.join(PROTOCOLS)}")
    for k in cfg["time_folds"]:
        if k not in SPEECH_CV_PAIRS:
            raise SystemExit(f"--time_folds: {k!r} is not a time fold 0-9")
    return cfg


def recipe_value(cfg: dict, key: str, proto: str):
    """The value of recipe option ``key`` for ``proto``: the option itself, or its dict's entry
    (None: train.py's default)."""
    value = cfg[key]
    if isinstance(value, dict):
        unknown = set(value) - set(PROTOCOLS)
        if unknown:
            raise SystemExit(f"--{key}: a per-protocol value takes the keys {', '.join(PROTOCOLS)}, got {value!r}")
        value = value.get(proto)
    return value


def recipe_args(cfg: dict, proto: str) -> list[str]:
    """train.py options of the training recipe for one protocol: its recipe file, then the overrides."""
    return [f"--config={ROOT / RECIPES[proto]}",
            *[f"--{key}={recipe_value(cfg, key, proto)}" for key in RECIPE
              if recipe_value(cfg, key, proto) is not None]]


def folds_of(subjects: list[str]) -> list[list[str]]:
    """The held-out folds: subjects in natural order (S2 before S10) cut into N_FOLDS consecutive runs."""
    ordered = sorted(subjects, key=natural_key)
    if len(ordered) < N_FOLDS + 1:
        raise SystemExit(f"the heldout protocol needs at least {N_FOLDS + 1} subjects; the folder has {len(ordered)}")
    return [list(part) for part in np.array_split(np.array(ordered, dtype=object), N_FOLDS)]


def protocol_runs(cfg: dict, subjects: list[str]):
    """(protocol, fold label, train args, eval args, unseen-speech eval args or None, eval folder)
    per protocol/fold."""
    for proto in cfg["protocols"]:
        if proto == "heldout":
            folds = folds_of(subjects)
            for k in cfg["folds"]:
                if not 0 <= k < len(folds):
                    raise SystemExit(f"--folds: fold index {k} is not in 0..{len(folds) - 1}")
                test_subj = folds[k]
                label = f"fold{k + 1}-{test_subj[0]}-{test_subj[-1]}"
                train_args = [f"--exclude_subjects={test_subj}", "--split=time"]
                eval_args = [f"--subjects={test_subj}", "--test_recordings=['*']", "--split=whole"]
                # the last 10 % of each held-out trial: the time whose speech was never a training
                # or validation target (it matters when recordings share a stimulus, see main)
                unseen_args = [f"--subjects={test_subj}", "--split=time"]
                yield proto, label, train_args, eval_args, unseen_args, cfg["data_dir"]
        elif proto == "speechcv":
            folds = folds_of(subjects)
            for tf in cfg["time_folds"]:
                held = folds[SPEECH_CV_PAIRS[tf]]
                train_args = [f"--exclude_subjects={held}", "--split=time", f"--time_fold={tf}"]
                eval_args = ["--split=time", f"--time_fold={tf}"]  # that tenth of every listener's trials
                yield proto, f"tf{tf}-{held[0]}-{held[-1]}", train_args, eval_args, None, cfg["data_dir"]
        elif proto == "transfer":
            eval_args = ["--split=whole", "--test_recordings=['*']"]
            yield proto, Path(cfg["transfer_dir"]).name, ["--split=time"], eval_args, None, cfg["transfer_dir"]
        elif proto == "seen":
            sel = ["--val_recordings=['*_007']", "--test_recordings=['*_008','*_009']", "--split=whole"]
            yield proto, "trials-008-009", sel, sel, None, cfg["data_dir"]


def model_specs(cfg: dict) -> dict:
    specs = {m: [f"--model={m}"] for m in cfg["models"]}
    specs.update({k: list(v) for k, v in cfg["variants"].items()})
    return specs


def main(argv=None) -> dict:
    """Run the benchmark; an impossible setting of a run ends it with one line naming the key."""
    try:
        return _main(argv)
    except cli.ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from exc


def _run_groups(cfg: dict, out: Path, subjects: list[str]) -> list[dict]:
    """One group per protocol/fold/model, in that order: the train.py arguments shared by its seeds,
    its scoring arguments, and the seeds still to train (a group is scored once they are all done)."""
    common = [f"--data_dir={cfg['data_dir']}", f"--threads={cfg['threads']}"]
    groups = []
    for proto, fold, train_args, eval_args, unseen_args, eval_dir in protocol_runs(cfg, subjects):
        for label, margs in model_specs(cfg).items():
            run_dir = out / proto / fold / label
            model_name = next(a.split("=", 1)[1] for a in margs if a.startswith("--model="))
            run_args = [*common, *recipe_args(cfg, proto), *cfg["extra"], *train_args, *margs, f"--run_dir={run_dir}"]
            groups.append({"proto": proto, "fold": fold, "label": label, "run_dir": run_dir, "model": model_name,
                           "run_args": run_args, "eval_args": eval_args, "unseen_args": unseen_args,
                           "eval_dir": str(eval_dir), "todo": set(cfg["seeds"])})
    return groups


def _scores_key(cfg: dict, g: dict) -> dict:
    """What a group's scores depend on: its seeds' best.pt (by content) and the scoring setup."""
    return {"best_pt_sha256": {f"seed-{s}": sha256_file(g["run_dir"] / g["model"] / f"seed-{s}" / "best.pt")
                               for s in cfg["seeds"]},
            "data_dir": str(cfg["data_dir"]), "eval_dir": g["eval_dir"], "eval_args": g["eval_args"],
            "unseen_args": g["unseen_args"], "ensemble_sizes": sorted(set(cfg["ensemble_sizes"]))}


def _score_group(cfg: dict, g: dict) -> dict:
    """Seed summary and test scores of a group whose seeds are all trained."""
    t0 = time.time()
    evals, growth = {}, {}

    def score(name: str, args: list, seeds: list) -> dict:
        return test_script.main([
            f"--run_dir={g['run_dir']}", f"--model={g['model']}", f"--seeds={seeds}", "--test_dir=None",
            f"--eval_dir={g['eval_dir']}", *args, f"--result_dir={g['run_dir'] / name}", "--overwrite"])["eval"]

    for name, args in (("eval", g["eval_args"]), ("eval_unseen_speech", g["unseen_args"])):
        if args is not None:
            evals[name] = score(name, args, cfg["seeds"])
    eval_s = time.time() - t0
    for k in sorted(set(cfg["ensemble_sizes"])):  # how the ensemble grows with its seeds
        if 1 <= k <= len(cfg["seeds"]):
            growth[str(k)] = score(f"eval_first_{k}", g["eval_args"], cfg["seeds"][:k])["ensemble"]
    val_r, train_s, seconds = {}, 0.0, {}
    for seed in cfg["seeds"]:
        seed_dir = g["run_dir"] / g["model"] / f"seed-{seed}"
        ck = load_checkpoint(seed_dir / "best.pt")
        val_r[f"seed-{seed}"] = float(ck["best_val_r"])
        val_r.setdefault("epochs", {})[f"seed-{seed}"] = len(ck["history"]) if ck["history"] else 0
        seconds[f"seed-{seed}"] = round(log_seconds(seed_dir / "log.csv"), 1)
        train_s += seconds[f"seed-{seed}"]
    return {"eval": evals["eval"], "eval_unseen_speech": evals.get("eval_unseen_speech"), "val_r": val_r,
            "train_eval_s": round(train_s + eval_s, 1), "train_s": seconds, "eval_s": round(eval_s, 1),
            "ensemble_growth": growth}


def recorded(cfg: dict, g: dict) -> Path | None:
    """The ensemble record of a group already in ``records_dir`` (same seeds and ensemble sizes), or None."""
    if not cfg["records_dir"]:
        return None
    path = (Path(cfg["records_dir"]) / g["proto"] / g["fold"] / g["label"]
            / f"ensemble-{'-'.join(map(str, cfg['seeds']))}.json")
    if not path.is_file():
        return None
    try:
        rec = read_json(path)
    except ValueError:
        return None
    sizes = {str(k) for k in cfg["ensemble_sizes"] if 1 <= k <= len(cfg["seeds"])}
    return path if sizes <= set(rec.get("growth") or {}) else None


def _training_tasks(cfg: dict, groups: list[dict], threads: int, finish) -> tuple[list[dict], dict]:
    """The train.py processes still to run, one per (group, seed), and {task key: (group, seed)}.

    A group whose seeds are all finished is scored now (``finish``), so a resumed run's tables
    show it at once rather than after everything queued before it.
    """
    tasks, owner = [], {}
    for g in groups:
        record = recorded(cfg, g)
        if record is not None:  # finished in an earlier sitting, maybe on another machine: its record is the result
            print(f"  {g['proto']} {g['fold']} {g['label']}: recorded earlier ({record})", flush=True)
            continue
        train_cfg = cli.parse(g["run_args"], "train")[0]
        if all(finished_run(g["run_dir"] / g["model"] / f"seed-{s}", train_cfg, s) for s in cfg["seeds"]):
            print(f"  {g['proto']} {g['fold']} {g['label']}: all seeds finished earlier", flush=True)
            finish(g)
            continue
        for seed in cfg["seeds"]:
            key = f"{g['proto']} {g['fold']} {g['label']} seed {seed}"
            owner[key] = (g, seed)
            # --resume: a finished seed is kept, an interrupted one continues; a missing one starts
            started = (g["run_dir"] / g["model"] / f"seed-{seed}" / "last.pt").is_file()
            tasks.append({"key": key, "log": g["run_dir"] / g["model"] / "logs" / f"seed-{seed}.log",
                          "cmd": [sys.executable, str(ROOT / "train.py"), *g["run_args"], f"--seeds=[{seed}]",
                                  f"--threads={threads}", *(["--resume"] if started else [])]})
    return tasks, owner


def _main(argv=None) -> dict:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(cfg["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    results = {"config": cfg, "runs": {}, "stimuli": stimulus_overlap(cfg["data_dir"])}
    print(results["stimuli"]["note"], flush=True)
    groups = _run_groups(cfg, out, results["stimuli"]["subjects"])

    def finish(g: dict) -> None:
        """All seeds of a group are trained: seed summary, scoring, results files. The scores are
        kept in run_dir/scores.json, so a resumed benchmark does not score the same models again."""
        cache = g["run_dir"] / "scores.json"
        entry, hit = json_cached(cache, _scores_key(cfg, g), lambda: _score_group(cfg, g))
        if hit:
            print(f"  {g['proto']} {g['fold']} {g['label']}: scored earlier ({cache})", flush=True)
        results["runs"].setdefault(g["proto"], {}).setdefault(g["label"], {})[g["fold"]] = entry
        if cfg["records_dir"]:
            for path in write_records(Path(cfg["records_dir"]), cfg, g, entry):
                print(f"  record: {path}", flush=True)
        write_results(out, results, cfg, time.time() - t_start)

    # One pool of (group, seed) train.py processes over all groups, so no core idles while the last
    # seed of a model trains; a group is scored as soon as its last seed ends.
    gpus = visible_gpus(cli.parse(cfg["extra"], "train")[0]["device"])
    threads = threads_per_job(cfg["threads"], cfg["jobs"])
    tasks, owner = _training_tasks(cfg, groups, threads, finish)

    def on_done(key: str, returncode: int) -> None:
        g, seed = owner[key]
        if returncode == 0:
            g["todo"].discard(seed)
            if not g["todo"]:
                finish(g)

    print(f"{len(tasks)} training runs, {cfg['jobs']} at a time, "
          + (f"one GPU each ({','.join(gpus)})" if gpus else f"{threads} CPU threads each"), flush=True)
    failed = run_pool(tasks, cfg["jobs"], gpus, on_done)
    if failed:
        raise SystemExit(f"benchmark: {len(failed)} training runs failed ({', '.join(failed)}); see their logs. "
                         "Run the same command again to retry them; finished runs are kept.")
    return results


def summarize(results: dict, cfg: dict) -> dict:
    """Per protocol and model: per-seed subject means (over all folds), mean/sd over seeds,
    ensemble, per-subject scores, validation r."""
    summary = {}
    labels = list(model_specs(cfg))
    for proto in [p for p in cfg["protocols"] if p in results["runs"]]:  # a fixed order, whatever finished first
        by_model = results["runs"][proto]
        # only folds every model has finished, so that every row averages the same subjects
        common = set.intersection(*(set(f) for f in by_model.values()))
        for label in sorted(by_model, key=lambda k: labels.index(k) if k in labels else len(labels)):
            folds = {k: v for k, v in sorted(by_model[label].items()) if k in common}
            if not folds:
                continue
            seeds = [f"seed-{s}" for s in cfg["seeds"]]
            row = {}
            for metric, key, which in (("trial", "per_subject", "eval"), ("window", "window_per_subject", "eval"),
                                       ("unseen", "per_subject", "eval_unseen_speech")):
                if any(f.get(which) is None for f in folds.values()):
                    continue
                per_seed_subj = {s: {} for s in seeds}
                ens_subj, chance_subj = {}, {}
                for name, fold in folds.items():
                    ev = fold[which]
                    # speechcv scores every listener in every fold: a (fold, listener) pair is one score
                    tag = (lambda subj, name=name: f"{name}:{subj}") if proto == "speechcv" else (lambda subj: subj)
                    for s in seeds:
                        per_seed_subj[s].update({tag(k): v for k, v in ev["per_seed"][s].get(key, {}).items()})
                    ens_subj.update({tag(k): v for k, v in ev["ensemble"].get(key, {}).items()})
                    if key == "per_subject":  # the chance level of the ensemble's recording r
                        ch = ev["ensemble"].get("chance") or {}
                        chance_subj.update({tag(k): v for k, v in ch.get("per_subject_p95", {}).items()})
                # keyed by seed before dropping the seeds without scores, so that each mean keeps its seed
                by_seed = {s: float(np.mean(list(v.values()))) for s, v in per_seed_subj.items() if v}
                seed_means = list(by_seed.values())
                row[metric] = {
                    "seed_means": by_seed,
                    "mean": float(np.mean(seed_means)) if seed_means else None,
                    "sd": float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else 0.0,
                    "ensemble": float(np.mean(list(ens_subj.values()))) if ens_subj else None,
                    "per_subject_ensemble": ens_subj,
                    "per_subject_seeds": per_seed_subj,
                    "per_subject_chance_p95": chance_subj,
                }
            vals = [f["val_r"][s] for f in folds.values() for s in seeds]
            row["val_r_mean"] = float(np.mean(vals))
            row["epochs"] = [e for f in folds.values() for e in f["val_r"]["epochs"].values()]
            row["seconds"] = sum(f["train_eval_s"] for f in folds.values())
            row["folds"] = list(folds)
            summary.setdefault(proto, {})[label] = row
    return summary


def comparisons(rows: dict) -> dict:
    """Our network against every other model of one protocol, on trial r.

    'gain': relative difference of the means over seeds; 'paired': per-subject difference of the
    seed-mean scores (mean, standard error over subjects, subjects won) - the error bar that counts
    here, since subjects differ far more than models do; plus whether our seed ensemble beats our
    mean over seeds, and the seed-to-seed sd of our network and of each other model."""
    if OURS not in rows:
        return {}
    ours = rows[OURS]["trial"]
    out = {"ours": OURS, "ensemble_beats_seed_mean": ours["ensemble"] > ours["mean"], "seed_sd": ours["sd"],
           "vs": {}}
    for label, row in rows.items():
        if label == OURS:
            continue
        c = out["vs"][label] = paired(rows[OURS]["trial"], row["trial"])
        c["other_seed_sd"] = row["trial"]["sd"]
        if "unseen" in rows[OURS] and "unseen" in row:
            c["unseen_speech"] = paired(rows[OURS]["unseen"], row["unseen"])
    return out


def paired(ours: dict, other: dict) -> dict:
    """Relative gain of the seed means, and per-subject differences of the seed-mean scores."""

    def subject_means(row):  # per subject: mean over seeds
        by_seed = row["per_subject_seeds"].values()
        subjects = set.intersection(*(set(v) for v in by_seed)) if by_seed else set()
        return {s: float(np.mean([v[s] for v in by_seed])) for s in subjects}

    d = paired_differences(subject_means(ours), subject_means(other))
    base = other["mean"]
    return {"gain": (ours["mean"] - base) / abs(base) if base else None,
            "diff_mean": d["diff"], "diff_sem": d["sem"], "wins": d["higher"], "subjects": d["n"]}


def comparison_lines(cmp: dict) -> list[str]:
    if not cmp:
        return []
    lines = [f"Comparisons, trial r, {cmp['ours']} against each model (per-subject differences of the seed means: "
             "mean ± standard error over subjects):", ""]
    for label, c in cmp["vs"].items():
        gain = "n/a" if c["gain"] is None else f"{100 * c['gain']:+.1f} %"
        paired = "n/a" if c["diff_sem"] is None else f"{c['diff_mean']:+.4f} ± {c['diff_sem']:.4f}"
        lines.append(f"- vs {label}: mean over seeds {gain} relative; per subject {paired}, "
                     f"{cmp['ours']} higher for {c['wins']}/{c['subjects']} subjects; seed sd {cmp['seed_sd']:.4f} "
                     f"({cmp['ours']}) vs {c['other_seed_sd']:.4f} ({label})")
        u = c.get("unseen_speech")
        if u and u["diff_sem"] is not None:
            lines.append(f"  - unseen speech only: {100 * u['gain']:+.1f} % relative; per subject "
                         f"{u['diff_mean']:+.4f} ± {u['diff_sem']:.4f}, higher for {u['wins']}/{u['subjects']}")
    lines.append(f"- {cmp['ours']} seed ensemble {'beats' if cmp['ensemble_beats_seed_mean'] else 'does not beat'} "
                 "the mean of its single seeds")
    return lines + [""]


def stimulus_overlap(data_dir) -> dict:
    """How many distinct envelopes the recordings hold. When train and test recordings share a
    stimulus, a model can score by having learned that one piece of speech, not by decoding."""

    from EEG_Dataset import read_folder

    _, recs = read_folder(data_dir)
    digests = {hashlib.sha256(r.envelope.tobytes()).hexdigest() for r in recs if r.envelope is not None}
    n, k = len(recs), len(digests)
    note = f"Stimuli: {n} recordings hold {k} distinct envelope(s)."
    if k < n:
        note += (" Recordings share speech, so test trials repeat speech the models were trained on; the "
                 "'unseen speech' column scores only the last 10 % of each held-out trial, which no "
                 "model was trained or validated on." if k == 1 else " Some recordings share speech.")
    subjects = sorted({r.subject for r in recs}, key=natural_key)
    return {"recordings": n, "distinct_envelopes": k, "note": note, "subjects": subjects}


def git_state() -> dict:
    """The commit this code runs at, and whether its tracked files differ from it."""
    def git(*args) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD") or None,
            "modified": bool(git("status", "--porcelain", "--untracked-files=no"))}


def host_info() -> dict:
    """What a record's figures depend on besides the code: CPU, its vector units, torch."""
    import torch

    from benchmarks.machine import cpu_flags, cpu_model

    flags = cpu_flags()
    return {"node": platform.node(), "cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "avx512f": "avx512f" in flags, "amx": any(f.startswith("amx") for f in flags),
            "avx512_bf16": "avx512_bf16" in flags, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__}


def _scores(ev: dict | None, which: str) -> dict | None:
    """One score block of test.py's eval (a seed's or the ensemble's) as a record keeps it."""
    if ev is None:
        return None
    return {"r": ev["r"], "per_subject": ev["per_subject"], "window_r": ev.get("window_r"),
            "window_per_subject": ev.get("window_per_subject"), "chance": ev.get("chance"),
            "match_mismatch": ev.get("match_mismatch")}


def write_records(folder: Path, cfg: dict, g: dict, entry: dict) -> list[Path]:
    """One record per seed and one for the group's ensemble, in folder/<protocol>/<fold>/<label>/.

    A record holds what its figures came from (train config, commit, host, data) and the figures
    themselves (per-subject r, validation r per epoch, wall time); never weights. Records of the
    same run written again (a resumed benchmark) are replaced by identical figures."""
    where = folder / g["proto"] / g["fold"] / g["label"]
    common = {"protocol": g["proto"], "fold": g["fold"], "label": g["label"], "model": g["model"],
              "git": git_state(), "host": host_info(), "benchmark_args": sys.argv[1:],
              "data_dir": str(cfg["data_dir"]), "eval_dir": g["eval_dir"], "eval_args": g["eval_args"],
              "unseen_args": g["unseen_args"],
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    paths = []
    for seed in cfg["seeds"]:
        key = f"seed-{seed}"
        ck = load_checkpoint(g["run_dir"] / g["model"] / key / "best.pt")
        train_cfg = dict(ck["config"])
        record = dict(common, kind="seed", seed=seed,
                      data_seed=seed if train_cfg.get("data_seed") is None else train_cfg["data_seed"],
                      train_args=[*g["run_args"], f"--seeds=[{seed}]"], train_config=train_cfg,
                      n_params=int(ck["n_params"]), epochs=int(ck["epoch"]), val_r=float(ck["best_val_r"]),
                      history=[{k: row.get(k) for k in ("epoch", "train_r", "val_r", "seconds")}
                               for row in ck["history"]],
                      train_s=entry["train_s"][key],
                      scores={"test": _scores(entry["eval"]["per_seed"][key], "test"),
                              "unseen": _scores((entry.get("eval_unseen_speech") or {}).get("per_seed", {}).get(key),
                                                "unseen")})
        paths.append(where / f"{key}.json")
        atomic_write_json(paths[-1], record)
    record = dict(common, kind="ensemble", seeds=list(cfg["seeds"]), eval_s=entry["eval_s"],
                  train_s=entry["train_s"],
                  scores={"test": _scores(entry["eval"]["ensemble"], "test"),
                          "unseen": _scores((entry.get("eval_unseen_speech") or {}).get("ensemble"), "unseen")},
                  growth={k: _scores(v, "test") for k, v in entry.get("ensemble_growth", {}).items()})
    paths.append(where / f"ensemble-{'-'.join(map(str, cfg['seeds']))}.json")
    atomic_write_json(paths[-1], record)
    return paths


def machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{platform.machine()} {platform.processor() or ''} {dev}, torch {torch.__version__}".strip()


def write_results(out: Path, results: dict, cfg: dict, wall_s: float) -> None:
    summary = summarize(results, cfg)
    results["summary"] = summary
    results["wall_s"] = round(wall_s, 1)
    results["machine"] = machine()
    lines = [f"# Benchmark results ({'quick' if cfg['quick'] else 'full'})", "",
             f"Command: `python benchmark.py {' '.join(sys.argv[1:])}`  ", f"Machine: {results['machine']}  ",
             f"Seeds: {cfg['seeds']}; training recipe "
             + "; ".join(f"{proto}: " + " ".join(recipe_args(cfg, proto)) for proto in cfg["protocols"])
             + f"; wall time so far {wall_s / 60:.1f} min", "", results.get("stimuli", {}).get("note", ""), ""]
    for proto, rows in summary.items():
        folds = next(iter(rows.values()))["folds"]
        pending = sorted({f"{label} {fold}" for label, fs in results["runs"][proto].items() for fold in fs
                          if fold not in folds})
        has_unseen = all("unseen" in row for row in rows.values())
        lines += [f"## {proto} ({', '.join(folds)})", ""]
        if pending:
            lines += [f"Finished, but left out of this table until every model has the fold: {', '.join(pending)}.", ""]
        lines += [
                  "| model | trial r mean ± sd over seeds | trial r seed-ensemble | 5 s window r mean ± sd | "
                  "window r ensemble | " + ("unseen-speech r mean ± sd (ensemble) | " if has_unseen else "")
                  + "val r | best epoch | train+eval min (all seeds) |", "|---" * (8 + has_unseen) + "|"]
        for label, row in rows.items():
            t, w = row["trial"], row["window"]
            u = row.get("unseen")
            unseen = f"{u['mean']:.4f} ± {u['sd']:.4f} ({u['ensemble']:.4f}) | " if has_unseen else ""
            lines.append(f"| {label} | {t['mean']:.4f} ± {t['sd']:.4f} | {t['ensemble']:.4f} | "
                         f"{w['mean']:.4f} ± {w['sd']:.4f} | {w['ensemble']:.4f} | {unseen}{row['val_r_mean']:.4f} | "
                         f"{row['epochs']} | {row['seconds'] / 60:.1f} |")
        subjects = list(next(iter(rows.values()))["trial"]["per_subject_ensemble"])
        lines += ["", "Per-subject trial r (seed ensemble):", "",
                  "| model | " + " | ".join(subjects) + " |", "|---" * (len(subjects) + 1) + "|"]
        for label, row in rows.items():
            ps = row["trial"]["per_subject_ensemble"]
            lines.append(f"| {label} | " + " | ".join(f"{ps.get(s, float('nan')):.3f}" for s in subjects) + " |")
        lines.append("")
        cmp = comparisons(rows)
        results.setdefault("comparisons", {})[proto] = cmp
        lines += comparison_lines(cmp)
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "results.md", "\n".join(lines).encode())
    if not summary:  # no fold finished by every model in this sitting yet: nothing to draw
        return
    try:
        plot(out / "results.png", summary)
    except ImportError:
        print("matplotlib not installed: no figure", flush=True)


def plot(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(7 * len(summary), 4.5), squeeze=False)
    for ax, (proto, rows) in zip(axes[0], summary.items(), strict=True):
        subjects = list(next(iter(rows.values()))["trial"]["per_subject_ensemble"])
        x = np.arange(len(subjects))
        width = 0.8 / max(len(rows), 1)
        # the chance band: per subject, the highest 95th percentile of the null over the models
        band = np.array([max((r["trial"].get("per_subject_chance_p95", {}).get(subj, np.nan) for r in rows.values()),
                             default=np.nan) for subj in subjects])
        if np.isfinite(band).any():
            ax.bar(x, band, 0.9, color="0.85", zorder=0, label="chance (null 95th percentile)")
        for i, (label, row) in enumerate(rows.items()):
            seeds = row["trial"]["per_subject_seeds"]
            vals = np.array([[seeds[s].get(subj, np.nan) for subj in subjects] for s in seeds])
            pos = x + (i - (len(rows) - 1) / 2) * width
            ax.bar(pos, np.nanmean(vals, 0), width, label=f"{label} ({row['trial']['mean']:.3f})", alpha=0.8)
            for v in vals:  # each seed as a dot: the spread over seeds
                ax.plot(pos, v, "k.", ms=3)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xticks(x, subjects, rotation=45)
        ax.set_ylabel("trial Pearson r (bars: mean over seeds, dots: seeds)")
        ax.set_title(f"{proto}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    runtime.sigterm_as_interrupt()  # kill = Ctrl-C: the running seeds stop at their last completed epoch
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
