"""MiniWorld PointNav: a STAND-IN for Habitat PointNav on real first-person 3-D pixels (``MiniWorld-*`` ids).

It is not Habitat. It gives the same observation keys, shapes and action set as the Habitat adapter
(:mod:`distrl.envs.habitat`), so the same configs and models run on rendered 3-D rooms in CI, where
habitat-sim cannot be installed. MiniWorld (Farama) renders with OpenGL through pyglet; this module forces
pyglet's headless EGL mode (``PYGLET_HEADLESS=true``), which on Debian needs ``libegl1 libegl-mesa0
libgl1-mesa-dri`` (Mesa's llvmpipe renders on the CPU; no X server).

Task: reach the env's goal entity (the red box that ``OneRoom``, ``FourRooms``, ``Maze*``, ``Hallway``,
``TMaze*``, ``YMaze*``, ``WallGap``, ``ThreeRooms`` and ``Sidewalk`` place) and call ``stop`` there, with
Habitat's rules:

* actions: 0 = stop (ends the episode; the simulator is not stepped), 1 = move_forward, 2 = turn_left,
  3 = turn_right (MiniWorld's own step sizes: about 0.15 m and 15 degrees);
* observations (channel-first, S = ``cfg.image_size``, rendered at S x S): ``"rgb"`` uint8 [3, S, S];
  ``"depth"`` float32 [1, S, S] = MiniWorld's z-depth in metres from the same render, clipped to
  :data:`MAX_DEPTH_M` = 10 m and divided by it (Habitat's normalisation); ``"pointgoal"`` float32 [2] =
  [distance to the goal's centre in m, angle to it in radians, positive to the agent's left] (Habitat's
  ``pointgoal_with_gps_compass`` convention);
* success iff ``stop`` is called while MiniWorld's ``near(goal)`` holds (its own "reached" test: the two radii
  plus 1.1 forward steps); reward = -0.01 + decrease of the distance + 2.5 on success; SPL = success * d0 /
  max(d0, path length) with straight-line distances (MiniWorld has no geodesic distance; in multi-room layouts
  d0 under-estimates the shortest path, so SPL is optimistic there);
* ``terminated`` on stop; ``truncated`` at ``cfg.max_episode_steps`` (or the MiniWorld task's own limit). The
  underlying env's own "box reached" termination and reward are not used.
* Episode-end info: ``"success"``, ``"episode_return"``, ``"extra"`` = ``{"spl", "distance_to_goal"}``.

Seeding: ``make(cfg, seed)`` / ``reset(seed=s)`` seed MiniWorld's world generator; later resets continue it.

Rendering: ``render()`` draws, for a person, the agent's view and a top view of the world (agent and goal
visible) side by side, each :data:`RENDER_SIZE` square, in a frame buffer of its own (two extra renders per
call, none when render() is not called; the observations are unchanged).

Usage::

    env = make(EnvConfig(name="MiniWorld-OneRoom-v0", image_size=64), seed=0)
    obs, _ = env.reset()                      # obs["rgb"]: uint8 [3, 64, 64]
    obs, reward, terminated, truncated, info = env.step(1)
    frame = env.render()                      # uint8 [256, 512, 3]: agent view | top view
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import gymnasium as gym
import numpy as np

from distrl.config import EnvConfig
from distrl.envs.base import EnvSpec
from distrl.envs.habitat import ACTIONS, STOP, observation_keys, pointnav_obs_specs

#: Depth is clipped here and divided by it (Habitat's max_depth with normalize_depth=True).
MAX_DEPTH_M = 10.0
SLACK_REWARD = -0.01
SUCCESS_REWARD = 2.5
#: Side in pixels of each of the two views that ``render()`` puts side by side.
RENDER_SIZE = 256
# MiniWorld's near/far clip planes for the agent camera (MiniWorldEnv.render_obs / render_depth).
_Z_NEAR, _Z_FAR = 0.04, 100.0

INSTALL_HINT = (
    "MiniWorld envs need miniworld and pyglet<2 (pip install 'distrl[miniworld]') and, to render headless, "
    "EGL + Mesa: apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri"
)


def import_miniworld() -> Any:
    """Import miniworld with pyglet in headless (EGL) mode.

    Raises ImportError (packages missing) or RuntimeError (no OpenGL context: EGL/Mesa missing), both with the
    install steps. miniworld opens its GL context at import time, so it must be imported through this function
    (or with ``PYGLET_HEADLESS=true`` set) before anything imports it without the headless option.
    """
    os.environ.setdefault("PYGLET_HEADLESS", "true")
    try:
        import pyglet

        pyglet.options["headless"] = True
        import miniworld
    except ImportError as e:
        raise ImportError(f"{e}\n{INSTALL_HINT}") from e
    except Exception as e:  # pyglet's own exception types (no display / no EGL) surface at import
        raise RuntimeError(
            f"MiniWorld could not create an OpenGL context ({type(e).__name__}: {e}). {INSTALL_HINT}"
        ) from e
    return miniworld


class MiniWorldPointNavEnv(gym.Env):
    """STAND-IN for Habitat PointNav on a MiniWorld task (module docstring: task, keys and semantics).

    Usage::

        env = MiniWorldPointNavEnv(EnvConfig(name="MiniWorld-FourRooms-v0", image_size=64), seed=3)
        obs, _ = env.reset()
        obs, reward, terminated, truncated, info = env.step(2)      # turn_left
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"]}

    def __init__(self, cfg: EnvConfig, seed: int = 0) -> None:
        if cfg.image_size < 1:
            raise ValueError(f"env.image_size must be >= 1, got {cfg.image_size}")
        if cfg.max_episode_steps < 0:
            raise ValueError(f"env.max_episode_steps must be >= 0, got {cfg.max_episode_steps}")
        self.cfg = cfg
        self.keys = observation_keys(cfg)
        import_miniworld()
        if cfg.name not in gym.registry:
            known = sorted(k for k in gym.registry if k.startswith("MiniWorld-"))
            raise ValueError(f"env.name {cfg.name!r} is not a registered MiniWorld env; known: {known}")
        size = cfg.image_size
        try:
            self.env = gym.make(
                cfg.name,
                obs_width=size,
                obs_height=size,
                window_width=size,
                window_height=size,
                disable_env_checker=True,
            ).unwrapped
        except Exception as e:  # pyglet raises its own exception types when no GL context can be made
            if "pyglet" in type(e).__module__:
                raise RuntimeError(
                    f"MiniWorld could not create an OpenGL context ({e}). {INSTALL_HINT}"
                ) from e
            raise
        if getattr(self.env, "box", None) is None:
            raise ValueError(
                f"{cfg.name}: the PointNav stand-in needs a task with one goal entity (env.box); "
                "use e.g. MiniWorld-OneRoom-v0, -FourRooms-v0, -Maze*-v0, -Hallway-v0, -TMaze*-v0"
            )
        self._mw = self.env.actions
        self._to_miniworld = {
            1: int(self._mw.move_forward),
            2: int(self._mw.turn_left),
            3: int(self._mw.turn_right),
        }
        self.max_steps = cfg.max_episode_steps or int(self.env.max_episode_steps)
        self.observation_space = gym.spaces.Dict(
            {
                k: gym.spaces.Box(
                    *{"rgb": (0, 255), "depth": (0.0, 1.0), "pointgoal": (-np.inf, np.inf)}[k],
                    s.shape,
                    s.dtype,
                )
                for k, s in pointnav_obs_specs(self.keys, size).items()
            }
        )
        self.action_space = gym.spaces.Discrete(len(ACTIONS))
        self._pending_seed: int | None = int(seed)
        self._need_reset = True
        self._reset_done = False
        self._render_fb: Any = None
        self.copy_obs = True
        """False: observations are views of buffers the next step()/reset() overwrites (distrl.envs.base)."""

    # -- geometry
    # ------------------------------------------------------------------------------------------------

    def _goal(self) -> tuple[float, float]:
        """(distance in m, angle in rad, positive to the left) from the agent to the goal, on the floor."""
        a, g = self.env.agent, self.env.box
        dx, dz = float(g.pos[0] - a.pos[0]), float(g.pos[2] - a.pos[2])
        # MiniWorld's heading: dir_vec = (cos dir, 0, -sin dir), i.e. counter-clockwise from above in (x, -z).
        angle = math.atan2(-dz, dx) - float(a.dir)
        return math.hypot(dx, dz), (angle + math.pi) % (2 * math.pi) - math.pi

    def _observe(self, rgb_hwc: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if "rgb" in self.keys:
            out["rgb"] = np.ascontiguousarray(rgb_hwc.transpose(2, 0, 1))
        if "depth" in self.keys:
            # The depth buffer of the render that produced rgb_hwc: no second render.
            depth = self.env.obs_fb.get_depth_map(_Z_NEAR, _Z_FAR)
            np.clip(depth, 0.0, MAX_DEPTH_M, out=depth)
            out["depth"] = np.ascontiguousarray((depth / MAX_DEPTH_M).transpose(2, 0, 1), dtype=np.float32)
        if "pointgoal" in self.keys:
            out["pointgoal"] = np.array(self._goal(), dtype=np.float32)
        return out

    def _out(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The last observation is kept (a STOP returns it again): copied unless the caller took over
        # (``copy_obs``, see distrl.envs.base).
        return {k: v.copy() for k, v in obs.items()} if self.copy_obs else dict(obs)

    # -- gymnasium API
    # -------------------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is not None:
            self._pending_seed = int(seed)
        rgb, _ = self.env.reset(seed=self._pending_seed)
        self._pending_seed = None
        self._steps = 0
        self._return = 0.0
        self._path = 0.0
        self._d0 = self._prev_d = self._goal()[0]
        self._last = self._observe(rgb)
        self._need_reset = False
        self._reset_done = True
        return self._out(self._last), {}

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._need_reset:
            raise RuntimeError(f"{self.cfg.name}: step() called before reset() or after the episode ended")
        if not 0 <= action < len(ACTIONS):
            raise ValueError(f"{self.cfg.name}: action {action} out of range [0, {len(ACTIONS)}) = {ACTIONS}")
        self._steps += 1
        success = 0.0
        if action == STOP:
            success = float(bool(self.env.near(self.env.box)))
            obs = self._last
        else:
            before = np.array(self.env.agent.pos, dtype=np.float64)
            rgb, *_ = self.env.step(self._to_miniworld[int(action)])
            self._path += float(np.linalg.norm(np.asarray(self.env.agent.pos) - before))
            obs = self._last = self._observe(rgb)
        d = self._goal()[0]
        reward = SLACK_REWARD + (self._prev_d - d) + SUCCESS_REWARD * success
        self._prev_d = d
        self._return += reward
        terminated = action == STOP
        truncated = not terminated and self._steps >= self.max_steps
        info: dict[str, Any] = {}
        if terminated or truncated:
            spl = success * self._d0 / max(self._d0, self._path)
            info = {
                "success": success,
                "episode_return": self._return,
                "extra": {"spl": spl, "distance_to_goal": d},
            }
            self._need_reset = True
        if self.cfg.reward_free:
            reward = 0.0
        return self._out(obs), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """RGB uint8 ``[RENDER_SIZE, 2 * RENDER_SIZE, 3]``: the agent's view (left) and a top view with the
        agent and the goal (right) of the current state, rendered at a watchable size."""
        if not self._reset_done:
            raise RuntimeError(f"{self.cfg.name}: render() called before reset()")
        if self._render_fb is None:
            from miniworld.opengl import FrameBuffer

            self._render_fb = FrameBuffer(RENDER_SIZE, RENDER_SIZE, 4)
        agent = np.array(self.env.render_obs(self._render_fb), dtype=np.uint8)  # copies: the fb is reused
        top = np.array(self.env.render_top_view(self._render_fb), dtype=np.uint8)
        return np.concatenate([agent, top], axis=1)

    def close(self) -> None:
        self.env.close()


def spec(cfg: EnvConfig) -> EnvSpec:
    """PointNav EnvSpec (same keys, shapes and 4 actions as the Habitat adapter).

    It imports nothing from MiniWorld, so a learner process can build its model without an OpenGL context;
    the id is checked against MiniWorld's registry when an env is made.
    """
    if not re.fullmatch(r"MiniWorld-[A-Za-z0-9]+-v\d+", cfg.name):
        raise ValueError(f"env.name {cfg.name!r}: MiniWorld ids look like 'MiniWorld-OneRoom-v0'")
    return EnvSpec(
        name=cfg.name,
        obs=pointnav_obs_specs(observation_keys(cfg), cfg.image_size),
        num_actions=len(ACTIONS),
        family="miniworld",
    )


def make(cfg: EnvConfig, seed: int, render: bool = False) -> MiniWorldPointNavEnv:
    """A MiniWorld PointNav stand-in env seeded with ``seed``. ``render`` is accepted for the registry's
    signature: ``render()`` always works (its frame buffer is made at the first call)."""
    return MiniWorldPointNavEnv(cfg, seed)
