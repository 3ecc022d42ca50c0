"""``copy_obs``: adapters hand out copies by default and views of their buffers inside a VecEnv (distrl.envs.base).

The VecEnv copies each observation into its batch buffers before the env's next call, so with views it must see
exactly what envs that copy would have returned, episode ends and resets included."""

from __future__ import annotations

import numpy as np
import pytest

from distrl.config import EnvConfig
from distrl.envs.registry import env_spec, make_env
from distrl.envs.vector import make_vec_env, slot_seed

pytestmark = pytest.mark.envs

MINIHACK_KEYS = ("glyphs", "glyphs_crop", "blstats", "message")
CASES = [  # short step limits, so that episodes end within the test
    pytest.param("minihack", EnvConfig(name="MiniHack-Room-5x5-v0", observation_keys=MINIHACK_KEYS,
                                       max_episode_steps=15), id="minihack"),
    pytest.param("ale_py", EnvConfig(name="ALE/Pong-v5", max_episode_steps=12), id="atari"),
]


@pytest.mark.parametrize("module, cfg", CASES)
def test_vecenv_with_views_sees_what_copying_envs_return(module, cfg):
    pytest.importorskip(module)
    B, T = 3, 60
    venv = make_vec_env(cfg, B, seed=0, prereset=False)
    # The same instances the VecEnv builds (slot i, instance 0), handing out copies as they do by default.
    envs = [make_env(cfg, slot_seed(0, i, 0)) for i in range(B)]
    assert all(e.copy_obs for e in envs)
    rng = np.random.default_rng(0)
    try:
        obs = venv.reset()
        assert not any(e.copy_obs for e in venv._runner.envs)
        ref = [e.reset()[0] for e in envs]
        ends = 0
        for _ in range(T):
            for i in range(B):
                for k in obs:
                    np.testing.assert_array_equal(obs[k][i], ref[i][k])
            actions = rng.integers(0, env_spec(cfg).num_actions, B)
            res = venv.step(actions)
            for i, env in enumerate(envs):
                o, r, term, trunc, _ = env.step(int(actions[i]))
                assert (res.reward[i], res.terminated[i], res.truncated[i]) == (np.float32(r), term, trunc)
                if term or trunc:
                    ends += 1
                    for k in o:
                        np.testing.assert_array_equal(res.final_obs[i][k], o[k])
                    o, _ = env.reset()
                ref[i] = o
            obs = res.obs
        assert ends > 0, "the test must cross episode ends"
    finally:
        venv.close()
        for e in envs:
            e.close()


@pytest.mark.parametrize("module, cfg", CASES)
def test_copies_by_default_views_when_asked(module, cfg):
    pytest.importorskip(module)
    env = make_env(cfg, 0)
    try:
        first, _ = env.reset()
        kept = {k: v.copy() for k, v in first.items()}
        env.step(1)
        env.step(2)
        for k in first:  # the default: the env's later steps leave a returned observation alone
            np.testing.assert_array_equal(first[k], kept[k])
        env.copy_obs = False
        view, _ = env.reset()
        after, *_ = env.step(1)
        assert any(np.shares_memory(view[k], after[k]) for k in view), "views of the env's own buffers"
    finally:
        env.close()
