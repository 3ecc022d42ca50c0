"""SequenceWriter: cuts B lock-stepped env streams into fixed-length, overlapping :class:`Trajectory` items.

Every ``period`` steps the writer emits one Trajectory of ``total = burn_in + length`` steps on all B slots at
once (``[total, B]``, with ``total + 1`` observations: the last is the bootstrap observation). Consecutive
sequences overlap by ``total - period`` steps. Sequences cross episode boundaries: the learner resets the core
state before ``obs[t]`` where ``Trajectory.reset_mask()`` says so, and ``core_state`` is the state to use with
``obs[0]`` as is (already reset if ``obs[0]`` starts an episode).

Storage: observations (the bulk of the data: 28 KB per Atari step) are written straight into the arrays of
the sequences they belong to (``[total + 1, B, ...]``, allocated when a sequence starts and handed to the
Trajectory as its own memory on emission), so each observation is copied once per sequence that contains it
and never gathered. The small per-step fields live in one ring of ``total + 1`` rows that an emission gathers
in time order. Core states are kept only for the steps where a future sequence starts (a multiple of
``period``), cloned once.

Step t's record is (``obs[t]``, action, logits, reward, terminated, truncated, truncation_value, duration,
episodic bonus, policy version that chose the action, actor env-step counter); the call for step t also hands
over ``obs[t + 1]`` and the core state for it.

Usage::

    w = SequenceWriter(spec, num_envs=B, burn_in=0, length=4, period=2, actor_id=0)
    w.begin(obs0, state0)
    for t in range(T):
        traj = w.add(action=a, logits=l, reward=r, terminated=te, truncated=tr, truncation_value=tv,
                     duration=dt, next_obs=obs, next_state=s, policy_version=v, env_step=n)
        if traj is not None:
            replay.insert(traj)                 # [4, B]; one every 2 steps from t = 3 on
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distrl.envs.base import EnvSpec
from distrl.types import CoreState, Trajectory
from distrl.types import as_numpy as _np


class SequenceWriter:
    """Fixed-length, overlapping sequences over B env slots (see the module doc)."""

    def __init__(
        self,
        spec: EnvSpec,
        num_envs: int,
        *,
        burn_in: int,
        length: int,
        period: int,
        actor_id: int = 0,
    ) -> None:
        total = burn_in + length
        if length < 1 or burn_in < 0:
            raise ValueError(f"SequenceWriter: need length >= 1 and burn_in >= 0, got {length=} {burn_in=}")
        if not 1 <= period <= total:
            raise ValueError(
                f"SequenceWriter: period ({period}) must be in [1, burn_in + length = {total}] "
                "(a larger period would drop steps)"
            )
        self.spec = spec
        self.B = num_envs
        self.total = total
        self.period = period
        self.actor_id = actor_id
        R = self.R = total + 1
        B = num_envs
        # Observation arrays of the open sequences, oldest first: (start step, {key: [total + 1, B, ...]}).
        self._open: collections.deque[tuple[int, dict[str, np.ndarray]]] = collections.deque()
        self._action = np.zeros((R, B), dtype=np.int64)
        self._logits = np.zeros((R, B, spec.num_actions), dtype=np.float32)
        self._reward = np.zeros((R, B), dtype=np.float32)
        self._terminated = np.zeros((R, B), dtype=np.bool_)
        self._truncated = np.zeros((R, B), dtype=np.bool_)
        self._trunc_value = np.zeros((R, B), dtype=np.float32)
        self._bonus = np.zeros((R, B), dtype=np.float32)
        self._duration = np.zeros((R, B), dtype=np.float32)
        self._valid = np.ones((R, B), dtype=np.bool_)
        self._version = np.zeros(R, dtype=np.int64)
        self._env_step = np.zeros(R, dtype=np.int64)
        self._states: collections.deque[tuple[int, CoreState]] = collections.deque()
        self._t = -1  # steps added so far; -1 = begin() not called
        # Gather indices for an emission whose first step sits at ring row r0 (precomputed for every r0).
        self._step_idx = [(r0 + np.arange(total)) % R for r0 in range(R)]

    @property
    def steps(self) -> int:
        """Steps added since :meth:`begin`."""
        return max(self._t, 0)

    def begin(self, obs: Mapping[str, Any], state: CoreState) -> None:
        """(Re)start the streams: ``obs`` [B, ...] is obs[0], ``state`` its core state (each [B, ...])."""
        self._t = 0
        self._states.clear()
        self._open.clear()
        self._open_sequence(0, obs)
        self._states.append((0, _clone_state(state)))

    def _open_sequence(self, start: int, obs: Mapping[str, Any]) -> None:
        """Allocate the observation arrays of the sequence starting at step ``start``; ``obs`` is its obs[0]."""
        arrays = {}
        for k, s in self.spec.obs.items():
            a = np.empty((self.R, self.B, *s.shape), dtype=s.dtype)
            a[0] = _np(obs[k])
            arrays[k] = a
        self._open.append((start, arrays))

    def add(
        self,
        *,
        action: Any,
        logits: Any,
        reward: Any,
        terminated: Any,
        truncated: Any,
        truncation_value: Any,
        duration: Any,
        next_obs: Mapping[str, Any],
        next_state: CoreState,
        policy_version: int,
        env_step: int,
        episodic_bonus: Any = None,
        valid: Any = None,
    ) -> Trajectory | None:
        """Record step t (all arrays ``[B]``, logits ``[B, A]``) and obs[t + 1] with its core state.

        ``truncation_value`` is kept only where ``truncated`` (zero elsewhere). ``valid`` [B] bool (default
        all True) is False where step t carries no loss (an env fault). Returns a Trajectory when step t
        completes a sequence, else None.
        """
        t = self._t
        if t < 0:
            raise RuntimeError("SequenceWriter.add called before begin()")
        r = t % self.R
        trunc = _np(truncated)
        self._action[r] = _np(action)
        self._logits[r] = _np(logits)
        self._reward[r] = _np(reward)
        self._terminated[r] = _np(terminated)
        self._truncated[r] = trunc
        self._trunc_value[r] = np.where(trunc, _np(truncation_value), 0.0)
        self._duration[r] = _np(duration)
        if episodic_bonus is None:
            self._bonus[r] = 0.0
        else:
            self._bonus[r] = _np(episodic_bonus)
        self._valid[r] = True if valid is None else _np(valid)
        self._version[r] = policy_version
        self._env_step[r] = env_step
        t += 1
        self._t = t
        obs1 = {k: _np(next_obs[k]) for k in self.spec.obs}
        for start, arrays in self._open:
            row = t - start
            for k, buf in arrays.items():
                buf[row] = obs1[k]
        if t % self.period == 0:
            self._open_sequence(t, obs1)
            self._states.append((t, _clone_state(next_state)))
        start = t - self.total
        if start >= 0 and start % self.period == 0:
            return self._emit(start)
        return None

    def _emit(self, start: int) -> Trajectory:
        s_t, state = self._states.popleft()
        o_t, obs = self._open.popleft()
        assert s_t == start == o_t, f"SequenceWriter: sequence queues out of order ({s_t}, {o_t} != {start})"
        r0 = start % self.R
        si = self._step_idx[r0]
        B = self.B

        def take(buf: np.ndarray, idx: np.ndarray) -> Tensor:
            return torch.from_numpy(buf[idx])  # fancy indexing copies: the Trajectory owns its memory

        return Trajectory(
            obs={k: torch.from_numpy(a) for k, a in obs.items()},  # written in place: no gather
            action=take(self._action, si),
            reward=take(self._reward, si),
            terminated=take(self._terminated, si),
            truncated=take(self._truncated, si),
            truncation_value=take(self._trunc_value, si),
            behaviour_logits=take(self._logits, si),
            episodic_bonus=take(self._bonus, si),
            duration=take(self._duration, si),
            valid=take(self._valid, si),
            core_state=state,
            policy_version=torch.full((B,), int(self._version[r0]), dtype=torch.int64),
            actor_id=torch.full((B,), self.actor_id, dtype=torch.int64),
            env_step=torch.full((B,), int(self._env_step[r0]), dtype=torch.int64),
        )


def _clone_state(state: CoreState) -> CoreState:
    """CPU tensor copies of a core state whose leaves are tensors (any device) or NumPy arrays."""
    return {
        k: v.detach().to("cpu", copy=True) if isinstance(v, Tensor) else torch.from_numpy(np.array(v, copy=True))
        for k, v in state.items()
    }
