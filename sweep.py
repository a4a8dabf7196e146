"""Run several training processes at once (seed sweeps, benchmark runs), one GPU each when several
are visible, else the CPU cores split between them."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import runtime


def visible_gpus(device: str) -> list[str]:
    if runtime.pick_device(device).type != "cuda":
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]


def threads_per_job(threads: int, jobs: int) -> int:
    """CPU threads for each of ``jobs`` processes: ``threads`` when set, else the cores split evenly."""
    return threads or max(1, (os.cpu_count() or 1) // max(1, jobs))


def _start(task: dict, gpu: str | None):
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    Path(task["log"]).parent.mkdir(parents=True, exist_ok=True)
    log = open(task["log"], "a")
    print(f"  {task['key']}: started (log {task['log']})", flush=True)
    return subprocess.Popen(task["cmd"], stdout=log, stderr=subprocess.STDOUT, env=env), log


def _report(key: str, proc, log_path) -> None:
    lines = Path(log_path).read_text().strip().splitlines()
    state = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    print(f"  {key}: {state}: {lines[-1] if lines else ''}", flush=True)


def run_pool(tasks: list[dict], jobs: int, gpus: list[str], on_done=None) -> list:
    """Run child processes, ``jobs`` at a time. A task is {'key', 'cmd', 'log'}; its output is
    appended to 'log' (a rerun never erases an earlier log). With GPUs, child i sees GPU i mod n.
    ``on_done(key, returncode)`` is called as each one ends. Returns the keys of failed tasks."""
    pending, running, failed, started, ended = list(tasks), {}, [], 0, []
    try:
        while pending or running or ended:
            while pending and len(running) < jobs:
                task = pending.pop(0)
                proc, log = _start(task, gpus[started % len(gpus)] if gpus else None)
                running[task["key"]] = (proc, log, task)
                started += 1
            # on_done runs after the free slots are refilled, so that no core idles while it works
            for key, returncode in ended:
                on_done(key, returncode)
            ended = []
            time.sleep(0.2)
            for key, (proc, log, task) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[key]
                _report(key, proc, task["log"])
                if proc.returncode != 0:
                    failed.append(key)
                if on_done is not None:
                    ended.append((key, proc.returncode))
    except KeyboardInterrupt:  # the children got the same Ctrl-C; a SIGTERM reached only this process
        for proc, _, _ in running.values():
            if runtime.TERMINATED:
                proc.terminate()
        for proc, _, _ in running.values():
            proc.wait()
        raise
    return failed


def run_sweep(cfg: dict, argv: list[str], script) -> None:
    """Train ``cfg['seeds']`` as child processes of ``script`` (train.py), ``cfg['jobs']`` at a time: one GPU
    each when several are visible, else the CPU cores split between them. Logs: run_dir/<model>/logs/."""
    seeds, jobs, gpus = cfg["seeds"], cfg["jobs"], visible_gpus(cfg["device"])
    threads = threads_per_job(cfg["threads"], min(jobs, len(seeds)))
    base = [a for a in argv if a.split("=", 1)[0] not in ("--seeds", "--jobs", "--threads")]
    log_dir = Path(cfg["run_dir"]) / cfg["model"] / "logs"
    print(f"seed sweep: {len(seeds)} seeds, {jobs} at a time, "
          + (f"one GPU each ({','.join(gpus)})" if gpus else f"{threads} CPU threads each") + f"; logs in {log_dir}/",
          flush=True)
    tasks = [{"key": f"seed {seed}", "log": log_dir / f"seed-{seed}.log",
              "cmd": [sys.executable, str(script), *base, f"--seeds=[{seed}]", "--jobs=1",
                      f"--threads={threads}"]} for seed in seeds]
    failed = [int(k.split()[1]) for k in run_pool(tasks, jobs, gpus)]
    if failed:
        raise SystemExit(f"seed sweep: seeds {failed} failed; see their logs in {log_dir}/")
