"""Env registry: the env family is chosen by the id's prefix and imported lazily (optional extras).

Each family module exposes ``spec(cfg: EnvConfig) -> EnvSpec`` and ``make(cfg: EnvConfig, seed: int) -> Env``
where ``Env`` is a Gymnasium-style single env with dict observations matching the spec:
``reset(seed=None) -> (obs, info)`` and ``step(action: int) -> (obs, reward, terminated, truncated, info)``.

Info keys the VecEnv reads on the step that ends an episode (all optional):
``"success"`` (float), ``"episode_return"`` (float: overrides the summed reward, e.g. Atari full-game score when
life loss ends learning episodes), ``"report"`` (bool, default True: False for a learning-only episode end that is
not a real episode end, such as an Atari life loss), ``"extra"`` (dict[str, float], e.g. {"spl": 0.5}).
"""

from __future__ import annotations

import importlib
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


def make_env(cfg: EnvConfig, seed: int) -> Any:
    return _module(cfg.name).make(cfg, seed)
