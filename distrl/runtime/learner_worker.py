"""LearnerWorker: a Learner plus its replay sampler, weight publishing and checkpoints.

Plain Python (the Ray runtime hosts it as an actor; the local runtime calls it directly). ``train(n)`` runs up to
``n`` updates back to back while batches are ready, and returns aggregated metrics, so the caller's loop stays
responsive. With several data-parallel learners, every update starts with a tiny all-reduce of "I have a batch" and
"I want to stop": all replicas step together or none does, and they leave ``train`` at the same iteration, so a
replica that is waiting for data never leaves the others hanging in the gradient all-reduce.

Usage::

    worker = LearnerWorker(cfg, spec, sampler, publish=lambda w: store.publish(w.version, w))
    worker.publish_weights()
    while training:
        report = worker.train(max_updates=8, timeout_s=1.0)
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from distrl.config import ExperimentConfig
from distrl.envs.base import EnvSpec
from distrl.learners.learner import Learner
from distrl.replay.client import ReplayNotReady, ReplayShardError
from distrl.replay.priorities import beta_at
from distrl.types import LearnerReport, PolicyWeights, ReplaySample


class Sampler(Protocol):
    """What the worker needs of :class:`distrl.replay.sampler.ReplaySampler`."""

    def next_batch(self, timeout: float = 30.0, *, beta: float | None = None) -> ReplaySample: ...
    def update_priorities(self, keys: Any, shard_ids: Any, priorities: Any) -> None: ...
    def set_min_policy_version(self, version: int | None) -> None: ...
    def close(self, timeout: float = 5.0) -> None: ...


class LearnerWorker:
    def __init__(
        self,
        cfg: ExperimentConfig,
        spec: EnvSpec,
        sampler: Sampler,
        publish: Callable[[PolicyWeights], None] | None = None,
        rank: int = 0,
        device: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.rank = rank
        self.learner = Learner(cfg, spec, device=device)
        self.sampler = sampler
        self._publish = publish
        self._pending: ReplaySample | None = None
        self._pending_beta = 0.0
        self._world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @property
    def version(self) -> int:
        return self.learner.version

    def publish_weights(self) -> None:
        if self._publish is not None and self.rank == 0:
            self._publish(self.learner.weights())

    def _sync(self, have_batch: bool, want_stop: bool) -> tuple[bool, bool]:
        """(every replica has a batch, some replica wants to stop): one tiny all-reduce, so all replicas take
        the same decision at the same iteration and their collective calls stay paired."""
        if self._world == 1:
            return have_batch, want_stop
        flags = torch.tensor([int(have_batch), int(not want_stop)], dtype=torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        return bool(flags[0]), not bool(flags[1])

    def train(self, max_updates: int, timeout_s: float = 1.0) -> LearnerReport:
        """Run up to ``max_updates`` updates within about ``timeout_s`` seconds (waiting for data included; an
        update that has started always finishes). With several replicas, call it on all of them with the same
        arguments: they stop together.

        Returns a :class:`~distrl.types.LearnerReport`: mean metrics over the updates, ``updates``,
        ``env_steps`` (consumed fresh steps), ``samples`` (sequences trained on) and ``version``.
        """
        sums: dict[str, float] = defaultdict(float)
        updates = env_steps = samples = 0
        deadline = time.monotonic() + timeout_s
        lcfg = self.cfg.learner
        while True:
            if self._pending is None and updates < max_updates:
                self.sampler.set_min_policy_version(self.learner.version - lcfg.max_policy_lag)
                # The IS exponent follows the learner's updates (so it survives --resume), applied when the
                # batch is taken.
                self._pending_beta = beta_at(self.cfg.replay, self.learner.version)
                try:
                    self._pending = self.sampler.next_batch(
                        timeout=max(0.0, deadline - time.monotonic()), beta=self._pending_beta
                    )
                except (ReplayNotReady, ReplayShardError):  # a dead shard: the runtime restarts it
                    self._pending = None
            want_stop = updates >= max_updates or time.monotonic() >= deadline
            all_ready, stop = self._sync(self._pending is not None, want_stop)
            if stop:
                break  # a batch already drawn stays pending for the next call
            if not all_ready:
                continue
            sample, self._pending = self._pending, None
            assert sample is not None
            out = self.learner.step(sample)
            self.sampler.update_priorities(sample.keys, sample.shard_ids, out.priorities)
            if out.version % lcfg.publish_every == 0:
                self.publish_weights()
            for k, v in out.metrics.items():
                sums[k] += v
            sums["learner/beta"] += self._pending_beta
            updates += 1
            env_steps += out.env_steps
            samples += sample.B
        return LearnerReport(
            updates=updates,
            env_steps=env_steps,
            samples=samples,
            version=self.learner.version,
            metrics={k: v / updates for k, v in sums.items()} if updates else {},
        )

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> str:
        return str(self.learner.save_checkpoint(path, extra))

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        return self.learner.load_checkpoint(path)

    def weights_digest(self) -> float:
        """A cheap fingerprint of the parameters (sum of |w|), to check that replicas stay in sync."""
        return float(sum(p.detach().double().abs().sum() for p in self.learner.agent.parameters()))

    def parameters_vector(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).cpu() for p in self.learner.agent.parameters()])

    def close(self) -> None:
        self.sampler.close()
