"""Instructions and cache misses per env step that each distrl layer adds to a bare env loop, under cachegrind.

Wall-clock ratios on a shared 2-core box move by several percent between runs; the costs this benchmark
counts do not. Each layer runs in its own process under ``valgrind --tool=cachegrind --cache-sim=yes``, twice
(``--short`` and ``--long`` batched steps of ``--num-envs`` envs), and the difference of the two runs divided by
the extra env steps is the per-step cost without start-up and exit:

* ``raw``: the envs stepped in a loop (``copy_obs=False``, as ``tools/bench/actors.py``'s baseline).
* ``vecenv``: the same envs through an inline VecEnv (batch buffers, per-slot timing, fault checks, autoreset).
* ``actor_random``: a full EnvActor (VecEnv, RandomPolicy, truncation values, sequence writer).
* ``actor_numpy_small``: the EnvActor with the small MiniHack model on the NumPy acting path.

All layers see the same episodes: the same env seeds, and the same random action stream (the neural layer
computes the policy in full, then acts with the random stream's actions, so that episode ends and resets,
which cost far more than steps, fall on the same steps; truncation values draw from a second stream). Every
process imports torch first, because an actor process does: a MiniHack reset reloads NetHack's shared library,
whose symbol lookups walk every library loaded, torch's included.

Counts are simulated (valgrind counts ``rep movsb`` copies per byte, so memcpy-heavy code reads high); use them
to compare layers and commits, and wall-clock benchmarks for speed. Needs ``valgrind`` on PATH; about 10 min.

Usage::

    .venv/bin/python tools/dev/actor_instructions.py
    .venv/bin/python tools/dev/actor_instructions.py --layers raw vecenv --short 60 --long 160
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

LAYERS = ("raw", "vecenv", "actor_random", "actor_numpy_small")
_COUNTS = {
    "instructions": r"I\s+refs:\s+([\d,]+)",
    "d1_misses": r"D1\s+misses:\s+([\d,]+)",
    "ll_misses": r"LL misses:\s+([\d,]+)",
}


def run_layer(layer: str, env: str, num_envs: int, batches: int) -> None:
    """The measured loop (runs inside valgrind)."""
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from distrl.actors.env_actor import EnvActor, RandomPolicy, actor_seed
    from distrl.config import EnvConfig, ExperimentConfig, ModelConfig, SequenceConfig
    from distrl.envs.registry import env_spec, make_env
    from distrl.envs.vector import make_vec_env, slot_seed

    cfg = EnvConfig(name=env, num_envs=num_envs)  # default keys for all layers (the small model reads two)
    num_actions = env_spec(cfg).num_actions
    seed = actor_seed(cfg.seed, 0)  # the VecEnv seed of EnvActor(cfg, actor_id=0)
    rng = np.random.default_rng(0)
    if layer == "raw":
        envs = [make_env(cfg, slot_seed(seed, i, 0)) for i in range(num_envs)]
        for e in envs:
            e.copy_obs = False
            e.reset()
        for _ in range(batches):
            for e, a in zip(envs, rng.integers(0, num_actions, num_envs).tolist()):
                _, _, term, trunc, _ = e.step(a)
                if term or trunc:
                    e.reset()
        return
    if layer == "vecenv":
        venv = make_vec_env(cfg, num_envs, seed, prereset=False)
        venv.reset()
        for _ in range(batches):
            venv.step(rng.integers(0, num_actions, num_envs))
        return
    model = ModelConfig(encoder="nethack_small", hidden_size=128, glyph_embedding_dim=16)
    xcfg = ExperimentConfig(env=cfg, model=model, sequence=SequenceConfig(length=40, burn_in=0, period=40))
    actor = EnvActor(xcfg, actor_id=0, policy=RandomPolicy(num_actions) if layer == "actor_random" else None,
                     prereset=False)
    actor.policy = _SameActions(actor.policy, rng, np.random.default_rng(1), num_envs, num_actions)
    for _ in range(batches):
        actor.step()


class _SameActions:
    """Runs ``policy`` in full, then acts with ``rng``'s uniform actions (truncation-value calls: ``rng2``)."""

    def __init__(self, policy: Any, rng: Any, rng2: Any, batch: int, num_actions: int) -> None:
        from distrl.actors.env_actor import RandomPolicy

        self.policy, self.rng, self.rng2, self.batch, self.num_actions = policy, rng, rng2, batch, num_actions
        self.draws_itself = isinstance(policy, RandomPolicy)  # draws its actions once, like the raw loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)

    def act(self, obs: Any, state: Any, greedy: bool = False) -> Any:
        n = next(iter(obs.values())).shape[0]
        rng = self.rng if n == self.batch else self.rng2
        if self.draws_itself:
            self.policy._rng = rng
            return self.policy.act(obs, state)
        out = self.policy.act(obs, state)
        return replace(out, action=rng.integers(0, self.num_actions, n))


def _cachegrind(layer: str, args: argparse.Namespace, batches: int, tmp: str) -> dict[str, int]:
    out = os.path.join(tmp, f"{layer}.{batches}")
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--cachegrind-out-file={out}.cg",
           sys.executable, os.path.abspath(__file__), "--child", layer, "--env", args.env,
           "--num-envs", str(args.num_envs), "--short", str(batches)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{layer} ({batches} batches) failed under valgrind:\n{proc.stderr[-3000:]}")
    counts = {}
    for name, pattern in _COUNTS.items():
        m = re.search(pattern, proc.stderr)
        if m is None:
            raise RuntimeError(f"no {name!r} in valgrind's summary for {layer}:\n{proc.stderr[-2000:]}")
        counts[name] = int(m.group(1).replace(",", ""))
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default="MiniHack-Room-5x5-v0")
    ap.add_argument("--layers", nargs="+", default=list(LAYERS), choices=LAYERS)
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--short", type=int, default=60, help="batched steps of the short run (past the first sequence)")
    ap.add_argument("--long", type=int, default=260, help="batched steps of the long run")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="valgrind processes at once")
    ap.add_argument("--keep", help="directory to keep the cachegrind output files in (for cg_annotate / cg_diff)")
    ap.add_argument("--child", choices=LAYERS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_layer(args.child, args.env, args.num_envs, args.short)
        return
    if shutil.which("valgrind") is None:
        sys.exit("actor_instructions.py needs valgrind (apt-get install valgrind)")
    if args.long <= args.short:
        sys.exit(f"--long ({args.long}) must exceed --short ({args.short})")
    t0 = time.time()
    steps = (args.long - args.short) * args.num_envs
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp, ThreadPoolExecutor(args.jobs) as pool:
        runs = {(layer, n): pool.submit(_cachegrind, layer, args, n, tmp)
                for layer in args.layers for n in (args.short, args.long)}
        per_step = {layer: {k: (runs[(layer, args.long)].result()[k] - runs[(layer, args.short)].result()[k]) / steps
                            for k in _COUNTS} for layer in args.layers}
        if args.keep:
            for f in os.listdir(tmp):
                shutil.move(os.path.join(tmp, f), os.path.join(args.keep, f))
    base = per_step.get("raw")
    for layer, c in per_step.items():
        row: dict[str, Any] = {"bench": "actor_instructions", "env": args.env, "num_envs": args.num_envs,
                               "layer": layer, "env_steps": steps}
        row.update({f"{k}_per_step": round(v, 1) for k, v in c.items()})
        if base is not None and layer != "raw":
            row["instructions_over_raw"] = round(c["instructions"] / base["instructions"], 4)
            row["added_instructions_per_step"] = round(c["instructions"] - base["instructions"], 1)
        print(json.dumps(row), flush=True)
    print(f"# total {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
