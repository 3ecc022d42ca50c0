"""Replay of append-only memory state (HCAM's chunk memory) without a copy of the whole memory per sequence.

A core declares the append-only part of its state with an :class:`~distrl.types.EpisodeMemorySpec`: ring
tensors ``[B, ring, *item]`` whose c-th item goes to slot ``c % ring`` and never changes, plus an item counter.
Replay treats them generically, in two halves:

* Actor side, :class:`MemoryCompactor` (used by the sequence writer): at each sequence start it replaces every
  ring in the stored core state by the items written since the previous sequence start of that env slot
  (``<key>.new`` ``[B, N, *item]``, N = ``ceil(period / steps_per_item)`` capped at ``ring``), and adds
  ``memory.stream`` (a 63-bit id of the slot's current memory stream), ``memory.first`` (the count of the
  first item sent), ``memory.count`` (the counter) and ``memory.ring``. An episode end (told by the writer,
  :meth:`MemoryCompactor.episode_end`) starts a new stream when the core clears its memory then, and so does
  a counter that goes down.
* Shard side, :class:`EpisodeMemoryStore` (owned by :class:`~distrl.replay.shard.ReplayShard`): on insert it
  appends the new items to their stream's item array (each item is stored once, however many sequences
  reference it) and keeps only the small ``memory.*`` leaves in the row; on sample it rebuilds each row's
  rings from its stream (items ``[count - ring, count)`` at slots ``c % ring``, zeros where nothing was
  written), so the learner sees the core state exactly as the actor had it. A stream's items are dropped when
  the last row that needs them is evicted (rows of a stream are inserted and evicted in order). Every env actor
  inserts all its sequences into one shard (``actor_id mod J``), so a stream never spans shards.

If a sequence of a stream never arrives (an insert lost in transit), the items it carried are missing: the rows
after it get zeros in those slots and :attr:`EpisodeMemoryStore.gaps` counts them.

Usage::

    comp = MemoryCompactor(core.episode_memory, num_envs=B, period=40)
    small = comp.compact(state)                 # ring keys -> "<key>.new" + "memory.*" (per sequence start)
    store = EpisodeMemoryStore(capacity=4096)
    rows, delta = store.split(leaves)           # batch-major leaves of an insert
    store.add(delta, keys)                      # after the rows were stored under ``keys``
    full = store.assemble(storage.gather(slots))   # rings back in "core_state/<key>"
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distrl.types import CoreState, EpisodeMemorySpec, as_numpy

PREFIX = "core_state/"
NEW = ".new"
META = ("memory.stream", "memory.first", "memory.count", "memory.ring")


class MemoryCompactor:
    """Actor side: per env slot, the stream id and the counter at the previous sequence start (module doc)."""

    def __init__(self, spec: EpisodeMemorySpec, num_envs: int, period: int, actor_id: int = 0) -> None:
        if spec.steps_per_item < 1 or spec.ring < 1:
            raise ValueError(f"episode memory: steps_per_item and ring must be >= 1, got {spec}")
        self.spec = spec
        self.B = num_envs
        self.max_new = min(spec.ring, math.ceil(period / spec.steps_per_item))
        self._last = np.full(num_envs, -1, dtype=np.int64)  # counter at the previous sequence start; -1 = none
        self._stream = np.zeros(num_envs, dtype=np.int64)
        self._ended = np.zeros(num_envs, dtype=bool)  # an episode ended since the previous sequence start
        # Stream ids: random high bits per writer (a restarted actor never reuses an id), then a running number.
        self._prefix = (int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF) << 32
        self._next = 0

    def episode_end(self, done: Any) -> None:
        """Slots whose episode ended at this step (``done`` [B] bool): when the core clears its memory at an
        episode start, their next sequence start begins a new stream."""
        if self.spec.cleared_at_episode_start:
            self._ended |= np.asarray(done, dtype=bool)

    def restart(self) -> None:
        """Forget the slots' streams: the next :meth:`compact` starts new ones (the writer began again)."""
        self._last.fill(-1)
        self._ended[:] = False

    def compact(self, state: CoreState) -> CoreState:
        """``state`` (leaves ``[B, ...]``, any device) with its rings replaced by the items written since the
        previous call (new CPU tensors; the input is not modified)."""
        import torch  # the actor's side (it has torch); the shard's side of this module does not load it

        spec, R, N = self.spec, self.spec.ring, self.max_new
        count = state[spec.counter].detach().cpu().numpy().astype(np.int64)
        if count.shape != (self.B,):
            raise ValueError(f"episode memory: counter {spec.counter!r} must be [{self.B}], got {count.shape}")
        first = np.empty(self.B, dtype=np.int64)
        for b in range(self.B):
            c = int(count[b])
            if self._last[b] < 0 or c < self._last[b] or self._ended[b]:  # a new stream
                self._stream[b] = self._prefix | (self._next & 0xFFFFFFFF)
                self._next += 1
                first[b] = max(0, c - R)
            else:
                first[b] = self._last[b]
            if c - first[b] > N:
                raise ValueError(
                    f"episode memory: env slot {b} wrote {c - first[b]} items since the previous sequence start, "
                    f"more than ceil(period / steps_per_item) = {N}; the core's steps_per_item "
                    f"({spec.steps_per_item}) or the writer's period is wrong"
                )
        self._last = count.copy()
        self._ended[:] = False
        out: CoreState = {}
        rows = np.arange(self.B)
        offs = first[:, None] + np.arange(N)[None, :]  # [B, N] item counts
        have = offs < count[:, None]
        slots = torch.from_numpy(np.where(have, offs % R, 0))
        for k, v in state.items():
            if k in spec.keys:
                v = v.detach().cpu()
                if v.dim() < 2 or v.shape[1] != R:
                    raise ValueError(f"episode memory: state[{k!r}] must be [B, {R}, ...], got {tuple(v.shape)}")
                items = v[torch.from_numpy(rows)[:, None], slots]  # [B, N, *item] (a copy)
                items[torch.from_numpy(~have)] = 0
                out[k + NEW] = items
            else:
                out[k] = v.detach().to("cpu", copy=True)
        for k in META:
            if k in out:
                raise ValueError(f"episode memory: the core state already has a key {k!r}")
        out["memory.stream"] = torch.from_numpy(self._stream.copy())
        out["memory.first"] = torch.from_numpy(first)
        out["memory.count"] = torch.from_numpy(count.copy())
        out["memory.ring"] = torch.full((self.B,), R, dtype=torch.int64)
        return out


@dataclass
class _Stream:
    """Items ``[base, base + n)`` of one stream, one growing array per ring key, and its live rows (key, count),
    oldest first."""

    base: int
    items: dict[str, np.ndarray]
    n: int = 0
    off: int = 0  # items[key][off: off + n] are held
    live: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)

    @property
    def end(self) -> int:
        return self.base + self.n

    def append(self, new: Mapping[str, np.ndarray], first: int, count: int) -> int:
        """Append items ``[first, count)``; returns how many items were missing before ``first`` (a gap)."""
        gap = 0
        if first > self.end:  # a lost sequence: zeros stand in for its items
            gap = first - self.end
            self._grow({k: np.zeros((gap, *a.shape[1:]), a.dtype) for k, a in new.items()})
        skip = max(0, self.end - first)  # items already held (never happens with one writer per stream)
        if count > first + skip:
            self._grow({k: a[skip: count - first] for k, a in new.items()})
        return gap

    def _grow(self, add: Mapping[str, np.ndarray]) -> None:
        m = next(iter(add.values())).shape[0]
        cap = next(iter(self.items.values())).shape[0]
        if self.off + self.n + m > cap:  # reallocate every key's buffer (one offset for all), dropping trimmed items
            new_cap = max(2 * (self.n + m), 8)
            for k, buf in self.items.items():
                nb = np.zeros((new_cap, *buf.shape[1:]), dtype=buf.dtype)
                nb[: self.n] = buf[self.off: self.off + self.n]
                self.items[k] = nb
            self.off = 0
        for k, a in add.items():
            self.items[k][self.off + self.n: self.off + self.n + m] = a
        self.n += m

    def trim(self, lo: int) -> None:
        """Drop items below count ``lo``."""
        d = min(max(0, lo - self.base), self.n)
        if d:
            self.base += d
            self.off += d
            self.n -= d

    @property
    def nbytes(self) -> int:
        return sum(self.n * int(np.prod(a.shape[1:], dtype=np.int64)) * a.itemsize for a in self.items.values())


class EpisodeMemoryStore:
    """Shard side: streams of items referenced by stored rows (module doc). Not thread-safe: the shard calls
    it under its lock."""

    def __init__(self, capacity: int, stored_dtype: str | None = None) -> None:
        self.capacity = int(capacity)
        self.stored_dtype = stored_dtype
        self.streams: dict[int, _Stream] = {}
        self.item_specs: dict[str, tuple[tuple[int, ...], np.dtype]] | None = None  # key -> (item shape, dtype)
        self._slot_stream = np.full(self.capacity, -1, dtype=np.int64)
        self.gaps = 0
        """Items that never arrived (lost sequences), replaced by zeros."""

    @property
    def active(self) -> bool:
        return self.item_specs is not None

    @property
    def nbytes(self) -> int:
        """Bytes of stored items (all streams)."""
        return sum(s.nbytes for s in self.streams.values())

    # ---- insert ----------------------------------------------------------------------------------------------
    @staticmethod
    def split(leaves: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
        """(leaves to store in the row, the new items ``{key: [B, N, *item]}`` or None when the insert carries no
        episode memory). Pure."""
        news = [n for n in leaves if n.startswith(PREFIX) and n.endswith(NEW)]
        if not news:
            return dict(leaves), None
        missing = [m for m in META if PREFIX + m not in leaves]
        if missing:
            raise ValueError(f"replay insert: episode memory leaves {news} come without {missing}")
        rows = {k: v for k, v in leaves.items() if k not in news and k != PREFIX + "memory.first"}
        delta = {n[len(PREFIX): -len(NEW)]: _np(leaves[n]) for n in news}
        delta["memory.first"] = _np(leaves[PREFIX + "memory.first"])
        return rows, delta

    def add(self, delta: Mapping[str, np.ndarray] | None, rows: Mapping[str, Any], keys: np.ndarray) -> None:
        """Record the rows just stored under ``keys`` [B] (their leaves ``rows`` as stored) and append their new
        items; then drop the rows they overwrote (and items no live row needs)."""
        if delta is None:
            if self.active:
                raise ValueError("replay insert: rows without episode memory in a shard that stores it")
            return
        items = {k: v for k, v in delta.items() if not k.startswith("memory.")}
        specs = {k: (tuple(v.shape[2:]), v.dtype) for k, v in items.items()}
        if self.item_specs is None:
            self.item_specs = specs
        elif specs != self.item_specs:
            raise ValueError(f"replay insert: episode memory items {specs} differ from the stored {self.item_specs}")
        stream = _np(rows[PREFIX + "memory.stream"])
        count = _np(rows[PREFIX + "memory.count"])
        ring = _np(rows[PREFIX + "memory.ring"])
        first = delta["memory.first"]
        keys = np.asarray(keys, dtype=np.int64)
        slots = keys % self.capacity
        old = zip(keys - self.capacity, self._slot_stream[slots])
        evicted = [(int(k), int(s)) for k, s in old if s >= 0 and k >= 0]
        sdt = None if self.stored_dtype is None else np.dtype(self.stored_dtype)
        for i in range(keys.shape[0]):
            sid = int(stream[i])
            st = self.streams.get(sid)
            if st is None:
                st = self.streams[sid] = _Stream(
                    base=int(first[i]),
                    items={k: np.zeros((0, *shape), dtype=sdt if sdt is not None and dt.kind == "f" else dt)
                           for k, (shape, dt) in specs.items()},
                )
            self.gaps += st.append({k: v[i] for k, v in items.items()}, int(first[i]), int(count[i]))
            st.live.append((int(keys[i]), int(count[i]) - int(ring[i])))
            self._slot_stream[slots[i]] = sid
        for key, sid in evicted:
            self._drop_row(sid, key)

    def _drop_row(self, sid: int, key: int) -> None:
        st = self.streams.get(sid)
        if st is None or not st.live or st.live[0][0] != key:
            raise AssertionError(f"episode memory: evicted row {key} is not the oldest live row of stream {sid}")
        st.live.popleft()
        if not st.live:
            del self.streams[sid]
        else:
            st.trim(min(lo for _, lo in st.live))

    # ---- sample ----------------------------------------------------------------------------------------------
    def assemble(self, leaves: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows as gathered from storage -> the same rows with ``core_state/<key>`` rings rebuilt (in the items'
        original dtype) and the ``memory.*`` leaves removed. Rows without episode memory pass through."""
        if self.item_specs is None or PREFIX + "memory.stream" not in leaves:
            return leaves
        out = {k: v for k, v in leaves.items() if not (k.startswith(PREFIX + "memory."))}
        stream = leaves[PREFIX + "memory.stream"]
        count = leaves[PREFIX + "memory.count"]
        ring = int(leaves[PREFIX + "memory.ring"][0]) if stream.shape[0] else 0
        n = stream.shape[0]
        rings = {k: np.zeros((n, ring, *shape), dtype=dt) for k, (shape, dt) in self.item_specs.items()}
        for i in range(n):
            st = self.streams.get(int(stream[i]))
            c = int(count[i])
            lo = max(c - ring, 0)
            if st is None:
                if c > 0:
                    raise KeyError(f"episode memory: stream {int(stream[i])} of a stored row is not held")
                continue
            lo = max(lo, st.base)
            hi = min(c, st.end)
            if hi <= lo:
                continue
            idx = np.arange(lo, hi)
            for k, r in rings.items():
                r[i, idx % ring] = st.items[k][st.off + lo - st.base: st.off + hi - st.base]
        for k, r in rings.items():
            out[PREFIX + k] = r
        return out

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def state_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able manifest entry, arrays) holding every stream's items; live rows are rebuilt from the stored
        rows on restore (:meth:`restore`)."""
        if self.item_specs is None:
            return {"active": False}, {}
        sids = sorted(self.streams)
        meta = {
            "active": True,
            "gaps": self.gaps,
            "items": {k: {"shape": list(s), "dtype": np.dtype(d).str} for k, (s, d) in self.item_specs.items()},
        }
        arrays = {
            "memory:stream": np.array(sids, dtype=np.int64),
            "memory:base": np.array([self.streams[s].base for s in sids], dtype=np.int64),
            "memory:n": np.array([self.streams[s].n for s in sids], dtype=np.int64),
        }
        for k in self.item_specs:
            parts = [self.streams[s].items[k][self.streams[s].off: self.streams[s].off + self.streams[s].n]
                     for s in sids]
            first = next(iter(self.streams.values())).items[k] if self.streams else None
            shape = (0, *self.item_specs[k][0]) if first is None else (0, *first.shape[1:])
            arrays[f"memory:items:{k}"] = np.ascontiguousarray(
                np.concatenate(parts) if parts else np.zeros(shape, dtype=first.dtype if first is not None else "f4"))
        return meta, arrays

    def restore(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                rows: Mapping[str, np.ndarray], keys: np.ndarray) -> None:
        """Rebuild from :meth:`state_arrays` output and the stored rows ``rows`` (leaves ``[n]``) of ``keys`` [n]
        (oldest first). Raises ValueError when a stored row's stream is missing."""
        self.streams.clear()
        self._slot_stream.fill(-1)
        self.item_specs = None
        self.gaps = 0
        if not meta.get("active"):
            return
        self.item_specs = {k: (tuple(int(x) for x in v["shape"]), np.dtype(v["dtype"]))
                           for k, v in meta["items"].items()}
        self.gaps = int(meta.get("gaps", 0))
        sids, base, ns = arrays["memory:stream"], arrays["memory:base"], arrays["memory:n"]
        at = 0
        for sid, b0, n in zip(sids.tolist(), base.tolist(), ns.tolist()):
            items = {k: np.array(arrays[f"memory:items:{k}"][at: at + n]) for k in self.item_specs}
            self.streams[sid] = _Stream(base=b0, items=items, n=n)
            at += n
        stream = rows[PREFIX + "memory.stream"]
        count = rows[PREFIX + "memory.count"]
        ring = rows[PREFIX + "memory.ring"]
        for key, sid, c, r in zip(np.asarray(keys).tolist(), stream.tolist(), count.tolist(), ring.tolist()):
            st = self.streams.get(int(sid))
            if st is None:
                raise ValueError(f"episode memory checkpoint: stream {sid} of stored row {key} is missing")
            st.live.append((int(key), int(c) - int(r)))
            self._slot_stream[int(key) % self.capacity] = int(sid)


_np = as_numpy
