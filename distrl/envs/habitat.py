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
* **Seeding and resets**: Habitat's ``reset()`` moves to the next episode of its dataset iterator;
  ``habitat_env.seed`` does not rewind it, and habitat-lab's ``EpisodeIterator`` shuffles the dataset's episode
  list IN PLACE with the global ``random`` module, seeded only when the seed is truthy (so two envs with seed 0
  start on different episodes, and rebuilding the iterator shuffles an already shuffled list). Here, the first
  ``reset()`` after ``make(cfg, seed)`` and every ``reset(seed=s)`` seed the simulator, put the dataset's
  episodes back in a canonical order (by scene, then episode id, numeric ids numerically) and rebuild the
  iterator (``iterator_options`` of the task config) under a private ``random``/``np.random`` state seeded with
  ``s``; that state also drives the iterator's later reshuffles, so other code drawing from the global RNGs
  (other envs of the process included) cannot change the sequence. One seed fixes the sequence of episodes in
  any process; ``reset()`` without a seed moves on to the next episode, as Habitat does.
* **Closing**: habitat-sim's first simulator in a process creates the OpenGL context that the later ones share;
  closing it (or letting it be garbage-collected) while others live aborts the process at their next render
  (``GL::Context::current(): no current context``, SIGABRT). The adapter closes simulators through a
  process-wide :class:`_SimulatorRegistry`: ``close()`` closes a simulator at once unless it is the one holding
  the context while others live; that one stays open (unusable through this adapter) until it is the last,
  and whatever is left is closed at interpreter exit in the same safe order. The context is also per thread:
  a ``close()`` from another thread than the simulator's (a threaded Ray actor's ``close``) only releases it,
  and it is closed on its own thread later or never (the process's exit frees it). ``close()`` is idempotent.
* **Data and device** (real Habitat only): without a ``habitat.dataset.data_path`` override (or with
  ``habitat.dataset.data_path=bundled``), the adapter uses distrl's bundled ``two_rooms.glb`` with 20 PointNav
  episodes generated once by ``habitat_data/make_episodes.py`` into ``$DISTRL_HABITAT_CACHE`` (default
  ``~/.cache/distrl/habitat``). Without a ``...habitat_sim_v0.gpu_device_id`` override it adds
  ``gpu_device_id=-1`` (CPU rendering, Mesa llvmpipe EGL) when torch sees no CUDA device.

Usage::

    env = make(EnvConfig(name="habitat:fake-pointnav", image_size=64), seed=0)   # FAKE habitat
    obs, _ = env.reset()              # obs["rgb"]: uint8 [3, 64, 64]
    obs, reward, terminated, truncated, info = env.step(1)   # move_forward
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
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
GPU_KEY = "habitat.simulator.habitat_sim_v0.gpu_device_id"
DATA_PATH_KEY = "habitat.dataset.data_path"
SCENES_DIR_KEY = "habitat.dataset.scenes_dir"
#: ``habitat.dataset.data_path`` value (also the default) that selects distrl's bundled scene and episodes.
BUNDLED = "bundled"
#: Env var naming the folder where the bundled scene's generated episodes are cached.
CACHE_ENV = "DISTRL_HABITAT_CACHE"

log = logging.getLogger(__name__)

INSTALL_HINT = """\
habitat:pointnav needs habitat-lab and habitat-sim; habitat-sim is not on PyPI. Either conda (Linux):
    conda create -n habitat python=3.9 cmake=3.14.0 && conda activate habitat
    conda install habitat-sim withbullet headless -c conda-forge -c aihabitat
    pip install habitat-lab==0.3.320260507      # pins numpy==1.26.4 and gym<0.23.1: keep it in its own env
    pip install "distrl[habitat]"
or a build from source (Debian 12, Python 3.11, no GPU needed): see the README's "Habitat" section.
With no data_path override distrl uses its bundled two_rooms.glb scene (episodes generated on first use), and
with no CUDA device it renders on the CPU (gpu_device_id=-1, Mesa llvmpipe EGL).
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


def _value(overrides: Sequence[str], key: str) -> str | None:
    """The value the last override of ``key`` sets (None when none does)."""
    out = None
    for o in overrides:
        if "=" in o and _key(o) == key:
            out = o.split("=", 1)[1].strip()
    return out


def _no_cuda_device() -> bool:
    try:
        import torch

        return torch.cuda.device_count() == 0
    except Exception:  # no torch CUDA runtime: no GPU to render on
        return True


def bundled_dataset(python: str | None = None) -> tuple[str, str]:
    """(data_path, scenes_dir) of distrl's bundled ``two_rooms.glb`` with its 20 PointNav episodes.

    The episodes are generated once with habitat-sim's navmesh by ``habitat_data/make_episodes.py`` (run in a
    subprocess, so its simulator never shares this process's GL context) into
    ``$DISTRL_HABITAT_CACHE/two_rooms-<hash>/`` (default ``~/.cache/distrl/habitat``), under a file lock so
    that concurrent env processes generate them once.
    """
    import fcntl

    from distrl.envs.habitat_fake import habitat_dir

    src = habitat_dir()
    scene, script = src / "two_rooms.glb", src / "make_episodes.py"
    digest = hashlib.sha256(scene.read_bytes() + script.read_bytes()).hexdigest()[:12]
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "distrl" / "habitat")
    out = root / f"two_rooms-{digest}"
    data = out / "pointnav" / "train" / "train.json.gz"
    if not data.is_file():
        out.mkdir(parents=True, exist_ok=True)
        with open(out / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not data.is_file():
                shutil.copyfile(scene, out / "two_rooms.glb")
                with tempfile.TemporaryDirectory(dir=out) as tmp:
                    subprocess.run(
                        [python or sys.executable, str(script), str(out / "two_rooms.glb"), tmp],
                        check=True, timeout=600, stdout=subprocess.DEVNULL,
                    )
                    data.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(Path(tmp) / "pointnav" / "train" / "train.json.gz", data)
    return str(data), str(out)


def _episode_order_key(ep: Any) -> tuple[str, int, int, str]:
    """Canonical episode order: by scene, then numeric ids numerically, then other ids as text."""
    eid = str(ep.episode_id)
    return (str(getattr(ep, "scene_id", "")), 0 if eid.isdigit() else 1, int(eid) if eid.isdigit() else 0, eid)


class _PrivateRNG:
    """A private ``random`` + ``np.random`` global state: ``with rng:`` swaps it in, then back out.

    habitat-lab's episode iterator draws from the GLOBAL ``random`` (and ``np.random`` for episode sampling);
    running its calls inside this keeps one env's episode sequence independent of everything else in the
    process, and leaves the global state as it found it.
    """

    def __init__(self, seed: int) -> None:
        self._py = random.Random(seed).getstate()
        self._np = np.random.RandomState(seed % 2**32).get_state()
        self._saved: list[tuple[Any, Any]] = []

    def __enter__(self) -> None:
        self._saved.append((random.getstate(), np.random.get_state()))
        random.setstate(self._py)
        np.random.set_state(self._np)

    def __exit__(self, *exc: Any) -> None:
        self._py, self._np = random.getstate(), np.random.get_state()
        py, npy = self._saved.pop()
        random.setstate(py)
        np.random.set_state(npy)


_ISOLATED: dict[type, type] = {}


def _isolate(iterator: Iterator[Any], rng: _PrivateRNG) -> Iterator[Any]:
    """Make ``iterator`` (a habitat EpisodeIterator) draw from ``rng`` instead of the global RNGs.

    The object keeps its class's behaviour through a subclass (habitat's ``Env.step`` calls ``step_taken`` only
    on ``EpisodeIterator`` instances) whose ``__next__``/``step_taken`` run inside ``rng``.
    """
    base = type(iterator)
    cls = _ISOLATED.get(base)
    if cls is None:

        def __next__(self: Any) -> Any:
            with self._distrl_rng:
                return base.__next__(self)

        body: dict[str, Any] = {"__next__": __next__}
        if hasattr(base, "step_taken"):

            def step_taken(self: Any) -> None:
                with self._distrl_rng:
                    base.step_taken(self)

            body["step_taken"] = step_taken
        cls = _ISOLATED[base] = type(base.__name__, (base,), body)
    iterator.__class__ = cls
    iterator._distrl_rng = rng  # type: ignore[attr-defined]
    return iterator


class _SimulatorRegistry:
    """Closes the habitat simulators of this process in an order, and on a thread, that keep GL contexts alive.

    habitat-sim's first simulator in a thread creates an OpenGL context, current in that thread only;
    simulators created later on that thread share it, and closing it while they live aborts the process
    (SIGABRT) at their next render. A simulator touched from another thread (no current context there) aborts
    too. So per creating thread, the OLDEST open simulator is taken to hold the context. ``release(env)``
    closes ``env`` now if the caller is on ``env``'s thread and ``env`` is not a holder with others open; a
    held-back holder is closed as soon as it is the last open one of its thread. A release from another
    thread (a threaded Ray actor closing its envs, a garbage collection) only marks the simulator released:
    it is closed by the next registry call on its own thread, or never. At interpreter exit ``close_all``
    closes the exiting thread's simulators newest first and leaves the others open for good (the OS frees
    them; destroying them would abort). Entries hold the habitat gym env strongly, so garbage collection
    cannot close a holder behind the registry's back.
    """

    def __init__(self) -> None:
        self._open: list[list[Any]] = []  # [gym_env, released, creating thread id], in creation order
        self._lock = threading.RLock()
        self._leaked: list[Any] = []

    def add(self, env: Any) -> None:
        with self._lock:
            self._open.append([env, False, threading.get_ident()])
            self._flush(threading.get_ident())

    def __len__(self) -> int:
        return len(self._open)

    def held_back(self) -> int:
        """Simulators released by their adapter but kept open (GL context holder, or another thread's)."""
        return sum(1 for e in self._open if e[1])

    def release(self, env: Any) -> None:
        with self._lock:
            for entry in self._open:
                if entry[0] is env:
                    entry[1] = True
                    break
            else:
                return
            self._flush(threading.get_ident())

    def _flush(self, thread: int) -> None:
        mine = [e for e in self._open if e[2] == thread]
        for entry in mine[1:]:  # never the holder while others of its thread are open
            if entry[1]:
                self._open.remove(entry)
                self._close(entry[0])
        mine = [e for e in self._open if e[2] == thread]
        if len(mine) == 1 and mine[0][1]:
            self._open.remove(mine[0])
            self._close(mine[0][0])

    def close_all(self) -> None:
        with self._lock:
            me = threading.get_ident()
            for entry in reversed(list(self._open)):  # newest first: each thread's holder goes last
                self._open.remove(entry)
                if entry[2] == me:
                    self._close(entry[0])
                else:
                    self._leak(entry[0])

    def _leak(self, env: Any) -> None:
        # Made on a thread that cannot close it now: keep it alive past interpreter teardown (which would
        # run habitat_sim.Simulator.__del__ -> close -> abort); the process's exit frees it.
        import ctypes

        self._leaked.append(env)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(env))

    @staticmethod
    def _close(env: Any) -> None:
        try:
            env.close()
        except Exception as e:  # a broken simulator may fail to close; that must not stop the others
            log.warning("habitat env close failed: %s: %s", type(e).__name__, e)


#: This process's habitat simulators (see :class:`_SimulatorRegistry`).
SIMULATORS = _SimulatorRegistry()
atexit.register(SIMULATORS.close_all)


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
        is_fake = bool(getattr(hab, "IS_FAKE", False))
        if GPU_KEY not in {_key(o) for o in user} and _no_cuda_device():
            derived.append(f"{GPU_KEY}=-1")  # no GPU visible: render on the CPU (EGL, Mesa llvmpipe)
        if not is_fake and _value(user, DATA_PATH_KEY) in (None, BUNDLED):
            data_path, scenes_dir = bundled_dataset()
            user = [o for o in user if _key(o) != DATA_PATH_KEY]
            derived.append(f"{DATA_PATH_KEY}={data_path}")
            if _value(user, SCENES_DIR_KEY) in (None, BUNDLED):
                user = [o for o in user if _key(o) != SCENES_DIR_KEY]
                derived.append(f"{SCENES_DIR_KEY}={scenes_dir}")
        user_keys = {_key(o) for o in user}
        all_overrides = [o for o in derived if _key(o) not in user_keys] + list(user)
        self.habitat_config = hab.get_config(
            cfg.habitat_config or DEFAULT_TASK_CONFIG, overrides=all_overrides
        )
        self._closed = True  # until the simulator exists: close() and __del__ have nothing to do
        self.env = hab.gym.make_gym_from_config(self.habitat_config)
        SIMULATORS.add(self.env)
        self._closed = False
        self._henv = self.env.unwrapped.habitat_env
        # The dataset's file order is lost (habitat's iterator shuffled the list in place already): the
        # canonical order that every reseed restores (module docstring, "Seeding and resets").
        self._canonical_episodes = sorted(self._henv._dataset.episodes, key=_episode_order_key)
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
        """Seed the simulator and restart the episode sequence for ``seed`` (module docstring)."""
        self._henv.seed(seed)
        dataset = self._henv._dataset
        # habitat's iterator shuffles dataset.episodes in place: restore the canonical order first, in place
        # (the dataset object is habitat's; other code may hold the list).
        dataset.episodes[:] = self._canonical_episodes
        opts = {k.lower(): v for k, v in self.env.unwrapped.config.environment.iterator_options.items()}
        opts["seed"] = None  # seeded below, also for seed 0 (habitat seeds only a truthy seed)
        rng = _PrivateRNG(seed)
        with rng:
            iterator = dataset.get_episode_iterator(**opts)
        self._henv.episode_iterator = _isolate(iterator, rng)

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
        self._check_open()
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
        self._check_open()
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

    def render(self) -> np.ndarray:
        """The rgb sensor's current image, RGB uint8 [H, W, 3] at the sensor's rendered size
        (``habitat.Env.render("rgb")``)."""
        return np.ascontiguousarray(np.asarray(self._henv.render("rgb"))[..., :3], dtype=np.uint8)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.cfg.name}: the env is closed")

    def close(self) -> None:
        """Release the simulator: closed now, or later if it holds the GL context others share. Idempotent."""
        if self._closed:
            return
        self._closed = True
        SIMULATORS.release(self.env)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


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
