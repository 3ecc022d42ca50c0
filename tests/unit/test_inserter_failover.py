"""BoundedInserter across a shard's death: the failure surfaces before anything new is sent, and replace_client
re-sends what the dead shard had not acknowledged and reports how far it had acknowledged (its insert count)."""

from __future__ import annotations

import pytest

from distrl.config import ReplayConfig
from distrl.replay import ReplayShard
from distrl.replay.client import BoundedInserter, LocalShardClient, ReplayShardError
from distrl.replay.testing import example_trajectory

CFG = ReplayConfig(capacity=64, min_size=1, samples_per_insert=0.0)


class _Dead:
    def done(self) -> bool:
        return True

    def result(self, timeout=None):
        raise ReplayShardError(0, RuntimeError("actor died"))


class _DyingClient:
    """Forwards to a live shard until ``die()``; then every insert fails as a dead Ray shard's would."""

    shard_id = 0

    def __init__(self, shard: ReplayShard) -> None:
        self.inner, self.dead = LocalShardClient(shard), False

    def insert_async(self, traj, priorities=None, prior=None):
        return _Dead() if self.dead else self.inner.insert_async(traj, priorities, prior)


def test_a_dead_shard_fails_the_next_submit_and_replace_client_resends_the_unacknowledged():
    old = _DyingClient(ReplayShard(CFG, seed=0))
    ins = BoundedInserter(old, max_inflight=2, timeout=5.0)
    for i in range(3):
        ins.submit(example_trajectory(B=4, start=i))
    assert ins.accepted == 12 and ins.acked_end == 12  # keys 0..11: the shard's insert count
    old.dead = True
    ins.submit(example_trajectory(B=4, start=3))  # sent; its failure is seen on the next call
    ins.submit(example_trajectory(B=4, start=4))
    with pytest.raises(ReplayShardError):
        ins.submit(example_trajectory(B=4, start=5))  # window full of failed inserts: not sent
    assert len(ins) == 2
    restarted = ReplayShard(CFG, seed=0)
    for i in range(2):  # as if restored from a checkpoint taken after 8 rows
        restarted.insert(example_trajectory(B=4, start=i))
    assert ins.replace_client(LocalShardClient(restarted)) == 12  # acknowledged up to 12; 12 - 8 = 4 rows lost
    ins.submit(example_trajectory(B=4, start=5))
    ins.flush()
    assert restarted.stats().inserted == 8 + 3 * 4  # the two queued ones re-sent, then the new one
    assert ins.accepted == 24 and ins.acked_end == 20
