"""``render()`` on the real env adapters (MiniHack, Atari, MiniWorld) and FakeHabitat, and their videos.

Each family's section skips on its own when that simulator is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distrl.config import EnvConfig, load_config
from distrl.envs import video
from distrl.envs.registry import make_env

pytest.importorskip("PIL.Image")

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
SE, N = 5, 0  # MiniHack navigation actions (N E S W NE SE SW NW)


def _colours(frame: np.ndarray) -> int:
    return len(np.unique(frame.reshape(-1, 3), axis=0))


def _read_back_count(path: Path) -> int:
    if path.suffix == ".gif":
        from PIL import Image

        return Image.open(path).n_frames
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


# ------------------------------------------------------------------------------------------------------------
# MiniHack
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quickstart_env_cfg() -> EnvConfig:
    pytest.importorskip("minihack")
    cfg = load_config(QUICKSTART).env
    assert "chars" not in (cfg.observation_keys or ()) and "tty_chars" not in (cfg.observation_keys or ())
    return cfg


@pytest.mark.envs
def test_minihack_renders_the_terminal_with_the_quickstart_keys(quickstart_env_cfg):
    env = make_env(quickstart_env_cfg, seed=0, render=True)
    obs, _ = env.reset()
    first = env.render()
    assert first.dtype == np.uint8 and first.shape == (528, 960, 3)
    assert _colours(first) > 1  # not blank: characters on black
    assert (first == 0).all(axis=2).mean() > 0.5  # the terminal's black background
    obs2, *_ = env.step(SE)
    assert not np.array_equal(obs["glyphs_crop"], obs2["glyphs_crop"])  # the agent moved ...
    moved = env.render()
    assert moved.shape == first.shape and not np.array_equal(first, moved)  # ... and the picture shows it
    env.close()


@pytest.mark.envs
def test_minihack_render_does_not_change_the_observations(quickstart_env_cfg):
    plain, rendering = make_env(quickstart_env_cfg, seed=4), make_env(quickstart_env_cfg, seed=4, render=True)
    a, _ = plain.reset()
    b, _ = rendering.reset()
    assert a.keys() == b.keys()
    for action in (SE, SE, N, SE, SE):
        rendering.render()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        a, *_ = plain.step(action)
        b, *_ = rendering.step(action)
    with pytest.raises(RuntimeError, match="render=True"):
        plain.render()
    plain.close()
    rendering.close()


@pytest.mark.envs
@pytest.mark.parametrize("fmt", ["gif", "mp4"])
def test_minihack_episode_video_has_one_frame_per_step(quickstart_env_cfg, tmp_path, fmt):
    if fmt == "mp4":
        pytest.importorskip("av")
    env = make_env(quickstart_env_cfg, seed=1, render=True)
    env.reset()
    frames = [env.render()]
    # Bump into the top wall (N) twice: steps whose screens may not change must still be frames of their own.
    for action in (N, N, SE, SE, SE, SE, SE, SE):
        _, _, term, trunc, _ = env.step(action)
        frames.append(env.render())
        if term or trunc:
            break
    env.close()
    path = video.write_video(frames, tmp_path / "ep.mp4", fps=15, format=fmt)
    assert path.suffix == "." + fmt
    assert _read_back_count(path) == len(frames)


# ------------------------------------------------------------------------------------------------------------
# Atari
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.envs
def test_atari_renders_the_full_colour_screen():
    pytest.importorskip("ale_py")
    env = make_env(EnvConfig(name="ALE/Pong-v5"), seed=0, render=True)
    obs, _ = env.reset()
    frame = env.render()
    assert frame.shape == (210, 160, 3) and frame.dtype == np.uint8
    assert obs["frames"].shape[-2:] == (84, 84)  # the agent still gets the grey frames
    assert _colours(frame) > 2
    assert (frame[..., 0] != frame[..., 1]).any()  # colour, not grey
    frames = [frame]
    for _ in range(40):
        env.step(1)
        frames.append(env.render())
    assert any(not np.array_equal(frame, f) for f in frames[1:])
    env.close()


# ------------------------------------------------------------------------------------------------------------
# MiniWorld
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def miniworld():
    from distrl.envs import miniworld as mw

    try:
        # Not importorskip: miniworld opens its GL context at import and must get the headless option first.
        mw.import_miniworld()
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"MiniWorld unavailable or cannot render headless here: {e}")
    return mw


@pytest.mark.envs
def test_miniworld_renders_agent_and_top_view_without_changing_observations(miniworld):
    cfg = EnvConfig(name="MiniWorld-OneRoom-v0", image_size=32)
    try:
        env, plain = make_env(cfg, 2, render=True), make_env(cfg, 2)
    except RuntimeError as e:
        pytest.skip(f"MiniWorld cannot render here: {e}")
    a, _ = env.reset()
    b, _ = plain.reset()
    first = env.render()
    size = miniworld.RENDER_SIZE
    assert first.shape == (size, 2 * size, 3) and first.dtype == np.uint8 and _colours(first) > 10
    for action in (2, 1, 1):
        a, *_ = env.step(action)
        env.render()
        b, *_ = plain.step(action)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(first, env.render())
    env.close()
    plain.close()


# ------------------------------------------------------------------------------------------------------------
# Habitat (the FAKE: real habitat-sim cannot be installed here)
# ------------------------------------------------------------------------------------------------------------


def test_fake_habitat_renders_the_rgb_observation():
    env = make_env(EnvConfig(name="habitat:fake-pointnav", image_size=48), seed=0, render=True)
    obs, _ = env.reset()
    frame = env.render()
    assert frame.shape == (48, 48, 3) and frame.dtype == np.uint8 and _colours(frame) > 1
    np.testing.assert_array_equal(frame, obs["rgb"].transpose(1, 2, 0))
    obs, *_ = env.step(2)  # turn_left: the fake rolls its image
    np.testing.assert_array_equal(env.render(), obs["rgb"].transpose(1, 2, 0))
    env.close()
