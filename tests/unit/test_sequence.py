"""Table-driven sequence cutting (ARCHITECTURE convention 13): integer streams in, expected sequences out.

Each row drives a SequenceWriter over B=2 slots for ``steps`` steps. Slot b's observation at step t is
``100 * b + t`` (so order and slot mixing are visible), its core state ``n`` counts steps since its episode
started (what an RNN core would need reset), and ``ends[b]`` lists the steps whose action ended an episode
("term" or "trunc"). Expected sequences are computed from first principles and compared field by field.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import Tensor

from distrl.actors import sequence
from distrl.actors.sequence import SequenceWriter
from distrl.config import ReplayConfig
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.replay import ReplayShard
from distrl.replay.testing import example_trajectory, random_trajectory
from distrl.types import Trajectory, per_step

SPEC = EnvSpec(name="ints", obs={"x": ArraySpec((1,), np.dtype(np.int64))}, num_actions=3, family="fake")
B = 2

CASES = [
    dict(name="no_overlap", burn_in=0, length=4, period=4, steps=12, ends={}),
    dict(name="half_overlap", burn_in=0, length=4, period=2, steps=11, ends={}),
    dict(name="burn_in_with_overlap", burn_in=2, length=4, period=4, steps=14, ends={}),
    dict(name="period_1", burn_in=0, length=3, period=1, steps=7, ends={}),
    dict(name="done_mid_unroll", burn_in=0, length=4, period=4, steps=8, ends={0: {1: "term"}}),
    dict(name="trunc_vs_term", burn_in=0, length=4, period=2, steps=10,
         ends={0: {2: "trunc", 5: "term"}, 1: {3: "term"}}),
    dict(name="done_on_last_step", burn_in=0, length=4, period=4, steps=8,
         ends={0: {3: "term"}, 1: {3: "trunc"}}),
    dict(name="done_on_first_step_burn_in", burn_in=1, length=3, period=2, steps=9,
         ends={0: {0: "term", 2: "trunc"}, 1: {4: "term"}}),
    dict(name="back_to_back_ends", burn_in=0, length=5, period=5, steps=10,
         ends={0: {1: "term", 2: "term", 3: "trunc"}}),
    dict(name="short_stream_emits_nothing", burn_in=2, length=4, period=3, steps=5, ends={}),
]


def _flags(ends, b, t):
    kind = ends.get(b, {}).get(t)
    return kind == "term", kind == "trunc"


def _steps_since_start(ends, b, t):
    """n for obs[t] of slot b: steps since the episode containing obs[t] started."""
    starts = [e + 1 for e in ends.get(b, {}) if e < t]
    return t - max(starts, default=0)


def _run(case):
    w = SequenceWriter(
        SPEC, B, burn_in=case["burn_in"], length=case["length"], period=case["period"], actor_id=7
    )
    ends = case["ends"]

    def obs_at(t):
        return {"x": np.array([[100 * b + t] for b in range(B)], dtype=np.int64)}

    def state_at(t):
        return {"n": torch.tensor([_steps_since_start(ends, b, t) for b in range(B)])}

    w.begin(obs_at(0), state_at(0))
    out = []
    for t in range(case["steps"]):
        flags = [_flags(ends, b, t) for b in range(B)]
        nxt = state_at(t + 1)
        traj = w.add(
            action=torch.full((B,), t % 3),
            behaviour_logits=torch.full((B, 3), float(t)),
            reward=np.full(B, float(t), dtype=np.float32),
            terminated=np.array([f[0] for f in flags]),
            truncated=np.array([f[1] for f in flags]),
            truncation_value=np.full(B, 1000.0 + t, dtype=np.float32),  # kept only where truncated
            duration=np.full(B, t / 1000.0, dtype=np.float32),
            next_obs=obs_at(t + 1),
            next_state=nxt,
            policy_version=t // 4,
            env_step=t * B,
            episodic_bonus=np.full(B, 0.5 * t, dtype=np.float32),
        )
        nxt["n"].add_(1000)  # an agent that reuses its state buffers must not corrupt stored states
        if traj is not None:
            out.append((t, traj))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_sequence_cutting(case):
    total, period, steps, ends = case["burn_in"] + case["length"], case["period"], case["steps"], case["ends"]
    emitted = _run(case)
    # Emission schedule: one sequence per `period` steps once `total` steps exist, at the step completing it.
    starts = list(range(0, steps - total + 1, period)) if steps >= total else []
    assert [t for t, _ in emitted] == [s + total - 1 for s in starts]
    for s, (_, traj) in zip(starts, emitted):
        assert traj.T == total and traj.B == B
        ts = np.arange(s, s + total)
        for b in range(B):
            assert traj.obs["x"][:, b, 0].tolist() == [100 * b + t for t in range(s, s + total + 1)]
            term = [_flags(ends, b, t)[0] for t in ts]
            trunc = [_flags(ends, b, t)[1] for t in ts]
            assert traj.terminated[:, b].tolist() == term
            assert traj.truncated[:, b].tolist() == trunc
            expect_tv = [1000.0 + t if tr else 0.0 for t, tr in zip(ts, trunc)]
            assert traj.truncation_value[:, b].tolist() == expect_tv
            # Core state: the state for obs[0], already reset if obs[0] starts an episode.
            assert int(traj.core_state["n"][b]) == _steps_since_start(ends, b, s)
            # The learner's reset mask reproduces exactly the actor's state resets inside the sequence.
            mask = traj.reset_mask()[:, b].tolist()
            assert mask[0] is False
            assert mask[1:] == [_steps_since_start(ends, b, t) == 0 for t in range(s + 1, s + total + 1)]
        assert traj.action[:, 0].tolist() == [t % 3 for t in ts]
        assert traj.reward[:, 1].tolist() == [float(t) for t in ts]
        assert traj.behaviour_logits.shape == (total, B, 3)
        assert traj.behaviour_logits[:, 0, 2].tolist() == [float(t) for t in ts]
        assert torch.allclose(traj.duration[:, 1], torch.tensor(ts / 1000.0, dtype=torch.float32))
        assert traj.episodic_bonus[:, 0].tolist() == [0.5 * t for t in ts]
        assert traj.valid.all()
        assert traj.policy_version.tolist() == [s // 4] * B
        assert traj.env_step.tolist() == [s * B] * B
        assert traj.actor_id.tolist() == [7] * B
        assert traj.obs["x"].dtype == torch.int64 and traj.action.dtype == torch.int64
        assert traj.reward.dtype == torch.float32 and traj.terminated.dtype == torch.bool


def test_consecutive_sequences_share_the_overlap():
    emitted = [traj for _, traj in _run(dict(burn_in=2, length=4, period=2, steps=12, ends={0: {4: "term"}}))]
    for a, b in itertools.pairwise(emitted):
        overlap = a.T - 2
        assert torch.equal(a.obs["x"][2:], b.obs["x"][: overlap + 1])
        assert torch.equal(a.terminated[2:], b.terminated[:overlap])


def test_writer_rejects_bad_use():
    with pytest.raises(ValueError, match="period"):
        SequenceWriter(SPEC, B, burn_in=1, length=2, period=4)
    with pytest.raises(ValueError, match="length"):
        SequenceWriter(SPEC, B, burn_in=0, length=0, period=1)
    w = SequenceWriter(SPEC, B, burn_in=0, length=2, period=2)
    with pytest.raises(RuntimeError, match="before begin"):
        w.add(action=np.zeros(B), behaviour_logits=np.zeros((B, 3)), reward=np.zeros(B), terminated=np.zeros(B, bool),
              truncated=np.zeros(B, bool), truncation_value=np.zeros(B), duration=np.zeros(B),
              next_obs={"x": np.zeros((B, 1), np.int64)}, next_state={}, policy_version=0, env_step=0)


def _step_kw(t: int, **extra):
    """The required step fields of step t for B slots (no episode ends)."""
    return dict(action=np.full(B, t % 3), behaviour_logits=np.zeros((B, 3), np.float32),
                reward=np.full(B, float(t), np.float32), terminated=np.zeros(B, bool), truncated=np.zeros(B, bool),
                truncation_value=np.zeros(B, np.float32), duration=np.full(B, 1e-3, np.float32),
                next_obs={"x": np.full((B, 1), t + 1, np.int64)}, next_state={"n": torch.zeros(B)},
                policy_version=0, env_step=t * B, **extra)


def test_fields_with_defaults_may_be_left_out_and_bad_names_are_refused():
    w = SequenceWriter(SPEC, B, burn_in=0, length=2, period=2)
    w.begin({"x": np.zeros((B, 1), np.int64)}, {"n": torch.zeros(B)})
    w.add(**_step_kw(0))  # no episodic_bonus, no valid
    traj = w.add(**_step_kw(1, episodic_bonus=None, valid=np.array([True, False])))
    assert traj is not None and traj.episodic_bonus.tolist() == [[0.0, 0.0]] * 2
    assert traj.valid.tolist() == [[True, True], [True, False]]
    with pytest.raises(TypeError, match=r"unknown step field\(s\) \['logits'\]"):
        w.add(**{**_step_kw(2), "logits": np.zeros((B, 3))})  # the old name for behaviour_logits
    kw = _step_kw(2)
    del kw["duration"]
    with pytest.raises(TypeError, match="missing required step field 'duration'"):
        w.add(**kw)
    with pytest.raises(TypeError, match="missing required step field 'reward'"):
        w.add(**{**_step_kw(2), "reward": None})
    assert w.steps == 2  # refused calls record nothing


@dataclass(frozen=True)
class _TrajectoryPlus(Trajectory):
    """Trajectory with two test-only per-step fields, declared as a new field is declared in types.py."""

    arrival_time: Tensor = field(metadata=per_step(np.float64, default=-1.0))  # [T, B]
    aux: Tensor = field(metadata=per_step(np.int16, shape=("A", 2)))  # [T, B, A, 2], required


def test_a_new_step_field_flows_from_writer_through_replay_without_code_changes(monkeypatch):
    """Declaring a step field is all it takes: the writer allocates, fills and emits it; flatten, batch_major,
    replay storage and from_batch_major carry it; the test builder fills it."""
    assert [f.name for f in _TrajectoryPlus.step_fields()][-2:] == ["arrival_time", "aux"]
    assert "arrival_time" not in Trajectory.time_fields() and _TrajectoryPlus.is_time_leaf("aux")
    monkeypatch.setattr(sequence, "Trajectory", _TrajectoryPlus)  # the writer's Trajectory has the new fields
    w = SequenceWriter(SPEC, B, burn_in=1, length=3, period=2)
    w.begin({"x": np.zeros((B, 1), np.int64)}, {"n": torch.zeros(B)})
    emitted = []
    for t in range(8):
        aux = np.arange(B * 3 * 2, dtype=np.int16).reshape(B, 3, 2) + t
        arrival = {"arrival_time": np.full(B, 1.7e9 + t + 0.25)} if t % 2 else {}  # even steps: the default
        traj = w.add(**_step_kw(t, aux=torch.from_numpy(aux), **arrival))
        if traj is not None:
            emitted.append(traj)
    with pytest.raises(TypeError, match="missing required step field 'aux'"):
        w.add(**_step_kw(8))
    assert len(emitted) == 3
    traj = emitted[-1]  # steps 4..7
    assert isinstance(traj, _TrajectoryPlus) and traj.T == 4
    assert traj.arrival_time.dtype == torch.float64 and traj.aux.dtype == torch.int16
    assert traj.arrival_time[:, 1].tolist() == [-1.0, 1.7e9 + 5.25, -1.0, 1.7e9 + 7.25]  # float64 kept
    assert traj.aux.shape == (4, B, 3, 2) and traj.aux[:, 1, 2, 1].tolist() == [4 + 11 + t for t in range(4)]

    # Trajectory helpers: flatten / index_batch / concat keep the time axis of the new fields.
    assert "arrival_time" in traj.flatten() and "aux" in traj.flatten()
    back = _TrajectoryPlus.concat(list(traj.unbind_batch()))
    assert torch.equal(back.aux, traj.aux) and torch.equal(back.arrival_time, traj.arrival_time)
    bm = traj.batch_major()
    assert bm["arrival_time"].shape == (B, 4) and bm["aux"].shape == (B, 4, 3, 2)

    # Replay: insert (batch-major storage), read back, and rebuild the time-major trajectory.
    shard = ReplayShard(ReplayConfig(capacity=8, min_size=1, samples_per_insert=0.0), seed=0)
    built = random_trajectory(4, B, obs={"x": ((1,), np.int64)}, core_state={"n": ((), np.float32)},
                              trajectory_type=_TrajectoryPlus, seed=1)  # the builder fills the new fields too
    assert (built.arrival_time == -1.0).all() and built.aux.shape == (4, B, 3, 2)
    for tr in (traj, built):
        keys = shard.insert(tr).keys
        leaves, _ = shard.read(keys)
        assert leaves["arrival_time"].dtype == np.float64 and leaves["aux"].shape == (B, 4, 3, 2)
        out = _TrajectoryPlus.from_batch_major({k: torch.from_numpy(v) for k, v in leaves.items()}).flatten()
        for leaf, v in tr.flatten().items():
            assert torch.equal(out[leaf], v), leaf
    s = shard.sample(6)
    assert _TrajectoryPlus.from_batch_major(s.torch_leaves()).arrival_time.shape == (4, 6)


def test_random_trajectory_is_valid_and_has_every_step_field():
    T, Bn, A = 7, 16, 4
    state = {"h": torch.ones(Bn, 5)}
    traj = random_trajectory(T, Bn, num_actions=A, obs={"x": ((3,), np.float32), "g": ((2,), np.uint8)},
                             core_state=state, done_prob=0.3, policy_version=9, seed=3)
    for f in Trajectory.step_fields():
        v = getattr(traj, f.name)
        assert v.dtype == f.torch_dtype and v.shape == (T, Bn, *f.shape_for({"A": A})), f.name
    assert traj.obs["x"].shape == (T + 1, Bn, 3) and traj.obs["g"].dtype == torch.uint8
    assert traj.core_state["h"] is state["h"] and traj.policy_version.tolist() == [9] * Bn
    assert not (traj.terminated & traj.truncated).any() and traj.terminated.any() and traj.truncated.any()
    assert (traj.truncation_value[~traj.truncated] == 0).all() and (traj.truncation_value[traj.truncated] != 0).all()
    assert ((traj.action >= 0) & (traj.action < A)).all() and traj.valid.all()
    assert (traj.duration >= 0).all() and (traj.episodic_bonus >= 0).all()
    assert torch.equal(random_trajectory(T, Bn, seed=3).action, random_trajectory(T, Bn, seed=3).action)
    assert torch.equal(random_trajectory(reward=torch.zeros(5, 4)).reward, torch.zeros(5, 4))
    with pytest.raises(TypeError, match="unknown step field"):
        random_trajectory(arrival_time=torch.zeros(5, 4))
    ex = example_trajectory(T=3, B=2, start=5)  # built on random_trajectory, keeps its identifiable rows
    assert ex.reward[:, 1].tolist() == [6.0] * 3 and ex.env_step.tolist() == [5, 6] and not ex.done().any()
