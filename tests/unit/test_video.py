"""distrl.envs.video on synthetic frames and fake envs: one video frame per step (mp4 and GIF), errors, text."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from distrl.config import EnvConfig
from distrl.envs import video
from distrl.envs.registry import make_env
from distrl.envs.video import CELL_HW, NETHACK_PALETTE, draw_text, write_video

Image = pytest.importorskip("PIL.Image")  # a core dependency; skipped only on a broken install


def read_back(path) -> list[np.ndarray]:
    """Every frame of a written video, decoded (RGB)."""
    if path.suffix == ".gif":
        im = Image.open(path)
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
        return frames
    av = pytest.importorskip("av")
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _frames(n: int, h: int = 21, w: int = 79, still: bool = True) -> list[np.ndarray]:
    """n frames; with still=True all are identical (the case Pillow's GIF writer would merge)."""
    base = np.zeros((h, w, 3), dtype=np.uint8)
    base[5:10, 10:30] = (200, 50, 50)
    out = []
    for i in range(n):
        f = base.copy()
        if not still:
            f[12:16, i % w] = 255
        out.append(f)
    return out


@pytest.mark.parametrize("fmt", ["gif", "mp4"])
@pytest.mark.parametrize("n", [1, 2, 17])
def test_one_video_frame_per_step_even_when_nothing_moves(tmp_path, fmt, n):
    if fmt == "mp4":
        pytest.importorskip("av")
    path = write_video(_frames(n), tmp_path / "ep.mp4", fps=10, format=fmt)
    assert path == tmp_path / f"ep.{fmt}" and path.exists()
    frames = read_back(path)
    assert len(frames) == n
    # The picture is kept (plus the caption strip underneath; mp4 pads odd sizes to even).
    assert frames[0].shape[0] >= 21 + CELL_HW[0] and frames[0].shape[1] in (79, 80)
    top = frames[0][:21, :79].astype(int)
    assert abs(top[7, 20] - (200, 50, 50)).max() < 40 and top[0, 0].max() < 40


def test_gif_frames_keep_their_content(tmp_path):
    frames = _frames(6, still=False)
    back = read_back(write_video(frames, tmp_path / "x.gif", format="gif"))
    assert len(back) == 6
    for i, (a, b) in enumerate(zip(frames, back)):
        np.testing.assert_array_equal(b[: a.shape[0]], a, err_msg=f"frame {i}")


def test_default_format_is_mp4_with_pyav_else_gif(tmp_path, monkeypatch):
    monkeypatch.setattr(video, "_have_av", lambda: False)
    path = write_video(_frames(3), tmp_path / "a.mp4")
    assert path.suffix == ".gif" and len(read_back(path)) == 3
    pytest.importorskip("av")
    monkeypatch.setattr(video, "_have_av", lambda: True)
    path = write_video(_frames(3), str(tmp_path / "sub" / "b.gif"))
    assert path == tmp_path / "sub" / "b.mp4" and len(read_back(path)) == 3


def test_forced_mp4_without_pyav_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    assert not video._have_av()
    with pytest.raises(ImportError, match=r"distrl\[video\]"):
        write_video(_frames(2), tmp_path / "a.mp4", format="mp4")
    assert write_video(_frames(2), tmp_path / "a.mp4").suffix == ".gif"


def test_bad_frames_are_errors_naming_the_step(tmp_path):
    frames = _frames(4)
    frames[2] = np.zeros((22, 79, 3), np.uint8)
    with pytest.raises(ValueError, match=r"step 2 .*step 0"):
        write_video(frames, tmp_path / "a.gif", format="gif")
    with pytest.raises(ValueError, match="step 1 must be uint8"):
        write_video([_frames(1)[0], np.zeros((21, 79, 3), np.float32)], tmp_path / "a.gif", format="gif")
    with pytest.raises(ValueError, match=r"step 0 must be RGB"):
        write_video([np.zeros((21, 79), np.uint8)], tmp_path / "a.gif", format="gif")
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "a.gif")
    with pytest.raises(ValueError, match="format"):
        write_video(_frames(1), tmp_path / "a.gif", format="webm")
    with pytest.raises(ValueError, match="captions"):
        write_video(_frames(2), tmp_path / "a.gif", format="gif", captions=["x"])


@pytest.mark.parametrize("fmt", ["gif", "mp4"])
def test_video_writer_streams_what_write_video_writes(tmp_path, fmt):
    """Frames added one at a time make the same video as the list; an mp4 writer keeps no frame after add."""
    if fmt == "mp4":
        pytest.importorskip("av")
    frames = _frames(9, still=False)
    captions = [f"r={i}" for i in range(9)]
    ref = read_back(write_video(frames, tmp_path / "list.mp4", format=fmt, captions=captions))
    vw = video.VideoWriter(tmp_path / "stream.mp4", format=fmt)
    for f, c in zip(frames, captions, strict=True):
        vw.add(f, c)
        if fmt == "mp4":
            assert vw._gif == []  # encoded at once, not kept
    path = vw.close()
    assert path == tmp_path / f"stream.{fmt}" and vw.frames == 9
    back = read_back(path)
    assert len(back) == len(ref) == 9
    for a, b in zip(ref, back, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fmt", ["gif", "mp4"])
def test_video_writer_leaves_no_file_after_an_error(tmp_path, fmt):
    if fmt == "mp4":
        pytest.importorskip("av")
    with pytest.raises(RuntimeError, match="env broke"):
        with video.VideoWriter(tmp_path / "ep.mp4", format=fmt) as vw:
            vw.add(_frames(1)[0])
            vw.add(_frames(1)[0])
            raise RuntimeError("env broke")
    assert not list(tmp_path.iterdir())
    vw = video.VideoWriter(tmp_path / "bad.mp4", format=fmt)
    vw.add(_frames(1)[0])
    with pytest.raises(ValueError, match=r"step 1 has shape"):
        vw.add(np.zeros((22, 79, 3), np.uint8))
    vw.abort()
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="no frames"):
        video.VideoWriter(tmp_path / "empty.mp4", format=fmt).close()
    assert not list(tmp_path.iterdir())


def test_captions_are_drawn_under_the_frame(tmp_path):
    frames = _frames(2)
    plain = [video._caption(f, f"{i}") for i, f in enumerate(frames)]
    text = [video._caption(f, f"{i} return {i + 1}.0") for i, f in enumerate(frames)]
    assert plain[0].shape == text[0].shape == (21 + CELL_HW[0] + 2, 79, 3)
    np.testing.assert_array_equal(text[0][:21], frames[0])
    assert not np.array_equal(plain[0][21:], text[0][21:])
    assert not np.array_equal(text[0][21:], text[1][21:])


def test_draw_text_draws_each_character_in_its_colour():
    chars = np.array([[ord("@"), ord(" "), ord("#")]], dtype=np.uint8)
    colors = np.array([[1, 7, 10]], dtype=np.int8)
    img = draw_text(chars, colors)
    h, w = CELL_HW
    assert img.shape == (h, 3 * w, 3) and img.dtype == np.uint8
    cells = [img[:, i * w : (i + 1) * w].reshape(-1, 3) for i in range(3)]
    assert {tuple(c) for c in cells[0]} == {(0, 0, 0), tuple(NETHACK_PALETTE[1])}
    assert {tuple(c) for c in cells[1]} == {(0, 0, 0)}  # a space draws nothing
    assert {tuple(c) for c in cells[2]} == {(0, 0, 0), tuple(NETHACK_PALETTE[10])}
    assert draw_text(chars, colors, scale=2).shape == (2 * h, 6 * w, 3)


FAKE_IDS = ["fake:counting", "fake:spec", "fake:memory?cues=3", "fake:bandit?arms=3", "fake:faulty?mode=nan_obs&at=2"]


@pytest.mark.parametrize("name", FAKE_IDS)
def test_fake_envs_render_non_blank_frames_that_follow_the_observation(name):
    env = make_env(EnvConfig(name=name, fake_episode_len=4), seed=0, render=True)
    env.reset()
    frames = [env.render()]
    for _ in range(3):
        env.step(0)
        frames.append(env.render())
    for f in frames:
        assert f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 and f.shape == frames[0].shape
        assert len(np.unique(f.reshape(-1, 3), axis=0)) > 1
    if name != "fake:memory?cues=3":  # memory shows the cue only at step 0, then blank steps
        assert any(not np.array_equal(frames[0], f) for f in frames[1:])
    else:
        assert not np.array_equal(frames[0], frames[1])


def test_fake_env_episode_video_has_one_frame_per_step(tmp_path):
    env = make_env(EnvConfig(name="fake:counting", fake_episode_len=5), seed=0, render=True)
    env.reset()
    frames = [env.render()]
    done = False
    while not done:
        _, _, term, trunc, _ = env.step(1)
        frames.append(env.render())
        done = term or trunc
    assert len(frames) == 6
    for fmt in ["gif"] + (["mp4"] if video._have_av() else []):
        assert len(read_back(write_video(frames, tmp_path / "ep", format=fmt))) == 6
