"""What importing a module costs a Ray worker process in memory: idle Ray actors that import given modules and
nothing else, their PSS and RSS read side by side (``/proc/<pid>/smaps_rollup``).

PSS divides a shared page among the processes that map it, so a library's read-only code costs each of N
processes 1/N of it; what it writes (relocated tables, heap) is private. Several actors import torch, as a run's
learner, env actor and evaluator do, so its shared part is divided among them as in a run. The reason the
replay shards and the driver do not import torch (BENCHMARKS.md, "Processes that do not need torch do not load
it").

Prints one ``{"bench": "import_pss", "probe": ..., "modules": [...], "pss_mib": ..., "rss_mib": ...}`` line per
actor. Usage::

    .venv/bin/python tools/dev/import_pss.py
    .venv/bin/python tools/dev/import_pss.py --probe shard=distrl.runtime.ray_replay --probe nle=nle,minihack
"""

from __future__ import annotations

import argparse
import json
import os
import time

import ray

DEFAULT_PROBES = {
    "bare": [],
    "numpy": ["numpy"],
    "torch_1": ["torch"],
    "torch_2": ["torch"],
    "torch_3": ["torch"],
    "replay_shard": ["distrl.runtime.ray_replay"],
    "driver": ["distrl.cli", "distrl.runtime.ray_app"],
    "nle": ["nle", "minihack"],
}


def _mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/smaps_rollup has no {field}")


class Importer:
    def __init__(self, modules: list[str]) -> None:
        import importlib

        for m in modules:
            importlib.import_module(m)

    def pid(self) -> int:
        return os.getpid()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--probe", action="append", default=[], metavar="NAME=MOD[,MOD...]",
                    help="an actor importing these modules (default: the probes in DEFAULT_PROBES)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading PSS")
    args = ap.parse_args()
    probes = {p.split("=", 1)[0]: [m for m in p.split("=", 1)[1].split(",") if m] for p in args.probe} or DEFAULT_PROBES
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        cls = ray.remote(num_cpus=0)(Importer)
        actors = {name: cls.remote(mods) for name, mods in probes.items()}
        pids = {name: ray.get(a.pid.remote()) for name, a in actors.items()}
        time.sleep(args.settle)
        for name, pid in pids.items():
            print(json.dumps({"bench": "import_pss", "probe": name, "modules": probes[name],
                              "pss_mib": round(_mib(pid, "Pss"), 1), "rss_mib": round(_mib(pid, "Rss"), 1)}))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
