"""Env registry: the env family is chosen by the id's prefix and imported lazily (optional extras).

Each family module exposes ``spec(cfg: EnvConfig) -> EnvSpec`` and ``make(cfg: EnvConfig, seed: int, render:
bool = False) -> Env`` where ``Env`` is a Gymnasium-style single env with dict observations matching the spec:
``reset(seed=None) -> (obs, info)``, ``step(action: int) -> (obs, reward, terminated, truncated, info)`` and
``render() -> np.ndarray``.

``render()`` returns an RGB frame ``[H, W, 3]`` uint8 of the current state (after ``reset()`` or the last
``step()``) for a person to watch, whatever the observation keys are; every frame of one env has the same size,
so :func:`distrl.envs.video.write_video` can make a video of them. Make the env with ``make_env(cfg, seed,
render=True)``: families that need extra data for it ask for it only then (MiniHack: the terminal), and the
observations the agent gets do not change. Frames per family: MiniHack, the 24 x 80 NetHack terminal in its 16
colours ([528, 960, 3]); Atari, ALE's full-colour screen ([210, 160, 3]); MiniWorld, the agent's view and a
top view of the room side by side ([256, 512, 3]); Habitat (real and fake), the rgb sensor at its rendered size;
fake envs, bars of the observation values (:func:`distrl.envs.fake.render_bars`).

Info keys the VecEnv reads on the step that ends an episode (all optional):
``"success"`` (float), ``"episode_return"`` (float: overrides the summed reward, e.g. Atari full-game score when
life loss ends learning episodes), ``"report"`` (bool, default True: False for a learning-only episode end that is
not a real episode end, such as an Atari life loss), ``"extra"`` (dict[str, float], e.g. {"spl": 0.5}).
On any step, ``"duration"`` (float seconds) replaces the measured wall time of ``env.step`` as the step's
``dt`` (an env with a simulated clock, such as ``duration:bandit``).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from distrl.config import EnvConfig
from distrl.envs.base import EnvSpec

_FAMILIES: tuple[tuple[str, str, str], ...] = (
    # (id prefix, module, family name)
    ("MiniHack-", "distrl.envs.minihack", "minihack"),
    ("ALE/", "distrl.envs.atari", "atari"),
    ("habitat:", "distrl.envs.habitat", "habitat"),
    ("MiniWorld-", "distrl.envs.miniworld", "miniworld"),
    ("fake:", "distrl.envs.fake", "fake"),
    ("Ballet-", "distrl.envs.memory_tasks", "memory"),
    ("Recall-", "distrl.envs.memory_tasks", "memory"),
    ("duration:", "distrl.envs.duration_bandit", "fake"),
)


def family_of(name: str) -> tuple[str, str]:
    """(module path, family name) for an env id, or ValueError listing the known prefixes."""
    for prefix, module, family in _FAMILIES:
        if name.startswith(prefix):
            return module, family
    known = ", ".join(p + "*" for p, _, _ in _FAMILIES)
    raise ValueError(f"env.name {name!r}: unknown env family; ids must start with one of: {known}")


def _module(name: str) -> Any:
    module, _ = family_of(name)
    return importlib.import_module(module)


def env_spec(cfg: EnvConfig) -> EnvSpec:
    return _module(cfg.name).spec(cfg)


def make_env(cfg: EnvConfig, seed: int, render: bool = False) -> Any:
    """One env of ``cfg``'s family seeded with ``seed``; ``render=True`` makes sure ``env.render()`` works."""
    make = _module(cfg.name).make
    if render and "render" in inspect.signature(make).parameters:
        return make(cfg, seed, render=True)
    # A family whose make() takes no ``render`` renders from what it has anyway (Habitat: the rgb sensor).
    return make(cfg, seed)
