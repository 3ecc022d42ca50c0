"""The reconstruction loss against a NumPy reference, and the "reconstruction" learner extra in a real learner:
switched on by its cost, trained down on a fixed batch, its gradient reaching the encoder and the core, bad
configs refused by name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from distrl.config import ConfigError, load_config
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.learners.extra_names import enabled_extras
from distrl.learners.extras import LearnerBatch
from distrl.learners.learner import Learner
from distrl.losses import reconstruction_loss
from distrl.replay.testing import random_trajectory
from distrl.types import ReplaySample, Trajectory

OBS = {"room": ((2, 3, 3), np.int8), "pixels": ((4,), np.uint8), "x": ((3,), np.float32)}
SPEC = EnvSpec(name="fake:recon", obs={k: ArraySpec(s, np.dtype(d)) for k, (s, d) in OBS.items()},
               num_actions=4, family="fake")


def _reference(pred, target, sizes, mask):
    """The documented reduction, written out with loops."""
    T, B, _ = pred.shape
    total, per_leaf, n = 0.0, np.zeros(len(sizes)), 0
    for t in range(T):
        for b in range(B):
            if not mask[t, b]:
                continue
            n += 1
            start, errs = 0, []
            for i, s in enumerate(sizes):
                e = float(np.mean((pred[t, b, start:start + s] - target[t, b, start:start + s]) ** 2))
                errs.append(e)
                per_leaf[i] += e
                start += s
            total += float(np.mean(errs))
    return total / B, per_leaf / max(n, 1)


def test_reconstruction_loss_matches_a_numpy_reference():
    g = np.random.default_rng(0)
    sizes = (5, 1, 7)
    pred, target = g.normal(size=(6, 4, 13)), g.normal(size=(6, 4, 13))
    mask = g.random((6, 4)) < 0.7
    loss, per_leaf = reconstruction_loss(torch.tensor(pred), torch.tensor(target), sizes, torch.tensor(mask))
    ref_loss, ref_leaf = _reference(pred, target, sizes, mask)
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-10)
    np.testing.assert_allclose(per_leaf.numpy(), ref_leaf, rtol=1e-10)


def test_masked_steps_get_no_gradient_and_each_leaf_counts_the_same():
    pred = torch.zeros(3, 2, 11, requires_grad=True)
    target = torch.ones(3, 2, 11)
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    loss, _ = reconstruction_loss(pred, target, (1, 10), mask)
    loss.backward()
    grad = pred.grad
    assert torch.all(grad[~mask] == 0) and torch.all(grad[mask] != 0)
    # the 1-entry leaf's entry carries the whole of its leaf's weight, the 10-entry leaf's entries a tenth each
    np.testing.assert_allclose(grad[0, 0, 0].item(), 10 * grad[0, 0, 1].item(), rtol=1e-6)
    # with every error 1 the loss is the masked-in step count over B
    assert float(loss.detach()) == pytest.approx(4 / 2)


@pytest.mark.parametrize("sizes, mask_shape, msg", [
    ((5, 5), (3, 2), "sum to N"),
    ((11, 0), (3, 2), ">= 1"),
    ((11,), (2, 2), "mask"),
])
def test_reconstruction_loss_refuses_inconsistent_shapes(sizes, mask_shape, msg):
    with pytest.raises(ValueError, match=msg):
        reconstruction_loss(torch.zeros(3, 2, 11), torch.zeros(3, 2, 11), sizes, torch.ones(mask_shape))


def _cfg(*over):
    return load_config(None, ["model.encoder=mlp", "model.hidden_size=16", "sequence.length=6",
                              "sequence.burn_in=2", "sequence.period=4", "learner.batch_size=5",
                              "replay.min_size=5", *over])


def _sample(learner: Learner) -> ReplaySample:
    traj: Trajectory = random_trajectory(learner.cfg.sequence.total, 5, num_actions=4, obs=OBS,
                                         core_state=learner.agent.initial_state(5), seed=1)
    g = torch.Generator().manual_seed(2)
    obs = dict(traj.obs)
    obs["room"] = (torch.rand(obs["room"].shape, generator=g) < 0.2).to(torch.int8)  # sparse 0/1 planes
    traj = dataclasses.replace(traj, obs=obs)
    return ReplaySample(traj=traj, keys=torch.arange(5), shard_ids=torch.zeros(5, dtype=torch.int64),
                        weights=torch.ones(5), probs=torch.full((5,), 0.2, dtype=torch.float64),
                        fresh=torch.zeros(5, dtype=torch.bool))


@pytest.mark.parametrize("core", ["lstm", "hcam"])
def test_the_extra_is_switched_on_by_its_cost_and_learns_to_reconstruct(core):
    over = [f"model.core={core}", "model.hcam_chunk=2", "model.hcam_chunks=4", "model.hcam_topk=2",
            "model.hcam_heads=2"]
    assert "reconstruction" not in enabled_extras(_cfg(*over))
    cfg = _cfg(*over, "learner.reconstruction_cost=1.0", "learner.lr=3e-3")
    assert enabled_extras(cfg)[-1] == "reconstruction"
    torch.manual_seed(0)
    learner = Learner(cfg, SPEC, device="cpu")
    extra = learner.extras["reconstruction"]
    assert extra.keys == tuple(sorted(OBS))  # the encoder's keys
    sample = _sample(learner)
    first = learner.step(sample).metrics
    assert {f"extras/reconstruction/mse/{k}" for k in OBS} <= set(first)
    # uint8 targets are scaled to [0, 1] (random bytes: an error of order 0.1, not of order 1e4)
    assert first["extras/reconstruction/mse/pixels"] < 0.5
    for _ in range(200):
        last = learner.step(sample).metrics
    assert last["extras/reconstruction/loss"] < 0.3 * first["extras/reconstruction/loss"]
    for k in OBS:
        assert last[f"extras/reconstruction/mse/{k}"] < 0.6 * first[f"extras/reconstruction/mse/{k}"], k


def test_its_gradient_reaches_the_encoder_and_the_core_and_is_scaled_by_the_cost():
    learner = Learner(_cfg("learner.reconstruction_cost=2.0"), SPEC, device="cpu")
    extra = learner.extras["reconstruction"]
    sample = _sample(learner)
    traj = sample.traj
    reset = traj.reset_mask()
    out = learner.agent.unroll(traj.obs, reset, traj.core_state)
    valid = torch.ones(traj.T, traj.B, dtype=torch.bool)
    batch = LearnerBatch(traj=traj, out=out, valid=valid, is_weights=torch.ones(5), fresh=torch.zeros(5, dtype=bool),
                         version=0)
    loss, _ = extra.loss(batch)
    loss.backward()
    for name in ("encoder", "core"):
        grads = [p.grad for p in getattr(learner.agent, name).parameters()]
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), name
    heads = [p.grad for p in learner.agent.heads.parameters()]
    assert all(g is None or float(g.abs().sum()) == 0 for g in heads), "the heads play no part in it"
    raw, _ = reconstruction_loss(extra.decoder(out.features[: traj.T]), extra.target(traj.obs, traj.T), extra.sizes,
                                 valid)
    assert float(loss.detach()) == pytest.approx(2.0 * float(raw.detach()), rel=1e-5)


def test_the_extra_is_checkpointed_and_restored(tmp_path):
    cfg = _cfg("learner.reconstruction_cost=1.0")
    learner = Learner(cfg, SPEC, device="cpu")
    learner.step(_sample(learner))
    state = learner.state_dict()
    assert "reconstruction" in state["extras"]
    other = Learner(cfg, SPEC, device="cpu")
    other.load_state_dict(state)
    for a, b in zip(learner.extras["reconstruction"].parameters(), other.extras["reconstruction"].parameters()):
        assert torch.equal(a, b)


def test_bad_reconstruction_configs_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"learner\.reconstruction_cost must be >= 0"):
        _cfg("learner.reconstruction_cost=-1")
    with pytest.raises(ConfigError, match="reconstruction_cost is 0"):
        Learner(_cfg("learner.extras=[reconstruction]"), SPEC, device="cpu")
    with pytest.raises(ConfigError, match=r"reconstruction_keys is set but learner\.reconstruction_cost is 0"):
        _cfg("learner.reconstruction_keys=[x]")
    with pytest.raises(ConfigError, match="'nope' is not an observation"):
        Learner(_cfg("learner.reconstruction_cost=1", "learner.reconstruction_keys=[nope]"), SPEC, device="cpu")
    glyphs = EnvSpec(name="fake:glyphs", obs={"glyphs": ArraySpec((3, 3), np.dtype(np.int16)),
                                              "x": ArraySpec((3,), np.dtype(np.float32))},
                     num_actions=4, family="fake")
    with pytest.raises(ConfigError, match=r"'glyphs'.*int16.*reconstruction_keys"):
        Learner(_cfg("learner.reconstruction_cost=1"), glyphs, device="cpu")
    # leaving the ids out is the way
    ok = Learner(_cfg("learner.reconstruction_cost=1", "learner.reconstruction_keys=[x]"), glyphs, device="cpu")
    assert ok.extras["reconstruction"].keys == ("x",)
