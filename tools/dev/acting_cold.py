"""What acting costs between env steps (cold caches) vs alone (warm), in one process: single ops, then the
small model's whole ``act`` through PyTorch (``Agent.act``) and through NumPy (``NumpyPolicy``).

An env actor alternates B env steps with one batched ``act``; the env steps (NetHack, ALE) evict the policy's
code and data from the CPU's caches, so each op pays more than a microbenchmark shows. This measures by how
much, for the reason behind ``actor.inference`` (``distrl/models/numpy_act.py``).

* ``{"bench": "acting_cold_op", ...}``: for each probe (a few PyTorch and NumPy ops at acting sizes), the median
  wall µs of one call made right after B env steps (random actions, ``--reps`` times, probes interleaved), and
  the mean µs of a warm loop.
* ``{"bench": "acting_cold_act", ...}``: the small model of the env family (the ``model`` section of
  ``configs/minihack_small.yaml`` or ``configs/pong_small.yaml``, as ``tools/bench/actors.py``'s
  ``neural_small``) acting on the B envs' real observations in a stepping loop, ``torch`` and ``numpy`` paths
  alternating in blocks of ``--block`` steps: mean µs per ``act`` call in the loop and warm, and the share of
  the loop's time that stepping takes (the ratio a CPU-bound actor would reach with nothing else to do).

NumPy's OpenBLAS is capped at one thread, as env actors do. Usage::

    .venv/bin/python tools/dev/acting_cold.py                               # MiniHack-Room-5x5, B = 16
    .venv/bin/python tools/dev/acting_cold.py --env MiniHack-MultiRoom-N4-v0 --num-envs 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distrl.actors.env_actor import limit_numpy_blas_threads
from distrl.config import EnvConfig, ModelConfig, load_config
from distrl.envs.registry import env_spec, family_of, make_env
from distrl.models.agent import build_agent
from distrl.models.numpy_act import NumpyPolicy, numpy_unsupported

# The small model of each env family: the ``model`` section of these configs (repo root relative).
SMALL_CONFIGS = {"minihack": "configs/minihack_small.yaml", "atari": "configs/pong_small.yaml"}


def small_model(env: str) -> ModelConfig:
    """The env family's small model, read from its config in this checkout."""
    return load_config(Path(__file__).resolve().parents[2] / SMALL_CONFIGS[family_of(env)[1]]).model


def non_defaults(model: ModelConfig) -> dict[str, Any]:
    """The fields of ``model`` that differ from ``ModelConfig()`` (what a result row names)."""
    default = ModelConfig()
    return {f.name: getattr(model, f.name) for f in fields(model) if getattr(model, f.name) != getattr(default, f.name)}


class Envs:
    """B envs stepped with random actions (or given ones), autoreset; ``obs`` is the stacked batch."""

    def __init__(self, name: str, b: int, seed: int = 0) -> None:
        cfg = EnvConfig(name=name, num_envs=b)
        self.spec = env_spec(cfg)
        self.envs = [make_env(cfg, seed + i) for i in range(b)]
        self.last = [e.reset()[0] for e in self.envs]
        self.rng = np.random.default_rng(seed)
        self.b = b

    @property
    def obs(self) -> dict[str, np.ndarray]:
        return {k: np.stack([o[k] for o in self.last]) for k in self.spec.obs}

    def step(self, actions: np.ndarray | None = None) -> None:
        if actions is None:
            actions = self.rng.integers(0, self.spec.num_actions, self.b)
        for j, (env, a) in enumerate(zip(self.envs, np.asarray(actions).tolist())):
            o, _, term, trunc, _ = env.step(int(a))
            self.last[j] = env.reset()[0] if term or trunc else o


def _warm_us(fn: Callable[[], Any], n: int = 500) -> float:
    for _ in range(20):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def op_probes(envs: Envs, reps: int) -> list[dict[str, Any]]:
    b = envs.b
    x = torch.randn(b, 128)
    a, w, bias = torch.randn(b, 1296), torch.randn(128, 1296), torch.randn(128)
    an, wn, xn = a.numpy().copy(), w.t().contiguous().numpy(), x.numpy().copy()
    probes: dict[str, Callable[[], Any]] = {
        f"torch.relu [{b},128]": lambda: torch.relu(x),
        f"torch.tanh [{b},128]": lambda: torch.tanh(x),
        "torch.empty [16,8]": lambda: torch.empty(16, 8),
        f"F.linear [{b},1296]->128": lambda: F.linear(a, w, bias),
        f"np.maximum [{b},128]": lambda: np.maximum(xn, 0.0),
        f"np.tanh [{b},128]": lambda: np.tanh(xn),
        f"np.matmul [{b},1296]x[1296,128]": lambda: an @ wn,
    }
    cold: dict[str, list[float]] = {k: [] for k in probes}
    for _ in range(reps):
        for k, fn in probes.items():
            envs.step()
            t = time.perf_counter()
            fn()
            cold[k].append((time.perf_counter() - t) * 1e6)
    rows = []
    for k, fn in probes.items():
        rows.append({
            "bench": "acting_cold_op", "env": envs.spec.name, "num_envs": b, "op": k,
            "cold_us": round(statistics.median(cold[k]), 1), "warm_us": round(_warm_us(fn), 2), "reps": reps,
        })
    return rows


def act_paths(envs: Envs, model: ModelConfig, rounds: int, block: int) -> list[dict[str, Any]]:
    agent = build_agent(model, envs.spec).eval()
    paths: dict[str, Any] = {"torch": agent}
    if numpy_unsupported(agent) is None:
        paths["numpy"] = NumpyPolicy(agent, seed=0)
    state = {k: p.initial_state(envs.b) for k, p in paths.items()}
    t_act = {k: 0.0 for k in paths}
    t_env = {k: 0.0 for k in paths}
    n = {k: 0 for k in paths}
    for r in range(rounds + 1):  # round 0 warms up
        for k, pol in paths.items():
            for _ in range(block):
                t0 = time.perf_counter()
                out = pol.act(envs.obs, state[k])
                actions = out.action.numpy() if isinstance(out.action, torch.Tensor) else out.action
                t1 = time.perf_counter()
                envs.step(actions)
                t2 = time.perf_counter()
                state[k] = out.state
                if r:
                    t_act[k] += t1 - t0
                    t_env[k] += t2 - t1
                    n[k] += 1
    rows = []
    obs = envs.obs
    for k, pol in paths.items():
        s = pol.initial_state(envs.b)
        loop_us = t_act[k] / n[k] * 1e6
        rows.append({
            "bench": "acting_cold_act", "env": envs.spec.name, "num_envs": envs.b, "path": k,
            "model": non_defaults(model),
            "act_us_in_loop": round(loop_us, 1),
            "act_us_warm": round(_warm_us(lambda p=pol, s=s: p.act(obs, s), 300), 1),
            "env_us_per_batch": round(t_env[k] / n[k] * 1e6, 1),
            "env_share_of_loop": round(t_env[k] / (t_env[k] + t_act[k]), 3), "calls": n[k],
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="MiniHack-Room-5x5-v0")
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--reps", type=int, default=200, help="cold calls per op probe")
    ap.add_argument("--rounds", type=int, default=10, help="alternating blocks per acting path")
    ap.add_argument("--block", type=int, default=50, help="steps per block")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    limit_numpy_blas_threads(1)
    envs = Envs(args.env, args.num_envs)
    for row in op_probes(envs, args.reps):
        print(json.dumps(row), flush=True)
    for row in act_paths(envs, small_model(args.env), args.rounds, args.block):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
