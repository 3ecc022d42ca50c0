"""Synthetic trajectories for tests and benchmarks (no env needed).

* :func:`random_trajectory`: a random, *valid* Trajectory with every field, built from the field declaration
  (``Trajectory.step_fields()``), so a newly declared per-step field is filled without touching this module.
  Use it wherever a test needs "some trajectory" (learner steps, replay round trips).
* :func:`example_trajectory`: identifiable rows for replay tests: row b of ``example_trajectory(start=s)`` has
  ``env_step == s + b`` and ``reward[:, b] == s + b``, every observation leaf filled with ``(s + b) % 128``
  unless ``random_obs``, and no episode ends.

Usage::

    traj = random_trajectory(T=8, B=5, num_actions=4, obs={"x": ((3,), np.float32)}, core_state=agent.initial_state(5))
    traj = example_trajectory(T=80, B=16, obs=MINIHACK_OBS, core_state={"h": ((256,), np.float32)})
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch

from distrl.types import StepField, Trajectory

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


def _torch_dtype(dt: type | np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dt)).dtype


def _random(shape: tuple[int, ...], dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Floats standard normal, integers in [0, 100), bools fair coins."""
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) < 0.5
    return torch.randint(0, 100, shape, generator=g).to(dtype)


def random_trajectory(
    T: int = 5,
    B: int = 4,
    *,
    num_actions: int = 3,
    obs: LeafShapes | None = None,
    core_state: LeafShapes | Mapping[str, torch.Tensor] | None = None,
    done_prob: float = 0.15,
    policy_version: int = 0,
    actor_id: int = 0,
    env_step: int = 0,
    seed: int = 0,
    trajectory_type: type[Trajectory] = Trajectory,
    **steps: torch.Tensor,
) -> Trajectory:
    """A random, valid Trajectory ``[T, B]`` with every field of ``trajectory_type``'s declaration.

    ``obs`` / ``core_state``: leaf name -> (shape, dtype) (default one ``"x"`` [2] uint8 observation and an
    ``"h"`` [8] float32 state), filled randomly (floats normal, integers in [0, 100)); ``core_state`` may also
    be a ready state (tensors ``[B, ...]``, e.g. ``agent.initial_state(B)``), used as is. Per-step fields follow
    ``Trajectory.step_fields()`` and these rules:

    * each step ends an episode with probability ``done_prob``, as a termination or a truncation (never both);
      ``truncation_value`` is normal where truncated and zero elsewhere;
    * ``action`` is uniform in ``[0, num_actions)``, ``behaviour_logits`` ``[T, B, A]`` and ``reward`` normal;
    * any other field: its declared default where it has one (``valid`` True), else by dtype: floats uniform
      in [0, 1) (``episodic_bonus``, ``duration``), integers in [0, 100), bools fair coins.

    ``steps``: per-step fields to use as given (``[T, B, ...]`` tensors), e.g. ``reward=torch.zeros(T, B)``.
    """
    fields = {f.name: f for f in trajectory_type.step_fields()}
    unknown = sorted(set(steps) - set(fields))
    if unknown:
        raise TypeError(f"random_trajectory: unknown step field(s) {unknown}; step fields are {sorted(fields)}")
    g = torch.Generator().manual_seed(seed)
    obs = {"x": ((2,), np.uint8)} if obs is None else obs
    core_state = {"h": ((8,), np.float32)} if core_state is None else core_state
    obs_t = {k: _random((T + 1, B, *shape), _torch_dtype(dt), g) for k, (shape, dt) in obs.items()}
    cs = {
        k: v if isinstance(v, torch.Tensor) else _random((B, *v[0]), _torch_dtype(v[1]), g)
        for k, v in core_state.items()
    }
    done = torch.rand((T, B), generator=g) < done_prob
    term = done & (torch.rand((T, B), generator=g) < 0.5)
    special = {
        "action": lambda: torch.randint(0, num_actions, (T, B), generator=g),
        "reward": lambda: torch.randn((T, B), generator=g),
        "terminated": lambda: term,
        "truncated": lambda: done & ~term,
        "truncation_value": lambda: torch.randn((T, B), generator=g) * (done & ~term),
    }
    dims = {"A": num_actions}
    values = {}
    for name, f in fields.items():
        if name in steps:
            values[name] = steps[name]
        elif name in special:
            values[name] = special[name]().to(f.torch_dtype)
        else:
            values[name] = _default_step_value(f, (T, B, *f.shape_for(dims)), g)
    return trajectory_type(
        obs=obs_t,
        core_state=cs,
        policy_version=torch.full((B,), policy_version, dtype=torch.int64),
        actor_id=torch.full((B,), actor_id, dtype=torch.int64),
        env_step=torch.full((B,), env_step, dtype=torch.int64),
        **values,
    )


def _default_step_value(f: StepField, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    dtype = f.torch_dtype
    if f.default is not None:
        return torch.full(shape, f.default, dtype=dtype)
    if dtype.is_floating_point:
        return torch.rand(shape, generator=g).to(dtype)
    return _random(shape, dtype, g)


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
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(start, start + B, dtype=torch.int64)
    obs_t: dict[str, torch.Tensor] = {}
    for k, (shape, dt) in obs.items():
        tdt = _torch_dtype(dt)
        if random_obs:
            hi = 2 if tdt == torch.bool else 100
            v = torch.randint(0, hi, (T + 1, B, *shape), generator=g).to(tdt)
        else:
            v = (rows % 128).view(1, B, *([1] * len(shape))).expand(T + 1, B, *shape).to(tdt).contiguous()
        obs_t[k] = v
    traj = random_trajectory(
        T, B, num_actions=num_actions, obs={}, core_state=core_state, done_prob=0.0,
        policy_version=policy_version, seed=seed + 1,
        reward=rows.to(torch.float32).view(1, B).expand(T, B).contiguous(),
    )
    return dataclasses.replace(traj, obs=obs_t, env_step=rows.clone())
