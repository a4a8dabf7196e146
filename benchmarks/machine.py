"""The machine a benchmark runs on, for its record: CPU model and flags, the load other processes
put on the CPUs during a run (``LoadMeter``), the code's git commit, the command line, and torch's
threads and device (``machine_info``).
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _proc_stat_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan"), float("nan")
    hz = os.sysconf("SC_CLK_TCK")
    idle = v[3] + (v[4] if len(v) > 4 else 0.0)
    total = sum(v[:8])
    return (total - idle) / hz, total / hz


class LoadMeter:
    """CPU time used by *other* processes while this one runs: machine busy time minus our own."""

    def __init__(self):
        self.t0 = time.time()
        self.busy0, _ = _proc_stat_busy()
        self.own0 = self._own()

    @staticmethod
    def _own() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def other_cores(self) -> float:
        """Mean number of cores kept busy by other processes since the start."""
        busy, _ = _proc_stat_busy()
        wall = max(time.time() - self.t0, 1e-9)
        return max(0.0, (busy - self.busy0) - (self._own() - self.own0)) / wall


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "benchmarks"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" (benchmarks/ modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


def command_line() -> str:
    """This process's command line, as typed from the repo root (``python -m benchmarks.X ...``)."""
    prog = Path(sys.argv[0]).resolve()
    if prog.parent == REPO / "benchmarks":
        return shlex.join(["python", "-m", f"benchmarks.{prog.stem}", *sys.argv[1:]])
    return shlex.join([Path(sys.executable).name, *sys.argv])


def machine_info(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in cpu_flags(),
        # the kernels torch runs; an AVX-512 machine can be limited to AVX2 ones (benchmarks/demo_time.py)
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
                    if k in os.environ},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "git": git_commit(),
        "loadavg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    return info
