"""Peak memory of loading a data folder and iterating one epoch of training windows.

    python -m experiments.dataset_memory [--data_dir=../shared/data/dtu] [--window_s=5] [--batch_size=64]

Prints the on-disk size, the RSS after imports (Python + torch, before any data), and the peak
RSS while loading and iterating one epoch (every train window once through a DataLoader).
"""
from __future__ import annotations

import resource
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import cli
from EEG_Dataset import WindowDataset, load_corpus

OPTIONS = {
    "data_dir": ("../shared/data/dtu", "the data folder to load (any format load_corpus reads)"),
    "window_s": cli.like("window_s"),
    "batch_size": cli.like("batch_size", 64, "windows per batch"),
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> None:
    cfg, _ = cli.parse_or_exit(argv, program=None, extra=OPTIONS)
    data_dir = Path(cfg["data_dir"])
    window = int(cfg["window_s"] * 64)
    bs = cfg["batch_size"]
    disk_mb = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file()) / 2**20
    base = rss_mb()
    t0 = time.time()
    corpus = load_corpus(data_dir)
    t_load = time.time() - t0
    after_load = rss_mb()
    ds = WindowDataset(corpus.recordings, window, seed=1)
    n = 0
    t0 = time.time()
    for batch in DataLoader(ds, batch_size=bs):
        n += int(batch["mask"].sum())
    t_epoch = time.time() - t0
    peak = peak_mb()
    print(f"data: {data_dir} ({corpus.fmt}), {len(corpus.recordings)} recordings, {disk_mb:.1f} MiB on disk")
    print(f"RSS after imports (python + torch, no data): {base:.1f} MiB")
    print(f"RSS after loading: {after_load:.1f} MiB (load took {t_load:.2f} s)")
    print(f"one epoch: {len(ds)} windows, {n} train samples, {t_epoch:.2f} s")
    print(f"peak RSS: {peak:.1f} MiB; above the import baseline: {peak - base:.1f} MiB "
          f"= {(peak - base) / disk_mb:.2f} x the data on disk")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
