"""Peak memory (RSS) of TRAINING on a data folder, and how it grows with 1x, 2x, 4x that data.

    python -m benchmarks.train_memory  # ivlaai; 1x, 2x, 4x the DTU data; + 2.5 s windows
    python -m benchmarks.train_memory --models=ivlaai,vlaai --json=mem.json
    python -m benchmarks.train_memory --child --repeat=2 --model=ivlaai  # one measurement (what the driver runs)

Run it from the repository root.

Every measurement runs in a fresh Python process, so peaks do not mix:

* data runs (``--repeat=R``): a temporary folder of symbolic links holds the npz trials of
  ``--data_dir`` R times (copy r > 0 renames subject S3 to S{3 + 1000 r}, e.g. DTU_S1003_004.npz),
  so load_corpus reads R times the data and sees R times the subjects; nothing is copied. The
  child then runs ``train.main(['--data_dir=<that folder>', '--model=...', '--epochs=1',
  '--run_dir=<temp>', ...])``: one full epoch of real training plus validation and checkpoints,
  exactly train.py's code path. It reports the peak RSS (ru_maxrss = VmHWM), the peak of RssAnon
  (sampled), the RSS after the imports and the RSS right after the corpus was loaded.
* baseline runs (``--repeat=0``): the same train.main call on ``--baseline_copies`` links to a
  single trial (8 x 0.8 MiB: about one batch of windows per epoch), ``--baseline_epochs`` epochs:
  Python + torch + model + Adam state + the activations of a training step, with almost no data.

"Above baseline" = data peak - baseline peak (+ the baseline's own small data): what the data
costs. The target: at most 1.5 x the on-disk data size (on top of model and optimizer).
A run with 2.5 s windows at 1x data (2x the windows, ``--extra_windows``) shows that memory follows
the data, not the number of windows (windows are sliced on access, never materialised).

Each setting runs twice (``--mmap_threshold=0,1048576``): with glibc's default malloc, whose
dynamic mmap threshold keeps freed activation blocks of a training step in the heap (peak RSS is
then hundreds of MiB above what is live, and varies from run to run), and with
``MALLOC_MMAP_THRESHOLD_=1048576`` in the child's environment, where blocks of 1 MiB or more are
mapped and unmapped, so RSS follows the live tensors.
"""
from __future__ import annotations

import io
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import cli
from benchmarks import options

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dtu"
MIB = 2**20


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def status_mib(*keys: str) -> dict:
    """Fields of /proc/self/status (VmRSS, RssAnon, RssFile, VmHWM, ...) in MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0]) / 1024
    return out


class AnonPeak:
    """Samples RssAnon (heap, tensors; not the shared-library pages in RSS) every ``dt`` s; keeps the max."""

    def __init__(self, dt: float = 0.02):
        import threading

        self.peak, self.dt, self._stop = 0.0, dt, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, status_mib("RssAnon").get("RssAnon", 0.0))
            self._stop.wait(self.dt)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, status_mib("RssAnon").get("RssAnon", 0.0))
        return self.peak


def peak_mib() -> float:
    """Peak RSS of this process so far (ru_maxrss, KiB on Linux; = VmHWM)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def disk_mib(folder: Path) -> float:
    """Bytes of the files in ``folder`` (links followed), MiB."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file()) / MIB


def repeated_folder(data_dir: Path, repeat: int, out: Path) -> Path:
    """Fill ``out`` with ``repeat`` sets of symlinks to the npz trials of ``data_dir``, subjects renamed."""
    from EEG_Dataset import _NPZ_SUBJECT_RE

    files = sorted(Path(data_dir).glob("*.npz"))
    if not files:
        raise SystemExit(f"{data_dir}: no .npz trials; --repeat needs a DTU-style npz folder")
    out.mkdir(parents=True, exist_ok=True)
    for r in range(repeat):
        for p in files:
            m = _NPZ_SUBJECT_RE.match(p.stem)
            if not m:
                raise SystemExit(f"{p}: cannot tell the subject from the file name")
            subj = m.group(1)
            if r > 0:
                subj = f"S{int(subj[1:]) + 1000 * r}" if re.fullmatch(r"S\d+", subj) else f"{subj}r{r}"
            stem = p.stem[: m.start(1)] + subj + p.stem[m.end(1):]
            (out / f"{stem}.npz").symlink_to(p.resolve())
    return out


def baseline_folder(data_dir: Path, copies: int, out: Path) -> Path:
    """``copies`` symlinks to the first npz trial of ``data_dir``, as subjects S1, S1001, S2001, ..."""
    files = sorted(Path(data_dir).glob("*.npz"))
    if not files:
        raise SystemExit(f"{data_dir}: no .npz trials")
    out.mkdir(parents=True, exist_ok=True)
    for r in range(copies):
        (out / f"BASE_S{1 + 1000 * r}_000.npz").symlink_to(files[0].resolve())
    return out


def saved_tensors_mib(model_name: str, batch: int, window: int) -> float:
    """MiB of tensors autograd keeps for backward in one training forward (+ loss), from shapes (meta device)."""
    import torch

    import newmodel
    from metrics import pearson_loss

    m = newmodel.build_model(model_name).to("meta")
    x = torch.zeros(batch, window, 64, device="meta")
    y = torch.zeros(batch, window, 1, device="meta")
    storages = {}

    def pack(t):
        st = t.untyped_storage()
        storages[st._cdata] = st.nbytes()  # views of one storage count once
        return t

    m.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pearson_loss(m(x, subject=torch.zeros(batch, dtype=torch.long, device="meta")), y, torch.ones_like(y))
    return sum(storages.values()) / MIB


# ----------------------------------------------------------------------------- one measurement (child)


def child(args) -> dict:
    t_start = time.time()
    import torch

    import newmodel
    import train
    from EEG_Dataset import WindowDataset

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    res = {"model": args.model, "repeat": args.repeat, "window_s": args.window_s, "batch_size": args.batch_size,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "pid": os.getpid()}
    res["rss_after_imports_mib"] = rss_mib()
    res["anon_after_imports_mib"] = status_mib("RssAnon").get("RssAnon", float("nan"))
    anon = AnonPeak()
    window = int(round(args.window_s * 64))

    tmp = Path(tempfile.mkdtemp(prefix="train_memory_"))
    try:
        if args.repeat == 0:  # baseline: train.py's code path on one trial (a few windows' worth), no real data
            data = baseline_folder(Path(args.data_dir), args.baseline_copies, tmp / "data")
            epochs = args.baseline_epochs
        else:
            data = (Path(args.data_dir) if args.repeat == 1
                    else repeated_folder(Path(args.data_dir), args.repeat, tmp / "data"))
            epochs = 1
        res["disk_mib"] = disk_mib(data)
        res["epochs"] = epochs
        marks = {}
        orig = getattr(train, "corpus_from_config", None)
        if orig is not None:  # note the RSS right after the corpus is loaded (train.py itself is not changed)
            def corpus_from_config(cfg):
                c = orig(cfg)
                marks["rss_after_load_mib"] = rss_mib()
                marks["corpus"] = c
                return c
            train.corpus_from_config = corpus_from_config
        argv = [f"--data_dir={data}", f"--model={args.model}", f"--epochs={epochs}", f"--patience={epochs}",
                "--seeds=[1]", f"--run_dir={tmp / 'runs'}", f"--window_s={args.window_s}",
                f"--batch_size={args.batch_size}", f"--num_workers={args.num_workers}", f"--device={args.device}",
                *args.train_args.split()]
        if args.threads > 0:
            argv.append(f"--threads={args.threads}")
        res["train_argv"] = argv
        log = io.StringIO()
        t0 = time.time()
        with redirect_stdout(log):
            train.main(argv)
        res["train_s"] = time.time() - t0
        res["peak_rss_mib"] = peak_mib()  # before anything else is allocated
        res["train_log_tail"] = log.getvalue().strip().splitlines()[-2:]
        if "rss_after_load_mib" in marks:
            res["rss_after_load_mib"] = marks["rss_after_load_mib"]
            corpus = marks.pop("corpus")
            res["recordings"] = len(corpus.recordings)
            res["subjects"] = len(corpus.subjects)
            res["train_samples"] = corpus.n_samples("train")
            res["windows_per_epoch"] = len(WindowDataset(corpus.recordings, window, seed=1))
            res["steps"] = epochs * -(-res["windows_per_epoch"] // args.batch_size)
        res["params"] = sum(p.numel() for p in newmodel.build_model(args.model).parameters())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res.setdefault("peak_rss_mib", peak_mib())
    res["peak_anon_mib"] = anon.stop()
    res.update({f"end_{k}_mib": v for k, v in status_mib("RssAnon", "RssFile").items()})
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                res["vmhwm_mib"] = int(line.split()[1]) / 1024
    res["wall_s"] = time.time() - t_start
    return res


# ----------------------------------------------------------------------------- driver


def run_child(args, model: str, repeat: int, window_s: float, mmap_threshold: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.train_memory", "--child", f"--model={model}", f"--repeat={repeat}",
           f"--window_s={window_s}", f"--batch_size={args.batch_size}", f"--threads={args.threads}",
           f"--data_dir={args.data_dir}", f"--baseline_copies={args.baseline_copies}",
           f"--baseline_epochs={args.baseline_epochs}", f"--num_workers={args.num_workers}", f"--device={args.device}"]
    if args.train_args:
        cmd.append(f"--train_args={args.train_args}")
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if mmap_threshold > 0:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), env=env)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            pre = f"MALLOC_MMAP_THRESHOLD_={mmap_threshold} " if mmap_threshold > 0 else ""
            r["cmd"] = pre + shlex.join(["python", *cmd[1:]])
            r["mmap_threshold"] = mmap_threshold
            return r
    raise SystemExit(f"child failed (rc {p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")


# The tool's keys: (default, comment[, accepted types]). The lists take a comma list (1,2,4), a [list] or one
# value; --extra_windows= (empty) is none.
KEYS = {
    "data_dir": (str(DEFAULT_DATA), "DTU-style npz folder whose trials are trained on"),
    "models": (["ivlaai"], "models to measure, e.g. --models=ivlaai,vlaai (driver)", (list, str)),
    "sizes": ([1, 2, 4], "data multiples, e.g. --sizes=1 (driver)", (list, int, str)),
    "extra_windows": ([2.5], "also these window lengths (s) at 1x data (--extra_windows= : none)",
                      (list, int, float, str)),
    "mmap_threshold": ([0, 1048576], "malloc settings to compare; 0: glibc's default malloc; N > 0: run the children "
                       "with MALLOC_MMAP_THRESHOLD_=N (blocks >= N bytes are mmapped and returned on free)",
                       (list, int, str)),
    "window_s": cli.like("window_s"),
    "batch_size": cli.like("batch_size", 64, "windows per training step"),
    "threads": cli.like("threads"),
    "num_workers": cli.like("num_workers", 0, "DataLoader workers (0: RSS of one process)"),
    "device": cli.like("device", "cpu", "train.py --device (RSS is host memory)"),
    "baseline_copies": (8, "baseline: links to one trial (8 x 0.8 MiB)"),
    "baseline_epochs": (3, "baseline: epochs of train.main"),
    "train_args": ("", "extra train.py arguments, space-separated (e.g. --train_args=--amp=bf16)"),
    "json": (None, "also write all numbers to this file", (str, type(None))),
    "child": (False, "one measurement in this process (internal)"),
    "model": ("ivlaai", "child: the model"),
    "repeat": (1, "child: data multiple (0: baseline without real data)"),
}


def parse_args(argv=None):
    args = options.parse(argv, KEYS, "train_memory", __doc__.split("\n\n")[0])
    args.models = options.as_list(args.models, "models")
    args.sizes = options.as_list(args.sizes, "sizes", int)
    args.extra_windows = options.as_list(args.extra_windows, "extra_windows", float)
    args.mmap_threshold = options.as_list(args.mmap_threshold, "mmap_threshold", int)
    return args


def _baseline_run(args, model: str, w: float, thr: int, saved: float) -> dict:
    """Measure training with almost no data for one (model, window, malloc threshold): the memory
    that the data runs are compared against, so that their excess is what the data costs."""
    base = run_child(args, model, 0, w, thr)
    base["saved_for_backward_mib"] = saved
    base["state_mib"] = base["params"] * 4 * 4 / MIB  # weights, gradients, Adam's 2 moments
    print(f"\n[{model} baseline, {w} s windows, mmap threshold {thr or 'default'}] imports "
          f"{base['rss_after_imports_mib']:.1f} MiB; train.main on {args.baseline_copies} links to one "
          f"trial ({base['disk_mib']:.1f} MiB, {base['steps']} steps): peak {base['peak_rss_mib']:.1f} MiB "
          f"(peak RssAnon {base['peak_anon_mib']:.1f}); model + Adam state {base['state_mib']:.1f} MiB; "
          f"autograd keeps {saved:.0f} MiB per batch of {args.batch_size} x {int(round(w * 64))}\n"
          f"  {base['cmd']}", flush=True)
    return base


def _data_run(args, model: str, rep: int, w: float, thr: int, base: dict, saved: float) -> dict:
    """Measure training on ``rep`` times the data and express its peak relative to ``base`` and to
    the data's size on disk, the figures the 1.5 x target is judged on."""
    r = run_child(args, model, rep, w, thr)
    r["baseline_peak_mib"] = base["peak_rss_mib"]
    r["baseline_disk_mib"] = base["disk_mib"]
    r["state_mib"] = base["state_mib"]
    r["saved_for_backward_mib"] = saved
    # the baseline holds a little data itself: count it back in
    r["above_baseline_mib"] = r["peak_rss_mib"] - base["peak_rss_mib"] + base["disk_mib"]
    r["ratio_to_disk"] = r["above_baseline_mib"] / r["disk_mib"]
    r["anon_above_baseline_mib"] = r["peak_anon_mib"] - base["peak_anon_mib"] + base["disk_mib"]
    r["load_above_imports_mib"] = r.get("rss_after_load_mib", float("nan")) - r["rss_after_imports_mib"]
    print(f"[{model} {rep}x data, {w} s windows, mmap threshold {thr or 'default'}] {r['disk_mib']:.1f} "
          f"MiB on disk, {r.get('subjects', '?')} subjects, {r.get('windows_per_epoch', '?')} "
          f"windows/epoch ({r.get('steps', '?')} steps); RSS after load "
          f"{r.get('rss_after_load_mib', float('nan')):.1f} MiB (+{r['load_above_imports_mib']:.1f}); "
          f"peak {r['peak_rss_mib']:.1f} MiB = baseline + {r['above_baseline_mib']:.1f} MiB "
          f"({r['ratio_to_disk']:.2f} x data); epoch {r['train_s']:.1f} s\n  {r['cmd']}", flush=True)
    return r


def _print_table(args, rows: list[dict], bases: list[dict]) -> None:
    """Print every data run as one table row against the target, then each baseline broken down into
    imports, model state, autograd and the rest, so an excess can be traced to its part."""
    hdr = (f"{'model':11s} {'malloc':>7s} {'data':>4s} {'win s':>5s} {'disk MiB':>8s} {'windows':>7s} "
           f"{'baseline':>8s} {'after load':>10s} {'load/disk':>9s} {'peak RSS':>8s} {'above base':>10s} "
           f"{'/ disk':>6s} "
           f"{'target':>6s} {'anon above':>10s}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ok = "ok" if r["ratio_to_disk"] <= 1.5 else "MISS"
        mal = "default" if not r["mmap_threshold"] else f"{r['mmap_threshold'] // 1024}K"
        print(f"{r['model']:11s} {mal:>7s} {r['repeat']:>3d}x {r['window_s']:5.1f} {r['disk_mib']:8.1f} "
              f"{r.get('windows_per_epoch', 0):7d} {r['baseline_peak_mib']:8.1f} "
              f"{r.get('rss_after_load_mib', float('nan')):10.1f} {r['load_above_imports_mib'] / r['disk_mib']:9.2f} "
              f"{r['peak_rss_mib']:8.1f} "
              f"{r['above_baseline_mib']:10.1f} {r['ratio_to_disk']:6.2f} {ok:>6s} "
              f"{r['anon_above_baseline_mib']:10.1f}")
    print("(MiB. malloc: glibc default, or MALLOC_MMAP_THRESHOLD_ set. load/disk = (RSS after load_corpus - RSS "
          "after imports) / disk. baseline = peak of train.main on "
          f"{args.baseline_copies} links to one trial (same model, batch, window; its own data counted back in). "
          "above base = peak - baseline + baseline data; target: above base <= 1.5 x disk. anon above = the same "
          "for the peak of RssAnon (heap and tensors, not shared-library pages), sampled every 20 ms. With glibc's "
          "default malloc, peaks of identical runs differ by ~100 MiB (heap fragmentation): judge growth by the "
          "slope below and by load/disk)")
    for b in bases:
        print(f"baseline {b['model']} {b['window_s']} s, malloc {b['mmap_threshold'] or 'default'}: peak "
              f"{b['peak_rss_mib']:.0f} MiB = imports {b['rss_after_imports_mib']:.0f} + model/Adam state "
              f"{b['state_mib']:.0f} + autograd's saved tensors {b['saved_for_backward_mib']:.0f} + other "
              f"{b['peak_rss_mib'] - b['rss_after_imports_mib'] - b['state_mib'] - b['saved_for_backward_mib']:.0f}")


def _print_growth(args, rows: list[dict], models: list[str], thresholds: list[int]) -> None:
    """Print how the peak grows per MiB of data and what longer windows cost at 1x data: the two
    figures that show whether memory follows the data rather than the number of windows."""
    for model in models:
        for thr in thresholds:
            mr = sorted((r for r in rows if r["model"] == model and r["window_s"] == args.window_s
                         and r["mmap_threshold"] == thr), key=lambda r: r["repeat"])
            tag = f"{model}, malloc {thr or 'default'}"
            if len(mr) >= 2:
                a, b = mr[0], mr[-1]
                slope = (b["peak_rss_mib"] - a["peak_rss_mib"]) / max(b["disk_mib"] - a["disk_mib"], 1e-9)
                print(f"{tag}: peak RSS grows {slope:.2f} MiB per MiB of data from {a['repeat']}x to {b['repeat']}x")
            w1 = [r for r in rows if r["model"] == model and r["repeat"] == 1 and r["mmap_threshold"] == thr]
            if len(w1) >= 2:
                print(f"{tag}: at 1x data, " + "; ".join(
                    f"{r['window_s']} s windows: {r.get('windows_per_epoch', '?')} windows, above baseline "
                    f"{r['above_baseline_mib']:.1f} MiB" for r in w1))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        res = child(args)
        print("RESULT " + json.dumps(res), flush=True)
        return res

    import torch

    from benchmarks.machine import LoadMeter, machine_info  # the shared machine description

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    load = LoadMeter()
    info = machine_info(torch.device("cpu"))
    print("== benchmarks/train_memory.py")
    for k in ("date", "command", "git", "host", "cpu", "cpu_count", "python", "torch", "threads", "loadavg_at_start"):
        print(f"{k:>17s}: {info[k]}")
    models, sizes, extra, thresholds = args.models, args.sizes, args.extra_windows, args.mmap_threshold
    print(f"{'setup':>17s}: data {args.data_dir}, sizes {sizes} x, windows {args.window_s} s (+ {extra} s at 1x), "
          f"batch {args.batch_size}, one epoch of train.main per size, num_workers {args.num_workers}, "
          f"malloc mmap thresholds {thresholds} (0 = glibc default), train args {args.train_args!r}", flush=True)
    rows, bases = [], []
    for model in models:
        for w in [args.window_s, *extra]:
            saved = saved_tensors_mib(model, args.batch_size, int(round(w * 64)))
            for thr in thresholds:
                base = _baseline_run(args, model, w, thr, saved)
                bases.append(base)
                for rep in (sizes if w == args.window_s else [1]):
                    rows.append(_data_run(args, model, rep, w, thr, base, saved))

    other = load.other_cores()
    state = "IDLE" if other < 0.1 else "LOADED (timings are not clean; RSS figures hardly depend on load)"
    print("\n== summary")
    print(f"{info['date']}  {info['command']}")
    print(f"torch {info['torch']}, {info['threads']} threads, {info['cpu']} ({info['cpu_count']} CPUs); other "
          f"processes kept {other:.2f} cores busy on average: machine {state}")
    _print_table(args, rows, bases)
    _print_growth(args, rows, models, thresholds)
    out = {"machine": info | {"other_processes_cores": other}, "args": vars(args), "baselines": bases, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
