"""Rate limiting between inserts and samples (Reverb's ``MinSize`` + ``SampleToInsertRatio``).

The limiter tracks ``diff = samples_per_insert * inserted - sampled`` (rows, not calls). Sampling is allowed
once the shard holds ``min_size`` rows and ``diff >= min_diff``; inserting is allowed while
``diff <= max_diff``.
The band is centred on ``samples_per_insert * min_size`` (the credit the first ``min_size`` inserts build up)
with half-width ``error_buffer = max(samples_per_insert * min_size * tolerance, samples_per_insert)``: the
"tolerance" is Acme's ``samples_per_insert_tolerance_rate`` (relative to the credit of ``min_size`` inserts).

Checks happen *before* a call and the counters move by the call's actual row count afterwards, so a call may
overshoot the band by one batch. That choice makes deadlock impossible for any batch sizes: whenever the diff
is below the band inserts are allowed, whenever it is above samples are allowed, and inside it both are.

Who waits: the limiter never sleeps. :class:`~distrl.replay.shard.ReplayShard` answers a refused call with a
status (non-blocking) or, in a local multi-threaded runtime, waits on its condition variable for at most the
caller's timeout. Over Ray the shard is always called non-blocking and the *client* waits and retries until
its deadline (:mod:`distrl.runtime.ray_replay`), so a shard actor's event loop is never held.

Usage::

    rl = RateLimiter(min_size=100, samples_per_insert=4.0, tolerance=0.5)
    if rl.can_insert():
        rl.on_insert(16)
    if rl.can_sample(size=len(shard)):
        rl.on_sample(64)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Status(enum.StrEnum):
    """Outcome of an insert or sample call on a shard."""

    OK = "accepted"
    BELOW_MIN_SIZE = "below_min_size"
    """Sampling refused: the shard holds fewer than ``min_size`` sequences."""
    RATE_LIMITED = "rate_limited"
    """Refused by the samples-per-insert ratio (an insert is too far ahead of sampling or the reverse)."""

    @property
    def ok(self) -> bool:
        return self is Status.OK


@dataclass
class RateLimiter:
    """Min-size and samples-per-insert gate for one shard. ``samples_per_insert == 0`` disables the ratio."""

    min_size: int
    samples_per_insert: float
    tolerance: float
    inserted: int = 0
    sampled: int = 0

    def __post_init__(self) -> None:
        if self.min_size < 0:
            raise ValueError(f"RateLimiter: min_size must be >= 0, got {self.min_size}")
        if self.samples_per_insert < 0:
            raise ValueError(f"RateLimiter: samples_per_insert must be >= 0, got {self.samples_per_insert}")
        if self.tolerance < 0:
            raise ValueError(f"RateLimiter: samples_per_insert_tolerance must be >= 0, got {self.tolerance}")

    # ---- the band ------------------------------------------------------------------------------------------
    @property
    def error_buffer(self) -> float:
        spi = self.samples_per_insert
        return max(spi * max(self.min_size, 1) * self.tolerance, spi)

    @property
    def diff(self) -> float:
        return self.samples_per_insert * self.inserted - self.sampled

    @property
    def min_diff(self) -> float:
        return self.samples_per_insert * self.min_size - self.error_buffer

    @property
    def max_diff(self) -> float:
        return self.samples_per_insert * self.min_size + self.error_buffer

    # ---- gates ---------------------------------------------------------------------------------------------
    def insert_status(self) -> Status:
        if self.samples_per_insert > 0 and self.diff > self.max_diff:
            return Status.RATE_LIMITED
        return Status.OK

    def sample_status(self, size: int) -> Status:
        if size < max(self.min_size, 1):
            return Status.BELOW_MIN_SIZE
        if self.samples_per_insert > 0 and self.diff < self.min_diff:
            return Status.RATE_LIMITED
        return Status.OK

    def can_insert(self) -> bool:
        return self.insert_status().ok

    def can_sample(self, size: int) -> bool:
        return self.sample_status(size).ok

    def on_insert(self, rows: int) -> None:
        self.inserted += int(rows)

    def on_sample(self, rows: int) -> None:
        self.sampled += int(rows)

    def describe(self) -> str:
        """One line for error messages: why a caller would be held back."""
        return (
            f"min_size={self.min_size}, samples_per_insert={self.samples_per_insert}, "
            f"inserted={self.inserted}, "
            f"sampled={self.sampled}, diff={self.diff:.1f} (allowed band [{self.min_diff:.1f}, "
            f"{self.max_diff:.1f}])"
        )
