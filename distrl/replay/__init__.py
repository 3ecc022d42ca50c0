"""Sharded prioritised replay of fixed-length sequences (ALGORITHMS.md §4).

* :class:`ReplayShard`: storage + sum tree + rate limiter + checkpoints (plain class; Ray wraps it outside).
* :class:`ReplaySampler`: exact cross-shard prioritisation, global IS weights, prefetch, async updates.
* :class:`LocalShardClient` / :class:`ShardClient`: how the sampler and actors reach a shard.
"""

from distrl.replay.checkpoint import CheckpointError
from distrl.replay.client import (
    BoundedInserter,
    LocalShardClient,
    Pending,
    ReplayInsertTimeout,
    ReplayNotReady,
    ReplayShardError,
    ReplayTimeout,
    ShardClient,
    insert_with_retry,
)
from distrl.replay.priorities import beta_at, importance_weights, priority_mass, sequence_priority
from distrl.replay.ratelimit import RateLimiter, Status
from distrl.replay.sampler import ReplaySampler
from distrl.replay.shard import InsertResult, ReplayShard, ShardSample, ShardStats, key_counter, key_incarnation
from distrl.replay.storage import LeafSpec, Schema, SequenceStorage
from distrl.replay.sumtree import SumTree

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
