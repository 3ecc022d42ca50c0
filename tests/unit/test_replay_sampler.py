"""ReplaySampler: exact global prioritisation across unequal shards, IS weights, fresh rows, failures."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy import stats

from distrl.config import ReplayConfig
from distrl.replay import (
    LocalShardClient,
    ReplayNotReady,
    ReplaySampler,
    ReplayShard,
    ReplayShardError,
)
from distrl.replay.testing import example_trajectory

SIZES = (5, 10, 20, 45)
ALPHA = 0.6


def make_shards(sizes=SIZES, min_size=1, seed=0, **kw):
    """Shards of unequal size and priority mass; returns (shards, global p^alpha per (shard, key))."""
    c = ReplayConfig(capacity=64, alpha=ALPHA, epsilon=0.0, min_size=min_size, samples_per_insert=0.0, **kw)
    rng = np.random.default_rng(seed)
    shards, mass = [], {}
    for j, n in enumerate(sizes):
        shard = ReplayShard(c, shard_id=j, seed=seed + j)
        keys = shard.insert(example_trajectory(B=n, T=3, start=100 * j)).keys
        p = rng.lognormal(0.0, 1.0, size=n) * (j + 1)  # later shards: more items and more mass per item
        shard.update_priorities(keys, p)
        for k, pk in zip(keys.tolist(), p):
            mass[(j, k)] = pk**ALPHA
        shards.append(shard)
    return c, shards, mass


def chi2_pvalue(counts: dict, mass: dict) -> float:
    items = sorted(mass)
    obs = np.array([counts.get(i, 0) for i in items], dtype=np.float64)
    p = np.array([mass[i] for i in items])
    return stats.chisquare(obs, obs.sum() * p / p.sum()).pvalue


def test_frequencies_across_unequal_shards_match_single_buffer_distribution():
    c, shards, mass = make_shards()
    sampler = ReplaySampler([LocalShardClient(s) for s in shards], c, batch_size=64, prefetch=0, seed=1)
    counts: dict = {}
    total = sum(mass.values())
    for _ in range(160):
        b = sampler.next_batch(timeout=5.0)
        for j, k, p in zip(b.shard_ids.tolist(), b.keys.tolist(), b.probs.tolist()):
            counts[(j, k)] = counts.get((j, k), 0) + 1
            assert p == pytest.approx(mass[(j, k)] / total, rel=1e-9)  # the true global P(i)
        assert b.B == 64 and not b.fresh.any()
    assert chi2_pvalue(counts, mass) > 1e-3


def test_a_wrong_allocation_fails_the_same_chi_square_test():
    """Regression guard: uniform shard choice with shard-local sampling is not the global distribution."""
    _, shards, mass = make_shards()
    counts: dict = {}
    for _ in range(250):
        for j, shard in enumerate(shards):
            for k in shard.sample(16).keys.tolist():
                counts[(j, k)] = counts.get((j, k), 0) + 1
    assert chi2_pvalue(counts, mass) < 1e-6


def test_weights_equal_numpy_reference():
    c, shards, mass = make_shards()
    sampler = ReplaySampler([LocalShardClient(s) for s in shards], c, batch_size=32, prefetch=0, seed=2)
    total, n = sum(mass.values()), sum(SIZES)
    for beta in (0.0, 0.4, 1.0):
        b = sampler.next_batch(timeout=5.0, beta=beta)
        p = np.array([mass[(j, k)] for j, k in zip(b.shard_ids.tolist(), b.keys.tolist())]) / total
        ref = (n * p) ** -beta
        np.testing.assert_allclose(b.weights.numpy(), ref / ref.max(), rtol=1e-6)
        assert b.weights.dtype == torch.float32 and b.probs.dtype == torch.float64


def test_is_weighted_mean_is_unbiased_for_the_uniform_mean_but_shard_local_weights_are_not():
    """ALGORITHMS.md §7 item 6, with beta = 1: sum w f / sum w estimates the uniform replay mean of f."""
    c, shards, mass = make_shards()
    f = {item: float(item[0]) for item in mass}  # f = shard index: exposes any shard-level bias
    uniform_mean = np.mean(list(f.values()))
    sampler = ReplaySampler([LocalShardClient(s) for s in shards], c, batch_size=64, prefetch=0, seed=3)
    num = den = 0.0
    for _ in range(150):
        b = sampler.next_batch(timeout=5.0, beta=1.0)
        w = 1.0 / b.probs.numpy()  # un-normalised (N P)^-1; the constant N cancels
        fv = np.array([f[(j, k)] for j, k in zip(b.shard_ids.tolist(), b.keys.tolist())])
        num, den = num + (w * fv).sum(), den + w.sum()
    assert num / den == pytest.approx(uniform_mean, abs=0.15)
    # RLlib-style: shards chosen uniformly, weights (N_j * pi_{i|j})^-1 from the shard alone.
    num = den = 0.0
    for _ in range(150):
        for j, shard in enumerate(shards):
            s = shard.sample(16)
            w = 1.0 / (s.size * s.probs)
            num, den = num + (w * j).sum(), den + w.sum()
    assert abs(num / den - uniform_mean) > 0.5  # 1.5 vs 2.31


def test_shards_below_min_size_are_left_out_and_n_counts_only_sampleable_shards():
    c, shards, mass = make_shards(sizes=(3, 12), min_size=5)
    sampler = ReplaySampler([LocalShardClient(s) for s in shards], c, batch_size=16, prefetch=0, seed=0)
    b = sampler.next_batch(timeout=5.0, beta=1.0)
    assert b.shard_ids.eq(1).all()
    s1 = sum(v for (j, _), v in mass.items() if j == 1)
    p = np.array([mass[(1, k)] for k in b.keys.tolist()]) / s1
    np.testing.assert_allclose(b.probs.numpy(), p)
    ref = 1.0 / (12 * p)
    np.testing.assert_allclose(b.weights.numpy(), ref / ref.max(), rtol=1e-6)


def test_not_enough_data_raises_named_timeout_then_recovers():
    c = ReplayConfig(capacity=64, min_size=8, samples_per_insert=0.0)
    shard = ReplayShard(c, seed=0)
    shard.insert(example_trajectory(B=4))
    for prefetch in (0, 2):
        sampler = ReplaySampler([LocalShardClient(shard)], c, batch_size=4, prefetch=prefetch, seed=0)
        with pytest.raises(ReplayNotReady, match="size 4"):
            sampler.next_batch(timeout=0.1)
        shard.insert(example_trajectory(B=4, start=4))
        assert sampler.next_batch(timeout=5.0).B == 4
        sampler.close()
        shard = ReplayShard(c, seed=0)
        shard.insert(example_trajectory(B=4))


def test_fresh_rows_come_first_with_weight_one_and_the_batch_is_always_full():
    c = ReplayConfig(capacity=64, min_size=1, samples_per_insert=0.0, alpha=1.0, epsilon=0.0)
    shards = [ReplayShard(c, shard_id=j, seed=j) for j in range(2)]
    shards[0].insert(example_trajectory(B=6, start=0))
    shards[1].insert(example_trajectory(B=2, start=100))
    clients = [LocalShardClient(s) for s in shards]
    sampler = ReplaySampler(clients, c, batch_size=8, n_fresh=4, prefetch=0, seed=0)
    b = sampler.next_batch(timeout=5.0)
    assert b.B == 8 and b.fresh[:4].all() and not b.fresh[4:].any()
    assert b.weights[:4].eq(1.0).all() and b.probs[:4].eq(0.0).all() and (b.probs[4:] > 0).all()
    # Fresh rows are split by pending counts (6:2 -> 3:1), newest first, and keep their real keys.
    got = sorted(zip(b.shard_ids[:4].tolist(), b.keys[:4].tolist()))
    assert got == [(0, 3), (0, 4), (0, 5), (1, 1)]
    np.testing.assert_array_equal(b.traj.env_step[:4].numpy() % 100, b.keys[:4].numpy())
    # 4 fresh rows left (3 + 1): the next batch takes them; then only 0 remain and the batch is all replay.
    b = sampler.next_batch(timeout=5.0)
    assert int(b.fresh.sum()) == 4
    b = sampler.next_batch(timeout=5.0)
    assert b.B == 8 and not b.fresh.any() and (b.probs > 0).all()


def test_fresh_shortfall_is_topped_up_by_priority_and_stale_rows_are_dropped():
    c = ReplayConfig(capacity=64, min_size=1, samples_per_insert=0.0)
    shard = ReplayShard(c, seed=0)
    shard.insert(example_trajectory(B=3, start=0, policy_version=1))
    shard.insert(example_trajectory(B=3, start=3, policy_version=9))
    sampler = ReplaySampler([LocalShardClient(shard)], c, batch_size=8, n_fresh=6, prefetch=0, seed=0)
    sampler.set_min_policy_version(5)
    b = sampler.next_batch(timeout=5.0)
    assert b.B == 8 and int(b.fresh.sum()) == 3  # the three version-1 rows were too old
    assert sorted(b.keys[:3].tolist()) == [3, 4, 5]
    assert shard.stats().fresh_dropped == 3


def test_priority_updates_reach_the_right_shard_without_blocking():
    c, shards, _ = make_shards(sizes=(8, 8))
    sampler = ReplaySampler([LocalShardClient(s) for s in shards], c, batch_size=16, prefetch=2, seed=0)
    b = sampler.next_batch(timeout=5.0)
    new_p = torch.arange(16, dtype=torch.float32) + 100.0
    sampler.update_priorities(b.keys, b.shard_ids, new_p)
    sampler.close()  # sends queued updates and stops the thread
    assert sampler._thread is None
    expect: dict = {}
    for j, k, p in zip(b.shard_ids.tolist(), b.keys.tolist(), new_p.tolist()):
        expect[(j, k)] = p  # last write wins for repeated rows
    for (j, k), p in expect.items():
        assert shards[j].read(np.array([k]))[1][0] == pytest.approx(p)
    assert sampler.updates_sent == 16


@pytest.mark.parametrize("prefetch", [0, 2])
def test_flush_updates_waits_until_the_shards_hold_them(prefetch):
    """With the prefetch thread still running, flush_updates returns only once every queued update has been
    applied (what a consistent shard checkpoint needs)."""

    class SlowUpdates(LocalShardClient):
        def update_priorities_async(self, keys, priorities):
            time.sleep(0.05)  # the shard answers late
            return super().update_priorities_async(keys, priorities)

    c, shards, _ = make_shards(sizes=(8, 8))
    sampler = ReplaySampler([SlowUpdates(s) for s in shards], c, batch_size=16, prefetch=prefetch, seed=0)
    b = sampler.next_batch(timeout=5.0)
    for r in range(3):
        sampler.update_priorities(b.keys, b.shard_ids, torch.full((16,), 10.0 + r))
    sampler.flush_updates(timeout=10.0)
    for j, k in zip(b.shard_ids.tolist(), b.keys.tolist()):
        assert shards[j].read(np.array([k]))[1][0] == pytest.approx(12.0)
    assert sampler.updates_sent == 48
    sampler.close()


class FlakyClient(LocalShardClient):
    """A real local shard whose sample calls fail while ``broken`` (an actor that died)."""

    broken = False

    def sample_async(self, n, n_fresh=0, min_policy_version=None):
        if self.broken:
            raise ConnectionError("actor died")
        return super().sample_async(n, n_fresh, min_policy_version)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_failing_shard_is_reported_once_then_skipped_until_replaced(prefetch):
    c, shards, _ = make_shards(sizes=(8, 8))
    flaky = FlakyClient(shards[1])
    flaky.broken = True
    sampler = ReplaySampler([LocalShardClient(shards[0]), flaky], c, batch_size=16, prefetch=prefetch, seed=0)
    with pytest.raises(ReplayShardError, match=r"shard 1.*actor died"):
        for _ in range(20):  # the first batch(es) may not need shard 1
            sampler.next_batch(timeout=5.0)
    for _ in range(3):
        assert sampler.next_batch(timeout=5.0).shard_ids.eq(0).all()
    sampler.update_priorities(torch.tensor([0]), torch.tensor([1]), torch.tensor([2.0]))
    sampler.replace_client(1, LocalShardClient(shards[1]))
    seen = set()
    for _ in range(10):
        seen |= set(sampler.next_batch(timeout=5.0).shard_ids.tolist())
    assert seen == {0, 1}
    sampler.close()
    # Synchronously the update for the down shard is dropped; the prefetch thread may send it after the swap.
    assert sampler.updates_dropped + sampler.updates_sent == 1
    if prefetch == 0:
        assert sampler.updates_dropped == 1


def test_close_stops_the_prefetch_thread_and_later_calls_fail_clearly():
    c, shards, _ = make_shards(sizes=(8,))
    sampler = ReplaySampler([LocalShardClient(shards[0])], c, batch_size=4, prefetch=2, seed=0)
    thread = sampler._thread
    sampler.next_batch(timeout=5.0)
    sampler.close()
    assert thread is not None and not thread.is_alive()
    sampler.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        for _ in range(5):  # batches already prefetched may still be handed out
            sampler.next_batch(timeout=0.2)
