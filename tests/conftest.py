"""Shared fixtures: RNG isolation and one real local Ray cluster per test session."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _prevent_leaking_rng():
    """Seed torch/numpy/random for each test and restore their state afterwards."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray cluster on loopback, started once per session (num_cpus explicit: this is a 2-core box)."""
    import ray  # a dependency of distrl: a broken install must fail these tests, not skip them

    from distrl.runtime.ray_start import init_local_ray  # every listener on 127.0.0.1, as a run's own cluster

    if not ray.is_initialized():
        init_local_ray(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
