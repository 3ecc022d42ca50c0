"""SequenceWriter: cuts B lock-stepped env streams into fixed-length, overlapping :class:`Trajectory` items.

Every ``period`` steps the writer emits one Trajectory of ``total = burn_in + length`` steps on all B slots at
once (``[total, B]``, with ``total + 1`` observations: the last is the bootstrap observation). Consecutive
sequences overlap by ``total - period`` steps. Sequences cross episode boundaries: the learner resets the core
state before ``obs[t]`` where ``Trajectory.reset_mask()`` says so, and ``core_state`` is the state to use with
``obs[0]`` as is (already reset if ``obs[0]`` starts an episode).

Storage: observations (the bulk of the data: 28 KB per Atari step) are written straight into the arrays of
the sequences they belong to (``[total + 1, B, ...]``, allocated when a sequence starts and handed to the
Trajectory as its own memory on emission), so each observation is copied once per sequence that contains it
and never gathered. The small per-step fields (``Trajectory.step_fields()``: action, reward, ...) live in one
ring each of ``total + 1`` rows, preallocated from that declaration, that an emission gathers in time order.
Core states are kept only for the steps where a future sequence starts (a multiple of ``period``), cloned once;
with ``episode_memory`` (a core's :class:`~distrl.types.EpisodeMemorySpec`, e.g. HCAM's chunk memory) only the
memory items written since the previous sequence start are kept (:mod:`distrl.replay.episode_memory`).

Leaves are CPU tensors, or NumPy arrays with ``arrays=True`` (an env actor that acts through NumPy kernels and
never loads torch; the Ray shard client sends NumPy leaves either way).

Step t's record is ``obs[t]``, one value ``[B, ...]`` per step field (passed to :meth:`SequenceWriter.add` by
field name; a field with a default may be left out), the policy version that chose the action and the actor's
env-step counter; the call for step t also hands over ``obs[t + 1]`` and the core state for it.

Usage::

    w = SequenceWriter(spec, num_envs=B, burn_in=0, length=4, period=2, actor_id=0)
    w.begin(obs0, state0)
    for t in range(T):
        traj = w.add(action=a, behaviour_logits=l, reward=r, terminated=te, truncated=tr, truncation_value=tv,
                     duration=dt, next_obs=obs, next_state=s, policy_version=v, env_step=n)
        if traj is not None:
            replay.insert(traj)                 # [4, B]; one every 2 steps from t = 3 on
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import numpy as np

from distrl.envs.base import EnvSpec
from distrl.replay.episode_memory import MemoryCompactor
from distrl.types import CoreState, EpisodeMemorySpec, StepField, Trajectory, is_tensor
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
        episode_memory: EpisodeMemorySpec | None = None,
        arrays: bool = False,
    ) -> None:
        total = burn_in + length
        if length < 1 or burn_in < 0:
            raise ValueError(f"SequenceWriter: need length >= 1 and burn_in >= 0, got {length=} {burn_in=}")
        if not 1 <= period <= total:
            raise ValueError(
                f"SequenceWriter: period ({period}) must be in [1, burn_in + length = {total}] "
                "(a larger period would drop steps)"
            )
        if arrays and episode_memory is not None:
            raise ValueError("SequenceWriter: arrays=True does not store episode memory (its compactor reads tensors)")
        self.arrays = arrays
        """Emit Trajectories with NumPy leaves instead of CPU tensors (an env actor that never loads torch)."""
        self.spec = spec
        self.B = num_envs
        self.total = total
        self.period = period
        self.actor_id = actor_id
        R = self.R = total + 1
        B = num_envs
        # Observation arrays of the open sequences, oldest first: (start step, {key: [total + 1, B, ...]}).
        self._open: collections.deque[tuple[int, dict[str, np.ndarray]]] = collections.deque()
        # One ring [R, B, ...] per per-step field, from the declaration (Trajectory.step_fields()).
        self.fields: tuple[StepField, ...] = Trajectory.step_fields()
        dims = {"A": spec.num_actions}
        self._rings: dict[str, np.ndarray] = {
            f.name: np.zeros((R, B, *f.shape_for(dims)), dtype=f.dtype) for f in self.fields
        }
        self._fill = tuple((f.name, self._rings[f.name], f.default) for f in self.fields)  # add()'s loop
        self._names = frozenset(self._rings)
        # Special rule: truncation_value is kept only where truncated (add() zeroes it elsewhere).
        self._truncated = self._rings["truncated"]
        self._trunc_value = self._rings["truncation_value"]
        self._version = np.zeros(R, dtype=np.int64)
        self._env_step = np.zeros(R, dtype=np.int64)
        self._states: collections.deque[tuple[int, CoreState]] = collections.deque()
        # A core with append-only memory (HCAM): keep only what each sequence start adds (episode_memory.py).
        self._compactor = (MemoryCompactor(episode_memory, num_envs, period, actor_id)
                           if episode_memory is not None else None)
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
        if self._compactor is not None:
            self._compactor.restart()
        self._states.append((0, self._keep_state(state)))

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
        next_obs: Mapping[str, Any],
        next_state: CoreState,
        policy_version: int,
        env_step: int,
        **step: Any,
    ) -> Trajectory | None:
        """Record step t and obs[t + 1] with its core state.

        ``step``: one value per step field of :class:`Trajectory`, by field name (arrays or tensors ``[B]``,
        ``behaviour_logits`` ``[B, A]``). A field with a default (``episodic_bonus`` 0, ``valid`` True) may be
        left out or passed as None; a missing required field or an unknown name raises TypeError.
        ``truncation_value`` is kept only where ``truncated`` (zero elsewhere). ``valid`` is False where step t
        carries no loss (an env fault). Returns a Trajectory when step t completes a sequence, else None.
        """
        t = self._t
        if t < 0:
            raise RuntimeError("SequenceWriter.add called before begin()")
        if not self._names.issuperset(step):
            unknown = sorted(set(step) - self._names)
            raise TypeError(
                f"SequenceWriter.add: unknown step field(s) {unknown}; Trajectory's step fields are "
                f"{[f.name for f in self.fields]} (declare a new one with per_step in distrl/types.py)"
            )
        r = t % self.R
        for name, ring, default in self._fill:  # one slice assignment per field, no loop over rows
            v = step.get(name)
            if v is None:
                if default is None:
                    raise TypeError(f"SequenceWriter.add: missing required step field {name!r}")
                ring[r] = default
            elif is_tensor(v):
                ring[r] = v.detach().cpu().numpy()
            else:
                ring[r] = v  # NumPy arrays (and array-likes) convert in the assignment
        self._trunc_value[r][~self._truncated[r]] = 0.0  # truncation_value is kept only where truncated
        if self._compactor is not None:
            self._compactor.episode_end(self._truncated[r] | self._rings["terminated"][r])
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
            self._states.append((t, self._keep_state(next_state)))
        start = t - self.total
        if start >= 0 and start % self.period == 0:
            return self._emit(start)
        return None

    def _keep_state(self, state: CoreState) -> CoreState:
        """The core state stored with a sequence: a CPU copy, with append-only memory reduced to what was
        written since the previous sequence start (``episode_memory``)."""
        if self._compactor is not None:
            return self._compactor.compact(state)
        return _clone_arrays(state) if self.arrays else _clone_state(state)

    def _emit(self, start: int) -> Trajectory:
        s_t, state = self._states.popleft()
        o_t, obs = self._open.popleft()
        assert s_t == start == o_t, f"SequenceWriter: sequence queues out of order ({s_t}, {o_t} != {start})"
        r0 = start % self.R
        si = self._step_idx[r0]
        B = self.B
        leaf: Any = _identity if self.arrays else _torch_from_numpy()
        return Trajectory(
            obs={k: leaf(a) for k, a in obs.items()},  # written in place: no gather
            # fancy indexing copies: the Trajectory owns its memory
            **{name: leaf(ring[si]) for name, ring in self._rings.items()},
            core_state=state,
            policy_version=leaf(np.full((B,), int(self._version[r0]), dtype=np.int64)),
            actor_id=leaf(np.full((B,), self.actor_id, dtype=np.int64)),
            env_step=leaf(np.full((B,), int(self._env_step[r0]), dtype=np.int64)),
        )


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _torch_from_numpy() -> Any:
    import torch

    return torch.from_numpy


def _clone_state(state: CoreState) -> CoreState:
    """CPU tensor copies of a core state whose leaves are tensors (any device) or NumPy arrays."""
    import torch

    return {
        k: v.detach().to("cpu", copy=True) if is_tensor(v) else torch.from_numpy(np.array(v, copy=True))
        for k, v in state.items()
    }


def _clone_arrays(state: CoreState) -> CoreState:
    """NumPy copies of a core state (``arrays=True``)."""
    return {k: np.array(_np(v), copy=True) for k, v in state.items()}
