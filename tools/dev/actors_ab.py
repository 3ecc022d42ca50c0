"""Env-actor throughput of two checkouts side by side (one JSON line): did a change make the actors faster?

Starts ``--procs`` EnvActor processes from each checkout (``PYTHONPATH`` set to it; same interpreter, same
config, same seeds) and measures them in alternating windows of ``--seconds``: old, new, old, new, ..., old. Each
new window is divided by the mean of the old windows around it, so slow changes in background load cancel;
``new_over_old`` is the median of these paired ratios (``iqr`` their interquartile range), the rates are medians
of the windows' summed env steps/s. Only one checkout's processes run at a time, so each gets the whole machine.

Policies: ``random`` (``RandomPolicy``) and ``neural_small`` (the family's small model, ``actor.inference=auto``),
as in ``tools/bench/actors.py``. Sequences of 40 steps are cut and dropped, as there.

Usage::

    git worktree add /tmp/old <commit>
    .venv/bin/python tools/dev/actors_ab.py --old /tmp/old --new . --policy random --rounds 10 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

_WORKER = r"""
import sys, time, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from distrl.actors.env_actor import EnvActor, RandomPolicy
from distrl.config import ActorConfig, EnvConfig, ExperimentConfig, ModelConfig, SequenceConfig
from distrl.envs.registry import env_spec
name, policy, num_envs, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
small = ({"encoder": "nethack_small", "hidden_size": 128, "glyph_embedding_dim": 16} if name.startswith("MiniHack")
         else {"encoder": "small_cnn", "hidden_size": 128})
cfg = ExperimentConfig(env=EnvConfig(name=name, num_envs=num_envs, seed=seed), model=ModelConfig(**small),
                       sequence=SequenceConfig(length=40, burn_in=0, period=40), actor=ActorConfig(inference="auto"))
actor = EnvActor(cfg, seed, RandomPolicy(env_spec(cfg.env).num_actions, seed) if policy == "random" else None)
actor.step()
print("ready", flush=True)
for line in sys.stdin:
    n0, t0 = actor.env_steps, time.perf_counter()
    end = t0 + float(line)
    while time.perf_counter() < end:
        actor.step()
    print(actor.env_steps - n0, time.perf_counter() - t0, flush=True)
"""


class _Pool:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        env = {**os.environ, "PYTHONPATH": str(root.resolve())}
        self.procs = [
            subprocess.Popen([sys.executable, "-c", _WORKER, args.env, args.policy, str(args.num_envs), str(seed)],
                             cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for seed in range(1, args.procs + 1)
        ]
        for p in self.procs:
            line = p.stdout.readline().strip()  # type: ignore[union-attr]
            if line != "ready":
                raise RuntimeError(f"actor process of {root} failed to start (exit code {p.wait()})")

    def run(self, seconds: float) -> float:
        for p in self.procs:
            p.stdin.write(f"{seconds}\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        total = 0.0
        for p in self.procs:
            steps, dt = p.stdout.readline().split()  # type: ignore[union-attr]
            total += int(steps) / float(dt)
        return total

    def close(self) -> None:
        for p in self.procs:
            p.stdin.close()  # type: ignore[union-attr]
            p.wait(30)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="checkout measured as the baseline")
    ap.add_argument("--new", type=Path, default=Path("."), help="checkout measured against it")
    ap.add_argument("--env", default="MiniHack-Room-5x5-v0")
    ap.add_argument("--policy", default="random", choices=["random", "neural_small"])
    ap.add_argument("--num-envs", type=int, default=16, help="envs per actor process")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2, help="actor processes per checkout")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args(argv)
    for root in (args.old, args.new):
        if not (root / "distrl" / "__init__.py").is_file():
            sys.exit(f"{root} is not a distrl checkout (no distrl/__init__.py)")
    old, new = _Pool(args.old, args), _Pool(args.new, args)
    try:
        old.run(args.seconds)  # warm-up
        new.run(args.seconds)
        old_w, new_w, ratios = [], [], []
        prev = old.run(args.seconds)
        t0 = time.time()
        for _ in range(args.rounds):
            n = new.run(args.seconds)
            o = old.run(args.seconds)
            old_w.append((prev + o) / 2)
            new_w.append(n)
            ratios.append(n / ((prev + o) / 2))
            prev = o
    finally:
        old.close()
        new.close()
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(json.dumps({
        "bench": "actors_ab", "env": args.env, "policy": args.policy, "envs_per_process": args.num_envs,
        "processes": args.procs, "old": str(args.old), "new": str(args.new),
        "old_steps_per_s": round(statistics.median(old_w), 1), "new_steps_per_s": round(statistics.median(new_w), 1),
        "new_over_old": round(statistics.median(ratios), 3), "iqr": [round(q[0], 3), round(q[2], 3)],
        "rounds": args.rounds, "window_s": args.seconds, "measured_s": round(time.time() - t0, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
