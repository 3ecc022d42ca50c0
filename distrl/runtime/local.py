"""LocalRuntime: every component in one process, no Ray (Sample Factory's serial mode, Acme's run_experiment).

The same EnvActor, ReplayShard, ReplaySampler, Learner and WeightStore classes as the Ray runtime, wired by a
plain loop: actors step and insert; the learner trains as long as the shards' rate limiters allow; weights go
to the actors after every publish. Every ``eval.every_updates`` learner updates (and once at the end) an
:class:`~distrl.runtime.evaluate.Evaluator` plays ``eval.episodes`` episodes in-line with the latest published
weights, on its own envs, and the results go to the sinks under ``eval/``. Slower than the Ray runtime (nothing
overlaps) but deterministic given a seed and debuggable with ``breakpoint()``.

Usage::

    LocalRuntime(cfg, run_dir).train()    # or: distrl train CONFIG --local
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from distrl.actors.env_actor import EnvActor
from distrl.bonuses.counts import ShardedCounts, load_count_state, make_counts, save_count_state
from distrl.config import ExperimentConfig
from distrl.envs.registry import env_spec
from distrl.learners.bonus import attach_counts
from distrl.learners.duration import DurationExtra
from distrl.replay.client import LocalShardClient
from distrl.replay.sampler import ReplaySampler
from distrl.replay.shard import ReplayShard
from distrl.runtime.common import RunMonitor, RunPaths, n_fresh, next_checkpoint
from distrl.runtime.evaluate import Evaluator
from distrl.runtime.learner_worker import LearnerWorker
from distrl.runtime.weights import WeightStore

log = logging.getLogger(__name__)


class LocalRuntime:
    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False) -> None:
        self.cfg = cfg
        self.paths = RunPaths(Path(run_dir))
        self.resume = resume
        self.counts: ShardedCounts | None = None  # the global count table (bonus.glob=count), in-process

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        torch.manual_seed(cfg.runtime.seed)
        spec = env_spec(cfg.env)
        J = cfg.replay.num_shards
        shards = [ReplayShard(cfg.replay, j, seed=cfg.runtime.seed + j) for j in range(J)]
        store = WeightStore()
        sampler = ReplaySampler(
            [LocalShardClient(s) for s in shards],
            cfg.replay,
            cfg.learner.batch_size,
            n_fresh=n_fresh(cfg),
            prefetch=0,
            seed=cfg.runtime.seed,
        )
        worker = LearnerWorker(cfg, spec, sampler, publish=lambda w: store.publish(w.version, w))
        if cfg.bonus.glob == "count":
            self.counts = make_counts(cfg.bonus.count_shards)
            attach_counts(worker.learner.extras, self.counts)
        env_steps_base = 0
        if self.resume:
            env_steps_base = self._restore(worker, shards)
            if self.counts is not None and self.paths.counts_checkpoint.is_file():
                self.counts.load_state_dict(load_count_state(self.paths.counts_checkpoint))
        worker.publish_weights()
        actors = [EnvActor(cfg, i) for i in range(cfg.actor.num_actors)]
        monitor = RunMonitor(cfg, self.paths.run_dir, env_steps_base)
        next_ckpt = next_checkpoint(worker.version, cfg.learner.checkpoint_every)
        next_eval = next_checkpoint(worker.version, cfg.eval.every_updates)
        replay_every = cfg.replay.checkpoint_every_s
        next_replay_ckpt = time.monotonic() + replay_every
        evaluator: Evaluator | None = None
        evaluated = -1  # learner version of the last evaluation
        exit_code = 1

        def env_steps() -> int:
            return env_steps_base + sum(a.env_steps for a in actors)

        def run_eval() -> None:
            nonlocal evaluator, evaluated
            version, weights = store.get()
            if version == evaluated:
                return
            if evaluator is None:
                evaluator = Evaluator(cfg, spec)
            video = self.paths.eval_video(version) if cfg.eval.video else None
            result = evaluator.run(weights, cfg.eval.episodes, greedy=cfg.eval.greedy, video_path=video)
            monitor.log_eval(result, env_steps())
            evaluated = version

        try:
            while not monitor.should_stop(env_steps()):
                for i, actor in enumerate(actors):
                    newer = store.get_if_changed(actor.policy_version)
                    if newer is not None:
                        actor.set_weights(newer[1])
                    traj = actor.step()
                    monitor.add_episodes(actor.episode_stats())
                    if traj is None:
                        continue
                    if self.counts is not None:  # the states this sequence visited, counted before it is learnt
                        self.counts.increment(actor.drain_state_keys())
                    shard = shards[i % J]
                    prior = actor.duration_prior(traj)  # None unless duration.mode=prior
                    if isinstance(dur := worker.learner.extras.get("duration"), DurationExtra):
                        dur.observe_launched_sequence(traj, cfg.sequence.period)  # launch-side dt counts
                    while not shard.insert(traj, prior=prior, frame_stacks=spec.frame_stacks).ok:
                        # The rate limiter holds inserts back until the learner has sampled enough.
                        report = worker.train(max_updates=1, timeout_s=5.0)
                        if not report.updates:
                            raise RuntimeError(
                                f"replay shard {i % J} refuses inserts and the learner cannot sample: "
                                f"{shard.stats()}"
                            )
                        monitor.add_learner_report(report)
                    # Then train as long as the shards' rate limiters allow (replay.samples_per_insert is
                    # enforced there and only there), deterministically: counts only, never wall time. With
                    # the ratio off (samples_per_insert=0) the limiters never hold sampling back: one update.
                    while any(s.stats().can_sample for s in shards):
                        report = worker.train(max_updates=1, timeout_s=5.0)
                        monitor.add_learner_report(report)
                        if not report.updates or cfg.replay.samples_per_insert <= 0:
                            break
                if next_ckpt and worker.version >= next_ckpt:
                    self._checkpoint(worker, shards, env_steps(), replay=False)
                    next_ckpt = next_checkpoint(worker.version, cfg.learner.checkpoint_every)
                if replay_every > 0 and time.monotonic() >= next_replay_ckpt:  # the shards alone (atomic saves)
                    for s in shards:
                        s.save(self.paths.shard_dir(s.shard_id))
                    next_replay_ckpt = time.monotonic() + replay_every
                if next_eval and worker.version >= next_eval:
                    run_eval()
                    next_eval = next_checkpoint(worker.version, cfg.eval.every_updates)
                monitor.maybe_log(
                    env_steps(), [s.stats() for s in shards], [a.counters() for a in actors]
                )
            if cfg.eval.every_updates > 0:
                run_eval()  # the trained agent as it ends (skipped when that version was just evaluated)
            self._checkpoint(worker, shards, env_steps(), replay=True)
            monitor.maybe_log(env_steps(), [s.stats() for s in shards], [a.counters() for a in actors],
                              force=True)
            exit_code = 0
            return monitor.summary(env_steps())
        finally:
            for a in actors:
                a.close()
            if evaluator is not None:
                evaluator.close()
            worker.close()
            monitor.close(exit_code)

    def _restore(self, worker: LearnerWorker, shards: list[ReplayShard]) -> int:
        base = 0
        if self.paths.learner_checkpoint.is_file():
            extra = worker.load_checkpoint(self.paths.learner_checkpoint)
            base = int(extra.get("env_steps", 0))
        for s in shards:
            d = self.paths.shard_dir(s.shard_id)
            if d.is_dir():
                s.restore(d)
        return base

    def _checkpoint(self, worker: LearnerWorker, shards: list[ReplayShard], env_steps: int, replay: bool) -> None:
        worker.save_checkpoint(self.paths.learner_checkpoint, extra={"env_steps": env_steps})
        if self.counts is not None:
            save_count_state(self.counts.state_dict(), self.paths.counts_checkpoint)
        if replay:
            for s in shards:
                s.save(self.paths.shard_dir(s.shard_id))

