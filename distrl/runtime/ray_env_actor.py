"""The Ray side of an env actor: an :class:`~distrl.actors.env_actor.EnvActor` that feeds a replay shard.

:class:`RayEnvActor` is a plain class; :func:`start_env_actor` applies ``ray.remote`` to it at runtime with
the CPUs from the caller (no decorators on library classes). Its :meth:`RayEnvActor.run` loop:

* steps the EnvActor and sends every Trajectory to replay shard ``actor_id mod J`` through a
  :class:`~distrl.replay.client.BoundedInserter`: inserts are not awaited one by one, at most
  ``cfg.replay.max_inflight_inserts`` are unacknowledged, and a shard's rate-limited refusal is re-sent after
  a short back-off (so a learner that falls behind slows the actors down instead of being flooded);
* with ``bonus.glob=count``, sends the state keys it buffered (:meth:`EnvActor.drain_state_keys`) to the run's
  count table with every sequence, not awaited (:class:`~distrl.runtime.ray_counts.RayCounts`);
* every ``cfg.actor.weight_sync_every`` sequences, checks a pending ``weight_store.get_if_changed(version)``
  call with ``ray.wait(timeout=0)``: new weights (or, after a learner restart, older ones) are loaded when they
  have arrived, and stepping never waits for them; weights whose learner died before they were fetched are
  skipped (the actor acts on with what it has).

With ``eval.host=env_actor`` (the default), env actor 0 also plays the run's evaluation episodes
(:meth:`RayEnvActor.evaluate`): a :class:`~distrl.runtime.ray_eval.RayEvaluator` on a thread of its own beside the
stepping loop, with its own envs and seeds, so no evaluator process is needed.

The actor is threaded (``max_concurrency`` > 1) so :meth:`stats`, :meth:`stop` and :meth:`evaluate` are answered
while :meth:`run` is busy. A loop error ends ``run``'s ObjectRef with that error; a killed process surfaces as
``ray.exceptions.RayActorError`` there. The runtime restarts an actor with :func:`restart_env_actor`, which
builds a new one for the same ``actor_id`` with ``incarnation + 1``: fresh env seeds, a fresh policy that
pulls the current weights before its first step, and nothing else to recover (sequences in flight are simply
lost).

Usage::

    handles = start_env_actors(cfg, shard_handles, store_handle)     # cfg.actor.num_actors actors
    ...
    ready, _ = ray.wait([h.run_ref for h in handles], timeout=0)
    for ref in ready:                      # ended: error or killed
        h = next(h for h in handles if h.run_ref == ref)
        handles[handles.index(h)] = restart_env_actor(cfg, h, shard_handles, store_handle)
    stats = ray.get([h.handle.stats.remote() for h in handles])
    for h in handles: h.handle.stop.remote()
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray

from distrl.config import ExperimentConfig
from distrl.envs.base import EnvSpec
from distrl.envs.registry import env_spec
from distrl.replay.client import BoundedInserter, ReplayShardError
from distrl.runtime.ray_counts import RayCounts
from distrl.runtime.ray_eval import EvalOutcome, RayEvaluator
from distrl.runtime.ray_replay import RayShardClient
from distrl.runtime.resources import env_actor_cpus
from distrl.types import ActorReport, ActorStats, EpisodeStats

if TYPE_CHECKING:  # the env actor (and torch, where its policy needs it) load in the actor's process
    # (RayEnvActor.__init__): the driver, which imports this module to start the actors, stays torch-free
    from distrl.actors.env_actor import Policy

PolicyFactory = Callable[[EnvSpec], "Policy"]


class RayEnvActor:
    """Wraps an EnvActor; hosted by Ray via :func:`start_env_actor` (see the module doc)."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        actor_id: int,
        shards: list[Any],
        weight_store: Any | None = None,
        *,
        incarnation: int = 0,
        policy_factory: PolicyFactory | None = None,
        insert_timeout_s: float = 600.0,
        counts: list[Any] | None = None,
    ) -> None:
        if not shards:
            raise ValueError("RayEnvActor: needs at least one replay shard handle")
        import sys

        from distrl.actors.env_actor import EnvActor
        from distrl.models.numpy_kernels import kernel_policy_applies

        self.cfg = cfg
        self.actor_id = actor_id
        self.incarnation = incarnation
        # With weights from a store (pulled before the first step) the actor may act through NumPy kernels and
        # then loads torch only for an episodic bonus (EnvActor's kernels); otherwise torch's thread pool is
        # capped before the policy is built (it times its encoder).
        kernels = weight_store is not None and policy_factory is None
        if not (kernels and kernel_policy_applies(cfg, env_spec(cfg.env))):
            import torch

            torch.set_num_threads(max(1, cfg.actor.threads))
        policy = None if policy_factory is None else policy_factory(env_spec(cfg.env))
        self.actor = EnvActor(cfg, actor_id, policy, incarnation=incarnation, kernels=kernels)
        if "torch" in sys.modules:  # loaded by an episodic bonus, or above
            sys.modules["torch"].set_num_threads(max(1, cfg.actor.threads))
        self.shard_id = actor_id % len(shards)
        self.inserter = BoundedInserter(
            RayShardClient(shards[self.shard_id], self.shard_id, env_spec(cfg.env).frame_stacks),
            cfg.replay.max_inflight_inserts,
            timeout=insert_timeout_s,
        )
        self.weight_store = weight_store
        self._weights_ref: Any = None
        # bonus.glob=count: the states this actor visits go to the run's count table with every sequence.
        self.counts = RayCounts(counts) if counts else None
        # run() works in one thread while stats()/stop() come in on others: they share only this event, the
        # episode deque (thread-safe append/popleft) and counters read as plain numbers (no lock, no stalls).
        self._stop = threading.Event()
        self._running = False
        # The inserter is used by run()'s thread and swapped by replace_shard() (a restarted shard) on another.
        self._insert_lock = threading.Lock()
        self._shard_swapped = threading.Event()
        self._step_started: float | None = None  # monotonic time run() entered the current step (heartbeat)
        self._episodes: collections.deque[EpisodeStats] = collections.deque()
        self._last = (time.monotonic(), 0)
        self.weight_updates = 0
        # evaluate(): the evaluator and the one thread it is built, played and closed on (built on first use).
        self._evaluator: RayEvaluator | None = None
        self._eval_thread: ThreadPoolExecutor | None = None

    # ---- weights -----------------------------------------------------------------------------------------
    def _load(self, res: Any) -> None:
        if res is None:
            return
        _, weights = res
        if isinstance(weights, ray.ObjectRef):
            try:
                weights = ray.get(weights)
            except ray.exceptions.ObjectLostError:  # the learner that published them died: act on, pull again later
                return
        self.actor.set_weights(weights)
        self.weight_updates += 1

    def pull_weights(self, timeout_s: float | None = None) -> int:
        """Blocking pull before the first step: waits until the store holds published weights (the runtime
        starts actors beside the learner, so they may arrive first), loads them and returns their version.
        ``timeout_s`` (None: until :meth:`stop`) bounds the wait; the runtime judges a starting actor by
        ``runtime.placement_timeout_s`` anyway."""
        if self.weight_store is None:
            return self.actor.policy_version
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        loaded = self.weight_updates
        while not self._stop.is_set():
            self._load(ray.get(self.weight_store.get_if_changed.remote(self.actor.policy_version)))
            if self.weight_updates > loaded:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"RayEnvActor {self.actor_id}: no weights were published within {timeout_s:g} s")
            self._stop.wait(0.05)
        return self.actor.policy_version

    def _poll_weights(self) -> None:
        """Non-blocking: collect an answered request, then keep one request in flight."""
        if self.weight_store is None:
            return
        if self._weights_ref is not None:
            ready, _ = ray.wait([self._weights_ref], timeout=0, fetch_local=True)
            if not ready:
                return
            ref, self._weights_ref = self._weights_ref, None
            self._load(ray.get(ref))
        self._weights_ref = self.weight_store.get_if_changed.remote(self.actor.policy_version)

    # ---- loop --------------------------------------------------------------------------------------------
    def run(self, max_sequences: int | None = None) -> ActorReport:
        """Step, insert and sync weights until :meth:`stop` (or ``max_sequences``); returns final counters."""
        if self._running:
            raise RuntimeError(f"RayEnvActor {self.actor_id}: run() is already active")
        self._running = True  # stop() is final: a stop that arrives before run() starts still counts
        try:
            self.actor.begin()  # reset the envs while the learner may still be starting
            self.pull_weights()
            sent = 0
            sync_every = max(1, self.cfg.actor.weight_sync_every)
            while not self._stop.is_set() and (max_sequences is None or sent < max_sequences):
                self._step_started = time.monotonic()
                traj = self.actor.step()
                self._step_started = None
                self._episodes.extend(self.actor.episode_stats())
                if traj is None:
                    continue
                if self.counts is not None:
                    self.counts.send(self.actor.drain_state_keys())
                self._submit(traj, None, self.actor.duration_prior(traj))
                sent += 1
                if sent % sync_every == 0:
                    self._poll_weights()
            # A stopping run's learner may no longer sample, so the shard may refuse what is left: bounded.
            try:
                with self._insert_lock:
                    self.inserter.flush(timeout=5.0)
            except ReplayShardError:  # the shard died as the run stops: what is queued is dropped
                self.inserter.dropped += len(self.inserter)
            if self.counts is not None:
                self.counts.flush(timeout=5.0)
        finally:
            self._running = False
        return self._counters()

    def _submit(self, traj: Any, priorities: Any, prior: Any) -> None:
        """Insert through the bounded window; when the shard has died, wait (while the run goes on) until the
        runtime hands over its restarted replacement (:meth:`replace_shard`), then send to that."""
        deadline = time.monotonic() + self.inserter.timeout
        while True:
            try:
                with self._insert_lock:
                    self.inserter.submit(traj, priorities, prior)
                return
            except ReplayShardError:
                if not self._shard_swapped.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise
                if self._stop.is_set():
                    return  # the run is ending: this sequence is not sent
                self._shard_swapped.clear()

    def replace_shard(self, handle: Any) -> int:
        """Send inserts to ``handle`` from now on (the runtime restarted this actor's shard from its checkpoint);
        what the dead shard had not acknowledged is re-sent there. Returns 1 + the largest key the dead shard
        acknowledged to this actor (its insert count at that moment), from which the runtime counts the
        inserts the restart lost."""
        client = RayShardClient(handle, self.shard_id, env_spec(self.cfg.env).frame_stacks)
        with self._insert_lock:
            acked = self.inserter.replace_client(client)
        self._shard_swapped.set()
        return acked

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current step (and flush its inserts)."""
        self._stop.set()
        self._shard_swapped.set()  # wake a run() waiting for a restarted shard

    def _counters(self) -> ActorReport:
        return dataclasses.replace(
            self.actor.counters(),
            incarnation=self.incarnation,
            inserts_accepted_rows=int(self.inserter.accepted),
            inserts_resent=int(self.inserter.resent),
            inserts_dropped=int(self.inserter.dropped),
            inserts_inflight=len(self.inserter),
            weight_updates=self.weight_updates,
        )

    def stats(self) -> ActorStats:
        """The counters (``steps_per_s`` since the last call) and the episodes finished since the last call
        (drained)."""
        c = self._counters()
        now = time.monotonic()
        t0, n0 = self._last
        self._last = (now, c.env_steps)
        c = dataclasses.replace(c, steps_per_s=(c.env_steps - n0) / max(now - t0, 1e-9))
        eps = []
        while self._episodes:
            eps.append(self._episodes.popleft())
        return ActorStats(report=c, episodes=eps)

    # ---- evaluation (eval.host=env_actor) -----------------------------------------------------------------
    def evaluate(self, episodes: int, greedy: bool, video: bool) -> EvalOutcome | None:
        """Evaluate the weight store's latest weights beside this actor's envs (see the module doc); None when
        nothing was published yet. Plays on a thread of its own, the same one for the evaluator's whole life
        (habitat-sim's envs are bound to the thread that made them); :meth:`run` steps on meanwhile."""
        if self.weight_store is None:
            raise RuntimeError(f"RayEnvActor {self.actor_id}: evaluate() needs a weight store")
        if self._eval_thread is None:
            self._eval_thread = ThreadPoolExecutor(1, thread_name_prefix=f"distrl-eval-{self.actor_id}")
        return self._eval_thread.submit(self._evaluate, episodes, greedy, video).result()

    def _evaluate(self, episodes: int, greedy: bool, video: bool) -> EvalOutcome | None:
        if self._evaluator is None:
            self._evaluator = RayEvaluator(self.cfg, env_spec(self.cfg.env), self.weight_store, own_process=False)
        return self._evaluator.run(episodes, greedy, video)

    def ping(self) -> int:
        return self.actor_id

    def torch_loaded(self) -> bool:
        """Whether this actor's process has loaded torch: not when it acts through NumPy kernels with no episodic
        bonus (``EnvActor.kernels``; about 140 MB of PSS saved, BENCHMARKS.md)."""
        import sys

        return "torch" in sys.modules

    def stuck_for(self) -> float:
        """Seconds run() has been inside its current step (0 between steps), or an evaluation on this actor
        inside its current env call, whichever is longer: the runtime's heartbeat check
        (``runtime.actor_stuck_timeout_s``), so a hung evaluation env gets this actor restarted like a hung
        training env. Answered on another thread, so a hung env cannot block it."""
        started = self._step_started
        stepping = 0.0 if started is None else time.monotonic() - started
        evaluator = self._evaluator
        return max(stepping, 0.0 if evaluator is None else evaluator.stuck_for())

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the loop, wait for it to end (bounded), and shut the envs down."""
        self._stop.set()
        self._shard_swapped.set()
        deadline = time.monotonic() + timeout_s
        while self._running and time.monotonic() < deadline:
            time.sleep(0.01)
        self.actor.close()
        if self._eval_thread is not None:  # the evaluator's envs close on their own thread (after any episode)
            evaluator = self._evaluator
            if evaluator is not None:
                try:
                    self._eval_thread.submit(evaluator.close).result(timeout=max(1.0, deadline - time.monotonic()))
                except Exception:  # still playing, or its env failed to close: the process's exit frees it
                    pass
            self._eval_thread.shutdown(wait=False)


@dataclass
class EnvActorHandle:
    """A started env actor: the Ray handle and the ObjectRef of its running ``run`` call.

    ``ready_ref`` is a ``ping`` sent at creation: it completes once the actor's constructor has run (its envs
    built), so the runtime can tell an actor still starting (slow on a busy machine) from one that stopped
    answering; ``ready`` records that it did (``None``: not tracked, taken as started)."""

    actor_id: int
    incarnation: int
    handle: Any
    run_ref: Any
    ready_ref: Any = None
    started_s: float = field(default_factory=time.monotonic)
    ready: bool = False


def start_env_actor(
    cfg: ExperimentConfig,
    actor_id: int,
    shards: list[Any],
    weight_store: Any | None = None,
    *,
    incarnation: int = 0,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    policy_factory: PolicyFactory | None = None,
    max_sequences: int | None = None,
    counts: list[Any] | None = None,
) -> EnvActorHandle:
    """Create a RayEnvActor and start its loop (``run`` is called at once; its ObjectRef is ``run_ref``).

    ``num_cpus`` defaults to the config's (:func:`~distrl.runtime.resources.env_actor_cpus`); ``resources`` are
    custom Ray resources to ask for (the node label, :func:`~distrl.runtime.resources.ray_options`). The actor
    is named-less and not restarted by Ray (``max_restarts=0``): the runtime decides (see
    :func:`restart_env_actor`).
    """
    if num_cpus is None:
        num_cpus = env_actor_cpus(cfg)
    extra: dict[str, Any] = {"resources": dict(resources)} if resources else {}
    # Threads: run(), evaluate() (env actor 0) and the runtime's stats/stuck_for/stop calls.
    cls = ray.remote(num_cpus=num_cpus, max_concurrency=5, max_restarts=0, **extra)(RayEnvActor)
    handle = cls.remote(
        cfg, actor_id, shards, weight_store, incarnation=incarnation, policy_factory=policy_factory, counts=counts
    )
    return EnvActorHandle(actor_id, incarnation, handle, handle.run.remote(max_sequences), handle.ping.remote())


def start_env_actors(
    cfg: ExperimentConfig,
    shards: list[Any],
    weight_store: Any | None = None,
    *,
    num_actors: int | None = None,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    policy_factory: PolicyFactory | None = None,
    counts: list[Any] | None = None,
) -> list[EnvActorHandle]:
    """``num_actors`` (default ``cfg.actor.num_actors``) env actors with ids 0..N-1, all running."""
    n = cfg.actor.num_actors if num_actors is None else num_actors
    return [
        start_env_actor(cfg, i, shards, weight_store, num_cpus=num_cpus, resources=resources,
                        policy_factory=policy_factory, counts=counts)
        for i in range(n)
    ]


def restart_env_actor(
    cfg: ExperimentConfig,
    old: EnvActorHandle,
    shards: list[Any],
    weight_store: Any | None = None,
    *,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    policy_factory: PolicyFactory | None = None,
    counts: list[Any] | None = None,
) -> EnvActorHandle:
    """Replace a dead (or stuck) actor: kill what is left of it and start ``incarnation + 1`` in its place."""
    try:
        ray.kill(old.handle, no_restart=True)
    except Exception:  # already gone
        pass
    return start_env_actor(
        cfg,
        old.actor_id,
        shards,
        weight_store,
        incarnation=old.incarnation + 1,
        num_cpus=num_cpus,
        resources=resources,
        policy_factory=policy_factory,
        counts=counts,
    )
