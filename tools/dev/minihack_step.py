"""MiniHack step cost: distrl's adapter vs the same env stepped the way MiniHack serves it (one JSON line per env).

``adapter``: :func:`distrl.envs.minihack.make` with the default observation keys (glyphs, glyphs_crop,
blstats, message): the adapter asks MiniHack for the map layers only and cuts the crop itself, compiles
generated levels without MiniHack's bash script (:class:`distrl.envs.minihack._LevelPatcher`), and has NetHack
skip the screen descriptions nothing reads (:func:`distrl.envs.minihack._skip_screen_descriptions`).
``library``: ``gym.make(id, observation_keys=<same keys>)`` so MiniHack cuts the crop (``np.pad`` per step), and
the observation is copied out of NLE's buffers exactly like the adapter does. ``adapter_all_buffers``: the
adapter without the screen-description skip (what it was before it), to measure that skip alone
(``skip_speedup``). Each path steps ``--num-envs`` envs round-robin (1, and 16 like an actor's batch: with many
envs the caches hold none of them, which is where the buffers NetHack fills cost most). All step random actions
and reset at episode ends, in one process, interleaved in blocks of ``--block`` steps over ``--rounds`` rounds; the
figures are medians of CPU microseconds per step (resets included, and the CPU time of the processes a reset
spawns: MiniHack compiles the levels of MiniGrid-based tasks with ``lev_comp``), so background load mostly
cancels out; ``*_wall_us_per_step`` are the same medians in wall time.

Usage::

    .venv/bin/python tools/dev/minihack_step.py
    .venv/bin/python tools/dev/minihack_step.py --envs MiniHack-Room-5x5-v0 --rounds 40 --num-envs 32
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
import warnings
from typing import Any

import numpy as np


def _library_env(name: str, keys: tuple[str, ...], crop: int) -> Any:
    import gymnasium as gym

    from distrl.envs.minihack import _import_minihack

    _import_minihack()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return gym.make(
            name, observation_keys=keys, obs_crop_h=crop, obs_crop_w=crop, disable_env_checker=True
        ).unwrapped


def bench(name: str, rounds: int, block: int, num_envs: int = 1) -> dict[str, Any]:
    from distrl.config import EnvConfig
    from distrl.envs import minihack as mh

    cfg = EnvConfig(name=name)
    keys = mh.observation_keys(cfg)
    adapter = [mh.make(cfg, seed=i) for i in range(num_envs)]
    skip = mh._skip_screen_descriptions
    mh._skip_screen_descriptions = lambda env, keys: False  # the adapter as it was before this skip
    try:
        full = [mh.make(cfg, seed=100 + i) for i in range(num_envs)]
    finally:
        mh._skip_screen_descriptions = skip
    library = [_library_env(name, keys, cfg.crop_size) for _ in range(num_envs)]
    n_actions = int(adapter[0].action_space.n)
    rng = np.random.default_rng(0)
    sweeps = max(1, block // num_envs)  # each timed block: `sweeps` rounds of one step per env

    def run_adapter(envs: list[Any]) -> None:
        for _ in range(sweeps):
            for env, a in zip(envs, rng.integers(0, n_actions, num_envs).tolist()):
                _, _, term, trunc, _ = env.step(a)
                if term or trunc:
                    env.reset()

    def run_library() -> None:
        for _ in range(sweeps):
            for env, a in zip(library, rng.integers(0, n_actions, num_envs).tolist()):
                obs, _, done, _, _ = env.step(a)
                {k: np.array(obs[k], copy=True) for k in keys}  # what the adapter hands out: copies
                if done:
                    env.reset()

    for e in adapter + full + library:
        e.reset()
    runs = {"library": run_library, "adapter": lambda: run_adapter(adapter), "full": lambda: run_adapter(full)}
    for f in runs.values():
        f()
    us: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    steps = sweeps * num_envs
    for _ in range(rounds):
        for k, f in runs.items():
            c, t = cpu_s(), time.perf_counter()
            f()
            us[k].append((cpu_s() - c) / steps * 1e6)
            wall[k].append((time.perf_counter() - t) / steps * 1e6)
    for e in adapter + full + library:
        e.close()
    med = {k: statistics.median(v) for k, v in us.items()}
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    return {
        "bench": "minihack_step",
        "env": name,
        "keys": list(keys),
        "num_envs": num_envs,
        "library_us_per_step": round(med["library"], 1),
        "adapter_us_per_step": round(med["adapter"], 1),
        "speedup": round(med["library"] / med["adapter"], 3),
        "adapter_all_buffers_us_per_step": round(med["full"], 1),
        "skip_speedup": round(med["full"] / med["adapter"], 3),
        "skips_screen_descriptions": bool(adapter[0].skips_screen_descriptions),
        "library_wall_us_per_step": round(med_wall["library"], 1),
        "adapter_wall_us_per_step": round(med_wall["adapter"], 1),
        "adapter_all_buffers_wall_us_per_step": round(med_wall["full"], 1),
        "wall_speedup": round(med_wall["library"] / med_wall["adapter"], 3),
        "rounds": rounds,
        "block": steps,
    }


def cpu_s() -> float:
    """CPU seconds of this process and of its finished child processes (user + system)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", nargs="+", default=["MiniHack-Room-5x5-v0", "MiniHack-MultiRoom-N4-v0"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--block", type=int, default=200, help="steps per timed block")
    ap.add_argument("--num-envs", type=int, nargs="+", default=[1, 16],
                    help="envs per path, stepped round-robin like an actor's (caches see all of them)")
    args = ap.parse_args(argv)
    for n in args.num_envs:
        for env in args.envs:
            print(json.dumps(bench(env, args.rounds, args.block, n)), flush=True)


if __name__ == "__main__":
    main()
