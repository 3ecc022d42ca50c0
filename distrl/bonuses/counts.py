"""Global visit counts: a table of int64 state keys -> visits, shared by every env actor of a run.

The global count bonus (ALGORITHMS.md §1.3, GEB eq. 7) is ``1 / sqrt(N(psi(s)))`` with ``N`` counted over the
*entire* training experience, across all actors (the paper's TorchBeast code kept one dict per actor process;
distrl does not). Env actors hash their observations to int64 keys (:func:`distrl.bonuses.keys.state_keys`),
buffer them, and send them in batches to the table; the learner looks the counts of replayed observations up at
training time. :class:`CountTable` is the plain class: the local runtime keeps one in-process, the Ray runtime
hosts :data:`CountTable` shards as actors (:mod:`distrl.runtime.ray_counts`), keys routed by
:func:`shard_of`.

Storage is two sorted NumPy arrays (keys, counts): ``increment`` and ``lookup`` are vectorised
(``np.unique`` + ``np.searchsorted``), ``O(n log n)`` in the batch plus a merge when new keys appear.

Usage::

    table = CountTable()
    table.increment(np.array([7, 7, 3], dtype=np.int64))
    table.lookup(np.array([7, 3, 5], dtype=np.int64))      # array([2, 1, 0])
    state = table.state_dict(); CountTable().load_state_dict(state)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from distrl.storage import atomic_write
from distrl.types import as_numpy

if TYPE_CHECKING:  # a count-table actor loads torch only to checkpoint; the driver only for a counts run
    import torch


class CountSource(Protocol):
    """What the learner's count bonus needs: counts for int64 keys (0 = never seen). A :class:`CountTable`, a
    :class:`ShardedCounts` over tables, or the Ray client of :mod:`distrl.runtime.ray_counts`."""

    def lookup(self, keys: np.ndarray) -> np.ndarray: ...


def _as_keys(keys: Any, where: str) -> np.ndarray:
    arr = as_numpy(keys)
    if arr.dtype != np.int64:
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        raise TypeError(f"{where}: state keys must be int64 (distrl.bonuses.keys.state_keys), got {arr.dtype}")
    return arr.reshape(-1)


def shard_of(keys: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard index ``[N]`` of each key (keys are hashes already; the modulo of a scrambled key balances them)."""
    if num_shards < 1:
        raise ValueError(f"shard_of: num_shards must be >= 1, got {num_shards}")
    mixed = (keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    return (mixed % np.uint64(num_shards)).astype(np.int64)


class CountTable:
    """Visit counts of int64 state keys (see the module doc)."""

    def __init__(self) -> None:
        self._keys = np.zeros(0, dtype=np.int64)  # sorted, unique
        self._counts = np.zeros(0, dtype=np.int64)
        self.total = 0  # visits counted (sum of counts)

    def __len__(self) -> int:
        return int(self._keys.size)

    def increment(self, keys: Any) -> int:
        """Add one visit per occurrence of each key (``[N]`` int64, repeats count). Returns N."""
        k = _as_keys(keys, "CountTable.increment")
        if k.size == 0:
            return 0
        uniq, n = np.unique(k, return_counts=True)
        pos = np.searchsorted(self._keys, uniq)
        found = pos < self._keys.size
        found[found] = self._keys[pos[found]] == uniq[found]
        np.add.at(self._counts, pos[found], n[found])
        if not found.all():
            keys_all = np.concatenate([self._keys, uniq[~found]])
            counts_all = np.concatenate([self._counts, n[~found]])
            order = np.argsort(keys_all, kind="stable")
            self._keys, self._counts = keys_all[order], counts_all[order]
        self.total += int(k.size)
        return int(k.size)

    def lookup(self, keys: Any) -> np.ndarray:
        """Counts ``[N]`` int64 of ``keys`` (0 for a key never incremented); the input's shape is kept."""
        raw = as_numpy(keys)
        k = _as_keys(raw, "CountTable.lookup")
        out = np.zeros(k.size, dtype=np.int64)
        if self._keys.size and k.size:
            pos = np.searchsorted(self._keys, k)
            ok = pos < self._keys.size
            ok[ok] = self._keys[pos[ok]] == k[ok]
            out[ok] = self._counts[pos[ok]]
        return out.reshape(raw.shape)

    def stats(self) -> dict[str, float]:
        return {"unique_keys": float(len(self)), "visits": float(self.total)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only (checkpoints load with ``weights_only=True``)."""
        import torch

        return {
            "keys": torch.from_numpy(self._keys.copy()),
            "counts": torch.from_numpy(self._counts.copy()),
            "total": torch.tensor(self.total, dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = as_numpy(state["keys"])
        counts = as_numpy(state["counts"])
        if keys.shape != counts.shape or keys.ndim != 1:
            raise ValueError(f"CountTable.load_state_dict: keys {keys.shape} and counts {counts.shape} differ")
        if keys.size > 1 and not bool((np.diff(keys) > 0).all()):
            raise ValueError("CountTable.load_state_dict: keys are not sorted and unique (not a CountTable state)")
        self._keys = keys.astype(np.int64, copy=True)
        self._counts = counts.astype(np.int64, copy=True)
        self.total = int(state.get("total", int(self._counts.sum())))


class ShardedCounts:
    """Several count tables behind one ``increment``/``lookup``, keys routed by :func:`shard_of` (in one
    process; the Ray runtime routes the same way to shard actors). Its state is the list of the shards'."""

    def __init__(self, tables: Sequence[CountTable]) -> None:
        if not tables:
            raise ValueError("ShardedCounts: needs at least one table")
        self.tables = list(tables)

    def increment(self, keys: Any) -> int:
        k = _as_keys(keys, "ShardedCounts.increment")
        sid = shard_of(k, len(self.tables))
        for j, t in enumerate(self.tables):
            t.increment(k[sid == j])
        return int(k.size)

    def lookup(self, keys: Any) -> np.ndarray:
        raw = as_numpy(keys)
        k = _as_keys(raw, "ShardedCounts.lookup")
        sid = shard_of(k, len(self.tables))
        out = np.zeros(k.size, dtype=np.int64)
        for j, t in enumerate(self.tables):
            m = sid == j
            if m.any():
                out[m] = t.lookup(k[m])
        return out.reshape(raw.shape)

    def stats(self) -> dict[str, float]:
        return {"unique_keys": float(sum(len(t) for t in self.tables)),
                "visits": float(sum(t.total for t in self.tables))}

    def state_dict(self) -> dict[str, Any]:
        return {"shards": [t.state_dict() for t in self.tables]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shards = state["shards"]
        if len(shards) != len(self.tables):
            raise ValueError(
                f"ShardedCounts.load_state_dict: checkpoint has {len(shards)} count shards, this run "
                f"{len(self.tables)} (bonus.count_shards must match to resume)"
            )
        for t, s in zip(self.tables, shards):
            t.load_state_dict(s)


def count_bonus(counts: np.ndarray | torch.Tensor, power: float = 0.5) -> torch.Tensor:
    """``N^-power`` (GEB eq. 7 with power 0.5); a count of 0 (a state the table has not heard of yet: its
    actor's keys are still on the way) is treated as 1, a first visit."""
    import torch

    c = torch.as_tensor(counts).to(torch.float32).clamp(min=1.0)
    return c.pow(-power)


COUNTS_SCHEMA = 1


def save_count_state(state: dict[str, Any], path: str | Path) -> Path:
    """Write a count table's state (``{"shards": [CountTable.state_dict(), ...]}``) atomically to ``path``."""
    import torch

    return atomic_write(path, lambda f: torch.save({"schema": COUNTS_SCHEMA, **state}, f))


def load_count_state(path: str | Path) -> dict[str, Any]:
    """Read what :func:`save_count_state` wrote (tensors only: ``weights_only=True``)."""
    import torch

    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a valid count-table checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("schema") != COUNTS_SCHEMA or "shards" not in state:
        raise ValueError(f"{path}: not a count-table checkpoint of schema {COUNTS_SCHEMA}")
    return state


def make_counts(num_shards: int = 1) -> ShardedCounts:
    """The in-process global count table of a run (``bonus.count_shards`` tables, routed as on Ray)."""
    return ShardedCounts([CountTable() for _ in range(num_shards)])
