"""Frames a person can watch: a bitmap-text painter for env ``render()`` methods, and a video writer.

Every env adapter has ``render() -> np.ndarray``: an RGB frame ``[H, W, 3]`` uint8 of the current state
(registry docstring). :class:`VideoWriter` writes such frames, one per step, to a file as they come (mp4 frames
are encoded at once, so an episode's frames are never all in memory); :func:`write_video` does it for a list:

* **mp4** (H.264, ``yuv420p``, plays in browsers and wandb) when PyAV is importable (``pip install
  'distrl[video]'``, installed by ``tools/install.sh``);
* otherwise an animated **GIF** through Pillow (a core dependency).

Each frame gets a caption strip underneath with its step index (and an optional per-frame text). Besides
telling the viewer where they are, it makes every frame distinct: Pillow's GIF writer silently merges
identical consecutive frames into one longer frame, which would lose steps where nothing moved.

:func:`draw_text` paints monospace text cell by cell with Pillow's built-in bitmap font (6 x 11 pixels per
character), from a glyph atlas built once; the MiniHack adapter uses it to draw NetHack's terminal.

Usage::

    frames = [env.render()]
    for _ in range(100):
        env.step(policy(obs))
        frames.append(env.render())
    path = write_video(frames, "runs/eval/episode0.mp4", fps=15)   # .mp4, or .gif without PyAV

This module imports neither Ray nor wandb; Pillow and PyAV are imported when first needed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Pillow's built-in bitmap font cell, rows x columns of pixels per character.
CELL_HW: tuple[int, int] = (11, 6)
VIDEO_FORMATS = ("mp4", "gif")
_AV_HINT = "pip install 'distrl[video]' (PyAV, the FFmpeg binding)"
_PIL_HINT = "pip install pillow (a core dependency of distrl: reinstall with `bash tools/install.sh`)"

#: NetHack's 16 colours (CLR_BLACK .. CLR_WHITE, ``include/color.h``) as a terminal shows them. CLR_BLACK is
#: drawn dark grey (NetHack's ``use_darkgray``) so that black-on-black glyphs stay visible.
NETHACK_PALETTE = np.array(
    [
        (85, 85, 85),  # 0 black (drawn as dark grey)
        (170, 0, 0),  # 1 red
        (0, 170, 0),  # 2 green
        (170, 85, 0),  # 3 brown
        (0, 0, 170),  # 4 blue
        (170, 0, 170),  # 5 magenta
        (0, 170, 170),  # 6 cyan
        (170, 170, 170),  # 7 grey
        (85, 85, 85),  # 8 no colour
        (255, 85, 85),  # 9 orange (bright red)
        (85, 255, 85),  # 10 bright green
        (255, 255, 85),  # 11 yellow
        (85, 85, 255),  # 12 bright blue
        (255, 85, 255),  # 13 bright magenta
        (85, 255, 255),  # 14 bright cyan
        (255, 255, 255),  # 15 white
    ],
    dtype=np.uint8,
)


def _import_pil() -> Any:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(f"drawing frames and writing GIFs needs Pillow: {_PIL_HINT}") from e
    return Image, ImageDraw, ImageFont


def _have_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def glyph_atlas() -> np.ndarray:
    """bool ``[256, 11, 6]``: the pixels of each byte's character in Pillow's bitmap font (blank where the
    font has none). Built once per process."""
    Image, ImageDraw, ImageFont = _import_pil()
    font = ImageFont.load_default_imagefont() if hasattr(ImageFont, "load_default_imagefont") else None
    if font is None:  # Pillow < 10.1: load_default() is the bitmap font
        font = ImageFont.load_default()
    h, w = CELL_HW
    atlas = np.zeros((256, h, w), dtype=bool)
    for code in range(33, 256):
        if 127 <= code < 160:  # DEL and the C1 controls: nothing to draw
            continue
        img = Image.new("L", (w, h), 0)
        ImageDraw.Draw(img).text((0, 0), chr(code), fill=255, font=font)
        atlas[code] = np.asarray(img) > 127
    return atlas


def draw_text(
    chars: np.ndarray,
    colors: np.ndarray | None = None,
    *,
    palette: np.ndarray = NETHACK_PALETTE,
    default_color: tuple[int, int, int] = (255, 255, 255),
    background: tuple[int, int, int] = (0, 0, 0),
    scale: int = 1,
) -> np.ndarray:
    """RGB uint8 ``[R * 11 * scale, C * 6 * scale, 3]`` image of a character grid.

    ``chars``: ``[R, C]`` byte values (e.g. NLE's ``tty_chars``); ``colors``: ``[R, C]`` indices into
    ``palette`` (taken modulo its length; e.g. NLE's ``tty_colors``), or None for ``default_color`` everywhere.
    Each character is drawn in its own colour on ``background``; ``scale`` repeats every pixel.
    """
    chars = np.asarray(chars)
    if chars.ndim != 2:
        raise ValueError(f"draw_text: chars must be [rows, cols], got shape {chars.shape}")
    r, c = chars.shape
    h, w = CELL_HW
    mask = glyph_atlas()[chars.astype(np.uint8)]  # [R, C, h, w]
    if colors is None:
        fg = np.broadcast_to(np.asarray(default_color, dtype=np.uint8), (r, c, 3))
    else:
        pal = np.asarray(palette, dtype=np.uint8)
        fg = pal[np.asarray(colors).astype(np.int64) % len(pal)]  # [R, C, 3]
    out = np.empty((r, c, h, w, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    np.copyto(out, fg[:, :, None, None, :], where=mask[..., None])
    img = out.transpose(0, 2, 1, 3, 4).reshape(r * h, c * w, 3)
    if scale > 1:
        img = img.repeat(scale, axis=0).repeat(scale, axis=1)
    return img


def text_line(text: str, width: int, *, color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """One line of ``text`` (truncated to fit) on black, RGB uint8 ``[11, width, 3]``."""
    h, w = CELL_HW
    cols = max(width // w, 1)
    codes = np.frombuffer(text[:cols].ljust(cols).encode("latin-1", "replace"), dtype=np.uint8)
    line = draw_text(codes[None, :], default_color=color)
    out = np.zeros((h, width, 3), dtype=np.uint8)
    out[:, : min(width, line.shape[1])] = line[:, :width]
    return out


def _check_frame(frame: Any, step: int, shape: tuple[int, ...] | None) -> np.ndarray:
    """``frame`` as an RGB uint8 ``[H, W, 3]`` array of ``shape`` (the first frame's), or ValueError naming the
    step."""
    a = np.asarray(frame)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"write_video: frame of step {step} must be RGB [H, W, 3], got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"write_video: frame of step {step} must be uint8, got {a.dtype}")
    if shape is not None and a.shape != shape:
        raise ValueError(
            f"write_video: frame of step {step} has shape {a.shape}, but step 0 has {shape}; "
            "all frames of one video must have the same size"
        )
    return a


def _caption(frame: np.ndarray, text: str) -> np.ndarray:
    """``frame`` with a 13-pixel strip underneath showing ``text`` (the step index, then the step's caption)."""
    strip = np.zeros((CELL_HW[0] + 2, frame.shape[1], 3), dtype=np.uint8)
    strip[1 : 1 + CELL_HW[0]] = text_line(" " + text, frame.shape[1], color=(200, 200, 200))
    return np.concatenate([frame, strip], axis=0)


class VideoWriter:
    """A video written as its frames come: :meth:`add` one frame per step, then :meth:`close`.

    mp4 frames are encoded as they are added, so a long episode (a Pong game is thousands of 210 × 160 frames,
    100 kB each) is never held in memory; the GIF fallback (no PyAV) keeps its captioned frames until
    :meth:`close`, as Pillow's writer needs them all. Formats, suffix, captions and errors as :func:`write_video`.

    Usage::

        with VideoWriter("runs/r/videos/eval_20.mp4") as vw:   # -> .gif without PyAV
            vw.add(env.render(), "reset")
            ...
        path = vw.path
    """

    def __init__(self, path: str | Path, fps: int = 15, *, format: str | None = None) -> None:
        if fps < 1:
            raise ValueError(f"write_video: fps must be >= 1, got {fps}")
        if format is None:
            format = "mp4" if _have_av() else "gif"
        if format not in VIDEO_FORMATS:
            raise ValueError(f"write_video: format must be one of {VIDEO_FORMATS} or None, got {format!r}")
        if format == "mp4" and not _have_av():
            raise ImportError(f"writing mp4 video needs PyAV: {_AV_HINT}; or pass format='gif'")
        self.format, self.fps = format, fps
        self.path = Path(path).with_suffix("." + format)
        self.frames = 0
        self._shape: tuple[int, ...] | None = None
        self._gif: list[Any] = []
        self._mp4: _Mp4 | None = None
        self._closed = False

    def add(self, frame: Any, caption: str | None = None) -> None:
        """Append one frame (RGB uint8 ``[H, W, 3]``, the size of the first), captioned with its step index and
        ``caption``."""
        if self._closed:
            raise ValueError(f"write_video: {self.path} is closed")
        a = _check_frame(frame, self.frames, self._shape)
        captioned = _caption(a, f"{self.frames}" if caption is None else f"{self.frames} {caption}")
        if self._shape is None:
            self._shape = a.shape
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.format == "mp4":
                self._mp4 = _Mp4(self.path, self.fps, captioned.shape[:2])
        if self._mp4 is not None:
            self._mp4.write(captioned)
        else:
            self._gif.append(_import_pil()[0].fromarray(captioned))
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and return its path. ValueError if no frame was added (nothing is written then)."""
        if self._closed:
            return self.path
        self._closed = True
        if self.frames == 0:
            raise ValueError("write_video: no frames to write")
        if self._mp4 is not None:
            self._mp4.close()
        else:
            _write_gif(self._gif, self.path, self.fps)
            self._gif = []
        return self.path

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Stop without a video: release and delete a partly written file (after an error while recording)."""
        if self._closed:
            return
        self._closed = True
        self._gif = []
        if self._mp4 is not None:
            try:
                self._mp4.close()
            finally:
                self.path.unlink(missing_ok=True)


def write_video(
    frames: Sequence[np.ndarray],
    path: str | Path,
    fps: int = 15,
    *,
    format: str | None = None,
    captions: Sequence[str] | None = None,
) -> Path:
    """Write one video frame per element of ``frames`` (RGB uint8 ``[H, W, 3]``, all the same size).

    ``format``: ``"mp4"`` (needs PyAV: ``pip install 'distrl[video]'``), ``"gif"`` (Pillow), or None = mp4 when
    PyAV is importable, else gif. The file is written at ``path`` with its suffix replaced by the real format's
    (``ep.mp4`` becomes ``ep.gif`` without PyAV; parent folders are created); that path is returned.
    ``captions``: optional text per frame, shown after the step index in the caption strip.

    Raises ValueError for no frames, a frame that is not RGB uint8, or frames of different sizes (naming the
    step), and ImportError naming the package to install when the writer's library is missing.
    """
    if captions is not None and len(captions) != len(frames):
        raise ValueError(f"write_video: {len(captions)} captions for {len(frames)} frames")
    with VideoWriter(path, fps, format=format) as vw:
        for i, f in enumerate(frames):
            vw.add(f, None if captions is None else captions[i])
    return vw.path


def _write_gif(images: list[Any], path: Path, fps: int) -> None:
    images[0].save(
        path,
        save_all=True,
        append_images=images[1:],
        duration=max(round(1000 / fps), 20),
        loop=0,
        disposal=1,
    )


class _Mp4:
    """An open H.264 (``libx264``, else ``mpeg4``) yuv420p stream of frames of one size."""

    def __init__(self, path: Path, fps: int, hw: tuple[int, int]) -> None:
        import av

        self._av = av
        h, w = hw
        ph, pw = h + h % 2, w + w % 2  # yuv420p needs even sizes: pad one black row / column
        self._container = av.open(str(path), mode="w")
        try:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            self._stream = self._container.add_stream(codec, rate=fps)
            self._stream.width, self._stream.height = pw, ph
            self._stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                # zerolatency: no lookahead or B-frames to buffer. The process that records an evaluation keeps
                # x264's heap: ~120 MB of PSS after 8 Room-5x5 evaluations with videos against 158-171 without it
                # (files ~1.4x larger, ~50 KB).
                self._stream.options = {"crf": "20", "preset": "veryfast", "tune": "zerolatency"}
        except BaseException:  # the caller never gets this object to close: close and delete here
            self._container.close()
            path.unlink(missing_ok=True)
            raise
        self._buf = np.zeros((ph, pw, 3), dtype=np.uint8)
        self._hw = hw

    def write(self, frame: np.ndarray) -> None:
        h, w = self._hw
        self._buf[:h, :w] = frame
        for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(self._buf, format="rgb24")):
            self._container.mux(packet)

    def close(self) -> None:
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
