"""WeightStore: the latest published policy weights, by version.

The learner publishes ``(version, PolicyWeights)``; actors ask for the version cheaply and fetch the weights only
when they are newer than what they hold. A plain class (used as is by the local runtime); the Ray runtime hosts
one as an actor whose ``publish`` receives the state_dict through the object store.

Usage::

    store = WeightStore()
    store.publish(weights.version, weights)          # weights: distrl.types.PolicyWeights
    newer = store.get_if_newer(my_version)           # None, or (version, PolicyWeights)
"""

from __future__ import annotations

from typing import Any


class WeightStore:
    def __init__(self) -> None:
        self._version = -1
        self._weights: Any = None

    def publish(self, version: int, weights: Any) -> None:
        if version < self._version:
            raise ValueError(f"WeightStore.publish: version {version} is older than the stored {self._version}")
        self._version = int(version)
        self._weights = weights

    def version(self) -> int:
        return self._version

    def get(self) -> tuple[int, Any]:
        return self._version, self._weights

    def get_if_newer(self, version: int) -> tuple[int, Any] | None:
        """(version, weights) when newer than ``version``, else None (one round trip for actors)."""
        if self._version > version:
            return self._version, self._weights
        return None
