"""Compare two scored results subject by subject: is A's score higher than B's beyond chance?

    python compare.py RESULT_A RESULT_B
    python compare.py pred_ivlaai/eval_score.json pred_vlaai --n_boot=10000 --seed=0 --json=a_vs_b.json
    python compare.py --help

A and B are result folders that test.py wrote (holding ``score.json`` for a challenge test set or
``eval_score.json`` for ``--eval_dir``), or those JSON files themselves. The ensembles' per-subject
scores are paired by subject; the difference A - B per subject, its mean with a 95 % percentile
bootstrap interval over subjects, and a two-sided sign-flip permutation p value are printed (all
2^n sign flips when n <= 16 subjects, else seeded Monte Carlo), e.g.

    A - B = +0.021 (95 % CI +0.008 to +0.034), p = 0.004, 11 of 12 subjects higher

Pairing by subject removes the large differences between listeners from the comparison; the
sign flip asks how often a mean difference this large would appear if A and B were exchangeable
within every subject. Two results that scored different subjects or segments are refused.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import cli
from fileio import FileError, atomic_write_json, read_json

FILES = ("score.json", "eval_score.json")
EXACT_MAX = 16  # 2^16 sign flips enumerate in milliseconds; beyond that, Monte Carlo
OPTIONS = {
    "n_boot": (10000, "bootstrap resamples of the subjects for the 95 % interval of the mean difference"),
    "n_perm": (100000, "Monte Carlo sign flips when there are more than 16 subjects (up to 16: all 2^n, exact)"),
    "seed": (0, "seed of the bootstrap and of the Monte Carlo sign flips"),
    "entry": ("ensemble", "which score of each file: 'ensemble', or a per_seed name such as 'seed-1'"),
    "metric": ("per_subject", "per-subject scores to compare: 'per_subject', or 'window_per_subject' "
               "(eval_score.json)"),
    "file": ("auto", "in a folder holding both: 'score.json' or 'eval_score.json' (auto: the only one present)"),
    "json": (None, "also write the comparison to this JSON file", (str, type(None))),
}
# Top-level keys that say what a file scored; two files that differ in one scored different segments.
SCORED_KEYS = ("n_recordings", "split", "time_fold", "n_segments", "segments")
WINDOW_KEYS = ("window_s", "hop_s")  # they define the windows behind window_per_subject


class CompareError(ValueError):
    """One line naming the file(s) or key."""


def find_file(path, which: str = "auto") -> Path:
    """A result folder or JSON file -> the score file to read."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise CompareError(f"{path}: no such file or folder")
    present = [path / f for f in FILES if (path / f).is_file()]
    if which != "auto":
        if which not in FILES:
            raise CompareError(f"--file: expected auto, {' or '.join(FILES)}; got {which!r}")
        if not (path / which).is_file():
            raise CompareError(f"{path / which}: no such file")
        return path / which
    if not present:
        raise CompareError(f"{path}: holds neither {' nor '.join(FILES)}")
    if len(present) > 1:
        raise CompareError(f"{path}: holds both {' and '.join(FILES)}; choose one with --file=score.json or "
                           "--file=eval_score.json, or give the file's path")
    return present[0]


def load(path, which: str = "auto", entry: str = "ensemble", metric: str = "per_subject") -> dict:
    """Read one side: {'file': Path, 'kind': 'eval' | 'test', 'per_subject': {subject: float},
    'scored': {key: value} (what the file says it scored), 'eval_dir': str or None}."""
    file = find_file(path, which)
    data = read_json(file, error=CompareError)
    if not isinstance(data, dict):
        raise CompareError(f"{file}: expected a JSON object as test.py writes")
    if entry == "ensemble":
        scores = data.get("ensemble")
    else:
        scores = (data.get("per_seed") or {}).get(entry) if isinstance(data.get("per_seed"), dict) else None
    where = entry if entry == "ensemble" else f"per_seed.{entry}"
    if not isinstance(scores, dict):
        raise CompareError(f"{file}: no {where!r} score")
    per_subject = scores.get(metric)
    if not isinstance(per_subject, dict) or not per_subject:
        raise CompareError(f"{file}: {where} has no {metric!r} scores")
    bad = [s for s, v in per_subject.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not np.isfinite(v)]
    if bad:
        raise CompareError(f"{file}: {where}.{metric}[{bad[0]!r}] is not a finite number")
    kind = "eval" if "eval_dir" in data or "n_recordings" in data else "test"
    keys = SCORED_KEYS + (WINDOW_KEYS if metric.startswith("window") else ())
    scored = {k: data[k] for k in keys if k in data}
    if isinstance(scores.get("per_segment"), dict):
        scored["segments"] = sorted(scores["per_segment"])
    return {"file": file, "kind": kind, "per_subject": {str(k): float(v) for k, v in per_subject.items()},
            "scored": scored, "eval_dir": data.get("eval_dir")}


def check_comparable(a: dict, b: dict) -> None:
    """Refuse two results that did not score the same subjects and segments (one line naming both files)."""
    both = f"{a['file']} and {b['file']}"
    if a["kind"] != b["kind"]:
        kinds = {"eval": "an eval_dir score", "test": "a challenge test-set score"}
        raise CompareError(f"{both}: cannot compare {kinds[a['kind']]} with {kinds[b['kind']]}")
    only_a = sorted(set(a["per_subject"]) - set(b["per_subject"]))
    only_b = sorted(set(b["per_subject"]) - set(a["per_subject"]))
    if only_a or only_b:
        raise CompareError(f"{both} scored different subjects: only in A: {', '.join(only_a) or 'none'}; "
                           f"only in B: {', '.join(only_b) or 'none'}")
    for key in sorted(set(a["scored"]) & set(b["scored"])):
        va, vb = a["scored"][key], b["scored"][key]
        if va != vb:
            if isinstance(va, list) and isinstance(vb, list):
                diff = sorted(set(map(str, va)) ^ set(map(str, vb)))
                more = " ..." if len(diff) > 5 else ""
                what = f"{len(va)} vs {len(vb)} segments, differing: {', '.join(diff[:5])}{more}"
            else:
                what = f"{va!r} vs {vb!r}"
            raise CompareError(f"{both} scored different segments: {key} {what}")


def sign_flip_p(d: np.ndarray, n_perm: int = 100000, rng=None) -> tuple[float, str]:
    """Two-sided sign-flip permutation p of the mean of paired differences ``d`` (n,).

    n <= 16: every one of the 2^n sign patterns, p = #(|mean| >= |observed mean|) / 2^n (exact;
    the identity pattern is one of them, so p >= 2^-n, and all-zero differences give p = 1).
    Larger n: (1 + #) / (1 + n_perm) over n_perm seeded random patterns. Returns (p, method)."""
    d = np.asarray(d, dtype=np.float64)
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, np.abs(d).max(initial=0.0))  # rounding must not drop the identity pattern
    if d.size <= EXACT_MAX:
        patterns = 1 - 2 * ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1)
        means = np.abs(patterns @ d) / d.size
        return float(np.count_nonzero(means >= observed - tol) / len(means)), f"exact, all {2 ** d.size} sign flips"
    rng = np.random.default_rng(0) if rng is None else rng
    hits = 0
    for start in range(0, n_perm, 10000):  # in chunks, so many subjects never build one huge matrix
        signs = rng.choice((-1.0, 1.0), size=(min(10000, n_perm - start), d.size))
        hits += np.count_nonzero(np.abs(signs @ d) / d.size >= observed - tol)
    return float((1 + hits) / (1 + n_perm)), f"Monte Carlo, {n_perm} random sign flips"


def paired(a: dict, b: dict, n_boot: int = 10000, n_perm: int = 100000, seed: int = 0) -> dict:
    """A - B per subject and its summary. a, b: {subject: score} over the same subjects.

    Returns {'n': subjects, 'per_subject': {subject: {'a', 'b', 'diff'}}, 'mean_diff',
    'ci95': [low, high] (percentile bootstrap of the mean over subjects, ``n_boot`` resamples),
    'p_value' (two-sided sign flip), 'p_method', 'higher', 'lower', 'equal' (subject counts),
    'n_boot', 'seed'}."""
    subjects = list(a)
    d = np.array([a[s] - b[s] for s in subjects], dtype=np.float64)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(axis=1)
    p, method = sign_flip_p(d, n_perm, rng)
    return {"n": int(d.size),
            "per_subject": {s: {"a": a[s], "b": b[s], "diff": float(x)} for s, x in zip(subjects, d, strict=True)},
            "mean_diff": float(d.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "p_value": p, "p_method": method, "higher": int((d > 0).sum()), "lower": int((d < 0).sum()),
            "equal": int((d == 0).sum()), "n_boot": int(n_boot), "seed": int(seed)}


def summary_line(res: dict) -> str:
    """'A - B = +0.021 (95 % CI +0.008 to +0.034), p = 0.004, 11 of 12 subjects higher'."""
    lo, hi = res["ci95"]
    return (f"A - B = {res['mean_diff']:+.3f} (95 % CI {lo:+.3f} to {hi:+.3f}), p = {res['p_value']:.2g}, "
            f"{res['higher']} of {res['n']} subjects higher")


def table(res: dict) -> str:
    """The per-subject scores and differences, one subject a line."""
    rows = [f"{'subject':>10}  {'A':>8}  {'B':>8}  {'A - B':>8}"]
    rows += [f"{s:>10}  {v['a']:8.4f}  {v['b']:8.4f}  {v['diff']:+8.4f}" for s, v in res["per_subject"].items()]
    return "\n".join(rows)


def split_argv(argv: list) -> tuple[list, list]:
    """(the two positional paths, the --key=value options); anything else is a one-line error."""
    paths = [a for a in argv if not a.startswith("-")]
    options = [a for a in argv if a.startswith("-")]
    if len(paths) != 2 and not ({"--help", "-h"} & set(options)):
        raise SystemExit(f"usage: python compare.py A B [--key=value ...]; got {len(paths)} path(s): "
                         f"{' '.join(paths) or 'none'} (see --help)")
    return paths, options


def main(argv=None) -> dict:
    """Compare two results; prints the table and the summary line, returns the comparison dict."""
    argv = sys.argv[1:] if argv is None else list(argv)
    paths, options = split_argv(argv)
    cfg, _ = cli.parse_or_exit(options, program=None, extra=OPTIONS)
    for key in ("n_boot", "n_perm"):
        if cfg[key] < 1:
            raise SystemExit(f"config error: --{key}: must be >= 1, got {cfg[key]}")
    try:
        a, b = (load(p, cfg["file"], cfg["entry"], cfg["metric"]) for p in paths)
        check_comparable(a, b)
    except (CompareError, FileError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    res = paired(a["per_subject"], b["per_subject"], cfg["n_boot"], cfg["n_perm"], cfg["seed"])
    res.update(a=str(a["file"]), b=str(b["file"]), entry=cfg["entry"], metric=cfg["metric"])
    print(f"A = {a['file']}\nB = {b['file']}   ({cfg['entry']}, {cfg['metric']})")
    if a["eval_dir"] != b["eval_dir"]:
        print(f"note: the two scored eval_dir {a['eval_dir']} and {b['eval_dir']}; the same subjects and counts, "
              "but make sure it is the same data")
    print(table(res))
    print(f"{summary_line(res)}  [{res['p_method']}; bootstrap {cfg['n_boot']} resamples, seed {cfg['seed']}]")
    if cfg["json"]:
        try:
            atomic_write_json(cfg["json"], res)
        except FileError as exc:
            raise SystemExit(f"error: {exc}") from exc
        print(f"written to {cfg['json']}")
    return res


if __name__ == "__main__":
    main()
