"""MiniWorld PointNav STAND-IN (real MiniWorld rendering headless through EGL): spec, semantics, seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distrl.config import EnvConfig
from distrl.envs import habitat as hab
from distrl.envs import miniworld as mw
from distrl.envs.registry import env_spec, make_env

try:
    # Not pytest.importorskip("miniworld"): miniworld opens its GL context at import, so it must be imported
    # with pyglet's headless (EGL) option set, which import_miniworld does.
    mw.import_miniworld()
except (ImportError, RuntimeError) as e:
    pytest.skip(f"MiniWorld unavailable or cannot render headless here: {e}", allow_module_level=True)

pytestmark = pytest.mark.envs

ONEROOM = "MiniWorld-OneRoom-v0"
SIZE = 48


def _make(seed=0, **fields):
    fields.setdefault("image_size", SIZE)
    try:
        return mw.make(EnvConfig(name=fields.pop("name", ONEROOM), **fields), seed)
    except RuntimeError as e:  # no OpenGL/EGL on this machine: say so instead of failing obscurely
        pytest.skip(f"MiniWorld cannot render here: {e}")


@pytest.fixture(scope="module")
def env():
    e = _make(seed=0)
    yield e
    e.close()


def greedy(obs, env):
    """Turn towards the goal, walk, stop once MiniWorld says the goal is reached."""
    _, angle = obs["pointgoal"]
    if env.env.near(env.env.box):
        return hab.STOP
    if abs(angle) > math.radians(10):
        return 2 if angle > 0 else 3
    return 1


def test_spec_matches_observations_and_equals_the_habitat_spec(env):
    spec = mw.spec(env.cfg)
    assert spec == env_spec(env.cfg)
    assert spec.family == "miniworld"
    habitat_spec = hab.spec(EnvConfig(name=hab.FAKE_ID, image_size=SIZE))
    assert dict(spec.obs) == dict(habitat_spec.obs) and spec.num_actions == habitat_spec.num_actions == 4
    obs, _ = env.reset(seed=0)
    for a in (None, 1, 2, 3, 1):
        if a is not None:
            obs, reward, terminated, truncated, _ = env.step(a)
            assert isinstance(reward, float) and not terminated and not truncated
        assert set(obs) == set(spec.obs)
        for k, v in obs.items():
            spec.obs[k].check(k, v)


def test_pixels_are_the_real_render_and_depth_is_normalised(env):
    obs, _ = env.reset(seed=1)
    env.step(1)
    obs, *_ = env.step(2)
    np.testing.assert_array_equal(obs["rgb"], env.env.render_obs().transpose(2, 0, 1))
    depth_m = env.env.render_depth()[..., 0]
    np.testing.assert_allclose(
        obs["depth"][0], np.clip(depth_m, 0, mw.MAX_DEPTH_M) / mw.MAX_DEPTH_M, atol=1e-6
    )
    assert obs["rgb"].std() > 5 and obs["depth"].std() > 0  # a rendered scene, not a constant image


def test_pointgoal_follows_the_agent(env):
    obs, _ = env.reset(seed=2)
    rho0, angle0 = obs["pointgoal"]
    assert rho0 == pytest.approx(
        float(np.linalg.norm((env.env.box.pos - env.env.agent.pos)[[0, 2]])), rel=1e-5
    )
    turn = math.radians(env.env.params.sample(None, "turn_step"))  # no domain randomisation: the default
    obs, *_ = env.step(2)  # turn left: the goal's angle (positive = to the left) drops by the turn
    assert math.remainder(obs["pointgoal"][1] - (angle0 - turn), 2 * math.pi) == pytest.approx(0, abs=1e-4)
    obs, *_ = env.step(3)
    assert obs["pointgoal"][1] == pytest.approx(angle0, abs=1e-4)


def test_greedy_policy_reaches_the_goal_and_stop_reports_success(env):
    obs, _ = env.reset(seed=3)
    rewards = []
    for _ in range(300):
        action = greedy(obs, env)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        if terminated or truncated:
            break
    assert terminated and not truncated and action == hab.STOP
    assert info["success"] == 1.0 and 0 < info["extra"]["spl"] <= 1.0
    assert rewards[-1] == pytest.approx(2.49)  # slack + no movement + success bonus, as in Habitat
    assert info["episode_return"] == pytest.approx(sum(rewards))
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(1)


def test_stop_away_from_the_goal_terminates_without_success(env):
    env.reset(seed=4)
    assert not env.env.near(env.env.box)
    _, reward, terminated, truncated, info = env.step(hab.STOP)
    assert (terminated, truncated, info["success"], info["extra"]["spl"]) == (True, False, 0.0, 0.0)
    assert reward == pytest.approx(-0.01)


def test_step_limit_truncates():
    env = _make(seed=0, max_episode_steps=5)
    env.reset()
    ends = [env.step(2)[2:4] for _ in range(5)]
    assert ends == [(False, False)] * 4 + [(False, True)]


def test_same_seed_same_first_observation():
    a, b = _make(seed=7), make_env(EnvConfig(name=ONEROOM, image_size=SIZE), 7)
    obs_a, obs_b = a.reset()[0], b.reset()[0]
    for k in obs_a:
        np.testing.assert_array_equal(obs_a[k], obs_b[k])
    second = a.reset()[0]
    assert (second["rgb"] != obs_a["rgb"]).any()  # later resets draw new layouts
    np.testing.assert_array_equal(a.reset(seed=7)[0]["rgb"], obs_a["rgb"])


def test_task_without_a_goal_entity_is_rejected():
    with pytest.raises(ValueError, match="goal entity"):
        _make(name="MiniWorld-PickupObjects-v0")


def test_reward_free_zeroes_rewards(env):
    cfg = EnvConfig(name=ONEROOM, image_size=SIZE, reward_free=True)
    free = mw.make(cfg, 0)
    free.reset(seed=3)
    rewards = [free.step(1)[1] for _ in range(3)]
    *_, info = free.step(hab.STOP)
    assert rewards == [0.0] * 3 and info["episode_return"] != 0.0


def test_spec_rejects_a_non_miniworld_id():
    with pytest.raises(ValueError, match="MiniWorld ids look like"):
        mw.spec(EnvConfig(name="MiniWorld-One Room"))
