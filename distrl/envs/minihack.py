"""MiniHack (``MiniHack-*`` ids) with dict observations, terminated vs truncated kept apart, and seeded
levels.

Observation keys are any that MiniHack accepts (``cfg.observation_keys``); the default is
:data:`DEFAULT_OBSERVATION_KEYS` = ``("glyphs", "glyphs_crop", "blstats", "message")``, what the NetHack
baseline / E3B encoder reads: the full 21x79 glyph map, the egocentric ``crop_size`` x ``crop_size`` glyph
crop around the agent (MiniHack computes it, so models need no crop module), the bottom-line stats and the
message bytes (used by message-based novelty bonuses). ``chars``, ``colors``, ``specials`` and their
``*_crop`` versions can be added. Shapes and dtypes are MiniHack's: glyphs int16 [21, 79], *_crop [crop,
crop], blstats int64 [27], message uint8 [256], chars/colors/specials uint8 [21, 79].

Episode ends: NetHack's own end status decides. ``TASK_SUCCESSFUL`` and ``DEATH`` give ``terminated=True``;
the step limit (``ABORTED``: MiniHack's per-task limit, or ``cfg.max_episode_steps`` when > 0) gives
``truncated=True``. (NLE's own ``truncated`` flag is computed before its step counter moves and is off by one
step, so it is not used.) The final info carries ``"success"`` (1.0 iff the task was solved) and
``"episode_return"`` (the raw extrinsic return, also when ``cfg.reward_free`` zeroes the reward).

Seeding: NetHack keeps the seeds set by ``set_initial_seeds`` for *every* later reset (one level forever), so
the adapter draws fresh (core, disp) seeds for each episode from its own generator, seeded by ``make(cfg,
seed)`` or ``reset(seed=...)``: one seed fixes the whole stream of levels. MiniGrid-based tasks (MultiRoom,
...) also seed their MiniGrid layout generator the same way. With ``env.num_levels = k > 0`` each episode
instead plays one of k fixed levels (:func:`fixed_levels`, from ``env.seed`` alone, shared by every env),
drawn by that generator.

Crops of the map layers (``glyphs_crop`` etc.) are cut by the adapter from a preallocated padded buffer instead
of MiniHack's per-step ``np.pad`` (1.3-1.4x faster steps, identical numbers). MiniHack has NLE fill and copy all
16 NLE buffers on every step, whatever keys are asked for; the largest by far, ``screen_descriptions`` [21, 79,
80] (132 KiB: a text description of every map cell), is skipped by :func:`_skip_screen_descriptions` when
nothing can read it (not asked for, no reward manager, no wiki): ~1.4x cheaper steps with 16 envs per process
and identical episodes (tests).

Levels that a task generates at each reset (MiniGrid-based tasks such as MultiRoom, and Boxoban) are compiled
by :class:`_LevelPatcher` instead of MiniHack's bash script: the same ``nhdat``, two child processes
(``lev_comp``, ``dlb``) instead of six. A MultiRoom-N4 reset drops from ~20 ms to ~12 ms of wall time.

Rendering (``make(cfg, seed, render=True)``, then ``env.render()``): the 24 x 80 NetHack terminal
(``tty_chars`` in their ``tty_colors``, NetHack's 16-colour palette on black) drawn with Pillow's bitmap font,
whatever the observation keys are: with ``render=True`` the adapter also asks NLE for the two ``tty_*`` keys,
which the agent does not see.

Cost: ``tools/dev/minihack_step.py`` compares this adapter with MiniHack's own observation path (BENCHMARKS.md).

Usage::

    env = make(EnvConfig(name="MiniHack-Room-5x5-v0"), seed=0)
    obs, info = env.reset()                  # obs["glyphs_crop"]: int16 [9, 9]
    obs, reward, terminated, truncated, info = env.step(0)
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from distrl.config import EnvConfig
from distrl.envs.base import ArraySpec, EnvSpec

DEFAULT_OBSERVATION_KEYS: tuple[str, ...] = ("glyphs", "glyphs_crop", "blstats", "message")

# nle.env.base.NLE.StepStatus values (kept here so the adapter's logic does not depend on an import).
_ABORTED = -1
_TASK_SUCCESSFUL = 2


def _import_minihack() -> Any:
    """Import minihack (registers the MiniHack-* ids), hiding its pkg_resources deprecation warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*pkg_resources is deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            import minihack
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError(
                "MiniHack envs need minihack and nle: pip install 'distrl[minihack]' "
                "(nle builds NetHack from source: it needs cmake, flex, bison and libbz2-dev)"
            ) from e
    return minihack


def observation_keys(cfg: EnvConfig) -> tuple[str, ...]:
    return tuple(cfg.observation_keys) or DEFAULT_OBSERVATION_KEYS


_OWN_CROPS = ("glyphs", "chars", "colors", "specials")
"""Map layers whose ``*_crop`` the adapter cuts itself (``tty_*_crop`` stay MiniHack's). MiniHack pads the
whole 21x79 map with ``np.pad`` on every step to cut each crop, which costs more CPU than NetHack's own step;
the adapter writes the map into a preallocated padded buffer instead and slices it (same numbers: tested
against MiniHack's ``_crop_observation``)."""


def _own_crop_source(key: str) -> str | None:
    if key.endswith("_crop") and key[: -len("_crop")] in _OWN_CROPS:
        return key[: -len("_crop")]
    return None


def _library_keys(keys: tuple[str, ...]) -> tuple[str, ...]:
    """The keys to ask MiniHack for: the adapter's own crops are replaced by their map layer and blstats
    (which holds the agent's position)."""
    out: list[str] = []
    for k in keys:
        src = _own_crop_source(k)
        for need in (src, "blstats") if src is not None else (k,):
            if need not in out:
                out.append(need)
    return tuple(out)


def _with(keys: tuple[str, ...], extra: tuple[str, ...]) -> tuple[str, ...]:
    return keys + tuple(k for k in extra if k not in keys)


#: NLE keys that :meth:`MiniHackEnv.render` draws (the 24 x 80 terminal: characters and their colours).
RENDER_KEYS: tuple[str, ...] = ("tty_chars", "tty_colors")


class _Crop:
    """``crop_size`` x ``crop_size`` window of one map layer centred on the agent, padded with ``pad``."""

    def __init__(self, source: str, shape: tuple[int, int], dtype: np.dtype, crop_size: int, pad: int) -> None:
        self.source = source
        self.size = crop_size
        d = crop_size // 2
        self.d = d
        self.h, self.w = shape
        self.buf = np.full((self.h + 2 * d, self.w + 2 * d), pad, dtype=dtype)

    def __call__(self, layer: np.ndarray, x: int, y: int) -> np.ndarray:
        """The crop as a view of this object's buffer (valid until the next call)."""
        d = self.d
        self.buf[d: d + self.h, d: d + self.w] = layer
        return self.buf[y: y + self.size, x: x + self.size]


def _check_cfg(cfg: EnvConfig) -> None:
    problems = []
    if cfg.crop_size < 1 or cfg.crop_size % 2 == 0:
        problems.append(
            f"env.crop_size must be a positive odd number (the agent sits in the middle), got {cfg.crop_size}"
        )
    if cfg.max_episode_steps < 0:
        problems.append(f"env.max_episode_steps must be >= 0, got {cfg.max_episode_steps}")
    if cfg.num_levels < 0:
        problems.append(f"env.num_levels must be >= 0 (0 = a new level every episode), got {cfg.num_levels}")
    keys = observation_keys(cfg)
    if len(set(keys)) != len(keys):
        problems.append(f"env.observation_keys has duplicates: {keys}")
    if problems:
        raise ValueError(f"invalid MiniHack config for {cfg.name!r}: " + "; ".join(problems))


def _build(cfg: EnvConfig, extra_keys: tuple[str, ...] = ()) -> Any:
    """The raw MiniHack env (no gymnasium wrappers) for cfg, or ValueError naming a bad id or key.
    ``extra_keys``: NLE keys asked for besides the observation's (e.g. the terminal, for ``render()``)."""
    _import_minihack()
    if cfg.name not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("MiniHack-"))
        raise ValueError(
            f"env.name {cfg.name!r} is not a registered MiniHack env; known ids include "
            f"{known[:8]} ... ({len(known)} in all)"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # MiniGrid's "out of date" notices
        try:
            env = gym.make(
                cfg.name,
                observation_keys=_with(_library_keys(observation_keys(cfg)), extra_keys),
                obs_crop_h=cfg.crop_size,
                obs_crop_w=cfg.crop_size,
                disable_env_checker=True,
            ).unwrapped
        except ValueError as e:
            raise ValueError(f"env {cfg.name!r} with observation_keys={observation_keys(cfg)}: {e}") from e
    if cfg.max_episode_steps > 0:
        # Passing max_episode_steps to gym.make would add a gymnasium TimeLimit instead of reaching NLE; NLE
        # reads this attribute in its abort check, so the limit ends the game the NetHack way (end status
        # ABORTED).
        env._max_episode_steps = cfg.max_episode_steps
    return env


class _LevelPatcher:
    """Compiles a level into an env's ``nhdat`` the way MiniHack's ``mh_patch_nhdat.sh`` does, without bash.

    MiniGrid-based tasks (MultiRoom, ...) and Boxoban generate a new level description at every reset, and
    MiniHack compiles it by running a bash script that spawns six processes (bash, cp, lev_comp, rm, dlb, mv):
    ~15 ms of a MultiRoom-N4 reset. This does the file steps in Python and runs only ``lev_comp`` and ``dlb``
    (~3.5 ms), producing a byte-identical ``nhdat`` (tests compare the two). A failing compile raises instead of
    being ignored as the script's return code is. Installed per env instance by :func:`_install_level_patcher`.
    """

    def __init__(self, vardir: str, hackdir: str, lib_dir: str, dat_dir: str) -> None:
        self.vardir = vardir
        self.lib = os.path.join(vardir, "lib")
        self.lib_src = lib_dir
        self.dat_dir = dat_dir
        self.lev_comp = os.path.join(hackdir, "lev_comp")
        self.dlb = os.path.join(hackdir, "dlb")

    def __call__(self, des_file: str) -> None:
        if not os.path.isdir(self.lib):
            shutil.copytree(self.lib_src, self.lib)
        target = os.path.join(self.lib, "mylevel.des")
        if des_file.endswith(".des"):  # a file name: as given, else one of MiniHack's own
            path = os.path.abspath(des_file)
            if not os.path.exists(path):
                path = os.path.abspath(os.path.join(self.dat_dir, des_file))
            if not os.path.exists(path):
                raise FileNotFoundError(f"MiniHack level file {des_file!r} not found (nor in {self.dat_dir})")
            shutil.copyfile(path, target)
        else:  # the description itself
            with open(target, "w") as f:
                f.write(des_file)
        try:
            self._run([self.lev_comp, "mylevel.des"], "compile the level description")
        finally:
            os.remove(target)
        files = sorted(f for f in os.listdir(self.lib) if not f.startswith("."))
        self._run([self.dlb, "cf", "nhdat", *files], "pack nhdat")
        os.replace(os.path.join(self.lib, "nhdat"), os.path.join(self.vardir, "nhdat"))

    def _run(self, cmd: list[str], what: str) -> None:
        res = subprocess.run(cmd, cwd=self.lib, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if res.returncode != 0:
            out = res.stdout.decode(errors="replace").strip()
            raise RuntimeError(f"MiniHack: could not {what} ({os.path.basename(cmd[0])} exit {res.returncode}): {out}")


def _install_level_patcher(env: Any) -> bool:
    """Route ``env``'s level compiles (``update(des)``) through :class:`_LevelPatcher`; False (and the library's
    own script stays in use) when this MiniHack does not look like the one the patcher mirrors."""
    import minihack.base as mb

    vardir = getattr(getattr(env, "nethack", None), "_vardir", None)
    names = ("HACKDIR", "LIB_DIR", "PATH_DAT_DIR")
    if not (callable(getattr(env, "_patch_nhdat", None)) and vardir and all(hasattr(mb, n) for n in names)):
        return False
    if not all(os.access(os.path.join(mb.HACKDIR, exe), os.X_OK) for exe in ("lev_comp", "dlb")):
        return False
    env._patch_nhdat = _LevelPatcher(str(vardir), mb.HACKDIR, mb.LIB_DIR, mb.PATH_DAT_DIR)
    return True


_SCREEN_DESCRIPTIONS = "screen_descriptions"


def _skip_screen_descriptions(env: Any, keys: tuple[str, ...]) -> bool:
    """Stop NetHack from filling, and NLE from copying, the ``screen_descriptions`` buffer of ``env`` when
    nothing can read it. Returns whether it did.

    NLE fills every buffer it was given on every step (a description string for each of the 21x79 map cells)
    and copies all of them again into ``last_observation``; MiniHack asks NLE for all 16 whatever keys the user
    wants. Only MiniHack's reward-manager events (``screen_contains``) and its wiki helpers read the
    descriptions, so with ``screen_descriptions(_crop)`` not among ``keys``, no reward manager and no wiki,
    NetHack gets every buffer but that one, and NLE's observation tuple holds an empty array in its place:
    anything that still indexed it would raise, not read stale data. Skipped (False) when this NLE does not
    look like the one this mirrors (``Nethack._obs_buffers``, ``_obs``, ``_pynethack.set_buffers``)."""
    if any(k.startswith(_SCREEN_DESCRIPTIONS) for k in keys):
        return False
    if getattr(env, "reward_manager", None) is not None or getattr(env, "use_wiki", False):
        return False
    nh = getattr(env, "nethack", None)
    bufs = getattr(nh, "_obs_buffers", None)
    obs = getattr(nh, "_obs", None)
    set_buffers = getattr(getattr(nh, "_pynethack", None), "set_buffers", None)
    if not (isinstance(bufs, dict) and _SCREEN_DESCRIPTIONS in bufs and callable(set_buffers)):
        return False
    if not (isinstance(obs, tuple) and len(obs) == len(bufs) and all(a is b for a, b in zip(obs, bufs.values()))):
        return False
    set_buffers(**{k: v for k, v in bufs.items() if k != _SCREEN_DESCRIPTIONS})
    empty = np.zeros((0,), dtype=bufs[_SCREEN_DESCRIPTIONS].dtype)
    nh._obs = tuple(empty if k == _SCREEN_DESCRIPTIONS else v for k, v in bufs.items())
    return True


class MiniHackEnv(gym.Env):
    """One MiniHack task with the distrl single-env API (see the module docstring for keys and semantics).

    ``render=True`` also asks NLE for the terminal (``tty_chars``, ``tty_colors``: two more references per
    step, the observations are unchanged) so that :meth:`render` can draw it.

    Usage::

        env = MiniHackEnv(EnvConfig(name="MiniHack-MultiRoom-N4-v0"), seed=1, render=True)
        obs, _ = env.reset()
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        frame = env.render()        # uint8 [528, 960, 3]: the terminal, as a player sees it
        if terminated or truncated:
            print(info["success"], info["episode_return"])
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"]}

    def __init__(self, cfg: EnvConfig, seed: int = 0, render: bool = False) -> None:
        _check_cfg(cfg)
        self.cfg = cfg
        self.renders = bool(render)
        self.render_scale = 2
        """Pixels per font pixel in :meth:`render` (the font cell is 6 x 11)."""
        self.env = _build(cfg, RENDER_KEYS if self.renders else ())
        self._raw: dict[str, np.ndarray] | None = None
        self.fast_level_patch = _install_level_patcher(self.env)
        self.keys = observation_keys(cfg)
        self.skips_screen_descriptions = _skip_screen_descriptions(self.env, self.keys)
        self._crops: dict[str, _Crop] = {}
        for k in self.keys:
            src = _own_crop_source(k)
            if src is not None:
                space = self.env.observation_space[src]
                pad = int(getattr(self.env, "obs_crop_pad", 0))
                self._crops[k] = _Crop(src, tuple(space.shape), space.dtype, cfg.crop_size, pad)
        self.observation_space = gym.spaces.Dict({k: _space(self.env, k, cfg.crop_size) for k in self.keys})
        self.action_space = gym.spaces.Discrete(int(self.env.action_space.n))
        self._levels = fixed_levels(cfg)
        self._seed(seed)
        self._return = 0.0
        self._need_reset = True
        self.copy_obs = True
        """False: observations are views of buffers the next step()/reset() overwrites (distrl.envs.base)."""

    def _seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
        minigrid = getattr(self.env, "minigrid_env", None)
        if minigrid is not None:
            # MiniGrid-based tasks draw each layout from this env's RNG (reset() without a seed continues it).
            minigrid.reset(seed=int(self._rng.integers(2**31 - 1)))

    def _obs(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # NLE hands out views of buffers it overwrites on the next step, and the crops are views of this
        # adapter's padded buffers: copied unless the caller took over (``copy_obs``, see distrl.envs.base).
        if not self._crops:
            out = {k: raw[k] for k in self.keys}
        else:
            x, y = int(raw["blstats"][0]), int(raw["blstats"][1])
            out = {}
            for k in self.keys:
                crop = self._crops.get(k)
                out[k] = raw[k] if crop is None else crop(raw[crop.source], x, y)
        if self.copy_obs:
            return {k: v.copy() for k, v in out.items()}
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if seed is not None:
            self._seed(seed)
        if self._levels:
            core, disp, layout = self._levels[int(self._rng.integers(len(self._levels)))]
            minigrid = getattr(self.env, "minigrid_env", None)
            if minigrid is not None:  # its next reset (inside MiniHack's) draws this level's layout
                minigrid.reset(seed=layout)
        else:
            core, disp = (int(s) for s in self._rng.integers(1, 2**62, size=2))
        self.env.nethack.set_initial_seeds(core, disp, False)
        raw, _ = self.env.reset()
        self._raw = raw
        self._return = 0.0
        self._need_reset = False
        return self._obs(raw), {}

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._need_reset:
            raise RuntimeError(f"{self.cfg.name}: step() called before reset() or after the episode ended")
        if not 0 <= action < self.action_space.n:
            raise ValueError(f"{self.cfg.name}: action {action} out of range [0, {self.action_space.n})")
        raw, reward, done, _nle_truncated, nle_info = self.env.step(int(action))
        self._raw = raw
        status = int(nle_info["end_status"])
        self._return += float(reward)
        terminated = bool(done) and status != _ABORTED
        truncated = bool(done) and status == _ABORTED
        info: dict[str, Any] = {}
        if done:
            info = {
                "success": float(status == _TASK_SUCCESSFUL),
                "episode_return": self._return,
                "end_status": status,
            }
            self._need_reset = True
        if self.cfg.reward_free:
            reward = 0.0
        return self._obs(raw), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """The current terminal as RGB uint8 ``[24 * 11 * s, 80 * 6 * s, 3]`` (s = ``render_scale``, 2:
        [528, 960, 3]): NetHack's characters in their 16 colours on black, drawn with Pillow's bitmap font.
        Needs the env made with ``render=True``."""
        from distrl.envs.video import draw_text

        if not self.renders:
            raise RuntimeError(
                f"{self.cfg.name}: render() needs the env made with render=True "
                "(make_env(cfg, seed, render=True)), which asks NLE for the terminal"
            )
        if self._raw is None:
            raise RuntimeError(f"{self.cfg.name}: render() called before reset()")
        return draw_text(self._raw["tty_chars"], self._raw["tty_colors"], scale=self.render_scale)

    def close(self) -> None:
        self.env.close()


def _space(env: Any, key: str, crop_size: int) -> gym.spaces.Box:
    """The observation space of ``key``: MiniHack's, or for the adapter's own crops the map layer's value
    range on a [crop_size, crop_size] window."""
    src = _own_crop_source(key)
    if src is None:
        return env.observation_space[key]
    layer = env.observation_space[src]
    return gym.spaces.Box(
        low=layer.low.min(), high=layer.high.max(), shape=(crop_size, crop_size), dtype=layer.dtype
    )


@functools.lru_cache(maxsize=32)
def _spec_cached(name: str, keys: tuple[str, ...], crop_size: int) -> EnvSpec:
    cfg = EnvConfig(name=name, observation_keys=keys, crop_size=crop_size)
    env = _build(cfg)
    try:
        spaces = {k: _space(env, k, crop_size) for k in observation_keys(cfg)}
        obs = {k: ArraySpec(tuple(sp.shape), np.dtype(sp.dtype)) for k, sp in spaces.items()}
        return EnvSpec(name=cfg.name, obs=obs, num_actions=int(env.action_space.n), family="minihack")
    finally:
        env.close()


def spec(cfg: EnvConfig) -> EnvSpec:
    """EnvSpec for a MiniHack id (builds the env once per distinct config and caches the result)."""
    _check_cfg(cfg)
    return _spec_cached(cfg.name, observation_keys(cfg), cfg.crop_size)


def fixed_levels(cfg: EnvConfig) -> list[tuple[int, int, int]]:
    """The ``env.num_levels`` fixed levels as (NetHack core seed, disp seed, MiniGrid layout seed), from
    ``env.seed`` alone (empty for 0: a new level every episode)."""
    if cfg.num_levels <= 0:
        return []
    ss = np.random.SeedSequence(entropy=int(cfg.seed), spawn_key=(0x1E7E15,))
    raw = ss.generate_state(3 * cfg.num_levels, dtype=np.uint64).reshape(-1, 3)
    return [(int(a % (2**62 - 1)) + 1, int(b % (2**62 - 1)) + 1, int(c % (2**31 - 1))) for a, b, c in raw]


def make(cfg: EnvConfig, seed: int, render: bool = False) -> MiniHackEnv:
    """A MiniHack env whose stream of levels is fixed by ``seed``; ``render=True`` enables ``render()``."""
    return MiniHackEnv(cfg, seed, render=render)
