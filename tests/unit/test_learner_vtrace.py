"""The learner's pure pieces (distrl.learners.vtrace) against NumPy references, and Learner.step's loss against
the same references computed from the agent's own outputs (the tested pieces are the ones that run)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from distrl.config import LearnerConfig, load_config
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.learners.learner import Learner
from distrl.learners.vtrace import StepWeights, learning_rewards, step_discounts, step_weights, vtrace_loss
from distrl.replay.testing import random_trajectory
from distrl.types import ReplaySample


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_vtrace(log_rhos, discounts, rewards, values, bootstrap, clip_rho=1.0, clip_c=1.0, clip_pg=1.0):
    """IMPALA Eq. 1 as the direct sum over future steps (not the backward recursion under test)."""
    T, B = log_rhos.shape
    rhos = np.exp(log_rhos)
    crho, cs = np.minimum(rhos, clip_rho), np.minimum(rhos, clip_c)
    v_next = np.concatenate([values[1:], bootstrap[None]], 0)
    deltas = crho * (rewards + discounts * v_next - values)
    vs = np.zeros((T, B))
    for s in range(T):
        acc, prod = values[s].copy(), np.ones(B)
        for t in range(s, T):
            acc += prod * deltas[t]
            prod = prod * discounts[t] * cs[t]
        vs[s] = acc
    vs_next = np.concatenate([vs[1:], bootstrap[None]], 0)
    adv = np.minimum(rhos, clip_pg) * (rewards + discounts * vs_next - values)
    return vs, adv


def np_loss(logits, values, bootstrap, mu_logits, actions, rewards, discounts, w_pg, w_v, cfg: LearnerConfig):
    """The whole V-trace loss in NumPy: sum over time, mean over sequences of each weighted term."""
    lp, lmu = np_log_softmax(logits), np_log_softmax(mu_logits)
    a = actions[..., None]
    logp = np.take_along_axis(lp, a, -1)[..., 0]
    log_rhos = logp - np.take_along_axis(lmu, a, -1)[..., 0]
    vs, adv = np_vtrace(log_rhos, discounts, rewards, values, bootstrap, cfg.clip_rho, cfg.clip_c, cfg.clip_pg_rho)
    B = logits.shape[1]
    if cfg.ppo_clip > 0:  # PPO's clipped surrogate against mu, over the advantage without the rho factor
        ratio = np.exp(log_rhos)
        adv = adv / np.minimum(ratio, cfg.clip_pg_rho)
        lo, hi = 1.0 / (1.0 + cfg.ppo_clip), 1.0 + cfg.ppo_clip
        pg = -(w_pg * np.minimum(ratio * adv, np.clip(ratio, lo, hi) * adv)).sum() / B
    else:
        pg = -(w_pg * adv * logp).sum() / B
    bl = (w_v * 0.5 * (vs - values) ** 2).sum() / B
    ent = (w_v * (np.exp(lp) * lp).sum(-1)).sum() / B  # negative entropy
    return pg + cfg.baseline_cost * bl + cfg.entropy_cost * ent, vs


def _t(x, dtype=torch.float64):
    return torch.tensor(np.asarray(x), dtype=dtype)


def test_learning_rewards_clip_intrinsic_and_truncation_bootstrap():
    rng = np.random.default_rng(0)
    r = rng.normal(0, 2, (5, 3))
    r_int = rng.random((5, 3))
    trunc = rng.random((5, 3)) < 0.3
    tv = rng.normal(0, 5, (5, 3))
    want = np.clip(r + r_int, -1, 1) + 0.9 * trunc * tv
    got = learning_rewards(_t(r), _t(trunc, torch.bool), _t(tv), 0.9, clip=1.0, intrinsic=_t(r_int))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    unclipped = learning_rewards(_t(r), _t(trunc, torch.bool), _t(tv), 0.9, clip=0.0)
    np.testing.assert_allclose(unclipped.numpy(), r + 0.9 * trunc * tv, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="intrinsic"):
        learning_rewards(_t(r), _t(trunc, torch.bool), _t(tv), 0.9, intrinsic=torch.zeros(4, 3))


def test_step_discounts_stop_at_every_episode_end():
    term = np.array([[0, 1], [0, 0], [1, 0]], bool)
    trunc = np.array([[1, 0], [0, 0], [0, 0]], bool)
    got = step_discounts(_t(term, torch.bool), _t(trunc, torch.bool), 0.99).numpy()
    np.testing.assert_allclose(got, 0.99 * ~(term | trunc))


def test_step_weights_compose_is_valid_trust_and_extra():
    rng = np.random.default_rng(1)
    is_w = rng.random(4)
    valid = rng.random((6, 4)) > 0.2
    trusted = rng.random((6, 4)) > 0.3
    extra = rng.random((6, 4)) * 3
    w = step_weights(_t(is_w), _t(valid, torch.bool), trusted=_t(trusted, torch.bool), extra=_t(extra))
    np.testing.assert_allclose(w.value.numpy(), is_w[None] * valid, rtol=1e-6)
    np.testing.assert_allclose(w.policy.numpy(), is_w[None] * valid * trusted * extra, rtol=1e-6)
    plain = step_weights(_t(is_w), _t(valid, torch.bool))
    assert torch.equal(plain.policy, plain.value)
    with pytest.raises(ValueError, match="trusted"):
        step_weights(_t(is_w), _t(valid, torch.bool), trusted=torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="is_weights"):
        step_weights(torch.ones(3), _t(valid, torch.bool))


@pytest.mark.parametrize("ppo_clip", [0.0, 0.2])
def test_vtrace_loss_matches_numpy_and_its_gradient_is_finite(ppo_clip):
    rng = np.random.default_rng(2)
    T, B, A = 7, 3, 4
    logits, mu = rng.normal(size=(T, B, A)), rng.normal(size=(T, B, A))
    values, boot = rng.normal(size=(T, B)), rng.normal(size=B)
    actions = rng.integers(0, A, (T, B))
    rewards = rng.normal(size=(T, B))
    disc = 0.9 * (rng.random((T, B)) > 0.2)
    w_v = rng.random(B)[None] * (rng.random((T, B)) > 0.1)
    w_pg = w_v * (rng.random((T, B)) > 0.3)
    cfg = LearnerConfig(clip_rho=1.0, clip_c=0.9, clip_pg_rho=1.2, baseline_cost=0.5, entropy_cost=0.01,
                        ppo_clip=ppo_clip)
    want, want_vs = np_loss(logits, values, boot, mu, actions, rewards, disc, w_pg, w_v, cfg)
    lg = _t(logits).requires_grad_()
    vv = _t(values).requires_grad_()
    out = vtrace_loss(lg, vv, _t(boot), _t(mu), _t(actions, torch.int64), _t(rewards), _t(disc),
                      StepWeights(policy=_t(w_pg), value=_t(w_v)), cfg)
    np.testing.assert_allclose(float(out.loss.detach()), want, rtol=1e-9)
    np.testing.assert_allclose(out.vs.numpy(), want_vs, rtol=1e-9)
    out.loss.backward()
    assert torch.isfinite(lg.grad).all() and torch.isfinite(vv.grad).all()
    assert lg.grad.abs().sum() > 0 and vv.grad.abs().sum() > 0


# ---- Learner.step runs exactly these pieces ---------------------------------------------------------------
SPEC = EnvSpec(name="fake:test", obs={"x": ArraySpec((3,), np.dtype(np.float32))}, num_actions=4, family="fake")


@pytest.mark.parametrize("kl,ppo,kl_cost", [(0.0, 0.0, 0.0), (0.3, 0.0, 0.0), (0.3, 0.1, 0.0), (0.0, 0.0, 0.7)])
def test_learner_step_loss_equals_numpy_reference(kl, ppo, kl_cost):
    cfg = load_config(None, ["model.encoder=mlp", "model.hidden_size=16", "sequence.length=6",
                             "sequence.burn_in=2", "sequence.period=4", "learner.batch_size=5",
                             "replay.min_size=5", "learner.reward_clip=1.0", f"learner.kl_trust_region={kl}",
                             f"learner.ppo_clip={ppo}", f"learner.kl_cost={kl_cost}"])
    learner = Learner(cfg, SPEC, device="cpu")
    L, B, burn = cfg.sequence.total, 5, cfg.sequence.burn_in
    valid = torch.rand(L, B, generator=torch.Generator().manual_seed(4)) > 0.1
    traj = random_trajectory(L, B, num_actions=4, obs={"x": ((3,), np.float32)}, done_prob=0.2,
                             core_state=learner.agent.initial_state(B), seed=3, valid=valid)
    traj = dataclasses.replace(traj, reward=traj.reward * 2)  # some rewards beyond the clip
    fresh = torch.tensor([True, False, False, True, False])
    is_w = torch.tensor([1.0, 0.5, 0.8, 1.0, 0.3])
    sample = ReplaySample(traj=traj, keys=torch.arange(B), shard_ids=torch.zeros(B, dtype=torch.int64),
                          weights=is_w, probs=torch.full((B,), 0.2, dtype=torch.float64), fresh=fresh)

    # The reference: the agent's outputs before the update, everything else in NumPy.
    with torch.no_grad():
        reset = traj.reset_mask()
        st = learner.agent.unroll({"x": traj.obs["x"][:burn]}, reset[:burn], traj.core_state).state
        out = learner.agent.unroll({"x": traj.obs["x"][burn:]}, reset[burn:], st)
    n = lambda x: x.double().numpy()  # noqa: E731
    logits, values, boot = n(out.logits[:-1]), n(out.value[:-1]), n(out.value[-1])
    tr = slice(burn, None)
    r = np.clip(n(traj.reward[tr]), -1, 1) + 0.99 * n(traj.truncated[tr]) * n(traj.truncation_value[tr])
    disc = 0.99 * ~(traj.terminated[tr] | traj.truncated[tr]).numpy()
    valid = traj.valid[tr].numpy()
    w_v = n(is_w)[None] * valid
    mu = n(traj.behaviour_logits[tr])
    w_pg = w_v
    if kl > 0:
        lmu, lpi = np_log_softmax(mu), np_log_softmax(logits)
        klv = (np.exp(lmu) * (lmu - lpi)).sum(-1)
        w_pg = w_v * ((klv <= kl) | fresh.numpy()[None])
    want, _ = np_loss(logits, values, boot, mu, traj.action[tr].numpy(), r, disc, w_pg, w_v, cfg.learner)
    if kl_cost > 0:  # the KL(mu || pi) penalty on fresh rows' valid steps
        lmu, lpi = np_log_softmax(mu), np_log_softmax(logits)
        want_kl = ((np.exp(lmu) * (lmu - lpi)).sum(-1) * valid * fresh.numpy()[None]).sum() / B
        want = want + kl_cost * want_kl

    lr_np = (np.take_along_axis(np_log_softmax(logits), traj.action[tr].numpy()[..., None], -1)
             - np.take_along_axis(np_log_softmax(mu), traj.action[tr].numpy()[..., None], -1))[..., 0]
    res = learner.step(sample)
    np.testing.assert_allclose(res.metrics["learner/loss"], want, rtol=1e-4, atol=1e-5)
    if ppo > 0:  # the share of policy-weighted steps whose ratio left the band
        on = w_pg > 0
        want_frac = float(((np.abs(lr_np) > np.log1p(ppo)) & on).sum() / on.sum())
        assert 0 < want_frac < 1
        assert res.metrics["learner/ppo_clip_fraction"] == pytest.approx(want_frac, abs=1e-6)
    else:
        assert "learner/ppo_clip_fraction" not in res.metrics
    assert ("learner/kl_loss" in res.metrics) == (kl_cost > 0)
    assert res.env_steps == int(valid[:, fresh.numpy()].sum())
