"""Cost of duration-aware updates on the learner's update rate (issue 21).

Times ``Learner.step`` on the same synthetic batches (``[T, B]`` sequences from
``distrl.replay.testing.random_trajectory``, MLP encoder, LSTM core) with the ``duration`` extra absent, with its
instrumentation only (mode off) and with each weighting mode. Prints one JSON object per mode on stdout:
updates/s (median of ``--repeats`` timed blocks, modes interleaved), the ratio to the run without the extra, and
the milliseconds the extra's hooks take per update, timed on their own.

    .venv/bin/python tools/bench/duration.py                     # B=32, T=20, 40 updates x 5 blocks per mode
    .venv/bin/python tools/bench/duration.py --batch 64 --length 40 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from distrl.config import load_config
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.learners.duration import DurationExtra
from distrl.learners.extras import LearnerBatch
from distrl.learners.learner import Learner
from distrl.replay.testing import random_trajectory
from distrl.types import ReplaySample

SPEC = EnvSpec(name="fake:bench", obs={"x": ArraySpec((16,), np.dtype(np.float32))}, num_actions=6, family="fake")

MODES = {
    "no_extra": ["duration.instrument=false"],
    "off_instrumented": [],
    "paper": ["duration.mode=paper"],
    "episode": ["duration.mode=episode"],
    "prior": ["duration.mode=prior"],
    "inclusion": ["duration.mode=inclusion"],
}


def batches(learner: Learner, n: int, B: int, T: int) -> list[ReplaySample]:
    out = []
    for i in range(n):
        traj = random_trajectory(T, B, num_actions=6, obs={"x": ((16,), np.float32)},
                                 core_state=learner.agent.initial_state(B), seed=i,
                                 duration=torch.rand(T, B).exp(), episode_time=torch.rand(T, B) * 10)
        out.append(ReplaySample(traj=traj, keys=torch.arange(B), shard_ids=torch.zeros(B, dtype=torch.int64),
                                weights=torch.ones(B), probs=torch.full((B,), 1.0 / B, dtype=torch.float64),
                                fresh=torch.arange(B) < B // 2, prior=torch.rand(B, dtype=torch.float64) + 0.5))
    return out


def hook_ms(learner: Learner, data: list[ReplaySample], n: int = 30) -> float:
    """Median milliseconds of the duration extra's two hooks (policy_weight + loss/metrics) on one batch: the
    part of an update the extra adds, measured directly (less noisy than a difference of update rates)."""
    extra = learner.extras.get("duration")
    if extra is None:
        return 0.0
    s = data[0]
    traj = s.traj
    with torch.no_grad():
        out = learner.agent.unroll(traj.obs, traj.reset_mask(), traj.core_state)
    batch = LearnerBatch(traj=traj, out=out, valid=traj.valid, is_weights=s.weights, fresh=s.fresh, version=5,
                         prior=s.prior)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        extra.policy_weight(batch)
        extra.loss(batch)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e3, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=20)
    ap.add_argument("--updates", type=int, default=40, help="updates per timed block")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    setups = {}
    for mode, over in MODES.items():
        cfg = load_config(None, ["model.encoder=mlp", "model.hidden_size=64", f"sequence.length={args.length}",
                                 f"sequence.period={args.length}", f"learner.batch_size={args.batch}",
                                 f"replay.min_size={args.batch}", "runtime.mode=local", *over])  # Learner driven here
        torch.manual_seed(0)
        learner = Learner(cfg, SPEC, device=args.device)
        extra = learner.extras.get("duration")
        if isinstance(extra, DurationExtra) and cfg.duration.mode == "inclusion":
            extra.observe_launched(dt=torch.rand(10_000).exp())
        data = batches(learner, 8, args.batch, args.length)
        for s in data[:3]:  # warm-up
            learner.step(s)
        setups[mode] = (learner, data)
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.repeats):  # modes interleaved, so a load change on the machine hits all of them alike
        for mode, (learner, data) in setups.items():
            t0 = time.perf_counter()
            for i in range(args.updates):
                learner.step(data[i % len(data)])
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rates[mode].append(args.updates / (time.perf_counter() - t0))
    base = statistics.median(rates["no_extra"])
    for mode, r in rates.items():
        ups = statistics.median(r)
        print(json.dumps({"bench": "duration_learner_cost", "mode": mode, "updates_per_s": round(ups, 2),
                          "relative_to_no_extra": round(ups / base, 3), "extra_ms_per_update": hook_ms(*setups[mode]),
                          "batch": args.batch, "length": args.length, "device": args.device,
                          "cpu": platform.processor() or platform.machine()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
