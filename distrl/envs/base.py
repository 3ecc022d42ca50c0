"""The env interface every distrl component sees: an :class:`EnvSpec` and a batched :class:`VecEnv`.

All env families (MiniHack, Atari, Habitat, MiniWorld, fakes) are adapted to one Gymnasium-style API with dict
observations and ``terminated`` / ``truncated`` kept apart, then batched by a VecEnv with *same-step autoreset*:
when slot i ends an episode in ``step``, the returned ``obs[i]`` is already the first observation of the next
episode and the last observation of the finished one is in ``final_obs``.

Observation ownership: a single env returns arrays the caller owns, unless it has a ``copy_obs`` attribute set
to False: then they may be views of the env's own buffers, valid until its next ``step``/``reset``. The VecEnvs
set it on the envs they build (they copy every observation into their batch buffers at once), which saves one
allocation and copy per key and step; users stepping an env themselves leave it alone.

Usage::

    venv = make_vec_env(cfg.env, num_envs=8, seed=0)
    obs = venv.reset()                              # dict[str, np.ndarray[B, ...]]
    while True:
        res = venv.step(actions)                    # StepResult, arrays [B]
        for ep in res.episodes: log(ep)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class ArraySpec:
    shape: tuple[int, ...]
    dtype: np.dtype

    def check(self, name: str, value: np.ndarray) -> None:
        """Raise ValueError naming the key if value does not match (shape, dtype) or holds NaN/inf."""
        if value.shape != self.shape or value.dtype != self.dtype:
            raise ValueError(
                f"observation {name!r}: expected shape {self.shape} dtype {self.dtype}, "
                f"got shape {value.shape} dtype {value.dtype}"
            )
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"observation {name!r} contains NaN or inf")


@dataclass(frozen=True)
class EnvSpec:
    """What models and actors know of an env: observation specs and the (discrete) action count."""

    name: str
    obs: Mapping[str, ArraySpec]
    num_actions: int
    family: str  # "minihack" | "atari" | "habitat" | "miniworld" | "fake"
    frame_stacks: tuple[str, ...] = ()
    """Observation keys that are frame stacks ``[k, ...]``, oldest first: each step shifts the stack by one
    frame, and the first observation of an episode is its first frame repeated k times. Replay stores only
    the newest frame of each step for these keys (``Trajectory.batch_major(frame_stacks=...)``)."""

    def zeros(self, batch: int) -> dict[str, np.ndarray]:
        return {k: np.zeros((batch, *s.shape), dtype=s.dtype) for k, s in self.obs.items()}


@dataclass
class EpisodeInfo:
    """A finished episode in one slot of a VecEnv."""

    env_index: int
    episode_return: float
    length: int
    success: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class StepResult:
    """One batched step. Arrays have leading dim B (num_envs)."""

    obs: dict[str, np.ndarray]  # next observation (first obs of a new episode where done)
    reward: np.ndarray  # [B] float32
    terminated: np.ndarray  # [B] bool
    truncated: np.ndarray  # [B] bool
    final_obs: dict[int, dict[str, np.ndarray]]  # slot -> last obs of the episode that ended (done slots only)
    duration: np.ndarray  # [B] float32: seconds spent in env.step for each slot
    episodes: list[EpisodeInfo]
    faults: int = 0  # env faults (exception / non-finite output) handled during this step
    faulted: np.ndarray | None = None  # [B] bool: slot's env failed this step (reported truncated; not a real step)


class VecEnv(Protocol):
    spec: EnvSpec
    num_envs: int

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]: ...

    def step(self, actions: np.ndarray) -> StepResult: ...

    def close(self) -> None: ...


def check_discrete_action(action: Any, num_actions: int, env: str) -> int:
    """Validate one discrete action; returns it as int or raises ValueError naming the env and range."""
    a = np.asarray(action)
    if a.shape != () or a.dtype.kind not in "iu":
        raise ValueError(f"{env}: action must be a scalar integer, got {action!r} (dtype {a.dtype})")
    ai = int(a)
    if not 0 <= ai < num_actions:
        raise ValueError(f"{env}: action {ai} out of range [0, {num_actions})")
    return ai
