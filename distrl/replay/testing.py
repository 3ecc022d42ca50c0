"""Synthetic trajectories for replay tests and benchmarks (no env needed).

Rows are identifiable: row b of ``example_trajectory(start=s)`` has ``env_step == s + b`` and
``reward[:, b] == s + b``, and every observation leaf is filled with ``(s + b) % 128`` unless ``random_obs``.

Usage::

    traj = example_trajectory(T=80, B=16, obs=MINIHACK_OBS, core_state={"h": ((256,), np.float32)})
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from distrl.types import Trajectory

LeafShapes = Mapping[str, tuple[tuple[int, ...], type | np.dtype]]

MINIHACK_OBS: dict[str, tuple[tuple[int, ...], type | np.dtype]] = {
    "glyphs": ((21, 79), np.int16),
    "chars": ((21, 79), np.uint8),
    "colors": ((21, 79), np.uint8),
    "specials": ((21, 79), np.uint8),
    "glyphs_crop": ((9, 9), np.int16),
    "blstats": ((27,), np.int64),
    "message": ((256,), np.uint8),
}
"""NLE/MiniHack observation keys with their shapes and dtypes."""

LSTM_STATE: dict[str, tuple[tuple[int, ...], type | np.dtype]] = {
    "h": ((256,), np.float32),
    "c": ((256,), np.float32),
}
"""A one-layer LSTM core state of width 256 (2 x 256 float32)."""


def example_trajectory(
    T: int = 5,
    B: int = 4,
    *,
    num_actions: int = 3,
    obs: LeafShapes | None = None,
    core_state: LeafShapes | None = None,
    start: int = 0,
    policy_version: int = 0,
    random_obs: bool = False,
    seed: int = 0,
) -> Trajectory:
    """A Trajectory ``[T, B]`` with the given observation and core-state leaves (see module docstring)."""
    obs = {"x": ((2,), np.uint8)} if obs is None else obs
    core_state = {"h": ((8,), np.float32)} if core_state is None else core_state
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(start, start + B, dtype=torch.int64)
    obs_t: dict[str, torch.Tensor] = {}
    for k, (shape, dt) in obs.items():
        tdt = torch.from_numpy(np.zeros(0, dtype=dt)).dtype
        if random_obs:
            hi = 2 if tdt == torch.bool else 100
            v = torch.randint(0, hi, (T + 1, B, *shape), generator=g).to(tdt)
        else:
            v = (rows % 128).view(1, B, *([1] * len(shape))).expand(T + 1, B, *shape).to(tdt).contiguous()
        obs_t[k] = v
    cs = {
        k: torch.randn((B, *shape), generator=g).to(torch.from_numpy(np.zeros(0, dtype=dt)).dtype)
        for k, (shape, dt) in core_state.items()
    }
    return Trajectory(
        obs=obs_t,
        action=torch.randint(0, num_actions, (T, B), generator=g),
        reward=rows.to(torch.float32).view(1, B).expand(T, B).contiguous(),
        terminated=torch.zeros(T, B, dtype=torch.bool),
        truncated=torch.zeros(T, B, dtype=torch.bool),
        truncation_value=torch.zeros(T, B),
        behaviour_logits=torch.randn((T, B, num_actions), generator=g),
        episodic_bonus=torch.zeros(T, B),
        duration=torch.full((T, B), 0.01),
        valid=torch.ones(T, B, dtype=torch.bool),
        core_state=cs,
        policy_version=torch.full((B,), policy_version, dtype=torch.int64),
        actor_id=torch.zeros(B, dtype=torch.int64),
        env_step=rows.clone(),
    )
