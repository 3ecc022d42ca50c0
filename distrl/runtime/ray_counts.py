"""The global count table on Ray: :class:`~distrl.bonuses.counts.CountTable` shards as actors.

``bonus.glob=count`` needs visit counts over the whole run, across every env actor (not one dict per process,
as the paper's code had). :func:`make_count_actors` starts ``bonus.count_shards`` CountTable actors (no CPU
reserved: they only add and look up arrays); keys are routed to shards by :func:`~distrl.bonuses.counts.shard_of`
(the same routing :class:`~distrl.bonuses.counts.ShardedCounts` uses in the local runtime, so a checkpoint moves
between the two). :class:`RayCounts` is the client:

* env actors call :meth:`RayCounts.send` with the state keys they drained, once per emitted sequence: one
  fire-and-forget call per shard, at most ``max_inflight`` unanswered (then it waits for the oldest);
* the learner calls :meth:`RayCounts.lookup` for the observations of each replayed batch (one round trip to
  all shards in parallel);
* the driver saves and restores the shards' state with the run's checkpoints.

Usage::

    handles = make_count_actors(cfg)
    counts = RayCounts(handles)
    counts.send(keys)                       # int64 [N], not awaited
    counts.lookup(keys)                     # int64 counts, same shape
    save_count_state(counts.state_dict(), path); counts.load_state_dict(load_count_state(path))
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import ray

from distrl.bonuses.counts import CountTable, shard_of
from distrl.config import ExperimentConfig


def make_count_actors(cfg: ExperimentConfig, resources: dict[str, float] | None = None) -> list[Any]:
    """``cfg.bonus.count_shards`` CountTable actors (``num_cpus=0``; ``resources`` pins them like the replay
    shards)."""
    extra: dict[str, Any] = {"resources": dict(resources)} if resources else {}
    cls = ray.remote(num_cpus=0, max_restarts=0, **extra)(CountTable)
    return [cls.remote() for _ in range(cfg.bonus.count_shards)]


class RayCounts:
    """Client of the count-table actors (see the module doc). Picklable: it holds only handles."""

    def __init__(self, handles: list[Any], max_inflight: int = 8) -> None:
        if not handles:
            raise ValueError("RayCounts: needs at least one count-table actor handle")
        self.handles = list(handles)
        self.max_inflight = max_inflight
        self._inflight: collections.deque[Any] = collections.deque()
        self.sent = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"handles": self.handles, "max_inflight": self.max_inflight}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["handles"], state["max_inflight"])  # type: ignore[misc]

    def _split(self, keys: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        k = np.asarray(keys, dtype=np.int64).reshape(-1)
        if len(self.handles) == 1:
            return [(0, k, np.ones(k.size, dtype=bool))]
        sid = shard_of(k, len(self.handles))
        return [(j, k[sid == j], sid == j) for j in range(len(self.handles))]

    def send(self, keys: np.ndarray) -> None:
        """Count one visit per key, without waiting for the answer (calls from one sender arrive in order)."""
        for j, part, _ in self._split(keys):
            if part.size:
                self._inflight.append(self.handles[j].increment.remote(part))
                self.sent += int(part.size)
        while len(self._inflight) > self.max_inflight:
            ray.get(self._inflight.popleft())

    def increment(self, keys: np.ndarray) -> int:
        """Count and wait until the shards have the keys (tests; actors use :meth:`send`)."""
        self.send(keys)
        self.flush()
        return int(np.asarray(keys).size)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait for the counts sent so far to be applied."""
        if self._inflight:
            ray.get(list(self._inflight), timeout=timeout)
            self._inflight.clear()

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        raw = np.asarray(keys, dtype=np.int64)
        parts = self._split(raw)
        refs = [self.handles[j].lookup.remote(part) for j, part, _ in parts]
        out = np.zeros(raw.size, dtype=np.int64)
        for (_, _, mask), counts in zip(parts, ray.get(refs)):
            out[mask] = counts
        return out.reshape(raw.shape)

    def stats(self) -> dict[str, float]:
        st = ray.get([h.stats.remote() for h in self.handles])
        return {k: float(sum(s[k] for s in st)) for k in ("unique_keys", "visits")}

    def state_dict(self) -> dict[str, Any]:
        return {"shards": ray.get([h.state_dict.remote() for h in self.handles])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shards = state["shards"]
        if len(shards) != len(self.handles):
            raise ValueError(
                f"count-table checkpoint has {len(shards)} shards, this run {len(self.handles)} "
                "(bonus.count_shards must match to resume)"
            )
        ray.get([h.load_state_dict.remote(s) for h, s in zip(self.handles, shards)])
