"""Learning-curve benchmark: env steps and wall time until the mean episode return (last 100 episodes) reaches a
target, for the quickstart (MiniHack-Room-5x5) or any config.

    .venv/bin/python tools/bench/learn.py                          # quickstart, seed 0, target 0.9
    .venv/bin/python tools/bench/learn.py --seeds 0 1 2 --max-steps 300000 -- learner.lr=3e-4
    # stability after learning: does a run that reached the target fall back below it?
    .venv/bin/python tools/bench/learn.py --config configs/fake_memory.yaml --local --seeds $(seq 40 55) \
        --max-steps 64000 --log-every 0.1 -- learner.entropy_cost=0.01

Runs ``distrl train`` in a subprocess per seed (the real CLI, Ray runtime unless --local), then reads the run's
metrics.jsonl. Prints one JSON object per seed on stdout and a summary line; progress goes to stderr.

After the first crossing it also reports how the run held the target: ``rows_after_target`` logged rows from the
crossing on, ``rows_below_target`` of them below the target, ``min_return_after_target`` and ``collapsed``
(that minimum fell below ``--collapse``, default 0.7: for a 2-way task like fake:memory, back near chance).
Rows are logged every ``--log-every`` seconds of the run, so short runs need a small value to see short dips.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def first_crossing(rows: list[dict], key: str, target: float) -> dict | None:
    for r in rows:
        v = r.get(key)
        if v is not None and v >= target and r.get("charts/episodes", 0) >= 100:
            return r
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs/quickstart.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--max-steps", type=int, default=300_000)
    ap.add_argument("--local", action="store_true", help="single-process runtime instead of Ray")
    ap.add_argument("--run-dir", default=None, help="where runs go (default: a temp dir)")
    ap.add_argument("--log-every", type=float, default=2.0, help="logging.log_every_s of the runs (seconds)")
    ap.add_argument("--collapse", type=float, default=0.7,
                    help="a return below this after the first crossing counts as a collapse")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    run_root = Path(args.run_dir or tempfile.mkdtemp(prefix="distrl_learn_"))
    results = []
    for seed in args.seeds:
        name = f"learn-seed{seed}-{int(time.time())}"
        cmd = [sys.executable, "-m", "distrl", "train", args.config, f"runtime.seed={seed}", f"env.seed={seed}",
               f"runtime.total_env_steps={args.max_steps}", f"runtime.run_dir={run_root}",
               f"runtime.run_name={name}", "logging.wandb=disabled", "logging.progress=false",
               f"logging.log_every_s={args.log_every}", *args.overrides]
        if args.local:
            cmd.append("--local")
        print("running:", " ".join(cmd), file=sys.stderr)
        t0 = time.monotonic()
        # distrl prints progress on stdout; send it to our stderr so our stdout stays JSON lines only.
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=sys.stderr)
        wall = time.monotonic() - t0
        metrics = run_root / name / "metrics.jsonl"
        if not metrics.is_file():
            res = {"bench": "learn", "seed": seed, "error": f"run failed before logging (exit {proc.returncode})"}
            results.append({**res, "reached": False, "exit_code": proc.returncode})
            print(json.dumps(res), flush=True)
            continue
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        hit = first_crossing(rows, "charts/episode_return", args.target)
        last = rows[-1]
        start = hit["charts/env_steps"] if hit is not None else float("inf")
        after = [r["charts/episode_return"] for r in rows
                 if "charts/episode_return" in r and r["charts/env_steps"] >= start]
        res = {
            "bench": "learn",
            "config": Path(args.config).name,
            "overrides": args.overrides,
            "seed": seed,
            "target_return": args.target,
            "reached": hit is not None,
            "env_steps_to_target": hit["charts/env_steps"] if hit else None,
            "wall_s_to_target": round(hit["charts/wall_time_s"], 1) if hit else None,
            "rows_after_target": len(after),
            "rows_below_target": sum(v < args.target for v in after),
            "min_return_after_target": min(after) if after else None,
            "collapsed": bool(after) and min(after) < args.collapse,
            "final_env_steps": last.get("charts/env_steps"),
            "final_return": last.get("charts/episode_return"),
            "final_success_rate": last.get("charts/success_rate"),
            "learner_updates": last.get("learner/updates"),
            "run_wall_s": round(wall, 1),
            "exit_code": proc.returncode,
            "machine": f"{platform.machine()} nproc={os.cpu_count()}",
            "curve": [[r["charts/env_steps"], round(r.get("charts/episode_return", float("nan")), 3),
                       round(r.get("charts/wall_time_s", 0.0), 1)]
                      for r in rows if "charts/episode_return" in r][:: max(1, len(rows) // 40)],
        }
        results.append(res)
        print(json.dumps(res), flush=True)
    reached = [r for r in results if r["reached"]]
    print(json.dumps({
        "bench": "learn_summary",
        "seeds": len(results),
        "reached": len(reached),
        "collapsed": sum(r.get("collapsed", False) for r in results),
        "rows_below_target": sum(r.get("rows_below_target", 0) for r in reached),
        "rows_after_target": sum(r.get("rows_after_target", 0) for r in reached),
        "env_steps_to_target_median": sorted(r["env_steps_to_target"] for r in reached)[len(reached) // 2]
        if reached else None,
        "wall_s_to_target_median": sorted(r["wall_s_to_target"] for r in reached)[len(reached) // 2]
        if reached else None,
    }), flush=True)
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
