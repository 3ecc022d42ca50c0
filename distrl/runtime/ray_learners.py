"""The learners of a Ray run: :class:`RayLearner` hosts a LearnerWorker in a Ray actor; :class:`LearnerGroup`
drives them from the driver in training rounds and restarts one that died or hung.

* **Rounds**: every learner gets the same ``train(64, 0.5)`` call and they return together, about every half
  second (:meth:`LearnerGroup.poll`); that return is the learners' heartbeat.
* **Data parallel**: with ``learner.num_learners`` > 1 the learners form a ``torch.distributed`` process group
  (gloo on CPU, NCCL on GPU) through a ``TCPStore`` that rank 0 hosts on a fresh port. Its collectives time out
  after half of ``runtime.learner_stuck_timeout_s`` (:func:`collective_timeout_s`), so a learner blocked in an
  all-reduce whose peer died or hangs fails (:class:`LearnerGroupError`) instead of waiting for ever.
* **Faults**: a learner whose process died (``ray.exceptions.RayActorError``), whose call raised an error of its
  own, or whose round has not returned after ``runtime.learner_stuck_timeout_s`` (hung: killed) is replaced by a
  new actor of the same rank. The survivors leave their process group and everyone joins a new one (a new store
  on a new port: torch.distributed's own rendezvous), then every learner loads the last learner checkpoint, so
  the replicas agree again and the counters (updates, env steps consumed, optimizer and extras' state) are the
  checkpoint's. The updates made since that checkpoint are lost and counted (``learner/updates_lost``, the ones
  the driver had seen; ``learner/restarts``). Meanwhile the env actors keep stepping on the weights they hold
  (the published weights died with the learner that owned them); the restored learner then publishes as a new
  generation (:mod:`distrl.runtime.weights`), which moves the actors to the checkpoint's weights. Each rank is restarted
  at most ``runtime.learner_restarts`` times, then the run fails with an error naming it.

The Ray runtime writes a learner checkpoint as the run starts, so there is always one to go back to; with
``learner.checkpoint_every`` = 0 that start-of-run checkpoint is the only one before the end, and a restart loses
every update (it says so in a warning).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from distrl import storage
from distrl.config import ExperimentConfig
from distrl.envs.base import EnvSpec
from distrl.runtime.common import RunPaths, n_fresh
from distrl.runtime.ray_counts import RayCounts
from distrl.runtime.ray_replay import RayShardClient, ray_shard_clients
from distrl.types import LearnerReport, PolicyWeights

if TYPE_CHECKING:  # torch and the learner load in the learner's process only (RayLearner.__init__): the driver,
    # which imports this module for LearnerGroup, stays torch-free
    from distrl.runtime.learner_worker import LearnerWorker

log = logging.getLogger(__name__)

ROUND_UPDATES, ROUND_S = 64, 0.5  # one training round: up to this many updates within about this many seconds


def collective_timeout_s(cfg: ExperimentConfig) -> float:
    """How long a torch.distributed collective waits for a peer: half the learner stuck timeout (a survivor
    returns before the driver kills the hung peer), or torch's default of 30 minutes when that is off."""
    stuck = cfg.runtime.learner_stuck_timeout_s
    return stuck / 2 if stuck > 0 else 1800.0


class LearnerGroupError(RuntimeError):
    """A learner's torch.distributed collective failed: a peer died or hangs. This learner is alive; its process
    group is not (the driver re-forms it)."""


def failed_in_collective(err: BaseException) -> bool:
    """Whether ``err`` came out of a torch.distributed call. gloo reports a closed peer or a timeout as a plain
    RuntimeError, so the innermost frame of the traceback decides."""
    import torch.distributed as dist

    if isinstance(err, dist.DistError):
        return True
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "torch/distributed/" in tb.tb_frame.f_code.co_filename.replace(os.sep, "/")


class RayLearner:
    """Hosts a LearnerWorker in a Ray actor; its sampler talks to the shard actors."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        spec: EnvSpec,
        shards: list[Any],
        store: Any,
        rank: int,
        world: int,
        counts: list[Any] | None = None,
    ) -> None:
        import torch  # noqa: F401  (this process is a learner's: it loads torch here, at its start)

        self.cfg, self.spec, self.shards, self.store = cfg, spec, shards, store
        self.rank, self.world = rank, world
        self.counts = counts or []  # count-table actors (bonus.glob=count)
        self.worker: LearnerWorker | None = None
        self.generation = 0
        self._store: Any = None  # rank 0: the TCPStore the group meets through (kept alive with the group)
        self._listener: socket.socket | None = None  # rank 0: the store's socket until setup hands it over

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's address and a port listening on it, for the group's TCPStore (called on rank 0). The
        socket is bound to the node's address only (127.0.0.1 on a local cluster), not to every interface as
        a TCPStore binds its own port, and stays open until ``setup`` hands it to the store: no other process
        can take the port in between."""
        self._close_listener()
        host = ray.util.get_node_ip_address()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.bind((host, 0))
        sock.listen()
        self._listener = sock
        return host, sock.getsockname()[1]

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def setup(self, rendezvous: tuple[str, int] | None, generation: int = 0) -> int:
        """Build the worker; with several learners first join a new process group at ``rendezvous`` (rank 0
        hosts its store). Called again on a learner that survived a peer's death: it leaves its old group and
        builds a new worker (the driver then loads the checkpoint into every learner). Returns the version."""
        import torch
        import torch.distributed as dist

        from distrl.learners.bonus import attach_counts
        from distrl.replay.sampler import ReplaySampler
        from distrl.runtime.learner_worker import LearnerWorker

        self._leave()
        self.generation = generation
        if self.world > 1:
            if rendezvous is None:
                raise ValueError("RayLearner.setup: several learners need a rendezvous address")
            self._store = self._join_store(rendezvous)
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(
                backend,
                store=self._store,
                rank=self.rank,
                world_size=self.world,
                timeout=datetime.timedelta(seconds=collective_timeout_s(self.cfg)),
            )
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
            store.publish.remote(weights.version, [ray.put(weights)], generation)

        self.worker = LearnerWorker(self.cfg, self.spec, sampler, publish=publish, rank=self.rank)
        if self.rank == 0:  # before anything is published: the env actors act on it
            from distrl.models.acting import check_actor_kernels

            check_actor_kernels(self.cfg, self.spec, self.worker.learner.agent)
        if self.counts:
            attach_counts(self.worker.learner.extras, RayCounts(self.counts))
        return self.worker.version

    def _join_store(self, rendezvous: tuple[str, int]) -> Any:
        """The group's TCPStore at ``rendezvous``: rank 0 serves it on the socket ``rendezvous_address`` opened,
        the others connect. Blocks until all ``world`` members joined (or the placement timeout)."""
        host, port = rendezvous
        wait = self.cfg.runtime.placement_timeout_s or 86400.0  # peers may still be waiting for placement
        listen_fd = None
        if self.rank == 0:
            if self._listener is None:
                raise RuntimeError("RayLearner.setup: rank 0 needs rendezvous_address() first")
            listen_fd = self._listener.detach()  # the store owns (and closes) the socket from here
            self._listener = None
        import torch.distributed as dist

        return dist.TCPStore(
            host,
            port,
            self.world,
            self.rank == 0,
            timeout=datetime.timedelta(seconds=wait),
            master_listen_fd=listen_fd,
        )

    def _w(self) -> LearnerWorker:
        if self.worker is None:
            raise RuntimeError("RayLearner.setup() was not called")
        return self.worker

    def train(self, max_updates: int, timeout_s: float) -> LearnerReport:
        try:
            return self._w().train(max_updates, timeout_s)
        except Exception as e:
            if self.world > 1 and failed_in_collective(e):
                raise LearnerGroupError(f"learner {self.rank}: a collective failed ({type(e).__name__}: {e})") from e
            raise

    def publish_weights(self) -> int:
        self._w().publish_weights()
        return self._w().version

    def replace_shard(self, shard: int, handle: Any) -> None:
        """Sample from ``handle`` for shard index ``shard`` (the runtime restarted that shard)."""
        self.shards[shard] = handle
        if self.worker is not None:
            self.worker.sampler.replace_client(shard, RayShardClient(handle, shard))

    def checkpoint_bytes(self, extra: dict[str, Any]) -> tuple[int, bytes]:
        """This learner's version and its checkpoint file's bytes, with ``extra``: the driver writes the file (on a
        cluster the learner's node may not see the run directory), without loading torch itself."""
        from distrl.learners.learner import checkpoint_bytes

        state = self._w().learner.state_dict()
        return int(state["version"]), checkpoint_bytes({**state, "extra": extra})

    def load_state_dict(self, state: dict[str, Any], source: str) -> int:
        self._w().learner.load_state_dict(state, source=source)
        return self._w().version

    def parameters_vector(self) -> np.ndarray:
        return self._w().parameters_vector().numpy()

    def device(self) -> str:
        return str(self._w().learner.device)

    def _leave(self) -> None:
        import torch.distributed as dist

        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        self._store = None

    def close(self) -> None:
        self._leave()
        self._close_listener()


def _cause(err: BaseException) -> BaseException:
    """The exception a remote call raised (Ray wraps it in a RayTaskError)."""
    return getattr(err, "cause", None) or err


class LearnerGroup:
    """The run's learner actors, seen from the driver (see the module doc).

    ``shards`` is the runtime's live list of shard handles (a restarted shard replaces its entry): a learner
    started later samples from the shards of that moment."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        spec: EnvSpec,
        shards: list[Any],
        store: Any,
        counts: list[Any],
        options: dict[str, Any],
        paths: RunPaths,
        await_placed: Callable[[Any, str], Any],
    ) -> None:
        self.cfg, self.spec, self.shards, self.store, self.counts = cfg, spec, shards, store, counts
        self.paths = paths
        self.world = cfg.learner.num_learners
        self._cls = ray.remote(**options)(RayLearner)
        self._await_placed = await_placed
        self.handles: list[Any] = []
        self.version = 0  # rank 0's version as last seen by the driver
        self.generation = 0  # +1 per restart (the weight store's generation)
        self.recoveries = 0  # restarts completed (the group trains again)
        self.restarts: dict[int, int] = {}  # by rank
        self.updates_lost = 0
        self.checkpoint_version: int | None = None  # version of the last checkpoint written
        self._round: list[Any] = []
        self._round_started = 0.0

    # ---- start ------------------------------------------------------------------------------------------------
    def _new(self, rank: int) -> Any:
        return self._cls.remote(self.cfg, self.spec, list(self.shards), self.store, rank, self.world, self.counts)

    def create(self) -> None:
        """Start the learner processes without waiting for them (:meth:`form` waits)."""
        self.handles = [self._new(r) for r in range(self.world)]

    def form(self) -> int:
        """Wait for the learners :meth:`create` started and form their group; returns the version."""
        self._form()
        return self.version

    def _form(self) -> None:
        """Every learner (re)builds its worker; with several, they meet at a new rendezvous."""
        where = (
            self._await_placed(self.handles[0].rendezvous_address.remote(), "the learners") if self.world > 1 else None
        )
        versions = self._await_placed([h.setup.remote(where, self.generation) for h in self.handles], "the learners")
        self.version = int(versions[0])

    def load(self, state: dict[str, Any], source: str) -> int:
        """Load a checkpoint's state into every learner; returns its version."""
        versions = ray.get([h.load_state_dict.remote(state, source) for h in self.handles])
        self.version = int(versions[0])
        return self.version

    def publish(self) -> int:
        """Rank 0 publishes its weights; returns the version."""
        return int(ray.get(self.handles[0].publish_weights.remote()))

    def replace_shard(self, shard: int, handle: Any) -> None:
        for h in self.handles:
            h.replace_shard.remote(shard, handle)  # runs when the learner's current training call returns

    # ---- rounds -----------------------------------------------------------------------------------------------
    def poll(self, timeout_s: float) -> list[LearnerReport] | None:
        """Start a round if none is running; return its reports (by rank) once every learner has returned, else
        None. A learner that failed, or whose round is older than ``runtime.learner_stuck_timeout_s``, is restarted
        here (that round is dropped; the next poll starts a new one)."""
        if not self._round:
            self._round = [h.train.remote(ROUND_UPDATES, ROUND_S) for h in self.handles]
            self._round_started = time.monotonic()
        ready, pending = ray.wait(self._round, num_returns=len(self._round), timeout=timeout_s)
        reports: dict[int, LearnerReport] = {}
        failed: dict[int, BaseException] = {}
        for ref in ready:
            r = self._round.index(ref)
            try:
                reports[r] = ray.get(ref)
            except ray.exceptions.RayError as e:
                failed[r] = e
        limit = self.cfg.runtime.learner_stuck_timeout_s
        age = time.monotonic() - self._round_started
        if not failed and pending and limit > 0 and age > limit:
            failed = {self._round.index(ref): _hung(age, limit) for ref in pending}
        if failed:
            self._recover(failed)
            return None
        if pending:
            return None
        self._round = []
        self.version = reports[0].version
        return [reports[r] for r in range(self.world)]

    def finish(self, timeout_s: float) -> list[LearnerReport] | None:
        """Wait (bounded) for the running round, if any; its reports, or None (none running, timed out, or a
        learner failed: then it was restarted)."""
        end = time.monotonic() + timeout_s
        while self._round and time.monotonic() < end:
            reports = self.poll(min(1.0, max(0.0, end - time.monotonic())))
            if reports is not None:
                return reports
        return None

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def save_checkpoint(self, extra: dict[str, Any]) -> bool:
        """Write rank 0's state (with ``extra``) to the run's learner checkpoint. When rank 0 has died, restart
        the group instead and return False."""
        try:
            version, data = ray.get(self.handles[0].checkpoint_bytes.remote(extra))
        except ray.exceptions.RayError as e:
            self._recover({0: e})
            return False
        storage.atomic_write(self.paths.learner_checkpoint, lambda f: f.write(data))
        self.checkpoint_version = int(version)
        return True

    # ---- faults -----------------------------------------------------------------------------------------------
    def _recover(self, failed: dict[int, BaseException]) -> None:
        """Restart the learners to blame for ``failed`` (rank -> error) from the last checkpoint; see the module
        doc. Raises RuntimeError naming the learner when one has used up ``runtime.learner_restarts``."""
        culprits = {r: e for r, e in failed.items() if not isinstance(_cause(e), LearnerGroupError)}
        others = [(r, ref) for r, ref in enumerate(self._round) if r not in failed]
        if others:  # survivors return once their collectives time out (or at once: a dead peer); others hang
            stuck = self.cfg.runtime.learner_stuck_timeout_s
            until = self._round_started + max(stuck, collective_timeout_s(self.cfg) + 5.0)
            wait = max(5.0, until - time.monotonic())
            ready, _ = ray.wait([ref for _, ref in others], num_returns=len(others), timeout=wait)
            for r, ref in others:
                if ref not in ready:
                    culprits[r] = _hung(time.monotonic() - self._round_started, stuck)
                    continue
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as e:
                    if not isinstance(_cause(e), LearnerGroupError):
                        culprits[r] = e
        if not culprits:  # every learner saw a collective fail and none is to blame: restart them all
            culprits = dict(failed)
        limit = self.cfg.runtime.learner_restarts
        for r, err in sorted(culprits.items()):
            n = self.restarts.get(r, 0) + 1
            if n > limit:
                raise RuntimeError(
                    f"learner {r} failed {n} times (limit runtime.learner_restarts={limit}); "
                    f"last error: {_describe(err)}"
                ) from err
        for r in culprits:
            self.restarts[r] = self.restarts.get(r, 0) + 1
        self._round = []
        lost_from = self.version
        for r in culprits:
            ray.kill(self.handles[r])
            self.handles[r] = self._new(r)
        self.generation += 1
        try:
            restored = self._restore()
        except Exception as e:  # a survivor could not re-form (it died or hangs too): start every learner anew
            log.warning("distrl: the learners could not re-form (%s); starting all of them anew", _describe(e))
            for r, h in enumerate(self.handles):
                ray.kill(h)
                self.handles[r] = self._new(r)
            restored = self._restore()
        lost = max(0, lost_from - restored)
        self.updates_lost += lost
        self.recoveries += 1
        what = ", ".join(
            f"learner {r} {_describe(e)} ({self.restarts[r]}/{limit})" for r, e in sorted(culprits.items())
        )
        note = ""
        if self.cfg.learner.checkpoint_every <= 0:
            note = " (learner.checkpoint_every=0: the only checkpoint before the end is the start of the run)"
        log.warning(
            "distrl: %s; restarted from the checkpoint at version %d%s: %d updates lost", what, restored, note, lost
        )

    def _restore(self) -> int:
        """Form the group anew, load the last checkpoint into every learner and publish; returns its version."""
        self._form()
        from distrl.learners.learner import load_checkpoint_file  # loads torch: only after a learner failed

        path = self.paths.learner_checkpoint
        version = self.load(load_checkpoint_file(path), str(path))
        self.publish()
        return version


def _hung(age: float, limit: float) -> TimeoutError:
    return TimeoutError(f"hung: no training round returned for {age:.0f} s (runtime.learner_stuck_timeout_s={limit:g})")


def _describe(err: BaseException) -> str:
    if isinstance(err, ray.exceptions.RayActorError):
        return "died"
    cause = _cause(err)
    if isinstance(cause, TimeoutError):
        return str(cause)
    return f"raised {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
