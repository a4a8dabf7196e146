"""Training and inference throughput of each model on this machine (samples = EEG time steps).

    python benchmarks/train_speed.py [--models=vlaai,ivlaai] [--batch_size=64] [--window=320] [--steps=5]

A model may carry build options after colons, e.g. ``--models=ivlaai,ivlaai:ivlaai_separable=True``
(keys of newmodel.MODEL_DEFAULTS, values as Python literals).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import newmodel  # noqa: E402
from config import literal  # noqa: E402
from metrics import pearson_loss  # noqa: E402


def main() -> None:
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    models = args.get("models", "vlaai,ivlaai,linear_conv").split(",")
    bs, win, steps = int(args.get("batch_size", 64)), int(args.get("window", 320)), int(args.get("steps", 5))
    torch.manual_seed(0)
    x, y = torch.randn(bs, win, 64), torch.randn(bs, win, 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {bs} x {win} samples x 64 channels")
    for spec in models:
        name, *opts = spec.split(":")
        cfg = {}
        for opt in opts:
            key, eq, value = opt.partition("=")
            if key not in newmodel.MODEL_DEFAULTS:
                raise SystemExit(f"--models: unknown build option {key!r} in {spec!r}; "
                                 f"valid: {', '.join(newmodel.MODEL_DEFAULTS)}")
            default, value = newmodel.MODEL_DEFAULTS[key], literal(value)
            if not eq or type(value) is not type(default) and not (type(default) is float and type(value) is int):
                raise SystemExit(f"--models: build option {opt!r} in {spec!r} needs a "
                                 f"{type(default).__name__} value, e.g. {key}={default!r}")
            cfg[key] = value
        m = newmodel.build_model(name, **cfg)
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
