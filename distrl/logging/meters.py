"""Aggregates that turn raw counts into ``charts/`` metrics: episode statistics over a sliding window, and
the per-second rate of a monotone counter (between the last two updates, or averaged over the whole run).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from distrl.logging.base import EPISODE_LENGTH, EPISODE_RETURN, SUCCESS_RATE

if TYPE_CHECKING:  # types.py imports torch; the tracker only reads attributes, so keep the import cheap
    from distrl.types import EpisodeStats


class EpisodeTracker:
    """Sliding-window means over finished episodes, for the ``charts/`` namespace.

    ``summary()`` gives ``charts/episode_return``, ``charts/episode_length`` and ``charts/episodes`` (total
    count since the start), ``charts/success_rate`` over the episodes in the window that define success, and
    the mean of every env-specific extra scalar as ``charts/<name>``. It is empty until the first episode
    ends, so a log call never shows a made-up zero return.

    Usage::

        tracker = EpisodeTracker(window=100)
        tracker.add([EpisodeStats(actor_id=0, env_index=3, episode_return=1.0, length=12, success=1.0)])
        tracker.summary()   # {"charts/episode_return": 1.0, "charts/episode_length": 12.0, ...}
    """

    def __init__(self, window: int = 100) -> None:
        if window < 1:
            raise ValueError(f"EpisodeTracker window must be >= 1, got {window}")
        self.window = window
        self._recent: collections.deque[EpisodeStats] = collections.deque(maxlen=window)
        self.total_episodes = 0

    def add(self, episodes: Iterable[EpisodeStats]) -> None:
        for ep in episodes:
            self._recent.append(ep)
            self.total_episodes += 1

    def __len__(self) -> int:
        return len(self._recent)

    def summary(self) -> dict[str, float]:
        eps = list(self._recent)
        if not eps:
            return {}
        n = len(eps)
        out = {
            EPISODE_RETURN: sum(float(e.episode_return) for e in eps) / n,
            EPISODE_LENGTH: sum(float(e.length) for e in eps) / n,
            "charts/episodes": float(self.total_episodes),
        }
        succ = [float(e.success) for e in eps if e.success is not None]
        if succ:
            out[SUCCESS_RATE] = sum(succ) / len(succ)
        extras: dict[str, list[float]] = collections.defaultdict(list)
        for e in eps:
            for name, value in e.extra:
                extras[name].append(float(value))
        for name, values in extras.items():
            key = f"charts/{name}"
            if key not in out:  # an extra never overrides the standard charts
                out[key] = sum(values) / len(values)
        return out


class RateMeter:
    """Rate of a monotone counter per wall-clock second, between successive ``update`` calls.

    Usage::

        sps = RateMeter()
        sps.update(env_steps)      # None on the first call, then steps/s since the previous call
    """

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    def update(self, count: float, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        last, self._last = self._last, (float(count), now)
        if last is None or now <= last[1]:
            return None
        return (float(count) - last[0]) / (now - last[1])


class AverageRate:
    """Rate of a monotone counter per wall-clock second, from the first ``update`` call to the latest.

    Usage::

        avg = AverageRate()
        avg.update(env_steps)
        avg.rate                   # None until two calls with time between them
    """

    def __init__(self) -> None:
        self._first: tuple[float, float] | None = None
        self._latest: tuple[float, float] | None = None

    def update(self, count: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._latest = (float(count), now)
        if self._first is None:
            self._first = self._latest

    @property
    def rate(self) -> float | None:
        if self._first is None or self._latest is None or self._latest[1] <= self._first[1]:
            return None
        return (self._latest[0] - self._first[0]) / (self._latest[1] - self._first[1])
