"""RayRuntime: env actors, replay shards, a weight store and data-parallel learners as Ray actors.

Placement and resources come from the config; library classes stay plain and are wrapped here with
``ray.remote(...)`` at run time. The driver (this process) only orchestrates: it keeps every learner busy with
``train`` calls, polls actor and shard stats for the dashboards, restarts env actors that died, and writes
checkpoints.

* **Cluster**: ``runtime.address`` (or ``RAY_ADDRESS``, set by ``ray job submit``) joins a running cluster;
  otherwise a local Ray instance starts on 127.0.0.1 without a dashboard, with capped GCS tables and its
  workers at the driver's priority (:func:`distrl.runtime.ray_start.local_ray_system_config`), and stops at
  the end.
* **Start-up**: the shards, the learners and the env actors are created at once, so their processes import and
  build side by side; the env actors reset their envs and wait for the first published weights (on ``--resume``,
  the checkpoint's), and the dashboard opens while the driver waits for the learners.
* **Resources**: what each learner, env actor and replay shard reserves comes from the config
  (``learner.num_cpus``, ``actor.num_cpus``, ``replay.num_cpus``), through :mod:`distrl.runtime.resources`;
  on a cluster whose nodes carry the custom resources ``learner`` / ``env_actor`` / ``replay_shard``
  (``clusters/*.yaml``) each is pinned to its nodes (``runtime.node_labels``). The start logs the choice
  and the summary holds it (``ray_resources``).
* **Learners**: ``learner.num_learners`` replicas (:mod:`distrl.runtime.ray_learners`), each with its own
  ReplaySampler over all shards; with more than one, gradients are all-reduced through ``torch.distributed``
  (gloo on CPU, NCCL on GPU), rank 0 publishes weights and its state is the checkpoint. A learner gets a GPU
  when the cluster has one and ``learner.device`` is ``auto`` or ``cuda``.
* **Weights**: rank 0 puts the state_dict into the object store once per publish; the WeightStore actor keeps
  only its ObjectRef, and actors fetch it when their version differs (older; or newer, after a learner restart).
* **Checkpoints**: the driver writes the learner checkpoint into the run directory (learner state travels through
  the object store) as the run starts, every ``learner.checkpoint_every`` updates and at the end; replay shards
  write theirs from their own node, so on a multi-node cluster put ``runtime.run_dir`` on a shared filesystem,
  make it a URI (``s3://...``: each writer stages on its node and uploads through fsspec, :mod:`distrl.storage`),
  or label the driver's node ``replay_shard`` (clusters/*.yaml do).
  With ``replay.checkpoint_every_s`` > 0 the shards also checkpoint themselves that often during the run
  (atomically, one round at a time, without blocking the driver: ``replay/checkpoint_s`` on the dashboard).
* **Fitting a small cluster**: joining an unlabelled cluster with fewer CPUs than the run reserves (``ray start
  --head`` on a laptop), every CPU reservation is scaled down by one factor and the log says so
  (``runtime.fit_to_cluster``, :func:`distrl.runtime.resources.fit_to_cluster`).
* **Faults**: a dead env actor, or one stuck inside a step for ``runtime.actor_stuck_timeout_s`` (a hung env: its
  loop's heartbeat, :meth:`RayEnvActor.stuck_for`, which also covers an evaluation env env actor 0 hosts), is
  killed and restarted (up to ``runtime.actor_restarts`` times per actor id) and the run goes on; an actor still
  starting (its constructor or its first step, which builds the envs) is given ``runtime.placement_timeout_s``
  instead (:meth:`RayRuntime._poll_actors`). A dead replay shard is
  found at the next stats poll (every ``logging.log_every_s``) and restarted from its last checkpoint (up to
  ``runtime.shard_restarts`` times per shard id): the learners and its env actors switch to the new actor, what it had
  not acknowledged is re-sent, and the acknowledged inserts since the checkpoint are counted as lost
  (``replay/lost_inserts``, see :meth:`RayRuntime._restart_shard` for how exact). The new shard is a new incarnation
  whose keys differ from the dead one's, so priority updates the learners still send for rows sampled before the death
  are dropped and counted (``replay/stale_priority_updates``) instead of landing on new rows. A learner that died,
  raised, or has not returned from a training round for ``runtime.learner_stuck_timeout_s`` is restarted from the last
  learner checkpoint (up to ``runtime.learner_restarts`` times per rank; with several learners the group re-forms and
  all go back to that checkpoint) while the actors go on with the weights they have: ``learner/restarts``,
  ``learner/updates_lost`` (:class:`~distrl.runtime.ray_learners.LearnerGroup`).
* **Evaluation**: every ``eval.every_updates`` learner updates, env actor 0 (``eval.host=env_actor``, the
  default; an evaluator actor while it is down) or an evaluator actor of its own (``eval.host=evaluator``,
  ``eval.num_cpus``) plays a few episodes with the weight store's latest weights while training goes on; the
  driver polls it without waiting and logs ``eval/`` metrics and the video (:mod:`distrl.runtime.ray_eval`). The
  final evaluation runs after the other env actors have been closed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from distrl import storage
from distrl.bonuses.counts import load_count_state, save_count_state
from distrl.config import ExperimentConfig
from distrl.envs.registry import env_spec
from distrl.runtime.common import RunMonitor, RunPaths, heartbeat_answer_s, next_checkpoint
from distrl.runtime.ray_counts import RayCounts, make_count_actors
from distrl.runtime.ray_env_actor import EnvActorHandle, restart_env_actor, start_env_actors
from distrl.runtime.ray_eval import EvalDriver
from distrl.runtime.ray_learners import LearnerGroup
from distrl.runtime.ray_replay import PeriodicShardCheckpoints, make_ray_shard, make_ray_shards
from distrl.runtime.ray_start import start_ray
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
from distrl.runtime.weights import RayWeightStore
from distrl.types import ActorReport, LearnerReport

log = logging.getLogger(__name__)


def _close_env_actors(actors: list[EnvActorHandle]) -> None:
    """Close each env actor's envs (bounded wait) and kill its process."""
    for h in actors:
        try:
            ray.get(h.handle.close.remote(), timeout=30)
        except Exception:
            pass
        ray.kill(h.handle)


def _eval_host(actors: list[EnvActorHandle]) -> Any:
    """Env actor 0's handle, the evaluations' host with ``eval.host=env_actor`` (None while it is down)."""
    return next((h.handle for h in actors if h.actor_id == 0), None)


class RayRuntime:
    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False, location: str = "",
                 owns_ray: bool = False) -> None:
        self.cfg = cfg
        self.owns_ray = owns_ray  # Ray was started for this run (start_ray_while_importing): train() shuts it down
        self.paths = RunPaths(Path(run_dir), location or str(run_dir))  # location: a remote URI run_dir stages for
        self.resume = resume
        self.learner_group: LearnerGroup | None = None  # live view for tests and chaos (set in _train)
        self.actor_handles: list[EnvActorHandle] = []
        self.options: dict[str, dict[str, Any]] = {}  # ray.remote resource options per component (set in _train)
        self.counts: RayCounts | None = None  # the global count table's actors (bonus.glob=count)
        self.eval_driver: EvalDriver | None = None  # live view for tests (set in _train)

    # ---- cluster ------------------------------------------------------------------------------------------
    # ---- main loop ----------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        started = self.owns_ray or start_ray(self.cfg)  # started for this run already: not again
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
        self.learner_group = learners = LearnerGroup(cfg, spec, shards, store, count_actors, opts[LEARNER], paths,
                                                     self._await_placed)
        actors: list[EnvActorHandle] = []
        # The driver's last view of each shard (insert count, incarnation, stale updates): a restart counts
        # from it (_restart_shard).
        self._shard_seen: dict[int, Any] = {}
        self._stale_updates_dead = 0  # replay/stale_priority_updates counted by shard incarnations now dead
        state: dict[str, Any] | None = None
        if self.resume and paths.learner_checkpoint.is_file():
            from distrl.learners.learner import load_checkpoint_file  # loads torch here: on --resume only

            state = load_checkpoint_file(paths.learner_checkpoint)  # a bad file fails here, before any actor starts
        env_steps_base = int(state.get("extra", {}).get("env_steps", 0)) if state is not None else 0
        monitor: RunMonitor | None = None
        try:  # set-up: what it started is killed if it fails (the main loop's finally covers the rest)
            # Every process starts at once (they import torch and build models and envs side by side); the env
            # actors reset their envs and then wait for the first published weights. Only then does the driver
            # wait, opening the run's dashboard meanwhile.
            learners.create()
            actors = start_env_actors(cfg, shards, store, **self._actor_options())
            monitor = RunMonitor(cfg, paths.run_dir, env_steps_base)
            for j, st in enumerate(ray.get([s.stats.remote() for s in shards], timeout=600)):
                self._shard_seen[j] = st  # the incarnations restored on --resume: a restart must go above them
            learners.form()
            if state is not None:
                learners.load(state, str(paths.learner_checkpoint))
            if self.resume and self.counts is not None and paths.counts_checkpoint.is_file():
                self.counts.load_state_dict(load_count_state(paths.counts_checkpoint))
            version = learners.publish()
            self._save_learner(env_steps_base)  # a start-of-run checkpoint: a dead learner always has one to go back to
            self._await_placed([h.handle.ping.remote() for h in actors], "the env actors")
        except BaseException:
            for h in [*(a.handle for a in actors), *learners.handles, *shards, *count_actors, store]:
                ray.kill(h)
            if monitor is not None:
                monitor.close(1)
            raise
        assert monitor is not None
        monitor.start_clock()
        self.actor_handles = actors  # live view for tests and debugging (replaced entries on restart)
        restarts: dict[int, int] = {}
        actor_steps: dict[tuple[int, int], int] = {}
        latest_stats: dict[int, ActorReport] = {}
        every = cfg.learner.checkpoint_every
        next_ckpt = next_checkpoint(version, every)
        generation = learners.generation
        self.eval_driver = evals = EvalDriver(cfg, spec, store, video_path=paths.eval_video)  # live view for tests
        evals.start_at(version)
        evals.set_host(_eval_host(actors))
        shard_ckpts = PeriodicShardCheckpoints(cfg.replay.checkpoint_every_s,
                                               [paths.shard_location(j) for j in range(J)])
        self.shard_restarts: dict[int, int] = {}
        self.lost_inserts = 0

        def shard_stats() -> list[Any]:
            return self._shard_stats(shards, learners, actors, shard_ckpts)

        def fault_metrics() -> dict[str, float]:
            return {**shard_ckpts.metrics(), "replay/lost_inserts": float(self.lost_inserts),
                    "replay/shard_restarts": float(sum(self.shard_restarts.values())),
                    "replay/stale_priority_updates": float(self._stale_updates()),
                    "learner/restarts": float(sum(learners.restarts.values())),
                    "learner/updates_lost": float(learners.updates_lost)}

        exit_code = 1

        def env_steps() -> int:
            return env_steps_base + sum(actor_steps.values())

        try:
            last_poll = last_log = 0.0
            while not monitor.should_stop(env_steps()):
                # Learners train in rounds: every replica gets the same call and they return together.
                reports = learners.poll(0.2)  # restarts a learner that died or hangs
                if reports is not None:
                    version = self._collect_round(reports, monitor)
                    if next_ckpt and version >= next_ckpt:
                        self._save_learner(env_steps())
                        next_ckpt = next_checkpoint(learners.version, every)
                    evals.on_version(version)
                if learners.generation != generation:  # restarted from a checkpoint: its version, its schedule
                    generation, version = learners.generation, learners.version
                    next_ckpt = next_checkpoint(version, every)
                    monitor.sinks.log(fault_metrics(), step=env_steps())
                for result in evals.poll():
                    monitor.log_eval(result, env_steps())
                now = time.monotonic()
                if now - last_poll >= min(1.0, cfg.logging.log_every_s):
                    last_poll = now
                    actors = self._poll_actors(actors, shards, store, restarts, actor_steps, latest_stats, monitor)
                    self.actor_handles = actors
                    evals.set_host(_eval_host(actors))
                shard_ckpts.poll(shards, now)
                if now - last_log >= cfg.logging.log_every_s:
                    last_log = now
                    stats = shard_stats()  # restarts a shard that died
                    monitor.maybe_log(env_steps(), stats, list(latest_stats.values()), fault_metrics(), force=True)
            # ---- shutdown: stop actors, let learners finish their call, final checkpoints --------------------
            for h in actors:
                h.handle.stop.remote()
            ray.wait([h.run_ref for h in actors], num_returns=len(actors), timeout=30)
            actors = self._poll_actors(actors, shards, store, restarts, actor_steps, latest_stats, monitor,
                                       restart=False)
            # Their processes' memory is free before the final evaluation; env actor 0 stays up to play it when
            # it hosts the evaluations (it has stopped stepping).
            host = [h for h in actors if h.handle is evals.host]
            _close_env_actors([h for h in actors if h not in host])
            actors = host
            reports = learners.finish(300)
            if reports is not None:
                self._collect_round(reports, monitor)
            version = learners.version
            for result in evals.finish(version):  # the trained agent as it ends
                monitor.log_eval(result, env_steps())
            _close_env_actors(actors)
            actors = []
            self._save_learner(env_steps())
            shard_ckpts.wait()
            shard_stats()
            ray.get([s.save.remote(paths.shard_location(j)) for j, s in enumerate(shards)])
            stats = ray.get([s.stats.remote() for s in shards], timeout=60)
            self._shard_seen.update(enumerate(stats))
            monitor.maybe_log(env_steps(), stats, list(latest_stats.values()), fault_metrics(), force=True)
            summary = monitor.summary(env_steps())
            summary["actor_restarts"] = sum(restarts.values())
            summary["evaluators_hung"] = evals.evaluators_hung
            summary["replay_shard_restarts"] = sum(self.shard_restarts.values())
            summary["replay_lost_inserts"] = self.lost_inserts
            summary["replay_stale_priority_updates"] = self._stale_updates()
            summary["replay_inserted"] = sum(int(st.inserted) for st in stats)
            summary["replay_inserts_acked"] = sum(int(r.inserts_accepted_rows) for r in latest_stats.values())
            summary["learner_version"] = learners.version
            summary["learner_restarts"] = sum(learners.restarts.values())
            summary["learner_updates_lost"] = learners.updates_lost
            summary["ray_resources"] = opts
            if world > 1:
                params = ray.get([lr.parameters_vector.remote() for lr in learners.handles])
                summary["learner_param_max_abs_diff"] = max(float(np.abs(p - params[0]).max()) for p in params)
            exit_code = 0
            return summary
        finally:
            evals.close()
            monitor.close(exit_code)
            _close_env_actors(actors)
            for lr in learners.handles:
                ray.kill(lr)
            for s in [*shards, *count_actors]:
                ray.kill(s)
            ray.kill(store)

    def _shard_stats(self, shards: list[Any], learners: LearnerGroup, actors: list[EnvActorHandle],
                     ckpts: PeriodicShardCheckpoints) -> list[Any]:
        """Every shard's stats; a shard whose actor died is restarted first (:meth:`_restart_shard`)."""
        refs = [s.stats.remote() for s in shards]
        out = []
        for j, ref in enumerate(refs):
            try:
                st = ray.get(ref, timeout=60)
            except ray.exceptions.RayActorError as e:
                st = self._restart_shard(j, e, shards, learners, actors, ckpts)
            self._shard_seen[j] = st
            out.append(st)
        return out

    def _stale_updates(self) -> int:
        """Priority updates the shards dropped as another incarnation's, over every incarnation so far (a dead
        one's as last polled)."""
        return self._stale_updates_dead + sum(int(st.updates_stale) for st in self._shard_seen.values())

    def _count_shard_restart(self, j: int, err: BaseException) -> int:
        """Count one more restart of shard ``j``; RuntimeError naming it past ``runtime.shard_restarts``."""
        limit = self.cfg.runtime.shard_restarts
        n = self.shard_restarts.get(j, 0) + 1
        if n > limit:
            raise RuntimeError(f"replay shard {j} died {n} times (limit runtime.shard_restarts={limit}); "
                               f"last error: {err}") from err
        self.shard_restarts[j] = n
        return n

    def _restart_shard(self, j: int, err: BaseException, shards: list[Any], learners: LearnerGroup,
                       actors: list[EnvActorHandle], ckpts: PeriodicShardCheckpoints) -> Any:
        """Replace dead shard ``j`` by a new actor loaded from its last checkpoint (empty without one), hand it
        to the learners' samplers and to the env actors that insert into it, and count as lost what the dead
        one had acknowledged since that checkpoint. Returns its stats.

        The new shard is incarnation ``dead + 1`` or more (:class:`~distrl.replay.shard.ReplayShard`): a shard
        that dies again before its next checkpoint comes back from the same checkpoint, so the checkpoint's
        incarnation alone would repeat one whose keys are in flight.

        **Lost inserts** = (the dead shard's insert count when it died, as far as anyone saw it) - (the count
        restored from the checkpoint). Two witnesses of that count, the larger wins: (1) the env actors that
        insert into the shard, each of which knows 1 + the largest insert count the shard acknowledged to it
        (:meth:`~distrl.replay.client.BoundedInserter.replace_client`, including answers that had arrived but
        were not yet read); (2) the driver's last stats poll of the dead shard (``inserted``, every
        ``logging.log_every_s``), which stays known when the env actor holding the highest acknowledgement died
        too. Left uncounted: rows the shard acknowledged after the driver's last poll of it, to env actors that
        died before this restart reached them (both deaths within one poll interval). Counted though not lost:
        rows the shard stored and reported to a poll whose acknowledgement never reached their actor (killed
        with the reply in flight), which the actor re-sent. Inserts the shard never acknowledged are re-sent
        by their actors, not lost."""
        cfg = self.cfg
        n = self._count_shard_restart(j, err)
        ckpts.forget(j)
        seen = self._shard_seen.pop(j, None)
        seen_inserted = 0 if seen is None else int(seen.inserted)
        incarnation = 0 if seen is None else int(seen.incarnation) + 1
        if seen is not None:
            self._stale_updates_dead += int(seen.updates_stale)
        location = self.paths.shard_location(j)
        restore = location if storage.exists(location) else None
        o = self.options[REPLAY_SHARD]
        new = make_ray_shard(cfg.replay, j, num_cpus=o["num_cpus"], resources=o.get("resources"),
                             seed=cfg.runtime.seed, restore_from=restore, incarnation=incarnation)
        stats = ray.get(new.stats.remote(), timeout=60)
        shards[j] = new
        learners.replace_shard(j, new)
        acked = []
        for h in actors:
            if h.actor_id % len(shards) == j:
                try:
                    acked.append(int(ray.get(h.handle.replace_shard.remote(new), timeout=120)))
                except ray.exceptions.RayError:
                    pass  # that actor died too: _poll_actors restarts it with the new shard
        lost = max(0, max([*acked, seen_inserted]) - int(stats.inserted))
        self.lost_inserts += lost
        log.warning("distrl: replay shard %d died (%s); restarted (%d/%d, incarnation %d) from %s: %d rows "
                    "restored, %d acknowledged inserts lost since that checkpoint", j, err, n,
                    cfg.runtime.shard_restarts, stats.incarnation, restore or "nothing (no checkpoint yet)",
                    stats.inserted, lost)
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
        assert self.learner_group is not None
        if not self.learner_group.save_checkpoint({"env_steps": env_steps}):
            return  # rank 0 had died: the learners went back to the last checkpoint instead
        if self.counts is not None:
            save_count_state(self.counts.state_dict(), self.paths.counts_checkpoint)
        self.paths.push("checkpoints")

    @staticmethod
    def _collect_round(reports: list[LearnerReport], monitor: RunMonitor) -> int:
        """Fold one round of learner reports into the monitor; returns the learner version."""
        monitor.add_learner_report(reports[0])
        for r in reports[1:]:
            monitor.learner_env_steps += r.env_steps
        return reports[0].version

    def _start_error(self, h: EnvActorHandle) -> BaseException | None:
        """Checks an env actor not yet known to have started: marks it ``ready`` once its constructor has run;
        returns the error if the constructor failed or the actor died, or if it has not started within
        ``runtime.placement_timeout_s`` (0: no limit); ``None`` while it is starting."""
        if h.ready_ref is None:
            h.ready = True
            return None
        done, _ = ray.wait([h.ready_ref], timeout=0)
        if done:
            try:
                ray.get(done[0])
            except ray.exceptions.RayError as e:
                return e
            h.ready = True
            return None
        limit = self.cfg.runtime.placement_timeout_s
        if limit and time.monotonic() - h.started_s > limit:
            return RuntimeError(f"did not start within runtime.placement_timeout_s={limit:g} s")
        return None

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
        """Collect stats and episodes; restart actors whose process died or whose loop raised.

        An actor still starting (its constructor has not returned, or its first step, which builds the envs,
        has not: slow on a busy machine) is judged by ``runtime.placement_timeout_s``, not by the heartbeat;
        a started one that does not answer within ``runtime.actor_stuck_timeout_s`` (at most 30 s), or whose
        loop has been in one step for that long, is taken for stuck."""
        cfg = self.cfg
        stuck_limit = cfg.runtime.actor_stuck_timeout_s if restart else 0.0
        answer_s = heartbeat_answer_s(cfg.runtime.actor_stuck_timeout_s)
        start_err = {k: self._start_error(h) for k, h in enumerate(actors) if not h.ready}
        polled = [k for k, h in enumerate(actors) if h.ready]
        refs = {k: actors[k].handle.stats.remote() for k in polled}
        stuck_refs = {k: actors[k].handle.stuck_for.remote() for k in polled if stuck_limit > 0}
        out = list(actors)
        for k, h in enumerate(actors):
            err: BaseException | None
            if k not in refs:  # still starting, or failed to
                st, err = None, start_err.get(k)
                if err is None:
                    continue
            else:
                try:
                    st = ray.get(refs[k], timeout=answer_s)
                    stuck = ray.get(stuck_refs[k], timeout=answer_s) if k in stuck_refs else 0.0
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as e:
                    st, err = None, e
                else:
                    err = None
                    finished, _ = ray.wait([h.run_ref], timeout=0)
                    if finished and restart:
                        try:
                            ray.get(finished[0])
                            err = RuntimeError("run loop returned unexpectedly")
                        except ray.exceptions.RayError as e:
                            err = e
                    elif st.report.env_steps == 0 and restart:  # its first step builds the envs: a start
                        limit = cfg.runtime.placement_timeout_s
                        if stuck > limit > 0:
                            err = RuntimeError(f"its first step (which builds the envs) has not returned after "
                                               f"{stuck:.0f} s (runtime.placement_timeout_s={limit:g})")
                    elif stuck > stuck_limit > 0:  # answers, but its loop hangs in a step (a hung env)
                        err = RuntimeError(f"stuck in one step (of its envs, or of an evaluation it hosts) for "
                                           f"{stuck:.0f} s (runtime.actor_stuck_timeout_s={stuck_limit:g})")
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
