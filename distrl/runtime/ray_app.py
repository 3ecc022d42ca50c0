"""RayRuntime: env actors, replay shards, a weight store and data-parallel learners as Ray actors.

Placement and resources come from the config; library classes stay plain and are wrapped here with
``ray.remote(...)`` at run time. The driver (this process) only orchestrates: it keeps every learner busy with
``train`` calls, polls actor and shard stats for the dashboards, restarts env actors that died, and writes
checkpoints.

* **Cluster**: ``runtime.address`` (or ``RAY_ADDRESS``, set by ``ray job submit``) joins a running cluster;
  otherwise a local Ray instance starts on 127.0.0.1 without a dashboard and stops at the end.
* **Resources**: what each learner, env actor and replay shard reserves comes from the config
  (``learner.num_cpus``, ``actor.num_cpus``, ``replay.num_cpus``), through :mod:`distrl.runtime.resources`;
  on a cluster whose nodes carry the custom resources ``learner`` / ``env_actor`` / ``replay_shard``
  (``clusters/*.yaml``) each is pinned to its nodes (``runtime.node_labels``). The start logs the choice
  and the summary holds it (``ray_resources``).
* **Learners**: ``learner.num_learners`` replicas, each with its own ReplaySampler over all shards; with more
  than one, gradients are all-reduced through ``torch.distributed`` (gloo on CPU, NCCL on GPU), rank 0
  publishes weights and writes checkpoints. A learner gets a GPU when the cluster has one and
  ``learner.device`` is ``auto`` or ``cuda``.
* **Weights**: rank 0 puts the state_dict into the object store once per publish; the WeightStore actor keeps
  only its ObjectRef, and actors fetch it when their version is older.
* **Checkpoints**: the driver writes the learner checkpoint into the run directory (learner state travels through
  the object store); replay shards write theirs from their own node, so on a multi-node cluster put
  ``runtime.run_dir`` on a shared filesystem, make it a URI (``s3://...``: each writer stages on its node and
  uploads through fsspec, :mod:`distrl.storage`), or label the driver's node ``replay_shard`` (clusters/*.yaml do).
  With ``replay.checkpoint_every_s`` > 0 the shards also checkpoint themselves that often during the run
  (atomically, one round at a time, without blocking the driver: ``replay/checkpoint_s`` on the dashboard).
* **Fitting a small cluster**: joining an unlabelled cluster with fewer CPUs than the run reserves (``ray start
  --head`` on a laptop), every CPU reservation is scaled down by one factor and the log says so
  (``runtime.fit_to_cluster``, :func:`distrl.runtime.resources.fit_to_cluster`).
* **Faults**: a dead env actor, or one stuck inside a step for ``runtime.actor_stuck_timeout_s`` (a hung env:
  its loop's heartbeat, :meth:`RayEnvActor.stuck_for`), is killed and restarted (up to ``runtime.actor_restarts``
  times per actor id) and the run goes on. A dead replay shard is found at the next stats poll (every
  ``logging.log_every_s``) and restarted from its last checkpoint (as often): the learners and its env actors
  switch to the new actor, what it had not acknowledged is re-sent, and the acknowledged inserts since the
  checkpoint are counted as lost (``replay/lost_inserts``). A dead learner stops the run with an error naming
  it (resume with ``--resume``).
* **Evaluation**: every ``eval.every_updates`` learner updates, an evaluator actor (``eval.num_cpus``, default 0)
  plays a few episodes with the weight store's latest weights while training goes on; the driver polls it without
  waiting and logs ``eval/`` metrics and the video (:mod:`distrl.runtime.ray_eval`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import ray
import torch
import torch.distributed as dist

from distrl import storage
from distrl.bonuses.counts import load_count_state, save_count_state
from distrl.config import ExperimentConfig
from distrl.envs.base import EnvSpec
from distrl.envs.registry import env_spec
from distrl.learners.bonus import attach_counts
from distrl.learners.learner import load_checkpoint_file, save_checkpoint_file
from distrl.replay.sampler import ReplaySampler
from distrl.runtime.common import RunMonitor, RunPaths, n_fresh, next_checkpoint
from distrl.runtime.learner_worker import LearnerWorker
from distrl.runtime.ray_counts import RayCounts, make_count_actors
from distrl.runtime.ray_env_actor import EnvActorHandle, restart_env_actor, start_env_actors
from distrl.runtime.ray_eval import EvalDriver
from distrl.runtime.ray_replay import (
    PeriodicShardCheckpoints,
    RayShardClient,
    make_ray_shard,
    make_ray_shards,
    ray_shard_clients,
)
from distrl.runtime.resources import (
    ENV_ACTOR,
    LEARNER,
    REPLAY_SHARD,
    cpus_needed,
    describe,
    fit_to_cluster,
    placement_message,
    ray_options,
)
from distrl.runtime.weights import WeightStore
from distrl.types import ActorReport, LearnerReport, PolicyWeights

log = logging.getLogger(__name__)


class RayWeightStore(WeightStore):
    """The WeightStore as a Ray actor. ``publish`` receives ``[ref]`` (a list, so Ray does not resolve the ref
    into a copy here) and keeps the ObjectRef; actors resolve it themselves."""

    def publish(self, version: int, boxed: Any) -> None:  # type: ignore[override]
        super().publish(version, boxed[0])


class RayLearner:
    """Hosts a LearnerWorker in a Ray actor; its sampler talks to the shard actors."""

    def __init__(
        self, cfg: ExperimentConfig, spec: EnvSpec, shards: list[Any], store: Any, rank: int, world: int,
        counts: list[Any] | None = None,
    ) -> None:
        self.cfg, self.spec, self.shards, self.store = cfg, spec, shards, store
        self.rank, self.world = rank, world
        self.counts = counts or []  # count-table actors (bonus.glob=count)
        self.worker: LearnerWorker | None = None

    def dist_address(self) -> str:
        """A free TCP port on this node for the torch.distributed rendezvous (called on rank 0)."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def setup(self, init_method: str | None) -> int:
        if self.world > 1:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend, init_method=init_method, rank=self.rank, world_size=self.world)
        sampler = ReplaySampler(
            ray_shard_clients(self.shards),
            self.cfg.replay,
            self.cfg.learner.batch_size,
            n_fresh=n_fresh(self.cfg),
            prefetch=2,
            seed=self.cfg.runtime.seed * 1000 + self.rank,
        )
        store = self.store

        def publish(weights: PolicyWeights) -> None:
            store.publish.remote(weights.version, [ray.put(weights)])

        self.worker = LearnerWorker(self.cfg, self.spec, sampler, publish=publish, rank=self.rank)
        if self.counts:
            attach_counts(self.worker.learner.extras, RayCounts(self.counts))
        return self.worker.version

    def _w(self) -> LearnerWorker:
        if self.worker is None:
            raise RuntimeError("RayLearner.setup() was not called")
        return self.worker

    def train(self, max_updates: int, timeout_s: float) -> LearnerReport:
        return self._w().train(max_updates, timeout_s)

    def publish_weights(self) -> int:
        self._w().publish_weights()
        return self._w().version

    def replace_shard(self, shard: int, handle: Any) -> None:
        """Sample from ``handle`` for shard index ``shard`` (the runtime restarted that shard)."""
        self.shards[shard] = handle
        self._w().sampler.replace_client(shard, RayShardClient(handle, shard))

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and counters on the CPU: the driver writes the checkpoint file (on a cluster the
        learner's node may not see the run directory)."""
        return self._w().learner.state_dict()

    def load_state_dict(self, state: dict[str, Any], source: str) -> int:
        self._w().learner.load_state_dict(state, source=source)
        return self._w().version

    def parameters_vector(self) -> torch.Tensor:
        return self._w().parameters_vector()

    def device(self) -> str:
        return str(self._w().learner.device)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_local_ray(**kwargs: Any) -> None:
    """``ray.init`` a fresh single-machine cluster whose every process (GCS, raylet, workers, dashboard and
    runtime-env agents) listens on 127.0.0.1 only.

    ``_node_ip_address="127.0.0.1"`` alone does not do it: Ray replaces a loopback node address by the host's
    routable one (so other nodes could join) and its servers then listen on all interfaces. With clusters
    disabled (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's default on macOS and Windows) the node address
    stays loopback; the setting applies while the cluster starts (its processes inherit it) and is put back
    afterwards, so a later ``ray.init(address=...)`` in this process can still join a real cluster.
    """
    from ray._private import ray_constants  # the flag is read once, at import; set it for this start

    saved_env, saved_flag = os.environ.get(_LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(_node_ip_address="127.0.0.1", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = saved_env


class RayRuntime:
    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False, location: str = "") -> None:
        self.cfg = cfg
        self.paths = RunPaths(Path(run_dir), location or str(run_dir))  # location: a remote URI run_dir stages for
        self.resume = resume
        self.learners: list[Any] = []
        self.actor_handles: list[EnvActorHandle] = []
        self.options: dict[str, dict[str, Any]] = {}  # ray.remote resource options per component (set in _train)
        self.counts: RayCounts | None = None  # the global count table's actors (bonus.glob=count)

    # ---- cluster ------------------------------------------------------------------------------------------
    def _init_ray(self) -> bool:
        """Join or start Ray; returns True when this runtime started it (and so must stop it)."""
        if ray.is_initialized():
            return False
        address = self.cfg.runtime.address or os.environ.get("RAY_ADDRESS", "")
        if address:
            ray.init(address=address, log_to_driver=False)
            return True
        cfg = self.cfg
        need = cpus_needed(cfg)["total"]
        num_cpus = cfg.runtime.num_cpus or max(os.cpu_count() or 1, int(need + 0.999))
        init_local_ray(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
        return True

    # ---- main loop ----------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        started = self._init_ray()
        try:
            return self._train()
        finally:
            if started:
                ray.shutdown()

    def _train(self) -> dict[str, Any]:
        cfg, paths = self.cfg, self.paths
        spec = env_spec(cfg.env)
        J = cfg.replay.num_shards
        restore: list[str | Path] = [paths.shard_location(j) for j in range(J)]
        restore_dirs = restore if self.resume and all(storage.exists(str(d)) for d in restore) else None
        cluster = ray.cluster_resources()
        self.options, fitted = fit_to_cluster(cfg, ray_options(cfg, cluster), cluster)
        opts = self.options
        if fitted:
            log.warning("distrl: %s", fitted)
        log.info("distrl: %s", describe(cfg, opts, cluster))
        shard_opts = opts[REPLAY_SHARD]
        shards = make_ray_shards(cfg.replay, J, num_cpus=shard_opts["num_cpus"], resources=shard_opts.get("resources"),
                                 seed=cfg.runtime.seed, restore_dirs=restore_dirs)
        self.shard_handles = shards  # live view for tests and debugging (entries replaced on restart)
        store = ray.remote(num_cpus=0)(RayWeightStore).remote()
        count_actors = make_count_actors(cfg, shard_opts.get("resources")) if cfg.bonus.glob == "count" else []
        self.counts = RayCounts(count_actors) if count_actors else None
        world = cfg.learner.num_learners
        if not fitted and float(cluster.get("CPU", 0.0)) + 1e-9 < cpus_needed(cfg)["total"]:
            # An autoscaling cluster may still add nodes; otherwise Ray would wait for ever, so say it now.
            log.warning("distrl: %s; waiting up to runtime.placement_timeout_s=%g s for more nodes",
                        placement_message(cfg, cluster), cfg.runtime.placement_timeout_s)
        cls = ray.remote(**opts[LEARNER])(RayLearner)
        self.learners = learners = [cls.remote(cfg, spec, shards, store, r, world, count_actors)
                                    for r in range(world)]
        actors: list[EnvActorHandle] = []
        try:  # set-up: what it started is killed if it fails (the main loop's finally covers the rest)
            init = self._await_placed(learners[0].dist_address.remote(), "the learners") if world > 1 else None
            self._await_placed([lr.setup.remote(init) for lr in learners], "the learners")
            env_steps_base = 0
            if self.resume and paths.learner_checkpoint.is_file():
                state = load_checkpoint_file(paths.learner_checkpoint)
                ray.get([lr.load_state_dict.remote(state, str(paths.learner_checkpoint)) for lr in learners])
                env_steps_base = int(state.get("extra", {}).get("env_steps", 0))
            if self.resume and self.counts is not None and paths.counts_checkpoint.is_file():
                self.counts.load_state_dict(load_count_state(paths.counts_checkpoint))
            version = ray.get(learners[0].publish_weights.remote())
            actors = start_env_actors(cfg, shards, store, **self._actor_options())
            self._await_placed([h.handle.ping.remote() for h in actors], "the env actors")
        except BaseException:
            for h in [*(a.handle for a in actors), *learners, *shards, *count_actors, store]:
                ray.kill(h)
            raise
        self.actor_handles = actors  # live view for tests and debugging (replaced entries on restart)
        restarts: dict[int, int] = {}
        actor_steps: dict[tuple[int, int], int] = {}
        latest_stats: dict[int, ActorReport] = {}
        monitor = RunMonitor(cfg, paths.run_dir, env_steps_base)
        every = cfg.learner.checkpoint_every
        next_ckpt = next_checkpoint(version, every)
        round_refs = [lr.train.remote(64, 0.5) for lr in learners]
        evals = EvalDriver(cfg, spec, store, video_path=paths.eval_video)
        evals.start_at(version)
        shard_ckpts = PeriodicShardCheckpoints(cfg.replay.checkpoint_every_s,
                                               [paths.shard_location(j) for j in range(J)])
        self.shard_restarts: dict[int, int] = {}
        self.lost_inserts = 0

        def shard_stats() -> list[Any]:
            return self._shard_stats(shards, learners, actors, shard_ckpts)

        def replay_metrics() -> dict[str, float]:
            return {**shard_ckpts.metrics(), "replay/lost_inserts": float(self.lost_inserts),
                    "replay/shard_restarts": float(sum(self.shard_restarts.values()))}

        exit_code = 1

        def env_steps() -> int:
            return env_steps_base + sum(actor_steps.values())

        try:
            last_poll = last_log = 0.0
            while not monitor.should_stop(env_steps()):
                # Learners train in rounds: every replica gets the same call and they return together.
                ready, _ = ray.wait(round_refs, num_returns=len(round_refs), timeout=0.2)
                if len(ready) == len(round_refs):
                    version = self._collect_round(round_refs, monitor)
                    if next_ckpt and version >= next_ckpt:
                        self._save_learner(env_steps())
                        next_ckpt = next_checkpoint(version, every)
                    round_refs = [lr.train.remote(64, 0.5) for lr in learners]
                    evals.on_version(version)
                for result in evals.poll():
                    monitor.log_eval(result, env_steps())
                now = time.monotonic()
                if now - last_poll >= min(1.0, cfg.logging.log_every_s):
                    last_poll = now
                    actors = self._poll_actors(actors, shards, store, restarts, actor_steps, latest_stats, monitor)
                    self.actor_handles = actors
                shard_ckpts.poll(shards, now)
                if now - last_log >= cfg.logging.log_every_s:
                    last_log = now
                    stats = shard_stats()  # restarts a shard that died
                    monitor.maybe_log(env_steps(), stats, list(latest_stats.values()), replay_metrics(), force=True)
            # ---- shutdown: stop actors, let learners finish their call, final checkpoints --------------------
            for h in actors:
                h.handle.stop.remote()
            ray.wait([h.run_ref for h in actors], num_returns=len(actors), timeout=30)
            actors = self._poll_actors(actors, shards, store, restarts, actor_steps, latest_stats, monitor,
                                       restart=False)
            try:
                ready, _ = ray.wait(round_refs, num_returns=len(round_refs), timeout=300)
                if len(ready) == len(round_refs):
                    version = self._collect_round(round_refs, monitor)
            except ray.exceptions.RayError as e:
                raise RuntimeError(f"a learner failed: {e}") from e
            for result in evals.finish(version):  # the trained agent as it ends
                monitor.log_eval(result, env_steps())
            self._save_learner(env_steps())
            shard_ckpts.wait()
            shard_stats()
            ray.get([s.save.remote(paths.shard_location(j)) for j, s in enumerate(shards)])
            stats = ray.get([s.stats.remote() for s in shards], timeout=60)
            monitor.maybe_log(env_steps(), stats, list(latest_stats.values()), replay_metrics(), force=True)
            summary = monitor.summary(env_steps())
            summary["actor_restarts"] = sum(restarts.values())
            summary["replay_shard_restarts"] = sum(self.shard_restarts.values())
            summary["replay_lost_inserts"] = self.lost_inserts
            summary["replay_inserted"] = sum(int(st.inserted) for st in stats)
            summary["replay_inserts_acked"] = sum(int(r.inserts_accepted_rows) for r in latest_stats.values())
            summary["ray_resources"] = opts
            if world > 1:
                params = ray.get([lr.parameters_vector.remote() for lr in learners])
                summary["learner_param_max_abs_diff"] = max(float((p - params[0]).abs().max()) for p in params)
            exit_code = 0
            return summary
        finally:
            evals.close()
            monitor.close(exit_code)
            for h in actors:
                try:
                    ray.get(h.handle.close.remote(), timeout=30)
                except Exception:
                    pass
                ray.kill(h.handle)
            for lr in learners:
                ray.kill(lr)
            for s in [*shards, *count_actors]:
                ray.kill(s)
            ray.kill(store)

    def _shard_stats(self, shards: list[Any], learners: list[Any], actors: list[EnvActorHandle],
                     ckpts: PeriodicShardCheckpoints) -> list[Any]:
        """Every shard's stats; a shard whose actor died is restarted first (:meth:`_restart_shard`)."""
        refs = [s.stats.remote() for s in shards]
        out = []
        for j, ref in enumerate(refs):
            try:
                out.append(ray.get(ref, timeout=60))
            except ray.exceptions.RayActorError as e:
                out.append(self._restart_shard(j, e, shards, learners, actors, ckpts))
        return out

    def _restart_shard(self, j: int, err: BaseException, shards: list[Any], learners: list[Any],
                       actors: list[EnvActorHandle], ckpts: PeriodicShardCheckpoints) -> Any:
        """Replace dead shard ``j`` by a new actor loaded from its last checkpoint (empty without one), hand it
        to the learners' samplers and to the env actors that insert into it, and count as lost what the dead
        one had acknowledged since that checkpoint: its keys are its insert counter, so the largest key it
        acknowledged to any actor, less the counter restored from the checkpoint, is the number of acknowledged
        inserts gone. (Inserts it had not acknowledged are re-sent to the new shard.) Returns its stats."""
        cfg = self.cfg
        n = self.shard_restarts.get(j, 0) + 1
        if n > cfg.runtime.actor_restarts:
            raise RuntimeError(f"replay shard {j} died {n} times (limit runtime.actor_restarts="
                               f"{cfg.runtime.actor_restarts}); last error: {err}") from err
        self.shard_restarts[j] = n
        ckpts.forget(j)
        location = self.paths.shard_location(j)
        restore = location if storage.exists(location) else None
        o = self.options[REPLAY_SHARD]
        new = make_ray_shard(cfg.replay, j, num_cpus=o["num_cpus"], resources=o.get("resources"),
                             seed=cfg.runtime.seed, restore_from=restore)
        stats = ray.get(new.stats.remote(), timeout=60)
        shards[j] = new
        for lr in learners:
            lr.replace_shard.remote(j, new)  # runs when the learner's current training call returns
        acked = []
        for h in actors:
            if h.actor_id % len(shards) == j:
                try:
                    acked.append(int(ray.get(h.handle.replace_shard.remote(new), timeout=120)))
                except ray.exceptions.RayError:
                    pass  # that actor died too: _poll_actors restarts it with the new shard
        lost = max(0, max(acked, default=0) - int(stats.inserted))
        self.lost_inserts += lost
        log.warning("distrl: replay shard %d died (%s); restarted (%d/%d) from %s: %d rows restored, %d "
                    "acknowledged inserts lost since that checkpoint", j, err, n, cfg.runtime.actor_restarts,
                    restore or "nothing (no checkpoint yet)", stats.inserted, lost)
        return stats

    def _await_placed(self, refs: Any, what: str) -> Any:
        """ray.get that fails with the resource arithmetic, not silence, when ``what`` cannot be placed."""
        timeout = self.cfg.runtime.placement_timeout_s or None
        try:
            return ray.get(refs, timeout=timeout)
        except ray.exceptions.GetTimeoutError as e:
            raise RuntimeError(
                f"{what} did not start within runtime.placement_timeout_s={timeout:g} s: "
                f"{placement_message(self.cfg, ray.cluster_resources())}"
            ) from e

    def _actor_options(self) -> dict[str, Any]:
        """``num_cpus`` / ``resources`` keywords for start_env_actor(s) and restart_env_actor."""
        o = self.options[ENV_ACTOR]
        return {"num_cpus": o["num_cpus"], "resources": o.get("resources"),
                "counts": None if self.counts is None else self.counts.handles}

    def _save_learner(self, env_steps: int) -> None:
        state = ray.get(self.learners[0].state_dict.remote())
        save_checkpoint_file({**state, "extra": {"env_steps": env_steps}}, self.paths.learner_checkpoint)
        if self.counts is not None:
            save_count_state(self.counts.state_dict(), self.paths.counts_checkpoint)
        self.paths.push("checkpoints")

    @staticmethod
    def _collect_round(refs: list[Any], monitor: RunMonitor) -> int:
        """Fold one round of learner reports into the monitor; returns the learner version."""
        try:
            reports = ray.get(refs)
        except ray.exceptions.RayError as e:
            raise RuntimeError(f"a learner failed: {e}") from e
        monitor.add_learner_report(reports[0])
        for r in reports[1:]:
            monitor.learner_env_steps += r.env_steps
        return reports[0].version

    def _poll_actors(
        self,
        actors: list[EnvActorHandle],
        shards: list[Any],
        store: Any,
        restarts: dict[int, int],
        actor_steps: dict[tuple[int, int], int],
        latest_stats: dict[int, ActorReport],
        monitor: RunMonitor,
        restart: bool = True,
    ) -> list[EnvActorHandle]:
        """Collect stats and episodes; restart actors whose process died or whose loop raised."""
        cfg = self.cfg
        refs = [h.handle.stats.remote() for h in actors]
        stuck_limit = cfg.runtime.actor_stuck_timeout_s if restart else 0.0
        stuck_refs = [h.handle.stuck_for.remote() if stuck_limit > 0 else None for h in actors]
        out = list(actors)
        for k, (h, ref) in enumerate(zip(actors, refs)):
            try:
                st = ray.get(ref, timeout=30)
                stuck = ray.get(stuck_refs[k], timeout=30) if stuck_refs[k] is not None else 0.0
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                st = None
                err: BaseException | None = e
            else:
                err = None
                finished, _ = ray.wait([h.run_ref], timeout=0)
                if finished and restart:
                    try:
                        ray.get(finished[0])
                        err = RuntimeError("run loop returned unexpectedly")
                    except ray.exceptions.RayError as e:
                        err = e
                elif stuck > stuck_limit > 0:  # answers, but its loop hangs in a step (a hung env): heartbeat lost
                    err = RuntimeError(f"stuck in one step for {stuck:.0f} s (runtime.actor_stuck_timeout_s="
                                       f"{stuck_limit:g})")
            if st is not None:
                monitor.add_episodes(st.episodes)
                actor_steps[(h.actor_id, h.incarnation)] = st.report.env_steps
                latest_stats[h.actor_id] = st.report
            if err is not None and restart:
                n = restarts.get(h.actor_id, 0) + 1
                if n > cfg.runtime.actor_restarts:
                    raise RuntimeError(
                        f"env actor {h.actor_id} died {n} times (limit runtime.actor_restarts="
                        f"{cfg.runtime.actor_restarts}); last error: {err}"
                    ) from err
                restarts[h.actor_id] = n
                log.warning("env actor %d died (%s); restarting (%d/%d)", h.actor_id, err, n,
                            cfg.runtime.actor_restarts)
                out[k] = restart_env_actor(cfg, h, shards, store, **self._actor_options())
                monitor.sinks.log({"actor/restarts": float(sum(restarts.values()))}, step=monitor.env_steps_base
                                  + sum(actor_steps.values()))
        return out
