"""Learner: one V-trace step on synthetic sequences, priorities, consumed steps, checkpoints, extras."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from distrl.cli import prepare_run
from distrl.config import ConfigError, load_config
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.learners.extras import EXTRAS, LearnerExtra, register_extra
from distrl.learners.learner import Learner, load_checkpoint_file
from distrl.replay.testing import random_trajectory
from distrl.types import ReplaySample, Trajectory

SPEC = EnvSpec(name="fake:test", obs={"x": ArraySpec((3,), np.dtype(np.float32))}, num_actions=4, family="fake")


def _cfg(*over):
    return load_config(None, ["model.encoder=mlp", "model.hidden_size=16", "sequence.length=6",
                              "sequence.burn_in=2", "sequence.period=4", "learner.batch_size=5",
                              "replay.min_size=5", *over])


def _traj(learner: Learner, B: int = 5, version: int = 0, seed: int = 0) -> Trajectory:
    return random_trajectory(learner.cfg.sequence.total, B, num_actions=4, obs={"x": ((3,), np.float32)},
                             core_state=learner.agent.initial_state(B), policy_version=version, seed=seed)


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


def test_bfloat16_learner_keeps_float32_weights_and_optimizer_state():
    """learner.precision=bfloat16: the encoder computes in bfloat16 inside the update only; weights, gradients
    and Adam's moments stay float32, and the published weights are float32."""
    learner = Learner(_cfg("learner.precision=bfloat16"), SPEC, device="cpu")
    assert learner.agent.unroll_dtype == torch.bfloat16
    before = [p.detach().clone() for p in learner.agent.parameters()]
    out = learner.step(_sample(_traj(learner)))
    assert all(np.isfinite(v) for v in out.metrics.values())
    assert all(not torch.equal(a, b) for a, b in zip(before, learner.agent.parameters()))
    assert all(p.dtype == torch.float32 for p in learner.agent.parameters())
    assert all(v.dtype == torch.float32 for s in learner.optimizer.state.values() for k, v in s.items()
               if k != "step")
    assert all(v.dtype == np.float32 for v in learner.weights().policy.values())
    with pytest.raises(ConfigError, match="precision"):
        _cfg("learner.precision=float16")


def test_fresh_steps_are_counted_as_consumed_and_replayed_ones_are_not():
    learner = Learner(_cfg(), SPEC, device="cpu")
    out = learner.step(_sample(_traj(learner), fresh=True))
    assert out.env_steps == 5 * 6 == learner.env_steps
    out = learner.step(_sample(_traj(learner), fresh=False))
    assert out.env_steps == 0 and learner.env_steps == 30 and learner.samples_trained == 10


# ---- learner extras: a toy auxiliary module added through the registry alone --------------------------------
class RewardModel(LearnerExtra):
    """Toy extra: predicts each step's reward from the observation, with its own optimizer group (lr 0.05),
    a running-mean buffer (a normaliser) and weights for the actors."""

    def __init__(self, cfg, spec, agent):
        super().__init__()
        self.head = torch.nn.Linear(3, 1)
        self.register_buffer("reward_mean", torch.zeros(()))

    def param_groups(self):
        return [{"params": list(self.head.parameters()), "lr": 0.05}]

    def loss(self, batch):
        pred = self.head(batch.traj.obs["x"][:-1]).squeeze(-1)  # [T, B]
        self.reward_mean.mul_(0.9).add_(0.1 * batch.traj.reward.mean())
        err = ((pred - batch.traj.reward) ** 2 * batch.valid).sum() / batch.valid.sum().clamp(min=1)
        return err, {"mse": float(err.detach())}

    def actor_weights(self):
        return self.head.state_dict()


@pytest.fixture
def reward_model():
    register_extra("test_reward_model", RewardModel)
    yield "test_reward_model"
    EXTRAS.pop("test_reward_model", None)


def test_an_extra_is_trained_checkpointed_restored_and_published(reward_model, tmp_path):
    cfg = _cfg(f"learner.extras=[{reward_model}]")
    learner = Learner(cfg, SPEC, device="cpu")
    extra = learner.extras[reward_model]
    assert any(g["lr"] == 0.05 for g in learner.optimizer.param_groups), "the extra's optimizer group is used"
    # A fixed batch whose reward is a linear function of the observation: the extra's loss must fall.
    traj = _traj(learner)
    traj = dataclasses.replace(traj, reward=traj.obs["x"][:-1] @ torch.tensor([0.5, -0.3, 0.2]))
    first = learner.step(_sample(traj)).metrics[f"extras/{reward_model}/loss"]
    for _ in range(40):
        last = learner.step(_sample(traj)).metrics[f"extras/{reward_model}/loss"]
    assert last < 0.5 * first, (first, last)
    assert float(extra.reward_mean) != 0.0

    w = learner.weights()
    assert w.version == learner.version == 41
    assert set(w.extras) == {reward_model}
    # published as NumPy copies (an env actor reads them without torch), not views of the trained parameters
    assert isinstance(w.extras[reward_model]["weight"], np.ndarray)
    np.testing.assert_array_equal(w.extras[reward_model]["weight"], extra.head.weight.detach().numpy())
    assert set(w.policy) == set(learner.agent.state_dict())
    assert all(isinstance(v, np.ndarray) and v.flags.owndata for v in w.policy.values())

    path = learner.save_checkpoint(tmp_path / "learner.pt")
    restored = Learner(cfg, SPEC, device="cpu")
    restored.load_checkpoint(path)
    r_extra = restored.extras[reward_model]
    torch.testing.assert_close(r_extra.head.weight, extra.head.weight)
    assert float(r_extra.reward_mean) == float(extra.reward_mean)
    # The optimizer state (the extra's group included) came back: both take the same next step.
    s = _sample(_traj(learner, seed=5))
    learner.step(s)
    restored.step(s)
    torch.testing.assert_close(r_extra.head.weight, extra.head.weight)

    # A checkpoint without the extra is refused by a learner that has it, and the reverse.
    plain = Learner(_cfg(), SPEC, device="cpu")
    state = restored.state_dict()
    state["fingerprint"] = plain.cfg.fingerprint()
    with pytest.raises(ValueError, match="extras"):
        plain.load_state_dict(state)


def test_unknown_extra_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown extra 'nope'"):
        Learner(_cfg("learner.extras=[nope]"), SPEC, device="cpu")
    # `distrl train` refuses it while setting up the run: no run directory is left behind
    with pytest.raises(ConfigError, match=r"unknown extra 'nope'.*register_extra"):
        prepare_run(None, [f"runtime.run_dir={tmp_path}", "learner.extras=[nope]"])
    assert not any(tmp_path.iterdir())


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


def test_auto_precision_is_bfloat16_only_where_it_is_native(monkeypatch):
    """learner.precision=auto: bfloat16 where the device multiplies it natively, float32 elsewhere (emulated
    bfloat16 made a Pong update 6.4x slower on a CPU without AVX512-BF16)."""
    import distrl.learners.learner as learner_mod

    cpu = torch.device("cpu")
    assert learner_mod.learner_precision("float32", cpu) == "float32"
    assert learner_mod.learner_precision("bfloat16", cpu) == "bfloat16"  # as asked, even where emulated
    for native in (False, True):
        monkeypatch.setattr(learner_mod, "native_bf16", lambda device, native=native: native)
        want = "bfloat16" if native else "float32"
        assert learner_mod.learner_precision("auto", cpu) == want
        learner = Learner(_cfg("learner.precision=auto"), SPEC, device="cpu")
        assert learner.precision == want and learner.agent.unroll_dtype == getattr(torch, want)
        assert all(np.isfinite(v) for v in learner.step(_sample(_traj(learner))).metrics.values())
