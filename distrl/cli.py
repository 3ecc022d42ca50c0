"""Command line: ``distrl train`` and ``distrl eval``.

::

    distrl train                                   # the quickstart: MiniHack-Room-5x5, local Ray, wandb offline
    distrl train configs/pong.yaml learner.lr=3e-4 --learner.batch_size 64
    distrl train configs/quickstart.yaml --local   # everything in one process (debug with breakpoint())
    distrl train configs/x.yaml --address auto     # join a running cluster (or set RAY_ADDRESS)
    distrl train --resume runs/my-run              # continue a run with its stored config and counters
    distrl eval runs/my-run/checkpoints/learner.pt --episodes 10 --video out.mp4   # sampled, as trained
    distrl eval runs/my-run/checkpoints/learner.pt --greedy                         # argmax actions
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distrl import storage
from distrl.config import ConfigError, ExperimentConfig, load_config, quickstart_config, save_config


def _split_overrides(items: list[str]) -> list[str]:
    """Accept ``a.b=v``, ``--a.b=v`` and ``--a.b v`` forms; return ``a.b=v`` strings."""
    out: list[str] = []
    i = 0
    while i < len(items):
        tok = items[i]
        if tok.startswith("--") and "=" not in tok:
            if i + 1 >= len(items):
                raise ConfigError(f"override {tok!r} has no value")
            out.append(f"{tok[2:]}={items[i + 1]}")
            i += 2
            continue
        out.append(tok.lstrip("-"))
        i += 1
    return out


@dataclass(frozen=True)
class RunSetup:
    """A resolved run: its config, where it is kept (``location``: an absolute path or a remote URI, see
    :mod:`distrl.storage`), the local directory this process writes (``location`` itself, or its staging copy)
    and whether it continues an earlier run."""

    cfg: ExperimentConfig
    location: str
    run_dir: Path
    resuming: bool


def prepare_run(
    config: str | None,
    overrides: list[str],
    resume: str | None = None,
    local: bool = False,
    address: str | None = None,
) -> tuple[ExperimentConfig, Path, bool]:
    """Resolve the config and the run directory. Returns (cfg, run_dir, resuming); see :func:`resolve_run`."""
    r = resolve_run(config, overrides, resume, local, address)
    return r.cfg, r.run_dir, r.resuming


def resolve_run(
    config: str | None,
    overrides: list[str],
    resume: str | None = None,
    local: bool = False,
    address: str | None = None,
) -> RunSetup:
    """:func:`plan_run` then :func:`create_run`: the config resolved and a new run's directory created."""
    return create_run(plan_run(config, overrides, resume, local, address))


def plan_run(
    config: str | None,
    overrides: list[str],
    resume: str | None = None,
    local: bool = False,
    address: str | None = None,
) -> RunSetup:
    """Resolve the config and the run location, creating nothing for a new run (:func:`create_run` does).

    The location is ``runtime.run_dir/<run_name>`` made absolute (:func:`distrl.storage.resolve_location`: a
    relative ``runtime.run_dir`` inside a ``ray job submit`` job goes under ``~/distrl``), or a remote URI, whose
    run is staged in a local directory and pulled back on ``--resume``. A new run refuses an existing run
    location; ``--resume LOCATION`` reuses its stored config, and refuses a config given on the command line that
    differs from it in anything but the runtime, logging and eval sections.
    """
    extra = list(overrides)
    if local:
        given = [o for o in overrides if o.partition("=")[0].strip() == "runtime.mode"]
        if any(o.partition("=")[2].strip() != "local" for o in given):
            raise ConfigError(f"runtime.mode on the command line: --local contradicts the override {given[-1]!r}; "
                              "give one of them")
        extra.append("runtime.mode=local")
    if address:
        extra.append(f"runtime.address={address}")
    if resume:
        location = storage.resolve_location(resume)
        run_dir = storage.staging_dir(location)
        if storage.is_remote(location):
            fs, root = storage.filesystem(location)
            for entry in fs.ls(root, detail=False) if fs.exists(root) else []:
                name = entry.rstrip("/").rsplit("/", 1)[-1]
                if name != "replay":  # each replay shard pulls its own checkpoint, on its node
                    storage.pull(storage.join(location, name), run_dir / name)
        stored_path = run_dir / "config.yaml"
        if not stored_path.is_file():
            raise ConfigError(f"--resume {location}: no config.yaml there; is it a distrl run directory?")
        stored = load_config(stored_path)
        if config:
            given = load_config(config, extra)
            if given.fingerprint() != stored.fingerprint():
                raise ConfigError(
                    f"--resume {run_dir}: {config} (with overrides) differs from the run's stored config "
                    f"{stored_path} outside the runtime, logging and eval sections; refusing to resume"
                )
            cfg = given
        else:
            cfg = load_config(stored_path, extra)
        return RunSetup(cfg, location, run_dir, True)
    cfg = load_config(config, extra) if config else quickstart_config(extra)
    name = cfg.runtime.run_name or time.strftime("%Y%m%d-%H%M%S") + "-" + re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.env.name)
    location = storage.join(storage.resolve_location(cfg.runtime.run_dir), name)
    if storage.exists(storage.join(location, "config.yaml")):
        raise ConfigError(
            f"run directory {location} already holds a run; pass --resume {location} to continue it or choose "
            "another runtime.run_name"
        )
    return RunSetup(cfg, location, storage.staging_dir(location), False)


def create_run(run: RunSetup) -> RunSetup:
    """Create a new run's directory and store its config in it, after checking its learner extras (an unknown
    one fails here, before a run directory or an actor exists); a resumed run is returned as it is."""
    if run.resuming:
        return run
    from distrl.learners.extra_names import enabled_extras  # names only: the driver does not load torch

    enabled_extras(run.cfg)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(run.cfg, run.run_dir / "config.yaml")
    storage.push(run.run_dir / "config.yaml", storage.join(run.location, "config.yaml"))
    return run


def cmd_train(args: argparse.Namespace) -> int:
    plan = plan_run(args.config, _split_overrides(args.overrides), args.resume, args.local, args.address)
    for advice in plan.cfg.advisories():
        print(f"distrl: warning: {advice}", file=sys.stderr)
    if plan.cfg.runtime.mode == "local":
        from distrl.runtime.local import LocalRuntime

        run = create_run(plan)
        _print_run_dir(run)
        runtime: Any = LocalRuntime(run.cfg, run.run_dir, resume=run.resuming)
    else:
        import ray

        from distrl.runtime.ray_start import start_ray_while_importing

        # Ray's start mostly waits on its own processes: the runtime's imports (torch, models, envs) run beside
        # it, and the run directory is created once they are done (create_run checks the extras with them).
        owns_ray = start_ray_while_importing(plan.cfg, "distrl.runtime.ray_app")
        try:
            run = create_run(plan)
            _print_run_dir(run)
            from distrl.runtime.ray_app import RayRuntime

            runtime = RayRuntime(run.cfg, run.run_dir, resume=run.resuming, location=run.location, owns_ray=owns_ray)
        except BaseException:
            if owns_ray:
                ray.shutdown()
            raise
    try:
        summary = runtime.train()
    finally:
        storage.push(run.run_dir, run.location)  # a remote location gets everything this node wrote, even on failure
    print(json.dumps({"run_dir": run.location, **summary}))
    return 0


def _print_run_dir(run: RunSetup) -> None:
    staged = f" (staged in {run.run_dir})" if storage.is_remote(run.location) else ""
    print(f"distrl: run directory {run.location}{staged}", flush=True)


def cmd_eval(args: argparse.Namespace) -> int:
    from distrl.runtime.evaluate import describe, evaluate_policy, load_policy

    if args.sample and args.greedy:
        raise ConfigError("--sample and --greedy contradict each other (sampling is the default)")
    if args.sample:
        print("distrl: --sample is the default now (and deprecated); --greedy takes argmax actions", file=sys.stderr)
    cfg, weights = load_policy(args.checkpoint, _split_overrides(args.overrides))
    result = evaluate_policy(cfg, weights, args.episodes, greedy=args.greedy, video=args.video, seed=args.seed)
    print(json.dumps({"checkpoint": str(args.checkpoint), **result.to_dict()}))
    print(describe(result, cfg.eval.stuck_steps), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distrl", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an agent")
    t.add_argument("config", nargs="?", default=None, help="YAML config (default: the embedded quickstart)")
    t.add_argument("overrides", nargs=argparse.REMAINDER, help="section.key=value overrides")
    t.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue the run in RUN_DIR")
    t.add_argument("--local", action="store_true", help="run everything in this process (no Ray)")
    t.add_argument("--address", default=None, help="Ray address to join (default: RAY_ADDRESS or a new local Ray)")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="run episodes with a checkpoint (sampled actions, as trained)")
    e.add_argument("checkpoint")
    e.add_argument("overrides", nargs=argparse.REMAINDER,
                   help="section.key=value overrides (e.g. eval.max_steps=500, eval.stuck_steps=50)")
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--greedy", action="store_true",
                   help="take the argmax action instead of sampling; episodes that repeat themselves are cut short "
                        "and reported as stuck")
    e.add_argument("--sample", action="store_true", help=argparse.SUPPRESS)  # deprecated: sampling is the default
    e.add_argument("--video", default=None, help="write an mp4 (GIF without PyAV) of the first episode")
    e.add_argument("--seed", type=int, default=None, help="base episode seed (default: from the run's env.seed)")
    e.set_defaults(fn=cmd_eval)

    # argparse puts --flags after the positional config into REMAINDER; pull known flags back out.
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_hoist_flags(argv))
    if getattr(args, "config", None) and ("=" in args.config or args.config.startswith("-")):
        args.overrides = [args.config, *args.overrides]
        args.config = None
    try:
        return int(args.fn(args))
    except ConfigError as e:
        print(f"distrl: config error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if _is_checkpoint_error(e):  # a refused learner or replay checkpoint: no traceback, like a config error
            print(f"distrl: checkpoint error: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("distrl: interrupted", file=sys.stderr)
        return 130


def _is_checkpoint_error(e: BaseException) -> bool:
    """A CheckpointError, also as raised by ``ray.get`` (a RayTaskError that subclasses its cause). Imported only
    here: distrl.replay imports torch, which ``distrl train --help`` and config errors never need."""
    if "distrl.replay.checkpoint" not in sys.modules:
        return False  # nothing that raises one was imported
    from distrl.replay.checkpoint import CheckpointError

    return isinstance(e, CheckpointError)


_FLAGS_WITH_VALUE = {"--resume", "--address", "--episodes", "--video", "--seed"}
_FLAGS_BOOL = {"--local", "--sample", "--greedy"}


def _hoist_flags(argv: list[str]) -> list[str]:
    """Move distrl's own flags in front of the free-form overrides so argparse sees them."""
    if not argv:
        return argv
    head, rest, out = argv[:1], argv[1:], []
    i = 0
    while i < len(rest):
        tok = rest[i]
        name = tok.split("=", 1)[0]
        if name in _FLAGS_BOOL:
            head.append(tok)
        elif name in _FLAGS_WITH_VALUE:
            if "=" in tok:
                head.append(tok)
            elif i + 1 < len(rest):
                head.extend([tok, rest[i + 1]])
                i += 1
        else:
            out.append(tok)
        i += 1
    return head + out


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
