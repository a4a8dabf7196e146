"""Build the results tables of README.md and docs/results.md from the committed run records.

    python -m benchmarks.report                 # rewrite the marked tables from results/
    python -m benchmarks.report --check         # exit 1 if a table differs from what the records give
    python -m benchmarks.report --records_dir=results --files=[README.md,docs/results.md]

``benchmark.py --records_dir=results`` writes one JSON record per trained seed and one per group
of seeds (their ensemble) into ``results/<protocol>/<fold>/<label>/``. This tool reads them all
and replaces the text between ``<!-- report:NAME -->`` and ``<!-- /report:NAME -->`` in each file
with the table NAME, so no figure in those tables is typed by hand. A protocol's row counts only
the folds that every model of the table has finished, and says how many that is.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

import cli
from fileio import atomic_write_bytes, read_json

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {
    "records_dir": (str(ROOT / "results"), "folder of benchmark.py's records (<protocol>/<fold>/<label>/*.json)"),
    "files": (["README.md", "docs/results.md", "docs/model.md", "docs/performance.md"],
              "files whose marked tables are rewritten (relative to the repo)"),
    "check": (False, "change nothing; exit 1 when a table differs from the records"),
}
MODELS = {"linear": "ridge", "vlaai": "VLAAI", "ivlaai": "ivlaai"}  # label -> column name, in table order
FOLDS = {"heldout": 4, "speechcv": 4, "transfer": 1}  # folds a complete protocol has
GRID = "-data"  # seed-study labels: MODEL-data<J>, trained with --data_seed=J


class ReportError(ValueError):
    pass


def load_records(folder) -> list[dict]:
    """Every record under ``folder`` (a missing folder holds none)."""
    folder = Path(folder)
    out = []
    for path in sorted(folder.glob("*/*/*/*.json")):
        rec = read_json(path, ReportError)
        if not isinstance(rec, dict) or rec.get("kind") not in ("seed", "ensemble"):
            raise ReportError(f"{path}: not a benchmark record (no kind 'seed' or 'ensemble')")
        rec["_path"] = str(path.relative_to(folder))
        out.append(rec)
    return out


SEEDS = (1, 2, 3)  # the seeds every table compares (a group may have more, e.g. for the ensemble's growth)


def index(records: list[dict]) -> dict:
    """{protocol: {label: {fold: {'seeds': {seed: record}, 'ensemble': record or None, 'growth': record or None}}}}

    'ensemble' is the record of the SEEDS ensemble (else the group's largest); 'growth' the largest
    ensemble record that holds the ensembles of its first k seeds."""
    out: dict = {}
    for rec in records:
        slot = out.setdefault(rec["protocol"], {}).setdefault(rec["label"], {}).setdefault(
            rec["fold"], {"seeds": {}, "ensemble": None, "growth": None})
        if rec["kind"] == "seed":
            slot["seeds"][int(rec["seed"])] = rec
            continue
        e = slot["ensemble"]
        if e is None or (tuple(e["seeds"]) != SEEDS and (tuple(rec["seeds"]) == SEEDS
                                                          or len(rec["seeds"]) > len(e["seeds"]))):
            slot["ensemble"] = rec
        if rec.get("growth") and (slot["growth"] is None or len(rec["seeds"]) > len(slot["growth"]["seeds"])):
            slot["growth"] = rec
    return out


def _held_out(rec: dict) -> set:
    return set(rec["train_config"].get("exclude_subjects") or [])


def subject_scores(scores: dict, rec: dict, which: str) -> dict:
    """Per-subject r of one score block: every subject, or for speechcv the 'new' / 'seen' ones."""
    per = scores["per_subject"]
    if which == "all":
        return dict(per)
    held = _held_out(rec)
    return {s: r for s, r in per.items() if (s in held) == (which == "new")}


def _fold_mean(scores: dict | None, rec: dict, which: str, key: str = "test") -> float | None:
    block = (scores or {}).get(key)
    if not block:
        return None
    per = subject_scores(block, rec, which)
    return float(np.mean(list(per.values()))) if per else None


def model_row(folds: dict, fold_names: list[str], which: str = "all", key: str = "test") -> dict | None:
    """Mean over the folds' subjects per seed, then the mean over seeds; the seeds' sd within each
    fold (one training set, several seeds: the spread a user sees) and its root mean square over
    the folds; the seed ensemble; the spread of the folds; training minutes per run. None if a
    fold lacks a seed or its ensemble. (An sd of seeds pooled over folds would average each
    fold's independent models and shrink with the number of folds.)"""
    if not fold_names or any(folds[f]["ensemble"] is None for f in fold_names):
        return None
    # the seeds of the ensembles, so that the single seeds and their ensemble are the same runs
    seeds = sorted(set.intersection(*(set(folds[f]["seeds"]) & set(folds[f]["ensemble"]["seeds"])
                                      for f in fold_names)))
    if not seeds:
        return None
    per_seed, by_fold = [], {f: [] for f in fold_names}
    for s in seeds:
        vals = []
        for f in fold_names:
            rec = folds[f]["seeds"][s]
            block = rec["scores"].get(key)
            if not block:
                return None
            fold_vals = list(subject_scores(block, rec, which).values())
            vals += fold_vals
            by_fold[f].append(float(np.mean(fold_vals)))
        per_seed.append(float(np.mean(vals)))
    fold_sd = {f: float(np.std(v, ddof=1)) for f, v in by_fold.items()} if len(seeds) > 1 else None
    ens, fold_ens = [], []
    for f in fold_names:
        e = folds[f]["ensemble"]
        block = e["scores"].get(key)
        if not block:
            return None
        any_seed = next(iter(folds[f]["seeds"].values()))
        vals = list(subject_scores(block, any_seed, which).values())
        ens += vals
        fold_ens.append(float(np.mean(vals)))
    minutes = [folds[f]["seeds"][s]["train_s"] / 60 for f in fold_names for s in seeds]
    return {"seeds": seeds, "per_seed": per_seed, "mean": float(np.mean(per_seed)),
            "sd": float(np.sqrt(np.mean(np.square(list(fold_sd.values()))))) if fold_sd else None,
            "fold_sd": fold_sd, "fold_seed_range": {f: (min(v), max(v)) for f, v in by_fold.items()},
            "ensemble": float(np.mean(ens)), "fold_ensemble": dict(zip(fold_names, fold_ens, strict=True)),
            "minutes_per_run": float(np.mean(minutes)), "n_folds": len(fold_names)}


def common_folds(by_label: dict, labels) -> list[str]:
    """The folds every one of ``labels`` has finished (seeds and ensemble), sorted."""
    have = [set(f for f, v in by_label.get(lab, {}).items() if v["seeds"] and v["ensemble"]) for lab in labels]
    return sorted(set.intersection(*have)) if have else []


def _fold_sd(row: dict, fold: str) -> str:
    sd = (row.get("fold_sd") or {}).get(fold)
    return "" if sd is None or sd < 1e-9 else f" ± {sd:.3f}"


def _cell(row: dict | None, digits: int = 3) -> str:
    if row is None:
        return "-"
    # ridge is a closed-form fit: its seeds give one model, so it has no spread to show
    sd = "" if row["sd"] is None or row["sd"] < 1e-9 else f" ± {row['sd']:.{digits}f}"
    return f"{row['mean']:.{digits}f}{sd} ({row['ensemble']:.{digits}f})"


# Rows of the summary table: (protocol, which subjects, score key, description)
SUMMARY_ROWS = [
    ("speechcv", "new", "test", "new speech, new listeners: speech CV, one tenth of the stimulus per fold, 5 s"),
    ("speechcv", "seen", "test", "new speech, seen listeners: the same runs"),
    ("heldout", "all", "unseen", "new listeners, the last tenth of each trial (5 s, speech no model heard)"),
    ("heldout", "all", "test", "new listeners, whole 50 s trials (90 % of their speech was trained on)"),
    ("transfer", "all", "test", "other lab, speech and listeners: SparrKULee sample, whole 2-min recordings"),
]


def summary_table(idx: dict) -> str:
    lines = ["| protocol (folds done) | " + " | ".join(MODELS.values()) + " |", "|---" * (len(MODELS) + 1) + "|"]
    for proto, which, key, text in SUMMARY_ROWS:
        by_label = idx.get(proto, {})
        labels = [m for m in MODELS if m in by_label]
        folds = common_folds(by_label, labels)
        if not folds:
            continue
        cells = [_cell(model_row(by_label[m], folds, which, key)) if m in labels else "-" for m in MODELS]
        lines.append(f"| {text} ({len(folds)}/{FOLDS[proto]}) | " + " | ".join(cells) + " |")
    if len(lines) == 2:
        return "No records yet: run `benchmarks/record_runs.sh`."
    return "\n".join(lines) + ("\n\nEach cell: mean over listeners and folds, averaged over 3 seeds ± the seeds' sd "
                               "within a fold (root mean square over the folds), and the ensemble of the seeds in "
                               "brackets.")


def protocol_table(idx: dict, proto: str) -> str:
    """Per model: seed mean ± sd, ensemble, each fold's ensemble r (the spread of the folds),
    minutes per run; and ivlaai - VLAAI per fold."""
    by_label = idx.get(proto, {})
    labels = [m for m in MODELS if m in by_label]
    folds = common_folds(by_label, labels)
    if not folds:
        return "No records yet."
    whiches = [("new", "test"), ("seen", "test")] if proto == "speechcv" else \
        [("all", "test"), ("all", "unseen")] if proto == "heldout" else [("all", "test")]
    names = {("new", "test"): "new listeners", ("seen", "test"): "seen listeners",
             ("all", "test"): "trial r" if proto == "heldout" else "r", ("all", "unseen"): "last tenth"}
    head = ["model", *[f"{names[w]}: mean ± sd (ensemble)" for w in whiches],
            *[f"{f}" for f in folds], "min per run"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    rows = {}
    for m in labels:
        rows[m] = [model_row(by_label[m], folds, w, k) for w, k in whiches]
        first = rows[m][0]
        lines.append(f"| {MODELS[m]} | " + " | ".join(_cell(r) for r in rows[m]) + " | "
                     + " | ".join(f"{first['fold_ensemble'][f]:.3f}" + _fold_sd(first, f) for f in folds)
                     + f" | {first['minutes_per_run']:.1f} |")
    notes = [f"Folds: {', '.join(folds)} ({len(folds)} of {FOLDS[proto]}); per-fold columns: the ensemble's "
             f"{names[whiches[0]]} (± the single seeds' sd on that fold). \"± sd\": the seeds' sd within a fold, "
             "root mean square over the folds."
             + (" One fold's test speech is a single 5 s stretch, so the folds' spread is the error bar that counts."
                if proto == "speechcv" else "")]
    if "ivlaai" in rows and "vlaai" in rows and len(folds) > 1:
        d = [rows["ivlaai"][0]["fold_ensemble"][f] - rows["vlaai"][0]["fold_ensemble"][f] for f in folds]
        notes.append(f"ivlaai − VLAAI per fold (ensembles, {names[whiches[0]]}): {np.mean(d):+.3f} ± "
                     f"{np.std(d, ddof=1) / np.sqrt(len(d)):.3f} (standard error over folds), ivlaai ahead on "
                     f"{sum(x > 0 for x in d)} of {len(d)}.")
    return "\n".join(lines) + "\n\n" + " ".join(notes)


def _data_seed(rec: dict) -> int:
    """The data seed a seed record trained with (data_seed None or absent: the seed itself)."""
    d = rec.get("data_seed")
    return int(rec["seed"]) if d is None else int(d)


def _grid_cells(heldout: dict, model: str) -> tuple[dict, dict]:
    """{(fold, seed, data_seed): r} from the labels MODEL-data<J>, and per fold a sentence on its
    diagonal: a cell the grid lacks with data_seed = seed is the plain run of that seed; where
    both ran it, how far they differ."""
    prefix = f"{model}{GRID}"
    cells, notes = {}, {}
    for lab in sorted(k for k in heldout if k.startswith(prefix) and k[len(prefix):].isdigit()):
        j = int(lab[len(prefix):])
        for fold, v in heldout[lab].items():
            for i, rec in v["seeds"].items():
                cells[(fold, i, j)] = float(rec["scores"]["test"]["r"])
    for fold in sorted({f for f, _, _ in cells}):
        in_grid = {i for f, i, _ in cells if f == fold} | {j for f, _, j in cells if f == fold}
        diffs, filled = [], 0
        for i, rec in heldout.get(model, {}).get(fold, {}).get("seeds", {}).items():
            if _data_seed(rec) != i or i not in in_grid:
                continue
            r = float(rec["scores"]["test"]["r"])
            if (fold, i, i) in cells:
                diffs.append(abs(cells[(fold, i, i)] - r))
            else:
                cells[(fold, i, i)], filled = r, filled + 1
        notes[fold] = " ".join(
            ([f"The cells with data_seed = seed repeat the plain {MODELS[model]} runs of that seed: largest "
              f"difference {max(diffs):.1e} over {len(diffs)} runs."] if diffs else [])
            + ([f"The cells with data_seed = seed are the plain {MODELS[model]} runs of that seed."] if filled else []))
    return cells, notes


def _grid_table(model: str, fold: str, cells: dict, note: str) -> list[str]:
    inits = sorted({i for f, i, _ in cells if f == fold})
    datas = sorted({j for f, _, j in cells if f == fold})
    if len(inits) < 2 or len(datas) < 2 or any((fold, i, j) not in cells for i in inits for j in datas):
        return [f"{MODELS[model]} seed grid on {fold}: incomplete, {sum(f == fold for f, _, _ in cells)} runs so far "
                f"(seeds {inits} x data seeds {datas}; the grid needs at least 2 of each, every pair run).", ""]
    r = np.array([[cells[(fold, i, j)] for j in datas] for i in inits])
    m = r.mean()
    ss_init = len(datas) * float(((r.mean(1) - m) ** 2).sum())
    ss_data = len(inits) * float(((r.mean(0) - m) ** 2).sum())
    ss_total = float(((r - m) ** 2).sum())
    ss_rest = ss_total - ss_init - ss_data
    data_what = "window order and dropout masks" if model == "ivlaai" else "window order"
    out = [f"{MODELS[model]} seed grid on held-out {fold}: trial r of each run (mean over the 3 listeners); rows: "
           f"seed (initial weights), columns: data_seed ({data_what}).", "",
           "| seed \\ data_seed | " + " | ".join(map(str, datas)) + " | row mean |",
           "|---" * (len(datas) + 2) + "|"]
    for a, i in enumerate(inits):
        out.append(f"| {i} | " + " | ".join(f"{x:.4f}" for x in r[a]) + f" | {r[a].mean():.4f} |")
    out.append("| column mean | " + " | ".join(f"{x:.4f}" for x in r.mean(0)) + f" | {m:.4f} |")
    df_i, df_d = len(inits) - 1, len(datas) - 1
    df_r = df_i * df_d
    ms_r = ss_rest / df_r if df_r else float("nan")
    f_i = (ss_init / df_i) / ms_r if ms_r > 0 else float("nan")
    f_d = (ss_data / df_d) / ms_r if ms_r > 0 else float("nan")
    from scipy.stats import f as f_dist

    p_i, p_d = float(f_dist.sf(f_i, df_i, df_r)), float(f_dist.sf(f_d, df_d, df_r))
    out += ["", f"Sum of squares around the grand mean (sd of all {r.size} runs {r.std(ddof=1):.4f}): initial "
            f"weights {100 * ss_init / ss_total:.0f} % (F = {f_i:.2f}, p = {p_i:.2f}), {data_what} "
            f"{100 * ss_data / ss_total:.0f} % (F = {f_d:.2f}, p = {p_d:.2f}), interaction and rest "
            f"{100 * ss_rest / ss_total:.0f} % (two-way analysis of variance without replication)."]
    if note:
        out.append(note)
    return out + [""]


def _growths(heldout: dict):
    """(model, fold, its index entry, the k's) of every record of an ensemble's growth with seeds."""
    for model in MODELS:
        for fold, v in sorted(heldout.get(model, {}).items()):
            if v["growth"]:
                yield model, fold, v, sorted(v["growth"]["growth"], key=int)


def seed_study(idx: dict) -> str:
    """Per network, the grid of initial-weights seed x data seed (labels MODEL-data<J>, the diagonal
    may be the plain runs), and the ensemble's growth with seeds."""
    heldout = idx.get("heldout", {})
    out, growth_lines = [], []
    for model in MODELS:
        cells, notes = _grid_cells(heldout, model)
        for fold in sorted(notes):
            out += _grid_table(model, fold, cells, notes[fold])
    for model, fold, v, ks in _growths(heldout):
        e = v["growth"]
        singles = [float(v["seeds"][s]["scores"]["test"]["r"]) for s in e["seeds"] if s in v["seeds"]]
        growth_lines += [f"{MODELS[model]} on held-out {fold}, trial r of the ensemble of the first k seeds "
                         f"(single seeds: {', '.join(f'{x:.4f}' for x in singles)}; mean {np.mean(singles):.4f}, "
                         f"sd {np.std(singles, ddof=1):.4f}):", "",
                         "| seeds k | " + " | ".join(ks) + " |", "|---" * (len(ks) + 1) + "|",
                         "| ensemble r | " + " | ".join(f"{e['growth'][k]['r']:.4f}" for k in ks) + " |", ""]
    text = "\n".join(out + growth_lines).strip()
    return text or "No records yet."


PROTOCOL_NAMES = {"heldout": "held-out listeners (50 s trials)", "speechcv": "speech CV (new listeners)",
                  "transfer": "the SparrKULee sample"}


def seeds_short(idx: dict, model: str | None = None) -> str:
    """For the README: the default model's single seeds against their ensemble, per protocol, and
    the ensemble's growth with more seeds (where a growth record exists, of any network)."""
    model = model or cli.defaults()["model"]
    lines = []
    for proto, which in (("heldout", "all"), ("speechcv", "new"), ("transfer", "all")):
        by_label = idx.get(proto, {})
        folds = common_folds(by_label, [m for m in MODELS if m in by_label])
        row = model_row(by_label[model], folds, which) if folds and model in by_label else None
        if row is None or len(row["per_seed"]) < 2:
            continue
        # "to", not "-": a range may start below zero
        ranges = "; ".join(f"{fold} {lo:.3f} to {hi:.3f}" for fold, (lo, hi) in row["fold_seed_range"].items())
        lines.append(f"- {PROTOCOL_NAMES[proto]}, {row['n_folds']} fold(s), single seeds per fold: {ranges} "
                     f"(sd {row['sd']:.3f} within a fold), the ensemble of {len(row['seeds'])} "
                     f"**{row['ensemble']:.3f}** ({row['ensemble'] - row['mean']:+.3f} over the seeds' mean)")
    for label, fold, v, ks in _growths(idx.get("heldout", {})):
        lines.append(f"- {MODELS[label]} on held-out {fold}, ensemble of the first k seeds: "
                     + ", ".join(f"k={k} {v['growth']['growth'][k]['r']:.3f}" for k in ks))
    if not lines:
        return "(no records yet: run `benchmarks/record_runs.sh`)"
    return (f"{MODELS.get(model, model)} (the default model), default recipe "
            "([records](docs/results.md#benchmark-records)):\n\n" + "\n".join(lines))


def provenance(records: list[dict]) -> str:
    """Which commits and hosts the records come from."""
    commits = sorted({(r["git"]["commit"] or "?")[:10] + (" (modified)" if r["git"].get("modified") else "")
                      for r in records})
    hosts = sorted({f"{r['host']['cpu']}, {r['host']['cores']} cores, "
                    f"{'AVX-512' if r['host'].get('avx512f') else 'no AVX-512'}"
                    f"{', AMX' if r['host'].get('amx') else ''}, torch {r['host']['torch']}" for r in records})
    dates = sorted(r["date"][:10] for r in records)
    runs = sum(r["kind"] == "seed" for r in records)
    return (f"{runs} runs recorded in `results/`, {dates[0]} to {dates[-1]}; code at commit {', '.join(commits)}; "
            f"host {'; '.join(hosts)}. Rebuild: `python -m benchmarks.report`." if records else "")


def bf16_parity(idx: dict) -> str:
    """bfloat16 against float32 (labels M-bf16 and M), paired by seed, per protocol, with the
    decision rule of benchmarks/bf16_parity.sh: the mean difference within one float32 seed sd."""
    lines = []
    for proto, fold_names in (("heldout", None), ("transfer", None)):
        by_label = idx.get(proto, {})
        for m in ("vlaai", "ivlaai"):
            if m not in by_label or f"{m}-bf16" not in by_label:
                continue
            folds = fold_names or common_folds(by_label, [m, f"{m}-bf16"])
            if not folds:
                continue
            f32, b16 = model_row(by_label[m], folds), model_row(by_label[f"{m}-bf16"], folds)
            if f32 is None or b16 is None or f32["seeds"] != b16["seeds"]:
                continue
            d = np.array(b16["per_seed"]) - np.array(f32["per_seed"])
            holds = f32["sd"] is not None and abs(d.mean()) <= f32["sd"]
            lines.append(f"| {proto} ({', '.join(folds)}) | {MODELS[m]} | {_cell(f32)} | {_cell(b16)} | "
                         + ", ".join(f"{x:+.4f}" for x in d) + f" | {d.mean():+.4f} | "
                         f"{f32['minutes_per_run']:.1f} / {b16['minutes_per_run']:.1f} | {'yes' if holds else 'no'} |")
    if not lines:
        return "No bf16 records yet: run `benchmarks/bf16_parity.sh` on a host with AMX."
    head = ["| protocol | model | float32 | bf16 | bf16 - float32 per seed | mean | min per run f32 / bf16 | "
            "within 1 f32 sd |", "|---" * 8 + "|"]
    return "\n".join(head + lines)


TABLES = {
    "summary": summary_table,
    "heldout": lambda idx: protocol_table(idx, "heldout"),
    "speechcv": lambda idx: protocol_table(idx, "speechcv"),
    "transfer": lambda idx: protocol_table(idx, "transfer"),
    "seeds": seed_study,
    "seeds_short": seeds_short,
    "bf16": bf16_parity,
}


def render(text: str, tables: dict, path: str = "") -> str:
    """``text`` with every marked block replaced by its table; an unknown or unclosed marker is an error."""
    def repl(m: re.Match) -> str:
        name = m.group(1)
        if name not in tables:
            raise ReportError(f"{path}: unknown report table {name!r}; known: {', '.join(tables)}")
        return f"<!-- report:{name} -->\n{tables[name]}\n<!-- /report:{name} -->"

    pattern = re.compile(r"<!-- report:([a-z0-9_]+) -->.*?<!-- /report:\1 -->", re.S)
    opened = re.findall(r"<!-- report:([a-z0-9_]+) -->", text)
    closed = re.findall(r"<!-- /report:([a-z0-9_]+) -->", text)
    if sorted(opened) != sorted(closed):
        raise ReportError(f"{path}: report markers do not pair up (opened {opened}, closed {closed})")
    return pattern.sub(repl, text)


def main(argv=None) -> int:
    cfg, _ = cli.parse_or_exit(argv, program=None, extra=OPTIONS)
    try:
        records = load_records(cfg["records_dir"])
        idx = index(records)
        tables = {name: fn(idx) for name, fn in TABLES.items()}
        tables["provenance"] = provenance(records) or "No records yet."
        changed = []
        for name in cfg["files"]:
            path = ROOT / name if not Path(name).is_absolute() else Path(name)
            text = path.read_text()
            new = render(text, tables, str(path))
            if new != text:
                changed.append(str(name))
                if not cfg["check"]:
                    atomic_write_bytes(path, new.encode())
    except (ReportError, OSError) as exc:
        raise SystemExit(f"report: {exc}") from exc
    n = sum(r["kind"] == "seed" for r in records)
    if cfg["check"]:
        print(f"{n} runs; " + (f"out of date: {', '.join(changed)}" if changed else "every table matches the records"))
        return 1 if changed else 0
    print(f"{n} runs; rewrote {', '.join(changed) or 'nothing (already up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
