"""DurationBandit: a bandit whose actions take different wall-clock time, the slow one paying more.

The test bed of duration-aware updates (ALGORITHMS.md §3, issue 21). Each episode is ``steps`` decisions
(default 1) on a constant observation. Action 0 ("fast") pays ``fast_reward`` (default 0.5) and takes ``unit``
seconds; action 1 ("slow") pays ``slow_reward`` (default 1.0) and takes ``k * unit`` seconds. With more than two
actions (``arms``), action ``a >= 2`` is a decoy paying 0 and taking ``unit`` seconds. The env's clock is either

* simulated (``clock=sim``, default): ``step`` returns at once and reports the duration it stands for in
  ``info["duration"]``; the VecEnv then records that duration as the step's ``dt`` (no sleeping in tests), or
* real (``clock=sleep``): ``step`` sleeps for the duration (no CPU load), so asynchronous actors really
  deliver fast actions sooner and more often; ``info["duration"]`` is reported as well.

Id syntax: ``duration:bandit?k=20&unit=0.05&clock=sleep&steps=1&arms=2&fast_reward=0.5&slow_reward=1.0``
(every option optional). Observation ``{"x": [2] float32}``: a constant 1 and the fraction of the episode done.

Usage::

    env = make(EnvConfig(name="duration:bandit?k=20"), seed=0)
    obs, _ = env.reset()
    obs, r, terminated, truncated, info = env.step(1)      # r == 1.0, info["duration"] == 20 * unit
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from distrl.config import EnvConfig
from distrl.envs.base import ArraySpec, EnvSpec

PREFIX = "duration:"
_OPTIONS = ("k", "unit", "clock", "steps", "arms", "fast_reward", "slow_reward")
FAST, SLOW = 0, 1


def parse_id(name: str) -> dict[str, Any]:
    """Options of a ``duration:bandit?...`` id, typed and checked (ValueError naming the option)."""
    if not name.startswith(PREFIX):
        raise ValueError(f"env.name {name!r}: duration env ids start with {PREFIX!r}")
    kind, _, query = name[len(PREFIX):].partition("?")
    if kind != "bandit":
        raise ValueError(f"env.name {name!r}: unknown duration env {kind!r}; known: bandit")
    raw = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    unknown = sorted(set(raw) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"env.name {name!r}: unknown option(s) {unknown}; allowed: {list(_OPTIONS)}")

    def num(key: str, default: float, cast: type = float) -> Any:
        try:
            return cast(raw.get(key, default))
        except ValueError:
            raise ValueError(f"env.name {name!r}: option {key}={raw[key]!r} must be a {cast.__name__}") from None

    opts = {
        "k": num("k", 20.0), "unit": num("unit", 1.0), "steps": num("steps", 1, int), "arms": num("arms", 2, int),
        "fast_reward": num("fast_reward", 0.5), "slow_reward": num("slow_reward", 1.0),
        "clock": raw.get("clock", "sim"),
    }
    if opts["clock"] not in ("sim", "sleep"):
        raise ValueError(f"env.name {name!r}: clock must be 'sim' or 'sleep', got {opts['clock']!r}")
    if opts["k"] <= 0 or opts["unit"] < 0:
        raise ValueError(f"env.name {name!r}: need k > 0 and unit >= 0, got k={opts['k']} unit={opts['unit']}")
    if opts["steps"] < 1 or opts["arms"] < 2:
        raise ValueError(f"env.name {name!r}: need steps >= 1 and arms >= 2")
    return opts


class DurationBandit:
    """See the module docstring. ``durations[a]`` and ``rewards[a]`` are each action's cost and payoff."""

    def __init__(
        self,
        k: float = 20.0,
        unit: float = 1.0,
        clock: str = "sim",
        steps: int = 1,
        arms: int = 2,
        fast_reward: float = 0.5,
        slow_reward: float = 1.0,
        max_episode_steps: int = 0,
    ) -> None:
        if clock not in ("sim", "sleep"):
            raise ValueError(f"DurationBandit: clock must be 'sim' or 'sleep', got {clock!r}")
        self.durations = np.full(arms, unit, dtype=np.float64)
        self.durations[SLOW] = k * unit
        self.rewards = np.zeros(arms, dtype=np.float64)
        self.rewards[FAST], self.rewards[SLOW] = fast_reward, slow_reward
        self.clock = clock
        self.steps = steps
        self.max_episode_steps = max_episode_steps
        self.num_actions = arms
        self.clock_s = 0.0  # simulated seconds elapsed over all steps
        self._t = 0

    @staticmethod
    def make_spec(name: str, arms: int) -> EnvSpec:
        return EnvSpec(name=name, obs={"x": ArraySpec((2,), np.dtype(np.float32))}, num_actions=arms,
                       family="fake")  # a synthetic test env: the fake family's defaults (mlp encoder)

    def _obs(self) -> dict[str, np.ndarray]:
        return {"x": np.array([1.0, self._t / self.steps], dtype=np.float32)}

    def reset(self, seed: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self._t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        a = int(action)
        if not 0 <= a < self.num_actions:
            raise ValueError(f"DurationBandit: action {action!r} out of range [0, {self.num_actions})")
        dt = float(self.durations[a])
        if self.clock == "sleep" and dt > 0:
            time.sleep(dt)
        self.clock_s += dt
        self._t += 1
        terminated = self._t >= self.steps
        truncated = not terminated and 0 < self.max_episode_steps <= self._t
        info: dict[str, Any] = {"duration": dt}
        return self._obs(), float(self.rewards[a]), terminated, truncated, info

    def render(self) -> np.ndarray:
        img = np.zeros((8, 8 * self.num_actions, 3), dtype=np.uint8)
        img[:, :, 1] = int(255 * self._t / self.steps)
        return img

    def close(self) -> None:
        pass


def spec(cfg: EnvConfig) -> EnvSpec:
    return DurationBandit.make_spec(cfg.name, parse_id(cfg.name)["arms"])


def make(cfg: EnvConfig, seed: int, render: bool = False) -> DurationBandit:
    """The bandit ``cfg.name`` describes (``seed`` is unused: the env is deterministic)."""
    opts: Mapping[str, Any] = parse_id(cfg.name)
    return DurationBandit(max_episode_steps=cfg.max_episode_steps, **opts)
