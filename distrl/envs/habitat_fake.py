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
* Episodes: the dataset holds 20 PointNav episodes with ids "0".."19", like the file ``make_episodes.py``
  writes for ``two_rooms.glb``: the three recorded ones ("7", "15", "19") and 17 synthetic ones (start and goal
  drawn in the room, reset frames borrowed from a recorded episode) that run on the planar model below.
* Episode order, as habitat-lab's ``EpisodeIterator`` does it (and what the adapter must defend against): the
  iterator seeds the GLOBAL ``random`` and ``np.random`` only when its seed is truthy (``habitat.seed=0`` does
  not seed), shuffles the dataset's episode list IN PLACE with the global ``random`` (so a second iterator on
  the same dataset shuffles an already shuffled list), reshuffles a copy with the global ``random`` at each
  new cycle, and ``habitat_env.seed(s)`` seeds the global ``random``/``np.random`` but does NOT rewind it.
* GL context, as habitat-sim does it: the first simulator of a process creates the OpenGL context and the
  simulators created while it lives share it. Closing (or garbage-collecting) the simulator that created it
  destroys it: the real habitat-sim then aborts the whole process (``GL::Context::current(): no current
  context``, SIGABRT) at the next render of any other simulator; the fake raises :class:`FakeGLContextLost`
  there instead (at reset, step or close of a sharing simulator). The context is per thread: a simulator
  reset, stepped or closed from a thread other than its creator's finds none (the real one aborts, as it did
  when distrl's threaded Ray env actor closed its envs from another thread than the one that made them).
* ``close()`` of the gym wrapper is not idempotent: a second call raises ``AttributeError``, as habitat-lab's
  ``HabGymWrapper.close`` (``del self._last_obs``) does.
* Semantics: ``reset()`` takes the next episode of the iterator (seeding the env does NOT rewind it, as in
  Habitat); reward = slack -0.01 + decrease of the distance to goal + 2.5 on success; success
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
import random
import threading
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
    """One PointNav episode: start, goal, reset observation and (for the recorded ones) the recorded steps."""

    def __init__(self, data: dict[str, Any], rgb: np.ndarray, depth: np.ndarray) -> None:
        self.episode_id = str(data["episode_id"])
        self.scene_id = "two_rooms.glb"
        self.start_position = list(data["start_position"])
        self.goal_position = list(data["goal_position"])
        self.reset_pointgoal = np.asarray(data["reset_obs"]["pointgoal_with_gps_compass"], np.float32)
        self.reset_metrics = dict(data["reset_metrics"])
        self.steps = list(data["steps"])
        self.rgb = rgb
        self.depth = depth


#: Episodes in the dataset (``make_episodes.py`` writes 20, with ids "0".."19"; three of them are recorded).
NUM_EPISODES = 20


def _synthetic_episode(episode_id: int, y: float) -> dict[str, Any]:
    """An unrecorded episode: start and goal in the room (1-8 m apart), random heading; FAKE, not Habitat's."""
    rng = np.random.default_rng(1000 + episode_id)
    while True:
        a = [float(rng.uniform(0.5, _ROOM_X - 0.5)), y, float(rng.uniform(0.5, _ROOM_Z - 0.5))]
        b = [float(rng.uniform(0.5, _ROOM_X - 0.5)), y, float(rng.uniform(0.5, _ROOM_Z - 0.5))]
        d = math.dist(a, b)
        if 1.0 < d < 8.0:
            break
    heading = float(rng.uniform(-math.pi, math.pi))
    return {
        "episode_id": str(episode_id),
        "start_position": a,
        "goal_position": b,
        "reset_obs": {"pointgoal_with_gps_compass": [d, _wrap(_bearing(a, b) - heading)]},
        "reset_metrics": {"distance_to_goal": d, "success": 0.0, "spl": 0.0, "distance_to_goal_reward": -0.0},
        "steps": [],
    }


def _episodes(recording: dict[str, Any], frames: dict[str, np.ndarray]) -> list[FakeEpisode]:
    """The dataset's episodes in file order ("0".."19"): recorded ones where recorded, synthetic otherwise."""
    recorded = {str(e["episode_id"]): (i, e) for i, e in enumerate(recording["episodes"])}
    y = float(recording["episodes"][0]["start_position"][1])
    ids = sorted({*map(str, range(NUM_EPISODES)), *recorded}, key=lambda e: (not e.isdigit(), e.zfill(9)))
    out = []
    for n, eid in enumerate(ids):
        i, data = recorded.get(eid, (n % len(recorded), None))
        if data is None:
            data = _synthetic_episode(int(eid), y)
        out.append(FakeEpisode(data, frames[f"ep{i}_reset_rgb"], frames[f"ep{i}_reset_depth"]))
    return out


class FakeEpisodeIterator(Iterator[FakeEpisode]):
    """habitat-lab's ``EpisodeIterator`` ordering, faithfully (module docstring, "Episode order").

    ``seed`` seeds the GLOBAL ``random``/``np.random`` only when truthy; ``shuffle`` shuffles ``episodes`` IN
    PLACE (the caller's list: the dataset's) with the global ``random``; each new cycle reshuffles a copy.
    Scene grouping is moot (one scene) but, as in habitat, makes the list kept here a new one.
    """

    def __init__(
        self,
        episodes: Sequence[FakeEpisode],
        cycle: bool = True,
        shuffle: bool = False,
        group_by_scene: bool = True,
        num_episode_sample: int = -1,
        seed: int | None = None,
        **_other_options: Any,
    ) -> None:
        if seed:
            random.seed(seed)
            np.random.seed(seed)
        if num_episode_sample >= 0:
            episodes = list(np.random.choice(episodes, num_episode_sample, replace=False))  # type: ignore
        if not isinstance(episodes, list):
            episodes = list(episodes)
        self.episodes = episodes
        self.cycle, self.shuffle, self.group_by_scene = cycle, shuffle, group_by_scene
        if shuffle:
            random.shuffle(self.episodes)
        if group_by_scene:
            self.episodes = list(self.episodes)
        self._iterator = iter(self.episodes)

    def __next__(self) -> FakeEpisode:
        nxt = next(self._iterator, None)
        if nxt is None:
            if not self.cycle:
                raise StopIteration
            episodes = list(self.episodes)
            if self.shuffle:
                random.shuffle(episodes)
            self._iterator = iter(episodes)
            nxt = next(self._iterator)
        return nxt

    def step_taken(self) -> None:
        pass


class FakeDataset:
    def __init__(self, episodes: list[FakeEpisode]) -> None:
        self.episodes = episodes

    def get_episode_iterator(self, *args: Any, **kwargs: Any) -> FakeEpisodeIterator:
        return FakeEpisodeIterator(self.episodes, *args, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# The process's OpenGL context, as habitat-sim shares it
# ------------------------------------------------------------------------------------------------------------


class FakeGLContextLost(RuntimeError):
    """Where the real habitat-sim ABORTS the process (SIGABRT): a simulator rendered after the GL context it
    shares was destroyed by closing the simulator that created it."""


class _FakeGLContext:
    alive = True


#: ``.current``: the context current in each thread (none until a simulator creates one), as the real
#: ``GL::Context::current()``, which is per thread: a simulator used from a thread other than the one that
#: created it finds no current context there and aborts the process.
_TLS = threading.local()


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
        self._dataset = FakeDataset(_episodes(recording, frames))
        # habitat-sim: the first simulator creates the GL context, later ones share the current one.
        if getattr(_TLS, "current", None) is None:
            _TLS.current = _FakeGLContext()
            self._owns_context = True
        else:
            self._owns_context = False
        self._context = _TLS.current
        self._closed = False
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
        # Habitat seeds the global RNGs, the simulator and the task here; it does NOT rewind the iterator.
        random.seed(seed)
        np.random.seed(seed)
        self.seeds.append(int(seed))

    def _check_context(self, what: str) -> None:
        if not self._context.alive or getattr(_TLS, "current", None) is not self._context:
            raise FakeGLContextLost(
                f"FakeHabitat {what}: GL::Context::current(): no current context (the simulator that created "
                "this GL context was closed, or this thread is not the one the simulator was created on; the "
                "real habitat-sim aborts the process here)"
            )

    def close(self) -> None:
        """Close the simulator (a no-op once closed, as habitat_sim.Simulator.close is). Closing the one that
        created the GL context destroys it for every simulator sharing it (module docstring)."""
        if self._closed:
            return
        self._check_context("close")
        self._closed = True
        if self._owns_context:
            self._context.alive = False
            if getattr(_TLS, "current", None) is self._context:
                _TLS.current = None

    def __del__(self) -> None:
        # habitat_sim.Simulator.__del__ closes the simulator: garbage collection kills the context too.
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except FakeGLContextLost:
                pass

    def _past_limit(self) -> bool:
        return self._max_episode_steps != 0 and self._max_episode_steps <= self._elapsed_steps

    def get_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def render(self, mode: str = "rgb") -> np.ndarray:
        """FAKE ``habitat.Env.render``: the current observation of sensor ``mode`` (``"rgb"``: uint8 [H, W, 3])."""
        self._check_context("render")
        assert self._started, "Cannot call render before calling reset"
        obs = self._observe()
        assert mode in obs, f"mode {mode} sensor is not active"
        return obs[mode]

    # --- episode dynamics
    # ---------------------------------------------------------------------------------------

    def reset(self) -> dict[str, np.ndarray]:
        self._check_context("reset")
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
        self._check_context("step")
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

    def close(self) -> None:
        self.habitat_env.close()


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
        self._last_obs: Any = None

    @property
    def unwrapped(self) -> FakeRLTaskEnv:
        return self._env

    def reset(self, *, return_info: bool = False) -> Any:
        obs = self._last_obs = self._env.reset()
        return (obs, {}) if return_info else obs

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, dict[str, float]]:
        assert self.action_space.contains(action), (
            f"Invalid action {action} for action space {self.action_space}"
        )
        out = self._env.step(action)
        self._last_obs = out[0]
        return out

    def close(self) -> None:
        del self._last_obs  # as habitat-lab's HabGymWrapper.close: a second close raises AttributeError
        self._env.close()


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
