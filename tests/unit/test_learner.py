"""Learner: one V-trace step on synthetic sequences, priorities, policy-lag filtering, checkpoints."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from distrl.config import ConfigError, load_config
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.learners.learner import Learner, load_checkpoint_file
from distrl.types import ReplaySample, Trajectory

SPEC = EnvSpec(name="fake:test", obs={"x": ArraySpec((3,), np.dtype(np.float32))}, num_actions=4, family="fake")


def _cfg(*over):
    return load_config(None, ["model.encoder=mlp", "model.hidden_size=16", "sequence.length=6",
                              "sequence.burn_in=2", "sequence.period=4", "learner.batch_size=5",
                              "replay.min_size=5", *over])


def _traj(learner: Learner, B: int = 5, version: int = 0, seed: int = 0) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    L = learner.cfg.sequence.total
    done = torch.rand(L, B, generator=g) < 0.15
    term = done & (torch.rand(L, B, generator=g) < 0.5)
    return Trajectory(
        obs={"x": torch.randn(L + 1, B, 3, generator=g)},
        action=torch.randint(0, 4, (L, B), generator=g),
        reward=torch.randn(L, B, generator=g),
        terminated=term,
        truncated=done & ~term,
        truncation_value=torch.randn(L, B, generator=g) * (done & ~term),
        behaviour_logits=torch.randn(L, B, 4, generator=g),
        episodic_bonus=torch.zeros(L, B),
        duration=torch.full((L, B), 1e-3),
        valid=torch.ones(L, B, dtype=torch.bool),
        core_state=learner.agent.initial_state(B),
        policy_version=torch.full((B,), version, dtype=torch.int64),
        actor_id=torch.zeros(B, dtype=torch.int64),
        env_step=torch.zeros(B, dtype=torch.int64),
    )


def _sample(traj: Trajectory, fresh: bool = False) -> ReplaySample:
    B = traj.B
    return ReplaySample(traj=traj, keys=torch.arange(B), shard_ids=torch.zeros(B, dtype=torch.int64),
                        weights=torch.ones(B), probs=torch.full((B,), 1.0 / B, dtype=torch.float64),
                        fresh=torch.full((B,), fresh))


def test_step_updates_parameters_and_returns_priorities():
    learner = Learner(_cfg(), SPEC, device="cpu")
    before = [p.detach().clone() for p in learner.agent.parameters()]
    out = learner.step(_sample(_traj(learner)))
    assert out.version == 1 == learner.version
    assert out.priorities.shape == (5,) and np.all(out.priorities >= 0) and np.all(np.isfinite(out.priorities))
    assert all(np.isfinite(v) for v in out.metrics.values())
    changed = [not torch.equal(a, b) for a, b in zip(before, learner.agent.parameters())]
    assert all(changed), "every parameter should receive a gradient"


def test_stale_fresh_rows_are_dropped_but_replayed_rows_are_not():
    learner = Learner(_cfg("learner.max_policy_lag=3"), SPEC, device="cpu")
    learner.version = 10
    out = learner.step(_sample(_traj(learner, version=2), fresh=True))
    assert out.metrics["learner/dropped_stale"] == 5 and out.env_steps == 0
    out = learner.step(_sample(_traj(learner, version=9), fresh=True))
    assert out.metrics["learner/dropped_stale"] == 0 and out.env_steps == 5 * 6
    out = learner.step(_sample(_traj(learner, version=2), fresh=False))
    assert out.metrics["learner/dropped_stale"] == 0


def test_wrong_sequence_length_is_refused():
    learner = Learner(_cfg(), SPEC, device="cpu")
    other = Learner(_cfg("sequence.length=7"), SPEC, device="cpu")
    with pytest.raises(ValueError, match="burn_in \\+ length"):
        learner.step(_sample(_traj(other)))


def test_checkpoint_round_trip_and_refusals(tmp_path):
    learner = Learner(_cfg(), SPEC, device="cpu")
    learner.step(_sample(_traj(learner)))
    path = learner.save_checkpoint(tmp_path / "ckpt" / "learner.pt", extra={"env_steps_total": 123})
    assert not list(path.parent.glob("*.tmp")), "no temp file left behind"

    restored = Learner(_cfg(), SPEC, device="cpu")
    extra = restored.load_checkpoint(path)
    assert extra == {"env_steps_total": 123} and restored.version == 1
    for a, b in zip(learner.agent.state_dict().values(), restored.agent.state_dict().values()):
        assert torch.equal(a, b)
    # Same next step from both: optimizer state was restored too.
    s = _sample(_traj(learner, seed=3))
    learner.step(s)
    restored.step(s)
    for a, b in zip(learner.agent.parameters(), restored.agent.parameters()):
        torch.testing.assert_close(a, b)

    with pytest.raises(ConfigError, match="different config"):
        Learner(_cfg("learner.lr=1e-2"), SPEC, device="cpu").load_checkpoint(path)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a valid distrl checkpoint"):
        load_checkpoint_file(truncated)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(ValueError, match="not a valid distrl checkpoint"):
        load_checkpoint_file(evil)
