"""Replay shards as Ray actors, and the client the sampler and env actors use to reach them.

:class:`~distrl.replay.shard.ReplayShard` stays a plain class; :func:`make_ray_shards` applies
``ray.remote(num_cpus=...)`` to it at runtime. :class:`RayShardClient` implements
:class:`~distrl.replay.client.ShardClient`, so :class:`~distrl.replay.sampler.ReplaySampler`,
:func:`~distrl.replay.client.insert_with_retry` and :class:`~distrl.replay.client.BoundedInserter` work the
same on local and Ray shards.

Waiting: shard actors are synchronous and are only ever called non-blocking (``timeout=0``), so a rate-limited
caller can never occupy a shard's event loop; the client side waits and retries until its deadline.

Transport: inserts travel as batch-major numpy leaves and samples come back as numpy leaves (Ray serialises
numpy out of band, so the learner side reads them zero-copy from the object store; the sampler copies once
when it assembles the batch, since torch must not alias read-only object-store memory).

Restart after a failure: checkpoint with ``ray.get(handle.save.remote(dir))``; when the actor dies, build a
new one with ``make_ray_shard(cfg, j, restore_from=dir, incarnation=dead.incarnation + 1)`` and hand the
sampler the new client with ``sampler.replace_client(j, RayShardClient(new_handle, j))``. The new shard is a
new incarnation (:class:`~distrl.replay.shard.ReplayShard`), so priority updates still in flight for the dead
one's keys are dropped there (``updates_stale``) instead of landing on new rows that reuse their insert counts.

Usage::

    handles = make_ray_shards(cfg.replay, num_shards=2, num_cpus=0.5, seed=0)
    clients = ray_shard_clients(handles)
    insert_with_retry(clients[0], traj, timeout=10.0)
    sampler = ReplaySampler(clients, cfg.replay, batch_size=32)
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import ray

from distrl import storage
from distrl.config import ReplayConfig
from distrl.replay.client import ReplayShardError
from distrl.replay.shard import InsertResult, ReplayShard, ShardSample, ShardStats
from distrl.types import Trajectory, as_numpy

T = TypeVar("T")


class RayPending(Generic[T]):
    """A :class:`~distrl.replay.client.Pending` over a Ray ObjectRef."""

    __slots__ = ("ref", "shard_id")

    def __init__(self, ref: ray.ObjectRef, shard_id: int = -1) -> None:
        self.ref = ref
        self.shard_id = shard_id

    def done(self) -> bool:
        ready, _ = ray.wait([self.ref], timeout=0, fetch_local=False)
        return bool(ready)

    def result(self, timeout: float | None = None) -> T:
        try:
            return ray.get(self.ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError as e:
            raise TimeoutError(f"replay shard call not answered within {timeout}s") from e
        except ray.exceptions.RayActorError as e:  # the shard actor died (the runtime restarts it)
            raise ReplayShardError(self.shard_id, e) from e


class StoredShard(ReplayShard):
    """A ReplayShard whose ``save`` / ``restore`` also take a remote run location (``s3://...``, see
    :mod:`distrl.storage`): the checkpoint is written to this node's staging directory and pushed there (or
    pulled from there first), so a shard on any node of a cluster keeps its checkpoint with the run."""

    def save(self, path: str | Path, *, fsync: bool = True) -> Path:  # type: ignore[override]
        if not storage.is_remote(str(path)):
            return super().save(path, fsync=fsync)
        local = super().save(storage.staging_dir(str(path)), fsync=fsync)
        storage.push(local, str(path))
        return local

    def torch_loaded(self) -> bool:
        """Whether this shard's process has loaded torch. It should not have: a shard stores and samples NumPy
        leaves, and torch costs a process about 140 MB of PSS and a second of start-up CPU (BENCHMARKS.md,
        "Processes that do not need torch do not load it")."""
        return "torch" in sys.modules

    def checkpoint(self, path: str | Path) -> tuple[int, float]:
        """:meth:`save` to ``path`` (atomic), timed: returns (rows inserted up to this checkpoint, seconds). The
        actor runs one call at a time, so no insert lands between the save and the count."""
        t0 = time.perf_counter()
        self.save(path)
        return self.stats().inserted, time.perf_counter() - t0

    def restore(self, path: str | Path, **kwargs: Any) -> ShardStats:  # type: ignore[override]
        if storage.is_remote(str(path)):
            local = storage.staging_dir(str(path))
            shutil.rmtree(local, ignore_errors=True)
            storage.pull(str(path), local)
            path = local
        return super().restore(path, **kwargs)


def _np(x: Any) -> np.ndarray | None:
    return None if x is None else as_numpy(x)


class RayShardClient:
    """:class:`~distrl.replay.client.ShardClient` for a shard actor made by :func:`make_ray_shards`."""

    def __init__(self, handle: Any, shard_id: int, frame_stacks: Collection[str] = ()) -> None:
        self.handle = handle
        self.shard_id = int(shard_id)
        self.frame_stacks = tuple(frame_stacks)  # EnvSpec.frame_stacks: packed here, before the transfer

    def sample_async(self, n: int, n_fresh: int = 0, min_policy_version: int | None = None) -> RayPending[ShardSample]:
        return RayPending(self.handle.sample.remote(n, n_fresh, min_policy_version))

    def update_priorities_async(self, keys: np.ndarray, priorities: np.ndarray) -> RayPending[int]:
        return RayPending(self.handle.update_priorities.remote(_np(keys), _np(priorities)))

    def stats_async(self) -> RayPending[ShardStats]:
        return RayPending(self.handle.stats.remote())

    def insert_async(self, traj: Trajectory, priorities: Any = None, prior: Any = None) -> RayPending[InsertResult]:
        leaves = {k: as_numpy(v) for k, v in traj.batch_major(self.frame_stacks).items()}
        return RayPending(self.handle.insert_leaves.remote(leaves, _np(priorities), prior=_np(prior)), self.shard_id)

    def save(self, path: str | Path, timeout: float = 600.0) -> Path:
        """Checkpoint the shard (blocking, bounded by ``timeout``)."""
        return ray.get(self.handle.save.remote(str(path)), timeout=timeout)


def make_ray_shard(
    cfg: ReplayConfig,
    shard_id: int,
    *,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    seed: int | None = None,
    core_state_dtype: str | None = None,
    restore_from: str | Path | None = None,
    incarnation: int = 0,
    timeout: float = 600.0,
) -> Any:
    """One shard actor; with ``restore_from`` it is loaded from that checkpoint before this returns.

    ``incarnation``: the lowest incarnation the new shard may take (a restore also goes above the checkpoint's);
    1 + the dead shard's when it replaces one, so that no key of the dead shard is valid in the new one.

    ``num_cpus`` defaults to ``cfg.num_cpus``; ``resources`` are custom Ray resources to ask for (the node
    label, :func:`~distrl.runtime.resources.ray_options`). A refused checkpoint (CheckpointError) is raised here
    and the new actor is killed.
    """
    extra: dict[str, Any] = {"resources": dict(resources)} if resources else {}
    cls = ray.remote(num_cpus=cfg.num_cpus if num_cpus is None else num_cpus, max_restarts=0, **extra)(StoredShard)
    handle = cls.remote(cfg, shard_id, seed=seed, core_state_dtype=core_state_dtype,
                        incarnation=0 if restore_from is not None else incarnation)
    if restore_from is not None:
        try:
            ray.get(handle.restore.remote(str(restore_from), incarnation=incarnation), timeout=timeout)
        except BaseException:
            ray.kill(handle)
            raise
    return handle


def make_ray_shards(
    cfg: ReplayConfig,
    num_shards: int | None = None,
    *,
    num_cpus: float | None = None,
    resources: dict[str, float] | None = None,
    seed: int | None = None,
    core_state_dtype: str | None = None,
    restore_dirs: list[str | Path] | None = None,
) -> list[Any]:
    """``num_shards`` (default ``cfg.num_shards``) shard actors with ids 0..J-1, each ``num_cpus`` CPUs (default
    ``cfg.num_cpus``) and ``resources``."""
    j = cfg.num_shards if num_shards is None else int(num_shards)
    if restore_dirs is not None and len(restore_dirs) != j:
        raise ValueError(f"make_ray_shards: {len(restore_dirs)} restore_dirs for {j} shards")
    return [
        make_ray_shard(
            cfg,
            i,
            num_cpus=num_cpus,
            resources=resources,
            seed=seed,
            core_state_dtype=core_state_dtype,
            restore_from=None if restore_dirs is None else restore_dirs[i],
        )
        for i in range(j)
    ]


def ray_shard_clients(handles: list[Any]) -> list[RayShardClient]:
    """Clients in handle order (client index = shard id)."""
    return [RayShardClient(h, i) for i, h in enumerate(handles)]


class PeriodicShardCheckpoints:
    """Every ``every_s`` seconds each shard actor checkpoints itself to its location (:meth:`StoredShard.checkpoint`:
    atomic, so a crash mid-save leaves the previous checkpoint), without blocking the caller: :meth:`poll` starts
    a round when one is due and the previous one has finished, and collects finished saves. A shard serves no
    insert or sample while it saves; ``metrics()`` reports the save time (``replay/checkpoint_s``).

    Usage (the driver's loop)::

        ckpts = PeriodicShardCheckpoints(cfg.replay.checkpoint_every_s, [paths.shard_location(j) for j in range(J)])
        while running:
            ckpts.poll(shards)
            ...
        ckpts.wait()                                 # before the final save
    """

    def __init__(self, every_s: float, locations: list[str]) -> None:
        self.every_s = float(every_s)
        self.locations = list(locations)
        self.pending: dict[int, Any] = {}
        self.next_at = time.monotonic() + self.every_s
        self.rounds = 0
        self.inserted_at_checkpoint: dict[int, int] = {}  # shard -> rows inserted when its last checkpoint was taken
        self.last_s: dict[int, float] = {}
        self.max_s = 0.0

    def poll(self, shards: list[Any], now: float | None = None) -> None:
        """Collect finished saves (a failed one raises, naming the shard); start a round when due."""
        for j, ref in list(self.pending.items()):
            ready, _ = ray.wait([ref], timeout=0)
            if ready:
                self._collect(j, ref)
        if self.every_s <= 0 or self.pending:
            return
        now = time.monotonic() if now is None else now
        if now >= self.next_at:
            self.pending = {j: s.checkpoint.remote(self.locations[j]) for j, s in enumerate(shards)}
            self.next_at = now + self.every_s
            self.rounds += 1

    def forget(self, j: int) -> None:
        """Drop shard ``j``'s save in flight and its record (the shard died; its replacement starts afresh)."""
        self.pending.pop(j, None)
        self.inserted_at_checkpoint.pop(j, None)

    def _collect(self, j: int, ref: Any, timeout: float | None = None) -> None:
        del self.pending[j]
        try:
            inserted, seconds = ray.get(ref, timeout=timeout)
        except ray.exceptions.RayActorError:
            return  # the shard died while saving (the previous checkpoint stands); the runtime restarts it
        except ray.exceptions.RayError as e:
            raise RuntimeError(f"replay shard {j}: periodic checkpoint to {self.locations[j]} failed: {e}") from e
        self.inserted_at_checkpoint[j] = int(inserted)
        self.last_s[j] = float(seconds)
        self.max_s = max(self.max_s, float(seconds))

    def wait(self, timeout: float = 600.0) -> None:
        """Collect the saves still in flight (blocking)."""
        for j, ref in list(self.pending.items()):
            self._collect(j, ref, timeout)

    def metrics(self) -> dict[str, float]:
        if not self.last_s:
            return {}
        return {"replay/checkpoints": float(self.rounds),
                "replay/checkpoint_s": max(self.last_s.values()),
                "replay/checkpoint_s_max": self.max_s}
