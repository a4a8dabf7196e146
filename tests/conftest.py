"""Shared test fixtures."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _restore_global_torch_state():
    """train.main sets torch threads, deterministic algorithms and the RNG process-wide (and
    may set environment variables): undo that after each test module."""
    state = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_rng_state(), dict(os.environ),
             torch.utils.deterministic.fill_uninitialized_memory)
    yield
    torch.set_num_threads(state[0])
    torch.use_deterministic_algorithms(state[1], warn_only=state[2])
    torch.set_rng_state(state[3])
    os.environ.clear()
    os.environ.update(state[4])
    torch.utils.deterministic.fill_uninitialized_memory = state[5]
