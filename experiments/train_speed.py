"""Training and inference throughput of each model on this machine (samples = EEG time steps).

    python -m experiments.train_speed [--models=[vlaai,ivlaai]] [--batch_size=64] [--window=320] [--steps=5]

A model may carry build options after colons, e.g. ``--models=[ivlaai,ivlaai:ivlaai_separable=True]``
(the model keys of config.py, cli.model_keys(); values as Python literals).
``python -m benchmarks.throughput`` measures the same rates with the machine's load, FLOPs and the
dense rate beside them.
"""
from __future__ import annotations

import time

import torch

import cli
import newmodel
from experiments import as_list
from metrics import pearson_loss

OPTIONS = {
    "models": (["vlaai", "ivlaai", "linear_conv"], "models to time; 'name:key=value' adds a build option"),
    "batch_size": cli.like("batch_size", 64, "windows per step"),
    "window": (320, "samples per window"),
    "steps": (5, "timed steps (training and inference each), after one untimed step"),
}


def main(argv=None) -> None:
    cfg, _ = cli.parse_or_exit(argv, program=None, extra=OPTIONS)
    models = [str(m) for m in as_list(cfg["models"])]
    bs, win, steps = cfg["batch_size"], cfg["window"], cfg["steps"]
    torch.manual_seed(0)
    x, y = torch.randn(bs, win, 64), torch.randn(bs, win, 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {bs} x {win} samples x 64 channels")
    for spec in models:
        name, *opts = spec.split(":")
        build = {}
        for opt in opts:
            key, eq, value = opt.partition("=")
            if key not in cli.model_keys():
                raise SystemExit(f"--models: unknown build option {key!r} in {spec!r}; "
                                 f"valid: {', '.join(cli.model_keys())}")
            default, value = cli.defaults()[key], cli.literal(value)
            if not eq or type(value) is not type(default) and not (type(default) is float and type(value) is int):
                raise SystemExit(f"--models: build option {opt!r} in {spec!r} needs a "
                                 f"{type(default).__name__} value, e.g. {key}={default!r}")
            build[key] = value
        m = newmodel.build_model(name, **build)
        opt = torch.optim.Adam(m.parameters())
        m.train()
        for i in range(steps + 1):
            if i == 1:  # the first step warms up allocators and kernels
                t0 = time.perf_counter()
            loss = pearson_loss(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        train = bs * win * steps / (time.perf_counter() - t0)
        m.eval()
        with torch.no_grad():
            m(x)
            t0 = time.perf_counter()
            for _ in range(steps):
                m(x)
            infer = bs * win * steps / (time.perf_counter() - t0)
        n = sum(p.numel() for p in m.parameters())
        print(f"{spec:12s} {n:>9,d} params  train {train:>9,.0f} samples/s  inference {infer:>10,.0f} samples/s")


if __name__ == "__main__":
    main()
