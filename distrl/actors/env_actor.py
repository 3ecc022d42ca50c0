"""EnvActor: steps B envs as a batch, acts with one batched no-grad policy call, emits Trajectory sequences.

A plain class (no Ray): the local runtime drives it directly and :mod:`distrl.runtime.ray_env_actor` wraps it
in a Ray actor. Per step (ALGORITHMS.md §6.1, without the bonus math):

1. ``out = policy.act(obs_t, s_t)``: actions, behaviour logits, value, next core state (no autograd).
2. ``b_t = bonus.step(obs_t)`` if an episodic bonus is attached (zeros otherwise): the one injected, else the
   one ``cfg.bonus.episodic`` names (:func:`~distrl.actors.bonus.build_episodic_bonus`: E3B, episodic counts),
   raw, into ``Trajectory.episodic_bonus``. With ``bonus.glob=count`` the state keys of ``obs_t`` (one per env
   step) also go to a buffer the runtime drains for the global count table (:meth:`EnvActor.drain_state_keys`).
3. ``res = venv.step(actions)``: same-step autoreset, per-slot ``dt`` (§3.5), episode stats, faults.
4. For slots truncated by a time limit: ``truncation_value = act(final_obs, pre-reset state).value`` so the
   learner can bootstrap through the cut. A slot whose env faulted (``res.faulted``) is also truncated, but
   its step is marked ``valid=False`` (its reward and transition are not real) and its truncation value is
   the value of the last good observation, ``out.value``.
5. ``s_{t+1} = policy.reset_state(out.state, done)`` and ``bonus.reset(done)`` (after reading the ended
   episodes' distinct states, the episode stat ``episodic_unique``): per-slot state lives here and
   is reset by this actor's own done mask (ARCHITECTURE convention 8).
6. The :class:`~distrl.actors.sequence.SequenceWriter` records the step; every ``sequence.period`` steps it
   emits a ``[burn_in + length, B]`` Trajectory carrying the core state at its start, the policy version that
   acted at its first step, this actor's id and env-step counter.

The policy is :class:`~distrl.models.numpy_kernels.KernelPolicy` when the actor is built with ``kernels=True``
(the Ray runtime's, fed by a weight store) and the model is one the torch-free kernels cover; then the actor emits
NumPy Trajectories and, without an episodic bonus, its process never loads torch. Otherwise it is
:func:`~distrl.models.acting.build_acting_policy`'s for ``cfg.model`` unless one is injected
(tests, benchmarks): anything with ``initial_state(batch, device)``, ``reset_state(state, mask)``,
``act(obs, state) -> ActOut`` and, for ``set_weights``, ``load_state_dict``. :class:`RandomPolicy` is such a
policy. Which implementation of ``Agent.act`` runs (NumPy or PyTorch, ``actor.inference``), in which dtype
(``actor.precision``), and the start-up check of the NumPy one against PyTorch, are decided there. The loop
hands the policy NumPy observations and takes NumPy or torch outputs alike, so no torch op runs per step
unless the policy's own does.

Usage::

    actor = EnvActor(cfg, actor_id=0)
    actor.set_weights(weights)                    # distrl.types.PolicyWeights
    for traj in actor.run(num_sequences=10):      # Trajectory [T, B]
        replay.insert(traj)
    stats = actor.episode_stats()                  # list[EpisodeStats], drained
    actor.close()
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import numpy as np

from distrl.actors.bonus import build_episodic_bonus, check_state_key
from distrl.actors.sequence import SequenceWriter
from distrl.bonuses.keys import state_keys
from distrl.config import ExperimentConfig
from distrl.envs.base import EnvSpec, StepResult
from distrl.envs.registry import env_spec
from distrl.envs.vector import make_vec_env
from distrl.models.numpy_kernels import KernelPolicy, kernel_policy_applies, sampling_seed
from distrl.replay.priorities import DurationPrior
from distrl.types import ActorReport, ActOut, CoreState, EpisodeStats, PolicyWeights, Trajectory, is_tensor
from distrl.types import as_numpy as _np


class Policy(Protocol):
    """What the actor needs from a policy. It passes NumPy observations ``[B, ...]`` and NumPy ``[B]`` bool
    masks, and takes outputs as torch tensors (any device) or NumPy arrays."""

    def initial_state(self, batch: int, device: Any = "cpu") -> CoreState: ...

    def reset_state(self, state: CoreState, mask: np.ndarray) -> CoreState: ...

    def act(self, obs: Mapping[str, np.ndarray], state: CoreState, greedy: bool = False) -> ActOut: ...


class EpisodicBonusHook(Protocol):
    """Actor-side episodic bonus (E3B, episodic counts): per-slot state, reset by the actor's done mask."""

    def reset(self, mask: np.ndarray) -> None:
        """mask [B] bool: slots whose episode just ended (their next observation starts a new one)."""

    def step(self, obs: Mapping[str, np.ndarray]) -> Any:
        """Bonus [B] for the observations the agent acts on now (NumPy leaves [B, ...])."""

    # Optional, used when present: ``load_weights(version, extras)`` receives the actor-side learner extras'
    # weights (``PolicyWeights.extras``) on every ``set_weights``; ``episode_unique(mask) -> [B] | None`` gives
    # the distinct states of the episodes ending in ``mask`` (called before ``reset``), reported as the
    # episode stat ``episodic_unique``.


class RandomPolicy:
    """Uniform random actions, zero logits and values, no core state: the benchmark's and tests' policy.
    Pure NumPy (a cold torch op between env steps costs tens of µs).

    Usage::

        actor = EnvActor(cfg, actor_id=0, policy=RandomPolicy(spec.num_actions, seed=0))
    """

    def __init__(self, num_actions: int, seed: int = 0) -> None:
        self.num_actions = num_actions
        self._rng = np.random.default_rng(seed)
        self._zeros: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def initial_state(self, batch: int, device: Any = "cpu") -> CoreState:
        return {}

    def reset_state(self, state: CoreState, mask: Any) -> CoreState:
        return state

    def act(self, obs: Mapping[str, Any], state: CoreState, greedy: bool = False) -> ActOut:
        b = int(next(iter(obs.values())).shape[0])
        if b not in self._zeros:  # read-only outputs, shared between calls
            logits, value = np.zeros((b, self.num_actions), np.float32), np.zeros(b, np.float32)
            logits.flags.writeable = value.flags.writeable = False
            self._zeros[b] = (logits, value)
        logits, value = self._zeros[b]
        return ActOut(action=self._rng.integers(0, self.num_actions, b), logits=logits, value=value, state=state)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}


def _rows(x: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of a state leaf, kept in its own kind (NumPy array or tensor on its device)."""
    if is_tensor(x):
        import torch

        return x.index_select(0, torch.from_numpy(idx).to(x.device))
    return x[idx]


def _unique_stat(unique: np.ndarray | None, env_index: int) -> dict[str, float]:
    """The ``episodic_unique`` episode stat of slot ``env_index`` (none without an episodic bonus)."""
    return {} if unique is None else {"episodic_unique": float(unique[env_index])}


def limit_numpy_blas_threads(n: int) -> None:
    """Cap NumPy's OpenBLAS thread pool at ``n`` threads in this process (PyTorch's own pools are left alone).

    An actor's NumPy matrix products (NumPy acting, Atari frame resizes) are too small to gain from more
    threads, and with one env-stepping process per core an extra pool thread per process only competes with
    the other processes: with OpenBLAS's default of one thread per core, the NumPy policy's time per env step
    grows several-fold (``tools/bench/actors.py``; see BENCHMARKS.md)."""
    from threadpoolctl import ThreadpoolController

    ThreadpoolController().select(internal_api="openblas").limit(limits=max(1, int(n)))


def actor_seed(env_seed: int, actor_id: int, incarnation: int = 0) -> int:
    """VecEnv seed of one actor incarnation (a restarted actor gets fresh envs, not a replay of old ones)."""
    ss = np.random.SeedSequence(entropy=int(env_seed), spawn_key=(0xAC7, int(actor_id), int(incarnation)))
    return int(ss.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


class EnvActor:
    """Hosts ``cfg.env.num_envs`` env slots and one policy; yields Trajectory sequences (see the module doc).

    ``incarnation`` distinguishes restarts of the same ``actor_id`` (new env seeds); ``bonus`` is an
    :class:`EpisodicBonusHook` that replaces the one ``cfg.bonus`` configures; ``prereset`` overrides the
    VecEnv's spare-env default (see :func:`~distrl.envs.vector.make_vec_env`).

    ``kernels=True`` (the Ray runtime's actors, which pull weights before their first step) acts through
    :class:`~distrl.models.numpy_kernels.KernelPolicy` where :func:`~distrl.models.numpy_kernels.kernel_policy_applies`
    and emits Trajectories with NumPy leaves: with no episodic bonus this process never loads torch. Such a
    policy has no weights until :meth:`set_weights` (the learner's initialisation is published as version 0);
    the learner checks the kernels against ``Agent.act`` when it starts.
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        actor_id: int,
        policy: Policy | None = None,
        *,
        incarnation: int = 0,
        bonus: EpisodicBonusHook | None = None,
        prereset: bool | None = None,
        kernels: bool = False,
    ) -> None:
        self.cfg = cfg
        self.actor_id = actor_id
        self.incarnation = incarnation
        self.spec: EnvSpec = env_spec(cfg.env)
        self.device: Any = cfg.actor.device
        limit_numpy_blas_threads(cfg.actor.threads)
        seed = actor_seed(cfg.env.seed, actor_id, incarnation)
        self.kernels = policy is None and kernels and kernel_policy_applies(cfg, self.spec)
        """Acting through KernelPolicy, with NumPy Trajectories (see the class doc)."""
        if self.kernels:
            self.policy: Any = KernelPolicy(cfg.model, self.spec, seed=sampling_seed(seed))
        elif policy is not None:
            self.policy = policy
        else:
            import torch

            from distrl.models.acting import build_acting_policy

            self.device = torch.device(cfg.actor.device)
            self.policy = build_acting_policy(cfg, self.spec, self.device, seed)
        self.num_envs = cfg.env.num_envs
        self.bonus = bonus if bonus is not None else build_episodic_bonus(cfg, self.spec, self.num_envs, self.device)
        self._bonus_unique = getattr(self.bonus, "episode_unique", None)
        self._count_key: str | None = None
        if cfg.bonus.glob == "count":
            check_state_key(cfg.bonus.count_key, self.spec, "bonus.glob=count")
            self._count_key = cfg.bonus.count_key
        self._state_keys: list[np.ndarray] = []
        self.venv = make_vec_env(cfg.env, self.num_envs, seed, prereset=prereset)
        s = cfg.sequence
        self.writer = SequenceWriter(
            self.spec, self.num_envs, burn_in=s.burn_in, length=s.length, period=s.period, actor_id=actor_id,
            episode_memory=getattr(getattr(self.policy, "core", None), "episode_memory", None),
            arrays=self.kernels,
        )
        self.policy_version = -1
        self.extra_weights: dict[str, dict[str, np.ndarray]] = {}
        """Actor-side learner extras' weights (name -> state_dict) of version ``policy_version``."""
        self.env_steps = 0
        """Env steps taken by this actor (B per batched step)."""
        self.faults = 0
        self.sequences = 0
        self.episodes = 0
        self._episode_stats: list[EpisodeStats] = []
        self._obs: dict[str, np.ndarray] | None = None
        self._state: CoreState = {}
        self._zeros = np.zeros(self.num_envs, dtype=np.float32)
        self._episode_time = np.zeros(self.num_envs, dtype=np.float64)
        self.duration_prior = DurationPrior(cfg.duration)
        """The replay sampling prior of each emitted sequence (``duration.mode=prior``; None otherwise), which
        the runtimes pass to the shard's ``insert``."""
        self._t_start = time.perf_counter()
        # Where step() spends its wall time (cumulative seconds): the policy (acting, truncation values, state
        # resets), the VecEnv (env steps, resets, fault handling) and, by difference, this actor's own work.
        self.time_policy_s = 0.0
        self.time_env_s = 0.0
        self.time_step_s = 0.0

    # ---- weights -----------------------------------------------------------------------------------------
    def set_weights(self, weights: PolicyWeights) -> None:
        """Load new policy weights (the version is stamped on sequences whose first step they act on). The
        actor-side extras' weights of the same version (``weights.extras``) are kept in :attr:`extra_weights`
        for the actor-side modules that use them."""
        self.policy.load_state_dict(weights.policy)
        self.extra_weights = dict(weights.extras)
        self.policy_version = int(weights.version)
        load = getattr(self.bonus, "load_weights", None)
        if load is not None:
            load(self.policy_version, self.extra_weights)

    # ---- main loop ---------------------------------------------------------------------------------------
    def run(self, num_sequences: int | None = None) -> Iterator[Trajectory]:
        """Step the envs and yield each Trajectory ``[burn_in + length, B]`` as it completes.

        Stops after ``num_sequences`` (None = forever). Calling ``run`` again continues the same streams.
        """
        emitted = 0
        while num_sequences is None or emitted < num_sequences:
            traj = self.step()
            if traj is not None:
                emitted += 1
                yield traj

    def step(self) -> Trajectory | None:
        """One batched env step; returns a Trajectory when this step completes one, else None."""
        if self._obs is None:
            self.begin()
        if self.env_steps == 0:
            self._t_start = time.perf_counter()  # the rate counts from the first step, not from begin()
        assert self._obs is not None
        B = self.num_envs
        perf = time.perf_counter
        t0 = perf()
        out = self.policy.act(self._obs, self._state)
        bonus = None if self.bonus is None else self.bonus.step(self._obs)
        if self._count_key is not None:
            self._state_keys.append(state_keys(self._obs, self._count_key, lead_ndim=1))
        actions = _np(out.action)
        t1 = perf()
        launch = np.full(B, time.time())  # wall clock at which this step's actions were launched (§3.5)
        res = self.venv.step(actions)
        t2 = perf()
        done = res.terminated | res.truncated
        faulted = res.faulted
        valid = None
        if res.faults and faulted is not None and faulted.any():
            valid = ~faulted
        tv = self._truncation_values(res, out, faulted) if res.truncated.any() else self._zeros
        self._episode_time += res.duration  # the episode's seconds so far, this step included
        episode_time = self._episode_time.copy()
        state = out.state
        unique = None
        if done.any():
            state = self.policy.reset_state(state, done)
            if self.bonus is not None:
                if self._bonus_unique is not None:
                    unique = self._bonus_unique(done)
                self.bonus.reset(done)
        t3 = perf()
        traj = self.writer.add(
            action=actions,
            behaviour_logits=out.logits,
            reward=res.reward,
            terminated=res.terminated,
            truncated=res.truncated,
            truncation_value=tv,
            duration=res.duration,
            launch_time=launch,
            episode_time=episode_time,
            next_obs=res.obs,
            next_state=state,
            policy_version=self.policy_version,
            env_step=self.env_steps,
            episodic_bonus=bonus,
            valid=valid,
        )
        self._episode_time[done] = 0.0
        self._obs = res.obs
        self._state = state
        self.env_steps += B
        self.faults += res.faults
        for ep in res.episodes:
            self._episode_stats.append(
                EpisodeStats(
                    actor_id=self.actor_id,
                    env_index=ep.env_index,
                    episode_return=ep.episode_return,
                    length=ep.length,
                    success=ep.success,
                    extra=tuple(sorted({**ep.extra, **_unique_stat(unique, ep.env_index),
                                        "episode_duration_s": float(episode_time[ep.env_index])}.items())),
                )
            )
        self.episodes += len(res.episodes)
        if traj is not None:
            self.sequences += 1
        self.time_policy_s += (t1 - t0) + (t3 - t2)
        self.time_env_s += t2 - t1
        self.time_step_s += perf() - t0
        return traj

    def begin(self) -> None:
        """Reset the envs and the core state now (the first :meth:`step` does it otherwise); a no-op once begun."""
        if self._obs is not None:
            return
        self._obs = self.venv.reset()
        self._state = self.policy.initial_state(self.num_envs, self.device)
        self.writer.begin(self._obs, self._state)

    def _truncation_values(self, res: StepResult, out: ActOut, faulted: np.ndarray | None) -> np.ndarray:
        """Value of the final observation of each truncated slot, with that slot's pre-reset core state.

        Faulted slots: the "final" observation is obs_t itself, already valued by this step's act."""
        tv = np.zeros(self.num_envs, dtype=np.float32)
        trunc = res.truncated
        if faulted is not None and faulted.any():
            tv[faulted] = _np(out.value)[faulted]
            trunc = trunc & ~faulted
        idx = np.flatnonzero(trunc)
        if idx.size == 0:
            return tv
        final = {k: np.stack([res.final_obs[int(i)][k] for i in idx]) for k in self.spec.obs}
        sub = {k: _rows(v, idx) for k, v in out.state.items()}
        tv[idx] = _np(self.policy.act(final, sub).value)
        return tv

    def drain_state_keys(self) -> np.ndarray:
        """State keys (``bonus.count_key``, int64) of the observations acted on since the last call, one per
        env step, for the global count table (drained; empty unless ``bonus.glob=count``)."""
        if not self._state_keys:
            return np.zeros(0, dtype=np.int64)
        out = np.concatenate(self._state_keys)
        self._state_keys = []
        return out

    # ---- reporting ---------------------------------------------------------------------------------------
    def episode_stats(self) -> list[EpisodeStats]:
        """Episodes finished since the last call (drained)."""
        out, self._episode_stats = self._episode_stats, []
        return out

    def counters(self) -> ActorReport:
        """Cumulative counters (:class:`~distrl.types.ActorReport`): env steps, env steps/s since the first
        step, faults, sequences, episodes, policy version and where :meth:`step`'s wall time went."""
        dt = max(time.perf_counter() - self._t_start, 1e-9)
        return ActorReport(
            actor_id=self.actor_id,
            env_steps=int(self.env_steps),
            steps_per_s=self.env_steps / dt,
            faults=int(self.faults),
            sequences=int(self.sequences),
            episodes=int(self.episodes),
            policy_version=int(self.policy_version),
            time_policy_s=self.time_policy_s,
            time_env_s=self.time_env_s,
            time_step_s=self.time_step_s,
        )

    def close(self) -> None:
        self.venv.close()
