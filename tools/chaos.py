"""Chaos soak: train on a local Ray cluster while a random component is killed (or hung) every N seconds.

Kinds of fault (``--kinds``): ``env_actor`` (``ray.kill`` of a random env actor), ``replay_shard`` (``ray.kill`` of
a random replay shard: restarted from its last periodic checkpoint, ``replay.checkpoint_every_s``), ``learner``
(``ray.kill`` of a random learner: restarted from the last learner checkpoint, ``learner.checkpoint_every``; with
several the group re-forms), ``hang_env`` (a random env actor's next step never returns: found by the heartbeat,
``runtime.actor_stuck_timeout_s``) and ``hang_learner`` (a random learner's next update never returns: found after
``runtime.learner_stuck_timeout_s``).

Prints one JSON object per line on stdout:

* ``{"event": "fault", "kind", "target", "t_s", "recovery_s"}`` per fault: ``recovery_s`` = seconds until the
  runtime had a replacement running (new env actor incarnation / new shard handle / learners restored from their
  checkpoint), the stuck timeout included for a hang; null if none came within ``--recovery-timeout`` or before
  the end. The next fault comes ``--every`` seconds after a fault's recovery (or its timeout); none comes in
  the run's last stuck timeout + 10 s, where its recovery would span the shutdown;
* ``{"event": "memory", "t_s", "rss_mb", "pss_mb", "uss_mb", "processes", "pss_by_role_mb"}`` every
  ``--memory-every`` s: memory of this process and all its descendants (the Ray cluster it started); see
  :func:`tree_memory` for why PSS, not summed RSS, is the run's resident memory;
* ``{"event": "summary", ...}`` at the end: faults and recoveries by kind, the longest recovery, lost inserts,
  learner restarts and the updates they lost, the final return and success rate (mean of the last 100 episodes),
  env steps, memory growth (RSS, PSS, USS, PSS less the replay shards', and PSS per role) after the first
  ``--warmup-min`` minutes (:func:`growth`).

Usage::

    python tools/chaos.py --every 30 --duration 1800                        # the 30-minute soak (quickstart)
    python tools/chaos.py --every 20 --duration 120 --config configs/fake_memory.yaml   # a 2-minute smoke run
    python tools/chaos.py --duration 1800 --kinds                           # the control: no faults
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
from train_rate import role_of_command

REPO = Path(__file__).resolve().parents[1]


_STDOUT = sys.stdout  # JSON lines only; the run's own progress lines go to stderr (see main)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), file=_STDOUT, flush=True)


def process_role(p: Any, me: Any) -> str:
    """What a process of the run is: ``driver`` (this process), else what ``tools/bench/train_rate.py``'s
    ``role_of_command`` makes of its command line (a Ray actor's class, ``IDLE`` for a pooled Ray worker,
    multiprocessing children, ``-m <module> <command>``, or the program: ``raylet``, ``gcs_server``, ...)."""
    if p.pid == me.pid:
        return "driver"
    return role_of_command(p.cmdline() or [p.name()])


def tree_memory(psutil: Any) -> dict[str, Any]:
    """Memory of this process and all its descendants (the Ray cluster it started), in MiB: ``rss_mb`` sums each
    process's resident set, so pages shared between processes (the object store's shared memory, the torch and
    NLE libraries) count once per process that touched them, and a new process (a replacement after a fault)
    adds its own copy of the libraries' pages; ``pss_mb`` sums proportional set sizes, where a page shared by n
    processes counts 1/n in each: the run's resident memory with every page counted once; ``uss_mb``: memory
    only one process maps. ``pss_by_role_mb``: PSS summed per :func:`process_role`."""
    me = psutil.Process()
    rss = pss = uss = 0
    by_role: dict[str, float] = {}
    n = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            m = p.memory_full_info()
            role = process_role(p, me)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        n += 1
        rss, pss, uss = rss + m.rss, pss + m.pss, uss + m.uss
        by_role[role] = by_role.get(role, 0.0) + m.pss / 2**20
    return {"rss_mb": round(rss / 2**20, 1), "pss_mb": round(pss / 2**20, 1), "uss_mb": round(uss / 2**20, 1),
            "processes": n, "pss_by_role_mb": {k: round(v, 1) for k, v in sorted(by_role.items())}}


REPLAY_ROLE = "StoredShard"
"""The Ray actor class of a replay shard (:func:`process_role`): its memory grows as the buffer fills, up to
``replay.capacity``."""


def growth(samples: list[dict[str, Any]], key: str, after_s: float, window: int = 3,
           exclude_role: str | None = None) -> float | None:
    """Relative growth of ``key`` after ``after_s`` seconds: the mean of the last ``window`` samples over the mean
    of the first ``window`` samples at or after ``after_s`` (means, because a process being replaced at a sample
    moment moves a single sample by its size). ``exclude_role``: less that role's PSS (e.g. the replay shards,
    whose growth is the buffer filling)."""
    vals = [m[key] - (m["pss_by_role_mb"].get(exclude_role, 0.0) if exclude_role else 0.0)
            for m in samples if m["t_s"] >= after_s]
    if len(vals) < 2 * window:
        return None
    first, last = sum(vals[:window]) / window, sum(vals[-window:]) / window
    return last / first - 1.0 if first else None


def hang_next_step(env_actor: Any) -> None:
    """Runs inside a RayEnvActor (``__ray_call__``): its next step never returns, as with a hung env."""
    env_actor.actor.step = lambda: time.sleep(10**6)


def hang_next_update(ray_learner: Any) -> None:
    """Runs inside a RayLearner (``__ray_call__``): its next update never returns, as with a deadlocked learner."""
    ray_learner.worker.learner.step = lambda sample: time.sleep(10**6)


class Chaos:
    def __init__(
        self, runtime: Any, ray: Any, kinds: list[str], every_s: float, seed: int, recovery_timeout_s: float = 120.0,
        last_fault_s: float | None = None,
    ) -> None:
        self.runtime, self.ray, self.kinds, self.every_s = runtime, ray, kinds, every_s
        self.last_fault_s = last_fault_s  # no fault after this (seconds from t0): its recovery would span the shutdown
        self.recovery_timeout_s = recovery_timeout_s  # a fault waits this long for its recovery before the next
        self.rng = random.Random(seed)
        self.t0 = time.monotonic()
        self.faults: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.error: str | None = None

    def _fault(self) -> dict[str, Any] | None:
        rt = self.runtime
        actors, shards = list(getattr(rt, "actor_handles", [])), list(getattr(rt, "shard_handles", []))
        if not actors:
            return None  # the run is still starting (its env actors come last)
        group = getattr(rt, "learner_group", None)
        learners = list(group.handles) if group is not None else []
        targets = {"env_actor": actors, "hang_env": actors, "replay_shard": shards, "learner": learners,
                   "hang_learner": learners}
        kinds = [k for k in self.kinds if targets[k]]
        if not kinds:
            return None
        kind = self.rng.choice(kinds)
        if kind in ("learner", "hang_learner"):
            r = self.rng.randrange(len(learners))
            done = group.recoveries
            if kind == "learner":
                self.ray.kill(learners[r], no_restart=True)
            else:
                self.ray.get(learners[r].__ray_call__.remote(hang_next_update), timeout=60)
            return {"kind": kind, "target": r, "recovered": lambda: group.recoveries > done}
        if kind == "replay_shard":
            j = self.rng.randrange(len(shards))
            old = shards[j]
            self.ray.kill(old, no_restart=True)
            return {"kind": kind, "target": j, "recovered": lambda: rt.shard_handles[j] is not old}
        k = self.rng.randrange(len(actors))
        h = actors[k]
        if kind == "env_actor":
            self.ray.kill(h.handle, no_restart=True)
        else:  # hang_env
            self.ray.get(h.handle.__ray_call__.remote(hang_next_step), timeout=60)
        return {"kind": kind, "target": h.actor_id,
                "recovered": lambda: rt.actor_handles[k].incarnation > h.incarnation}

    def run(self) -> None:
        try:
            while not self.stop.wait(self.every_s):
                if self.last_fault_s is not None and time.monotonic() - self.t0 > self.last_fault_s:
                    continue
                try:
                    f = self._fault()
                except Exception as e:  # e.g. its target was being replaced: reported, and the soak goes on
                    emit({"event": "fault_error", "t_s": round(time.monotonic() - self.t0, 1),
                          "error": f"{type(e).__name__}: {str(e)[:300]}"})
                    continue
                if f is None:
                    continue
                t = time.monotonic()
                rec = None
                while not self.stop.is_set() and time.monotonic() - t < self.recovery_timeout_s:
                    if f["recovered"]():
                        rec = time.monotonic() - t
                        break
                    time.sleep(0.1)
                row = {"event": "fault", "kind": f["kind"], "target": f["target"], "t_s": round(t - self.t0, 1),
                       "recovery_s": None if rec is None else round(rec, 2)}
                self.faults.append(row)
                emit(row)
        except Exception as e:  # reported in the summary; the run itself goes on
            self.error = f"{type(e).__name__}: {e}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--every", type=float, default=30.0, help="seconds between faults")
    ap.add_argument("--duration", type=float, default=1800.0, help="seconds of training (runtime.max_wall_time_s)")
    ap.add_argument("--kinds", nargs="*", default=["env_actor", "replay_shard", "learner", "hang_env"],
                    choices=["env_actor", "replay_shard", "learner", "hang_env", "hang_learner"])
    ap.add_argument("--config", default=str(REPO / "configs/quickstart.yaml"))
    ap.add_argument("--checkpoint-every", type=float, default=10.0, help="replay.checkpoint_every_s")
    ap.add_argument("--stuck-timeout", type=float, default=10.0, help="runtime.actor_stuck_timeout_s")
    ap.add_argument("--learner-stuck-timeout", type=float, default=30.0, help="runtime.learner_stuck_timeout_s")
    ap.add_argument("--learner-checkpoint-every", type=int, default=50, help="learner.checkpoint_every (updates)")
    ap.add_argument("--recovery-timeout", type=float, default=120.0,
                    help="seconds a fault waits for its recovery (its recovery_s is null past it); the next fault "
                         "comes --every seconds after the recovery, so a hang is found (after its stuck timeout) "
                         "before the next fault")
    ap.add_argument("--memory-every", type=float, default=30.0)
    ap.add_argument("--warmup-min", type=float, default=5.0, help="memory growth is measured after this")
    ap.add_argument("--run-dir", default=None, help="default: a temporary directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = ap.parse_args()

    import ray

    from distrl.cli import prepare_run
    from distrl.runtime.ray_app import RayRuntime

    psutil = importlib.import_module("psutil")  # ships with ray: ray/thirdparty_files is on sys.path after `import ray`
    run_root = args.run_dir or tempfile.mkdtemp(prefix="distrl_chaos_")
    faults_allowed = int(args.duration / args.every) + 1
    cfg, run_dir, _ = prepare_run(args.config, [
        f"runtime.run_dir={run_root}", "logging.progress=false", "logging.wandb=disabled",
        "logging.log_every_s=1", f"runtime.max_wall_time_s={args.duration}", "runtime.total_env_steps=1000000000",
        f"replay.checkpoint_every_s={args.checkpoint_every}", f"runtime.actor_stuck_timeout_s={args.stuck_timeout}",
        f"runtime.actor_restarts={faults_allowed}", f"runtime.learner_restarts={faults_allowed}",
        f"runtime.shard_restarts={faults_allowed}",
        f"runtime.learner_stuck_timeout_s={args.learner_stuck_timeout}",
        f"learner.checkpoint_every={args.learner_checkpoint_every}", *args.overrides])
    runtime = RayRuntime(cfg, run_dir)
    # The last fault comes early enough to recover before the run stops (its clock starts after set-up, later
    # than chaos.t0): a learner hang injected seconds before the end was "recovered" only after the shutdown.
    quiet = max(args.stuck_timeout, args.learner_stuck_timeout) + 10.0
    chaos = Chaos(runtime, ray, args.kinds, args.every, args.seed, args.recovery_timeout,
                  last_fault_s=max(0.0, args.duration - quiet))
    memory: list[dict[str, Any]] = []
    done = threading.Event()

    def sample_memory() -> None:
        while not done.wait(args.memory_every):
            row = {"event": "memory", "t_s": round(time.monotonic() - chaos.t0, 1), **tree_memory(psutil)}
            memory.append(row)
            emit(row)

    threads = [threading.Thread(target=chaos.run, daemon=True), threading.Thread(target=sample_memory, daemon=True)]
    for th in threads:
        th.start()
    error = None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            summary = runtime.train()
    except Exception as e:
        summary, error = {}, f"{type(e).__name__}: {e}"
    chaos.stop.set()
    done.set()
    for th in threads:
        th.join(10)
    kinds = sorted({f["kind"] for f in chaos.faults})
    recovered = [f for f in chaos.faults if f["recovery_s"] is not None]
    warm = args.warmup_min * 60
    roles = sorted({r for m in memory if m['t_s'] >= warm for r in m['pss_by_role_mb']})
    emit({
        "event": "summary", "run_dir": str(run_dir), "duration_s": args.duration, "every_s": args.every,
        "error": error, "chaos_error": chaos.error,
        "faults": len(chaos.faults), "faults_by_kind": {k: sum(f["kind"] == k for f in chaos.faults) for k in kinds},
        "recoveries": len(recovered),
        "recoveries_by_kind": {k: sum(f["kind"] == k for f in recovered) for k in kinds},
        "longest_recovery_s": max((f["recovery_s"] for f in recovered), default=None),
        "lost_inserts": summary.get("replay_lost_inserts"), "shard_restarts": summary.get("replay_shard_restarts"),
        "stale_priority_updates": summary.get("replay_stale_priority_updates"),
        "actor_restarts": summary.get("actor_restarts"), "learner_restarts": summary.get("learner_restarts"),
        "learner_updates_lost": summary.get("learner_updates_lost"), "env_steps": summary.get("env_steps"),
        "episode_return": summary.get("episode_return"), "success_rate": summary.get("success_rate"),
        "rss_mb_first": memory[0]["rss_mb"] if memory else None,
        "rss_mb_last": memory[-1]["rss_mb"] if memory else None,
        "pss_mb_first": memory[0]["pss_mb"] if memory else None,
        "pss_mb_last": memory[-1]["pss_mb"] if memory else None,
        "rss_growth_after_warmup": growth(memory, "rss_mb", warm),
        "pss_growth_after_warmup": growth(memory, "pss_mb", warm),
        "uss_growth_after_warmup": growth(memory, "uss_mb", warm),
        "pss_growth_after_warmup_without_replay": growth(memory, "pss_mb", warm, exclude_role=REPLAY_ROLE),
        "pss_mb_by_role_after_warmup": {  # [first sample after the warm-up, last sample] per role
            r: [next((m["pss_by_role_mb"].get(r, 0.0) for m in memory if m["t_s"] >= warm), None),
                memory[-1]["pss_by_role_mb"].get(r, 0.0)] for r in roles},
    })


if __name__ == "__main__":
    main()
