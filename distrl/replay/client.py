"""The small protocol the sampler and actors use to talk to a shard, local or remote.

A shard client returns :class:`Pending` results (``done()``, ``result(timeout)``): a local client runs the
call at once and returns a resolved result; the Ray client (:mod:`distrl.runtime.ray_replay`) wraps an
ObjectRef. Everything above this protocol (the :class:`~distrl.replay.sampler.ReplaySampler`,
:func:`insert_with_retry`, :class:`BoundedInserter`) is the same code in the single-process runtime and on a
Ray cluster.

Shards never block a remote caller: a rate-limited insert or sample comes back with a status, and the helpers
here retry with a short back-off until the caller's deadline, then raise a named :class:`ReplayTimeout`.

Usage::

    client = LocalShardClient(shard)
    insert_with_retry(client, traj, timeout=10.0)
    s = client.sample_async(32).result()
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np

from distrl.replay.shard import InsertResult, ReplayShard, ShardSample, ShardStats, key_counter
from distrl.types import Trajectory

if TYPE_CHECKING:
    import torch

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class ReplayTimeout(TimeoutError):
    """A replay call could not complete before its deadline (base class of the named timeouts below)."""


class ReplayNotReady(ReplayTimeout):
    """The sampler had no batch within the timeout: too little data, rate-limited, or shards unavailable."""


class ReplayInsertTimeout(ReplayTimeout):
    """An insert stayed refused by the rate limiter (or unanswered) past its deadline."""


class ReplayShardError(RuntimeError):
    """A shard call failed (for a Ray shard usually: the actor died). ``shard`` is the client index."""

    def __init__(self, shard: int, cause: BaseException) -> None:
        super().__init__(f"replay shard {shard} failed: {type(cause).__name__}: {cause}")
        self.shard = shard
        self.cause = cause


class Pending(Protocol[T_co]):
    """A result that may not be there yet."""

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> T_co:
        """The value; raises TimeoutError if not ready within ``timeout`` seconds, or the call's exception."""
        ...


class Resolved(Generic[T]):
    """An already-finished :class:`Pending` (value or exception)."""

    __slots__ = ("_exc", "_value")

    def __init__(self, value: T | None = None, exc: BaseException | None = None) -> None:
        self._value, self._exc = value, exc

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> T:
        if self._exc is not None:
            raise self._exc
        return self._value  # type: ignore[return-value]


class ShardClient(Protocol):
    """What the sampler and inserters need from a shard."""

    def sample_async(self, n: int, n_fresh: int = 0, min_policy_version: int | None = None) -> Pending[ShardSample]: ...

    def update_priorities_async(self, keys: np.ndarray, priorities: np.ndarray) -> Pending[int]: ...

    def stats_async(self) -> Pending[ShardStats]: ...

    def insert_async(self, traj: Trajectory, priorities: Any = None, prior: Any = None) -> Pending[InsertResult]: ...


def _call(fn: Any, *args: Any, **kwargs: Any) -> Resolved[Any]:
    try:
        return Resolved(fn(*args, **kwargs))
    except Exception as e:  # delivered through result(), like a remote call's error
        return Resolved(exc=e)


class LocalShardClient:
    """A :class:`ShardClient` for an in-process :class:`ReplayShard`: calls run immediately (non-blocking)."""

    # Stats cost a function call, so the sampler reads them for every batch it plans instead of every 20 ms:
    # what a batch holds then depends on counts alone, and a seeded local run repeats itself exactly.
    stats_are_free = True

    def __init__(self, shard: ReplayShard, frame_stacks: Collection[str] = ()) -> None:
        self.shard = shard
        self.frame_stacks = tuple(frame_stacks)  # EnvSpec.frame_stacks of what this client inserts

    def sample_async(self, n: int, n_fresh: int = 0, min_policy_version: int | None = None) -> Resolved[ShardSample]:
        return _call(self.shard.sample, n, n_fresh, min_policy_version)

    def update_priorities_async(self, keys: np.ndarray, priorities: np.ndarray) -> Resolved[int]:
        return _call(self.shard.update_priorities, keys, priorities)

    def stats_async(self) -> Resolved[ShardStats]:
        return _call(self.shard.stats)

    def insert_async(self, traj: Trajectory, priorities: Any = None, prior: Any = None) -> Resolved[InsertResult]:
        return _call(self.shard.insert, traj, priorities, prior=prior, frame_stacks=self.frame_stacks)


class _Backoff:
    def __init__(self, first: float = 0.002, cap: float = 0.05) -> None:
        self.delay, self.cap = first, cap

    def sleep(self, deadline: float) -> None:
        time.sleep(max(0.0, min(self.delay, deadline - time.monotonic())))
        self.delay = min(self.delay * 2, self.cap)


def insert_with_retry(
    client: ShardClient,
    traj: Trajectory,
    priorities: np.ndarray | torch.Tensor | None = None,
    *,
    prior: np.ndarray | torch.Tensor | None = None,
    timeout: float,
) -> InsertResult:
    """Insert, retrying rate-limited refusals with back-off; raise ReplayInsertTimeout after ``timeout`` s.

    The caller (an env actor) is the side that waits; the shard stays free to serve samples meanwhile.
    """
    deadline = time.monotonic() + timeout
    backoff = _Backoff()
    last = None
    while True:
        left = deadline - time.monotonic()
        try:
            last = client.insert_async(traj, priorities, prior).result(timeout=max(left, 0.0))
        except TimeoutError as e:
            raise ReplayInsertTimeout(f"replay insert not answered within {timeout:.1f}s") from e
        if last.ok:
            return last
        if time.monotonic() >= deadline:
            raise ReplayInsertTimeout(
                f"replay insert refused ({last.status.value}) for {timeout:.1f}s: the learner is not "
                "sampling fast enough for replay.samples_per_insert (or has stopped)"
            )
        backoff.sleep(deadline)


class BoundedInserter:
    """Fire-and-forget inserts with at most ``max_inflight`` unacknowledged (``replay.max_inflight_inserts``).

    ``submit`` returns as soon as the window has room; refused inserts are re-sent automatically. When the
    window stays full (the shard keeps refusing) for ``timeout`` seconds, ``submit``/``flush`` raise
    ReplayInsertTimeout, so an actor is told instead of hanging.

    Usage::

        ins = BoundedInserter(client, max_inflight=cfg.replay.max_inflight_inserts, timeout=60.0)
        for traj in actor.run(n):
            ins.submit(traj)
        ins.flush()
    """

    def __init__(self, client: ShardClient, max_inflight: int, *, timeout: float) -> None:
        if max_inflight < 1:
            raise ValueError(f"BoundedInserter: max_inflight must be >= 1, got {max_inflight}")
        self.client = client
        self.max_inflight = int(max_inflight)
        self.timeout = float(timeout)
        self._inflight: deque[tuple[Pending[InsertResult], tuple[Any, Any, Any], float]] = deque()
        self.accepted = 0
        self.resent = 0
        self.dropped = 0
        self.acked_end = 0  # 1 + the largest insert count (key_counter) the current client's shard acknowledged
        self._backoff = 0.002

    def __len__(self) -> int:
        return len(self._inflight)

    def _send(self, item: tuple[Any, Any, Any], since: float) -> None:
        traj, priorities, prior = item
        self._inflight.append((self.client.insert_async(traj, priorities, prior), item, since))

    def _poll(self, wait: float) -> None:
        """Resolve the oldest in-flight insert if it finishes within ``wait`` s; re-send it if refused."""
        pending, item, since = self._inflight[0]
        try:
            res = pending.result(timeout=wait)
        except TimeoutError:
            if time.monotonic() - since > self.timeout:
                raise ReplayInsertTimeout(f"replay insert not answered within {self.timeout:.1f}s") from None
            return
        # A ReplayShardError (the shard is gone: a Ray shard actor died) propagates with the item still queued.
        self._inflight.popleft()
        if res.ok:
            self._acked(res)
            self._backoff = 0.002
            return
        if time.monotonic() - since > self.timeout:
            raise ReplayInsertTimeout(
                f"replay insert refused ({res.status.value}) for {self.timeout:.1f}s: the learner is not "
                "sampling fast enough for replay.samples_per_insert (or has stopped)"
            )
        # The shard is ahead of the learner: wait before re-sending, longer while refusals continue (capped),
        # so a rate-limited actor yields its CPU to the learner instead of re-sending sequences in a tight loop.
        time.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, 0.1)
        self.resent += 1
        self._send(item, since)

    def _acked(self, res: InsertResult) -> None:
        self.accepted += int(res.keys.shape[0])
        if res.keys.shape[0]:  # one insert's keys share the incarnation: the largest key has the largest count
            self.acked_end = max(self.acked_end, int(key_counter(res.keys.max())) + 1)

    def submit(self, traj: Trajectory, priorities: np.ndarray | torch.Tensor | None = None, prior: Any = None) -> None:
        """Send ``traj`` once the window has room. Raises ReplayShardError, without sending ``traj``, when the
        shard failed; after :meth:`replace_client` a new submit sends it (and re-sent the queued ones)."""
        while len(self._inflight) >= self.max_inflight:
            self._poll(wait=0.05)
        self._send((traj, priorities, prior), time.monotonic())
        try:
            while self._inflight and self._inflight[0][0].done():
                self._poll(wait=0.0)
        except ReplayShardError:
            pass  # ``traj`` is queued: a failed shard surfaces at the next submit/flush, before anything is sent

    def replace_client(self, client: ShardClient) -> int:
        """Point at a new client (its shard restarted) and re-send everything not yet acknowledged to it.

        Inserts whose acknowledgement has already arrived (the dead shard stored them and answered before it
        died; this inserter had just not looked yet) count as acknowledged and are not re-sent. Returns the
        old client's ``acked_end``, 1 + the largest insert count it acknowledged (the runtime counts what the
        restarted shard lost from it)."""
        items = []
        for pending, item, _ in self._inflight:
            res = None
            if pending.done():
                try:
                    res = pending.result(timeout=0.0)
                except Exception:  # the shard died before answering (ReplayShardError): re-send
                    res = None
            if res is not None and res.ok:
                self._acked(res)
            else:
                items.append(item)
        old, self.acked_end = self.acked_end, 0
        self.client = client
        self._inflight.clear()
        now = time.monotonic()
        for item in items:
            self._send(item, now)
        return old

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every submitted insert is accepted (bounded by ``timeout`` per insert).

        With ``timeout``, give up after that many seconds in total and drop what is still refused (a stopping
        run whose learner no longer samples); returns the number of sequences dropped, also counted in
        ``dropped``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._inflight:
            if deadline is not None and time.monotonic() >= deadline:
                n = len(self._inflight)
                self._inflight.clear()
                self.dropped += n
                return n
            self._poll(wait=0.05)
        return 0
