"""The Ray side of evaluation during training: an :class:`~distrl.runtime.evaluate.Evaluator` in a Ray actor.

:class:`RayEvaluator` is a plain class; :func:`start_evaluator` applies ``ray.remote`` to it at run time with
``eval.num_cpus`` (default 0: it shares the CPUs of the others and never blocks placement). Each
:meth:`RayEvaluator.run` call fetches the latest weights from the weight store itself, plays the episodes, and
returns an :class:`EvalOutcome`: the result plus the video's bytes, so the driver writes the video into the run
directory whatever node the evaluator ran on. The driver keeps at most one call in flight and polls it with
``ray.wait(timeout=0)``: training never waits for an evaluation.

:class:`EvalDriver` is that driver side: the runtime tells it the learner version after each round and polls it
every loop iteration.

Usage::

    evals = EvalDriver(cfg, spec, store_handle, video_path=paths.eval_video)
    evals.on_version(version)              # starts an evaluation when the version crossed a multiple
    for result in evals.poll():            # finished ones (non-blocking), videos already in the run dir
        monitor.log_eval(result, env_steps)
    evals.finish(final_version)            # at the end: the last in-flight one and one of the final weights
    evals.close()
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from distrl.config import ExperimentConfig
from distrl.envs.base import EnvSpec
from distrl.runtime.common import next_checkpoint
from distrl.types import EvalResult

log = logging.getLogger(__name__)

FINAL_EVAL_TIMEOUT_S = 300.0
"""How long the end of a run waits for its final evaluation (then it is dropped, with a warning)."""


@dataclass(frozen=True)
class EvalOutcome:
    """An evaluation's result and its video file's contents (``video_suffix`` '.mp4' or '.gif'), if any."""

    result: EvalResult
    video_bytes: bytes | None = None
    video_suffix: str = ""

    def save_video(self, path: Path) -> EvalResult:
        """Write the video to ``path`` (its suffix replaced by the video's) and return the result pointing at
        it; the result as is when there is no video."""
        if self.video_bytes is None:
            return dataclasses.replace(self.result, video=None)
        path = path.with_suffix(self.video_suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.video_bytes)
        tmp.replace(path)
        return dataclasses.replace(self.result, video=str(path))


class RayEvaluator:
    """Hosts an Evaluator next to a handle of the run's weight store (see the module doc)."""

    def __init__(self, cfg: ExperimentConfig, spec: EnvSpec, weight_store: Any) -> None:
        import sys

        from distrl.runtime.evaluate import Evaluator  # here, in the evaluator's process: the driver stays torch-free

        # Through NumPy kernels where the env actors act through them (no torch in this process), else Agent.act.
        self.evaluator = Evaluator(cfg, spec, kernels=True)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        self.store = weight_store

    def run(self, episodes: int, greedy: bool, video: bool) -> EvalOutcome | None:
        """Evaluate the weight store's latest weights; None when nothing was published yet (or the learner that
        published them died)."""
        version, weights = ray.get(self.store.get.remote())
        if isinstance(weights, ray.ObjectRef):
            try:
                weights = ray.get(weights)
            except ray.exceptions.ObjectLostError:  # its learner died (restarting): nothing to evaluate now
                return None
        if weights is None:
            return None
        if not video:
            return EvalOutcome(self.evaluator.run(weights, episodes, greedy=greedy))
        with tempfile.TemporaryDirectory(prefix="distrl-eval-") as d:
            result = self.evaluator.run(
                weights, episodes, greedy=greedy, video_path=Path(d) / f"eval_{version}.mp4"
            )
            if result.video is None:
                return EvalOutcome(result)
            path = Path(result.video)
            return EvalOutcome(result, path.read_bytes(), path.suffix)

    def ping(self) -> bool:
        return True

    def torch_loaded(self) -> bool:
        """Whether this process has loaded torch (not when the evaluator plays through NumPy kernels)."""
        import sys

        return "torch" in sys.modules

    def close(self) -> None:
        self.evaluator.close()


def start_evaluator(cfg: ExperimentConfig, spec: EnvSpec, weight_store: Any) -> Any:
    """A RayEvaluator actor reserving ``eval.num_cpus`` CPUs; Ray does not restart it (an evaluation that
    fails is logged and skipped by the runtime)."""
    cls = ray.remote(num_cpus=cfg.eval.num_cpus, max_restarts=0)(RayEvaluator)
    return cls.remote(cfg, spec, weight_store)


class EvalDriver:
    """The driver's side of in-training evaluation in the Ray runtime (see the module doc).

    The evaluator actor starts on first use. An evaluation is due when the learner version reaches the next
    multiple of ``eval.every_updates``; one that comes due while another is still running is skipped (at most one
    in flight, and training never waits). A failed evaluation is logged and its actor replaced on the next one.
    """

    def __init__(
        self, cfg: ExperimentConfig, spec: EnvSpec, weight_store: Any, video_path: Callable[[int], Path]
    ) -> None:
        self.cfg, self.spec, self.store, self.video_path = cfg, spec, weight_store, video_path
        self.every = cfg.eval.every_updates
        self.handle: Any = None
        self.ref: Any = None
        self.next_at = 0
        self.evaluated = -1  # learner version of the last finished evaluation
        self.skipped = 0

    def start_at(self, version: int) -> None:
        """The version training (re)starts from: the first evaluation is due at the next multiple."""
        self.next_at = next_checkpoint(version, self.every)

    def _submit(self) -> None:
        if self.handle is None:
            self.handle = start_evaluator(self.cfg, self.spec, self.store)
        ec = self.cfg.eval
        self.ref = self.handle.run.remote(ec.episodes, ec.greedy, ec.video)

    def on_version(self, version: int) -> None:
        """Start an evaluation if ``version`` reached the next multiple of ``eval.every_updates``."""
        if not self.next_at or version < self.next_at:
            return
        self.next_at = next_checkpoint(version, self.every)
        if self.ref is not None:
            self.skipped += 1
            return
        self._submit()

    def poll(self, timeout_s: float = 0.0) -> list[EvalResult]:
        """The finished evaluation, if any (waits up to ``timeout_s``), its video written into the run dir."""
        if self.ref is None:
            return []
        ready, _ = ray.wait([self.ref], timeout=timeout_s)
        if not ready:
            return []
        ref, self.ref = self.ref, None
        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayError as e:
            log.warning("distrl: an evaluation failed (skipped; a fresh evaluator runs the next one): %s", e)
            self._kill()
            return []
        if outcome is None:
            return []
        version = outcome.result.learner_version
        self.evaluated = max(self.evaluated, version)
        return [outcome.save_video(self.video_path(version))]

    def finish(self, version: int, timeout_s: float = FINAL_EVAL_TIMEOUT_S) -> list[EvalResult]:
        """At the end of a run: the in-flight evaluation, then one of the final weights (learner ``version``)
        unless that version was just evaluated; bounded by ``timeout_s`` in all."""
        if not self.every:
            return []
        deadline = time.monotonic() + timeout_s
        out = self.poll(timeout_s=timeout_s)
        if self.ref is None and self.evaluated < version:
            self._submit()
            out += self.poll(timeout_s=max(deadline - time.monotonic(), 1.0))
        if self.ref is not None:
            log.warning("distrl: the final evaluation did not finish within %.0f s; dropped", timeout_s)
        return out

    def _kill(self) -> None:
        if self.handle is not None:
            try:
                ray.kill(self.handle)
            except Exception:  # already gone
                pass
        self.handle = None
        self.ref = None

    def close(self) -> None:
        if self.handle is not None:
            try:
                ray.get(self.handle.close.remote(), timeout=30)
            except Exception:
                pass
        self._kill()
