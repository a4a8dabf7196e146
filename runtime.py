"""Where and how a process computes: device, threads, seeds, autocast, DDP, and SIGTERM."""
from __future__ import annotations

import contextlib
import os
import random
import signal

import numpy as np
import torch
import torch.distributed as dist


def pick_device(name: str) -> torch.device:
    """'auto' (CUDA when torch sees a GPU), 'cpu' or 'cuda'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device=cuda but torch sees no CUDA GPU (install a CUDA build of torch, see README)")
    return torch.device(name)


def set_threads(threads: int) -> None:
    """``threads`` > 0: use that many torch CPU threads (0: torch's default, one per core)."""
    if threads > 0:
        torch.set_num_threads(threads)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; with ``deterministic``, one seed gives one model on one machine."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN, a debugging aid that cost up to
        # ~18 % of an ivlaai training step (benchmarks/throughput.py); it changes no result.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def data_stream_seed(data_seed: int) -> int:
    """The torch seed of a run's dropout masks, drawn from ``data_seed`` apart from the stream that
    initialized the weights, so that the initial weights and the training randomness vary apart."""
    return int(np.random.SeedSequence([int(data_seed), 1]).generate_state(1, np.uint64)[0])


def bf16_is_fast(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (a CUDA GPU with bf16, or a CPU
    with AMX tiles, as torch's own CPU probe reports them), and why. Elsewhere bf16 autocast
    costs conversions without faster matrix units: no speed-up, or a slowdown."""
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"GPU {torch.cuda.get_device_name(device)} {'runs' if ok else 'lacks'} bfloat16"
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if caps.get("amx_bf16") and torch.cpu._init_amx():  # _init_amx: the OS grants this process the tiles
        return True, f"CPU {caps.get('cpu_name', '')} has AMX bfloat16 tiles".replace("  ", " ")
    return False, f"CPU {caps.get('cpu_name', '')} has no AMX bfloat16 tiles".replace("  ", " ")


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """(the precision to run: 'bf16' or 'none', why). 'auto' is bf16 where the device runs it fast."""
    if amp == "auto":
        fast, why = bf16_is_fast(device)
        return ("bf16" if fast else "none"), f"amp=auto: {why}"
    return amp, f"amp={amp}"


def precision_name(amp: str) -> str:
    return "bfloat16 autocast" if amp == "bf16" else "float32"


def autocast(device: torch.device, amp: str):
    """bfloat16 autocast for ``amp='bf16'`` (the loss is still computed in float32)."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- DDP (torchrun)


def dist_setup(device_name: str) -> tuple[int, int, int]:
    """(rank, world_size, local_rank). Under torchrun (WORLD_SIZE > 1) this starts the process
    group: nccl when training on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = pick_device(device_name).type == "cuda"
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, local


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def dist_teardown() -> None:
    """Every rank done with every collective before any tears its group down: a rank that exits
    early can make the other ranks' gloo threads abort at exit."""
    if world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- signals

TERMINATED = False  # set when SIGTERM arrived, so a process pool passes it on to its children


def _on_sigterm(signum, frame) -> None:
    global TERMINATED
    TERMINATED = True
    raise KeyboardInterrupt


def sigterm_as_interrupt() -> None:
    """SIGTERM (``kill``, a job scheduler) acts as Ctrl-C: the program stops the way it does on
    Ctrl-C, and a process pool tells its children too."""
    signal.signal(signal.SIGTERM, _on_sigterm)
