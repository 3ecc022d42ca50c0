"""Replay benchmark: distrl's ReplayShard vs TorchRL's prioritized replay buffer, plus Ray shard scaling.

One run measures, on the same workload (sequences of 80 steps with MiniHack-sized observations, an LSTM core
state of 2 x 256 float32, 8 actions; inserted 16 sequences per call):

* ``insert_fill``   sequences/s inserting into an empty buffer until it is full (pays first-touch page faults);
  a fresh buffer per round, alternating order; the line splits each side's CPU into user and system time and
  gives its page faults and the kernel's THP/compaction counters over the fill
* ``insert``        sequences/s inserting into a full buffer (FIFO overwrite; steady state)
* ``sample``        batches/s of 64 sequences with IS weights, as torch tensors
* ``update``        update_priorities(64) calls/s
* ``sample_update`` sample(64) + update_priorities(64) pairs/s (the learner's replay loop)
* ``bytes_per_step`` bytes stored per environment step vs the raw bytes of the data
* ``ray_sample``    aggregate batches/s from 1, 2 and 4 Ray shard actors to one ReplaySampler (``--no-ray`` skips)

distrl runs the full learner path (``ReplaySampler`` over one local shard, no prefetch thread, so both sides use
one thread); TorchRL runs ``TensorDictPrioritizedReplayBuffer`` with ``LazyTensorStorage`` and the same
capacity, alpha, beta and epsilon. Both are measured in alternating rounds and the median round is reported,
because this machine is shared. torch uses ``--torch-threads`` threads (1 by default: numpy is single-threaded).

TorchRL 0.14's compiled extension (its segment trees) was built against a newer torch than this project's
2.13 and references a symbol 2.13 lacks; that symbol is not used by the segment trees, so the extension is
loaded with lazy symbol binding (``RTLD_LAZY``), which makes TorchRL's prioritized buffer usable here.

Output: one JSON object per line on stdout; human-readable progress on stderr.

Usage::

    python tools/bench/replay.py            # full run (about 2 minutes)
    python tools/bench/replay.py --quick    # small smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from distrl.config import ReplayConfig
from distrl.replay import LocalShardClient, ReplaySampler, ReplayShard
from distrl.replay.testing import LSTM_STATE, MINIHACK_OBS, example_trajectory
from distrl.types import Trajectory

T, INSERT_B, SAMPLE_B, NUM_ACTIONS = 80, 16, 64, 8
ALPHA, BETA, EPS = 0.6, 0.4, 1e-6


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def import_torchrl() -> Any:
    """Import TorchRL with its extension bound lazily (see the module docstring)."""
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_LAZY | os.RTLD_LOCAL)
    try:
        import torchrl._torchrl  # noqa: F401  (loads the segment trees before torchrl.data binds them)
    finally:
        sys.setdlopenflags(flags)
    import torchrl.data as trd

    return trd


def rate(fn: Callable[[], Any], seconds: float, min_iters: int = 3) -> float:
    """Calls per second of ``fn`` over at least ``seconds`` and ``min_iters`` calls."""
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - start
        if el >= seconds and n >= min_iters:
            return n / el


def rounds(fns: dict[str, Callable[[], float]], k: int) -> dict[str, float]:
    """Run each measurement k times, alternating implementations; median per implementation."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(k):
        for name, fn in fns.items():
            out[name].append(fn())
    return {name: statistics.median(v) for name, v in out.items()}


def workload(n_distinct: int) -> list[Trajectory]:
    """Distinct insert batches (so inserts do not copy from a cache-hot source)."""
    return [
        example_trajectory(
            T=T,
            B=INSERT_B,
            num_actions=NUM_ACTIONS,
            obs=MINIHACK_OBS,
            core_state=LSTM_STATE,
            random_obs=True,
            seed=i,
            start=i * INSERT_B,
        )
        for i in range(n_distinct)
    ]


_VMSTAT_KEYS = ("thp_fault_alloc", "thp_fault_fallback", "compact_stall", "pgfault")


def _vmstat() -> dict[str, int]:
    out = {}
    try:
        for line in open("/proc/vmstat"):
            key, val = line.split()
            if key in _VMSTAT_KEYS:
                out[key] = int(val)
    except OSError:
        pass
    return out


def thp_setting() -> str:
    """The kernel's transparent-huge-page mode and defrag policy (numpy asks for huge pages with madvise on
    arrays of 4 MiB and more; torch does not)."""
    try:
        en = open("/sys/kernel/mm/transparent_hugepage/enabled").read().split()
        de = open("/sys/kernel/mm/transparent_hugepage/defrag").read().split()
    except OSError:
        return "?"
    pick = [next((w[1:-1] for w in ws if w.startswith("[")), "?") for ws in (en, de)]
    return f"enabled={pick[0]} defrag={pick[1]}"


def measure_fill(fn: Callable[[int], None], n: int) -> dict[str, float]:
    """Call ``fn(i)`` for i < n on an empty buffer: the rate, user and system CPU seconds, this process's minor
    page faults, and the machine-wide THP and compaction counters (``/proc/vmstat``) over the fill."""
    r0, v0, t0 = resource.getrusage(resource.RUSAGE_SELF), _vmstat(), time.perf_counter()
    for i in range(n):
        fn(i)
    dt = time.perf_counter() - t0
    r1, v1 = resource.getrusage(resource.RUSAGE_SELF), _vmstat()
    out = {"per_s": n * INSERT_B / dt, "wall_s": dt, "user_s": r1.ru_utime - r0.ru_utime,
           "sys_s": r1.ru_stime - r0.ru_stime, "minor_faults": float(r1.ru_minflt - r0.ru_minflt)}
    out.update({f"vm_{key}": float(v1.get(key, 0) - v0.get(key, 0)) for key in _VMSTAT_KEYS if key != "pgfault"})
    return out


def raw_bytes_per_step(traj: Trajectory) -> float:
    return sum(v.nbytes for v in traj.batch_major().values()) / (traj.B * traj.T)


def compare(args: argparse.Namespace) -> None:
    trd = import_torchrl()
    from tensordict import TensorDict

    cap, sec, k = args.capacity, args.seconds, args.rounds
    trajs = workload(4)
    tds = [TensorDict(dict(t.batch_major()), batch_size=[INSERT_B]).unflatten_keys("/") for t in trajs]
    raw = raw_bytes_per_step(trajs[0])
    log(f"workload: {T}-step sequences, {raw * T / 1e6:.3f} MB each, capacity {cap}, batch {SAMPLE_B}")

    cfg = ReplayConfig(
        capacity=cap, alpha=ALPHA, beta_start=BETA, beta_end=BETA, epsilon=EPS, min_size=1, samples_per_insert=0.0
    )
    # First fill: each buffer from empty to full, on a fresh buffer per round, in alternating order (the first
    # buffer a process fills can meet a different kernel state than the second). Each side's CPU time is split
    # into user (Python, numpy, torch) and system (the kernel committing fresh pages), with its page faults and
    # the kernel's transparent-huge-page and compaction counters over the fill.
    n_fill = max(cap // INSERT_B, 1)

    def new_distrl() -> tuple[Any, Callable[[int], None]]:
        s = ReplayShard(cfg, seed=0)
        return s, lambda i: s.insert(trajs[i % len(trajs)])

    def new_torchrl() -> tuple[Any, Callable[[int], None]]:
        b = trd.TensorDictPrioritizedReplayBuffer(
            alpha=ALPHA, beta=BETA, eps=EPS, storage=trd.LazyTensorStorage(cap), batch_size=SAMPLE_B
        )
        return b, lambda i: b.extend(tds[i % len(tds)])

    fills: dict[str, list[dict[str, float]]] = {"distrl": [], "torchrl": []}
    makers = {"distrl": new_distrl, "torchrl": new_torchrl}
    kept: dict[str, Any] = {}
    for r in range(k):
        for name in ("distrl", "torchrl") if r % 2 == 0 else ("torchrl", "distrl"):
            kept.pop(name, None)
            gc.collect()
            obj, fn = makers[name]()
            fills[name].append(measure_fill(fn, n_fill))
            kept[name] = obj
    fill = {name: statistics.median(f["per_s"] for f in runs) for name, runs in fills.items()}
    detail = {f"{name}_{key}": round(statistics.median(f[key] for f in runs), 4)
              for name, runs in fills.items() for key in runs[0] if key != "per_s"}
    emit_pair("insert_fill", "sequences/s", fill["distrl"], fill["torchrl"], batch=INSERT_B, capacity=cap,
              rounds=k, thp=thp_setting(), **detail)

    # The buffers of the last fill round, full, for the steady-state measurements.
    shard: ReplayShard = kept["distrl"]
    rb = kept["torchrl"]
    sampler = ReplaySampler([LocalShardClient(shard)], cfg, batch_size=SAMPLE_B, prefetch=0, seed=0)
    it = {"d": 0, "t": 0}

    def d_insert() -> None:
        shard.insert(trajs[it["d"] % len(trajs)])
        it["d"] += 1

    def t_insert() -> None:
        rb.extend(tds[it["t"] % len(tds)])
        it["t"] += 1

    res = rounds(
        {"distrl": lambda: rate(d_insert, sec) * INSERT_B, "torchrl": lambda: rate(t_insert, sec) * INSERT_B}, k
    )
    emit_pair("insert", "sequences/s", res["distrl"], res["torchrl"], batch=INSERT_B, capacity=cap)

    last: dict[str, Any] = {}

    def d_sample() -> None:
        last["d"] = sampler.next_batch(timeout=60.0)

    def t_sample() -> None:
        last["t"] = rb.sample()

    res = rounds({"distrl": lambda: rate(d_sample, sec), "torchrl": lambda: rate(t_sample, sec)}, k)
    emit_pair("sample", "batches/s", res["distrl"], res["torchrl"], batch=SAMPLE_B, capacity=cap)

    gen = np.random.default_rng(0)
    prios = [torch.from_numpy(gen.random(SAMPLE_B).astype(np.float32) * 10) for _ in range(16)]
    j = {"i": 0}

    def next_p() -> torch.Tensor:
        j["i"] += 1
        return prios[j["i"] % len(prios)]

    def d_update() -> None:
        b = last["d"]
        sampler.update_priorities(b.keys, b.shard_ids, next_p())

    def t_update() -> None:
        rb.update_priority(last["t"]["index"], next_p())

    res = rounds({"distrl": lambda: rate(d_update, sec / 2), "torchrl": lambda: rate(t_update, sec / 2)}, k)
    emit_pair("update", "calls/s", res["distrl"], res["torchrl"], batch=SAMPLE_B, capacity=cap)

    def d_both() -> None:
        d_sample()
        d_update()

    def t_both() -> None:
        t_sample()
        t_update()

    res = rounds({"distrl": lambda: rate(d_both, sec), "torchrl": lambda: rate(t_both, sec)}, k)
    emit_pair("sample_update", "pairs/s", res["distrl"], res["torchrl"], batch=SAMPLE_B, capacity=cap)

    # Bytes stored per env step: item data plus every per-slot structure (priorities, tree, bookkeeping).
    assert shard._storage is not None
    d_bytes = shard._storage.nbytes + sum(
        a.nbytes for a in (shard._priority, shard._prior, shard._served, *shard._tree._levels)
    )
    t_store = rb._storage._storage
    t_bytes = sum(v.nbytes for v in t_store.values(include_nested=True, leaves_only=True))
    t_bytes += 2 * 2 * cap * 4  # TorchRL's fp32 sum and min segment trees (about 2 * capacity nodes each)
    d_step, t_step = d_bytes / (cap * T), t_bytes / (cap * T)
    emit(
        {
            "bench": "bytes_per_step",
            "raw_bytes_per_step": round(raw, 2),
            "distrl_bytes_per_step": round(d_step, 2),
            "torchrl_bytes_per_step": round(t_step, 2),
            "bytes_per_step_ratio": round(d_step / raw, 4),
            "torchrl_bytes_per_step_ratio": round(t_step / raw, 4),
        }
    )
    log(f"bytes/step: raw {raw:.1f}, distrl {d_step:.1f} ({d_step / raw:.4f}x), torchrl {t_step:.1f}")
    sampler.close()


def emit_pair(bench: str, unit: str, d: float, t: float, **extra: Any) -> None:
    emit(
        {
            "bench": bench,
            "unit": unit,
            "distrl_per_s": round(d, 2),
            "torchrl_per_s": round(t, 2),
            "ratio": round(d / t, 3),
            **extra,
        }
    )
    log(f"{bench:14s} distrl {d:10.1f} {unit:12s} torchrl {t:10.1f}   ratio {d / t:6.2f}")


def ray_scaling(args: argparse.Namespace) -> None:
    import ray

    from distrl.runtime.ray_replay import make_ray_shards, ray_shard_clients

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        trajs = workload(2)
        cfg = ReplayConfig(capacity=args.ray_capacity, alpha=ALPHA, epsilon=EPS, min_size=1, samples_per_insert=0.0)
        for j in args.ray_shards:
            handles = make_ray_shards(cfg, j, num_cpus=1.0, seed=0)
            clients = ray_shard_clients(handles)
            pend = [c.insert_async(trajs[i % 2]) for c in clients for i in range(max(args.ray_capacity // INSERT_B, 1))]
            for p in pend:
                assert p.result(timeout=300).ok
            sampler = ReplaySampler(clients, cfg, batch_size=SAMPLE_B, prefetch=2, seed=0)
            for _ in range(2):
                sampler.next_batch(timeout=120.0)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.ray_seconds or n < 3:
                b = sampler.next_batch(timeout=120.0)
                sampler.update_priorities(b.keys, b.shard_ids, torch.rand(SAMPLE_B))
                n += 1
            per_s = n / (time.perf_counter() - t0)
            sampler.close()
            emit(
                {
                    "bench": "ray_sample",
                    "shards": j,
                    "batches_per_s": round(per_s, 2),
                    "sequences_per_s": round(per_s * SAMPLE_B, 1),
                    "batch": SAMPLE_B,
                    "capacity_per_shard": args.ray_capacity,
                    "with_priority_updates": True,
                }
            )
            log(f"ray_sample     {j} shard(s): {per_s:7.2f} batches/s ({per_s * SAMPLE_B:.0f} sequences/s)")
            for h in handles:
                ray.kill(h)
            del sampler, handles, clients
            gc.collect()
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small capacity and short rounds (smoke run)")
    ap.add_argument("--capacity", type=int, default=None, help="sequences per buffer (default 1000; quick 128)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per measurement round")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds per measurement")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray shard scaling measurement")
    ap.add_argument("--ray-only", action="store_true", help="only the Ray shard scaling measurement")
    args = ap.parse_args()
    args.capacity = args.capacity or (128 if args.quick else 1000)
    args.seconds = args.seconds or (0.3 if args.quick else 1.5)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.ray_capacity = 32 if args.quick else 192
    args.ray_seconds = 1.0 if args.quick else 6.0
    args.ray_shards = (1, 2, 4)
    torch.set_num_threads(args.torch_threads)

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    import tensordict

    try:
        trd_version = __import__("importlib.metadata").metadata.version("torchrl")
    except Exception:
        trd_version = "?"
    emit(
        {
            "bench": "env",
            "cpu": cpu,
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "torchrl": trd_version,
            "tensordict": tensordict.__version__,
            "torch_threads": args.torch_threads,
            "capacity": args.capacity,
            "quick": args.quick,
        }
    )
    t0 = time.perf_counter()
    if not args.ray_only:
        compare(args)
        gc.collect()  # release both buffers before the Ray shards allocate theirs
    if not args.no_ray:
        ray_scaling(args)
    log(f"done in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
