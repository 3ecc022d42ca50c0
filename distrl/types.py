"""Data that crosses component boundaries: named, frozen, time-major.

Shape letters: T time (sequence length incl. burn-in), B batch (env slots or sequences), A actions,
F features, H hidden.

* :class:`Trajectory`: what an env actor emits and what replay stores: one fixed-length sequence per batch row,
  time-major ``[T, B, ...]`` (``obs`` has ``T + 1`` steps: the last one is the bootstrap observation).
* :class:`ReplaySample`: a Trajectory drawn from replay plus its keys, shard ids and IS weights.
* :class:`ActOut`: one acting step of the agent.

Tensors here are torch tensors on the CPU unless a component moved them. Observations and core states are
``dict[str, Tensor]`` because their keys depend on the env and the core; every other field is named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


def as_numpy(x: Any) -> np.ndarray:
    """``x`` as a NumPy array: a tensor (any device) detached and brought to the host, anything else through
    ``np.asarray`` (NumPy arrays pass through uncopied)."""
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


CoreState = dict[str, Tensor]
"""Recurrent-core state: named tensors, each batch-first ``[B, ...]`` (state has no time axis)."""

Obs = dict[str, Tensor]
"""Observation dict: each value ``[T, B, ...]`` (sequence) or ``[B, ...]`` (one step)."""


@dataclass(frozen=True)
class Trajectory:
    """One fixed-length sequence on each of B rows, time-major.

    Step t means: the agent saw ``obs[t]`` with core state s_t, took ``action[t]`` (logits
    ``behaviour_logits[t]``), got ``reward[t]`` and then ``terminated[t]`` / ``truncated[t]`` tell whether that
    action ended the episode. If it did, ``obs[t + 1]`` is the *first* observation of the next episode and the
    core state is reset before it. ``core_state`` is the state to use with ``obs[0]`` as is (already reset if
    ``obs[0]`` starts an episode).

    On a truncated step, ``truncation_value[t]`` holds the actor's value estimate of the final observation of
    the cut episode (discounting is the learner's job), so the learner can bootstrap through time limits; it is
    zero elsewhere. ``valid[t]`` is False for padding steps (none by default; reserved for partial sequences
    closed after an env fault) which carry no loss.

    Usage::

        traj = actor_batch                      # [T, B]
        first = traj.reset_mask()               # [T + 1, B]: reset the core before obs[t]
        items = traj.unbind_batch()             # B single-row trajectories for replay
    """

    obs: Obs  # each [T + 1, B, ...]
    action: Tensor  # [T, B] int64
    reward: Tensor  # [T, B] float32, raw extrinsic
    terminated: Tensor  # [T, B] bool
    truncated: Tensor  # [T, B] bool
    truncation_value: Tensor  # [T, B] float32
    behaviour_logits: Tensor  # [T, B, A] float32
    episodic_bonus: Tensor  # [T, B] float32, raw, actor-side (zeros without an episodic bonus)
    duration: Tensor  # [T, B] float32 seconds of env.step for this step
    valid: Tensor  # [T, B] bool
    core_state: CoreState  # each [B, ...]
    policy_version: Tensor  # [B] int64: weights version that acted at step 0
    actor_id: Tensor  # [B] int64
    env_step: Tensor  # [B] int64: the actor's env-step counter at step 0

    # ---- shape helpers ---------------------------------------------------------------------------------------
    @property
    def T(self) -> int:
        return int(self.action.shape[0])

    @property
    def B(self) -> int:
        return int(self.action.shape[1])

    def done(self) -> Tensor:
        """[T, B] bool: step t ended an episode (terminated or truncated)."""
        return self.terminated | self.truncated

    def reset_mask(self) -> Tensor:
        """[T + 1, B] bool: reset the core state before processing obs[t]. Row 0 is False (see class doc)."""
        first = torch.zeros((self.T + 1, self.B), dtype=torch.bool, device=self.action.device)
        first[1:] = self.done()
        return first

    # ---- flattening (replay storage and transport) -----------------------------------------------------------
    # Keys are "field" or "field/subkey"; TIME_FIELDS have a time axis first, the rest are per-row.
    TIME_FIELDS = (
        "obs", "action", "reward", "terminated", "truncated", "truncation_value", "behaviour_logits",
        "episodic_bonus", "duration", "valid",
    )

    def flatten(self) -> dict[str, Tensor]:
        """Named leaves. Time-axis leaves stay ``[T(+1), B, ...]``; per-row leaves are ``[B, ...]``."""
        out: dict[str, Tensor] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Mapping):
                for k, t in v.items():
                    out[f"{f.name}/{k}"] = t
            else:
                out[f.name] = v
        return out

    @classmethod
    def unflatten(cls, leaves: Mapping[str, Tensor]) -> Trajectory:
        kw: dict[str, Any] = {"obs": {}, "core_state": {}}
        for name, t in leaves.items():
            if "/" in name:
                field, sub = name.split("/", 1)
                kw[field][sub] = t
            else:
                kw[name] = t
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(kw)
        if missing:
            raise KeyError(f"Trajectory.unflatten: missing fields {sorted(missing)}")
        return cls(**kw)

    @staticmethod
    def is_time_leaf(name: str) -> bool:
        return name.split("/", 1)[0] in Trajectory.TIME_FIELDS

    def map(self, fn: Callable[[Tensor], Tensor]) -> Trajectory:
        """Apply fn to every tensor (e.g. ``.to(device)``), keeping the structure."""
        return Trajectory.unflatten({k: fn(v) for k, v in self.flatten().items()})

    def index_batch(self, idx: Tensor | slice | int) -> Trajectory:
        """Select rows along the batch axis (axis 1 for time leaves, axis 0 for per-row leaves)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Trajectory.unflatten(
            {k: (v[:, idx] if self.is_time_leaf(k) else v[idx]) for k, v in self.flatten().items()}
        )

    def unbind_batch(self) -> Iterator[Trajectory]:
        for b in range(self.B):
            yield self.index_batch(b)

    @staticmethod
    def concat(trajs: list[Trajectory]) -> Trajectory:
        """Concatenate along the batch axis."""
        flat = [t.flatten() for t in trajs]
        return Trajectory.unflatten(
            {
                k: torch.cat([f[k] for f in flat], dim=1 if Trajectory.is_time_leaf(k) else 0)
                for k in flat[0]
            }
        )

    def batch_major(self) -> dict[str, Tensor]:
        """Leaves with the batch axis first (``[B, T, ...]``): the layout replay storage uses."""
        return {k: (v.transpose(0, 1) if self.is_time_leaf(k) else v) for k, v in self.flatten().items()}

    @staticmethod
    def from_batch_major(leaves: Mapping[str, Tensor]) -> Trajectory:
        """Inverse of :meth:`batch_major`: the one boundary where replay's ``[B, T]`` becomes ``[T, B]``."""
        return Trajectory.unflatten(
            {k: (v.transpose(0, 1) if Trajectory.is_time_leaf(k) else v) for k, v in leaves.items()}
        )


@dataclass(frozen=True)
class ReplaySample:
    """A batch of sequences drawn from one or more replay shards.

    ``keys[i]`` identifies row i inside shard ``shard_ids[i]`` (slot and generation, so a priority update for a
    slot that has since been overwritten is ignored). ``weights`` are importance weights normalised by the batch
    max; ``probs`` are the true global sampling probabilities P(i). Fresh (online) rows are flagged in ``fresh`` and
    carry weight 1.
    """

    traj: Trajectory  # [T, B]
    keys: Tensor  # [B] int64
    shard_ids: Tensor  # [B] int64
    weights: Tensor  # [B] float32
    probs: Tensor  # [B] float64
    fresh: Tensor | None = None  # [B] bool: row was handed out as fresh (online) data, not a prioritized draw

    @property
    def B(self) -> int:
        return int(self.keys.shape[0])


@dataclass(frozen=True)
class ActOut:
    """One acting step for B env slots (no autograd). Torch tensors from ``Agent.act``, NumPy arrays from the
    NumPy acting path (:class:`~distrl.models.numpy_act.NumpyPolicy`) and ``RandomPolicy``; the env actor
    takes either."""

    action: Any  # [B] int64
    logits: Any  # [B, A] float32
    value: Any  # [B] float32
    state: Any  # CoreState, each leaf [B, ...]: state to use with the *next* observation (before any reset)


@dataclass(frozen=True)
class EpisodeStats:
    """Summary of one finished episode, reported by env actors."""

    actor_id: int
    env_index: int
    episode_return: float  # raw extrinsic return (full game for Atari)
    length: int
    success: float | None = None  # 1.0 / 0.0 where the env defines success, else None
    extra: tuple[tuple[str, float], ...] = ()  # env-specific scalars, e.g. (("spl", 0.7),)
