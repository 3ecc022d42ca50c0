"""FAKE habitat-lab for tests: NOT Habitat. A stand-in for the slice of habitat-lab's API that the PointNav
adapter (:mod:`distrl.envs.habitat`) uses, built from data RECORDED from a real habitat-sim 0.3.3 +
habitat-lab 0.3.320260507 run (``habitat_pointnav_recording.json`` + ``habitat_pointnav_frames.npz``, shipped
in ``distrl/envs/habitat_data/`` as copies of the project's ``shared/habitat/``; see ``HABITAT.md`` there).
habitat-sim cannot be installed on the project's machines, so the adapter's code path is exercised against
this fake; a separate test runs the adapter on real Habitat where habitat-sim exists.

What is mimicked (same names and calls as habitat-lab, see HABITAT.md §3.1):

* ``get_config(path, overrides=[...])``: a nested config (attribute access) accepting the Hydra-style
  ``a.b.c=value`` overrides the adapter sends; an override of a key the fake does not know fails, as Hydra's
  struct configs do, so adapter typos surface here.
* ``gym.make_gym_from_config(cfg)``: an OLD-gym env: ``reset() -> obs``, ``step(int) -> (obs, reward, done,
  info)``, ``Discrete(4)`` actions in the recorded order (stop, move_forward, turn_left, turn_right), the
  recorded Dict observation space (rgb uint8 HxWx3, depth float32 HxWx1 in [0, 1], pointgoal_with_gps_compass
  float32 [2] = [rho, -phi]), ``info`` = the recorded metric keys, ``unwrapped.habitat_env`` with ``seed``,
  ``episodes``, ``episode_iterator`` (settable), ``_dataset.get_episode_iterator``, ``_elapsed_steps``,
  ``_past_limit()``, ``episode_over``, ``get_metrics()``, ``task.actions``, and ``unwrapped.config`` (the
  ``habitat`` subtree).
* Semantics: ``reset()`` takes the next episode of a cycling, seed-shuffled iterator (seeding the env does NOT
  rewind it, as in Habitat); reward = slack -0.01 + decrease of the distance to goal + 2.5 on success; success
  iff ``stop`` is called within 0.2 m; SPL = success * d_start / max(d_start, path_length); ``done`` on stop,
  on the step limit, or on success (``end_on_success``); stepping after ``done`` raises, as Habitat asserts.

How it produces numbers: while the actions follow one of the three recorded episodes (time limit, success,
early stop), every step returns the RECORDED reward, metrics, point goal and position. Off the recording it
continues with a crude planar model (0.25 m forward steps, 10 degree turns, the 8 x 6 m room's outer walls,
Euclidean distance as "geodesic", no partition wall or obstacle), and the images are the recorded reset frames
rolled sideways by the heading change. Only the API and its semantics are faithful; the pixels and geometry
are not.

Usage::

    hab = fake_habitat_module()                        # the FAKE, not habitat
    env = HabitatPointNavEnv(EnvConfig(name="habitat:fake-pointnav"), seed=0, habitat_module=hab)
"""

from __future__ import annotations

import functools
import json
import math
import os
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml

#: Env var naming the folder with the recording (default: :data:`PACKAGED_DIR`).
HABITAT_DIR_ENV = "DISTRL_HABITAT_DIR"
RECORDING_FILE = "habitat_pointnav_recording.json"
FRAMES_FILE = "habitat_pointnav_frames.npz"

# Geometry of the recorded scene (two_rooms.glb: 8 x 6 m floor, agent radius 0.1 m) and of habitat's defaults.
_ROOM_X, _ROOM_Z, _RADIUS = 8.0, 6.0, 0.1
_FORWARD_STEP = 0.25
_TURN_DEG = 10.0
_HFOV_DEG = 90.0


#: The copies of the project's shared/habitat files that ship with distrl (see its README.md).
PACKAGED_DIR = Path(__file__).resolve().parent / "habitat_data"


def habitat_dir() -> Path:
    """Folder of the recording, two_rooms.glb, make_episodes.py: $DISTRL_HABITAT_DIR or :data:`PACKAGED_DIR`."""
    env = os.environ.get(HABITAT_DIR_ENV)
    if env:
        return Path(env)
    return PACKAGED_DIR


@functools.lru_cache(maxsize=4)
def load_recording(folder: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(recording JSON, frames) from ``folder`` (default :func:`habitat_dir`); FileNotFoundError if absent."""
    root = Path(folder) if folder else habitat_dir()
    rec_path, frames_path = root / RECORDING_FILE, root / FRAMES_FILE
    if not rec_path.is_file() or not frames_path.is_file():
        raise FileNotFoundError(
            f"FakeHabitat needs {RECORDING_FILE} and {FRAMES_FILE} in {root}; set {HABITAT_DIR_ENV} to the "
            f"folder that holds them (distrl ships them in {PACKAGED_DIR})"
        )
    with np.load(frames_path) as z:
        frames = {k: z[k] for k in z.files}
    return json.loads(rec_path.read_text()), frames


# ------------------------------------------------------------------------------------------------------------
# Config: a nested attribute dict with Hydra-like overrides
# ------------------------------------------------------------------------------------------------------------


class FakeConfigNode(dict):
    """dict with attribute access, standing in for habitat's OmegaConf DictConfig."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e


def _node(d: dict[str, Any]) -> FakeConfigNode:
    return FakeConfigNode({k: _node(v) if isinstance(v, dict) else v for k, v in d.items()})


def _default_config(recording: dict[str, Any]) -> dict[str, Any]:
    rw = recording["reward"]
    size = recording["observation_space"]["rgb"]["shape"][:2]
    sensor = {"height": size[0], "width": size[1], "hfov": int(_HFOV_DEG)}
    return {
        "habitat": {
            "seed": 100,
            "environment": {
                "max_episode_steps": 500,
                "max_episode_seconds": 10_000_000,
                "iterator_options": {
                    "cycle": True,
                    "shuffle": True,
                    "group_by_scene": True,
                    "num_episode_sample": -1,
                    "max_scene_repeat_episodes": -1,
                    "max_scene_repeat_steps": 10_000,
                    "step_repetition_range": 0.2,
                },
            },
            "simulator": {
                "habitat_sim_v0": {"gpu_device_id": 0},
                "forward_step_size": _FORWARD_STEP,
                "turn_angle": int(_TURN_DEG),
                "agents": {
                    "main_agent": {"sim_sensors": {"rgb_sensor": dict(sensor), "depth_sensor": dict(sensor)}}
                },
            },
            "task": {
                "success_reward": rw["success_reward"],
                "slack_reward": rw["slack_reward"],
                "end_on_success": rw["end_on_success"],
                "success_measure": rw["success_measure"],
                "reward_measure": rw["reward_measure"],
                "measurements": {"success": {"success_distance": rw["success_distance"]}},
            },
            "dataset": {
                "type": "PointNav-v1",
                "split": "train",
                "scenes_dir": "data",
                "data_path": "data/pointnav/train/train.json.gz",
            },
            "gym": {"obs_keys": None},
        }
    }


def get_config(config_path: str, overrides: Sequence[str] | None = None) -> FakeConfigNode:
    """FAKE ``habitat.get_config``: defaults of the recorded run plus ``a.b.c=value`` overrides."""
    recording, _ = load_recording()
    cfg = _default_config(recording)
    for text in overrides or ():
        if "=" not in text:
            raise ValueError(f"FakeHabitat get_config: override {text!r} must look like key=value")
        key, raw = text.split("=", 1)
        parts = key.split(".")
        node = cfg
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise KeyError(
                    f"FakeHabitat get_config: could not override {key!r}: key {p!r} is not in struct"
                )
            node = node[p]
        if parts[-1] not in node:
            raise KeyError(
                f"FakeHabitat get_config: could not override {key!r}: key {parts[-1]!r} is not in struct"
            )
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    out = _node(cfg)
    out["config_path"] = config_path
    return out


# ------------------------------------------------------------------------------------------------------------
# Dataset, episodes and the episode iterator
# ------------------------------------------------------------------------------------------------------------


class FakeEpisode:
    """One recorded PointNav episode: start, goal, reset observation and the recorded steps."""

    def __init__(self, index: int, data: dict[str, Any], frames: dict[str, np.ndarray]) -> None:
        self.episode_id = str(data["episode_id"])
        self.scene_id = "two_rooms.glb"
        self.start_position = list(data["start_position"])
        self.goal_position = list(data["goal_position"])
        self.reset_pointgoal = np.asarray(data["reset_obs"]["pointgoal_with_gps_compass"], np.float32)
        self.reset_metrics = dict(data["reset_metrics"])
        self.steps = list(data["steps"])
        self.rgb = frames[f"ep{index}_reset_rgb"]
        self.depth = frames[f"ep{index}_reset_depth"]


class FakeEpisodeIterator(Iterator[FakeEpisode]):
    """Cycles over the episodes, reshuffled (by ``seed``) at the start of each cycle when ``shuffle``."""

    def __init__(
        self,
        episodes: Sequence[FakeEpisode],
        cycle: bool = True,
        shuffle: bool = False,
        seed: int | None = None,
        **_other_options: Any,
    ) -> None:
        self._episodes, self._cycle, self._shuffle = list(episodes), cycle, shuffle
        self._rng = np.random.default_rng(seed)
        self._order: list[int] = []

    def __next__(self) -> FakeEpisode:
        if not self._order:
            if not self._cycle and getattr(self, "_started", False):
                raise StopIteration
            self._started = True
            n = len(self._episodes)
            self._order = list(self._rng.permutation(n)) if self._shuffle else list(range(n))
        return self._episodes[self._order.pop(0)]


class FakeDataset:
    def __init__(self, episodes: list[FakeEpisode]) -> None:
        self.episodes = episodes

    def get_episode_iterator(self, *args: Any, **kwargs: Any) -> FakeEpisodeIterator:
        return FakeEpisodeIterator(self.episodes, *args, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# habitat.Env / RLTaskEnv / GymHabitatEnv stand-ins
# ------------------------------------------------------------------------------------------------------------


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _bearing(frm: Sequence[float], to: Sequence[float]) -> float:
    """Angle of the vector frm -> to in the floor plane (u = x, v = -z), counter-clockwise seen from above."""
    return math.atan2(-(to[2] - frm[2]), to[0] - frm[0])


class FakeTask:
    def __init__(self, action_names: Sequence[str]) -> None:
        self.actions = {name: None for name in action_names}


class FakeHabitatCoreEnv:
    """FAKE ``habitat.Env`` (NOT Habitat): episode bookkeeping, metrics and the crude off-recording model."""

    def __init__(
        self, config: FakeConfigNode, recording: dict[str, Any], frames: dict[str, np.ndarray]
    ) -> None:
        self._config = config
        self.task = FakeTask(recording["task_action_order"])
        self._action_names = list(recording["task_action_order"])
        self._dataset = FakeDataset([FakeEpisode(i, e, frames) for i, e in enumerate(recording["episodes"])])
        opts = {k.lower(): v for k, v in config.environment.iterator_options.items()}
        self._episode_iterator: Iterator[FakeEpisode] = self._dataset.get_episode_iterator(
            seed=config.seed, **opts
        )
        self._current_episode: FakeEpisode | None = next(self._episode_iterator)
        self._episode_from_iter_on_reset = False
        self._max_episode_steps = int(config.environment.max_episode_steps)
        self._elapsed_steps = 0
        self._episode_over = False
        self._started = False
        self._sensor = config.simulator.agents.main_agent.sim_sensors
        self._success_distance = float(config.task.measurements.success.success_distance)
        self.seeds: list[int] = []

    # --- what the adapter touches
    # -------------------------------------------------------------------------------

    @property
    def episodes(self) -> list[FakeEpisode]:
        return self._dataset.episodes

    @property
    def episode_iterator(self) -> Iterator[FakeEpisode]:
        return self._episode_iterator

    @episode_iterator.setter
    def episode_iterator(self, it: Iterator[FakeEpisode]) -> None:
        self._episode_iterator = it
        self._episode_from_iter_on_reset = True

    @property
    def current_episode(self) -> FakeEpisode:
        assert self._current_episode is not None
        return self._current_episode

    @property
    def episode_over(self) -> bool:
        return self._episode_over

    def seed(self, seed: int) -> None:
        # Habitat seeds the simulator and task here; it does NOT rewind the episode iterator.
        self.seeds.append(int(seed))

    def _past_limit(self) -> bool:
        return self._max_episode_steps != 0 and self._max_episode_steps <= self._elapsed_steps

    def get_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    # --- episode dynamics
    # ---------------------------------------------------------------------------------------

    def reset(self) -> dict[str, np.ndarray]:
        if self._episode_from_iter_on_reset:
            self._current_episode = next(self._episode_iterator)
        self._episode_from_iter_on_reset = True
        ep = self.current_episode
        self._started = True
        self._elapsed_steps = 0
        self._episode_over = False
        self._on_record = True
        self._stop_called = False
        self._pos = list(ep.start_position)
        self._d_start = float(ep.reset_metrics["distance_to_goal"])
        self._prev_distance = self._d_start
        self._path_length = 0.0
        self._heading0 = _bearing(ep.start_position, ep.goal_position) - float(ep.reset_pointgoal[1])
        self._heading = self._heading0
        self._pointgoal = ep.reset_pointgoal.copy()
        self._metrics = dict(ep.reset_metrics)
        return self._observe()

    def step(self, action: int | str | dict[str, Any]) -> dict[str, np.ndarray]:
        assert self._started, "Cannot call step before calling reset"
        assert not self._episode_over, "Episode over, call reset before calling step"
        if isinstance(action, dict):
            action = action["action"]
        name = action if isinstance(action, str) else self._action_names[int(action)]
        index = self._action_names.index(name)
        ep = self.current_episode
        t = self._elapsed_steps
        rec = None
        if self._on_record and t < len(ep.steps) and int(ep.steps[t]["action"]) == index:
            rec = ep.steps[t]
        else:
            self._on_record = False
        old = list(self._pos)
        if name == "move_forward":
            self._pos[0] = min(
                max(self._pos[0] + _FORWARD_STEP * math.cos(self._heading), _RADIUS), _ROOM_X - _RADIUS
            )
            self._pos[2] = min(
                max(self._pos[2] - _FORWARD_STEP * math.sin(self._heading), _RADIUS), _ROOM_Z - _RADIUS
            )
        elif name == "turn_left":
            self._heading += math.radians(_TURN_DEG)
        elif name == "turn_right":
            self._heading -= math.radians(_TURN_DEG)
        elif name == "stop":
            self._stop_called = True
        if rec is not None:
            self._pos = list(rec["agent_position"])
            self._pointgoal = np.asarray(rec["pointgoal_with_gps_compass"], np.float32)
            if self._pointgoal[0] > 1e-3:  # keep the model's heading in sync with the recording
                self._heading = _bearing(self._pos, ep.goal_position) - float(self._pointgoal[1])
        self._path_length += math.dist(old, self._pos)
        if rec is not None:
            self._metrics = dict(rec["info"])
            self._reward = float(rec["reward"])
        else:
            d = math.dist(self._pos, ep.goal_position)  # FAKE geodesic: straight line
            success = float(self._stop_called and d < self._success_distance)
            spl = success * self._d_start / max(self._d_start, self._path_length)
            self._metrics = {
                "distance_to_goal": d,
                "success": success,
                "spl": spl,
                "distance_to_goal_reward": self._prev_distance - d,
            }
            rel = _wrap(_bearing(self._pos, ep.goal_position) - self._heading)
            self._pointgoal = np.array([d, rel], np.float32)
            cfg = self._config.task
            self._reward = (
                cfg.slack_reward + (self._prev_distance - d) + (cfg.success_reward if spl > 0 else 0.0)
            )
        self._prev_distance = float(self._metrics["distance_to_goal"])
        self._elapsed_steps += 1
        self._episode_over = self._stop_called or self._past_limit()
        return self._observe()

    def _observe(self) -> dict[str, np.ndarray]:
        ep = self.current_episode
        # FAKE rendering: the recorded reset frame, rolled sideways by the heading change since the reset.
        shift = round(math.degrees(self._heading - self._heading0) / _HFOV_DEG * ep.rgb.shape[1])
        rgb, depth = np.roll(ep.rgb, shift, axis=1), np.roll(ep.depth, shift, axis=1)
        rs, ds = self._sensor.rgb_sensor, self._sensor.depth_sensor
        return {
            "rgb": _nearest(rgb, int(rs.height), int(rs.width)),
            "depth": _nearest(depth, int(ds.height), int(ds.width)),
            "pointgoal_with_gps_compass": self._pointgoal.astype(np.float32),
        }


def _nearest(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize (the fake renders at the configured sensor size, like Habitat does)."""
    if img.shape[:2] == (h, w):
        return img.copy()
    rows = (np.arange(h) * img.shape[0] // h).astype(np.intp)
    cols = (np.arange(w) * img.shape[1] // w).astype(np.intp)
    return img[rows][:, cols].copy()


class FakeRLTaskEnv:
    """FAKE ``habitat.core.environments.RLTaskEnv``: reward and done from the metrics, as habitat-lab does."""

    def __init__(self, config: FakeConfigNode) -> None:
        recording, frames = load_recording()
        self.config = config.habitat  # RLEnv.config is the habitat subtree
        self.habitat_env = FakeHabitatCoreEnv(self.config, recording, frames)

    def reset(self) -> dict[str, np.ndarray]:
        return self.habitat_env.reset()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, dict[str, float]]:
        obs = self.habitat_env.step(action)
        metrics = self.habitat_env.get_metrics()
        task = self.config.task
        done = self.habitat_env.episode_over or (task.end_on_success and metrics[task.success_measure] > 0)
        return obs, self.habitat_env._reward, bool(done), metrics


class FakeGymHabitatEnv:
    """FAKE ``habitat.gym.GymHabitatEnv`` (old gym API: 4-tuple step, obs-only reset)."""

    def __init__(self, config: FakeConfigNode) -> None:
        self._env = FakeRLTaskEnv(config)
        sensors = config.habitat.simulator.agents.main_agent.sim_sensors
        rs, ds = sensors.rgb_sensor, sensors.depth_sensor
        f32max = float(np.finfo(np.float32).max)
        self.observation_space = gym.spaces.Dict(
            {
                "depth": gym.spaces.Box(0.0, 1.0, (int(ds.height), int(ds.width), 1), np.float32),
                "pointgoal_with_gps_compass": gym.spaces.Box(-f32max, f32max, (2,), np.float32),
                "rgb": gym.spaces.Box(0, 255, (int(rs.height), int(rs.width), 3), np.uint8),
            }
        )
        self.action_space = gym.spaces.Discrete(len(self._env.habitat_env.task.actions))

    @property
    def unwrapped(self) -> FakeRLTaskEnv:
        return self._env

    def reset(self, *, return_info: bool = False) -> Any:
        obs = self._env.reset()
        return (obs, {}) if return_info else obs

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, dict[str, float]]:
        assert self.action_space.contains(action), (
            f"Invalid action {action} for action space {self.action_space}"
        )
        return self._env.step(action)

    def close(self) -> None:
        pass


def make_gym_from_config(config: FakeConfigNode) -> FakeGymHabitatEnv:
    """FAKE ``habitat.gym.make_gym_from_config``."""
    return FakeGymHabitatEnv(config)


def fake_habitat_module() -> types.ModuleType:
    """A module object with the FAKE ``get_config`` and ``gym.make_gym_from_config`` (the adapter's imports).

    Install it with ``monkeypatch.setitem(sys.modules, "habitat", m)`` plus ``"habitat.gym"`` to exercise the
    adapter's lazy import, or pass it as ``habitat_module=``. It is labelled FAKE in its name and docstring.
    """
    mod = types.ModuleType(
        "fake_habitat", "FAKE habitat-lab built from a recording (distrl.envs.habitat_fake)"
    )
    gym_mod = types.ModuleType("fake_habitat.gym", "FAKE habitat.gym")
    gym_mod.make_gym_from_config = make_gym_from_config  # type: ignore[attr-defined]
    mod.get_config = get_config  # type: ignore[attr-defined]
    mod.gym = gym_mod  # type: ignore[attr-defined]
    mod.__version__ = "fake"  # type: ignore[attr-defined]
    mod.IS_FAKE = True  # type: ignore[attr-defined]
    return mod
