"""ReplayShard: one prioritised, rate-limited, checkpointable store of fixed-length sequences (plain class).

Items are rows of a :class:`~distrl.types.Trajectory`; a shard stores them batch-major in preallocated arrays
(:mod:`distrl.replay.storage`), evicts first-in-first-out, samples by priority with a vectorised
:class:`~distrl.replay.sumtree.SumTree` and gates callers with a
:class:`~distrl.replay.ratelimit.RateLimiter`.
Ray wraps it from outside (:mod:`distrl.runtime.ray_replay`); the local runtime and tests use it directly.

**Priorities** (ALGORITHMS.md §4.1): the tree stores ``(|p| + epsilon) ** alpha * d``; ``p`` is the caller's
priority or, if none is given, the running max of all priorities seen (so new data is replayed soon); ``d`` is
an optional per-item sampling prior (1 by default), e.g. the duration prior of ALGORITHMS.md §3.5 item 3: the
shard reports ``d`` with every sample so the sampler can divide it out of the IS weight.

**Keys**: each inserted row gets an int64 key made of the shard's *incarnation* (the bits from
:data:`KEY_COUNTER_BITS` up) and its running insertion count ``c`` (the low bits; :func:`key_counter` and
:func:`key_incarnation` take a key apart). The slot is ``c % capacity`` and ``c // capacity`` is the slot's
generation, so this is the usual (generation, slot) key in one integer. A row is present iff
``inserted - size <= c < inserted`` and the key carries the current incarnation; priority updates for any
other key are ignored and counted: ``updates_ignored`` when the slot was evicted and refilled since the row was
sampled, ``updates_stale`` when the key belongs to another incarnation.

**Incarnations**: a new shard is incarnation 0, and every :meth:`ReplayShard.restore` makes a new one, above
both the checkpoint's and this object's (checkpoints store it). A restored shard hands out the insert counts
above its checkpoint's again, for new rows; without the incarnation in the key, a priority update still in
flight for a row of the dead shard (a learner sampled it before the death) would land on the new row that
reuses its count. With it, every update for a key of an earlier incarnation is dropped, also for the rows
that the checkpoint brought back (their updates in flight are few, and the row keeps its checkpointed
priority). The check is the range test above (the hot path gains one subtraction); only a batch with keys
outside the range is scanned a second time, to tell stale keys from evicted rows. ``updates_stale`` belongs to one
incarnation (a restore starts it at 0; the Ray runtime sums it over incarnations:
``replay/stale_priority_updates``). An incarnation number must never come back while keys of the old one may
be in flight: a shard that dies twice before it checkpoints is restored twice from the same checkpoint, so
the runtime passes ``restore(..., incarnation=last seen + 1)``.

**Fresh (online) rows**: every inserted row starts "unserved". ``sample(n, n_fresh, min_policy_version)``
first hands out up to ``n_fresh`` unserved rows, newest first, and marks them served, then draws ``n`` rows by
priority. Unserved rows whose ``policy_version < min_policy_version`` are marked served without being returned
and counted in ``fresh_dropped`` (the learner's ``max_policy_lag`` filter); rows evicted before they were ever
served are counted in ``fresh_evicted``. A fresh row is an ordinary stored item: it keeps its key (so the
learner may update its priority) and stays in the priority tree, so it can also be drawn by priority, in the
same call or later. In a sample, fresh rows come first, have ``fresh[i] = True`` and ``probs[i] = 0``: their
selection is not a draw from P, so they carry IS weight 1 (the sampler sets it).

**Rate limiting**: the shard never sleeps unless the caller passes ``timeout > 0`` (local multi-threaded use);
otherwise a refused call returns at once with a status (``Status.RATE_LIMITED`` or ``Status.BELOW_MIN_SIZE``)
and the caller decides whether to retry. See :mod:`distrl.replay.ratelimit` for the exact rule.

**Thread safety**: every public method holds one internal lock, so a local sampler thread and actor threads
may share a shard. Checkpointing holds the lock for the whole write.

Usage::

    shard = ReplayShard(cfg.replay, shard_id=0, seed=0)
    res = shard.insert(traj)                         # traj: Trajectory [T, B]; res.keys [B]
    s = shard.sample(32, n_fresh=16, min_policy_version=v - lag)
    if s.ok:
        traj_b = s.trajectory()                      # [T, len(s.keys)], time-major torch tensors
        shard.update_priorities(s.keys, new_p)       # new_p [len(s.keys)]
    shard.save("ckpt/replay_0"); shard2 = ReplayShard.load("ckpt/replay_0", cfg.replay)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distrl.config import ReplayConfig
from distrl.replay import checkpoint as ckpt
from distrl.replay.episode_memory import EpisodeMemoryStore
from distrl.replay.priorities import priority_mass
from distrl.replay.ratelimit import RateLimiter, Status
from distrl.replay.storage import Schema, SequenceStorage
from distrl.replay.sumtree import SumTree
from distrl.types import STACK_PREFIX, Trajectory, as_numpy

if TYPE_CHECKING:  # a shard never loads torch itself (its Ray process stays torch-free); callers may pass tensors
    import torch

CHECKPOINT_FORMAT = "distrl.replay_shard"
CHECKPOINT_VERSION = 1

KEY_COUNTER_BITS = 44
"""A key's low bits hold the insert count (room for 1.7e13 rows per shard); the bits above, the incarnation."""
_COUNTER_MASK = (1 << KEY_COUNTER_BITS) - 1
MAX_INCARNATION = (1 << (63 - KEY_COUNTER_BITS)) - 1
"""Restores one shard survives (2**19 - 1): keys stay non-negative int64."""
OBS_PREFIXES = ("obs/", STACK_PREFIX)
"""The leaves ``replay.compress_obs`` stores as zlib blobs: observations, and the older frames of frame stacks."""


def key_counter(keys: Any) -> np.ndarray:
    """The insert counts in replay keys (the row's position in its shard's insertion order), int64."""
    return np.asarray(keys, dtype=np.int64) & _COUNTER_MASK


def key_incarnation(keys: Any) -> np.ndarray:
    """The shard incarnations that issued replay keys (0 for a shard never restored), int64."""
    return np.asarray(keys, dtype=np.int64) >> KEY_COUNTER_BITS


@dataclass(frozen=True)
class ShardStats:
    """A snapshot of one shard. ``total_priority`` is S_j, the shard's summed sampling mass."""

    shard_id: int
    size: int
    capacity: int
    total_priority: float
    max_priority: float
    inserted: int
    sampled: int
    fresh_pending: int
    fresh_served: int
    fresh_dropped: int
    fresh_evicted: int
    updates_applied: int
    updates_ignored: int
    """Priority updates dropped because their row was evicted (and its slot maybe refilled) since it was sampled."""
    insert_status: Status
    sample_status: Status
    min_mass: float | None = None
    """Smallest leaf mass m_j (only filled by :meth:`ReplayShard.stats`; O(size))."""
    row_nbytes: int = 0
    """Bytes one stored sequence row takes (all leaves, stored dtypes); 0 before the first insert. The
    storage holds ``size * row_nbytes`` bytes of data (``capacity * row_nbytes`` when full)."""
    incarnation: int = 0
    """0 for a new shard, bumped by every restore; part of every key this shard issues."""
    updates_stale: int = 0
    """Priority updates dropped because their keys belong to another incarnation (sampled from the shard
    before it died and was restored); counted by this incarnation only."""

    @property
    def can_sample(self) -> bool:
        return self.sample_status.ok

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["insert_status"] = self.insert_status.value
        d["sample_status"] = self.sample_status.value
        return d


@dataclass(frozen=True)
class InsertResult:
    status: Status
    keys: np.ndarray  # [B] int64, empty when refused
    size: int

    @property
    def ok(self) -> bool:
        return self.status.ok


@dataclass(frozen=True)
class ShardSample:
    """Rows drawn from one shard. Row order: fresh rows first, then rows drawn by priority.

    ``leaves`` are batch-major numpy arrays ``[m, ...]`` in the *stored* dtypes (smaller over the wire);
    :meth:`trajectory` restores the caller dtypes and returns time-major torch tensors.
    """

    status: Status
    shard_id: int
    leaves: dict[str, np.ndarray]  # [m, ...] each; empty when refused
    keys: np.ndarray  # [m] int64
    probs: np.ndarray  # [m] float64: pi_{i|j} = mass_i / S_j for priority rows, 0 for fresh rows
    prior: np.ndarray  # [m] float64: the sampling prior d_i folded into mass_i (1 by default)
    fresh: np.ndarray  # [m] bool
    size: int  # N_j at sampling time
    total_priority: float  # S_j at sampling time (the denominator of probs)
    stats: ShardStats  # after this call
    out_dtypes: dict[str, str] = field(default_factory=dict)  # leaves stored in another dtype -> caller dtype
    message: str = ""  # why a call was refused

    @property
    def ok(self) -> bool:
        return self.status.ok

    @property
    def num_rows(self) -> int:
        return int(self.keys.shape[0])

    def torch_leaves(self) -> dict[str, torch.Tensor]:
        """Batch-major torch tensors in caller dtypes (zero-copy for writable arrays in the right dtype)."""
        import torch

        out = {}
        for k, v in self.leaves.items():
            if k in self.out_dtypes:
                v = v.astype(np.dtype(self.out_dtypes[k]))
            elif not v.flags.writeable:  # e.g. a Ray object-store view: torch must not alias read-only memory
                v = v.copy()
            out[k] = torch.from_numpy(v)
        return out

    def trajectory(self) -> Trajectory:
        """The rows as a time-major Trajectory ``[T, m]``."""
        return Trajectory.from_batch_major(self.torch_leaves())

    @property
    def traj(self) -> Trajectory:
        return self.trajectory()


class ReplayShard:
    """Prioritised FIFO replay of fixed-length sequences. See the module docstring for semantics."""

    def __init__(
        self,
        cfg: ReplayConfig,
        shard_id: int = 0,
        *,
        seed: int | None = None,
        core_state_dtype: str | None = None,
        incarnation: int = 0,
    ) -> None:
        """``incarnation``: a new, empty shard standing in for one that died without a checkpoint passes one
        above the dead one's, so keys of the dead shard's rows do not match its new rows (module docstring)."""
        if cfg.capacity < 1:
            raise ValueError(f"ReplayShard: replay.capacity must be >= 1, got {cfg.capacity}")
        if cfg.alpha < 0:
            raise ValueError(f"ReplayShard: replay.alpha must be >= 0, got {cfg.alpha}")
        if cfg.epsilon < 0:
            raise ValueError(f"ReplayShard: replay.epsilon must be >= 0, got {cfg.epsilon}")
        self.cfg = cfg
        self.shard_id = int(shard_id)
        self.capacity = int(cfg.capacity)
        self._core_state_dtype = core_state_dtype
        self._compress_obs = bool(cfg.compress_obs)
        self._seed = seed
        self._cond = threading.Condition()
        self._reset_state(schema=None)
        if not 0 <= incarnation <= MAX_INCARNATION:
            raise ValueError(f"ReplayShard: incarnation must be in [0, {MAX_INCARNATION}], got {incarnation}")
        self._incarnation = int(incarnation)
        self._key_base = self._incarnation << KEY_COUNTER_BITS

    def _reset_state(self, schema: Schema | None) -> None:
        cap = self.capacity
        self._rng = np.random.default_rng(self._seed if self._seed is None else [self._seed, self.shard_id])
        self._schema: Schema | None = schema
        self._storage: SequenceStorage | None = SequenceStorage(cap, schema) if schema is not None else None
        self._tree = SumTree(cap)
        self._priority = np.zeros(cap, dtype=np.float64)  # raw |p| (before epsilon and alpha)
        self._prior = np.ones(cap, dtype=np.float64)
        self._served = np.ones(cap, dtype=bool)  # fresh bookkeeping: True = served, dropped or empty slot
        self._inserted = 0  # total rows ever inserted = the next key's insert count
        self._incarnation = 0
        self._key_base = 0  # incarnation << KEY_COUNTER_BITS: key = _key_base + insert count
        self._updates_stale = 0
        self._size = 0
        self._max_priority = 1.0
        self._limiter = RateLimiter(
            self.cfg.min_size, self.cfg.samples_per_insert, self.cfg.samples_per_insert_tolerance
        )
        self._fresh_low = 0  # every key below this is known to be served or evicted
        self._fresh_pending = 0
        self._fresh_served = 0
        self._fresh_dropped = 0
        self._fresh_evicted = 0
        self._updates_applied = 0
        self._updates_ignored = 0
        self._sampled = 0
        self.episode_memory = EpisodeMemoryStore(cap, self._core_state_dtype)
        """Append-only core memory (HCAM chunks) stored once per stream, referenced by rows."""

    # ---- introspection -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    @property
    def schema(self) -> Schema | None:
        return self._schema

    def _stats_locked(self, with_min: bool = False) -> ShardStats:
        min_mass = None
        if with_min and self._size:
            min_mass = float(self._tree.values()[: self._size].min())
        return ShardStats(
            shard_id=self.shard_id,
            size=self._size,
            capacity=self.capacity,
            total_priority=self._tree.total,
            max_priority=self._max_priority,
            inserted=self._inserted,
            sampled=self._sampled,
            fresh_pending=self._fresh_pending,
            fresh_served=self._fresh_served,
            fresh_dropped=self._fresh_dropped,
            fresh_evicted=self._fresh_evicted,
            updates_applied=self._updates_applied,
            updates_ignored=self._updates_ignored,
            insert_status=self._limiter.insert_status(),
            sample_status=self._limiter.sample_status(self._size),
            min_mass=min_mass,
            row_nbytes=0 if self._schema is None else self._row_nbytes(),
            incarnation=self._incarnation,
            updates_stale=self._updates_stale,
        )

    def _row_nbytes(self) -> int:
        """Stored bytes per row: the plain leaves' item bytes plus the compressed rows' mean size."""
        assert self._schema is not None and self._storage is not None
        compressed = self._storage.blob_nbytes / self._size if self._size else 0.0
        return int(self._schema.plain_item_nbytes + round(compressed))

    def stats(self) -> ShardStats:
        """Full snapshot, including the smallest leaf mass (O(size))."""
        with self._cond:
            return self._stats_locked(with_min=True)

    @property
    def incarnation(self) -> int:
        """0 for a new shard; each :meth:`restore` makes a new, higher one (see the module docstring)."""
        return self._incarnation

    def keys(self) -> np.ndarray:
        """Keys of all stored rows, oldest first ``[size]`` (for inspection and tests; O(size))."""
        with self._cond:
            base = self._key_base
            return np.arange(base + self._inserted - self._size, base + self._inserted, dtype=np.int64)

    def read(self, keys: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Stored rows for ``keys`` [n] (batch-major, stored dtypes) and their raw priorities [n].

        For inspection and tests; does not count as sampling. Raises KeyError for a key not stored.
        """
        keys = np.asarray(keys, dtype=np.int64).reshape(-1)
        with self._cond:
            base = self._key_base
            live = (keys >= base + self._inserted - self._size) & (keys < base + self._inserted)
            if not live.all():
                raise KeyError(f"replay shard {self.shard_id}: keys not stored: {keys[~live][:5].tolist()}")
            if self._storage is None:
                return {}, np.zeros(0)
            slots = (keys - base) % self.capacity
            return self.episode_memory.assemble(self._storage.gather(slots)), self._priority[slots].copy()

    # ---- insert --------------------------------------------------------------------------------------------
    def insert(
        self,
        traj: Trajectory,
        priorities: np.ndarray | torch.Tensor | None = None,
        *,
        prior: np.ndarray | torch.Tensor | None = None,
        timeout: float = 0.0,
        frame_stacks: Collection[str] = (),
    ) -> InsertResult:
        """Store the B rows of ``traj`` ([T, B]); returns their keys. See :meth:`insert_leaves`;
        ``frame_stacks`` (``EnvSpec.frame_stacks``) are stored as newest frames (``Trajectory.batch_major``)."""
        return self.insert_leaves(traj.batch_major(frame_stacks), priorities, prior=prior, timeout=timeout)

    def insert_leaves(
        self,
        leaves: Mapping[str, Any],
        priorities: np.ndarray | torch.Tensor | None = None,
        *,
        prior: np.ndarray | torch.Tensor | None = None,
        timeout: float = 0.0,
    ) -> InsertResult:
        """Store B rows given as batch-major leaves (``Trajectory.batch_major()``, torch or numpy).

        priorities: [B] raw priorities (None = the running max); prior: [B] sampling prior d > 0 (None = 1).
        The first insert fixes the schema; a later batch whose leaf names, per-row shapes or dtypes differ
        raises ValueError naming the leaf. Returns status OK and the keys, or RATE_LIMITED (nothing stored)
        when the samples-per-insert ratio holds inserts back for longer than ``timeout`` seconds.
        """
        leaves, memory_items = EpisodeMemoryStore.split(leaves)  # episode memory goes to its own store
        with self._cond:
            if self._schema is None:
                compress = [n for n in leaves if n.startswith(OBS_PREFIXES)] if self._compress_obs else []
                schema = Schema.from_leaves(leaves, self._core_state_dtype, compress)
                if "policy_version" not in schema.names:
                    raise ValueError("replay insert: leaves must include 'policy_version' (a Trajectory field)")
                arrays, b = schema.check_and_convert(leaves)
            else:
                schema = self._schema
                arrays, b = schema.check_and_convert(leaves)
            if b > self.capacity:
                raise ValueError(f"replay insert: batch of {b} rows exceeds the shard capacity {self.capacity}")
            mass = self._insert_mass(b, priorities, prior)
            if not self._wait(lambda: self._limiter.can_insert(), timeout):
                return InsertResult(Status.RATE_LIMITED, np.zeros(0, dtype=np.int64), self._size)
            if self._schema is None:
                self._schema = schema
                self._storage = SequenceStorage(self.capacity, schema)
            elif schema is not self._schema:  # another thread fixed the schema while we waited
                arrays, b = self._schema.check_and_convert(leaves)
            assert self._storage is not None
            if b == 0:
                return InsertResult(Status.OK, np.zeros(0, dtype=np.int64), self._size)
            if self._inserted + b > _COUNTER_MASK:
                raise OverflowError(f"replay shard {self.shard_id}: more than 2**{KEY_COUNTER_BITS} rows inserted")
            start = self._inserted % self.capacity
            counts = np.arange(self._inserted, self._inserted + b, dtype=np.int64)
            slots = counts % self.capacity
            # Rows about to be overwritten: count those never served as fresh (the learner missed them).
            n_evict = max(0, self._size + b - self.capacity)
            if n_evict:
                evicted = np.arange(self._inserted - self._size, self._inserted - self._size + n_evict) % self.capacity
                missed = int(np.count_nonzero(~self._served[evicted]))
                self._fresh_evicted += missed
                self._fresh_pending -= missed
            self._storage.write(start, arrays)
            self.episode_memory.add(memory_items, arrays, counts)
            p_raw, d, m = mass
            self._priority[slots] = p_raw
            self._prior[slots] = d
            self._served[slots] = False
            self._tree.update(slots, m)
            self._inserted += b
            self._size = min(self._size + b, self.capacity)
            self._fresh_pending += b
            self._limiter.on_insert(b)
            self._cond.notify_all()
            return InsertResult(Status.OK, counts + self._key_base if self._key_base else counts, self._size)

    def _insert_mass(self, b: int, priorities: Any, prior: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if priorities is None:
            p_raw = np.full(b, self._max_priority, dtype=np.float64)
        else:
            p_raw = np.abs(_as_f64("priorities", priorities, b))
            if not np.all(np.isfinite(p_raw)):
                raise ValueError("replay insert: priorities must be finite (got NaN or inf)")
            if b:
                self._max_priority = max(self._max_priority, float(p_raw.max()))
        if prior is None:
            d = np.ones(b, dtype=np.float64)
        else:
            d = _as_f64("prior", prior, b)
            if not np.all(np.isfinite(d)) or (b and d.min() <= 0):
                raise ValueError("replay insert: prior values must be finite and > 0")
        return p_raw, d, priority_mass(p_raw, self.cfg.alpha, self.cfg.epsilon) * d

    # ---- sample --------------------------------------------------------------------------------------------
    def sample(
        self,
        n: int,
        n_fresh: int = 0,
        min_policy_version: int | None = None,
        *,
        timeout: float = 0.0,
    ) -> ShardSample:
        """Up to ``n_fresh`` fresh rows (newest unserved first), then exactly ``n`` rows drawn by priority.

        Rows drawn by priority use stratified sampling over [0, S_j) (with replacement across the batch).
        Returns a ShardSample with status OK, or BELOW_MIN_SIZE / RATE_LIMITED (no rows) when the rate
        limiter refuses for longer than ``timeout`` seconds. Stats are filled in either case.
        """
        if n < 0 or n_fresh < 0:
            raise ValueError(f"ReplayShard.sample: n ({n}) and n_fresh ({n_fresh}) must be >= 0")
        with self._cond:
            self._wait(lambda: self._limiter.can_sample(self._size), timeout)
            status = self._limiter.sample_status(self._size)
            size, total = self._size, self._tree.total
            if not status.ok:
                return self._refused(status, size, total)
            assert self._storage is not None and self._schema is not None
            fresh_slots = self._take_fresh(n_fresh, min_policy_version) if n_fresh else _EMPTY_I64
            prio_slots = self._tree.sample_stratified(n, self._rng) if n else _EMPTY_I64
            slots = np.concatenate([fresh_slots, prio_slots]) if n_fresh else prio_slots
            leaves = self.episode_memory.assemble(self._storage.gather(slots))
            keys = self._key_of_slot(slots)
            mass = self._tree.get(prio_slots)
            probs = np.concatenate([np.zeros(fresh_slots.shape[0]), mass / total])
            fresh = np.zeros(slots.shape[0], dtype=bool)
            fresh[: fresh_slots.shape[0]] = True
            m = int(slots.shape[0])
            self._limiter.on_sample(m)
            self._sampled += m
            self._cond.notify_all()
            return ShardSample(
                status=Status.OK,
                shard_id=self.shard_id,
                leaves=leaves,
                keys=keys,
                probs=probs,
                prior=self._prior[slots],
                fresh=fresh,
                size=size,
                total_priority=total,
                stats=self._stats_locked(),
                out_dtypes=self._out_dtypes(),
            )

    def _refused(self, status: Status, size: int, total: float) -> ShardSample:
        e_i, e_f = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        return ShardSample(
            status=status,
            shard_id=self.shard_id,
            leaves={},
            keys=e_i,
            probs=e_f,
            prior=e_f,
            fresh=np.zeros(0, dtype=bool),
            size=size,
            total_priority=total,
            stats=self._stats_locked(),
            message=f"shard {self.shard_id}: size {size}; {self._limiter.describe()}",
        )

    def _out_dtypes(self) -> dict[str, str]:
        assert self._schema is not None
        return {s.name: s.dtype for s in self._schema.leaves if s.dtype != s.stored_dtype}

    def _key_of_slot(self, slots: np.ndarray) -> np.ndarray:
        # The newest key stored in a slot: slots below the write position belong to the current generation.
        write = self._inserted % self.capacity
        gen_base = self._key_base + self._inserted - write  # first key of the current generation
        return np.where(slots < write, gen_base + slots, gen_base - self.capacity + slots).astype(np.int64)

    def _take_fresh(self, n_fresh: int, min_policy_version: int | None) -> np.ndarray:
        lo = max(self._fresh_low, self._inserted - self._size)
        if lo >= self._inserted:
            return _EMPTY_I64
        keys = np.arange(self._inserted - 1, lo - 1, -1, dtype=np.int64)  # newest first
        slots = keys % self.capacity
        unserved = ~self._served[slots]
        if min_policy_version is not None:
            assert self._storage is not None
            version = self._storage.arrays["policy_version"][slots]
            stale = unserved & (version < min_policy_version)
            n_stale = int(np.count_nonzero(stale))
            if n_stale:
                self._served[slots[stale]] = True
                self._fresh_dropped += n_stale
                self._fresh_pending -= n_stale
                unserved &= ~stale
        chosen = slots[unserved][:n_fresh]
        self._served[chosen] = True
        self._fresh_served += int(chosen.shape[0])
        self._fresh_pending -= int(chosen.shape[0])
        # Advance the low-water mark past the oldest still-unserved key so later scans stay short.
        still = np.flatnonzero(~self._served[slots])
        self._fresh_low = int(keys[still[-1]]) if still.size else self._inserted
        return chosen

    # ---- priorities ----------------------------------------------------------------------------------------
    def update_priorities(self, keys: np.ndarray | torch.Tensor, priorities: np.ndarray | torch.Tensor) -> int:
        """Set new raw priorities for ``keys`` [n]; returns how many were applied.

        Keys of rows no longer stored (evicted, or evicted and the slot refilled) are ignored
        (``updates_ignored``), and so are keys issued by another incarnation of this shard (``updates_stale``:
        sampled before it died and was restored, see the module docstring). With repeated keys the last
        priority wins.
        """
        keys_np = np.asarray(
            as_numpy(keys), dtype=np.int64
        ).reshape(-1)
        p = np.abs(_as_f64("priorities", priorities, keys_np.shape[0]))
        if p.size and not np.isfinite(p.max()):  # max propagates NaN and inf: one reduction checks both
            raise ValueError("update_priorities: priorities must be finite (got NaN or inf)")
        with self._cond:
            base = self._key_base  # another incarnation's keys fall outside this range (their high bits differ)
            live = (keys_np >= base + self._inserted - self._size) & (keys_np < base + self._inserted)
            n_live = int(np.count_nonzero(live))
            if n_live < keys_np.shape[0]:  # off the hot path: tell stale keys from evicted rows
                other = (keys_np >> KEY_COUNTER_BITS) != self._incarnation
                n_stale = int(np.count_nonzero(other & (keys_np >= 0)))
                self._updates_stale += n_stale
                self._updates_ignored += int(keys_np.shape[0]) - n_live - n_stale
                keys_np, p = keys_np[live], p[live]
            if n_live == 0:
                return 0
            slots = (keys_np - base) % self.capacity
            self._priority[slots] = p
            mass = np.power(p + self.cfg.epsilon, self.cfg.alpha)
            mass *= self._prior[slots]
            self._tree.set_unchecked(slots, mass)
            self._max_priority = max(self._max_priority, float(p.max()))
            self._updates_applied += n_live
            return n_live

    # ---- blocking helper -----------------------------------------------------------------------------------
    def _wait(self, ready: Any, timeout: float) -> bool:
        """Wait on the condition (lock held) until ready() or ``timeout`` s pass; never without a bound."""
        if ready():
            return True
        if timeout <= 0:
            return False
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return bool(ready())
            self._cond.wait(left)
            if ready():
                return True

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def save(self, path: str | Path, *, fsync: bool = True) -> Path:
        """Atomically write the shard to directory ``path`` (see :mod:`distrl.replay.checkpoint`)."""
        with self._cond:
            n = self._size
            arrays: dict[str, np.ndarray] = {}
            if self._storage is not None:
                for name, arr in self._storage.arrays.items():
                    arrays[f"leaf:{name}"] = arr[:n]
                for name in self._storage.blobs:  # compressed: the blobs back to back, and where each starts
                    arrays[f"leaf:{name}"], arrays[f"offsets:{name}"] = self._storage.export_blobs(name, n)
            arrays["meta:priority"] = self._priority[:n]
            arrays["meta:prior"] = self._prior[:n]
            arrays["meta:served"] = self._served[:n]
            manifest = {
                "format": CHECKPOINT_FORMAT,
                "schema_version": CHECKPOINT_VERSION,
                "shard_id": self.shard_id,
                "incarnation": self._incarnation,
                "capacity": self.capacity,
                "schema": self._schema.to_json() if self._schema is not None else None,
                "counters": {
                    "inserted": self._inserted,
                    "size": self._size,
                    "sampled": self._sampled,
                    "max_priority": self._max_priority,
                    "limiter_inserted": self._limiter.inserted,
                    "limiter_sampled": self._limiter.sampled,
                    "fresh_low": self._fresh_low,
                    "fresh_pending": self._fresh_pending,
                    "fresh_served": self._fresh_served,
                    "fresh_dropped": self._fresh_dropped,
                    "fresh_evicted": self._fresh_evicted,
                    "updates_applied": self._updates_applied,
                    "updates_ignored": self._updates_ignored,
                },
                "rng": self._rng.bit_generator.state,
            }
            manifest["episode_memory"], memory_arrays = self.episode_memory.state_arrays()
            arrays.update(memory_arrays)
            return ckpt.save_arrays(path, manifest, arrays, fsync=fsync)

    def restore(self, path: str | Path, *, schema: Schema | None = None, incarnation: int = 0) -> ShardStats:
        """Replace this shard's contents with the checkpoint at ``path``; all or nothing.

        The shard becomes a new incarnation: the highest of ``incarnation``, the checkpoint's + 1 and this
        object's + 1 (see the module docstring), so keys handed out before (by this object or by the shard
        that wrote the checkpoint) are stale here; ``updates_stale`` starts at 0. Pass ``incarnation`` = 1 +
        the last incarnation any live process may hold keys of, when that can be above the checkpoint's (a
        shard restored from the same checkpoint twice).

        Refuses (CheckpointError naming the file) a missing, truncated or corrupt checkpoint, one written for
        another capacity, or one whose leaf schema differs from ``schema`` (or from this shard's schema if it
        already holds data). On error the shard is unchanged.
        """
        path = Path(path)
        m = ckpt.read_manifest(path, expected_format=CHECKPOINT_FORMAT, expected_version=CHECKPOINT_VERSION)
        mpath = path / ckpt.MANIFEST
        try:
            cap = int(m["capacity"])
            counters = {k: float(m["counters"][k]) if k == "max_priority" else _exact_int(m["counters"][k])
                        for k in _COUNTERS}
            saved_schema = Schema.from_json(m["schema"]) if m["schema"] is not None else None
            files = m["files"]
            saved_incarnation = _exact_int(m.get("incarnation", 0))  # absent in checkpoints written before it
        except (KeyError, TypeError, ValueError) as e:
            raise ckpt.CheckpointError(f"{mpath}: malformed manifest ({e!r})") from e
        if cap != self.capacity:
            raise ckpt.CheckpointError(
                f"{mpath}: checkpoint capacity {cap} differs from replay.capacity {self.capacity}"
            )
        for want, what in ((schema, "the expected schema"), (self._schema, "this shard's schema")):
            if want is not None and saved_schema is not None and want != saved_schema:
                raise ckpt.CheckpointError(
                    f"{mpath}: leaf schema differs from {what}: {_schema_diff(want, saved_schema)}"
                )
        n = int(counters["size"])
        if not 0 <= n <= cap or not n <= int(counters["inserted"]) <= _COUNTER_MASK:
            raise ckpt.CheckpointError(f"{mpath}: inconsistent counters size={n} inserted={counters['inserted']}")
        if not 0 <= saved_incarnation < MAX_INCARNATION:
            raise ckpt.CheckpointError(f"{mpath}: incarnation {saved_incarnation} out of range")
        new_incarnation = max(int(incarnation), saved_incarnation + 1, self._incarnation + 1)
        if new_incarnation > MAX_INCARNATION:
            raise ValueError(f"replay shard {self.shard_id}: incarnation {new_incarnation} > {MAX_INCARNATION}")
        names = ["meta:priority", "meta:prior", "meta:served"]
        if saved_schema is not None:
            names += [f"leaf:{s.name}" for s in saved_schema.leaves]
            names += [f"offsets:{s.name}" for s in saved_schema.leaves if s.codec]
        missing = [k for k in names if k not in files]
        if missing:
            raise ckpt.CheckpointError(f"{mpath}: the files table lacks {missing}")
        for k in names:  # cheap size checks first: refuse a truncated checkpoint before allocating anything
            ckpt.check_file(path, files[k])
        # Build the new state completely on the side, then swap it in under the lock.
        storage = SequenceStorage(cap, saved_schema) if saved_schema is not None else None
        priority = np.zeros(cap, dtype=np.float64)
        prior = np.ones(cap, dtype=np.float64)
        served = np.ones(cap, dtype=bool)
        ckpt.load_array_into(path, files["meta:priority"], priority[:n])
        ckpt.load_array_into(path, files["meta:prior"], prior[:n])
        ckpt.load_array_into(path, files["meta:served"], served[:n])
        if storage is not None:
            for name, arr in storage.arrays.items():
                ckpt.load_array_into(path, files[f"leaf:{name}"], arr[:n])
            for name in storage.blobs:
                entries = files[f"leaf:{name}"], files[f"offsets:{name}"]
                try:
                    data, offsets = (np.empty(tuple(e["shape"]), dtype=np.dtype(e["dtype"])) for e in entries)
                except (KeyError, TypeError, ValueError) as e:
                    raise ckpt.CheckpointError(f"{mpath}: malformed entry for compressed leaf {name!r} ({e!r})") from e
                ckpt.load_array_into(path, entries[0], data)
                ckpt.load_array_into(path, entries[1], offsets)
                if data.dtype != np.uint8 or offsets.dtype != np.int64 or offsets.shape != (n + 1,):
                    raise ckpt.CheckpointError(f"{mpath}: compressed leaf {name!r} has {data.dtype} blobs and "
                                               f"{offsets.dtype} offsets {offsets.shape}, not uint8 and int64 "
                                               f"({n + 1},)")
                try:
                    storage.import_blobs(name, data, offsets)
                except ValueError as e:
                    raise ckpt.CheckpointError(f"{path / entries[0]['file']}: {e}") from e
        memory = EpisodeMemoryStore(cap, self._core_state_dtype)
        mem_meta = m.get("episode_memory") or {"active": False}
        if mem_meta.get("active") and storage is not None:
            try:
                mem_arrays = {}
                for k, entry in files.items():
                    if k.startswith("memory:"):
                        mem_arrays[k] = np.empty(tuple(entry["shape"]), dtype=np.dtype(entry["dtype"]))
                        ckpt.load_array_into(path, entry, mem_arrays[k])
                keys = np.arange(int(counters["inserted"]) - n, int(counters["inserted"]), dtype=np.int64)
                rows = {k: a[keys % cap] for k, a in storage.arrays.items() if k.startswith("core_state/memory.")}
                memory.restore(mem_meta, mem_arrays, rows, keys)
            except (KeyError, TypeError, ValueError) as e:
                raise ckpt.CheckpointError(f"{mpath}: episode memory does not match the stored rows ({e})") from e
        if not (np.all(np.isfinite(priority[:n])) and np.all(prior[:n] > 0)):
            raise ckpt.CheckpointError(f"{mpath}: stored priorities are not finite/positive")
        tree = SumTree(cap)
        tree.set_all(priority_mass(priority, self.cfg.alpha, self.cfg.epsilon) * prior * (np.arange(cap) < n))
        with self._cond:
            self._schema = saved_schema
            self.episode_memory = memory
            self._storage = storage
            self._tree = tree
            self._priority, self._prior, self._served = priority, prior, served
            self._inserted = int(counters["inserted"])
            self._size = n
            self._sampled = int(counters["sampled"])
            self._max_priority = float(counters["max_priority"])
            self._limiter = RateLimiter(
                self.cfg.min_size,
                self.cfg.samples_per_insert,
                self.cfg.samples_per_insert_tolerance,
                inserted=int(counters["limiter_inserted"]),
                sampled=int(counters["limiter_sampled"]),
            )
            for k in _PLAIN_COUNTERS:
                setattr(self, f"_{k}", int(counters[k]))
            self._incarnation = new_incarnation
            self._key_base = new_incarnation << KEY_COUNTER_BITS
            self._updates_stale = 0
            try:
                self._rng.bit_generator.state = m["rng"]
            except (KeyError, TypeError, ValueError):
                pass  # a different bit generator: keep this shard's own stream
            self._cond.notify_all()
            return self._stats_locked(with_min=True)

    @classmethod
    def load(
        cls,
        path: str | Path,
        cfg: ReplayConfig,
        *,
        schema: Schema | None = None,
        seed: int | None = None,
        core_state_dtype: str | None = None,
    ) -> ReplayShard:
        """A new shard holding the checkpoint at ``path`` (its shard id comes from the checkpoint), a new
        incarnation (:meth:`restore`)."""
        m = ckpt.read_manifest(Path(path), expected_format=CHECKPOINT_FORMAT, expected_version=CHECKPOINT_VERSION)
        shard = cls(cfg, int(m.get("shard_id", 0)), seed=seed, core_state_dtype=core_state_dtype)
        shard.restore(path, schema=schema)
        return shard


_EMPTY_I64 = np.zeros(0, dtype=np.int64)
# Counters restored as plain ints into ``self._<name>``; _COUNTERS is everything a checkpoint stores.
_PLAIN_COUNTERS = (
    "fresh_low",
    "fresh_pending",
    "fresh_served",
    "fresh_dropped",
    "fresh_evicted",
    "updates_applied",
    "updates_ignored",
)
_COUNTERS = ("inserted", "size", "sampled", "max_priority", "limiter_inserted", "limiter_sampled", *_PLAIN_COUNTERS)


def _exact_int(x: Any) -> int:
    """A checkpoint counter: an integer (not a bool, string or float), else ValueError."""
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"counter {x!r} is not an integer")
    return x


def _as_f64(name: str, x: Any, n: int) -> np.ndarray:
    arr = np.asarray(as_numpy(x), dtype=np.float64).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"replay {name}: expected {n} values (one per row), got {arr.shape[0]}")
    return arr


def _schema_diff(a: Schema, b: Schema) -> str:
    da, db = {s.name: s for s in a.leaves}, {s.name: s for s in b.leaves}
    parts = []
    for k in sorted(set(da) | set(db)):
        if da.get(k) != db.get(k):
            parts.append(f"{k}: {da.get(k)} vs {db.get(k)}")
    return "; ".join(parts[:5]) or "(identical)"
