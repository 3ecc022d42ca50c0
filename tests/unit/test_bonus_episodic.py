"""Episodic bonuses (E3B, episodic counts) against explicit references, the "e3b" learner extra, and a real
EnvActor on MiniHack producing them."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distrl.bonuses.e3b import InverseDynamics, idm_loss
from distrl.bonuses.episodic import E3BBonus, E3BEpisodicBonus, EpisodicCountBonus
from distrl.config import BonusConfig, EnvConfig, ExperimentConfig, ModelConfig, SequenceConfig
from distrl.envs.base import ArraySpec, EnvSpec

# ---- E3B: Sherman-Morrison against the explicit inverse ------------------------------------------------------


def _reference_bonuses(phis: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """phi_t^T (lambda I + sum_{i<t} phi_i phi_i^T)^{-1} phi_t by explicit inversion (float64), first step 0;
    also the final inverse (with every phi in)."""
    d = phis.shape[1]
    c = ridge * np.eye(d)
    out = np.zeros(len(phis))
    for t, p in enumerate(phis):
        out[t] = p @ np.linalg.inv(c) @ p
        c += np.outer(p, p)
    out[0] = 0.0
    return out, np.linalg.inv(c)


@pytest.mark.parametrize("dtype,rtol,cinv_rtol", [(torch.float64, 1e-6, 1e-8), (torch.float32, 2e-3, 2e-3)])
def test_sherman_morrison_equals_explicit_inverse_after_hundreds_of_updates(dtype, rtol, cinv_rtol):
    """The bonus (returned as float32) and C^{-1} (float64: to 1e-8) after 500 rank-1 updates."""
    rng = np.random.default_rng(0)
    d, steps, ridge = 64, 500, 0.1
    phis = rng.normal(size=(steps, 2, d)) / np.sqrt(d)  # two slots, different streams
    e3b = E3BBonus(2, d, ridge, resym_every=64, dtype=dtype)
    got = np.stack([e3b.step(torch.from_numpy(p)) for p in phis])  # [steps, 2]
    for slot in range(2):
        ref, cinv = _reference_bonuses(phis[:, slot], ridge)
        np.testing.assert_allclose(got[:, slot], ref, rtol=rtol, atol=rtol * 1e-2)
        np.testing.assert_allclose(e3b.cinv[slot].double().numpy(), cinv, rtol=cinv_rtol, atol=cinv_rtol * 1e-1)
    # bonuses shrink as the ellipse fills: the late ones are far below the early ones
    assert got[1:10].mean() > 20 * got[-50:].mean()


def test_first_step_zero_and_reset_restores_identity_per_slot():
    rng = np.random.default_rng(1)
    d, ridge = 8, 0.1
    e3b = E3BBonus(3, d, ridge, dtype=torch.float64)
    assert e3b.step(rng.normal(size=(3, d))).tolist() == [0.0, 0.0, 0.0]
    for _ in range(5):
        b = e3b.step(rng.normal(size=(3, d)))
        assert (b > 0).all()
    before = e3b.cinv.clone()
    e3b.reset(np.array([False, True, False]))
    torch.testing.assert_close(e3b.cinv[1], torch.eye(d, dtype=torch.float64) / ridge)
    torch.testing.assert_close(e3b.cinv[[0, 2]], before[[0, 2]])
    b = e3b.step(rng.normal(size=(3, d)))
    assert b[1] == 0.0 and b[0] > 0 and b[2] > 0
    # after the reset slot 1 sees only its new episode: the same as a fresh bonus fed the same phis
    fresh = E3BBonus(1, d, ridge, dtype=torch.float64)
    phis = rng.normal(size=(4, 3, d))
    e3b.reset(np.array([False, True, False]))
    fresh_b = [fresh.step(p[1:2])[0] for p in phis]
    slot_b = [e3b.step(p)[1] for p in phis]
    np.testing.assert_allclose(slot_b, fresh_b, rtol=1e-10)


def test_slots_are_independent():
    """Each slot's bonus depends only on its own stream (one batched update, no cross-talk)."""
    rng = np.random.default_rng(2)
    d = 16
    phis = rng.normal(size=(30, 4, d))
    batched = E3BBonus(4, d, 0.1, dtype=torch.float64)
    got = np.stack([batched.step(p) for p in phis])
    for slot in range(4):
        alone = E3BBonus(1, d, 0.1, dtype=torch.float64)
        ref = [alone.step(p[slot: slot + 1])[0] for p in phis]
        np.testing.assert_allclose(got[:, slot], ref, rtol=1e-10)


def test_repeated_state_bonus_decays_new_direction_stays_high():
    d = 4
    e3b = E3BBonus(1, d, 0.1, dtype=torch.float64)
    x, y = np.eye(d)[0:1], np.eye(d)[1:2]
    e3b.step(x)
    rep = [e3b.step(x)[0] for _ in range(10)]
    assert all(a > b for a, b in itertools.pairwise(rep))  # 1 / (0.1 + n) after n visits
    np.testing.assert_allclose(rep[0], 1 / 1.1)
    np.testing.assert_allclose(e3b.step(y)[0], 10.0)  # orthogonal: |y|^2 / lambda


def test_e3b_bad_input_errors():
    with pytest.raises(ValueError, match="ridge"):
        E3BBonus(2, 4, 0.0)
    with pytest.raises(ValueError, match=r"phi must be \[2, 4\]"):
        E3BBonus(2, 4).step(np.zeros((2, 5), np.float32))


# ---- episodic counts -----------------------------------------------------------------------------------------


def _pos_obs(xy):
    b = np.zeros((len(xy), 27), np.int64)
    b[:, :2] = xy
    return {"blstats": b}


def test_first_visit_is_one_exactly_once_per_episode_and_key():
    c = EpisodicCountBonus(2, "position", "first_visit")
    walk = [[(0, 0), (5, 5)], [(1, 0), (5, 5)], [(0, 0), (5, 6)], [(1, 0), (5, 5)], [(2, 0), (5, 7)]]
    got = np.stack([c.step(_pos_obs(xy)) for xy in walk])
    np.testing.assert_array_equal(got[:, 0], [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(got[:, 1], [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(c.episode_unique(np.array([True, True])), [3, 3])
    np.testing.assert_array_equal(c.episode_unique(np.array([True, False])), [3, 0])
    c.reset(np.array([True, False]))  # slot 0's episode ends: its counts start over, slot 1's go on
    np.testing.assert_array_equal(c.step(_pos_obs([(0, 0), (5, 6)])), [1, 0])


def test_isqrt_form():
    c = EpisodicCountBonus(1, "position", "isqrt")
    got = [c.step(_pos_obs([(3, 4)]))[0] for _ in range(4)]
    np.testing.assert_allclose(got, 1 / np.sqrt([1, 2, 3, 4]), rtol=1e-6)
    assert c.step(_pos_obs([(3, 5)]))[0] == 1.0
    c.reset(np.array([True]))
    assert c.step(_pos_obs([(3, 4)]))[0] == 1.0


def test_count_bad_config_errors():
    with pytest.raises(ValueError, match="unknown form 'sqrt'"):
        EpisodicCountBonus(1, "position", "sqrt")
    with pytest.raises(ValueError, match="unknown state key 'pos'"):
        EpisodicCountBonus(1, "pos", "isqrt")


# ---- the "e3b" learner extra and the actor hook ---------------------------------------------------------------


def _vector_spec(n=8, actions=4):
    return EnvSpec(name="vec", obs={"x": ArraySpec((n,), np.dtype(np.float32))}, num_actions=actions, family="fake")


def _e3b_cfg(dim=32):
    return ExperimentConfig(
        env=EnvConfig(name="fake:counting"),
        model=ModelConfig(hidden_size=16, encoder="mlp"),
        bonus=BonusConfig(episodic="e3b", e3b_dim=dim, e3b_lr=1e-3),
    )


def _idm_batch(T=20, B=16, n=8, actions=4, seed=0):
    """s_{t+1} = s_t + 0.5 e_{a_t} (a_t read off the change); one episode end in column 0 at t = 5."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, actions, (T, B), generator=g)
    x = torch.zeros(T + 1, B, n)
    x[0] = torch.randn(B, n, generator=g)
    for t in range(T):
        x[t + 1] = x[t] + 0.5 * torch.nn.functional.one_hot(a[t], n).float()
    term = torch.zeros(T, B, dtype=torch.bool)
    term[5, 0] = True
    x[6, 0] = torch.randn(n, generator=g)  # the next episode starts: not a transition of a_5
    traj = SimpleNamespace(obs={"x": x}, action=a, terminated=term, truncated=torch.zeros_like(term))
    return SimpleNamespace(traj=traj, valid=torch.ones(T, B, dtype=torch.bool))


def test_e3b_extra_idm_loss_falls_on_a_fixed_batch():
    from distrl.learners.e3b_extra import E3BExtra

    extra = E3BExtra(_e3b_cfg(), _vector_spec())
    (group,) = extra.param_groups()
    assert group["lr"] == 1e-3 and len(group["params"]) == len(list(extra.parameters()))
    opt = torch.optim.Adam(extra.param_groups())
    batch = _idm_batch()
    first, metrics = extra.loss(batch)
    assert metrics["transitions"] == 20 * 16 - 1  # the episode's last step is not a transition
    for _ in range(150):
        loss, metrics = extra.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.3 * float(first.detach())
    assert metrics["idm_accuracy"] > 0.9


def test_idm_loss_ignores_masked_steps():
    embed = torch.nn.Identity()
    idm = InverseDynamics(2, 3)
    obs = torch.randn(4, 2, 2)
    a = torch.zeros(3, 2, dtype=torch.long)
    mask = torch.ones(3, 2, dtype=torch.bool)
    mask[1, 1] = False
    loss, _ = idm_loss(embed, idm, obs, a, mask)
    a2 = a.clone()
    a2[1, 1] = 2  # a masked step's action does not matter
    loss2, _ = idm_loss(embed, idm, obs, a2, mask)
    torch.testing.assert_close(loss, loss2)


def test_actor_weights_round_trip_into_the_actor_hook():
    from distrl.bonuses.e3b import e3b_model_config
    from distrl.learners.e3b_extra import E3BExtra
    from distrl.models.encoders import build_encoder

    cfg, spec = _e3b_cfg(), _vector_spec()
    extra = E3BExtra(cfg, spec)
    hook = E3BEpisodicBonus(build_encoder(e3b_model_config(cfg), spec), num_envs=3, dim=32)
    obs = {"x": np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)}
    with torch.no_grad():
        want = extra.embed({"x": torch.from_numpy(obs["x"])})
        assert not torch.allclose(hook.embed({"x": torch.from_numpy(obs["x"])}), want)  # random init differs
    hook.load_weights(7, {"e3b": extra.actor_weights()})
    assert hook.version == 7
    with torch.no_grad():
        torch.testing.assert_close(hook.embed({"x": torch.from_numpy(obs["x"])}), want)
    # the bonus is computed from those embeddings: first step 0, then the elliptical bonus of phi
    hook.step(obs)
    b = hook.step(obs)
    phi = want.double().numpy()
    ref = [_reference_bonuses(np.stack([phi[i], phi[i]]), 0.1)[0][1] for i in range(3)]
    np.testing.assert_allclose(b, ref, rtol=1e-3)
    with pytest.raises(KeyError, match="no 'e3b' extra"):
        hook.load_weights(8, {})
    hook.load_weights(7, {})  # same version: nothing to load


def test_numpy_embedding_equals_the_torch_one():
    """The actor's E3B hook embeds in NumPy where the encoder has a kernel: same phi, same bonus, also after a
    weight load (which must re-sync the NumPy copy)."""
    from distrl.bonuses.e3b import e3b_model_config
    from distrl.models.encoders import build_encoder
    from distrl.models.numpy_act import NumpyEncoder

    cfg, spec = _e3b_cfg(), _vector_spec()
    enc_a, enc_b = build_encoder(e3b_model_config(cfg), spec), build_encoder(e3b_model_config(cfg), spec)
    fast = E3BEpisodicBonus(enc_a, 4, 32, numpy_embed=NumpyEncoder(enc_a))
    slow = E3BEpisodicBonus(enc_b, 4, 32)
    w = {k: v + 0.1 for k, v in enc_a.state_dict().items()}
    fast.load_weights(1, {"e3b": w})
    slow.load_weights(1, {"e3b": w})
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs = {"x": rng.normal(size=(4, 8)).astype(np.float32)}
        np.testing.assert_allclose(fast.numpy_embed(obs), slow.embed({"x": torch.from_numpy(obs["x"])}).numpy(),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fast.step(obs), slow.step(obs), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="NumpyEncoder cannot run"):
        NumpyEncoder(torch.nn.Linear(2, 2))


# ---- a real EnvActor on MiniHack ------------------------------------------------------------------------------


def _minihack_cfg(episodic, glob="none", num_envs=4):
    return ExperimentConfig(
        env=EnvConfig(name="MiniHack-Room-5x5-v0", num_envs=num_envs, vectorization="inline"),
        model=ModelConfig(hidden_size=32, encoder="nethack_small"),
        sequence=SequenceConfig(length=25, burn_in=0, period=25),
        bonus=BonusConfig(episodic=episodic, glob=glob),
    )


def _stream(actor, n):
    trajs = list(actor.run(num_sequences=n))
    bonus = torch.cat([t.episodic_bonus for t in trajs]).numpy()  # [n * T, B]: period == length, no overlap
    done = torch.cat([t.terminated | t.truncated for t in trajs]).numpy()
    return bonus, done


@pytest.mark.parametrize("episodic", ["e3b", "count"])
def test_env_actor_on_minihack_produces_episodic_bonus(episodic):
    pytest.importorskip("minihack")
    from distrl.actors import EnvActor, RandomPolicy
    from distrl.envs.registry import env_spec

    cfg = _minihack_cfg(episodic, glob="count")
    spec = env_spec(cfg.env)
    actor = EnvActor(cfg, actor_id=0, policy=RandomPolicy(spec.num_actions, seed=0))
    try:
        if episodic == "e3b":
            from distrl.learners.e3b_extra import E3BExtra

            w = E3BExtra(cfg, spec).actor_weights()
            actor.set_weights(SimpleNamespace(version=3, policy={}, extras={"e3b": w}))
            assert actor.bonus.version == 3
            assert actor.bonus.numpy_embed is not None  # nethack_small has a NumPy kernel
        bonus, done = _stream(actor, 8)
        starts = np.zeros_like(done)
        starts[0] = True
        starts[1:] = done[:-1]
        assert done.any(), "no episode ended: the test needs episode starts after the first"
        # E3B's first step is 0 by rule; the first state of an episode is always a first visit
        assert (bonus[starts] == (0.0 if episodic == "e3b" else 1.0)).all()
        assert (bonus[~starts] > 0).mean() > 0.2 and np.isfinite(bonus).all()
        if episodic == "count":
            assert set(np.unique(bonus)) <= {0.0, 1.0}
        stats = actor.episode_stats()
        uniq = [dict(s.extra)["episodic_unique"] for s in stats]
        assert all(1 <= u <= s.length for u, s in zip(uniq, stats))
        keys = actor.drain_state_keys()
        assert keys.dtype == np.int64 and len(keys) == actor.env_steps  # every env step once
        assert len(actor.drain_state_keys()) == 0  # drained
    finally:
        actor.close()


def test_env_actor_without_bonus_has_no_hook_and_no_keys():
    pytest.importorskip("minihack")
    from distrl.actors import EnvActor, RandomPolicy
    from distrl.envs.registry import env_spec

    cfg = _minihack_cfg("none")
    actor = EnvActor(cfg, actor_id=0, policy=RandomPolicy(env_spec(cfg.env).num_actions, seed=0))
    try:
        (traj,) = list(actor.run(num_sequences=1))
        assert actor.bonus is None and (traj.episodic_bonus == 0).all()
        assert len(actor.drain_state_keys()) == 0
    finally:
        actor.close()


def test_env_actor_refuses_a_count_key_the_env_lacks():
    from distrl.actors import EnvActor, RandomPolicy
    from distrl.config import ConfigError

    cfg = ExperimentConfig(env=EnvConfig(name="fake:counting", num_envs=2), model=ModelConfig(hidden_size=16),
                           bonus=BonusConfig(episodic="count", count_key="position"))
    with pytest.raises(ConfigError, match="reads observation 'blstats'"):
        EnvActor(cfg, actor_id=0, policy=RandomPolicy(3))


# ---- fixed levels for the study's contexts (env.num_levels) --------------------------------------------------


def test_minihack_num_levels_fixes_the_layouts_for_every_env():
    pytest.importorskip("minihack")
    from distrl.bonuses.keys import state_keys
    from distrl.envs.minihack import make

    def layouts(num_levels, env_seeds, episodes=4, seed=5):
        cfg = EnvConfig(name="MiniHack-MultiRoom-N4-v0", num_levels=num_levels, seed=seed,
                        observation_keys=("glyphs", "blstats"))
        out = set()
        for s in env_seeds:
            env = make(cfg, seed=s)
            try:
                for _ in range(episodes):
                    obs, _ = env.reset()
                    out.add(int(state_keys({k: v[None] for k, v in obs.items()}, "glyphs")[0]))
            finally:
                env.close()
        return out

    assert len(layouts(1, [1, 2], episodes=3)) == 1  # one level, whatever the env's own seed
    assert len(layouts(2, [1, 2], episodes=4)) == 2
    assert len(layouts(0, [1], episodes=4)) == 4  # a new level every episode
    assert layouts(1, [1], episodes=1) != layouts(1, [1], episodes=1, seed=6)  # the level depends on env.seed
    with pytest.raises(ValueError, match=r"env\.num_levels must be >= 0"):
        make(EnvConfig(name="MiniHack-MultiRoom-N4-v0", num_levels=-1), seed=0)


# ---- through the Learner: bonus.episodic=e3b switches the extra on, trains it and publishes phi -------------


def test_learner_trains_the_e3b_extra_and_its_weights_reach_the_actor_hook():
    from distrl.bonuses.e3b import e3b_model_config
    from distrl.config import load_config
    from distrl.learners.learner import Learner
    from distrl.models.encoders import build_encoder
    from distrl.replay.testing import random_trajectory
    from distrl.types import ReplaySample

    spec = EnvSpec(name="fake:test", obs={"x": ArraySpec((3,), np.dtype(np.float32))}, num_actions=4, family="fake")
    cfg = load_config(None, ["model.encoder=mlp", "model.hidden_size=16", "sequence.length=6", "sequence.burn_in=0",
                             "sequence.period=6", "learner.batch_size=5", "bonus.episodic=e3b", "bonus.e3b_dim=8"])
    learner = Learner(cfg, spec, device="cpu")
    extra = learner.extras["e3b"]
    assert any(g["lr"] == cfg.bonus.e3b_lr for g in learner.optimizer.param_groups)
    traj = random_trajectory(6, 5, num_actions=4, obs={"x": ((3,), np.float32)},
                             core_state=learner.agent.initial_state(5), policy_version=0, seed=0)
    sample = ReplaySample(traj=traj, keys=torch.arange(5), shard_ids=torch.zeros(5, dtype=torch.int64),
                          weights=torch.ones(5), probs=torch.full((5,), 0.2, dtype=torch.float64),
                          fresh=torch.ones(5, dtype=torch.bool))
    before = {k: v.clone() for k, v in extra.embed.state_dict().items()}
    out = learner.step(sample)
    assert np.isfinite(out.metrics["extras/e3b/loss"]) and "extras/e3b/idm_accuracy" in out.metrics
    assert any(not torch.equal(before[k], v) for k, v in extra.embed.state_dict().items())  # phi was trained
    w = learner.weights()
    assert set(w.extras) == {"e3b"}  # the "bonus" extra is learner-only
    hook = E3BEpisodicBonus(build_encoder(e3b_model_config(cfg), spec), 2, 8)
    hook.load_weights(w.version, w.extras)
    x = {"x": np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)}
    with torch.no_grad():
        torch.testing.assert_close(hook.embed({"x": torch.from_numpy(x["x"])}),
                                   extra.embed({"x": torch.from_numpy(x["x"])}))


@pytest.mark.parametrize("override,message", [
    ("bonus.e3b_lr=0", "bonus.e3b_lr must be > 0"),
    ("bonus.e3b_dim=-1", "bonus.e3b_dim must be >= 0"),
    ("bonus.e3b_resym_every=-1", "bonus.e3b_resym_every must be >= 0"),
    ("env.num_levels=-1", "env.num_levels must be >= 0"),
    ("bonus.count_form=sqrt", "count_form"),
])
def test_bad_episodic_bonus_config_is_refused_at_load(override, message):
    from distrl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
