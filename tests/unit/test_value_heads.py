"""Separate extrinsic and intrinsic value heads (``bonus.value_heads=2``): the multi-stream V-trace and the
intrinsic stream against NumPy references, the learner's loss and priorities with two heads against the same
references, gradients reaching both heads, one head unchanged, config refusals, checkpoints and acting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from test_learner_vtrace import np_log_softmax, np_vtrace  # the NumPy V-trace reference

from distrl.config import ConfigError, LearnerConfig, load_config
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.learners.learner import Learner
from distrl.learners.vtrace import StepWeights, ValueStream, intrinsic_stream, step_discounts, vtrace_loss
from distrl.losses.vtrace import vtrace_streams, vtrace_targets
from distrl.models.acting import build_acting_policy
from distrl.models.agent import build_agent, value_heads_in
from distrl.replay.priorities import sequence_priority
from distrl.replay.testing import random_trajectory
from distrl.types import ReplaySample

SPEC = EnvSpec(name="fake:test", obs={"x": ArraySpec((3,), np.dtype(np.float32))}, num_actions=4, family="fake")
TWO = ("bonus.value_heads=2", "model.separate_intrinsic_value=true")


def np_two_head_loss(logits, mu_logits, actions, heads, w_pg, w_v, cfg: LearnerConfig):
    """The V-trace loss with several heads in NumPy. ``heads``: (rewards, discounts, values [T, B], bootstrap
    [B], adv_coef) per head. Returns (loss, [vs per head], td of the summed value)."""
    lp, lmu = np_log_softmax(logits), np_log_softmax(mu_logits)
    a = actions[..., None]
    logp = np.take_along_axis(lp, a, -1)[..., 0]
    log_rhos = logp - np.take_along_axis(lmu, a, -1)[..., 0]
    B = logits.shape[1]
    adv, bl, vss, td = 0.0, 0.0, [], 0.0
    for r, d, v, boot, c in heads:
        vs, ad = np_vtrace(log_rhos, d, r, v, boot, cfg.clip_rho, cfg.clip_c, cfg.clip_pg_rho)
        adv = adv + c * ad
        bl = bl + (w_v * 0.5 * (vs - v) ** 2).sum() / B
        vss.append(vs)
        td = td + (vs - v)
    pg = -(w_pg * adv * logp).sum() / B
    ent = (w_v * (np.exp(lp) * lp).sum(-1)).sum() / B
    return pg + cfg.baseline_cost * bl + cfg.entropy_cost * ent, vss, td


def _t(x, dtype=torch.float64):
    return torch.tensor(np.asarray(x), dtype=dtype)


# ---- pure pieces ----------------------------------------------------------------------------------------------

def test_vtrace_streams_against_numpy_and_one_stream_is_vtrace_targets_bit_for_bit():
    rng = np.random.default_rng(0)
    T, B = 6, 4
    log_rhos = rng.normal(0, 0.5, (T, B))
    d_ext = 0.99 * (rng.random((T, B)) > 0.2)
    d_int = np.full((T, B), 0.9)
    r_ext, r_int = rng.normal(size=(T, B)), rng.random((T, B))
    v_ext, v_int = rng.normal(size=(T, B)), rng.normal(size=(T, B))
    b_ext, b_int = rng.normal(size=B), rng.normal(size=B)
    out = vtrace_streams(_t(log_rhos), [_t(d_ext), _t(d_int)], [_t(r_ext), _t(r_int)], [_t(v_ext), _t(v_int)],
                         [_t(b_ext), _t(b_int)], [1.0, 0.5], clip_rho=1.0, clip_c=0.9, clip_pg_rho=1.1)
    vs_e, a_e = np_vtrace(log_rhos, d_ext, r_ext, v_ext, b_ext, 1.0, 0.9, 1.1)
    vs_i, a_i = np_vtrace(log_rhos, d_int, r_int, v_int, b_int, 1.0, 0.9, 1.1)
    np.testing.assert_allclose(out.streams[0].vs.numpy(), vs_e, rtol=1e-10)
    np.testing.assert_allclose(out.streams[1].vs.numpy(), vs_i, rtol=1e-10)
    np.testing.assert_allclose(out.streams[1].pg_advantages.numpy(), a_i, rtol=1e-10)
    np.testing.assert_allclose(out.pg_advantages.numpy(), a_e + 0.5 * a_i, rtol=1e-10)

    one = vtrace_streams(_t(log_rhos), [_t(d_ext)], [_t(r_ext)], [_t(v_ext)], [_t(b_ext)], [1.0])
    ref = vtrace_targets(_t(log_rhos), _t(d_ext), _t(r_ext), _t(v_ext), _t(b_ext))
    assert torch.equal(one.pg_advantages, ref.pg_advantages) and torch.equal(one.streams[0].vs, ref.vs)
    with pytest.raises(ValueError, match="one of each"):
        vtrace_streams(_t(log_rhos), [_t(d_ext)], [_t(r_ext), _t(r_int)], [_t(v_ext)], [_t(b_ext)], [1.0])


def test_two_heads_with_one_discount_and_unit_coefficient_equal_one_head_on_the_sums():
    """A^(k) is linear in the head's rewards and values: the split changes nothing when the gammas agree."""
    rng = np.random.default_rng(1)
    T, B = 5, 3
    log_rhos, d = rng.normal(0, 0.5, (T, B)), 0.95 * (rng.random((T, B)) > 0.3)
    r1, r2, v1, v2 = (rng.normal(size=(T, B)) for _ in range(4))
    b1, b2 = rng.normal(size=B), rng.normal(size=B)
    two = vtrace_streams(_t(log_rhos), [_t(d), _t(d)], [_t(r1), _t(r2)], [_t(v1), _t(v2)], [_t(b1), _t(b2)],
                         [1.0, 1.0])
    one = vtrace_targets(_t(log_rhos), _t(d), _t(r1 + r2), _t(v1 + v2), _t(b1 + b2))
    np.testing.assert_allclose(two.pg_advantages.numpy(), one.pg_advantages.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose((two.streams[0].vs + two.streams[1].vs).numpy(), one.vs.numpy(), rtol=1e-9)


def test_intrinsic_stream_cuts_clips_and_bootstraps_at_broken_steps():
    # rows: 0 terminates at t=1, 1 is truncated at t=2, 2 has a faulted (invalid) step at t=1
    term = _t([[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]], torch.bool)
    trunc = _t([[0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0]], torch.bool)
    valid = _t([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]], torch.bool)
    r = _t([[0.5, 3.0, -2.0], [0.1, 0.2, 0.3], [0.0, 0.4, 0.0], [1.0, 1.0, 1.0]])
    values = torch.arange(15, dtype=torch.float64).reshape(5, 3).requires_grad_()
    ep = intrinsic_stream(r, values, term, trunc, valid, 0.9, episodic=True, clip=1.0, adv_coef=0.3)
    non = intrinsic_stream(r, values, term, trunc, valid, 0.9, episodic=False, clip=1.0)
    want_r = np.clip(r.numpy(), -1, 1)
    want_r[1, 2] = 5.0  # V(x_t) of the broken step: the stream bootstraps from the last real observation
    np.testing.assert_allclose(ep.rewards.numpy(), want_r)
    np.testing.assert_allclose(non.rewards.numpy(), want_r)
    assert not ep.rewards.requires_grad and ep.values is values and ep.adv_coef == 0.3 and ep.name == "int"
    cut_ep = (term | trunc | ~valid).numpy()
    np.testing.assert_allclose(ep.discounts.numpy(), 0.9 * ~cut_ep)
    np.testing.assert_allclose(non.discounts.numpy(), 0.9 * valid.numpy())  # only the broken step cuts
    unclipped = intrinsic_stream(r, values, term, trunc, valid, 0.9, clip=0.0)
    assert float(unclipped.rewards[0, 1]) == 3.0
    with pytest.raises(ValueError, match=r"T \+ 1"):
        intrinsic_stream(r, values[:-1], term, trunc, valid, 0.9)


def test_vtrace_loss_with_an_intrinsic_stream_matches_numpy_and_trains_both_value_heads():
    rng = np.random.default_rng(2)
    T, B, A = 7, 3, 4
    logits, mu = rng.normal(size=(T, B, A)), rng.normal(size=(T, B, A))
    actions = rng.integers(0, A, (T, B))
    v_ext, b_ext, v_int = rng.normal(size=(T, B)), rng.normal(size=B), rng.normal(size=(T + 1, B))
    r_ext, r_int = rng.normal(size=(T, B)), rng.random((T, B))
    d_ext, d_int = 0.99 * (rng.random((T, B)) > 0.2), np.full((T, B), 0.9)
    w_v = rng.random(B)[None] * (rng.random((T, B)) > 0.1)
    w_pg = w_v * (rng.random((T, B)) > 0.3)
    cfg = LearnerConfig(clip_rho=1.0, clip_c=0.9, clip_pg_rho=1.2, baseline_cost=0.5, entropy_cost=0.01)
    want, (vs_e, vs_i), td = np_two_head_loss(
        logits, mu, actions, [(r_ext, d_ext, v_ext, b_ext, 1.0), (r_int, d_int, v_int[:-1], v_int[-1], 0.7)],
        w_pg, w_v, cfg)
    lg, ve, vi = _t(logits).requires_grad_(), _t(v_ext).requires_grad_(), _t(v_int).requires_grad_()
    stream = ValueStream(name="int", rewards=_t(r_int), discounts=_t(d_int), values=vi, adv_coef=0.7)
    out = vtrace_loss(lg, ve, _t(b_ext), _t(mu), _t(actions, torch.int64), _t(r_ext), _t(d_ext),
                      StepWeights(policy=_t(w_pg), value=_t(w_v)), cfg, streams=[stream])
    np.testing.assert_allclose(float(out.loss.detach()), want, rtol=1e-9)
    np.testing.assert_allclose(out.vs.numpy(), vs_e, rtol=1e-9)
    np.testing.assert_allclose(out.heads[1].vs.numpy(), vs_i, rtol=1e-9)
    np.testing.assert_allclose(out.td_error.numpy(), td, rtol=1e-9, atol=1e-12)
    assert [h.name for h in out.heads] == ["ext", "int"]
    np.testing.assert_allclose(float(out.baseline_loss), float(out.heads[0].baseline_loss + out.heads[1].baseline_loss))
    out.loss.backward()
    assert ve.grad.abs().sum() > 0 and vi.grad[:-1].abs().sum() > 0 and lg.grad.abs().sum() > 0
    assert float(vi.grad[-1].abs().sum()) == 0.0  # the bootstrap row is a constant target


def test_non_episodic_intrinsic_return_bootstraps_across_an_episode_end_and_the_extrinsic_one_does_not():
    """On-policy (rho = c = 1), so v_s is the discounted return to the end of the sequence plus the discounted
    bootstrap value: whether the target of the step that ends an episode moves with the next episode's values
    tells whether the return crosses the boundary."""
    T, B, A = 4, 1, 3
    logits = torch.zeros(T, B, A, dtype=torch.float64)
    actions = torch.zeros(T, B, dtype=torch.int64)
    term = torch.tensor([[False], [True], [False], [False]])  # step 1 ends the episode
    trunc, valid = torch.zeros(T, B, dtype=torch.bool), torch.ones(T, B, dtype=torch.bool)
    r = torch.zeros(T, B, dtype=torch.float64)
    w = StepWeights(policy=torch.ones(T, B, dtype=torch.float64), value=torch.ones(T, B, dtype=torch.float64))
    cfg = LearnerConfig()

    def targets(after: float, episodic: bool):
        v = torch.zeros(T + 1, B, dtype=torch.float64)
        v[2:] = after  # values of the next episode's observations
        s = intrinsic_stream(r, v, term, trunc, valid, 0.9, episodic=episodic)
        out = vtrace_loss(logits, v[:-1].clone(), v[-1].clone(), logits, actions, r,
                          step_discounts(term, trunc, 0.99), w, cfg, streams=[s])
        return float(out.heads[0].vs[1, 0]), float(out.heads[1].vs[1, 0])

    ext0, int0 = targets(0.0, episodic=False)
    ext1, int1 = targets(10.0, episodic=False)
    assert ext0 == ext1 == 0.0  # extrinsic: cut at the episode end
    assert int1 - int0 == pytest.approx(0.9**3 * 10.0, rel=1e-6)  # intrinsic: runs on to the bootstrap V(x_4)
    _, int_ep = targets(10.0, episodic=True)
    assert int_ep == 0.0  # episodic intrinsic (E3B): cut like the extrinsic return


# ---- the learner ----------------------------------------------------------------------------------------------

def _cfg(*over: str):
    return load_config(None, ["model.encoder=mlp", "model.hidden_size=16", "sequence.length=6",
                              "sequence.burn_in=2", "sequence.period=4", "learner.batch_size=5",
                              "replay.min_size=5", "learner.reward_clip=1.0", "bonus.count_key=obs", *over])


def _sample(learner: Learner, seed: int = 3):
    L, B = learner.cfg.sequence.total, 5
    valid = torch.rand(L, B, generator=torch.Generator().manual_seed(seed + 1)) > 0.1
    ep = 3 * torch.rand(L, B, generator=torch.Generator().manual_seed(seed + 2))  # some beyond the clip
    traj = random_trajectory(L, B, num_actions=4, obs={"x": ((3,), np.float32)}, done_prob=0.25,
                             core_state=learner.agent.initial_state(B), seed=seed, valid=valid, episodic_bonus=ep)
    traj = dataclasses.replace(traj, reward=traj.reward * 2)
    is_w = torch.tensor([1.0, 0.5, 0.8, 1.0, 0.3])
    return ReplaySample(traj=traj, keys=torch.arange(B), shard_ids=torch.zeros(B, dtype=torch.int64),
                        weights=is_w, probs=torch.full((B,), 0.2, dtype=torch.float64),
                        fresh=torch.tensor([True, False, False, True, False]))


def _reference(learner: Learner, sample: ReplaySample, coef: float):
    """The learner's loss and priorities in NumPy from the agent's outputs before the update, for
    bonus.episodic=count, normalize=none (r_int = coef * the stored episodic bonus, 0 on invalid steps)."""
    cfg, traj, burn = learner.cfg, sample.traj, learner.cfg.sequence.burn_in
    with torch.no_grad():
        reset = traj.reset_mask()
        st = learner.agent.unroll({"x": traj.obs["x"][:burn]}, reset[:burn], traj.core_state).state
        out = learner.agent.unroll({"x": traj.obs["x"][burn:]}, reset[burn:], st)
    n = lambda x: x.double().numpy()  # noqa: E731
    tr = slice(burn, None)
    valid = traj.valid[tr].numpy()
    term, trunc = traj.terminated[tr].numpy(), traj.truncated[tr].numpy()
    r_int = coef * n(traj.episodic_bonus[tr]) * valid
    r_ext = np.clip(n(traj.reward[tr]), -1, 1) + 0.99 * trunc * n(traj.truncation_value[tr])
    d_ext = 0.99 * ~(term | trunc)
    if out.value_int is None:
        heads = [(np.clip(n(traj.reward[tr]) + r_int, -1, 1) + 0.99 * trunc * n(traj.truncation_value[tr]), d_ext,
                  n(out.value[:-1]), n(out.value[-1]), 1.0)]
    else:
        b = cfg.bonus
        v_int = n(out.value_int)
        ri = np.where(valid, np.clip(r_int, -1, 1), v_int[:-1])
        cut = ~valid | ((term | trunc) if b.intrinsic_episodic else False)
        heads = [(r_ext, d_ext, n(out.value[:-1]), n(out.value[-1]), 1.0),
                 (ri, b.intrinsic_gamma * ~cut, v_int[:-1], v_int[-1], b.intrinsic_adv_coef)]
    w_v = n(sample.weights)[None] * valid
    loss, _, td = np_two_head_loss(n(out.logits[:-1]), n(traj.behaviour_logits[tr]), traj.action[tr].numpy(),
                                     heads, w_v, w_v, cfg.learner)
    prios = sequence_priority(torch.from_numpy(np.abs(td)), torch.from_numpy(valid), cfg.replay.priority_eta)
    return loss, prios.numpy()


@pytest.mark.parametrize("episodic", [True, False])
def test_learner_two_heads_loss_and_priorities_equal_numpy_and_both_heads_get_gradients(episodic):
    torch.manual_seed(0)
    cfg = _cfg(*TWO, "bonus.episodic=count", "bonus.normalize=none", "bonus.coef=0.7", "bonus.intrinsic_gamma=0.9",
               f"bonus.intrinsic_episodic={str(episodic).lower()}", "bonus.intrinsic_adv_coef=0.5")
    learner = Learner(cfg, SPEC, device="cpu")
    assert learner.agent.value_heads == 2
    sample = _sample(learner)
    want_loss, want_prios = _reference(learner, sample, coef=0.7)
    before = {k: v.clone() for k, v in learner.agent.state_dict().items()}
    res = learner.step(sample)
    np.testing.assert_allclose(res.metrics["learner/loss"], want_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.priorities, want_prios, rtol=1e-4, atol=1e-5)
    m = res.metrics
    assert m["learner/baseline_loss"] == pytest.approx(m["learner/value_loss_ext"] + m["learner/value_loss_int"])
    assert m["learner/value_loss_int"] > 0 and "learner/value_int_mean" in m and "learner/vs_int_mean" in m
    heads = learner.agent.heads
    for head in (heads.value, heads.value_int):
        assert head.fc.weight.grad is not None and float(head.fc.weight.grad.abs().sum()) > 0
    after = learner.agent.state_dict()
    assert not torch.equal(before["heads.value_int.fc.weight"], after["heads.value_int.fc.weight"])
    assert not torch.equal(before["heads.value.fc.weight"], after["heads.value.fc.weight"])


def test_learner_one_head_trains_on_the_clipped_sum_as_before():
    """bonus.value_heads=1 (default): one head on clip(r_ext + r_int), no per-head metrics. (Bit-for-bit equality
    with the code before value heads existed was checked when they were added; this pins the math.)"""
    torch.manual_seed(0)
    learner = Learner(_cfg("bonus.episodic=count", "bonus.normalize=none", "bonus.coef=0.7"), SPEC, device="cpu")
    assert learner.agent.value_heads == 1
    sample = _sample(learner)
    want_loss, want_prios = _reference(learner, sample, coef=0.7)
    res = learner.step(sample)
    np.testing.assert_allclose(res.metrics["learner/loss"], want_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.priorities, want_prios, rtol=1e-4, atol=1e-5)
    assert not any(k.startswith("learner/value_loss") for k in res.metrics)


def test_learner_two_heads_with_rnd_runs():
    torch.manual_seed(0)
    learner = Learner(_cfg(*TWO, "bonus.glob=rnd", "bonus.intrinsic_episodic=false"), SPEC, device="cpu")
    for _ in range(2):
        res = learner.step(_sample(learner))
    assert np.isfinite(res.metrics["learner/loss"]) and "extras/bonus/rnd_loss" in res.metrics
    assert np.isfinite(res.priorities).all() and (res.priorities >= 0).all()


def test_value_heads_config_refusals():
    with pytest.raises(ConfigError, match="no bonus is on"):
        _cfg(*TWO)
    with pytest.raises(ConfigError, match="disagree"):
        _cfg("bonus.value_heads=2", "bonus.glob=rnd")
    with pytest.raises(ConfigError, match="disagree"):
        _cfg("model.separate_intrinsic_value=true", "bonus.glob=rnd")
    with pytest.raises(ConfigError, match="must be 1 or 2"):
        _cfg("bonus.value_heads=3", "bonus.glob=rnd")
    with pytest.raises(ConfigError, match="intrinsic_gamma"):
        _cfg(*TWO, "bonus.glob=rnd", "bonus.intrinsic_gamma=1.5")
    with pytest.raises(ConfigError, match="intrinsic_adv_coef"):
        _cfg(*TWO, "bonus.glob=rnd", "bonus.intrinsic_adv_coef=-1")
    _cfg(*TWO, "bonus.episodic=count")  # fine


def test_a_two_head_checkpoint_loads_only_into_a_two_head_config(tmp_path):
    two = Learner(_cfg(*TWO, "bonus.glob=rnd"), SPEC, device="cpu")
    one = Learner(_cfg("bonus.glob=rnd"), SPEC, device="cpu")
    path2, path1 = two.save_checkpoint(tmp_path / "two.pt"), one.save_checkpoint(tmp_path / "one.pt")
    with pytest.raises(ConfigError, match=r"2 value head\(s\), this config 1"):
        one.load_checkpoint(path2)
    with pytest.raises(ConfigError, match=r"1 value head\(s\), this config 2"):
        two.load_checkpoint(path1)
    Learner(_cfg(*TWO, "bonus.glob=rnd"), SPEC, device="cpu").load_checkpoint(path2)  # the same config: fine
    assert value_heads_in(two.agent.state_dict()) == 2 and value_heads_in(one.agent.state_dict()) == 1
    with pytest.raises(ValueError, match="value head"):
        one.agent.load_state_dict(two.agent.state_dict())


@pytest.mark.parametrize("inference", ["numpy", "torch"])
def test_actors_act_with_two_head_weights_and_record_the_extrinsic_value(inference):
    """Acting reads the extrinsic head only (truncation bootstraps); the intrinsic head travels with the
    weights and the acting policy (NumPy or PyTorch) loads them."""
    cfg = _cfg(*TWO, "bonus.glob=rnd", f"actor.inference={inference}")
    learner = Learner(cfg, SPEC, device="cpu")
    policy = build_acting_policy(cfg, SPEC, torch.device("cpu"), seed=0)
    policy.load_state_dict(learner.weights().policy)
    obs = {"x": np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)}
    out = policy.act(obs, policy.initial_state(2))
    ref = build_agent(cfg.model, SPEC)
    ref.load_state_dict(learner.weights().policy)
    want = ref.act(obs, ref.initial_state(2)).value
    np.testing.assert_allclose(np.asarray(out.value), want.numpy(), rtol=1e-5, atol=1e-6)
