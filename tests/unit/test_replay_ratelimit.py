"""Rate limiting: min size, samples-per-insert band, no deadlock, blocking with timeout, retrying clients."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distrl.config import ReplayConfig
from distrl.replay import (
    BoundedInserter,
    LocalShardClient,
    RateLimiter,
    ReplayInsertTimeout,
    ReplayShard,
    Status,
    insert_with_retry,
)
from distrl.replay.testing import example_trajectory


def test_min_size_gates_sampling_only():
    rl = RateLimiter(min_size=10, samples_per_insert=0.0, tolerance=0.5)
    assert rl.sample_status(size=9) is Status.BELOW_MIN_SIZE
    assert rl.sample_status(size=10) is Status.OK
    for _ in range(100):
        assert rl.can_insert()
        rl.on_insert(16)


def test_samples_per_insert_band():
    rl = RateLimiter(min_size=8, samples_per_insert=2.0, tolerance=0.5)
    # band centre 16, buffer max(2 * 8 * 0.5, 2) = 8 -> samples allowed while diff >= 8, inserts while <= 24
    assert (rl.min_diff, rl.max_diff) == (8.0, 24.0)
    rl.on_insert(8)  # diff 16: min size reached, both allowed
    assert rl.can_insert() and rl.can_sample(8)
    rl.on_sample(9)  # diff 7: the learner is ahead -> sampling held back, inserting allowed
    assert rl.sample_status(8) is Status.RATE_LIMITED and rl.can_insert()
    rl.on_insert(1)  # diff 9
    assert rl.can_sample(9)
    rl.on_insert(8)  # diff 25: actors are ahead -> inserting held back
    assert rl.insert_status() is Status.RATE_LIMITED and rl.can_sample(17)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 50),
    st.floats(0.25, 8.0),
    st.floats(0.0, 1.0),
    st.lists(st.tuples(st.booleans(), st.integers(1, 64)), min_size=1, max_size=200),
)
def test_never_deadlocks(min_size, spi, tol, ops):
    """Whatever the batch sizes, at least one of insert/sample is allowed once min_size rows are in."""
    rl = RateLimiter(min_size=min_size, samples_per_insert=spi, tolerance=tol)
    size = 0
    for want_insert, k in ops:
        ins, smp = rl.can_insert(), rl.can_sample(size)
        assert ins or smp, rl.describe()
        if (want_insert and ins) or not smp:
            rl.on_insert(k)
            size += k
        else:
            rl.on_sample(k)


def _shard(**kw) -> ReplayShard:
    base = dict(capacity=64, min_size=4, samples_per_insert=1.0, samples_per_insert_tolerance=0.0)
    base.update(kw)
    return ReplayShard(ReplayConfig(**base), seed=0)


def test_shard_refuses_without_blocking_and_reports_status():
    shard = _shard()  # band [3, 5] around diff 4
    assert shard.insert(example_trajectory(B=4)).ok  # diff 4
    assert shard.insert(example_trajectory(B=4)).ok  # diff 4 <= 5 before, 8 after
    res = shard.insert(example_trajectory(B=4))
    assert res.status is Status.RATE_LIMITED and res.keys.size == 0 and len(shard) == 8
    assert shard.stats().insert_status is Status.RATE_LIMITED
    assert shard.sample(6).ok  # diff 2
    s = shard.sample(1)
    assert s.status is Status.RATE_LIMITED and s.num_rows == 0
    assert shard.insert(example_trajectory(B=4)).ok


def test_blocking_insert_waits_for_a_sampler_thread():
    shard = _shard()
    shard.insert(example_trajectory(B=4))
    shard.insert(example_trajectory(B=4))

    def sample_later():
        time.sleep(0.05)
        shard.sample(6)

    t = threading.Thread(target=sample_later)
    t.start()
    res = shard.insert(example_trajectory(B=4), timeout=10.0)
    t.join()
    assert res.ok
    # diff is now 12 - 6 = 6 > 5: a blocking call with nobody sampling gives up after its timeout.
    assert shard.insert(example_trajectory(B=4), timeout=0.05).status is Status.RATE_LIMITED


def test_blocking_sample_waits_for_data():
    shard = _shard(min_size=4, samples_per_insert=0.0)
    t = threading.Timer(0.05, lambda: shard.insert(example_trajectory(B=4)))
    t.start()
    s = shard.sample(2, timeout=10.0)
    t.join()
    assert s.ok and s.num_rows == 2


def test_insert_with_retry_raises_named_timeout():
    shard = _shard()
    client = LocalShardClient(shard)
    insert_with_retry(client, example_trajectory(B=4), timeout=1.0)
    insert_with_retry(client, example_trajectory(B=4), timeout=1.0)
    with pytest.raises(ReplayInsertTimeout, match="samples_per_insert"):
        insert_with_retry(client, example_trajectory(B=4), timeout=0.05)


def test_bounded_inserter_resends_refused_inserts_once_the_learner_samples():
    shard = _shard(samples_per_insert=1.0, samples_per_insert_tolerance=0.5, min_size=4)
    ins = BoundedInserter(LocalShardClient(shard), max_inflight=2, timeout=5.0)
    stop = threading.Event()

    def learner():
        while not stop.is_set():
            if not shard.sample(4).ok:
                time.sleep(0.001)

    t = threading.Thread(target=learner)
    t.start()
    try:
        for i in range(10):
            ins.submit(example_trajectory(B=4, start=4 * i))
        ins.flush()
    finally:
        stop.set()
        t.join()
    assert ins.accepted == 40 and len(ins) == 0
    assert shard.stats().inserted == 40
    np.testing.assert_array_equal(np.sort(shard.read(shard.keys())[0]["env_step"]), np.arange(40))


def test_bounded_inserter_times_out_when_nobody_samples():
    shard = _shard()
    ins = BoundedInserter(LocalShardClient(shard), max_inflight=1, timeout=0.1)
    with pytest.raises(ReplayInsertTimeout):
        for i in range(5):
            ins.submit(example_trajectory(B=4, start=4 * i))
        ins.flush()

