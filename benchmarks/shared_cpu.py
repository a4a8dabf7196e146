"""Training speed when the CPU is shared: each setting timed idle and beside competing CPU-bound
processes that this script starts itself, in one run.

    python -m benchmarks.shared_cpu                          # ivlaai, OMP_WAIT_POLICY unset / passive / active
    python -m benchmarks.shared_cpu --load=2 --steps=30      # two competing processes

For every OpenMP wait policy in ``--policies`` a fresh child process (the policy must be set before
torch loads its OpenMP runtime) times ``--steps`` training steps of ``--model`` (batch 64 x 5 s x
64 channels, train.py's step: forward, Pearson loss, backward, Adam) with ``--threads`` threads
(0: one per core), first on an idle machine, then with ``--load`` busy-looping processes running.
Prints seconds per step and the slowdown loaded / idle. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time

import cli
from benchmarks import options

CHILD = r"""
import json, sys, time, torch  # run from the repository root: newmodel imports from there
import newmodel
from metrics import pearson_loss
model_name, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if threads > 0:
    torch.set_num_threads(threads)
torch.manual_seed(0)
m = newmodel.build_model(model_name)
opt = torch.optim.Adam(m.parameters(), 1e-3)
x, y = torch.randn(64, 320, 64), torch.randn(64, 320, 1)
def step():
    loss = pearson_loss(m(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
for _ in range(2):
    step()
t = []
for _ in range(steps):
    t0 = time.perf_counter(); step(); t.append(time.perf_counter() - t0)
t.sort()
print(json.dumps({"median_s": t[len(t) // 2], "threads": torch.get_num_threads()}))
"""


def _burn(stop) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2**31


def time_child(model: str, threads: int, steps: int, policy: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy.startswith("spin="):  # GNU OpenMP: spin this many times before sleeping
        env["GOMP_SPINCOUNT"] = policy[5:]
    elif policy != "unset":  # unset: the OpenMP runtime's own default (spin a while, then sleep)
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(threads), str(steps)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# The tool's keys: (default, comment[, accepted types]).
KEYS = {
    "model": ("ivlaai", "the model whose training steps are timed"),
    "threads": cli.like("threads", 0, "torch threads in the timed process (0: one per core)"),
    "steps": (20, "timed training steps per setting (the median is reported)"),
    "load": (1, "competing busy-looping processes"),
    "policies": (["unset", "PASSIVE", "ACTIVE"], "OMP_WAIT_POLICY values to compare, e.g. --policies=unset,PASSIVE "
                 "(unset: the runtime's default; spin=N: GOMP_SPINCOUNT=N)", (list, str)),
}


def parse_args(argv=None):
    args = options.parse(argv, KEYS, "shared_cpu", __doc__)
    args.policies = options.as_list(args.policies, "policies")
    if not args.policies:
        raise SystemExit("--policies: give at least one, e.g. --policies=unset,PASSIVE")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    print(f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores; model {args.model}, threads "
          f"{args.threads or 'default'}, {args.steps} steps, {args.load} competing process(es)", flush=True)
    rows = {}
    for policy in args.policies:
        idle = time_child(args.model, args.threads, args.steps, policy)
        stop = mp.Event()
        burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.load)]
        for b in burners:
            b.start()
        try:
            time.sleep(0.5)
            loaded = time_child(args.model, args.threads, args.steps, policy)
        finally:
            stop.set()
            for b in burners:
                b.join()
        rows[policy] = {"idle_s": idle["median_s"], "loaded_s": loaded["median_s"],
                        "slowdown": loaded["median_s"] / idle["median_s"], "threads": idle["threads"]}
        print(f"{policy:8s} threads {idle['threads']}: idle {idle['median_s']:.3f} s/step, "
              f"loaded {loaded['median_s']:.3f} s/step, slowdown x{rows[policy]['slowdown']:.2f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
