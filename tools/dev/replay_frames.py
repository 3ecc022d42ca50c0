"""Atari frames in replay: stacks stored whole, one frame per step (``EnvSpec.frame_stacks``), and one frame per
step kept zlib-compressed (``replay.compress_obs``), side by side.

One run builds real Pong sequences ``[--length, --num-envs]`` from an inline EnvActor with the random policy
(``--max-episode-steps`` short games, so the sequences hold episode starts), starts a local Ray with one replay
shard actor per layout, and in rotating order measures for each layout (``full``: ``RayShardClient`` without
``frame_stacks``; ``packed``: with the spec's ``frame_stacks``; ``packed_zlib``: packed, and the shard stores
``obs/<key>`` and ``obs_stack/<key>`` of those keys as zlib blobs):

* ``insert_submit_ms``: the env actor's own cost of one ``insert_async`` (batch-major leaves, the frame-stack
  check and packing, NumPy conversion, handing the object to Ray): the time stepping pauses for;
* ``insert_acked_ms``: until the shard acknowledged the insert (transfer + storage write);
* ``stored_bytes_per_row``: the bytes of one sequence row in the shard's storage (all leaves);
* ``sample_ms``: one ``sample`` call of ``--batch`` rows, answered by the shard (decompression included);
* ``sample_bytes`` and ``sample_to_trajectory_ms``: a learner batch of ``--batch`` rows as sent by the shard,
  and turning it into the time-major Trajectory the learner trains on (rebuilding the stacks when packed).

Medians over ``--rounds`` rounds; the first two are discarded (warm-up). Prints one JSON object per layout on
stdout.

Usage::

    .venv/bin/python tools/dev/replay_frames.py
    .venv/bin/python tools/dev/replay_frames.py --rounds 30 --num-envs 32
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time

import ray
import torch

from distrl.actors.env_actor import EnvActor, RandomPolicy
from distrl.config import EnvConfig, ExperimentConfig, ReplayConfig, SequenceConfig
from distrl.envs.registry import env_spec
from distrl.runtime.ray_replay import RayShardClient, make_ray_shard


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="ALE/Pong-v5")
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--length", type=int, default=40)
    ap.add_argument("--max-episode-steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = ExperimentConfig(
        env=EnvConfig(name=args.env, num_envs=args.num_envs, vectorization="inline",
                      max_episode_steps=args.max_episode_steps),
        sequence=SequenceConfig(length=args.length, burn_in=0, period=args.length),
        replay=ReplayConfig(capacity=max(256, 2 * args.batch), min_size=1, samples_per_insert=0.0),
    )
    spec = env_spec(cfg.env)
    if not spec.frame_stacks:
        sys.exit(f"{args.env} declares no frame stacks (EnvSpec.frame_stacks); nothing to compare")
    actor = EnvActor(cfg, 0, RandomPolicy(spec.num_actions, seed=0))
    trajs = []
    while len(trajs) < 3:
        t = actor.step()
        if t is not None:
            trajs.append(t)
    actor.close()
    print(f"[replay_frames] {len(trajs)} sequences [{args.length}, {args.num_envs}] of {args.env}; "
          f"{sum(int(t.done().sum()) for t in trajs)} episode ends in them", file=sys.stderr)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        layouts = {"full": (), "packed": spec.frame_stacks, "packed_zlib": spec.frame_stacks}
        compress = {"full": False, "packed": False, "packed_zlib": True}
        shards = {name: make_ray_shard(dataclasses.replace(cfg.replay, compress_obs=compress[name]), i,
                                       num_cpus=0.5, seed=0) for i, name in enumerate(layouts)}
        clients = {name: RayShardClient(shards[name], i, layouts[name]) for i, name in enumerate(layouts)}
        submit: dict[str, list[float]] = {n: [] for n in layouts}
        acked: dict[str, list[float]] = {n: [] for n in layouts}
        names = list(layouts)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                traj = trajs[r % len(trajs)]
                t0 = time.perf_counter()
                pending = clients[name].insert_async(traj)
                t1 = time.perf_counter()
                res = pending.result(timeout=120.0)
                t2 = time.perf_counter()
                if not res.ok:
                    sys.exit(f"insert refused: {res.status}")
                if r >= 2:
                    submit[name].append((t1 - t0) * 1e3)
                    acked[name].append((t2 - t0) * 1e3)
        sample_ms: dict[str, list[float]] = {n: [] for n in layouts}
        for r in range(max(3, args.rounds // 2)):
            for name in names[r % len(names):] + names[: r % len(names)]:
                t0 = time.perf_counter()
                ray.get(shards[name].sample.remote(args.batch))
                sample_ms[name].append((time.perf_counter() - t0) * 1e3)
        for name in layouts:
            sample = ray.get(shards[name].sample.remote(args.batch))
            times = []
            for _ in range(max(3, args.rounds // 2)):
                t0 = time.perf_counter()
                sample.trajectory()
                times.append((time.perf_counter() - t0) * 1e3)
            stats = ray.get(shards[name].stats.remote())
            print(json.dumps({
                "bench": "replay_frames", "env": args.env, "layout": name, "frame_stacks": list(layouts[name]),
                "compress_obs": compress[name], "sample_ms": round(statistics.median(sample_ms[name]), 2),
                "sequence": [args.length, args.num_envs], "batch": args.batch, "rounds": len(submit[name]),
                "insert_submit_ms": round(statistics.median(submit[name]), 2),
                "insert_acked_ms": round(statistics.median(acked[name]), 2),
                "stored_bytes_per_row": stats.row_nbytes, "rows": stats.size,
                "sample_bytes": int(sum(v.nbytes for v in sample.leaves.values())),
                "sample_to_trajectory_ms": round(statistics.median(times), 2),
                "machine": platform.processor() or platform.machine(),
            }), flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
