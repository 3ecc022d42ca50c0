"""Duration-aware updates: the weighting math of each mode against NumPy, prior vs loss weighting in expectation,
no double counting, clipping, the duration bandit's rules and launch times flowing through replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distrl.actors.env_actor import EnvActor
from distrl.config import ConfigError, DurationConfig, EnvConfig, load_config
from distrl.envs.duration_bandit import FAST, SLOW, DurationBandit, make, parse_id
from distrl.envs.registry import env_spec
from distrl.envs.vector import make_vec_env
from distrl.learners.duration import (
    DurationExtra,
    InclusionEstimator,
    bin_index,
    dt_bins,
    episode_durations,
    inclusion_weights,
    paper_weights,
    prior_loss_weights,
    window_inclusion,
)
from distrl.learners.extras import LearnerBatch, enabled_extras
from distrl.learners.learner import Learner
from distrl.learners.vtrace import step_weights
from distrl.replay.client import LocalShardClient
from distrl.replay.priorities import DurationPrior, duration_prior, importance_weights
from distrl.replay.sampler import ReplaySampler
from distrl.replay.shard import ReplayShard
from distrl.replay.testing import random_trajectory
from distrl.types import ReplaySample

BANDIT = "duration:bandit?k=20&unit=0.05"


def _cfg(*over: str):
    return load_config(None, [f"env.name={BANDIT}", "env.num_envs=3", "model.hidden_size=8", "model.core=identity",
                              "sequence.length=4", "sequence.period=4", "learner.batch_size=4", "replay.min_size=4",
                              *over])


# ---- the weighting math against NumPy ---------------------------------------------------------------------------
def _np_paper(dt, valid, lo, hi):
    mean = dt[valid].mean()
    w = np.clip(dt / mean, lo, hi)
    return np.where(valid, w, 1.0)


def test_paper_weights_match_numpy_and_are_clipped():
    rng = np.random.default_rng(0)
    dt = rng.lognormal(0.0, 2.0, size=(7, 5))  # heavy-tailed: some weights hit both clips
    valid = rng.random((7, 5)) < 0.8
    valid[0, 0] = valid[0, 1] = True
    dt[0, 0], dt[0, 1] = 1e4, 1e-6  # far above and below the mean: both clips bind
    got = paper_weights(torch.from_numpy(dt), torch.from_numpy(valid), 0.1, 10.0).numpy()
    np.testing.assert_allclose(got, _np_paper(dt, valid, 0.1, 10.0), rtol=1e-6)
    assert got[0, 0] == pytest.approx(10.0) and got[0, 1] == pytest.approx(0.1)
    # the mean is over valid steps only: a huge duration on an invalid step changes nothing
    dt2 = dt.copy()
    dt2[~valid] = 1e9
    np.testing.assert_allclose(paper_weights(torch.from_numpy(dt2), torch.from_numpy(valid)).numpy(), got, rtol=1e-6)


def test_paper_weights_reject_bad_input():
    with pytest.raises(ValueError, match=r"\[T, B\]"):
        paper_weights(torch.ones(3), torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=">= 0"):
        paper_weights(-torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool))


def test_episode_durations_broadcast_each_episodes_total():
    # one row: episodes [0..1] (2 s in total), [2..4] (3 s), then [5..6] still running (1.5 s so far)
    ep_time = torch.tensor([[1.0, 2.0, 0.5, 1.5, 3.0, 1.0, 1.5]]).T
    done = torch.tensor([[0, 1, 0, 0, 1, 0, 0]], dtype=torch.bool).T
    got = episode_durations(ep_time, done)[:, 0].tolist()
    assert got == [2.0, 2.0, 3.0, 3.0, 3.0, 1.5, 1.5]


def test_inclusion_estimator_and_weights_match_numpy():
    edges = dt_bins(0.01, 100.0, 4)  # decades: [0.01, 0.1), [0.1, 1), [1, 10), [10, 100]
    est = InclusionEstimator(edges)
    launched = np.array([0.05] * 100 + [5.0] * 100)
    consumed = np.array([0.05] * 90 + [5.0] * 20)  # slow steps reach the learner far less often
    est.add(launched, consumed=False)
    est.add(consumed, consumed=True)
    ratio = (np.array([90, 0, 20, 0]) + 1.0) / (np.array([100, 0, 100, 0]) + 1.0)
    np.testing.assert_allclose(est.p().numpy(), ratio / ratio.max())
    dt = torch.tensor([[0.05, 5.0, 0.05, 5.0]], dtype=torch.float64)
    valid = torch.ones_like(dt, dtype=torch.bool)
    w = inclusion_weights(est.p_of(dt), valid, 0.1, 10.0).numpy()
    inv = 1.0 / (ratio / ratio.max())[[0, 2, 0, 2]]
    np.testing.assert_allclose(w[0], np.clip(inv / inv.mean(), 0.1, 10.0), rtol=1e-6)
    assert w[0, 1] / w[0, 0] == pytest.approx((91 / 101) / (21 / 101), rel=1e-6)
    # windowed collection: P = 1 - dt / W
    np.testing.assert_allclose(window_inclusion(torch.tensor([0.0, 2.5, 9.0]), 10.0).numpy(), [1.0, 0.75, 0.1])
    assert bin_index(np.array([1e-9, 0.05, 1e9]), edges).tolist() == [0, 0, 3]


def test_duration_prior_matches_numpy_and_tracks_the_running_mean():
    np.testing.assert_allclose(duration_prior(np.array([1.0, 4.0]), 2.0, 2.0), [0.25, 4.0])
    prior = DurationPrior(DurationConfig(mode="prior", kappa=1.0))
    dur = torch.tensor([[1.0, 3.0], [1.0, 3.0]])
    traj = random_trajectory(2, 2, duration=dur)
    np.testing.assert_allclose(prior(traj), [0.5, 1.5])  # running mean 2
    traj2 = random_trajectory(2, 2, duration=torch.full((2, 2), 6.0))
    np.testing.assert_allclose(prior(traj2), [1.5, 1.5])  # running mean (8 + 24) / 8 = 4
    assert DurationPrior(DurationConfig(mode="paper"))(traj) is None  # the prior only in mode prior


def test_prior_loss_weights_put_the_prior_on_fresh_rows_only():
    w = prior_loss_weights(torch.tensor([2.0, 3.0, 0.5], dtype=torch.float64), torch.tensor([True, False, True]), 2)
    assert w.tolist() == [[2.0, 1.0, 0.5], [2.0, 1.0, 0.5]]


# ---- prior vs loss weighting: same expectation, each factor counted once ----------------------------------------
def _filled_shard(d: np.ndarray, prio: np.ndarray, alpha: float, seed: int = 0) -> ReplayShard:
    n = d.shape[0]
    cfg = load_config(None, [f"replay.capacity={n}", f"replay.alpha={alpha}", "replay.min_size=1",
                             "replay.samples_per_insert=0", "learner.batch_size=1"]).replay
    shard = ReplayShard(cfg, seed=seed)
    traj = random_trajectory(1, n, seed=seed)
    assert shard.insert(traj, priorities=prio, prior=d).ok
    return shard


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_prior_sampling_with_is_weights_equals_loss_weighting_in_expectation(alpha):
    """E_{P'}[(N P'(i) / d_i)^-1 g_i] = (1/N) sum_i d_i g_i = E_uniform[d_i g_i] (ALGORITHMS.md §3.5, beta = 1),
    whatever the priorities; checked by Monte Carlo through a real shard (seeded, tolerance 6 sigma)."""
    rng = np.random.default_rng(1)
    n = 50
    d = rng.lognormal(0.0, 1.0, n)
    g = rng.normal(1.0, 1.0, n)
    prio = rng.uniform(0.1, 2.0, n)
    shard = _filled_shard(d, prio, alpha)
    keys, probs, prior = [], [], []
    for _ in range(400):
        s = shard.sample(64)
        keys.append(s.keys), probs.append(s.probs), prior.append(s.prior)
    k, p, pr = np.concatenate(keys), np.concatenate(probs), np.concatenate(prior)
    np.testing.assert_allclose(pr, d[k])  # the shard reports each row's own prior
    w = d[k] / (n * p)  # unnormalised IS weight with the prior divided out, beta = 1
    est = w * g[k]
    target = (d * g).mean()
    assert abs(est.mean() - target) < 6 * est.std() / np.sqrt(est.size)
    # and importance_weights is the same up to its batch-max normalisation
    iw = importance_weights(p[:64], n, 1.0, prior=pr[:64])
    np.testing.assert_allclose(iw, w[:64] / w[:64].max(), rtol=1e-9)


def test_prior_mode_counts_the_duration_once():
    """Prioritised rows: the prior is in P' and divided out of the IS weight, and the extra adds no loss weight;
    fresh rows: no prior in their selection, so the extra weights them by d_i. Never both."""
    n = 8
    d = np.linspace(0.5, 4.0, n)
    shard = _filled_shard(d, np.ones(n), alpha=0.0)
    cfg = _cfg("duration.mode=prior", "replay.alpha=0", "replay.beta_start=1", "replay.beta_end=1",
               "replay.samples_per_insert=0", "replay.min_size=1")
    sampler = ReplaySampler([LocalShardClient(shard)], cfg.replay, batch_size=6, n_fresh=2, prefetch=0, seed=0)
    try:
        sample = sampler.next_batch(timeout=5.0, beta=1.0)
    finally:
        sampler.close()
    fresh = sample.fresh.numpy()
    assert fresh.sum() == 2 and sample.prior is not None
    # prioritised rows: P' = d / sum d, so (N P' / d)^-1 is the same for all: their IS weights are equal
    np.testing.assert_allclose(sample.weights[~fresh].numpy(), 1.0, rtol=1e-6)
    extra = DurationExtra(cfg, env_spec(cfg.env))
    batch = _batch(sample, cfg)
    w = extra.policy_weight(batch).numpy()
    np.testing.assert_allclose(w[:, ~fresh], 1.0)  # no second duration factor on prioritised rows
    np.testing.assert_allclose(w[:, fresh], np.broadcast_to(sample.prior.numpy()[fresh], w[:, fresh].shape))


def _batch(sample: ReplaySample, cfg) -> LearnerBatch:
    learner = Learner(cfg, env_spec(cfg.env), device="cpu")
    traj = sample.traj
    out = learner.agent.unroll(traj.obs, traj.reset_mask(), learner.agent.initial_state(traj.B))
    return LearnerBatch(traj=traj, out=out, valid=traj.valid, is_weights=sample.weights, fresh=sample.fresh,
                        version=0, prior=sample.prior)


# ---- the extra in the learner -----------------------------------------------------------------------------------
def test_duration_extra_is_implied_by_the_config_and_logs_with_mode_off():
    assert "duration" in enabled_extras(_cfg())  # instrumentation on by default
    assert "duration" not in enabled_extras(_cfg("duration.instrument=false"))
    assert "duration" in enabled_extras(_cfg("duration.instrument=false", "duration.mode=paper"))
    cfg = _cfg()
    assert cfg.duration.mode == "off"  # YAML's off (a bool in YAML 1.1) is the mode name
    learner = Learner(cfg, env_spec(cfg.env), device="cpu")
    traj = random_trajectory(4, 4, num_actions=2, obs={"x": ((2,), np.float32)}, core_state={},
                             duration=torch.tensor([[0.05, 1.0, 0.05, 1.0]] * 4))
    sample = ReplaySample(traj=traj, keys=torch.arange(4), shard_ids=torch.zeros(4, dtype=torch.int64),
                          weights=torch.ones(4), probs=torch.full((4,), 0.25, dtype=torch.float64),
                          fresh=torch.ones(4, dtype=torch.bool))
    m = learner.step(sample).metrics
    assert m["extras/duration/dt_consumed_p50"] == pytest.approx(0.525)
    share = m["extras/duration/action0_share"] + m["extras/duration/action1_share"]
    assert share == pytest.approx(1.0)
    assert "extras/duration/weight_mean" not in m  # mode off: no weight
    assert any(k.startswith("extras/duration/lag_mean_dt_bin") for k in m)


def test_paper_mode_changes_the_policy_gradient_only():
    cfg = _cfg("duration.mode=paper")
    extra = DurationExtra(cfg, env_spec(cfg.env))
    traj = random_trajectory(4, 4, num_actions=2, obs={"x": ((2,), np.float32)}, core_state={},
                             duration=torch.tensor([[0.05, 1.0, 0.05, 1.0]] * 4))
    sample = ReplaySample(traj=traj, keys=torch.arange(4), shard_ids=torch.zeros(4, dtype=torch.int64),
                          weights=torch.ones(4), probs=torch.full((4,), 0.25, dtype=torch.float64),
                          fresh=torch.zeros(4, dtype=torch.bool))
    w = extra.policy_weight(_batch(sample, cfg))
    np.testing.assert_allclose(w[0].numpy(), [0.1, 1.0 / 0.525] * 2, rtol=1e-5)  # 0.05 / 0.525 clipped to 0.1
    sw = step_weights(sample.weights, traj.valid, extra=w)
    np.testing.assert_allclose(sw.value.numpy(), 1.0)  # baseline and entropy terms stay unweighted
    np.testing.assert_allclose(sw.policy.numpy(), w.numpy())


def test_config_rejects_bad_clips():
    with pytest.raises(ConfigError, match="w_min"):
        _cfg("duration.w_min=2")
    with pytest.raises(ConfigError, match="mode"):
        _cfg("duration.mode=sometimes")
    with pytest.raises(ConfigError, match=r"inclusion with runtime\.mode=ray needs duration\.window_s"):
        _cfg("duration.mode=inclusion", "runtime.mode=ray")
    _cfg("duration.mode=inclusion", "runtime.mode=ray", "duration.window_s=2")  # windowed: no counts needed


# ---- the environment and the data path --------------------------------------------------------------------------
def test_duration_bandit_rules():
    env = make(EnvConfig(name="duration:bandit?k=20&unit=0.5&steps=2"), seed=0)
    obs, _ = env.reset()
    assert obs["x"].tolist() == [1.0, 0.0]
    _, r, te, tr, info = env.step(FAST)
    assert (r, te, tr, info["duration"]) == (0.5, False, False, 0.5)
    _, r, te, tr, info = env.step(SLOW)
    assert (r, te, tr, info["duration"]) == (1.0, True, False, 10.0)
    assert env.clock_s == 10.5  # simulated: nothing slept
    with pytest.raises(ValueError, match="out of range"):
        env.step(2)
    with pytest.raises(ValueError, match="clock"):
        parse_id("duration:bandit?clock=fast")
    with pytest.raises(ValueError, match="unknown option"):
        parse_id("duration:bandit?speed=1")
    decoy = DurationBandit(arms=3, unit=1.0)
    decoy.reset()
    assert decoy.step(2)[1] == 0.0


def test_vec_env_records_the_simulated_duration():
    venv = make_vec_env(EnvConfig(name="duration:bandit?k=20&unit=0.05"), 2, seed=0)
    venv.reset()
    res = venv.step(np.array([FAST, SLOW]))
    np.testing.assert_allclose(res.duration, [0.05, 1.0], rtol=1e-6)
    assert res.terminated.all() and res.reward.tolist() == [0.5, 1.0]
    venv.close()


def test_launch_and_episode_times_flow_through_replay():
    cfg = _cfg("env.name=duration:bandit?k=20&unit=0.05&steps=2", "duration.mode=prior", "replay.min_size=1")
    actor = EnvActor(cfg, actor_id=0)
    traj = next(actor.run(1))
    lt = traj.launch_time
    assert lt.dtype == torch.float64 and bool((lt > 1e9).all())  # wall-clock seconds since the epoch
    assert bool((lt[1:] >= lt[:-1]).all())
    # 2-step episodes: episode_time accumulates the step durations and restarts after each episode end
    dur, ep, done = traj.duration.double(), traj.episode_time.double(), traj.done()
    for b in range(traj.B):
        acc = 0.0
        for t in range(traj.T):
            acc += float(dur[t, b])
            assert float(ep[t, b]) == pytest.approx(acc, rel=1e-5)
            if done[t, b]:
                acc = 0.0
    stats = actor.episode_stats()
    totals = [dict(s.extra)["episode_duration_s"] for s in stats]  # fast+fast, fast+slow or slow+slow
    assert totals and all(min(abs(x - v) for v in (0.1, 1.05, 2.0)) < 1e-6 for x in totals)
    prior = actor.duration_prior(traj)
    shard = ReplayShard(cfg.replay, seed=0)
    assert shard.insert(traj, prior=prior).ok
    s = shard.sample(0, n_fresh=traj.B)
    assert s.ok, s.message
    back = s.trajectory()
    order = np.argsort(s.keys)
    torch.testing.assert_close(back.launch_time[:, order], lt)
    np.testing.assert_allclose(s.prior[order], prior)
    actor.close()
