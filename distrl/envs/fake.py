"""Fake envs for tests: tiny, deterministic, and built to make plumbing bugs visible.

The registry routes every ``fake:*`` id here. An id is ``fake:<kind>`` optionally followed by
``?key=value&key=value`` options, e.g. ``fake:faulty?mode=nan_obs&at=3``. Kinds:

* ``fake:counting`` (:class:`CountingEnv`): obs ``count`` = step index within the episode (0 after reset),
  ``episode`` = how many resets this instance did before the current episode, ``last_action`` = the previous
  step's action (-1 after reset). Terminates after ``cfg.fake_episode_len`` steps with reward 1 on that last
  step (0 elsewhere); truncates at ``cfg.max_episode_steps`` when that is set and shorter. Any off-by-one,
  reordering or missed reset shows up as a wrong integer. Options: ``num_actions`` (3), ``step_ms`` /
  ``reset_ms`` (busy-wait per call, for overlap benchmarks), ``make_ms`` (building the env sleeps this long: a
  slow-starting simulator, for the runtime's start-up handling).
* ``fake:spec`` (:class:`SpecEnv`): random observations drawn from an :class:`EnvSpec` (default: uint8 image,
  float vector, int index) and strict action validation: an action outside ``[0, num_actions)`` raises
  ``ValueError``.
* ``fake:memory`` (:class:`MemoryEnv`): a cue (one-hot; option ``cues``, default 2) at step 0, then
  ``k = cfg.fake_episode_len`` blank steps, then a query step (``query`` = 1): reward 1 iff the action there
  equals the cue; the episode terminates after the query. Needs memory; chance level is ``1 / cues``.
* ``fake:bandit`` (:class:`BanditEnv`): contextual bandit; each step shows a random one-hot context, reward 1
  iff the action equals it. Episodes of ``cfg.fake_episode_len`` steps. Learnable without memory (a fast
  sanity check for learners). Option ``arms`` (2).
* ``fake:faulty`` (:class:`FaultyEnv`): a CountingEnv (plus a float ``real`` = count) that fails on purpose,
  for fault-handling tests. Options: ``mode`` in {``raise``, ``nan_obs``, ``inf_obs``, ``nan_reward``,
  ``raise_reset``} (default ``raise``); ``at`` = the instance's n-th ``step`` call (``reset`` call for
  ``raise_reset``), 1-based, counted over all its episodes (default 3); ``seed`` = only the instance made with
  this seed fails (default: every instance).

Every fake env has ``render()``: :func:`render_bars` of its current observation (one bar per value, a colour
per key), so video and evaluation code runs on real, changing frames without a simulator.

Usage::

    cfg = EnvConfig(name="fake:counting", fake_episode_len=3)
    env = make(cfg, seed=0)
    obs, info = env.reset()                    # obs["count"] == [0]
    obs, r, term, trunc, info = env.step(1)    # obs["count"] == [1], obs["last_action"] == [1]
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from distrl.config import EnvConfig
from distrl.envs.base import ArraySpec, EnvSpec, check_discrete_action

Obs = dict[str, np.ndarray]
StepOut = tuple[Obs, float, bool, bool, dict[str, Any]]

KINDS = ("counting", "spec", "memory", "bandit", "faulty")
FAULT_MODES = ("raise", "nan_obs", "inf_obs", "nan_reward", "raise_reset")


class EnvFault(RuntimeError):
    """Raised on purpose by :class:`FaultyEnv` (distinct type so tests can tell it from real bugs)."""


def parse_id(name: str) -> tuple[str, dict[str, str]]:
    """``"fake:faulty?mode=raise&at=2"`` -> ``("faulty", {"mode": "raise", "at": "2"})``."""
    if not name.startswith("fake:"):
        raise ValueError(f"env.name {name!r}: fake env ids start with 'fake:'")
    body = name[len("fake:"):]
    kind, _, query = body.partition("?")
    if kind not in KINDS:
        raise ValueError(f"env.name {name!r}: unknown fake env {kind!r}; known: {', '.join(KINDS)}")
    opts = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    return kind, opts


def _opt_int(opts: Mapping[str, str], key: str, default: int, name: str) -> int:
    try:
        return int(opts.get(key, default))
    except ValueError:
        raise ValueError(f"env.name {name!r}: option {key}={opts[key]!r} must be an integer") from None


def _opt_float(opts: Mapping[str, str], key: str, default: float, name: str) -> float:
    try:
        return float(opts.get(key, default))
    except ValueError:
        raise ValueError(f"env.name {name!r}: option {key}={opts[key]!r} must be a number") from None


def _check_options(name: str, opts: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ValueError(f"env.name {name!r}: unknown option(s) {unknown}; allowed: {list(allowed)}")


def _busy_wait(ms: float) -> None:
    """Burn CPU for ``ms`` milliseconds (a sleeping env would not load the CPU like a real simulator)."""
    if ms > 0:
        end = time.perf_counter() + ms / 1e3
        while time.perf_counter() < end:
            pass



# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------

_BAR_COLORS = np.array(
    [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0), (204, 121, 167)],
    dtype=np.uint8,
)
_BAR_H, _BAR_W, _BAR_GAP, _KEY_GAP, _MAX_BARS = 48, 6, 2, 8, 64


def render_bars(obs: Obs) -> np.ndarray:
    """RGB uint8 ``[56, W, 3]`` picture of an observation: one bar per value (the first 64 of each key), a
    colour per key in ``obs`` order, on dark grey with a baseline per key. Heights: uint8 ``v / 255``, bool
    ``v``, other numbers ``0.5 + 0.5 tanh(v / 4)`` (0 is half height); a non-finite value is a full red bar.
    The width depends only on the keys' sizes, so all frames of one env have the same shape."""
    groups = [np.asarray(v).reshape(-1)[:_MAX_BARS] for v in obs.values()]
    width = _KEY_GAP + sum(len(g) * (_BAR_W + _BAR_GAP) + _KEY_GAP for g in groups)
    img = np.empty((_BAR_H + 8, max(width, 16), 3), dtype=np.uint8)
    img[:] = (32, 32, 40)
    x = _KEY_GAP
    bottom = _BAR_H + 4
    for i, g in enumerate(groups):
        color = _BAR_COLORS[i % len(_BAR_COLORS)]
        if g.dtype == np.uint8:
            h = g / 255.0
        elif g.dtype.kind == "b":
            h = g.astype(np.float64)
        else:
            with np.errstate(invalid="ignore", over="ignore"):
                h = 0.5 + 0.5 * np.tanh(g.astype(np.float64) / 4.0)
        bad = ~np.isfinite(h)
        img[bottom, x : x + len(g) * (_BAR_W + _BAR_GAP) - _BAR_GAP] = color  # baseline
        for j, hj in enumerate(np.where(bad, 1.0, h)):
            top = bottom - round(float(hj) * _BAR_H)
            img[top:bottom, x + j * (_BAR_W + _BAR_GAP) : x + j * (_BAR_W + _BAR_GAP) + _BAR_W] = (
                (255, 0, 0) if bad[j] else color
            )
        x += len(g) * (_BAR_W + _BAR_GAP) + _KEY_GAP
    return img


# ----------------------------------------------------------------------------------------------------------
# CountingEnv
# ----------------------------------------------------------------------------------------------------------


class CountingEnv:
    """obs = step index; terminates after ``episode_len`` steps with reward 1 on the last one.

    Usage::

        env = CountingEnv(episode_len=2)
        env.reset()                                        # count 0, episode 0
        env.step(0); obs, r, term, _, _ = env.step(2)      # count 2, r 1.0, term True
        env.reset()                                        # count 0, episode 1
    """

    def __init__(
        self,
        episode_len: int = 5,
        max_episode_steps: int = 0,
        num_actions: int = 3,
        step_ms: float = 0.0,
        reset_ms: float = 0.0,
        seed: int = 0,
    ) -> None:
        if episode_len < 1:
            raise ValueError(f"CountingEnv: episode_len must be >= 1, got {episode_len}")
        self.episode_len = episode_len
        self.max_episode_steps = max_episode_steps
        self.num_actions = num_actions
        self.step_ms = step_ms
        self.reset_ms = reset_ms
        self.seed = seed
        self._count = 0
        self._episode = -1
        self._last_action = -1
        self._done = True  # step() before reset() is an error

    @staticmethod
    def make_spec(name: str = "fake:counting", num_actions: int = 3) -> EnvSpec:
        one = (1,)
        return EnvSpec(
            name=name,
            obs={k: ArraySpec(one, np.dtype(np.int64)) for k in ("count", "episode", "last_action")},
            num_actions=num_actions,
            family="fake",
        )

    def _obs(self) -> Obs:
        return {
            "count": np.array([self._count], dtype=np.int64),
            "episode": np.array([self._episode], dtype=np.int64),
            "last_action": np.array([self._last_action], dtype=np.int64),
        }

    def reset(self, seed: int | None = None, options: Any = None) -> tuple[Obs, dict[str, Any]]:
        _busy_wait(self.reset_ms)
        if seed is not None:
            self.seed = seed
        self._count = 0
        self._episode += 1
        self._last_action = -1
        self._done = False
        return self._obs(), {}

    def step(self, action: Any) -> StepOut:
        if self._done:
            raise RuntimeError("CountingEnv.step after the episode ended (or before reset); call reset()")
        _busy_wait(self.step_ms)
        self._last_action = check_discrete_action(action, self.num_actions, "CountingEnv")
        self._count += 1
        terminated = self._count >= self.episode_len
        truncated = not terminated and 0 < self.max_episode_steps <= self._count
        self._done = terminated or truncated
        info: dict[str, Any] = {}
        if terminated:
            info["success"] = 1.0
        if self._done:
            info["extra"] = {"final_count": float(self._count)}
        return self._obs(), (1.0 if terminated else 0.0), terminated, truncated, info

    def render(self) -> np.ndarray:
        """:func:`render_bars` of the current observation."""
        return render_bars(self._obs())

    def close(self) -> None:
        self._done = True


# ----------------------------------------------------------------------------------------------------------
# SpecEnv
# ----------------------------------------------------------------------------------------------------------


def default_spec(name: str = "fake:spec") -> EnvSpec:
    return EnvSpec(
        name=name,
        obs={
            "image": ArraySpec((3, 8, 8), np.dtype(np.uint8)),
            "vector": ArraySpec((4,), np.dtype(np.float32)),
            "index": ArraySpec((1,), np.dtype(np.int64)),
        },
        num_actions=5,
        family="fake",
    )


def random_obs(spec: EnvSpec, rng: np.random.Generator) -> Obs:
    """One observation drawn from ``spec`` (uint8 full range, floats ~N(0,1), ints in [0, 100), bools)."""
    out: Obs = {}
    for k, s in spec.obs.items():
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            out[k] = rng.standard_normal(s.shape).astype(dt)
        elif dt.kind == "b":
            out[k] = rng.integers(0, 2, s.shape).astype(dt)
        elif dt.kind in "iu":
            hi = 256 if dt.itemsize == 1 else 100
            out[k] = rng.integers(0, hi, s.shape).astype(dt)
        else:
            raise ValueError(f"random_obs: unsupported dtype {dt} for observation {k!r}")
    return out


class SpecEnv:
    """Random observations that match ``spec`` exactly; validates every action against the spec.

    Usage::

        env = SpecEnv(default_spec(), episode_len=4, seed=1)
        obs, _ = env.reset()
        env.step(7)        # ValueError: SpecEnv(fake:spec): action 7 out of range [0, 5)
    """

    def __init__(
        self, spec: EnvSpec, episode_len: int = 5, max_episode_steps: int = 0, seed: int = 0
    ) -> None:
        self.spec = spec
        self.episode_len = episode_len
        self.max_episode_steps = max_episode_steps
        self._rng = np.random.default_rng(seed)
        self._t = 0
        self._done = True
        self._last: Obs = {k: np.zeros(s.shape, s.dtype) for k, s in spec.obs.items()}

    def reset(self, seed: int | None = None, options: Any = None) -> tuple[Obs, dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._t = 0
        self._done = False
        self._last = random_obs(self.spec, self._rng)
        return {k: v.copy() for k, v in self._last.items()}, {}

    def step(self, action: Any) -> StepOut:
        if self._done:
            raise RuntimeError("SpecEnv.step called after the episode ended (or before reset); call reset()")
        check_discrete_action(action, self.spec.num_actions, f"SpecEnv({self.spec.name})")
        self._t += 1
        terminated = self._t >= self.episode_len
        truncated = not terminated and 0 < self.max_episode_steps <= self._t
        self._done = terminated or truncated
        reward = float(self._rng.standard_normal())
        self._last = random_obs(self.spec, self._rng)
        return {k: v.copy() for k, v in self._last.items()}, reward, terminated, truncated, {}

    def render(self) -> np.ndarray:
        """:func:`render_bars` of the last observation."""
        return render_bars(self._last)

    def close(self) -> None:
        self._done = True


# ----------------------------------------------------------------------------------------------------------
# Learnable tasks
# ----------------------------------------------------------------------------------------------------------


class MemoryEnv:
    """Remember a cue over ``delay`` blank steps, then answer it.

    Step 0 shows ``cue`` one-hot; steps 1..delay show zeros; step delay+1 sets ``query`` = 1 and the action
    taken there is judged (reward 1 if it equals the cue), which terminates the episode (``delay + 2`` steps).
    Actions elsewhere are ignored. ``success`` in the final info is the reward.

    Usage::

        env = MemoryEnv(cues=2, delay=3, seed=0)
        obs, _ = env.reset(); cue = int(obs["cue"].argmax())
        for _ in range(4): obs, r, term, _, _ = env.step(cue)     # r == 1.0 on the last step
    """

    def __init__(self, cues: int = 2, delay: int = 5, max_episode_steps: int = 0, seed: int = 0) -> None:
        if cues < 2 or delay < 0:
            raise ValueError(f"MemoryEnv: need cues >= 2 and delay >= 0, got cues={cues} delay={delay}")
        self.cues = cues
        self.delay = delay
        self.max_episode_steps = max_episode_steps
        self._rng = np.random.default_rng(seed)
        self._cue = 0
        self._t = 0
        self._done = True

    @staticmethod
    def make_spec(name: str, cues: int) -> EnvSpec:
        return EnvSpec(
            name=name,
            obs={
                "cue": ArraySpec((cues,), np.dtype(np.float32)),
                "query": ArraySpec((1,), np.dtype(np.float32)),
            },
            num_actions=cues,
            family="fake",
        )

    def _obs(self) -> Obs:
        cue = np.zeros(self.cues, dtype=np.float32)
        if self._t == 0:
            cue[self._cue] = 1.0
        query = np.array([1.0 if self._t == self.delay + 1 else 0.0], dtype=np.float32)
        return {"cue": cue, "query": query}

    def reset(self, seed: int | None = None, options: Any = None) -> tuple[Obs, dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._cue = int(self._rng.integers(self.cues))
        self._t = 0
        self._done = False
        return self._obs(), {}

    def step(self, action: Any) -> StepOut:
        if self._done:
            raise RuntimeError("MemoryEnv.step after the episode ended (or before reset); call reset()")
        a = check_discrete_action(action, self.cues, "MemoryEnv")
        judged = self._t == self.delay + 1
        reward = 1.0 if judged and a == self._cue else 0.0
        self._t += 1
        terminated = judged
        truncated = not terminated and 0 < self.max_episode_steps <= self._t
        self._done = terminated or truncated
        info: dict[str, Any] = {"success": reward} if terminated else {}
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """:func:`render_bars` of the current observation."""
        return render_bars(self._obs())

    def close(self) -> None:
        self._done = True


class BanditEnv:
    """Contextual bandit: reward 1 iff action == argmax(context); ``episode_len`` steps per episode.

    Usage::

        env = BanditEnv(arms=3, episode_len=4)
        obs, _ = env.reset(); obs, r, *_ = env.step(int(obs["context"].argmax()))   # r == 1.0
    """

    def __init__(
        self, arms: int = 2, episode_len: int = 5, max_episode_steps: int = 0, seed: int = 0
    ) -> None:
        if arms < 2:
            raise ValueError(f"BanditEnv: need arms >= 2, got {arms}")
        self.arms = arms
        self.episode_len = episode_len
        self.max_episode_steps = max_episode_steps
        self._rng = np.random.default_rng(seed)
        self._ctx = 0
        self._t = 0
        self._hits = 0
        self._done = True

    @staticmethod
    def make_spec(name: str, arms: int) -> EnvSpec:
        return EnvSpec(
            name=name,
            obs={"context": ArraySpec((arms,), np.dtype(np.float32))},
            num_actions=arms,
            family="fake",
        )

    def _obs(self) -> Obs:
        self._ctx = int(self._rng.integers(self.arms))
        x = np.zeros(self.arms, dtype=np.float32)
        x[self._ctx] = 1.0
        return {"context": x}

    def reset(self, seed: int | None = None, options: Any = None) -> tuple[Obs, dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._t = 0
        self._hits = 0
        self._done = False
        return self._obs(), {}

    def step(self, action: Any) -> StepOut:
        if self._done:
            raise RuntimeError("BanditEnv.step after the episode ended (or before reset); call reset()")
        a = check_discrete_action(action, self.arms, "BanditEnv")
        reward = 1.0 if a == self._ctx else 0.0
        self._hits += int(reward)
        self._t += 1
        terminated = self._t >= self.episode_len
        truncated = not terminated and 0 < self.max_episode_steps <= self._t
        self._done = terminated or truncated
        info: dict[str, Any] = {"success": self._hits / self._t} if self._done else {}
        return self._obs(), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """:func:`render_bars` of the current observation (the context shown by the last reset/step)."""
        x = np.zeros(self.arms, dtype=np.float32)
        x[self._ctx] = 1.0
        return render_bars({"context": x})

    def close(self) -> None:
        self._done = True


# ----------------------------------------------------------------------------------------------------------
# Fault injection
# ----------------------------------------------------------------------------------------------------------


class FaultyEnv(CountingEnv):
    """A CountingEnv with a float ``real`` observation that fails on purpose (see module doc for options).

    Usage::

        env = FaultyEnv(mode="nan_obs", at=2, episode_len=10)
        env.reset(); env.step(0)
        obs, *_ = env.step(0)          # obs["real"] is NaN
    """

    def __init__(self, mode: str = "raise", at: int = 3, fail_seed: int | None = None, **kw: Any) -> None:
        if mode not in FAULT_MODES:
            raise ValueError(f"FaultyEnv: mode {mode!r} is not one of {FAULT_MODES}")
        super().__init__(**kw)
        self.mode = mode
        self.at = at
        self.armed = fail_seed is None or fail_seed == self.seed
        self.steps_taken = 0
        self.resets_done = 0

    @staticmethod
    def make_spec(name: str = "fake:faulty", num_actions: int = 3) -> EnvSpec:
        base = CountingEnv.make_spec(name, num_actions)
        return EnvSpec(
            name=name,
            obs={**base.obs, "real": ArraySpec((1,), np.dtype(np.float32))},
            num_actions=num_actions,
            family="fake",
        )

    def _obs(self) -> Obs:
        obs = super()._obs()
        obs["real"] = np.array([float(self._count)], dtype=np.float32)
        return obs

    def reset(self, seed: int | None = None, options: Any = None) -> tuple[Obs, dict[str, Any]]:
        self.resets_done += 1
        if self.armed and self.mode == "raise_reset" and self.resets_done == self.at:
            raise EnvFault(f"FaultyEnv(seed={self.seed}): injected failure in reset #{self.resets_done}")
        return super().reset(seed=None, options=options)

    def step(self, action: Any) -> StepOut:
        self.steps_taken += 1
        fire = self.armed and self.steps_taken == self.at
        if fire and self.mode == "raise":
            raise EnvFault(f"FaultyEnv(seed={self.seed}): injected failure in step #{self.steps_taken}")
        obs, reward, term, trunc, info = super().step(action)
        if fire and self.mode == "nan_obs":
            obs["real"][0] = np.nan
        elif fire and self.mode == "inf_obs":
            obs["real"][0] = np.inf
        elif fire and self.mode == "nan_reward":
            reward = float("nan")
        return obs, reward, term, trunc, info


# ----------------------------------------------------------------------------------------------------------
# Registry entry points
# ----------------------------------------------------------------------------------------------------------

_OPTIONS: dict[str, tuple[str, ...]] = {
    "counting": ("num_actions", "step_ms", "reset_ms", "make_ms"),
    "spec": (),
    "memory": ("cues",),
    "bandit": ("arms",),
    "faulty": ("num_actions", "mode", "at", "seed"),
}


def spec(cfg: EnvConfig) -> EnvSpec:
    """EnvSpec for a ``fake:*`` id (options parsed and checked)."""
    kind, opts = parse_id(cfg.name)
    _check_options(cfg.name, opts, _OPTIONS[kind])
    if kind == "counting":
        return CountingEnv.make_spec(cfg.name, _opt_int(opts, "num_actions", 3, cfg.name))
    if kind == "faulty":
        return FaultyEnv.make_spec(cfg.name, _opt_int(opts, "num_actions", 3, cfg.name))
    if kind == "spec":
        return default_spec(cfg.name)
    if kind == "memory":
        return MemoryEnv.make_spec(cfg.name, _opt_int(opts, "cues", 2, cfg.name))
    return BanditEnv.make_spec(cfg.name, _opt_int(opts, "arms", 2, cfg.name))


def make(cfg: EnvConfig, seed: int, render: bool = False) -> Any:
    """Build the single fake env named by ``cfg.name`` (Gymnasium-style reset/step, dict observations).
    ``render`` is accepted for the registry's signature: every fake env can always ``render()``."""
    kind, opts = parse_id(cfg.name)
    _check_options(cfg.name, opts, _OPTIONS[kind])
    n, L, T = cfg.name, cfg.fake_episode_len, cfg.max_episode_steps
    if kind == "counting":
        # make_ms: this env takes that long to build (sleeping), as a simulator that compiles or loads assets
        # does on a busy machine: an env actor with many of them is slow to start.
        make_ms = _opt_float(opts, "make_ms", 0.0, n)
        if not make_ms >= 0:
            raise ValueError(f"env.name {n!r}: option make_ms={opts['make_ms']!r} must be >= 0")
        time.sleep(make_ms / 1000.0)
        return CountingEnv(
            episode_len=L,
            max_episode_steps=T,
            num_actions=_opt_int(opts, "num_actions", 3, n),
            step_ms=_opt_float(opts, "step_ms", 0.0, n),
            reset_ms=_opt_float(opts, "reset_ms", 0.0, n),
            seed=seed,
        )
    if kind == "faulty":
        mode = opts.get("mode", "raise")
        if mode not in FAULT_MODES:
            raise ValueError(f"env.name {n!r}: mode={mode!r} is not one of {list(FAULT_MODES)}")
        fail_seed = _opt_int(opts, "seed", 0, n) if "seed" in opts else None
        return FaultyEnv(
            mode=mode,
            at=_opt_int(opts, "at", 3, n),
            fail_seed=fail_seed,
            episode_len=L,
            max_episode_steps=T,
            num_actions=_opt_int(opts, "num_actions", 3, n),
            seed=seed,
        )
    if kind == "spec":
        return SpecEnv(default_spec(n), episode_len=L, max_episode_steps=T, seed=seed)
    if kind == "memory":
        return MemoryEnv(cues=_opt_int(opts, "cues", 2, n), delay=L, max_episode_steps=T, seed=seed)
    return BanditEnv(arms=_opt_int(opts, "arms", 2, n), episode_len=L, max_episode_steps=T, seed=seed)
