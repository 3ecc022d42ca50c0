"""SumTree: invariants under random operation sequences (hypothesis) and exact sampling frequencies."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from distrl.replay.sumtree import SumTree

capacities = st.integers(min_value=1, max_value=70)


@st.composite
def op_sequences(draw):
    cap = draw(capacities)
    ops = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["update", "update", "update", "set_all"]))
        if kind == "update":
            n = draw(st.integers(0, cap + 3))
            idx = draw(st.lists(st.integers(0, cap - 1), min_size=n, max_size=n))
            vals = draw(
                st.lists(st.one_of(st.just(0.0), st.floats(1e-6, 1e6, allow_nan=False)), min_size=n, max_size=n)
            )
            ops.append(("update", np.array(idx, dtype=np.int64), np.array(vals)))
        else:
            vals = draw(st.lists(st.floats(0.0, 1e3, allow_nan=False), min_size=cap, max_size=cap))
            ops.append(("set_all", None, np.array(vals)))
    return cap, ops


@settings(max_examples=40, deadline=None)
@given(op_sequences(), st.integers(0, 2**31 - 1), st.sampled_from([2, 3, 4, 32]))
def test_sumtree_matches_reference_under_random_ops(case, seed, fanout):
    cap, ops = case
    tree = SumTree(cap, fanout=fanout)
    ref = np.zeros(cap)
    for kind, idx, vals in ops:
        if kind == "update":
            tree.update(idx, vals)
            for i, v in zip(idx, vals):  # last write wins
                ref[i] = v
        else:
            tree.set_all(vals)
            ref[:] = vals
        tree.check_invariants()
        np.testing.assert_array_equal(tree.values(), ref)
        assert tree.total == pytest.approx(ref.sum(), rel=1e-12, abs=1e-300)
    if ref.sum() > 0:
        rng = np.random.default_rng(seed)
        # Prefix-sum search agrees with a cumsum/searchsorted reference away from segment borders.
        cum = np.cumsum(ref)
        u = rng.random(200) * tree.total
        border = np.min(np.abs(u[:, None] - cum[None, :]), axis=1) < 1e-9 * max(cum[-1], 1.0)
        expect = np.searchsorted(cum, u, side="right")
        got = tree.find(u)
        np.testing.assert_array_equal(got[~border], expect[~border])
        # Sampling never returns a zero-mass slot.
        s = tree.sample_stratified(64, rng)
        assert np.all(ref[s] > 0)
        assert s.min() >= 0 and s.max() < cap


@pytest.mark.parametrize("fanout", [2, 3, 32])
def test_find_handles_query_at_total_and_zero_mass_tails(fanout):
    tree = SumTree(8, fanout=fanout)
    tree.update(np.array([2, 3]), np.array([1.0, 2.0]))
    # u at/just below the total and at exact borders must land on a positive slot.
    got = tree.find(np.array([0.0, 1.0, np.nextafter(3.0, 0), 3.0]))
    np.testing.assert_array_equal(got, [2, 3, 3, 3])


def test_update_rejects_bad_input():
    tree = SumTree(4)
    with pytest.raises(ValueError, match="out of range"):
        tree.update(np.array([4]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        tree.update(np.array([0]), np.array([np.nan]))
    with pytest.raises(ValueError, match="finite"):
        tree.update(np.array([0]), np.array([-1.0]))
    with pytest.raises(ValueError, match="indices"):
        tree.update(np.array([0, 1]), np.array([1.0]))
    with pytest.raises(ValueError, match="empty"):
        tree.find(np.array([0.0]))


@pytest.mark.parametrize("fanout", [2, 5, 32])
def test_stratified_sampling_frequencies_match_masses(fanout):
    rng = np.random.default_rng(1)
    cap = 37
    mass = rng.gamma(0.7, size=cap)
    mass[[3, 17]] = 0.0
    tree = SumTree(cap, fanout=fanout)
    tree.update(np.arange(cap), mass)
    counts = np.zeros(cap)
    for _ in range(400):
        np.add.at(counts, tree.sample_stratified(64, rng), 1)
    p = mass / mass.sum()
    assert counts[[3, 17]].sum() == 0
    pos = p > 0
    _, pval = stats.chisquare(counts[pos], counts.sum() * p[pos])
    assert pval > 1e-3, pval


def test_no_drift_after_many_updates():
    rng = np.random.default_rng(2)
    tree = SumTree(1000, fanout=8)
    ref = np.zeros(1000)
    for _ in range(300):
        idx = rng.integers(0, 1000, 64)
        v = rng.random(64) * 10 ** rng.uniform(-3, 3)
        tree.update(idx, v)
        for i, x in zip(idx, v):
            ref[i] = x
    tree.check_invariants()
    assert tree.total == pytest.approx(ref.sum(), rel=1e-12)
