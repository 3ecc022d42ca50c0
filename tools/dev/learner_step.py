"""Where a learner update's time goes: ``Learner.step`` on a synthetic batch of any config, and the encoder's
forward and backward alone, per setting (``learner.precision``, ``learner.threads``, ...).

    .venv/bin/python tools/dev/learner_step.py                                   # configs/pong.yaml, f32 vs bf16
    .venv/bin/python tools/dev/learner_step.py --settings learner.threads=1 learner.threads=2
    .venv/bin/python tools/dev/learner_step.py --config configs/quickstart.yaml --reps 5

One process. Each setting builds the real :class:`~distrl.learners.learner.Learner` (as ``distrl train --local``
does) from ``--config`` plus the setting, and times ``--reps`` updates (after one warm-up) on one batch of
``learner.batch_size`` random sequences of the config's length (random observations of the env's spec: the cost
of a step does not depend on the values), then the encoder's forward and its backward on that batch's
observations in the dtype the setting trains in. Settings alternate each round (``--rounds``). Prints one JSON
object per setting and round (``{"bench": "learner_step", ...}``: ``step_s`` median, ``encoder_fwd_s``,
``encoder_bwd_s``) and a summary per setting (medians over rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch

from distrl.config import load_config
from distrl.envs.registry import env_spec
from distrl.learners.learner import Learner
from distrl.replay.testing import random_trajectory
from distrl.types import ReplaySample


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def build(config: str, setting: str) -> tuple[Learner, ReplaySample]:
    cfg = load_config(config, ["env.vectorization=inline", *setting.split()])
    spec = env_spec(cfg.env)
    learner = Learner(cfg, spec, device="cpu")
    B, T = cfg.learner.batch_size, cfg.sequence.total
    obs = {k: (tuple(s.shape), np.dtype(s.dtype)) for k, s in spec.obs.items() if k in learner.agent.encoder.keys}
    traj = random_trajectory(T, B, num_actions=spec.num_actions, obs=obs, core_state=learner.agent.initial_state(B))
    sample = ReplaySample(traj=traj, keys=torch.arange(B), shard_ids=torch.zeros(B, dtype=torch.int64),
                          weights=torch.ones(B), probs=torch.full((B,), 1.0 / B, dtype=torch.float64),
                          fresh=torch.ones(B, dtype=torch.bool))
    return learner, sample


def measure(learner: Learner, sample: ReplaySample, reps: int) -> dict[str, float]:
    learner.step(sample)  # warm-up: oneDNN primitives, allocator
    steps = []
    for _ in range(reps):
        t0 = time.perf_counter()
        learner.step(sample)
        steps.append(time.perf_counter() - t0)
    agent = learner.agent
    fwd, bwd = [], []
    for _ in range(reps):
        agent.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        x = agent.encode(sample.traj.obs, agent.unroll_dtype)
        t1 = time.perf_counter()
        x.sum().backward()
        fwd.append(t1 - t0)
        bwd.append(time.perf_counter() - t1)
    return {"step_s": statistics.median(steps), "encoder_fwd_s": statistics.median(fwd),
            "encoder_bwd_s": statistics.median(bwd)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/pong.yaml")
    ap.add_argument("--settings", nargs="+", default=["learner.precision=float32", "learner.precision=bfloat16"],
                    help="each: space-separated KEY=VALUE overrides (one learner per setting)")
    ap.add_argument("--reps", type=int, default=3, help="timed updates per setting and round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    built = {s: build(args.config, s) for s in args.settings}
    first = next(iter(built.values()))[0]
    emit({"bench": "learner_step_machine", "nproc": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
          "torch": torch.__version__, "config": args.config,
          "batch": [first.cfg.sequence.total, first.cfg.learner.batch_size],
          "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
    rows: dict[str, list[dict[str, float]]] = {s: [] for s in args.settings}
    for rnd in range(args.rounds):
        order = args.settings if rnd % 2 == 0 else list(reversed(args.settings))
        for s in order:
            learner, sample = built[s]
            torch.set_num_threads(max(1, learner.cfg.learner.threads))
            res = measure(learner, sample, args.reps)
            rows[s].append(res)
            emit({"bench": "learner_step", "setting": s, "round": rnd, **res})
    for s, rs in rows.items():
        emit({"bench": "learner_step_summary", "setting": s, "rounds": len(rs),
              **{k: statistics.median(r[k] for r in rs) for k in rs[0]}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
