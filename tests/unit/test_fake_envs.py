"""Fake envs: exact integer behaviour, spec conformance, action checks, learnable tasks, fault injection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distrl.config import EnvConfig
from distrl.envs import fake
from distrl.envs.registry import env_spec, make_env


def _check_obs(spec, obs):
    assert set(obs) == set(spec.obs)
    for k, s in spec.obs.items():
        s.check(k, np.asarray(obs[k]))


def test_counting_env_counts_resets_and_terminates():
    cfg = EnvConfig(name="fake:counting", fake_episode_len=3)
    env = make_env(cfg, seed=0)
    spec = env_spec(cfg)
    obs, _ = env.reset()
    _check_obs(spec, obs)
    assert (obs["count"][0], obs["episode"][0], obs["last_action"][0]) == (0, 0, -1)
    rewards, terms = [], []
    for a in (2, 0, 1):
        obs, r, term, trunc, info = env.step(a)
        _check_obs(spec, obs)
        assert obs["last_action"][0] == a and not trunc
        rewards.append(r)
        terms.append(term)
    assert obs["count"][0] == 3
    assert rewards == [0.0, 0.0, 1.0] and terms == [False, False, True]
    assert info["success"] == 1.0 and info["extra"] == {"final_count": 3.0}
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(0)
    obs, _ = env.reset()
    assert (obs["count"][0], obs["episode"][0]) == (0, 1)


def test_counting_env_truncates_at_max_episode_steps():
    env = make_env(EnvConfig(name="fake:counting", fake_episode_len=5, max_episode_steps=2), seed=0)
    env.reset()
    assert env.step(0)[2:4] == (False, False)
    _, r, term, trunc, info = env.step(0)
    assert (r, term, trunc) == (0.0, False, True)
    assert "success" not in info


@pytest.mark.parametrize(
    "name", ["fake:spec", "fake:counting", "fake:memory", "fake:bandit", "fake:faulty?at=99"]
)
def test_every_fake_env_matches_its_spec(name):
    cfg = EnvConfig(name=name, fake_episode_len=3)
    spec = env_spec(cfg)
    assert spec.family == "fake" and spec.num_actions >= 2
    env = make_env(cfg, seed=3)
    obs, _ = env.reset()
    _check_obs(spec, obs)
    for _ in range(4):
        obs, r, term, trunc, _ = env.step(1)
        _check_obs(spec, obs)
        assert isinstance(r, float)
        if term or trunc:
            obs, _ = env.reset()


@pytest.mark.parametrize("bad", [5, -1, 2.0, np.array([1, 2])])
def test_spec_env_rejects_invalid_actions(bad):
    env = make_env(EnvConfig(name="fake:spec"), seed=0)
    env.reset()
    with pytest.raises(ValueError, match=r"SpecEnv\(fake:spec\): action"):
        env.step(bad)


def test_spec_env_is_seeded():
    cfg = EnvConfig(name="fake:spec")
    a, b, c = (make_env(cfg, seed=s) for s in (1, 1, 2))
    oa, ob, oc = a.reset()[0], b.reset()[0], c.reset()[0]
    assert np.array_equal(oa["image"], ob["image"]) and not np.array_equal(oa["image"], oc["image"])


def test_memory_env_rewards_only_the_remembered_cue():
    cfg = EnvConfig(name="fake:memory?cues=3", fake_episode_len=2)
    spec = env_spec(cfg)
    assert spec.num_actions == 3
    env = make_env(cfg, seed=0)
    for trial in range(6):
        obs, _ = env.reset()
        cue = int(obs["cue"].argmax())
        assert obs["cue"].sum() == 1.0 and obs["query"][0] == 0.0
        answer = cue if trial % 2 == 0 else (cue + 1) % 3
        seen = []
        for t in range(4):  # cue step, 2 blank steps, query step
            obs, r, term, trunc, info = env.step(answer)
            seen.append((obs["cue"].sum(), obs["query"][0]))
            if t < 3:
                assert not term and r == 0.0
        assert term and not trunc
        assert r == (1.0 if trial % 2 == 0 else 0.0) == info["success"]
        assert seen[:3] == [(0.0, 0.0), (0.0, 0.0), (0.0, 1.0)]


def test_bandit_env_rewards_matching_context():
    env = make_env(EnvConfig(name="fake:bandit?arms=4", fake_episode_len=10), seed=0)
    obs, _ = env.reset()
    total = 0.0
    for _ in range(10):
        obs, r, term, _, info = env.step(int(obs["context"].argmax()))
        total += r
    assert total == 10.0 and term and info["success"] == 1.0


@pytest.mark.parametrize(
    "name, message",
    [
        ("fake:nope", "unknown fake env"),
        ("fake:counting?colour=red", "unknown option"),
        ("fake:faulty?mode=explode", "is not one of"),
        ("fake:memory?cues=x", "must be an integer"),
    ],
)
def test_bad_ids_fail_clearly(name, message):
    with pytest.raises(ValueError, match=message):
        make_env(EnvConfig(name=name), seed=0)


@pytest.mark.parametrize("mode", ["raise", "nan_obs", "inf_obs", "nan_reward"])
def test_faulty_env_fails_exactly_at_the_chosen_step(mode):
    env = make_env(EnvConfig(name=f"fake:faulty?mode={mode}&at=3", fake_episode_len=2), seed=0)
    env.reset()
    env.step(0)
    env.step(0)  # episode ends; the count of step() calls goes on across episodes
    env.reset()
    if mode == "raise":
        with pytest.raises(fake.EnvFault):
            env.step(0)
        return
    obs, r, *_ = env.step(0)
    bad = r if mode == "nan_reward" else float(obs["real"][0])
    assert not math.isfinite(bad)
    obs, r, *_ = env.step(0)  # only once
    assert math.isfinite(r) and np.isfinite(obs["real"]).all()


def test_faulty_env_seed_option_arms_one_instance_only():
    cfg = EnvConfig(name="fake:faulty?mode=raise&at=1&seed=7")
    ok, bad = make_env(cfg, seed=6), make_env(cfg, seed=7)
    ok.reset()
    bad.reset()
    ok.step(0)
    with pytest.raises(fake.EnvFault):
        bad.step(0)


def test_faulty_env_raise_reset():
    env = make_env(EnvConfig(name="fake:faulty?mode=raise_reset&at=2", fake_episode_len=1), seed=0)
    env.reset()
    env.step(0)
    with pytest.raises(fake.EnvFault):
        env.reset()


def test_fake_counting_make_ms_must_be_a_non_negative_number():
    from distrl.config import EnvConfig
    from distrl.envs.fake import make

    for bad, why in (("-5", "must be >= 0"), ("nan", "must be >= 0"), ("x", "must be a number")):
        with pytest.raises(ValueError, match=rf"fake:counting.*make_ms.*{why}"):
            make(EnvConfig(name=f"fake:counting?make_ms={bad}"), seed=0)
