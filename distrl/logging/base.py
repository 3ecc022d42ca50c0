"""The metric contract every sink shares: namespaces, well-known keys, :func:`check_metrics` and the
:class:`MetricSink` protocol.

A metric key is ``"<namespace>/<name>"`` with the namespace one of :data:`NAMESPACES`; ``step`` is the env-step
count. The well-known keys below are the ones the progress display, the episode tracker and the wandb x-axis
read or write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

NAMESPACES: tuple[str, ...] = ("charts", "losses", "learner", "extras", "actor", "replay", "bonus", "eval")
"""Allowed first path components of a metric key."""

# Well-known keys: the progress display and the wandb x-axis read these.
ENV_STEPS = "charts/env_steps"
SPS = "charts/sps"
EPISODE_RETURN = "charts/episode_return"
EPISODE_LENGTH = "charts/episode_length"
SUCCESS_RATE = "charts/success_rate"
LEARNER_UPDATES = "learner/updates"
LEARNER_UPDATES_PER_S = "learner/updates_per_s"

_KEY_RE = re.compile(r"^(?:" + "|".join(NAMESPACES) + r")/[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")


@runtime_checkable
class MetricSink(Protocol):
    """Where scalar metrics go. ``step`` is the env-step count (the x-axis of every chart).

    Usage::

        sink.log({"charts/episode_return": 0.8, "learner/updates": 12}, step=40_960)
        sink.close()
    """

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def check_metrics(metrics: Mapping[str, Any], step: int) -> dict[str, float]:
    """Validate keys and values; return a plain ``{key: float}`` copy.

    Raises ValueError naming the first bad key (no namespace, unknown namespace, odd characters) or value
    (not a real number, e.g. a string, None or a multi-element tensor), or a negative/non-integer step.
    0-d tensors and numpy scalars are accepted through ``float()``.
    """
    if isinstance(step, bool) or (not isinstance(step, int) and not hasattr(step, "__index__")):
        raise ValueError(f"metric step must be an int (env steps), got {step!r}")
    if int(step) < 0:
        raise ValueError(f"metric step must be >= 0, got {step}")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError(
                f"metric key {key!r} is not namespaced: use '<namespace>/<name>' with namespace one of "
                f"{', '.join(NAMESPACES)} (e.g. 'charts/episode_return', 'replay/size')"
            )
        if isinstance(value, str | bytes) or value is None:
            raise ValueError(f"metric {key!r}: value must be a real number, got {value!r}")
        try:
            out[key] = float(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"metric {key!r}: value must be a real number, got {value!r} ({e})") from None
    return out
