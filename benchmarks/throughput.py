"""Training and inference throughput, FLOPs, fraction of the machine's dense rate and data-wait share.

    python -m benchmarks.throughput                                  # vlaai + ivlaai, float32, current device
    python -m benchmarks.throughput --amp=none,bf16 --json=tp.json   # also bfloat16 autocast
    python -m benchmarks.throughput --compile                        # torch.compile (compile time shown apart)
    python -m benchmarks.throughput --models=vlaai --profile         # + torch.profiler top ops of one step
    python -m benchmarks.throughput --tf_reference=../vlaai          # + the TensorFlow reference VLAAI, same run

Run it from the repository root.

Samples are EEG time steps: one step of batch 64 x 320 samples counts 20,480 samples.

For each model (``--models``, default vlaai,ivlaai; linear_conv allowed) and each ``--amp`` setting:

* training samples/s: forward + Pearson loss (with the all-ones mask train.py passes) + backward +
  Adam step, as in train.py's loop; inference samples/s: ``model.eval()`` in
  ``torch.inference_mode``. ``--warmup`` steps are run first and not timed (with ``--compile``
  the first of them compiles; its time is reported as compile time). Synthetic random batches.
* FLOPs per sample counted by ``torch.utils.flop_counter.FlopCounterMode`` (on the meta device,
  i.e. from shapes, batch 2 x ``--window``): forward, and training
  (forward + backward). torch 2.13's formula for ``convolution_backward`` does not divide the
  weight gradient of a grouped convolution by its groups (a depthwise conv's weight gradient is
  counted ``channels`` times too high), so the training count is shown both as counted and
  corrected (the corrected formula is used for the FLOP/s figures). Cross-checks: a forward count
  from the conv1d/conv2d/linear calls (2 x output elements x multiply-adds per output) and, for
  VLAAI, the count by hand (13.42 MFLOP per sample at 320 samples: its extractor convs are 'valid').
* achieved FLOP/s as a share of the best dense rate measured in the same run: the faster of a
  4096 x 4096 float32 matmul and a 256 -> 256 channel, kernel-8 conv1d over a batch of 64 x 327
  samples (each timed ``--dense_repeats`` times, best taken; also in bfloat16 when bf16 is asked).
  Elementwise work (LayerNorm, LeakyReLU, padding, masking, the loss, Adam) is not counted as FLOPs.
* ``--tf_reference=PATH``: the reference TensorFlow VLAAI timed in the same process, same batch
  and thread count (intra-op = torch threads, inter-op = torch inter-op threads). PATH is a
  clone of https://github.com/exporl/vlaai (its ``model.py`` is imported from there at run time;
  nothing of it is in this repository). Training as the reference's README compiles it:
  ``model.compile(optimizer='adam', loss=pearson_loss, metrics=[pearson_metric])``, timed with
  ``train_on_batch`` (the step ``fit`` runs); inference ``model(x, training=False)`` in a
  ``tf.function``. The reference is Keras 2 code: with tf-keras installed the tool sets
  ``TF_USE_LEGACY_KERAS=1`` unless it is set. Without tensorflow this part is skipped with a
  one-line message. TensorFlow is not in requirements.txt.
* data wait: the real data path of train.py (``load_corpus`` on ``--data_dir``, ``WindowDataset`` of
  ``--data_window_s`` windows, a DataLoader of ``--batch_size`` with ``--num_workers``, pinned memory
  and non-blocking copies on CUDA) feeding ``--data_steps`` real training steps; the time spent in
  ``next(iterator)`` plus the host->device copy, as a share of the whole step time.

Everything needed to judge a figure is printed: command line, date, machine, CPU load by other
processes during the run, torch version and threads. ``--json=path`` also writes the numbers.
"""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import cli
import newmodel
import runtime
from benchmarks import options
from benchmarks.flops import call_flops, flops_per_sample, make_batch, vlaai_hand_flops
from benchmarks.machine import LoadMeter, machine_info
from benchmarks.tf_reference import TF_MISSING, measure_tf_reference, tf_reference_file
from metrics import pearson_loss

REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA = REPO.parent / "shared" / "data" / "dtu"
TRAINABLE = ("vlaai", "ivlaai", "linear_conv")

# Reference dense rates of host A (2 vCPUs of an AMD EPYC Zen 4), as first quoted for it. The
# TensorFlow reference VLAAI is not a fixed figure: --tf_reference times it in the same run.
REFERENCE = {
    "conv1d_gflops": 258.0,       # 256->256 kernel-8 conv1d
    "matmul_gflops": 181.0,       # 4096^2 matmul
}


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device``, so that a clock read next times that work too."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- dense rate


def time_best(fn, repeats: int, device) -> float:
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def dense_rate(device, dtype=torch.float32, repeats: int = 3, n: int = 4096, conv_batch: int = 64,
               conv_chans: int = 256, conv_len: int = 320, kernel: int = 8) -> dict:
    """Best FLOP/s of a large matmul and a large 1-D convolution (each best of ``repeats``)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    t_mm = time_best(functools.partial(torch.mm, a, b), repeats, device)
    del a, b  # free the matmul's operands before the convolution's are made
    x = torch.randn(conv_batch, conv_chans, conv_len + kernel - 1, generator=g).to(device, dtype)
    w = torch.randn(conv_chans, conv_chans, kernel, generator=g).to(device, dtype)
    with torch.no_grad():
        t_conv = time_best(lambda: F.conv1d(x, w), repeats, device)
    mm = 2 * n**3 / t_mm
    conv = 2 * conv_batch * conv_len * conv_chans * conv_chans * kernel / t_conv
    return {"dtype": str(dtype).replace("torch.", ""), "matmul_flops": mm, "conv1d_flops": conv,
            "best_flops": max(mm, conv), "best_of": "matmul" if mm >= conv else "conv1d",
            "matmul_n": n, "conv_shape": [conv_batch, conv_chans, conv_len + kernel - 1, kernel]}


# ----------------------------------------------------------------------------- throughput


def train_step(model, opt, x, y, mask, subj, amp: str):
    with runtime.autocast(x.device, amp):
        pred = model(x, subject=subj)
    loss = pearson_loss(pred.float(), y, mask)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def measure_model(name: str, device, *, batch: int, window: int, steps: int, warmup: int, amp: str,
                  compile_model: bool, lr: float = 1e-3, seed: int = 0) -> dict:
    """Training and inference samples/s of one model on synthetic batches."""
    torch.manual_seed(seed)
    model = newmodel.build_model(name).to(device)
    fwd = torch.compile(model) if compile_model else model
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y, mask, subj = make_batch(batch, window, device=device, seed=seed)
    samples = batch * window
    out = {"model": name, "amp": amp, "compile": compile_model, "params": sum(p.numel() for p in model.parameters())}

    model.train()
    t0 = time.perf_counter()
    for i in range(warmup):
        train_step(fwd, opt, x, y, mask, subj, amp)
        sync(device)
        if i == 0:
            out["train_first_step_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(fwd, opt, x, y, mask, subj, amp)
    sync(device)
    dt = time.perf_counter() - t0
    out["train_step_s"] = dt / steps
    out["train_samples_s"] = samples * steps / dt

    model.eval()
    with torch.inference_mode():
        t0 = time.perf_counter()
        for i in range(warmup):
            with runtime.autocast(device, amp):
                fwd(x, subject=subj)
            sync(device)
            if i == 0:
                out["infer_first_call_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            with runtime.autocast(device, amp):
                fwd(x, subject=subj)
        sync(device)
        dt = time.perf_counter() - t0
    out["infer_step_s"] = dt / steps
    out["infer_samples_s"] = samples * steps / dt
    if compile_model:  # compile time = first call minus a steady-state call
        out["compile_train_s"] = out.get("train_first_step_s", float("nan")) - out["train_step_s"]
        out["compile_infer_s"] = out.get("infer_first_call_s", float("nan")) - out["infer_step_s"]
    return out


def profile_step(name: str, device, *, batch: int, window: int, amp: str, rows: int = 15) -> str:
    """torch.profiler table (self CPU/CUDA time) of a few training steps."""
    from torch.profiler import ProfilerActivity, profile

    model = newmodel.build_model(name).to(device)
    opt = torch.optim.Adam(model.parameters())
    x, y, mask, subj = make_batch(batch, window, device=device)
    model.train()
    train_step(model, opt, x, y, mask, subj, amp)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(2):
            train_step(model, opt, x, y, mask, subj, amp)
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


# ----------------------------------------------------------------------------- data wait


def data_wait(name: str, device, *, data_dir, steps: int, warmup: int, batch: int, window_s: float,
              num_workers: int, amp: str, compile_model: bool, lr: float = 1e-3, seed: int = 1,
              corpus=None) -> dict:
    """Share of training-step time spent waiting for the next batch (+ host->device copy), real data."""
    from torch.utils.data import DataLoader

    from EEG_Dataset import WindowDataset, load_corpus

    t0 = time.perf_counter()
    corpus = corpus if corpus is not None else load_corpus(data_dir)
    t_load = time.perf_counter() - t0
    subject_index = {s: i for i, s in enumerate(corpus.subjects)}
    ds = WindowDataset(corpus.recordings, int(round(window_s * 64)), seed=seed, subject_index=subject_index)
    cuda = device.type == "cuda"
    loader = DataLoader(ds, batch_size=batch, shuffle=False, num_workers=num_workers, pin_memory=cuda,
                        persistent_workers=num_workers > 0)
    torch.manual_seed(seed)
    model = newmodel.build_model(name, n_chans=corpus.n_chans).to(device)
    fwd = torch.compile(model) if compile_model else model
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    epoch, it = 0, iter(loader)
    wait = total = 0.0
    samples = 0
    n_epochs_started = 1
    for step in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:  # next epoch, as train.py does (set_epoch + a new iterator)
            epoch += 1
            n_epochs_started += 1
            ds.set_epoch(epoch)
            it = iter(loader)
            b = next(it)
        eeg = b["eeg"].to(device, non_blocking=True)
        env = b["envelope"].to(device, non_blocking=True)
        mask = b["mask"].to(device, non_blocking=True)
        subj = b["subject"].to(device, non_blocking=True)
        t1 = time.perf_counter()
        train_step(fwd, opt, eeg, env, mask, subj, amp)
        sync(device)
        t2 = time.perf_counter()
        if step >= warmup:
            wait += t1 - t0
            total += t2 - t0
            samples += int(b["mask"].sum())
    return {"model": name, "amp": amp, "compile": compile_model, "num_workers": num_workers,
            "data_dir": str(data_dir), "load_corpus_s": t_load, "windows_per_epoch": len(ds),
            "steps": steps, "epochs_touched": n_epochs_started, "wait_s": wait, "step_total_s": total,
            "wait_share": wait / total if total > 0 else float("nan"),
            "train_samples_s": samples / total if total > 0 else float("nan")}


# ----------------------------------------------------------------------------- main


# The tool's keys: (default, comment[, accepted types]). --models, --amp: a comma list (vlaai,ivlaai), a [list]
# or one value.
KEYS = {
    "models": (["vlaai", "ivlaai"], "models to time, e.g. --models=vlaai,ivlaai: vlaai, ivlaai, linear_conv",
               (list, str)),
    "device": cli.like("device"),
    "batch_size": cli.like("batch_size", 64, "windows per step"),
    "window": (320, "samples per window in the synthetic timing"),
    "steps": (10, "timed steps (training and inference each)"),
    "warmup": (2, "untimed steps first (>= 1; compile happens here)"),
    "threads": cli.like("threads"),
    "amp": (["none"], "precisions to time: none, bf16 (bfloat16 autocast), e.g. --amp=none,bf16", (list, str)),
    "compile": ("no", "torch.compile the model: no, yes (--compile alone) or both (eager and compiled in one run)",
                (str, bool)),
    "deterministic": (1, "1: torch.use_deterministic_algorithms like train.py's default (0: off)", (int, bool)),
    "fill_uninitialized_memory": (0, "with --deterministic=1: torch.utils.deterministic.fill_uninitialized_memory "
                                     "(0, as train.py sets it; 1 = torch's default, NaN-fills every new tensor)",
                                  (int, bool)),
    "lr": cli.like("lr", 1e-3, "Adam learning rate of the timed steps"),
    "dense_repeats": (3, "timings of the dense reference ops (best taken)"),
    "skip_dense": (False, "do not time the dense reference ops (no % of the dense rate)"),
    "data_dir": (str(DEFAULT_DATA), "real data for the data-wait timing (any folder load_corpus reads)"),
    "data_steps": (20, "timed real-data training steps (0: skip)"),
    "data_window_s": (5.0, "window length of the real-data steps, seconds"),
    "num_workers": cli.like("num_workers", 0, "DataLoader workers of the real-data steps"),
    "profile": (False, "print torch.profiler's top ops of a training step"),
    "tf_reference": (None, "also time the reference TensorFlow VLAAI from PATH/model.py (a clone of exporl/vlaai); "
                           "skipped with a message when tensorflow is not installed", (str, type(None))),
    "json": (None, "also write all numbers to this file", (str, type(None))),
}
COMPILE_MODES = {"no": [False], "yes": [True], "both": [False, True]}


def parse_args(argv=None):
    a = options.parse(argv, KEYS, "throughput", __doc__.split("\n\n")[0])
    a.models = options.as_list(a.models, "models")
    bad = [m for m in a.models if m not in TRAINABLE]
    if bad or not a.models:
        raise SystemExit(f"--models: {bad or a.models} not trainable by gradient descent; choose from {TRAINABLE}")
    a.amp = options.as_list(a.amp, "amp")
    if not a.amp or any(s not in ("none", "bf16") for s in a.amp):
        raise SystemExit(f"--amp: comma list of none, bf16, got {a.amp}")
    if isinstance(a.compile, bool):  # --compile alone means yes
        a.compile = "yes" if a.compile else "no"
    if a.compile not in COMPILE_MODES:
        raise SystemExit(f"--compile: expected one of no, yes, both, got {a.compile!r}")
    a.compile_modes = COMPILE_MODES[a.compile]
    a.compile = a.compile != "no"
    if a.warmup < 1 or a.steps < 1:
        raise SystemExit("--warmup and --steps must be >= 1")
    if a.tf_reference is not None:
        a.tf_reference_file = tf_reference_file(a.tf_reference)
    return a


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}" if v == v else "-"


def fmt_pct(v) -> str:
    return f"{v:.1f}%" if v is not None and v == v else "-"


def _configure_torch(args) -> None:
    """Set torch's threads and determinism as train.py would, so the figures match real training."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.deterministic:  # as train.py's seed_everything does
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.utils.deterministic.fill_uninitialized_memory = bool(args.fill_uninitialized_memory)


def _print_header(info: dict, args) -> None:
    """Print the machine, the setup and the reference figures, so a pasted output can be judged alone."""
    print("== benchmarks/throughput.py")
    for k in ("date", "command", "git", "host", "cpu", "cpu_count", "avx512_bf16", "python", "torch", "threads",
              "interop_threads", "device", "gpu", "loadavg_at_start"):
        print(f"{k:>17s}: {info[k]}")
    print(f"{'setup':>17s}: batch {args.batch_size} x {args.window} samples x 64 channels, {args.warmup} warm-up + "
          f"{args.steps} timed steps, amp {args.amp}, compile {args.compile}, deterministic {bool(args.deterministic)} "
          f"(fill_uninitialized_memory {torch.utils.deterministic.fill_uninitialized_memory}), "
          f"num_workers {args.num_workers}")
    print("reference dense rates of host A (2 vCPUs of an AMD EPYC Zen 4): 256->256 kernel-8 conv1d "
          "~258 GFLOP/s, 4096^2 matmul ~181 GFLOP/s", flush=True)


def _dense_rates(args, device) -> dict:
    """{amp: dense_rate(...)} for float32 and each other --amp dtype (empty with --skip_dense): the
    machine's best dense rate, against which the models' FLOP/s are judged."""
    dense = {}
    if not args.skip_dense:
        for amp in ["none", *[a for a in args.amp if a != "none"]]:
            dt = torch.bfloat16 if amp == "bf16" else torch.float32
            d = dense_rate(device, dt, repeats=args.dense_repeats)
            dense[amp] = d
            print(f"\n[dense {d['dtype']}] matmul {d['matmul_n']}^2: {d['matmul_flops'] / 1e9:.1f} GFLOP/s; conv1d "
                  f"{d['conv_shape']}: {d['conv1d_flops'] / 1e9:.1f} GFLOP/s; best {d['best_flops'] / 1e9:.1f} "
                  f"GFLOP/s ({d['best_of']})", flush=True)
    return dense


def _model_flops(args) -> dict:
    """{model: FLOPs per sample} counted three ways (FlopCounterMode, the conv/linear calls and, for VLAAI,
    by hand), so that a wrong count shows up as a disagreement."""
    flops = {}
    cnt_batch = min(args.batch_size, 2)
    for name in args.models:
        torch.manual_seed(0)
        m = newmodel.build_model(name)
        f = flops_per_sample(m, args.window, cnt_batch)
        x, _, _, subj = (t.to("meta") for t in make_batch(cnt_batch, args.window))
        f["forward_calls"] = call_flops(m.to("meta"), x, subj) / (cnt_batch * args.window)
        if name == "vlaai":
            f["forward_hand"] = vlaai_hand_flops(args.window)
        flops[name] = f
        hand = (f"; by hand {f['forward_hand'] / 1e6:.3f} (counted/hand = {f['forward'] / f['forward_hand']:.4f})"
                if "forward_hand" in f else "")
        print(f"\n[flops {name}] per sample: forward {f['forward'] / 1e6:.3f} MFLOP (conv/linear calls "
              f"{f['forward_calls'] / 1e6:.3f}{hand}); training fwd+bwd {f['train'] / 1e6:.3f} MFLOP "
              f"(FlopCounterMode as counted: {f['train_counted'] / 1e6:.3f})", flush=True)
    return flops


def _throughput_runs(args, device, flops: dict, dense: dict) -> list[dict]:
    """Time every (amp, compile mode, model) on synthetic batches and express the rates as FLOP/s and
    as a share of the dense rates, both float32 and the run's own dtype."""
    runs = []
    for amp, comp_mode, name in [(a, c, n) for a in args.amp for c in args.compile_modes for n in args.models]:
        r = measure_model(name, device, batch=args.batch_size, window=args.window, steps=args.steps,
                          warmup=args.warmup, amp=amp, compile_model=comp_mode, lr=args.lr)
        f = flops[name]
        base = dense.get("none", {}).get("best_flops")
        own = dense.get(amp, {}).get("best_flops")
        r["train_flops_s"] = r["train_samples_s"] * f["train"]
        r["infer_flops_s"] = r["infer_samples_s"] * f["forward"]
        if base:
            r["train_pct_dense_fp32"] = 100 * r["train_flops_s"] / base
            r["infer_pct_dense_fp32"] = 100 * r["infer_flops_s"] / base
        if own:
            r["train_pct_dense_same_dtype"] = 100 * r["train_flops_s"] / own
            r["infer_pct_dense_same_dtype"] = 100 * r["infer_flops_s"] / own
        runs.append(r)
        comp = (f"; compile: train {r['compile_train_s']:.1f} s, inference {r['compile_infer_s']:.1f} s"
                if comp_mode else "")
        print(f"\n[speed {name} amp={amp}{' compiled' if comp_mode else ''}] train "
              f"{r['train_samples_s']:,.0f} samples/s ({r['train_step_s'] * 1e3:.0f} ms/step, "
              f"{r['train_flops_s'] / 1e9:.1f} GFLOP/s); inference {r['infer_samples_s']:,.0f} samples/s "
              f"({r['infer_step_s'] * 1e3:.0f} ms/batch, {r['infer_flops_s'] / 1e9:.1f} GFLOP/s){comp}",
              flush=True)
    return runs


def _tf_reference_run(args, device, flops: dict, dense: dict) -> dict | None:
    """measure_tf_reference() with this run's batch and threads, its FLOP/s by our VLAAI's counts
    (the same network); None when not asked or without tensorflow (then one line says so)."""
    if args.tf_reference is None:
        return None
    if device.type != "cpu":
        print("\n[tf reference] skipped: it is timed on the CPU only (run with --device=cpu)")
        return None
    r = measure_tf_reference(args.tf_reference_file, batch=args.batch_size, window=args.window, steps=args.steps,
                             warmup=args.warmup, threads=torch.get_num_threads(),
                             interop_threads=torch.get_num_interop_threads())
    if r is None:
        print("\n" + TF_MISSING, flush=True)
        return None
    f = flops.get("vlaai") or flops_per_sample(newmodel.build_model("vlaai"), args.window)
    r["train_flops_s"] = r["train_samples_s"] * f["train"]
    r["infer_flops_s"] = r["infer_samples_s"] * f["forward"]
    base = dense.get("none", {}).get("best_flops")
    if base:
        r["train_pct_dense_fp32"] = 100 * r["train_flops_s"] / base
        r["infer_pct_dense_fp32"] = 100 * r["infer_flops_s"] / base
    print(f"\n[speed tf_vlaai: TensorFlow {r['tensorflow']}, Keras {r['keras']}, oneDNN {r['onednn']}, "
          f"{r['float_policy']}, {r['params']:,} parameters, intra-op {r['intra_op_threads']} / inter-op "
          f"{r['inter_op_threads']} threads, env {r['env'] or '{}'}] train {r['train_samples_s']:,.0f} samples/s "
          f"({r['train_step_s'] * 1e3:.0f} ms/step, {r['train_flops_s'] / 1e9:.1f} GFLOP/s); inference "
          f"{r['infer_samples_s']:,.0f} samples/s ({r['infer_step_s'] * 1e3:.0f} ms/batch, "
          f"{r['infer_flops_s'] / 1e9:.1f} GFLOP/s)", flush=True)
    return r


def _data_waits(args, device) -> list[dict]:
    """data_wait() for every model on the real --data_dir (none when --data_steps is 0 or the folder
    is missing): whether loading keeps up with training. The corpus is read once for all models."""
    waits = []
    if args.data_steps > 0:
        if not Path(args.data_dir).is_dir():
            print(f"\n[data wait] skipped: {args.data_dir} is not a folder")
        else:
            from EEG_Dataset import load_corpus
            t0 = time.perf_counter()
            corpus = load_corpus(args.data_dir)
            t_load = time.perf_counter() - t0
            for name in args.models:
                w = data_wait(name, device, data_dir=args.data_dir, steps=args.data_steps, warmup=args.warmup,
                              batch=args.batch_size, window_s=args.data_window_s, num_workers=args.num_workers,
                              amp=args.amp[0], compile_model=args.compile_modes[-1], lr=args.lr, corpus=corpus)
                w["load_corpus_s"] = t_load
                waits.append(w)
                print(f"\n[data wait {name} amp={w['amp']}] {args.data_dir}: {w['windows_per_epoch']} windows/epoch, "
                      f"{w['steps']} timed steps ({w['epochs_touched']} epochs touched), num_workers "
                      f"{w['num_workers']}: waiting {w['wait_s']:.3f} s of {w['step_total_s']:.2f} s = "
                      f"{100 * w['wait_share']:.2f} % (target < 5 %); real-data training "
                      f"{w['train_samples_s']:,.0f} samples/s; load_corpus {t_load:.2f} s", flush=True)
    return waits


def _print_summary(info: dict, dense: dict, flops: dict, runs: list[dict], waits: list[dict],
                   tf_ref: dict | None = None) -> None:
    """Print the closing table: every figure once more in one place, with the machine's load during
    the run, since other processes make the figures unreliable."""
    other = info["other_processes_cores"]
    state = "IDLE" if other < 0.1 else "LOADED (figures are not clean)"
    print("\n== summary")
    print(f"{info['date']}  {info['command']}")
    print(f"torch {info['torch']}, {info['threads']} threads, {info['device']} ({info['gpu'] or info['cpu']}, "
          f"{info['cpu_count']} CPUs, {info['cpu_capability']} kernels"
          + (f", {' '.join(f'{k}={v}' for k, v in info['isa_env'].items())}" if info["isa_env"] else "")
          + f"); other processes kept {other:.2f} cores busy on average during the run: machine {state}")
    if dense:
        d = dense["none"]
        print(f"dense fp32: matmul {d['matmul_flops'] / 1e9:.1f}, conv1d {d['conv1d_flops'] / 1e9:.1f} GFLOP/s "
              f"(reference: ~{REFERENCE['matmul_gflops']:.0f} and ~{REFERENCE['conv1d_gflops']:.0f})"
              + "".join(f"; dense {v['dtype']}: matmul {v['matmul_flops'] / 1e9:.1f}, conv1d "
                        f"{v['conv1d_flops'] / 1e9:.1f}" for k, v in dense.items() if k != "none"))
    hdr = (f"{'model':12s} {'amp':4s} {'compiled':8s} {'MFLOP/sample fwd | train':>24s} {'train samples/s':>16s} "
           f"{'infer samples/s':>16s} {'train % dense':>13s} {'infer % dense':>13s}")
    print(hdr)
    print("-" * len(hdr))
    for r in runs:
        f = flops[r["model"]]
        print(f"{r['model']:12s} {r['amp']:4s} {'yes' if r['compile'] else 'no':8s} {f['forward'] / 1e6:11.3f} | "
              f"{f['train'] / 1e6:10.3f} "
              f"{fmt_rate(r['train_samples_s']):>16s} {fmt_rate(r['infer_samples_s']):>16s} "
              f"{fmt_pct(r.get('train_pct_dense_fp32')):>13s} {fmt_pct(r.get('infer_pct_dense_fp32')):>13s}")
    if tf_ref:
        print(f"{'tf_vlaai':12s} {'none':4s} {'no':8s} {'(as vlaai)':>24s} {fmt_rate(tf_ref['train_samples_s']):>16s} "
              f"{fmt_rate(tf_ref['infer_samples_s']):>16s} {fmt_pct(tf_ref.get('train_pct_dense_fp32')):>13s} "
              f"{fmt_pct(tf_ref.get('infer_pct_dense_fp32')):>13s}")
        for r in runs:
            print(f"{r['model']} ({r['amp']}{', compiled' if r['compile'] else ''}) / TensorFlow VLAAI: training "
                  f"x{r['train_samples_s'] / tf_ref['train_samples_s']:.2f}, inference "
                  f"x{r['infer_samples_s'] / tf_ref['infer_samples_s']:.2f}")
    print("(% dense: achieved FLOP/s over the best float32 dense rate measured above; training FLOPs are "
          "forward+backward, corrected for grouped convs; LayerNorm/activations/loss/Adam are not FLOPs here)")
    for w in waits:
        print(f"data wait {w['model']:12s} {100 * w['wait_share']:6.2f} % of step time "
              f"({'meets' if w['wait_share'] < 0.05 else 'MISSES'} the < 5 % target), num_workers {w['num_workers']}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    _configure_torch(args)
    device = runtime.pick_device(args.device)
    load = LoadMeter()
    info = machine_info(device)
    _print_header(info, args)
    result = {"machine": info, "args": {k: v for k, v in vars(args).items()}, "reference": REFERENCE}
    dense = _dense_rates(args, device)
    result["dense"] = dense
    flops = _model_flops(args)
    result["flops_per_sample"] = flops
    runs = _throughput_runs(args, device, flops, dense)
    result["throughput"] = runs
    tf_ref = _tf_reference_run(args, device, flops, dense)
    result["tf_reference"] = tf_ref
    waits = _data_waits(args, device)
    result["data_wait"] = waits

    if args.profile:
        for name in args.models:
            print(f"\n[profile {name} amp={args.amp[0]}] 2 training steps, batch {args.batch_size} x {args.window}")
            print(profile_step(name, device, batch=args.batch_size, window=args.window, amp=args.amp[0]))

    info["other_processes_cores"] = load.other_cores()
    info["loadavg_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    _print_summary(info, dense, flops, runs, waits, tf_ref)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
