"""Peak memory (RSS) of TRAINING on a data folder, and how it grows with 1x, 2x, 4x that data.

    python benchmarks/train_memory.py                                  # ivlaai; 1x, 2x, 4x the DTU data; + 2.5 s windows
    python benchmarks/train_memory.py --models=ivlaai,vlaai --json=mem.json
    python benchmarks/train_memory.py --child --repeat=2 --model=ivlaai  # one measurement (what the driver runs)

Every measurement runs in a fresh Python process, so peaks do not mix:

* data runs (``--repeat=R``): a temporary folder of symbolic links holds the npz trials of
  ``--data_dir`` R times (copy r > 0 renames subject S3 to S{3 + 1000 r}, e.g. DTU_S1003_004.npz),
  so load_corpus reads R times the data and sees R times the subjects; nothing is copied. The
  child then runs ``train.main(['--data_dir=<that folder>', '--model=...', '--epochs=1',
  '--run_dir=<temp>', ...])``: one full epoch of real training plus validation and checkpoints,
  exactly train.py's code path. It reports the peak RSS (ru_maxrss = VmHWM), the RSS after the
  imports, and the RSS right after the corpus was loaded.
* baseline runs (``--repeat=0``): the same imports, the same model and Adam optimizer, and
  ``--baseline_steps`` training steps on synthetic batches of the same shape (batch x window x
  channels), i.e. Python + torch + model + optimizer state + one step's activations, without data.

"Above baseline" = data peak - baseline peak of the same model and window length: what the data
costs. The issue's target: at most 1.5 x the on-disk data size (on top of model and optimizer).
A run with 2.5 s windows at 1x data (2x the windows, ``--extra_windows``) shows that memory follows
the data, not the number of windows (windows are sliced on access, never materialised).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

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
    sys.path.insert(0, str(REPO))
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


# ----------------------------------------------------------------------------- one measurement (child)


def child(args) -> dict:
    t_start = time.time()
    sys.path.insert(0, str(REPO))
    import torch

    import newmodel
    import train
    from EEG_Dataset import WindowDataset
    from metrics import pearson_loss

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    res = {"model": args.model, "repeat": args.repeat, "window_s": args.window_s, "batch_size": args.batch_size,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "pid": os.getpid()}
    res["rss_after_imports_mib"] = rss_mib()
    res["anon_after_imports_mib"] = status_mib("RssAnon").get("RssAnon", float("nan"))
    anon = AnonPeak()
    window = int(round(args.window_s * 64))

    if args.repeat == 0:  # baseline: model + optimizer + activations of synthetic steps, no data
        torch.manual_seed(1)
        model = newmodel.build_model(args.model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randn(args.batch_size, window, 64)
        y = torch.randn(args.batch_size, window, 1)
        mask = torch.ones(args.batch_size, window, 1)
        subj = torch.zeros(args.batch_size, dtype=torch.long)
        model.train()
        for _ in range(args.baseline_steps):
            loss = pearson_loss(model(x, subject=subj), y, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():  # validation-like pass: whole 5 s parts, one at a time
            for _ in range(5):
                model(torch.randn(1, 320, 64))
        res["params"] = sum(p.numel() for p in model.parameters())
        res["disk_mib"] = 0.0
        res["steps"] = args.baseline_steps
    else:
        tmp = Path(tempfile.mkdtemp(prefix="train_memory_"))
        try:
            data = Path(args.data_dir) if args.repeat == 1 else repeated_folder(Path(args.data_dir), args.repeat, tmp / "data")
            res["disk_mib"] = disk_mib(data)
            marks = {}
            orig = getattr(train, "corpus_from_config", None)
            if orig is not None:  # note the RSS right after the corpus is loaded (train.py itself is not changed)
                def corpus_from_config(cfg):
                    c = orig(cfg)
                    marks["rss_after_load_mib"] = rss_mib()
                    marks["corpus"] = c
                    return c
                train.corpus_from_config = corpus_from_config
            argv = [f"--data_dir={data}", f"--model={args.model}", "--epochs=1", "--seeds=[1]",
                    f"--run_dir={tmp / 'runs'}", f"--window_s={args.window_s}", f"--batch_size={args.batch_size}",
                    f"--num_workers={args.num_workers}", f"--device={args.device}"]
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
                res["steps"] = -(-res["windows_per_epoch"] // args.batch_size)
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


def run_child(args, model: str, repeat: int, window_s: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", f"--model={model}", f"--repeat={repeat}",
           f"--window_s={window_s}", f"--batch_size={args.batch_size}", f"--threads={args.threads}",
           f"--data_dir={args.data_dir}", f"--baseline_steps={args.baseline_steps}",
           f"--num_workers={args.num_workers}", f"--device={args.device}"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            r["cmd"] = " ".join(["python", "benchmarks/train_memory.py", *cmd[2:]])
            return r
    raise SystemExit(f"child failed (rc {p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(DEFAULT_DATA))
    p.add_argument("--models", default="ivlaai", help="comma list (driver)")
    p.add_argument("--sizes", default="1,2,4", help="data multiples (driver)")
    p.add_argument("--extra_windows", default="2.5", help="also these window lengths (s) at 1x data ('' none)")
    p.add_argument("--window_s", type=float, default=5.0)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--num_workers", type=int, default=0, help="DataLoader workers (0: RSS of one process)")
    p.add_argument("--device", default="cpu", help="train.py device (RSS is host memory)")
    p.add_argument("--baseline_steps", type=int, default=5)
    p.add_argument("--json", default=None)
    p.add_argument("--child", action="store_true", help="one measurement in this process (internal)")
    p.add_argument("--model", default="ivlaai", help="child: the model")
    p.add_argument("--repeat", type=int, default=1, help="child: data multiple (0: baseline without data)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        res = child(args)
        print("RESULT " + json.dumps(res), flush=True)
        return res

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from throughput import LoadMeter, machine_info  # noqa: E402 - shared machine description

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    load = LoadMeter()
    info = machine_info(torch.device("cpu"))
    print("== benchmarks/train_memory.py")
    for k in ("date", "command", "git", "host", "cpu", "cpu_count", "python", "torch", "threads", "loadavg_at_start"):
        print(f"{k:>17s}: {info[k]}")
    models = [m for m in args.models.split(",") if m]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    extra = [float(s) for s in args.extra_windows.split(",") if s]
    print(f"{'setup':>17s}: data {args.data_dir}, sizes {sizes} x, windows {args.window_s} s (+ {extra} s at 1x), "
          f"batch {args.batch_size}, one epoch of train.main per size, num_workers {args.num_workers}", flush=True)
    rows = []
    for model in models:
        for w in [args.window_s, *extra]:
            base = run_child(args, model, 0, w)
            state = base["params"] * 4 * 4 / MIB  # weights, gradients, Adam's two moments (float32)
            print(f"\n[{model} baseline, {w} s windows] imports {base['rss_after_imports_mib']:.1f} MiB, peak with "
                  f"model + Adam + {base['steps']} synthetic steps {base['peak_rss_mib']:.1f} MiB "
                  f"(model + optimizer state {state:.1f} MiB)\n  {base['cmd']}", flush=True)
            for rep in (sizes if w == args.window_s else [1]):
                r = run_child(args, model, rep, w)
                r["baseline_peak_mib"] = base["peak_rss_mib"]
                r["baseline_imports_mib"] = base["rss_after_imports_mib"]
                r["state_mib"] = state
                r["above_baseline_mib"] = r["peak_rss_mib"] - base["peak_rss_mib"]
                r["ratio_to_disk"] = r["above_baseline_mib"] / r["disk_mib"]
                r["anon_above_baseline_mib"] = r["peak_anon_mib"] - base["peak_anon_mib"]
                r["load_above_imports_mib"] = r.get("rss_after_load_mib", float("nan")) - r["rss_after_imports_mib"]
                rows.append(r)
                print(f"[{model} {rep}x data, {w} s windows] {r['disk_mib']:.1f} MiB on disk, "
                      f"{r.get('subjects', '?')} subjects, {r.get('windows_per_epoch', '?')} windows/epoch "
                      f"({r.get('steps', '?')} steps); RSS after load {r.get('rss_after_load_mib', float('nan')):.1f} "
                      f"MiB; peak {r['peak_rss_mib']:.1f} MiB = baseline + {r['above_baseline_mib']:.1f} MiB "
                      f"({r['ratio_to_disk']:.2f} x data); epoch {r['train_s']:.1f} s\n  {r['cmd']}", flush=True)

    other = load.other_cores()
    state = "IDLE" if other < 0.1 else "LOADED (timings are not clean; RSS figures are unaffected)"
    print("\n== summary")
    print(f"{info['date']}  {info['command']}")
    print(f"torch {info['torch']}, {info['threads']} threads, {info['cpu']} ({info['cpu_count']} CPUs); other "
          f"processes kept {other:.2f} cores busy on average: machine {state}")
    hdr = (f"{'model':11s} {'data':>4s} {'win s':>5s} {'disk MiB':>8s} {'windows':>7s} {'baseline':>8s} "
           f"{'after load':>10s} {'peak RSS':>8s} {'above base':>10s} {'/ disk':>6s} {'target':>6s} {'anon above':>10s}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ok = "ok" if r["ratio_to_disk"] <= 1.5 else "MISS"
        print(f"{r['model']:11s} {r['repeat']:>3d}x {r['window_s']:5.1f} {r['disk_mib']:8.1f} "
              f"{r.get('windows_per_epoch', 0):7d} {r['baseline_peak_mib']:8.1f} {r.get('rss_after_load_mib', float('nan')):10.1f} "
              f"{r['peak_rss_mib']:8.1f} {r['above_baseline_mib']:10.1f} {r['ratio_to_disk']:6.2f} {ok:>6s} "
              f"{r['anon_above_baseline_mib']:10.1f}")
    print("(MiB. baseline = peak of the same imports + model + Adam + synthetic training steps, no data; "
          "above base = peak - baseline; target: above base <= 1.5 x disk; anon above = the same for the peak of RssAnon "
          "(heap and tensors, without shared-library pages), sampled every 20 ms)")
    for model in models:
        mr = sorted((r for r in rows if r["model"] == model and r["window_s"] == args.window_s), key=lambda r: r["repeat"])
        if len(mr) >= 2:
            a, b = mr[0], mr[-1]
            slope = (b["peak_rss_mib"] - a["peak_rss_mib"]) / max(b["disk_mib"] - a["disk_mib"], 1e-9)
            print(f"{model}: peak RSS grows {slope:.2f} MiB per MiB of data from {a['repeat']}x to {b['repeat']}x")
        w1 = [r for r in rows if r["model"] == model and r["repeat"] == 1]
        if len(w1) >= 2:
            print(f"{model}: at 1x data, " + "; ".join(
                f"{r['window_s']} s windows: {r.get('windows_per_epoch', '?')} windows, above baseline "
                f"{r['above_baseline_mib']:.1f} MiB" for r in w1))
    out = {"machine": info | {"other_processes_cores": other}, "args": vars(args), "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
