"""MiniHack adapter on real MiniHack envs: spec vs observations, episode ends, success, seeding."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("minihack")

from distrl.config import EnvConfig
from distrl.envs import minihack as mh
from distrl.envs.registry import env_spec, make_env

pytestmark = pytest.mark.envs

ROOM = "MiniHack-Room-5x5-v0"  # fixed layout: agent top-left, stairs bottom-right
SE = 5  # MiniHack navigation actions: N E S W NE SE SW NW
N = 0


def _check_obs(spec, obs):
    assert set(obs) == set(spec.obs)
    for k, v in obs.items():
        assert isinstance(v, np.ndarray)
        spec.obs[k].check(k, v)


@pytest.mark.parametrize(
    "keys, crop",
    [
        ((), 9),
        (
            (
                "glyphs",
                "chars",
                "colors",
                "specials",
                "glyphs_crop",
                "chars_crop",
                "colors_crop",
                "specials_crop",
                "blstats",
                "message",
            ),
            5,
        ),
    ],
)
def test_spec_matches_reset_and_step_observations(keys, crop):
    cfg = EnvConfig(name=ROOM, observation_keys=keys, crop_size=crop)
    spec = mh.spec(cfg)
    assert spec.family == "minihack" and spec.num_actions == 8
    assert tuple(spec.obs) == (keys or mh.DEFAULT_OBSERVATION_KEYS)
    assert spec.obs["glyphs_crop"].shape == (crop, crop)
    env = mh.make(cfg, seed=0)
    obs, _ = env.reset()
    _check_obs(spec, obs)
    for a in range(3):
        obs, reward, terminated, truncated, _ = env.step(a)
        _check_obs(spec, obs)
        assert isinstance(reward, float) and not terminated and not truncated
    env.close()


def test_crop_is_centred_on_the_agent():
    env = mh.make(EnvConfig(name=ROOM, observation_keys=("chars", "chars_crop"), crop_size=5), seed=0)
    obs, _ = env.reset()
    assert obs["chars_crop"][2, 2] == ord("@")
    ((r, c),) = np.argwhere(obs["chars"] == ord("@"))
    np.testing.assert_array_equal(obs["chars_crop"], obs["chars"][r - 2 : r + 3, c - 2 : c + 3])


@pytest.mark.parametrize("name,crop", [(ROOM, 9), ("MiniHack-MultiRoom-N4-v0", 5), ("MiniHack-Corridor-R3-v0", 9)])
def test_own_crops_equal_minihacks_crop(name, crop):
    """The adapter cuts glyphs/chars/colors/specials crops itself; MiniHack's own ``_crop_observation`` on the
    same map and position is the oracle (random rollouts over several episodes, agents near map edges
    included in the corridor task)."""
    keys = ("glyphs", "chars", "colors", "specials", "blstats",
            "glyphs_crop", "chars_crop", "colors_crop", "specials_crop")
    env = mh.make(EnvConfig(name=name, observation_keys=keys, crop_size=crop), seed=3)
    lib = env.env
    assert "glyphs_crop" not in lib._observation_keys  # MiniHack is not asked for the crops
    rng = np.random.default_rng(0)
    obs, _ = env.reset()
    edges = 0
    for _ in range(300):
        x, y = int(obs["blstats"][0]), int(obs["blstats"][1])
        edges += x < crop // 2 or y < crop // 2 or x > 78 - crop // 2 or y > 20 - crop // 2
        for layer in ("glyphs", "chars", "colors", "specials"):
            expected = lib._crop_observation(obs[layer], np.array([x, y]))
            np.testing.assert_array_equal(obs[f"{layer}_crop"], expected, err_msg=layer)
            assert obs[f"{layer}_crop"].dtype == obs[layer].dtype
        obs, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    if name == "MiniHack-Corridor-R3-v0":
        assert edges > 0, "no step near a map edge: the padding went untested"


def test_observations_are_copies_not_views_of_nle_buffers():
    env = mh.make(EnvConfig(name=ROOM, observation_keys=("chars",)), seed=0)
    first, _ = env.reset()
    kept = first["chars"].copy()
    env.step(SE)
    np.testing.assert_array_equal(first["chars"], kept)


def test_reaching_the_stairs_terminates_with_success():
    env = mh.make(EnvConfig(name=ROOM), seed=0)
    env.reset()
    for _ in range(3):
        _, r, terminated, truncated, info = env.step(SE)
        assert (r, terminated, truncated, info) == (0.0, False, False, {})
    _, r, terminated, truncated, info = env.step(SE)
    assert terminated and not truncated
    assert info["success"] == 1.0 and info["episode_return"] == r == 1.0
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(SE)


def test_step_limit_truncates_without_success():
    env = mh.make(EnvConfig(name=ROOM, max_episode_steps=7), seed=0)
    env.reset()
    for t in range(1, 8):
        _, _, terminated, truncated, info = env.step(N)  # walks into the top wall: never succeeds
        assert not terminated
        assert truncated == (t == 7)
    assert info["success"] == 0.0 and "episode_return" in info


def test_task_default_limit_is_truncation():
    env = mh.make(EnvConfig(name=ROOM), seed=0)  # Room-5x5's own limit: 100 steps
    env.reset()
    ends = [env.step(N)[2:4] for _ in range(100)]
    assert ends[-1] == (False, True) and all(e == (False, False) for e in ends[:-1])


def test_reward_free_zeroes_reward_but_reports_raw_return():
    env = mh.make(EnvConfig(name=ROOM, reward_free=True), seed=0)
    env.reset()
    rewards = [env.step(SE)[1] for _ in range(3)]
    _, r, terminated, _, info = env.step(SE)
    assert [*rewards, r] == [0.0] * 4
    assert terminated and info["episode_return"] == 1.0 and info["success"] == 1.0


def _positions(obs):
    return tuple(map(tuple, np.argwhere(obs["chars"] == ord("@")))) + tuple(
        map(tuple, np.argwhere(obs["chars"] == ord(">")))
    )


def test_seed_fixes_the_level_stream_and_resets_draw_new_levels():
    cfg = EnvConfig(name="MiniHack-Room-Random-5x5-v0", observation_keys=("chars",))
    a, b = mh.make(cfg, seed=3), mh.make(cfg, seed=3)
    levels_a = [_positions(a.reset()[0]) for _ in range(5)]
    levels_b = [_positions(b.reset()[0]) for _ in range(5)]
    assert levels_a == levels_b
    assert len(set(levels_a)) > 1  # NetHack would repeat one level forever if seeds were not redrawn
    assert [_positions(a.reset(seed=3)[0])] + [_positions(a.reset()[0]) for _ in range(4)] == levels_a
    c = mh.make(cfg, seed=4)
    assert [_positions(c.reset()[0]) for _ in range(5)] != levels_a


def test_minigrid_based_task_is_seeded():
    cfg = EnvConfig(name="MiniHack-MultiRoom-N4-v0", observation_keys=("glyphs",))
    first = [mh.make(cfg, seed=s).reset()[0]["glyphs"] for s in (11, 11, 12)]
    np.testing.assert_array_equal(first[0], first[1])
    assert (first[0] != first[2]).any()


def test_registry_routes_minihack_ids():
    cfg = EnvConfig(name=ROOM)
    assert env_spec(cfg) == mh.spec(cfg)
    env = make_env(cfg, seed=1)
    assert isinstance(env, mh.MiniHackEnv)


@pytest.mark.parametrize(
    "cfg, match",
    [
        (EnvConfig(name=ROOM, crop_size=4), "odd"),
        (EnvConfig(name="MiniHack-NoSuchTask-v0"), "not a registered MiniHack env"),
        (EnvConfig(name=ROOM, observation_keys=("glyphs", "no_such_key")), "no_such_key"),
    ],
)
def test_bad_config_is_named(cfg, match):
    with pytest.raises(ValueError, match=match):
        mh.make(cfg, seed=0)


def test_bad_action_is_rejected():
    env = mh.make(EnvConfig(name=ROOM), seed=0)
    env.reset()
    with pytest.raises(ValueError, match="out of range"):
        env.step(8)


def test_import_hides_the_pkg_resources_warning():
    code = "from distrl.envs import minihack as m; m._import_minihack()"
    out = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pkg_resources" not in out.stderr


MULTIROOM = "MiniHack-MultiRoom-N4-v0"


def _nhdat(env) -> bytes:
    with open(f"{env.env.nethack._vardir}/nhdat", "rb") as f:
        return f.read()


@pytest.mark.parametrize("des", ["corridor2.des", "string"])
def test_level_patcher_builds_the_same_nhdat_as_minihacks_script(des):
    env = mh.make(EnvConfig(name=MULTIROOM, observation_keys=("glyphs",)), seed=0)
    assert env.fast_level_patch
    if des == "string":  # what MiniGrid-based tasks pass: the description itself
        with open(f"{mh._import_minihack().__path__[0]}/dat/corridor3.des") as f:
            des = f.read()
    type(env.env)._patch_nhdat(env.env, des)  # the library's own (bash script) path
    expected = _nhdat(env)
    os.remove(f"{env.env.nethack._vardir}/nhdat")
    env.env._patch_nhdat(des)  # the adapter's patcher, on the same history (lev_comp's output depends on it)
    assert _nhdat(env) == expected
    env.close()


def test_level_patcher_gives_the_same_episodes_as_the_library():
    cfg = EnvConfig(name=MULTIROOM, observation_keys=("glyphs", "blstats"))
    fast, slow = mh.make(cfg, seed=5), mh.make(cfg, seed=5)
    del slow.env._patch_nhdat  # back to MiniHack's method
    rng = np.random.default_rng(0)
    for _ in range(3):  # each reset compiles a new MiniGrid layout
        (of, _), (os_, _) = fast.reset(), slow.reset()
        for k in of:
            np.testing.assert_array_equal(of[k], os_[k])
        for a in rng.integers(0, fast.action_space.n, 20):
            rf, rs = fast.step(int(a)), slow.step(int(a))
            for k in rf[0]:
                np.testing.assert_array_equal(rf[0][k], rs[0][k])
            assert rf[1:4] == rs[1:4]
            if rf[2] or rf[3]:
                break
    fast.close()
    slow.close()


def test_level_patcher_names_a_bad_level_description():
    env = mh.make(EnvConfig(name=MULTIROOM, observation_keys=("glyphs",)), seed=0)
    with pytest.raises(RuntimeError, match="lev_comp"):
        env.env._patch_nhdat('MAZE: "mylevel", \' \'\nNOT A LEVEL DESCRIPTION\n')
    with pytest.raises(FileNotFoundError, match=r"no_such_level\.des"):
        env.env._patch_nhdat("no_such_level.des")
    env.close()


@pytest.mark.parametrize("name", [ROOM, MULTIROOM])
def test_skipping_screen_descriptions_gives_the_same_episodes(name, monkeypatch):
    """With the default keys nothing reads NLE's screen descriptions: NetHack stops filling them, and the
    episodes (observations, rewards, ends, infos) are the same as with the library's full buffer set."""
    cfg = EnvConfig(name=name)
    fast = mh.make(cfg, seed=3)
    assert fast.skips_screen_descriptions
    monkeypatch.setattr(mh, "_skip_screen_descriptions", lambda env, keys: False)
    slow = mh.make(cfg, seed=3)
    assert not slow.skips_screen_descriptions
    rng = np.random.default_rng(1)
    (of, _), (os_, _) = fast.reset(), slow.reset()
    episodes = 0
    for a in rng.integers(0, fast.action_space.n, 400).tolist():
        for k in of:
            np.testing.assert_array_equal(of[k], os_[k])
        rf, rs = fast.step(a), slow.step(a)
        assert rf[1:] == rs[1:]
        of, os_ = rf[0], rs[0]
        if rf[2] or rf[3]:
            episodes += 1
            (of, _), (os_, _) = fast.reset(), slow.reset()
    assert episodes >= 2
    assert slow.env.nethack._obs_buffers["screen_descriptions"].any()  # the library's env fills them
    assert not fast.env.nethack._obs_buffers["screen_descriptions"].any()  # NetHack no longer writes them
    with pytest.raises(IndexError):  # a reader that was missed fails loudly instead of reading stale text
        fast.env.screen_contains("wall")
    fast.close()
    slow.close()


def test_screen_descriptions_are_kept_where_something_reads_them():
    env = mh.make(EnvConfig(name=ROOM, observation_keys=("glyphs", "screen_descriptions")), seed=0)
    assert not env.skips_screen_descriptions
    obs, _ = env.reset()
    assert obs["screen_descriptions"].any()
    env.close()
    eat = mh.make(EnvConfig(name="MiniHack-Eat-v0"), seed=0)  # a reward manager: its events read them
    assert not eat.skips_screen_descriptions
    eat.reset()
    assert eat.env.nethack._obs_buffers["screen_descriptions"].any()
    eat.close()
