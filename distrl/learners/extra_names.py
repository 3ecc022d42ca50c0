"""The registry of learner extras by config name, without torch: what ``distrl train`` checks in the driver
before it starts anything (the driver never loads torch; :mod:`distrl.learners.extras` has the extras
themselves and re-exports these names).

distrl's own extras are registered by module (:data:`BUILTIN_EXTRAS`: the module registers its factory when the
learner imports it); an extra of your own is registered with :func:`register_extra`, in the process that builds
the learner.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from distrl.config import ConfigError, ExperimentConfig

if TYPE_CHECKING:
    from distrl.envs.base import EnvSpec
    from distrl.learners.extras import LearnerExtra
    from distrl.models.agent import Agent

ExtraFactory = Callable[[ExperimentConfig, "EnvSpec", "Agent"], "LearnerExtra"]

EXTRAS: dict[str, ExtraFactory] = {}
"""Registry of learner extras by config name (``learner.extras``)."""

BUILTIN_EXTRAS: dict[str, str] = {
    "e3b": "distrl.learners.e3b_extra",
    "bonus": "distrl.learners.bonus",
    "duration": "distrl.learners.duration",
    "reconstruction": "distrl.learners.reconstruction",
}
"""distrl's own extras: name -> the module that registers it when imported (loaded by
:func:`load_extra_modules`, so a name check does not import torch)."""


def register_extra(name: str, factory: ExtraFactory) -> None:
    """Add ``factory`` under ``name`` (a ValueError if the name is taken by another factory)."""
    if name in EXTRAS and EXTRAS[name] is not factory:
        raise ValueError(f"learner extra {name!r} is already registered ({EXTRAS[name]!r})")
    EXTRAS[name] = factory


def load_extra_modules(names: tuple[str, ...]) -> None:
    """Import the modules of the built-in extras among ``names`` (they register themselves)."""
    for name in names:
        if name not in EXTRAS and name in BUILTIN_EXTRAS:
            importlib.import_module(BUILTIN_EXTRAS[name])


def implied_extras(cfg: ExperimentConfig) -> tuple[str, ...]:
    """Extras another config section switches on by itself: the exploration bonus (``bonus.episodic`` or
    ``bonus.glob`` not none) needs ``bonus`` (the combination, RND/NovelD/global counts, the normaliser), and
    ``bonus.episodic=e3b`` needs ``e3b`` (the embedding the actors' E3B bonus uses), before it; ``duration.mode``
    other than off, or ``duration.instrument``, needs ``duration`` (distrl.learners.duration);
    ``learner.reconstruction_cost`` > 0 needs ``reconstruction`` (distrl.learners.reconstruction)."""
    out: list[str] = []
    if cfg.bonus.episodic == "e3b":
        out.append("e3b")
    if cfg.bonus.episodic != "none" or cfg.bonus.glob != "none":
        out.append("bonus")
    if cfg.duration.mode != "off" or cfg.duration.instrument:  # duration weighting and its instrumentation
        out.append("duration")
    if cfg.learner.reconstruction_cost > 0:
        out.append("reconstruction")
    return tuple(out)


def enabled_extras(cfg: ExperimentConfig) -> tuple[str, ...]:
    """Names of the extras a config switches on: ``learner.extras`` followed by :func:`implied_extras` not
    already listed. A ConfigError names a duplicate or an unregistered name (with the registered ones);
    ``distrl train`` calls this before it starts anything. Imports nothing."""
    listed = tuple(cfg.learner.extras)
    if len(set(listed)) != len(listed):
        raise ConfigError(f"learner.extras lists an extra twice: {list(listed)}")
    names = listed + tuple(n for n in implied_extras(cfg) if n not in listed)
    known = set(EXTRAS) | set(BUILTIN_EXTRAS)
    for name in names:
        if name not in known:
            raise ConfigError(
                f"learner.extras: unknown extra {name!r} (of {list(names)}); registered: "
                f"{sorted(known)} (distrl.learners.extras.register_extra adds one)"
            )
    return names

