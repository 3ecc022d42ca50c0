"""ReplayShard: storage layout, schema checks, FIFO keys, priorities, fresh rows, core-state downcast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from distrl.config import ReplayConfig
from distrl.replay import ReplayShard, Status, beta_at, importance_weights, sequence_priority
from distrl.replay.testing import example_trajectory


def cfg(**kw) -> ReplayConfig:
    base = dict(capacity=10, min_size=1, samples_per_insert=0.0, alpha=0.6, epsilon=1e-6)
    base.update(kw)
    return ReplayConfig(**base)


def test_insert_then_sample_returns_the_stored_rows_with_dtypes_kept():
    shard = ReplayShard(cfg(), seed=0)
    traj = example_trajectory(T=5, B=4, obs={"img": ((3, 2), np.uint8), "g": ((4,), np.int16)}, start=7)
    res = shard.insert(traj)
    assert res.ok and res.keys.tolist() == [0, 1, 2, 3]
    s = shard.sample(16)
    assert s.ok and s.num_rows == 16 and not s.fresh.any()
    out = s.trajectory()
    assert out.obs["img"].dtype == torch.uint8 and out.obs["g"].dtype == torch.int16
    assert out.obs["img"].shape == (6, 16, 3, 2) and out.action.shape == (5, 16)
    # Every sampled row is exactly the inserted row with that key (rows are identified by env_step).
    rows = s.keys
    assert torch.equal(out.env_step, traj.env_step[rows])
    assert torch.equal(out.obs["img"], traj.obs["img"][:, rows])
    assert torch.equal(out.behaviour_logits, traj.behaviour_logits[:, rows])
    assert torch.equal(out.core_state["h"], traj.core_state["h"][rows])
    # Storage is contiguous per leaf and preallocated for the full capacity.
    arr = shard._storage.arrays["obs/img"]
    assert arr.shape == (10, 6, 3, 2) and arr.dtype == np.uint8 and arr.flags.c_contiguous


def test_fifo_eviction_and_keys_across_the_ring_wrap():
    shard = ReplayShard(cfg(capacity=10), seed=0)
    for i in range(4):
        shard.insert(example_trajectory(B=4, start=4 * i))  # 16 rows into 10 slots
    assert len(shard) == 10
    np.testing.assert_array_equal(shard.keys(), np.arange(6, 16))
    leaves, _ = shard.read(np.arange(6, 16))
    np.testing.assert_array_equal(leaves["env_step"], np.arange(6, 16))
    s = shard.sample(200)
    assert s.keys.min() >= 6 and s.keys.max() <= 15
    np.testing.assert_array_equal(s.leaves["env_step"], s.keys)  # key <-> row mapping survives the wrap
    with pytest.raises(KeyError):
        shard.read(np.array([5]))


@pytest.mark.parametrize(
    ("change", "leaf"),
    [
        (dict(obs={"x": ((3,), np.uint8)}), "obs/x"),
        (dict(obs={"x": ((2,), np.int16)}), "obs/x"),
        (dict(obs={"x": ((2,), np.uint8), "y": ((1,), np.uint8)}), "obs/y"),
        (dict(core_state={"h": ((9,), np.float32)}), "core_state/h"),
        (dict(num_actions=4), "behaviour_logits"),
        (dict(T=6), "action"),
    ],
)
def test_schema_mismatch_on_insert_names_the_leaf(change, leaf):
    shard = ReplayShard(cfg(), seed=0)
    shard.insert(example_trajectory())
    with pytest.raises(ValueError, match=leaf):
        shard.insert(example_trajectory(**change))
    assert len(shard) == 4  # nothing partial was written


def test_bad_priorities_and_oversized_batches_are_refused():
    shard = ReplayShard(cfg(capacity=3), seed=0)
    with pytest.raises(ValueError, match="capacity"):
        shard.insert(example_trajectory(B=4))
    with pytest.raises(ValueError, match="finite"):
        shard.insert(example_trajectory(B=2), priorities=np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="one per row"):
        shard.insert(example_trajectory(B=2), priorities=np.array([1.0]))
    assert len(shard) == 0


def test_new_rows_get_the_running_max_priority_unless_given():
    c = cfg(alpha=1.0, epsilon=0.0)
    shard = ReplayShard(c, seed=0)
    k0 = shard.insert(example_trajectory(B=2)).keys
    assert shard.read(k0)[1].tolist() == [1.0, 1.0]  # initial max priority is 1
    shard.update_priorities(k0, np.array([5.0, 0.5]))
    k1 = shard.insert(example_trajectory(B=2, start=2)).keys
    assert shard.read(k1)[1].tolist() == [5.0, 5.0]
    k2 = shard.insert(example_trajectory(B=2, start=4), priorities=np.array([2.0, -3.0])).keys
    assert shard.read(k2)[1].tolist() == [2.0, 3.0]  # |p|
    assert shard.stats().total_priority == pytest.approx(5.0 + 0.5 + 10.0 + 5.0)


def test_stale_generation_updates_are_ignored():
    shard = ReplayShard(cfg(capacity=4, alpha=1.0, epsilon=0.0), seed=0)
    old = shard.insert(example_trajectory(B=4)).keys  # keys 0..3 in slots 0..3
    shard.insert(example_trajectory(B=2, start=4))  # keys 4, 5 overwrite slots 0, 1
    applied = shard.update_priorities(np.concatenate([old, [99]]), np.array([7.0, 7.0, 7.0, 7.0, 7.0]))
    assert applied == 2  # only keys 2 and 3 are still stored; 0, 1 are an older generation, 99 never existed
    _, p = shard.read(np.array([4, 5, 2, 3]))
    assert p.tolist() == [1.0, 1.0, 7.0, 7.0]
    st = shard.stats()
    assert st.updates_applied == 2 and st.updates_ignored == 3


def test_within_shard_sampling_follows_p_alpha():
    c = cfg(capacity=20, alpha=0.7, epsilon=0.0)
    shard = ReplayShard(c, seed=3)
    keys = shard.insert(example_trajectory(B=20)).keys
    p = np.linspace(0.1, 4.0, 20)
    shard.update_priorities(keys, p)
    counts = np.zeros(20)
    for _ in range(150):
        s = shard.sample(64)
        np.testing.assert_allclose(s.probs, p[s.keys] ** 0.7 / (p**0.7).sum())
        np.add.at(counts, s.keys, 1)
    expect = p**0.7 / (p**0.7).sum()
    assert stats.chisquare(counts, counts.sum() * expect).pvalue > 1e-3


def test_sampling_prior_multiplies_the_mass_and_is_reported():
    c = cfg(capacity=4, alpha=1.0, epsilon=0.0)
    shard = ReplayShard(c, seed=0)
    shard.insert(example_trajectory(B=4), priorities=np.ones(4), prior=np.array([1.0, 1.0, 1.0, 5.0]))
    s = shard.sample(400)
    assert s.total_priority == pytest.approx(8.0)
    np.testing.assert_allclose(s.prior, np.where(s.keys == 3, 5.0, 1.0))
    assert 0.5 < np.mean(s.keys == 3) < 0.75  # expected 5/8


def test_fresh_rows_are_newest_first_served_once_and_stale_ones_dropped():
    shard = ReplayShard(cfg(capacity=12), seed=0)
    shard.insert(example_trajectory(B=4, start=0, policy_version=1))  # keys 0-3
    shard.insert(example_trajectory(B=4, start=4, policy_version=5))  # keys 4-7
    s = shard.sample(2, n_fresh=3)
    assert s.fresh.tolist() == [True, True, True, False, False]
    assert s.keys[:3].tolist() == [7, 6, 5]
    assert s.probs[:3].tolist() == [0.0, 0.0, 0.0] and np.all(s.probs[3:] > 0)
    s = shard.sample(0, n_fresh=10, min_policy_version=3)  # key 4 is fresh; 0-3 are too old
    assert s.keys.tolist() == [4]
    st = shard.stats()
    assert (st.fresh_served, st.fresh_dropped, st.fresh_pending) == (4, 4, 0)
    assert shard.sample(0, n_fresh=5).num_rows == 0  # nothing is handed out twice
    shard.insert(example_trajectory(B=4, start=8))  # keys 8-11
    shard.insert(example_trajectory(B=4, start=12))  # keys 12-15 evict 0-3 (already dropped)
    shard.insert(example_trajectory(B=4, start=16))  # keys 16-19 evict 4-7 (served)
    shard.insert(example_trajectory(B=4, start=20))  # evicts 8-11, never served
    st = shard.stats()
    assert st.fresh_evicted == 4 and st.fresh_pending == 12
    assert shard.sample(0, n_fresh=2).keys.tolist() == [23, 22]
    # Fresh rows are ordinary items: their priority can be updated.
    assert shard.update_priorities(np.array([23]), np.array([3.0])) == 1


def test_core_state_can_be_stored_in_float16():
    shard = ReplayShard(cfg(), seed=0, core_state_dtype="float16")
    traj = example_trajectory(B=4)
    shard.insert(traj)
    assert shard._storage.arrays["core_state/h"].dtype == np.float16
    assert shard._storage.arrays["behaviour_logits"].dtype == np.float32  # only core state is downcast
    s = shard.sample(8)
    out = s.trajectory()
    assert out.core_state["h"].dtype == torch.float32
    np.testing.assert_allclose(out.core_state["h"].numpy(), traj.core_state["h"][s.keys].numpy(), atol=2e-3, rtol=1e-3)


def test_sequence_priority_matches_numpy_reference():
    rng = np.random.default_rng(0)
    td = rng.normal(size=(7, 5))
    valid = rng.random((7, 5)) > 0.3
    valid[:, 4] = False
    got = sequence_priority(torch.tensor(np.abs(td)), torch.tensor(valid), eta=0.9).numpy()
    for b in range(5):
        v = np.abs(td[valid[:, b], b])
        want = 0.9 * v.max() + 0.1 * v.mean() if v.size else 0.0
        assert got[b] == pytest.approx(want)
    with pytest.raises(ValueError, match=r"\[T, B\]"):
        sequence_priority(torch.zeros(3), torch.ones(3, dtype=torch.bool), 0.9)


def test_importance_weights_and_beta_schedule():
    probs = np.array([0.5, 0.25, 0.125, 0.125])
    w = importance_weights(probs, size=4, beta=0.5)
    ref = (4 * probs) ** -0.5
    np.testing.assert_allclose(w, ref / ref.max())
    c = ReplayConfig(beta_start=0.4, beta_end=1.0, beta_steps=100)
    assert [beta_at(c, s) for s in (0, 50, 100, 1000)] == pytest.approx([0.4, 0.7, 1.0, 1.0])


def test_sample_before_min_size_reports_status_and_stats():
    shard = ReplayShard(cfg(min_size=5), seed=0)
    shard.insert(example_trajectory(B=4))
    s = shard.sample(3)
    assert s.status is Status.BELOW_MIN_SIZE and s.num_rows == 0 and s.size == 4
    assert "size 4" in s.message and s.stats.size == 4
