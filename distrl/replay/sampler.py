"""ReplaySampler: one learner batch from J shards with exact global prioritisation (ALGORITHMS.md §4.6).

Per batch of B rows (``n_fresh`` of them fresh when available):

1. **Fresh rows**: ``n_fresh`` is split across shards in proportion to their cached count of unserved rows
   (capped by it); each shard returns its newest unserved rows, dropping those older than
   ``min_policy_version`` (see :class:`~distrl.replay.shard.ReplayShard`). They get IS weight 1 and
   ``probs`` 0.
2. **Prioritised rows**: the rest, ``B_p``, is allocated as ``b ~ Multinomial(B_p, S_j / S)`` from the cached
   shard masses ``S_j`` (refreshed from every response); shard j draws ``b_j`` rows from ``p_i^alpha / S_j``.
   The true probability of row i is ``P(i) = q_j * pi_{i|j}`` with ``q_j = S_j / S`` of the snapshot used for
   the allocation; with an up-to-date cache this is exactly ``p_i^alpha / S``. If the shards return fewer
   fresh rows than planned, the shortfall is drawn by priority in a second round with the same ``q``, so
   every prioritised row has the same marginal and the batch always has exactly B rows.
3. **IS weights**: ``w_i = (N * P(i) / d_i) ** -beta`` normalised by the max over the batch's prioritised rows
   (``N`` = rows in the shards sampled from, ``d_i`` the optional sampling prior divided out, §3.5 item 3).
   They are computed when the learner takes the batch, with that moment's beta.

A shard that is below ``min_size`` (or has no mass) is left out of the allocation: the distribution is then
over the sampleable shards and ``N`` counts only them. A shard that answers "rate limited" is retried with
back-off (same counts, so the allocation is unchanged) until it accepts.

**Prefetch and waiting.** With ``prefetch > 0`` a daemon thread builds batches ahead (numpy copies release the
GIL) and also sends the priority updates the learner queued with :meth:`update_priorities` (which only
enqueues, so it never blocks the learner). :meth:`next_batch` waits at most ``timeout`` seconds and then
raises :class:`~distrl.replay.client.ReplayNotReady` with each shard's state; it never hangs. With
``prefetch=0`` the batch is built in the caller's thread (deterministic; for tests and the single-process
runtime). A shard call that raises marks that shard down: the next :meth:`next_batch` raises
:class:`~distrl.replay.client.ReplayShardError` once, later batches use the other shards, updates for the
down shard are dropped, and :meth:`replace_client` (after the runtime restarted the shard from its checkpoint)
brings it back. :meth:`close` stops the thread.

``ReplaySample.shard_ids`` are indices into the sampler's client list. With prefetch, a batch is built up to
``prefetch + 1`` batches before the learner takes it: the ``min_policy_version`` filter for fresh rows applies
when the batch is built, beta when it is taken. Batches still queued at :meth:`close` are discarded (their fresh
rows count as served).

Usage::

    sampler = ReplaySampler([LocalShardClient(s) for s in shards], cfg.replay, batch_size=32, n_fresh=16)
    batch = sampler.next_batch(timeout=30.0)              # ReplaySample, traj [T, 32]
    sampler.update_priorities(batch.keys, batch.shard_ids, new_priorities)
    sampler.set_min_policy_version(learner_version - cfg.learner.max_policy_lag)
    sampler.close()
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from distrl.config import ReplayConfig
from distrl.replay.client import Pending, ReplayNotReady, ReplayShardError, ShardClient
from distrl.replay.priorities import beta_at, importance_weights
from distrl.replay.shard import ShardSample, ShardStats
from distrl.types import ReplaySample, Trajectory
from distrl.types import as_numpy as _np


@dataclass
class _Part:
    """One sample request to one shard."""

    shard: int
    n: int
    n_fresh: int
    pending: Pending[ShardSample] | None = None
    result: ShardSample | None = None
    retry_at: float = 0.0
    delay: float = 0.002
    topup: bool = False  # drawn by priority to replace fresh rows the shards did not have


@dataclass
class _Built:
    """An assembled batch waiting for the learner; weights are computed at hand-out time (current beta)."""

    leaves: dict[str, np.ndarray]  # batch-major, writable, caller dtypes
    keys: np.ndarray  # [B] int64
    shard_ids: np.ndarray  # [B] int64
    probs: np.ndarray  # [B] float64, P(i); 0 for fresh rows
    prior: np.ndarray  # [B] float64
    fresh: np.ndarray  # [B] bool
    size: int  # N


class _ShardDown(Exception):
    def __init__(self, shard: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.shard, self.cause = shard, cause


class ReplaySampler:
    """Draws learner batches across shards; routes priority updates back. See the module docstring."""

    def __init__(
        self,
        clients: Sequence[ShardClient],
        cfg: ReplayConfig,
        batch_size: int,
        *,
        n_fresh: int = 0,
        prefetch: int = 2,
        seed: int | None = None,
    ) -> None:
        if not clients:
            raise ValueError("ReplaySampler: needs at least one shard client")
        if batch_size < 1 or not 0 <= n_fresh <= batch_size:
            raise ValueError(
                f"ReplaySampler: need batch_size >= 1 and 0 <= n_fresh <= batch_size, got {batch_size}, {n_fresh}"
            )
        self.cfg = cfg
        self.batch_size = int(batch_size)
        self.n_fresh = int(n_fresh)
        self._clients: list[ShardClient] = list(clients)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()  # guards clients, cache, down, errors
        self._cache: list[ShardStats | None] = [None] * len(self._clients)
        self._stats_pending: list[Pending[ShardStats] | None] = [None] * len(self._clients)
        self._stats_at = [0.0] * len(self._clients)  # last stats poll sent
        self._heard_at = [0.0] * len(self._clients)  # last stats received (poll or sample response)
        self._down: dict[int, BaseException] = {}
        self._errors: deque[ReplayShardError] = deque()
        self._min_policy_version: int | None = None
        self._updates: queue.SimpleQueue[tuple[np.ndarray, np.ndarray, np.ndarray]] = queue.SimpleQueue()
        self._unsent = 0  # update batches queued but not yet handed to their shard clients (under _lock)
        self._update_pending: deque[tuple[int, Pending[int]]] = deque()
        self._parts: list[_Part] | None = None  # the batch being built
        self._plan_q: np.ndarray | None = None
        self._plan_n = 0
        self.batches = 0
        self.updates_sent = 0
        self.updates_dropped = 0
        self.retries = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready: queue.Queue[_Built] | None = None
        self._crash: BaseException | None = None
        if prefetch > 0:
            self._ready = queue.Queue(maxsize=prefetch)
            self._thread = threading.Thread(target=self._run, name="ReplaySampler", daemon=True)
            self._thread.start()

    # ---- learner-facing API --------------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return len(self._clients)

    def set_min_policy_version(self, version: int | None) -> None:
        """Fresh rows acted by an older policy are dropped (takes effect from the next batch built)."""
        self._min_policy_version = None if version is None else int(version)

    def beta(self) -> float:
        return beta_at(self.cfg, self.batches)

    def next_batch(self, timeout: float = 30.0, *, beta: float | None = None) -> ReplaySample:
        """The next batch; ReplayNotReady after ``timeout`` s without one, ReplayShardError on a failure.

        beta: IS exponent (default: the config's linear schedule at the number of batches handed out so far).
        """
        deadline = time.monotonic() + timeout
        built: _Built | None = None
        if self._ready is None:
            while built is None:
                self._raise_errors()
                self._drain_updates()
                built = self._step(wait=min(0.01, max(deadline - time.monotonic(), 0.0)))
                if built is None and time.monotonic() >= deadline:
                    self._raise_errors()
                    raise ReplayNotReady(self._not_ready_message(timeout))
        else:
            while built is None:
                self._raise_errors()
                try:
                    built = self._ready.get(timeout=min(0.05, max(deadline - time.monotonic(), 0.0)))
                except queue.Empty:
                    if self._crash is not None:
                        raise RuntimeError("ReplaySampler background thread crashed") from self._crash
                    if self._thread is None or not self._thread.is_alive():
                        raise RuntimeError("ReplaySampler is closed") from None
                    if time.monotonic() >= deadline:
                        self._raise_errors()
                        raise ReplayNotReady(self._not_ready_message(timeout)) from None
        b = self.beta() if beta is None else float(beta)
        self.batches += 1
        return self._to_sample(built, b)

    def update_priorities(
        self,
        keys: torch.Tensor | np.ndarray,
        shard_ids: torch.Tensor | np.ndarray,
        priorities: torch.Tensor | np.ndarray,
    ) -> None:
        """Queue new raw priorities for rows (keys, shard_ids as in the ReplaySample). Never blocks."""
        k = _np(keys).astype(np.int64, copy=False).reshape(-1)
        s = _np(shard_ids).astype(np.int64, copy=False).reshape(-1)
        p = _np(priorities).astype(np.float64, copy=False).reshape(-1)
        if not (k.shape == s.shape == p.shape):
            raise ValueError(f"update_priorities: keys {k.shape}, shard_ids {s.shape}, priorities {p.shape} differ")
        if p.size and not np.isfinite(p).all():
            raise ValueError("update_priorities: priorities must be finite (got NaN or inf)")
        if s.size and (s.min() < 0 or s.max() >= len(self._clients)):
            raise ValueError(f"update_priorities: shard id out of range [0, {len(self._clients)})")
        if self._ready is None:
            self._send_updates(k, s, p)
        else:
            with self._lock:
                self._unsent += 1
            self._updates.put((k, s, p))

    def flush_updates(self, timeout: float = 30.0) -> None:
        """Block until every priority update queued so far has been sent and answered by its shard (or its
        shard has failed, which the next :meth:`next_batch` reports). Call it before checkpointing a shard whose
        snapshot must include them; raises TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self._ready is None:
                self._drain_updates()  # no prefetch thread: reap here
            with self._lock:
                unsent = self._unsent
            if not unsent and all(pend.done() for _, pend in list(self._update_pending)):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"ReplaySampler.flush_updates: priority updates still in flight after {timeout} s")
            time.sleep(0.002)

    def replace_client(self, shard: int, client: ShardClient) -> None:
        """Swap in a new client for shard index ``shard`` (e.g. a restarted actor); clears its down state."""
        with self._lock:
            self._clients[shard] = client
            self._cache[shard] = None
            self._stats_pending[shard] = None
            self._heard_at[shard] = 0.0
            self._stats_at[shard] = 0.0
            self._down.pop(shard, None)

    def shard_stats(self) -> list[ShardStats | None]:
        """The latest cached stats of each shard (None until first heard from)."""
        with self._lock:
            return list(self._cache)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the prefetch thread (after sending queued priority updates). Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            self._drain_updates()
        except Exception:  # closing must not fail because a shard is gone
            pass

    def __enter__(self) -> ReplaySampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- background thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        assert self._ready is not None
        built: _Built | None = None
        try:
            while not self._stop.is_set():
                self._drain_updates()
                if built is None:
                    built = self._step(wait=0.01)
                    if built is None:
                        continue
                try:
                    self._ready.put(built, timeout=0.01)
                    built = None
                except queue.Full:
                    pass
        except BaseException as e:  # surfaced by next_batch
            self._crash = e

    # ---- priority updates ----------------------------------------------------------------------------------
    def _drain_updates(self) -> None:
        while True:
            try:
                k, s, p = self._updates.get_nowait()
            except queue.Empty:
                break
            self._send_updates(k, s, p)
            with self._lock:
                self._unsent -= 1
        # Reap finished update calls (surfacing failures); bound the number in flight.
        while self._update_pending and (len(self._update_pending) > 256 or self._update_pending[0][1].done()):
            j, pend = self._update_pending.popleft()
            try:
                pend.result(timeout=5.0)
            except TimeoutError:
                pass
            except Exception as e:
                self._mark_down(j, e)

    def _send_updates(self, k: np.ndarray, s: np.ndarray, p: np.ndarray) -> None:
        if not s.size:
            return
        lo, hi = int(s.min()), int(s.max())
        groups = [(lo, k, p)] if lo == hi else [(j, k[s == j], p[s == j]) for j in np.unique(s).tolist()]
        for j, kj, pj in groups:
            with self._lock:
                client, down = self._clients[j], j in self._down
            if down:
                self.updates_dropped += int(kj.shape[0])
                continue
            try:
                self._update_pending.append((j, client.update_priorities_async(kj, pj)))
            except Exception as e:
                self._mark_down(j, e)
                self.updates_dropped += int(kj.shape[0])
                continue
            self.updates_sent += int(kj.shape[0])

    # ---- batch building ------------------------------------------------------------------------------------
    def _mark_down(self, j: int, exc: BaseException) -> None:
        with self._lock:
            if j not in self._down:
                self._down[j] = exc
                self._errors.append(ReplayShardError(j, exc))
            self._cache[j] = None

    def _raise_errors(self) -> None:
        with self._lock:
            err = self._errors.popleft() if self._errors else None
        if err is not None:
            raise err

    def _refresh_stats(self) -> None:
        """Poll shards not heard from in 20 ms (sample responses carry stats too), in-process ones every time;
        collect finished polls."""
        now = time.monotonic()
        for j in range(len(self._clients)):
            with self._lock:
                client, down = self._clients[j], j in self._down
                pend = self._stats_pending[j]
            if down:
                continue
            stale = now - self._heard_at[j] >= 0.02 and now - self._stats_at[j] >= 0.02
            if pend is None and (stale or getattr(client, "stats_are_free", False)):
                self._stats_at[j] = now
                try:
                    pend = client.stats_async()
                except Exception as e:
                    self._mark_down(j, e)
                    continue
                self._stats_pending[j] = pend
            if pend is None or not pend.done():
                continue
            self._stats_pending[j] = None
            try:
                st = pend.result(timeout=0.0)
            except TimeoutError:
                continue
            except Exception as e:
                self._mark_down(j, e)
                continue
            with self._lock:
                if self._clients[j] is client:
                    self._cache[j] = st
                    self._heard_at[j] = now

    def _plan(self) -> list[_Part] | None:
        with self._lock:
            cache = list(self._cache)
            down = set(self._down)
        eligible = [
            j
            for j, st in enumerate(cache)
            if j not in down and st is not None and st.size >= max(self.cfg.min_size, 1) and st.total_priority > 0
        ]
        if not eligible:
            return None
        live = [cache[j] for j in eligible]  # type: ignore[misc]
        mass = np.array([st.total_priority for st in live], dtype=np.float64)
        q = mass / mass.sum()
        fresh = _split_capped(self.n_fresh, np.array([st.fresh_pending for st in live], dtype=np.int64))
        counts = self._rng.multinomial(self.batch_size - int(fresh.sum()), q)
        self._plan_q = np.zeros(len(self._clients))
        self._plan_q[eligible] = q
        self._plan_n = int(sum(st.size for st in live))
        return [_Part(j, int(c), int(f)) for j, c, f in zip(eligible, counts, fresh) if c + f > 0]

    def _step(self, wait: float) -> _Built | None:
        """Advance the batch under construction; returns it when complete. Waits at most about ``wait`` s."""
        self._refresh_stats()
        if self._parts is None:
            self._parts = self._plan()
            if self._parts is None:
                time.sleep(wait)
                return None
        parts = self._parts
        try:
            now = time.monotonic()
            for part in parts:
                if part.result is None and part.pending is None and now >= part.retry_at:
                    with self._lock:
                        client = self._clients[part.shard]
                    try:
                        part.pending = client.sample_async(part.n, part.n_fresh, self._min_policy_version)
                    except Exception as e:  # e.g. a dead actor refusing the call outright
                        raise _ShardDown(part.shard, e) from e
            waited = False
            for part in parts:
                if part.pending is None:
                    continue
                try:
                    res = part.pending.result(timeout=0.0 if waited else wait)
                except TimeoutError:
                    waited = True
                    continue
                except Exception as e:
                    raise _ShardDown(part.shard, e) from e
                part.pending = None
                with self._lock:
                    self._cache[part.shard] = res.stats
                    self._heard_at[part.shard] = time.monotonic()
                if res.ok:
                    part.result = res
                else:
                    self.retries += 1
                    part.retry_at = time.monotonic() + part.delay
                    part.delay = min(part.delay * 2, 0.05)
        except _ShardDown as e:
            self._mark_down(e.shard, e.cause)
            self._parts = None  # start the batch afresh without that shard
            return None
        if any(p.result is None for p in parts):
            if not any(p.pending is not None for p in parts):
                time.sleep(min(wait, max(0.0, min(p.retry_at for p in parts if p.result is None) - time.monotonic())))
            return None
        short = (
            sum(p.n_fresh for p in parts)
            - sum(int(p.result.fresh.sum()) for p in parts)  # type: ignore[union-attr]
            - sum(p.n for p in parts if p.topup)
        )
        if short > 0:
            # Fewer fresh rows than planned: draw the shortfall by priority with the same q (exact marginals).
            assert self._plan_q is not None
            extra = self._rng.multinomial(short, self._plan_q)
            parts.extend(_Part(j, int(c), 0, topup=True) for j, c in enumerate(extra) if c > 0)
            return None
        self._parts = None
        return self._assemble(parts)

    def _assemble(self, parts: list[_Part]) -> _Built:
        assert self._plan_q is not None
        segs: list[tuple[ShardSample, slice]] = []

        def add(res: ShardSample, sl: slice) -> None:
            if sl.stop > sl.start:
                if segs and segs[-1][0] is res and segs[-1][1].stop == sl.start:  # contiguous: no copy needed
                    sl = slice(segs.pop()[1].start, sl.stop)
                segs.append((res, sl))

        results = [p.result for p in parts]
        assert all(r is not None for r in results)
        for res in results:  # fresh rows of every shard first, then the prioritised rows
            add(res, slice(0, int(res.fresh.sum())))  # type: ignore[union-attr]
        for res in results:
            add(res, slice(int(res.fresh.sum()), res.num_rows))  # type: ignore[union-attr]
        first = segs[0][0]
        leaves: dict[str, np.ndarray] = {}
        for name in first.leaves:
            if len(segs) == 1 and segs[0][1] == slice(0, first.num_rows):
                arr = first.leaves[name]
                if not arr.flags.writeable and name not in first.out_dtypes:
                    arr = arr.copy()  # never hand torch a read-only (object-store) buffer
            else:
                arr = np.concatenate([r.leaves[name][sl] for r, sl in segs])
            if name in first.out_dtypes:
                arr = arr.astype(np.dtype(first.out_dtypes[name]))
            leaves[name] = arr
        part_of = {id(p.result): p.shard for p in parts}
        shard_ids = np.concatenate([np.full(sl.stop - sl.start, part_of[id(r)], np.int64) for r, sl in segs])
        fresh = np.concatenate([r.fresh[sl] for r, sl in segs])
        pi = np.concatenate([r.probs[sl] for r, sl in segs])
        probs = np.where(fresh, 0.0, self._plan_q[shard_ids] * pi)
        return _Built(
            leaves=leaves,
            keys=np.concatenate([r.keys[sl] for r, sl in segs]),
            shard_ids=shard_ids,
            probs=probs,
            prior=np.concatenate([r.prior[sl] for r, sl in segs]),
            fresh=fresh,
            size=self._plan_n,
        )

    def _to_sample(self, b: _Built, beta: float) -> ReplaySample:
        weights = np.ones(b.keys.shape[0], dtype=np.float64)
        prio = ~b.fresh
        if prio.any():  # batch-max normalisation over the prioritised rows; fresh rows carry 1
            weights[prio] = importance_weights(b.probs[prio], b.size, beta, prior=b.prior[prio])
        return ReplaySample(
            traj=Trajectory.from_batch_major({k: torch.from_numpy(v) for k, v in b.leaves.items()}),
            keys=torch.from_numpy(b.keys),
            shard_ids=torch.from_numpy(b.shard_ids),
            weights=torch.from_numpy(weights.astype(np.float32)),
            probs=torch.from_numpy(b.probs),
            fresh=torch.from_numpy(b.fresh),
            prior=torch.from_numpy(b.prior),
        )

    def _not_ready_message(self, timeout: float) -> str:
        with self._lock:
            cache, down = list(self._cache), dict(self._down)
        lines = [f"no replay batch within {timeout:.1f}s (batch_size {self.batch_size}, min_size {self.cfg.min_size}):"]
        for j, st in enumerate(cache):
            if j in down:
                lines.append(f"  shard {j}: down ({type(down[j]).__name__}: {down[j]})")
            elif st is None:
                lines.append(f"  shard {j}: no answer yet")
            else:
                lines.append(
                    f"  shard {j}: size {st.size}, sample {st.sample_status.value}, inserted {st.inserted}, "
                    f"sampled {st.sampled}"
                )
        return "\n".join(lines)


def _split_capped(total: int, caps: np.ndarray) -> np.ndarray:
    """Split ``total`` proportionally to ``caps`` (largest remainder), never exceeding a cap."""
    caps = np.maximum(caps, 0)
    if total <= 0 or caps.sum() == 0:
        return np.zeros_like(caps)
    if caps.sum() <= total:
        return caps.copy()
    share = caps * (total / caps.sum())
    out = np.floor(share).astype(np.int64)
    rest = total - int(out.sum())
    order = np.argsort(-(share - out), kind="stable")
    out[order[:rest]] += 1
    return np.minimum(out, caps)
