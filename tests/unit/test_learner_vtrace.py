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


def np_loss(logits, values, bootstrap, mu_logits, actions, rewards, discounts, w_pg, w_v, cfg: LearnerConfig,
            prox_logits=None):
    """The whole V-trace loss in NumPy: sum over time, mean over sequences of each weighted term. With
    ``cfg.ppo_clip_against == "proximal"`` the clip's ratio is pi/pi_prox and the advantage carries
    min(clip_pg_rho, pi_prox/mu) (Hilton et al.'s decoupled objective)."""
    lp, lmu = np_log_softmax(logits), np_log_softmax(mu_logits)
    a = actions[..., None]
    logp = np.take_along_axis(lp, a, -1)[..., 0]
    log_rhos = logp - np.take_along_axis(lmu, a, -1)[..., 0]
    vs, adv = np_vtrace(log_rhos, discounts, rewards, values, bootstrap, cfg.clip_rho, cfg.clip_c, cfg.clip_pg_rho)
    B = logits.shape[1]
    if cfg.ppo_clip > 0:  # PPO's clipped surrogate against mu, over the advantage without the rho factor
        ratio = np.exp(log_rhos)
        adv = adv / np.minimum(ratio, cfg.clip_pg_rho)
        if cfg.ppo_clip_against == "proximal":
            log_prox = np.take_along_axis(np_log_softmax(prox_logits), a, -1)[..., 0]
            adv = adv * np.minimum(np.exp(log_prox - np.take_along_axis(lmu, a, -1)[..., 0]), cfg.clip_pg_rho)
            ratio = np.exp(logp - log_prox)
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


@pytest.mark.parametrize("ppo_clip,against", [(0.0, "behaviour"), (0.2, "behaviour"), (0.2, "proximal")])
def test_vtrace_loss_matches_numpy_and_its_gradient_is_finite(ppo_clip, against):
    rng = np.random.default_rng(2)
    T, B, A = 7, 3, 4
    logits, mu = rng.normal(size=(T, B, A)), rng.normal(size=(T, B, A))
    values, boot = rng.normal(size=(T, B)), rng.normal(size=B)
    actions = rng.integers(0, A, (T, B))
    rewards = rng.normal(size=(T, B))
    disc = 0.9 * (rng.random((T, B)) > 0.2)
    w_v = rng.random(B)[None] * (rng.random((T, B)) > 0.1)
    w_pg = w_v * (rng.random((T, B)) > 0.3)
    prox = logits + 0.5 * rng.normal(size=(T, B, A))  # a recent policy: near pi, not equal to it
    cfg = LearnerConfig(clip_rho=1.0, clip_c=0.9, clip_pg_rho=1.2, baseline_cost=0.5, entropy_cost=0.01,
                        ppo_clip=ppo_clip, ppo_clip_against=against)
    want, want_vs = np_loss(logits, values, boot, mu, actions, rewards, disc, w_pg, w_v, cfg, prox_logits=prox)
    lg = _t(logits).requires_grad_()
    vv = _t(values).requires_grad_()
    out = vtrace_loss(lg, vv, _t(boot), _t(mu), _t(actions, torch.int64), _t(rewards), _t(disc),
                      StepWeights(policy=_t(w_pg), value=_t(w_v)), cfg, proximal_logits=_t(prox))
    np.testing.assert_allclose(float(out.loss.detach()), want, rtol=1e-9)
    np.testing.assert_allclose(out.vs.numpy(), want_vs, rtol=1e-9)
    out.loss.backward()
    assert torch.isfinite(lg.grad).all() and torch.isfinite(vv.grad).all()
    assert lg.grad.abs().sum() > 0 and vv.grad.abs().sum() > 0
    if against == "proximal":
        with pytest.raises(ValueError, match="proximal_logits"):
            vtrace_loss(lg, vv, _t(boot), _t(mu), _t(actions, torch.int64), _t(rewards), _t(disc),
                        StepWeights(policy=_t(w_pg), value=_t(w_v)), cfg)


# ---- Learner.step runs exactly these pieces ---------------------------------------------------------------
SPEC = EnvSpec(name="fake:test", obs={"x": ArraySpec((3,), np.dtype(np.float32))}, num_actions=4, family="fake")


def _sample(learner: Learner, B: int, seed: int) -> ReplaySample:
    """B random sequences (some steps invalid, rewards beyond the clip), two fresh, mixed IS weights."""
    L = learner.cfg.sequence.total
    valid = torch.rand(L, B, generator=torch.Generator().manual_seed(seed + 1)) > 0.1
    traj = random_trajectory(L, B, num_actions=4, obs={"x": ((3,), np.float32)}, done_prob=0.2,
                             core_state=learner.agent.initial_state(B), seed=seed, valid=valid)
    traj = dataclasses.replace(traj, reward=traj.reward * 2)
    return ReplaySample(traj=traj, keys=torch.arange(B), shard_ids=torch.zeros(B, dtype=torch.int64),
                        weights=torch.tensor([1.0, 0.5, 0.8, 1.0, 0.3]),
                        probs=torch.full((B,), 0.2, dtype=torch.float64),
                        fresh=torch.tensor([True, False, False, True, False]))


def _unroll(agent, traj, burn: int):
    """The agent's outputs on the trained part, burn-in from the stored core state (no gradient)."""
    with torch.no_grad():
        reset = traj.reset_mask()
        st = agent.unroll({"x": traj.obs["x"][:burn]}, reset[:burn], traj.core_state).state
        return agent.unroll({"x": traj.obs["x"][burn:]}, reset[burn:], st)


@pytest.mark.parametrize("kl,ppo,kl_cost", [(0.0, 0.0, 0.0), (0.3, 0.0, 0.0), (0.3, 0.1, 0.0), (0.0, 0.0, 0.7)])
def test_learner_step_loss_equals_numpy_reference(kl, ppo, kl_cost):
    cfg = load_config(None, ["model.encoder=mlp", "model.hidden_size=16", "sequence.length=6",
                             "sequence.burn_in=2", "sequence.period=4", "learner.batch_size=5",
                             "replay.min_size=5", "learner.reward_clip=1.0", f"learner.kl_trust_region={kl}",
                             f"learner.ppo_clip={ppo}", f"learner.kl_cost={kl_cost}"])
    learner = Learner(cfg, SPEC, device="cpu")
    B, burn = 5, cfg.sequence.burn_in
    sample = _sample(learner, B, seed=3)
    traj, fresh, is_w = sample.traj, sample.fresh, sample.weights

    # The reference: the agent's outputs before the update, everything else in NumPy.
    n = lambda x: x.double().numpy()  # noqa: E731
    out = _unroll(learner.agent, traj, burn)
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


def test_proximal_policy_is_refreshed_every_period_and_limits_the_step_as_numpy_says():
    """ppo_clip against the proximal policy plus KL(pi_prox || pi) on every valid step: the proximal copy is the
    policy of the last refresh (every 2 updates, and at a checkpoint load), and Learner.step's loss is the NumPy
    decoupled objective over the copy's own unroll."""
    cost = 0.7
    cfg = load_config(None, ["model.encoder=mlp", "model.hidden_size=16", "sequence.length=6",
                             "sequence.burn_in=2", "sequence.period=4", "learner.batch_size=5",
                             "replay.min_size=5", "learner.ppo_clip=0.1", "learner.ppo_clip_against=proximal",
                             f"learner.proximal_kl_cost={cost}", "learner.proximal_period=2", "learner.lr=0.01"])
    learner = Learner(cfg, SPEC, device="cpu")
    burn, B = cfg.sequence.burn_in, 5
    params = lambda agent: torch.cat([p.detach().flatten() for p in agent.parameters()])  # noqa: E731
    res = learner.step(_sample(learner, B, seed=10))  # the copy is the initial policy: KL 0
    assert res.metrics["learner/proximal_kl"] == pytest.approx(0.0, abs=1e-9)
    assert not torch.equal(params(learner.proximal.agent), params(learner.agent))  # version 1: not refreshed
    learner.step(_sample(learner, B, seed=11))
    assert torch.equal(params(learner.proximal.agent), params(learner.agent))  # version 2: refreshed
    learner.step(_sample(learner, B, seed=12))
    assert learner.proximal.refreshed_at == 2 and not torch.equal(params(learner.proximal.agent),
                                                                  params(learner.agent))

    sample = _sample(learner, B, seed=13)
    traj, is_w = sample.traj, sample.weights
    n = lambda x: x.double().numpy()  # noqa: E731
    out, prox_out = _unroll(learner.agent, traj, burn), _unroll(learner.proximal.agent, traj, burn)
    logits, prox = n(out.logits[:-1]), n(prox_out.logits[:-1])
    tr = slice(burn, None)
    r = np.clip(n(traj.reward[tr]), -1, 1) + 0.99 * n(traj.truncated[tr]) * n(traj.truncation_value[tr])
    disc = 0.99 * ~(traj.terminated[tr] | traj.truncated[tr]).numpy()
    valid = traj.valid[tr].numpy()
    w_v = n(is_w)[None] * valid
    want, _ = np_loss(logits, n(out.value[:-1]), n(out.value[-1]), n(traj.behaviour_logits[tr]),
                      traj.action[tr].numpy(), r, disc, w_v, w_v, cfg.learner, prox_logits=prox)
    lq, lp = np_log_softmax(prox), np_log_softmax(logits)
    kl = (np.exp(lq) * (lq - lp)).sum(-1)
    assert kl[valid].mean() > 1e-6  # the copy is two updates old: a real KL
    want = want + cost * (kl * valid).sum() / B  # every valid step, fresh or replayed, unweighted
    res = learner.step(sample)
    np.testing.assert_allclose(res.metrics["learner/loss"], want, rtol=1e-4, atol=1e-5)
    assert res.metrics["learner/proximal_kl"] == pytest.approx(float(kl[valid].mean()), rel=1e-4)
    assert res.metrics["learner/proximal_kl_loss"] == pytest.approx(float((kl * valid).sum() / B), rel=1e-4)
    assert 0 <= res.metrics["learner/ppo_clip_fraction"] <= 1

    resumed = Learner(cfg, SPEC, device="cpu")  # a checkpoint load refreshes the copy to the loaded policy
    resumed.load_state_dict(learner.state_dict())
    assert torch.equal(params(resumed.proximal.agent), params(learner.agent))
    assert resumed.proximal.refreshed_at == learner.version == 4
    assert Learner(load_config(None, ["model.encoder=mlp"]), SPEC, device="cpu").proximal is None  # off by default
