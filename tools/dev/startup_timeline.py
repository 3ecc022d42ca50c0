"""Where a Ray run's start-up goes: a timeline of the runtime's set-up steps, from launch to the first env step.

Runs ``distrl train`` (the quickstart, or ``--config``) in this process on a local Ray with a short step
budget, with the runtime's set-up calls wrapped to record when each began and ended: Ray's own start
(``start_ray``) and, beside it in a thread, the runtime's imports (torch, models, envs); the replay shards,
the learners (``create``: processes started; ``form``: built and ready), the first publish, the start-of-run
checkpoint, the env actors' creation, the run monitor (wandb), and the first actor report with env steps (the
driver polls actors once a second). Times are seconds since this script started (its own imports included).
Prints one JSON object per step on stdout, then one with the totals; the run's own output goes to stderr.

Usage::

    .venv/bin/python tools/dev/startup_timeline.py
    .venv/bin/python tools/dev/startup_timeline.py --config configs/defaults.yaml
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # before the heavy imports: they are part of a run's start-up

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Any  # noqa: E402

_STDOUT = sys.stdout
EVENTS: list[dict[str, Any]] = []


def _now() -> float:
    return round(time.monotonic() - T0, 3)


def _wrap(owner: Any, name: str, label: str) -> None:
    """Record the start and end of every call of ``owner.name`` (a module function or a class's method)."""
    raw = owner.__dict__[name]
    is_static = isinstance(raw, staticmethod)
    f = raw.__func__ if is_static else raw

    @functools.wraps(f)
    def timed(*a: Any, **k: Any) -> Any:
        start = _now()
        try:
            return f(*a, **k)
        finally:
            EVENTS.append({"step": label, "start_s": start, "end_s": _now()})

    setattr(owner, name, staticmethod(timed) if is_static else timed)


FIRST_STEPS: dict[str, float] = {}


def _wrap_runtime() -> None:
    """Time the Ray runtime's set-up steps and its first actor report with env steps."""
    from distrl.runtime import ray_app
    from distrl.runtime.ray_learners import LearnerGroup

    _wrap(ray_app, "make_ray_shards", "replay_shards_created")
    _wrap(LearnerGroup, "create", "learners_created")
    _wrap(LearnerGroup, "form", "learners_ready")
    _wrap(LearnerGroup, "publish", "first_publish")
    _wrap(ray_app.RayRuntime, "_save_learner", "learner_checkpoint")
    _wrap(ray_app, "start_env_actors", "env_actors_created")
    _wrap(ray_app, "RunMonitor", "run_monitor")
    poll = ray_app.RayRuntime._poll_actors

    def polled(self: Any, *a: Any, **k: Any) -> Any:
        out = poll(self, *a, **k)
        steps = a[4]  # _poll_actors(actors, shards, store, restarts, actor_steps, ...): env steps per actor
        if "first_env_steps" not in FIRST_STEPS and any(v > 0 for v in steps.values()):
            FIRST_STEPS["first_env_steps"] = _now()
        return out

    ray_app.RayRuntime._poll_actors = polled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help="distrl config (default: the quickstart)")
    ap.add_argument("--env-steps", type=int, default=4000)
    args = ap.parse_args()
    imported = _now()
    from distrl.cli import main as cli_main
    from distrl.runtime import ray_start

    EVENTS.append({"step": "imports", "start_s": imported, "end_s": _now()})
    # `distrl train` starts Ray while a thread imports the runtime (torch, models, envs): the runtime's set-up
    # calls are wrapped once that import is done.
    _wrap(ray_start, "start_ray", "ray_start")
    _wrap(ray_start, "_import_quietly", "runtime_imports")
    start_while = ray_start.start_ray_while_importing

    def started(*a: Any, **k: Any) -> Any:
        out = start_while(*a, **k)
        _wrap_runtime()
        return out

    ray_start.start_ray_while_importing = started
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["train", *([args.config] if args.config else []), f"runtime.run_dir={tmp}",
                f"runtime.total_env_steps={args.env_steps}", "logging.wandb=offline", "logging.progress=false"]
        with contextlib.redirect_stdout(sys.stderr):
            rc = cli_main(argv)
    for e in EVENTS:
        print(json.dumps({"bench": "startup_timeline", **e, "duration_s": round(e["end_s"] - e["start_s"], 3)}),
              file=_STDOUT)
    ends = {e["step"]: e["end_s"] for e in EVENTS}
    print(json.dumps({"bench": "startup_timeline_total", "config": args.config or "quickstart", "rc": rc,
                      "first_env_steps_report_s": FIRST_STEPS.get("first_env_steps"),
                      "ray_started_s": ends.get("ray_start"), "runtime_imported_s": ends.get("runtime_imports"),
                      "learners_ready_s": ends.get("learners_ready"),
                      "run_monitor_s": ends.get("run_monitor")}), file=_STDOUT)


if __name__ == "__main__":
    main()
