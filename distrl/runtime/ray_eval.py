"""The Ray side of evaluation during training: an :class:`~distrl.runtime.evaluate.Evaluator` beside env actor
0's envs, or in an actor of its own.

:class:`RayEvaluator` is a plain class that hosts an Evaluator next to a handle of the run's weight store. Each
:meth:`RayEvaluator.run` call fetches the latest weights from the store itself, plays the episodes, and returns
an :class:`EvalOutcome`: the result plus the video's bytes, so the driver writes the video into the run directory
whatever node the episodes ran on. Where it lives is ``eval.host``:

* ``env_actor`` (default): env actor 0 holds one (:meth:`~distrl.runtime.ray_env_actor.RayEnvActor.evaluate`,
  on a thread of its own beside the stepping loop). No process of its own: on Room-5x5 the run's peak PSS is
  89 MB lower than with an evaluator process (BENCHMARKS.md, "Evaluation in env actor 0"), and its episodes use the CPU
  that actor leaves idle while the replay rate limiter holds it back instead of taking it from the learner.
  While env actor 0 is down (restarting, or dead at the end of a run), an evaluator actor stands in. An
  evaluation env that hangs there counts in env actor 0's heartbeat (:meth:`RayEvaluator.stuck_for`), so the
  runtime restarts that actor as it would for a hung training env.
* ``evaluator``: always an evaluator actor of its own: :func:`start_evaluator` applies ``ray.remote`` to
  RayEvaluator at run time with ``eval.num_cpus`` (default 0: it shares the CPUs of the others and never blocks
  placement). Its heartbeat (:meth:`RayEvaluator.stuck_for`, answered on a thread of its own while an
  evaluation plays) is watched by :class:`EvalDriver`: an evaluation env call running for
  ``runtime.actor_stuck_timeout_s``, or a heartbeat unanswered for that long (at most 30 s), gets the actor
  killed and the evaluation dropped; the next one starts a fresh evaluator. The same holds for the evaluator
  that stands in while env actor 0 is down.

:class:`EvalDriver` is the driver side: the runtime tells it the learner version after each round, and env actor
0's current handle whenever it changes, and polls it every loop iteration. It keeps at most one call in flight
and polls it with ``ray.wait(timeout=0)``: training never waits for an evaluation.

Usage::

    evals = EvalDriver(cfg, spec, store_handle, video_path=paths.eval_video)
    evals.set_host(env_actor_0.handle)     # eval.host=env_actor: whenever env actor 0 is (re)started or lost
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
from distrl.runtime.common import heartbeat_answer_s, next_checkpoint
from distrl.types import EvalResult

log = logging.getLogger(__name__)

FINAL_EVAL_TIMEOUT_S = 300.0
"""How long the end of a run waits for its final evaluation (then it is dropped, with a warning)."""
WATCH_EVERY_S = 1.0
"""Seconds between heartbeat calls to an evaluator actor while it plays (EvalDriver)."""


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
    """Hosts an Evaluator next to a handle of the run's weight store (see the module doc). ``own_process``: it
    is the process's only tenant (an evaluator actor), so it may set torch's thread count; in an env actor it
    leaves that to the actor."""

    def __init__(self, cfg: ExperimentConfig, spec: EnvSpec, weight_store: Any, *, own_process: bool = True) -> None:
        import sys

        from distrl.runtime.evaluate import Evaluator  # here, in the evaluator's process: the driver stays torch-free

        # Through NumPy kernels where the env actors act through them (no torch in this process), else Agent.act.
        self.evaluator = Evaluator(cfg, spec, kernels=True)
        if own_process and "torch" in sys.modules:
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

    @ray.method(concurrency_group="watch")  # as an actor: answered beside a run() that plays (start_evaluator)
    def stuck_for(self) -> float:
        """Seconds the evaluation's current env call has been running (0 between calls; thread-safe)."""
        return self.evaluator.in_env_for()

    def torch_loaded(self) -> bool:
        """Whether this process has loaded torch (not when the evaluator plays through NumPy kernels)."""
        import sys

        return "torch" in sys.modules

    def close(self) -> None:
        self.evaluator.close()


def start_evaluator(cfg: ExperimentConfig, spec: EnvSpec, weight_store: Any) -> Any:
    """A RayEvaluator actor reserving ``eval.num_cpus`` CPUs; Ray does not restart it (an evaluation that
    fails is logged and skipped by the runtime). Its methods run one at a time, but for :meth:`RayEvaluator.stuck_for`,
    which has a thread of its own (the ``watch`` concurrency group) so that it answers while an evaluation plays."""
    cls = ray.remote(num_cpus=cfg.eval.num_cpus, max_restarts=0, concurrency_groups={"watch": 1})(RayEvaluator)
    return cls.remote(cfg, spec, weight_store)


class EvalDriver:
    """The driver's side of in-training evaluation in the Ray runtime (see the module doc).

    An evaluation is due when the learner version reaches the next multiple of ``eval.every_updates``; one that
    comes due while another is still running is skipped (at most one in flight, and training never waits). It
    runs on the host env actor (:meth:`set_host`; ``eval.host=env_actor``), or, with ``eval.host=evaluator`` or
    no host, on an evaluator actor started on first use (:attr:`evaluators_started` counts them) and closed
    once a host is back. A failed evaluation is logged and skipped; a failed or hung evaluator actor (its
    heartbeat, checked every :data:`WATCH_EVERY_S` while it plays: see the module doc; :attr:`evaluators_hung`
    counts them) is replaced on the next one, a failed host is the runtime's to restart (its heartbeat covers the
    evaluation it hosts).
    """

    def __init__(
        self, cfg: ExperimentConfig, spec: EnvSpec, weight_store: Any, video_path: Callable[[int], Path]
    ) -> None:
        self.cfg, self.spec, self.store, self.video_path = cfg, spec, weight_store, video_path
        self.every = cfg.eval.every_updates
        self.on_host = cfg.eval.host == "env_actor"
        self.host: Any = None  # env actor 0's handle (set_host); None: down, or eval.host=evaluator
        self.handle: Any = None  # the evaluator actor, when one is up
        self.evaluators_started = 0
        self.evaluators_hung = 0
        self.stuck_limit = cfg.runtime.actor_stuck_timeout_s  # 0: not watched
        self._watch: Any = None  # the heartbeat call in flight to the evaluator actor, and when it was sent
        self._watch_sent = 0.0
        self._answered = False  # the current evaluator actor has answered a heartbeat (it has started)
        self.ref: Any = None
        self.ref_on_host = False  # the call in flight runs on the host env actor
        self.next_at = 0
        self.evaluated = -1  # learner version of the last finished evaluation
        self.skipped = 0

    def start_at(self, version: int) -> None:
        """The version training (re)starts from: the first evaluation is due at the next multiple."""
        self.next_at = next_checkpoint(version, self.every)

    def set_host(self, handle: Any) -> None:
        """Env actor 0's current handle (None while it is down): with ``eval.host=env_actor`` the next
        evaluation runs there (:meth:`~distrl.runtime.ray_env_actor.RayEnvActor.evaluate`)."""
        self.host = handle if self.on_host and self.every else None

    def _submit(self) -> None:
        ec = self.cfg.eval
        if self.host is not None:
            if self.handle is not None:  # a stand-in evaluator from while the host was down: its memory back,
                self._kill()  # without waiting in the training loop for its envs to close (its exit frees them)
            self.ref, self.ref_on_host = self.host.evaluate.remote(ec.episodes, ec.greedy, ec.video), True
            return
        if self.handle is None:
            self.handle = start_evaluator(self.cfg, self.spec, self.store)
            self.evaluators_started += 1
        self.ref, self.ref_on_host = self.handle.run.remote(ec.episodes, ec.greedy, ec.video), False

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
            self._check_heartbeat()
            return []
        ref, self.ref = self.ref, None
        self._watch = None
        try:
            outcome = ray.get(ref)
        except ray.exceptions.RayError as e:
            if self.ref_on_host:  # env actor 0 died (the runtime restarts it) or its evaluation raised
                log.warning("distrl: an evaluation on env actor 0 failed (skipped): %s", e)
                if isinstance(e, ray.exceptions.RayActorError):
                    self.host = None  # an evaluator actor stands in until the runtime hands over the new one
            else:
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
        out = self._wait(deadline)
        for _ in range(2):  # a second try on an evaluator actor when the host died (or it hung) under the first
            if self.ref is not None or self.evaluated >= version or time.monotonic() > deadline:
                break
            self._submit()
            out += self._wait(max(deadline, time.monotonic() + 1.0))
        if self.ref is not None:
            log.warning("distrl: the final evaluation did not finish within %.0f s; dropped", timeout_s)
        return out

    def _wait(self, deadline: float) -> list[EvalResult]:
        """:meth:`poll` until the evaluation in flight is done, dropped as hung, or ``deadline`` passes."""
        out: list[EvalResult] = []
        while self.ref is not None and (left := deadline - time.monotonic()) > 0:
            out += self.poll(timeout_s=min(left, WATCH_EVERY_S))
        return out

    def _check_heartbeat(self) -> None:
        """While an evaluator actor plays (not the host: the runtime watches that one), ask its heartbeat every
        :data:`WATCH_EVERY_S`; kill it when an env call has run for ``runtime.actor_stuck_timeout_s`` or the
        heartbeat has gone unanswered for that long (at most 30 s). Never waits."""
        if self.ref_on_host or self.handle is None or not self.stuck_limit > 0:
            return
        now = time.monotonic()
        stuck, silent = 0.0, False
        if self._watch is not None:
            ready, _ = ray.wait([self._watch], timeout=0)
            if ready:
                try:
                    stuck = float(ray.get(self._watch))
                except ray.exceptions.RayError:
                    return  # the actor died: the evaluation's own call fails and poll() replaces it
                self._watch, self._answered = None, True
            elif self._answered and now - self._watch_sent > heartbeat_answer_s(self.stuck_limit):
                stuck, silent = now - self._watch_sent, True  # (not while it starts: it never answered yet)
        if stuck > self.stuck_limit or silent:
            self.evaluators_hung += 1
            log.warning("distrl: the evaluator actor has been %s for %.0f s (runtime.actor_stuck_timeout_s=%g): "
                        "killed, this evaluation dropped; a fresh evaluator runs the next one",
                        "silent" if silent else "inside one env call", stuck, self.stuck_limit)
            self._kill()
            return
        if self._watch is None and now - self._watch_sent >= WATCH_EVERY_S:
            self._watch, self._watch_sent = self.handle.stuck_for.remote(), now

    def _kill(self) -> None:
        if self.handle is not None:
            try:
                ray.kill(self.handle)
            except Exception:  # already gone
                pass
        self.handle = None
        self.ref = None
        self._watch, self._answered = None, False

    def close(self) -> None:
        """Close the evaluator actor, if one is up (a host env actor is the runtime's to close)."""
        if self.handle is not None:
            try:
                ray.get(self.handle.close.remote(), timeout=30)
            except Exception:
                pass
        self._kill()
