"""Sharded prioritised replay of fixed-length sequences (ALGORITHMS.md §4).

* :class:`ReplayShard`: storage + sum tree + rate limiter + checkpoints (plain class; Ray wraps it outside).
* :class:`ReplaySampler`: exact cross-shard prioritisation, global IS weights, prefetch, async updates.
* :class:`LocalShardClient` / :class:`ShardClient`: how the sampler and actors reach a shard.
"""

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointError": "checkpoint",
    "BoundedInserter": "client",
    "LocalShardClient": "client",
    "Pending": "client",
    "ReplayInsertTimeout": "client",
    "ReplayNotReady": "client",
    "ReplayShardError": "client",
    "ReplayTimeout": "client",
    "ShardClient": "client",
    "insert_with_retry": "client",
    "beta_at": "priorities",
    "importance_weights": "priorities",
    "priority_mass": "priorities",
    "sequence_priority": "priorities",
    "RateLimiter": "ratelimit",
    "Status": "ratelimit",
    "ReplaySampler": "sampler",
    "InsertResult": "shard",
    "ReplayShard": "shard",
    "ShardSample": "shard",
    "ShardStats": "shard",
    "key_counter": "shard",
    "key_incarnation": "shard",
    "LeafSpec": "storage",
    "Schema": "storage",
    "SequenceStorage": "storage",
    "SumTree": "sumtree",
}
"""Where each name lives. The package imports a submodule when one of its names is first used, so a replay
shard's process (which needs the shard, not the sampler) never loads torch."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distrl.replay' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"distrl.replay.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BoundedInserter",
    "CheckpointError",
    "InsertResult",
    "LeafSpec",
    "LocalShardClient",
    "Pending",
    "RateLimiter",
    "ReplayInsertTimeout",
    "ReplayNotReady",
    "ReplaySampler",
    "ReplayShard",
    "ReplayShardError",
    "ReplayTimeout",
    "Schema",
    "SequenceStorage",
    "ShardClient",
    "ShardSample",
    "ShardStats",
    "Status",
    "SumTree",
    "beta_at",
    "importance_weights",
    "insert_with_retry",
    "key_counter",
    "key_incarnation",
    "priority_mass",
    "sequence_priority",
]
