"""Habitat PointNav adapter (``habitat:*`` ids) over habitat-lab's gym API, as ``shared/habitat/HABITAT.md``
§3.1 documents it. habitat is imported lazily: nothing here needs it until a real env is made.

Ids:

* ``habitat:pointnav``: real habitat-lab + habitat-sim (install with conda, see :data:`INSTALL_HINT`). The
  task config is ``cfg.habitat_config`` (default :data:`DEFAULT_TASK_CONFIG`); extra Hydra overrides come from
  ``cfg.habitat_overrides`` when the config has that field, or the ``overrides=`` argument of
  :class:`HabitatPointNavEnv`.
* ``habitat:fake-pointnav``: the same adapter over :mod:`distrl.envs.habitat_fake`, a FAKE habitat-lab
  replaying data recorded from a real run. It is NOT Habitat: it exists so the adapter's logic is tested and
  the pipeline can run end to end without habitat-sim.

What the adapter does with habitat-lab's old-gym env (``obs = env.reset()``, ``obs, r, done, info =
env.step(a)``):

* **Actions** (distrl order, the same as the MiniWorld stand-in): 0 = stop, 1 = move_forward, 2 = turn_left,
  3 = turn_right, mapped by name onto the task's own action order.
* **Observations** (all channel-first, like the Atari frames; keys from ``cfg.observation_keys``, default
  :data:`DEFAULT_OBSERVATION_KEYS`): ``"rgb"`` uint8 [3, S, S], ``"depth"`` float32 [1, S, S] in [0, 1]
  (Habitat's normalised depth, 1.0 = 10 m), ``"pointgoal"`` float32 [2] = Habitat's
  ``pointgoal_with_gps_compass`` [distance in m, angle to the goal in radians, positive to the agent's left].
  S = ``cfg.image_size``; the sensors are asked to render at S (config overrides) and anything else is
  area-resized.
* **terminated / truncated** from the 4-tuple: ``truncated = done and past the step limit and not success and
  stop was not called``; every other ``done`` is ``terminated`` (HABITAT.md's rule, plus: a ``stop`` on the
  last allowed step is the agent's own decision, so it terminates).
* **Episode-end info**: ``"success"`` (Habitat's Success metric), ``"episode_return"`` (raw return, also when
  ``cfg.reward_free`` zeroes the reward) and ``"extra"`` = ``{"spl": ..., "distance_to_goal": ...}``.
* **Seeding and resets**: Habitat's ``reset()`` moves to the next episode of its dataset iterator and
  ``habitat_env.seed`` does not rewind it (so gymnasium's determinism check fails on raw Habitat). Here, the
  first ``reset()`` after ``make(cfg, seed)`` and every ``reset(seed=s)`` seed the simulator AND rebuild the
  episode iterator with that seed (``iterator_options`` of the task config), so one seed fixes the sequence of
  episodes; ``reset()`` without a seed moves on to the next episode, as Habitat does.

Usage::

    env = make(EnvConfig(name="habitat:fake-pointnav", image_size=64), seed=0)   # FAKE habitat
    obs, _ = env.reset()              # obs["rgb"]: uint8 [3, 64, 64]
    obs, reward, terminated, truncated, info = env.step(1)   # move_forward
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from distrl.config import EnvConfig
from distrl.envs.atari import AreaResize
from distrl.envs.base import ArraySpec, EnvSpec

#: distrl's PointNav action order (also the MiniWorld stand-in's).
ACTIONS: tuple[str, ...] = ("stop", "move_forward", "turn_left", "turn_right")
STOP = 0
DEFAULT_OBSERVATION_KEYS: tuple[str, ...] = ("rgb", "depth", "pointgoal")
DEFAULT_TASK_CONFIG = "benchmark/nav/pointnav/pointnav_habitat_test.yaml"
REAL_ID = "habitat:pointnav"
FAKE_ID = "habitat:fake-pointnav"
_SENSORS = "habitat.simulator.agents.main_agent.sim_sensors"

INSTALL_HINT = """\
habitat:pointnav needs habitat-lab and habitat-sim, which install from conda (not PyPI) on Linux:
    conda create -n habitat python=3.9 cmake=3.14.0 && conda activate habitat
    conda install habitat-sim withbullet headless -c conda-forge -c aihabitat
    pip install habitat-lab==0.3.320260507      # pins numpy==1.26.4 and gym<0.23.1: keep it in its own env
    pip install "distrl[habitat]"
    python -m habitat_sim.utils.datasets_download --uids habitat_test_scenes habitat_test_pointnav_dataset \\
        --data-path data/
Without a GPU add the override habitat.simulator.habitat_sim_v0.gpu_device_id=-1 (Mesa llvmpipe EGL).
To test the pipeline without Habitat use env.name=habitat:fake-pointnav (a FAKE replaying a recorded run)."""


def import_habitat() -> Any:
    """``habitat`` with ``habitat.gym`` loaded, or ImportError carrying :data:`INSTALL_HINT`."""
    try:
        habitat = importlib.import_module("habitat")
        importlib.import_module("habitat.gym")
    except ImportError as e:
        raise ImportError(f"{e}\n{INSTALL_HINT}") from e
    return habitat


def observation_keys(cfg: EnvConfig) -> tuple[str, ...]:
    keys = tuple(cfg.observation_keys) or DEFAULT_OBSERVATION_KEYS
    bad = [k for k in keys if k not in DEFAULT_OBSERVATION_KEYS]
    if bad or len(set(keys)) != len(keys):
        raise ValueError(
            f"env.observation_keys {keys} for {cfg.name!r}: PointNav keys are a subset of "
            f"{DEFAULT_OBSERVATION_KEYS} without repeats"
        )
    return keys


def pointnav_obs_specs(keys: Sequence[str], size: int) -> dict[str, ArraySpec]:
    """The PointNav observation specs shared by the Habitat adapter and the MiniWorld stand-in."""
    all_specs = {
        "rgb": ArraySpec((3, size, size), np.dtype(np.uint8)),
        "depth": ArraySpec((1, size, size), np.dtype(np.float32)),
        "pointgoal": ArraySpec((2,), np.dtype(np.float32)),
    }
    return {k: all_specs[k] for k in keys}


def _key(override: str) -> str:
    return override.split("=", 1)[0].strip().lstrip("+~")


class HabitatPointNavEnv(gym.Env):
    """habitat-lab PointNav behind the distrl single-env API (module docstring: keys, actions, semantics).

    ``habitat_module`` replaces ``import habitat`` (tests pass
    :func:`distrl.envs.habitat_fake.fake_habitat_module`); ``overrides`` are extra Hydra overrides for
    ``habitat.get_config`` (data paths, GPU id, ...); they win over the ones the adapter derives from ``cfg``
    (sensor size, step limit, seed).

    Usage::

        env = HabitatPointNavEnv(EnvConfig(name="habitat:pointnav", image_size=128), seed=0,
                                 overrides=["habitat.simulator.habitat_sim_v0.gpu_device_id=-1"])
        obs, _ = env.reset()
        obs, reward, terminated, truncated, info = env.step(0)   # stop
        info["success"], info["extra"]["spl"]
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        cfg: EnvConfig,
        seed: int = 0,
        *,
        habitat_module: Any | None = None,
        overrides: Sequence[str] = (),
    ) -> None:
        if cfg.image_size < 1:
            raise ValueError(f"env.image_size must be >= 1, got {cfg.image_size}")
        if cfg.max_episode_steps < 0:
            raise ValueError(f"env.max_episode_steps must be >= 0, got {cfg.max_episode_steps}")
        self.cfg = cfg
        self.keys = observation_keys(cfg)
        hab = habitat_module if habitat_module is not None else import_habitat()
        self.habitat = hab
        user = [*getattr(cfg, "habitat_overrides", ()), *overrides]
        size = cfg.image_size
        derived = [f"habitat.seed={int(seed)}"]
        derived += [
            f"{_SENSORS}.{s}.{d}={size}" for s in ("rgb_sensor", "depth_sensor") for d in ("width", "height")
        ]
        if cfg.max_episode_steps > 0:
            derived.append(f"habitat.environment.max_episode_steps={cfg.max_episode_steps}")
        user_keys = {_key(o) for o in user}
        all_overrides = [o for o in derived if _key(o) not in user_keys] + list(user)
        self.habitat_config = hab.get_config(
            cfg.habitat_config or DEFAULT_TASK_CONFIG, overrides=all_overrides
        )
        self.env = hab.gym.make_gym_from_config(self.habitat_config)
        self._henv = self.env.unwrapped.habitat_env
        names = list(self._henv.task.actions.keys())
        missing = [a for a in ACTIONS if a not in names]
        if missing or int(self.env.action_space.n) != len(names):
            raise ValueError(
                f"{cfg.name}: the Habitat task must have the PointNav actions {ACTIONS} (and only "
                f"those as a Discrete space); it has {names} (missing {missing})"
            )
        self._to_habitat = [names.index(a) for a in ACTIONS]
        space = self.env.observation_space
        need = {"rgb": "rgb", "depth": "depth", "pointgoal": "pointgoal_with_gps_compass"}
        absent = [need[k] for k in self.keys if need[k] not in space.spaces]
        if absent:
            raise ValueError(
                f"{cfg.name}: the Habitat task config gives no {absent} observation "
                f"(it has {sorted(space.spaces)}); add the sensor or drop the key from observation_keys"
            )
        self._resizers: dict[str, AreaResize] = {}
        for k in ("rgb", "depth"):
            if k in self.keys:
                h, w = space.spaces[k].shape[:2]
                if (h, w) != (size, size):
                    self._resizers[k] = AreaResize((h, w), (size, size))
        specs = pointnav_obs_specs(self.keys, size)
        bounds = {"rgb": (0, 255), "depth": (0.0, 1.0), "pointgoal": (-np.inf, np.inf)}
        self.observation_space = gym.spaces.Dict(
            {k: gym.spaces.Box(*bounds[k], s.shape, s.dtype) for k, s in specs.items()}
        )
        self.action_space = gym.spaces.Discrete(len(ACTIONS))
        self._pending_seed: int | None = int(seed)
        self._return = 0.0
        self._need_reset = True

    # -- seeding
    # -------------------------------------------------------------------------------------------------

    def _reseed(self, seed: int) -> None:
        self._henv.seed(seed)
        # Habitat's seed() does not rewind the dataset iterator; rebuild it with this seed so that one seed
        # fixes the episode sequence (HABITAT.md §3.1, "Reset semantics").
        opts = {k.lower(): v for k, v in self.env.unwrapped.config.environment.iterator_options.items()}
        opts["seed"] = seed
        self._henv.episode_iterator = self._henv._dataset.get_episode_iterator(**opts)

    # -- observations
    # --------------------------------------------------------------------------------------------

    def _obs(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if "rgb" in self.keys:
            rgb = np.asarray(raw["rgb"])[..., :3]
            if "rgb" in self._resizers:
                rgb = self._resizers["rgb"](np.ascontiguousarray(rgb))
            out["rgb"] = np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.uint8)
        if "depth" in self.keys:
            depth = np.asarray(raw["depth"], dtype=np.float32)
            if depth.ndim == 2:
                depth = depth[..., None]
            if "depth" in self._resizers:
                depth = self._resizers["depth"](np.ascontiguousarray(depth))
            out["depth"] = np.ascontiguousarray(depth.transpose(2, 0, 1), dtype=np.float32)
        if "pointgoal" in self.keys:
            out["pointgoal"] = np.array(raw["pointgoal_with_gps_compass"], dtype=np.float32).reshape(2)
        return out

    # -- gymnasium API
    # -------------------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is not None:
            self._pending_seed = int(seed)
        if self._pending_seed is not None:
            self._reseed(self._pending_seed)
            self._pending_seed = None
        raw = self.env.reset()
        self._return = 0.0
        self._need_reset = False
        return self._obs(raw), {"episode_id": str(self._henv.current_episode.episode_id)}

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._need_reset:
            raise RuntimeError(f"{self.cfg.name}: step() called before reset() or after the episode ended")
        if not 0 <= action < len(ACTIONS):
            raise ValueError(f"{self.cfg.name}: action {action} out of range [0, {len(ACTIONS)}) = {ACTIONS}")
        raw, reward, done, metrics = self.env.step(self._to_habitat[int(action)])
        reward = float(reward)
        self._return += reward
        success = float(metrics.get("success", 0.0))
        terminated = truncated = False
        info: dict[str, Any] = {}
        if done:
            truncated = bool(self._henv._past_limit()) and success == 0.0 and int(action) != STOP
            terminated = not truncated
            info = {
                "success": success,
                "episode_return": self._return,
                "extra": {k: float(metrics[k]) for k in ("spl", "distance_to_goal") if k in metrics},
            }
            self._need_reset = True
        if self.cfg.reward_free:
            reward = 0.0
        return self._obs(raw), reward, terminated, truncated, info

    def close(self) -> None:
        self.env.close()


# ------------------------------------------------------------------------------------------------------------
# Family entry points
# ------------------------------------------------------------------------------------------------------------


def _check_id(name: str) -> None:
    if name not in (REAL_ID, FAKE_ID):
        raise ValueError(
            f"env.name {name!r}: known habitat ids are {REAL_ID!r} (real habitat-lab) and "
            f"{FAKE_ID!r} (a FAKE replaying a recorded run, for tests)"
        )


def spec(cfg: EnvConfig) -> EnvSpec:
    """PointNav EnvSpec (needs no simulator: the keys, shapes and 4 actions are fixed by the adapter)."""
    _check_id(cfg.name)
    return EnvSpec(
        name=cfg.name,
        obs=pointnav_obs_specs(observation_keys(cfg), cfg.image_size),
        num_actions=len(ACTIONS),
        family="habitat",
    )


def make(cfg: EnvConfig, seed: int) -> HabitatPointNavEnv:
    """Real Habitat for ``habitat:pointnav``; the recorded FAKE for ``habitat:fake-pointnav``."""
    _check_id(cfg.name)
    if cfg.name == FAKE_ID:
        from distrl.envs.habitat_fake import fake_habitat_module

        return HabitatPointNavEnv(cfg, seed, habitat_module=fake_habitat_module())
    return HabitatPointNavEnv(cfg, seed)
