"""MiniHack step cost: distrl's adapter vs the same env stepped the way MiniHack serves it (one JSON line per env).

``adapter``: :func:`distrl.envs.minihack.make` with the default observation keys (glyphs, glyphs_crop,
blstats, message): the adapter asks MiniHack for the map layers only and cuts the crop itself, compiles
generated levels without MiniHack's bash script (:class:`distrl.envs.minihack._LevelPatcher`), and has NetHack
skip the screen descriptions nothing reads (:func:`distrl.envs.minihack._skip_screen_descriptions`).
``library``: ``gym.make(id, observation_keys=<same keys>)`` so MiniHack cuts the crop (``np.pad`` per step), and
the observation is copied out of NLE's buffers exactly like the adapter does. Both step random actions and reset
at episode ends, in one process, interleaved in blocks of ``--block`` steps over ``--rounds`` rounds; the
figures are medians of CPU microseconds per step (resets included, and the CPU time of the processes a reset
spawns: MiniHack compiles the levels of MiniGrid-based tasks with ``lev_comp``), so background load mostly
cancels out; ``*_wall_us_per_step`` are the same medians in wall time.

Usage::

    .venv/bin/python tools/bench/minihack_step.py
    .venv/bin/python tools/bench/minihack_step.py --envs MiniHack-Room-5x5-v0 --rounds 40
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


def bench(name: str, rounds: int, block: int) -> dict[str, Any]:
    from distrl.config import EnvConfig
    from distrl.envs import minihack as mh

    cfg = EnvConfig(name=name)
    keys = mh.observation_keys(cfg)
    adapter = mh.make(cfg, seed=0)
    library = _library_env(name, keys, cfg.crop_size)
    n_actions = int(adapter.action_space.n)
    rng = np.random.default_rng(0)

    def run_adapter() -> None:
        for a in rng.integers(0, n_actions, block).tolist():
            _, _, term, trunc, _ = adapter.step(a)
            if term or trunc:
                adapter.reset()

    def run_library() -> None:
        for a in rng.integers(0, n_actions, block).tolist():
            obs, _, done, _, _ = library.step(a)
            {k: np.array(obs[k], copy=True) for k in keys}  # what the adapter hands out: copies
            if done:
                library.reset()

    adapter.reset()
    library.reset()
    runs = {"library": run_library, "adapter": run_adapter}
    for f in runs.values():
        f()
    us: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, f in runs.items():
            c, t = cpu_s(), time.perf_counter()
            f()
            us[k].append((cpu_s() - c) / block * 1e6)
            wall[k].append((time.perf_counter() - t) / block * 1e6)
    adapter.close()
    library.close()
    med = {k: statistics.median(v) for k, v in us.items()}
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    return {
        "bench": "minihack_step",
        "env": name,
        "keys": list(keys),
        "library_us_per_step": round(med["library"], 1),
        "adapter_us_per_step": round(med["adapter"], 1),
        "speedup": round(med["library"] / med["adapter"], 3),
        "library_wall_us_per_step": round(med_wall["library"], 1),
        "adapter_wall_us_per_step": round(med_wall["adapter"], 1),
        "wall_speedup": round(med_wall["library"] / med_wall["adapter"], 3),
        "rounds": rounds,
        "block": block,
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
    args = ap.parse_args(argv)
    for env in args.envs:
        print(json.dumps(bench(env, args.rounds, args.block)), flush=True)


if __name__ == "__main__":
    main()
