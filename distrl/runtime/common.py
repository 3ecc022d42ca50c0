"""What the local and Ray runtimes share: run-directory paths, the stop rule, and metric assembly/logging.

:class:`RunMonitor` receives raw numbers from the runtime (env steps, episodes, learner reports, shard and actor
stats), turns them into namespaced metrics and logs them through the sinks at most every
``logging.log_every_s`` seconds; evaluation results go out at once under ``eval/`` (:meth:`RunMonitor.log_eval`).
It owns no components and makes no remote calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distrl import storage
from distrl.config import ExperimentConfig
from distrl.logging import EpisodeTracker, RateMeter, make_sinks
from distrl.types import ActorReport, EpisodeStats, EvalResult, LearnerReport


@dataclass(frozen=True)
class RunPaths:
    """``run_dir`` is where this process writes; ``location`` is where the run is kept (:mod:`distrl.storage`):
    the same directory, or a remote URI that ``run_dir`` stages for (``push`` uploads a part of it)."""

    run_dir: Path
    location: str = ""

    @property
    def learner_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "learner.pt"

    @property
    def counts_checkpoint(self) -> Path:
        """The global count table (``bonus.glob=count``), saved with the learner checkpoint."""
        return self.run_dir / "checkpoints" / "counts.pt"

    def shard_dir(self, shard_id: int) -> Path:
        return self.run_dir / "replay" / f"shard_{shard_id}"

    def shard_location(self, shard_id: int) -> str:
        """Where replay shard ``shard_id`` saves its checkpoint, from whichever node it runs on."""
        if storage.is_remote(self.location):
            return storage.join(self.location, "replay", f"shard_{shard_id}")
        return str(self.shard_dir(shard_id))

    def push(self, *parts: str) -> None:
        """Upload ``run_dir/parts`` to the remote location (no-op for a local one)."""
        if storage.is_remote(self.location):
            storage.push(self.run_dir.joinpath(*parts), storage.join(self.location, *parts))

    def eval_video(self, version: int) -> Path:
        """Where the in-training evaluation at learner version ``version`` writes its video (the writer may change
        the extension: .gif without PyAV)."""
        return self.run_dir / "videos" / f"eval_{version}.mp4"


def next_checkpoint(version: int, every: int) -> int:
    """The next learner version at which to checkpoint (a multiple of ``every``); 0 = never (every <= 0)."""
    return 0 if every <= 0 else (version // every + 1) * every


def heartbeat_answer_s(stuck_timeout_s: float) -> float:
    """How long an actor may take to answer a heartbeat call before it is taken for hung: its stuck timeout
    (``runtime.actor_stuck_timeout_s``), at most 30 s (also when that is 0, never stuck)."""
    return min(30.0, stuck_timeout_s or 30.0)


def n_fresh(cfg: ExperimentConfig) -> int:
    return round(cfg.learner.online_fraction * cfg.learner.batch_size)


class RunMonitor:
    def __init__(self, cfg: ExperimentConfig, run_dir: Path, env_steps_base: int = 0) -> None:
        self.cfg = cfg
        self.sinks = make_sinks(cfg, run_dir)
        self.tracker = EpisodeTracker(window=100)
        self.env_steps_base = env_steps_base
        self.t_start = time.monotonic()
        self._last_log = 0.0
        self._sps = RateMeter()
        self._ups = RateMeter()
        self._consumed = RateMeter()
        self.learner_updates = 0
        self.learner_env_steps = 0  # fresh env steps consumed by the learner(s) in this session
        self.learner_samples = 0
        self._learner_metrics: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}
        self._actor_times: dict[tuple[int, int], tuple[float, float, float]] = {}
        self.last_eval: EvalResult | None = None

    def start_clock(self) -> None:
        """Training starts now: ``runtime.max_wall_time_s``, ``charts/wall_time_s`` and the summary's
        ``wall_time_s`` count from here, not from a set-up that ran after the monitor was made."""
        self.t_start = time.monotonic()

    def add_episodes(self, episodes: Iterable[EpisodeStats]) -> None:
        self.tracker.add(episodes)

    def add_learner_report(self, report: LearnerReport) -> None:
        if report.updates == 0:
            return
        self.learner_updates += report.updates
        self.learner_env_steps += report.env_steps
        self.learner_samples += report.samples
        self._learner_metrics = dict(report.metrics)

    def log_eval(self, result: EvalResult, env_steps: int) -> dict[str, float]:
        """Log an evaluation under ``eval/`` at ``env_steps`` (and its video as ``eval/video`` to the sinks that
        take media: wandb). Returns the metrics logged."""
        m = {
            "charts/env_steps": float(env_steps),
            "eval/return_mean": result.return_mean,
            "eval/return_std": result.return_std,
            "eval/length_mean": result.length_mean,
            "eval/learner_version": float(result.learner_version),
            "eval/episodes": float(result.episodes),
            "eval/stuck_episodes": float(result.stuck_episodes),
        }
        if result.success_rate is not None:
            m["eval/success_rate"] = result.success_rate
        self.sinks.log(m, step=env_steps)
        if result.video:
            self.sinks.log_video("eval/video", result.video, step=env_steps)
        self.last_eval = result
        return m

    def should_stop(self, env_steps: int) -> bool:
        if env_steps >= self.cfg.runtime.total_env_steps:
            return True
        limit = self.cfg.runtime.max_wall_time_s
        return limit > 0 and time.monotonic() - self.t_start >= limit

    def maybe_log(
        self,
        env_steps: int,
        shard_stats: Sequence[Any | None] = (),
        actor_stats: Sequence[ActorReport] = (),
        extra: Mapping[str, float] | None = None,
        force: bool = False,
    ) -> dict[str, float] | None:
        now = time.monotonic()
        if not force and now - self._last_log < self.cfg.logging.log_every_s:
            return None
        self._last_log = now
        m: dict[str, float] = {"charts/env_steps": float(env_steps)}
        m.update(self.tracker.summary())
        sps = self._sps.update(env_steps, now)
        if sps is not None:
            m["charts/sps"] = sps
        ups = self._ups.update(self.learner_updates, now)
        if ups is not None:
            m["learner/updates_per_s"] = ups
        consumed = self._consumed.update(self.learner_env_steps, now)
        if consumed is not None:
            m["learner/env_steps_consumed_per_s"] = consumed
        m["learner/updates"] = float(self.learner_updates)
        m["learner/env_steps_consumed"] = float(self.learner_env_steps)
        m.update(self._learner_metrics)
        live = [s for s in shard_stats if s is not None]
        if live:
            m["replay/size"] = float(sum(s.size for s in live))
            m["replay/stored_gb"] = float(sum(s.size * s.row_nbytes for s in live)) / 1e9
            m["replay/inserted"] = float(sum(s.inserted for s in live))
            m["replay/sampled"] = float(sum(s.sampled for s in live))
            m["replay/fresh_pending"] = float(sum(s.fresh_pending for s in live))
            m["replay/fresh_dropped"] = float(sum(s.fresh_dropped for s in live))
            m["replay/fresh_evicted"] = float(sum(s.fresh_evicted for s in live))
        if actor_stats:
            m["actor/count"] = float(len(actor_stats))
            m["actor/steps_per_s"] = float(sum(a.steps_per_s for a in actor_stats))
            m["actor/faults"] = float(sum(a.faults for a in actor_stats))
            m["actor/policy_version_min"] = float(min(a.policy_version for a in actor_stats))
            m.update(self._actor_time_fractions(actor_stats))
        m["charts/wall_time_s"] = now - self.t_start
        if extra:
            m.update(extra)
        self.sinks.log(m, step=env_steps)
        self.last_metrics = m
        return m

    def _actor_time_fractions(self, actor_stats: Sequence[ActorReport]) -> dict[str, float]:
        """Share of the actors' step time spent in the policy, the envs and the rest, since the last log.

        From each actor's cumulative ``time_*_s`` counters (an actor restarted since counts from zero)."""
        totals = [0.0, 0.0, 0.0]
        seen: dict[tuple[int, int], tuple[float, float, float]] = {}
        for a in actor_stats:
            key = (a.actor_id, a.incarnation)
            cur = (a.time_policy_s, a.time_env_s, a.time_step_s)
            prev = self._actor_times.get(key, (0.0, 0.0, 0.0))
            if cur[2] < prev[2]:  # counters went back: a new actor object under the same key
                prev = (0.0, 0.0, 0.0)
            for i in range(3):
                totals[i] += cur[i] - prev[i]
            seen[key] = cur
        self._actor_times = seen
        policy, env, step = totals
        if step <= 0.0:
            return {}
        return {
            "actor/time_frac_policy": policy / step,
            "actor/time_frac_env": env / step,
            "actor/time_frac_other": max(step - policy - env, 0.0) / step,
        }

    def summary(self, env_steps: int) -> dict[str, Any]:
        t = self.tracker.summary()
        return {
            "env_steps": env_steps,
            "learner_updates": self.learner_updates,
            "wall_time_s": round(time.monotonic() - self.t_start, 2),
            "episode_return": t.get("charts/episode_return"),
            "success_rate": t.get("charts/success_rate"),
            "episodes": self.tracker.total_episodes,
            "eval": None if self.last_eval is None else self.last_eval.to_dict(),
        }

    def close(self, exit_code: int = 0) -> None:
        self.sinks.close(exit_code=exit_code)
