"""Replay-shard checkpoint cost: what ``replay.checkpoint_every_s`` costs a run.

A shard serves no insert or sample while it saves (a Ray shard actor runs one call at a time; the local runtime
saves between steps), so the cost of periodic checkpoints is the save time as a share of the interval. For a
full shard of MiniHack-sized sequences (the workload of ``tools/bench/replay.py``: 80 steps, an LSTM state of
2 x 256 float32) at each ``--capacity``, this prints one JSON line per capacity with

* ``save_s_median`` / ``save_s_max``: wall time of ``ReplayShard.save`` (atomic: temporary directory, fsync,
  rename) over ``--repeats`` saves onto the previous checkpoint, as the periodic saves do;
* ``mb`` and ``mb_per_s``: checkpoint size and write rate;
* ``restore_s``: time to load it back into a new shard (verifies every CRC);
* ``busy_share_at_<E>s``: ``save_s_median / E``, the share of the shard's time spent saving at
  ``checkpoint_every_s = E`` for each ``--every``.

Usage::

    python tools/bench/shard_checkpoint.py                      # capacities 256 and 1024 (~1 min; 0.2 and 0.75 GB)
    python tools/bench/shard_checkpoint.py --capacity 512 --repeats 2 --dir /tmp/ck   # quick
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from distrl.config import ReplayConfig
from distrl.replay import ReplayShard
from distrl.replay.testing import LSTM_STATE, MINIHACK_OBS, example_trajectory

T, B = 80, 16


def fill(capacity: int) -> ReplayShard:
    shard = ReplayShard(ReplayConfig(capacity=capacity, min_size=1, samples_per_insert=0.0), seed=0)
    for i in range(-(-capacity // B)):
        shard.insert(example_trajectory(T=T, B=B, obs=MINIHACK_OBS, core_state=LSTM_STATE, random_obs=True,
                                        seed=i, start=i * T))
    return shard


def measure(capacity: int, repeats: int, root: Path, every: list[float]) -> dict[str, float | int | str]:
    print(f"filling a shard of {capacity} sequences", file=sys.stderr, flush=True)
    shard = fill(capacity)
    path = root / f"shard_{capacity}"
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        shard.save(path)
        times.append(time.perf_counter() - t0)
        print(f"  save {r + 1}/{repeats}: {times[-1]:.3f} s", file=sys.stderr, flush=True)
    mb = sum(p.stat().st_size for p in path.iterdir()) / 1e6
    t0 = time.perf_counter()
    ReplayShard.load(path, shard.cfg)
    restore_s = time.perf_counter() - t0
    med = statistics.median(times)
    out: dict[str, float | int | str] = {
        "bench": "shard_checkpoint", "capacity": capacity, "seq_len": T, "rows": len(shard), "mb": round(mb, 1),
        "save_s_median": round(med, 4), "save_s_max": round(max(times), 4), "mb_per_s": round(mb / med, 1),
        "restore_s": round(restore_s, 4), "repeats": repeats, "dir": str(root),
    }
    for e in every:
        out[f"busy_share_at_{e:g}s"] = round(med / e, 5)
    shutil.rmtree(path, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capacity", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--every", type=float, nargs="+", default=[30.0, 60.0, 300.0],
                    help="checkpoint intervals (s) to express the cost at")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory; put it on the "
                                                "filesystem the run directory will be on)")
    args = ap.parse_args()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="distrl_ckbench_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        for cap in args.capacity:
            print(json.dumps(measure(cap, args.repeats, root, args.every)), flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
