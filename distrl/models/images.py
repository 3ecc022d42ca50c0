"""Which observation is an encoder's image and how it is laid out, from the env spec alone (no PyTorch: the
torch-free NumPy kernels (:mod:`distrl.models.numpy_kernels`) and the PyTorch encoders read them alike).

Usage::

    key = pick_image_key(spec, ("frames",))               # "frames" for Atari
    channels_last, (c, h, w) = image_chw(spec.obs[key].shape, key)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def is_image(shape: Sequence[int]) -> bool:
    """Whether an observation of this shape is read as an image ([H, W], [H, W, C] or [C, H, W])."""
    return len(shape) in (2, 3)


def image_chw(shape: Sequence[int], key: str) -> tuple[bool, tuple[int, int, int]]:
    """(channels_last, (C, H, W)) for an image spec. distrl's env adapters are channel-first ([C, H, W]: Atari
    "frames" [stack, 84, 84], MiniWorld/Habitat "rgb" [3, S, S]); a spec whose last dim looks like channels
    (≤ 4) while its first does not is read as [H, W, C]; [H, W] gets C = 1."""
    if len(shape) == 2:
        return False, (1, int(shape[0]), int(shape[1]))
    if len(shape) != 3:
        raise ValueError(f"observation {key!r}: an image must be [H, W], [H, W, C] or [C, H, W], got {shape}")
    a, b, c = (int(s) for s in shape)
    if c <= 4 and a > 4:
        return True, (c, a, b)
    return False, (a, b, c)


def pick_image_key(spec: Any, preferred: Sequence[str]) -> str:
    """The first of ``preferred`` that ``spec`` observes, else its only image observation (ValueError naming the
    observations when there is not exactly one)."""
    for k in preferred:
        if k in spec.obs:
            return k
    images = [k for k, s in spec.obs.items() if is_image(s.shape)]
    if len(images) != 1:
        raise ValueError(
            f"cannot pick the image observation of env {spec.name!r}: expected key {list(preferred)} or "
            f"exactly one 2-D/3-D observation, got {({k: tuple(s.shape) for k, s in spec.obs.items()})}"
        )
    return images[0]
