"""Wall time of the README demo, as a new user runs it: a fresh clone, a new venv, the command.

    python -m benchmarks.demo_time                       # this machine as it is
    python -m benchmarks.demo_time --isa=avx2            # torch, oneDNN and MKL limited to AVX2
    python -m benchmarks.demo_time --json=demo_time.json

Clones the repository's committed HEAD into a temporary folder, then runs the demo command it
finds in the README ("python3 -m venv .venv && ... && python train.py && python test.py") there,
timing each of its steps. pip installs from its cache when the wheels are in it. A 4096^2 float32
matmul with 2 threads (``benchmarks.throughput.dense_rate``), timed before and after the demo in
the same environment, gives the machine's dense rate; the demo's time scaled by (this rate /
``--ref_gflops``) estimates it on a host of that rate (default 67 GFLOP/s: the 2-core AVX2 host of
the speed targets). Every step is scaled, the install too, though pip barely uses vector units: an
upper estimate.

``--isa=avx2`` sets ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS so that
an AVX-512 machine runs the AVX2 code paths: the kernels an AVX2 host would run, at this machine's
clock and core.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import options
from fileio import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
MATMUL = ("import json, torch; torch.set_num_threads(2); from benchmarks.throughput import dense_rate; "
          "print(json.dumps({'gflops': dense_rate(torch.device('cpu'))['matmul_flops'] / 1e9, "
          "'capability': torch.backends.cpu.get_cpu_capability()}))")


def readme_demo_command(readme: Path) -> str:
    """The README's demo command: the line that creates the venv and ends with train.py and test.py."""
    for line in readme.read_text().splitlines():
        line = line.strip()
        if line.startswith("python3 -m venv") and line.endswith("python train.py && python test.py"):
            return line
    raise SystemExit(f"{readme}: no demo command (a line 'python3 -m venv ... && python train.py && python test.py')")


def matmul_rate(env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", MATMUL], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_timed(command: str, cwd: Path, env: dict, log: Path) -> list[tuple[str, float]]:
    """Run ``command`` (steps joined by ' && ') in one bash, timestamping after every step.
    Returns [(step, seconds)]; exits naming the log when a step fails."""
    steps = [s.strip() for s in command.split("&&")]
    script = ["echo \"@@ start $(date +%s.%N)\""]
    for i, step in enumerate(steps):
        script.append(f"{step} && echo \"@@ {i} $(date +%s.%N)\"")
    with open(log, "w") as f:
        rc = subprocess.run(["bash", "-c", " && ".join(script)], cwd=cwd, env=env, stdout=f,
                            stderr=subprocess.STDOUT).returncode
    stamps = [float(m.group(2)) for m in re.finditer(r"^@@ (start|\d+) (\S+)$", log.read_text(), re.M)]
    if rc != 0 or len(stamps) != len(steps) + 1:
        raise SystemExit(f"the demo failed (exit {rc}) after {len(stamps) - 1} of {len(steps)} steps; see {log}")
    return [(s, b - a) for s, (a, b) in zip(steps, itertools.pairwise(stamps), strict=True)]


# The tool's keys: (default, comment[, accepted types]).
KEYS = {
    "isa": ("native", "instruction set torch may use: native or avx2"),
    "ref_gflops": (67.0, "dense rate of the host to estimate for"),
    "work": (None, "folder for the clone (None: a new temporary folder)", (str, type(None))),
    "json": (None, "also write the result here", (str, type(None))),
}


def parse_args(argv=None):
    args = options.parse(argv, KEYS, "demo_time", __doc__)
    if args.isa not in ("native", "avx2"):
        raise SystemExit(f"--isa: expected native or avx2, got {args.isa!r}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)

    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    if dirty:
        print(f"note: uncommitted changes are not timed; the clone holds HEAD {commit}", flush=True)
    # the demo makes and activates its own venv: leave ours out of its environment
    venv = os.environ.get("VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", *AVX2_ENV)}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not (venv and p.startswith(venv)))
    if args.isa == "avx2":
        env.update(AVX2_ENV)
    work = Path(args.work or tempfile.mkdtemp(prefix="demo_time_"))
    clone = work / "xf-eeg"
    if clone.exists():  # never reuse or overwrite an earlier clone
        raise SystemExit(f"{clone} exists: give another --work folder")
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    command = readme_demo_command(clone / "README.md")
    load = os.getloadavg()[0]
    before = matmul_rate(env)
    print(f"commit {commit}, isa {args.isa} (torch capability {before['capability']}), 1-minute load {load:.2f}\n"
          f"matmul before: {before['gflops']:.1f} GFLOP/s\nrunning in {clone}: {command}", flush=True)
    t0 = time.perf_counter()
    steps = run_timed(command, clone, env, work / "demo.log")
    total = time.perf_counter() - t0
    after = matmul_rate(env)
    rate = (before["gflops"] + after["gflops"]) / 2
    scale = rate / args.ref_gflops
    log = (work / "demo.log").read_text()
    score = re.findall(r"^score \(seed \d+\): total (\S+)", log, re.M)
    epochs = re.findall(r"epoch\s+(\d+) .* ([\d.]+)s \(data wait", log)
    print(f"matmul after: {after['gflops']:.1f} GFLOP/s; scale to a {args.ref_gflops:g} GFLOP/s host: x{scale:.2f}\n")
    print(f"{'step':<40} {'here, s':>9} {'scaled, s':>10}")
    for step, s in steps:
        print(f"{step[:40]:<40} {s:9.1f} {s * scale:10.1f}")
    print(f"{'total':<40} {total:9.1f} {total * scale:10.1f}")
    print(f"\nscore {score[-1] if score else '?'}, {len(epochs)} epochs"
          + (f", {sum(float(e[1]) for e in epochs) / len(epochs):.1f} s each" if epochs else ""))
    result = {"commit": commit, "isa": args.isa, "load_1min": load, "matmul_gflops_before": before["gflops"],
              "matmul_gflops_after": after["gflops"], "ref_gflops": args.ref_gflops, "scale": scale,
              "steps": [{"step": s, "seconds": t} for s, t in steps], "total_s": total,
              "estimate_s": total * scale, "score": float(score[-1]) if score else None, "epochs": len(epochs),
              "command": command, "log": str(work / "demo.log")}
    if args.json:
        atomic_write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
