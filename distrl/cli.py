"""Command line: ``distrl train`` and ``distrl eval``.

::

    distrl train                                   # the quickstart: MiniHack-Room-5x5, local Ray, wandb offline
    distrl train configs/pong.yaml learner.lr=3e-4 --learner.batch_size 64
    distrl train configs/quickstart.yaml --local   # everything in one process (debug with breakpoint())
    distrl train configs/x.yaml --address auto     # join a running cluster (or set RAY_ADDRESS)
    distrl train --resume runs/my-run              # continue a run with its stored config and counters
    distrl eval runs/my-run/checkpoints/learner.pt --episodes 10 --video out.mp4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from distrl.config import ConfigError, ExperimentConfig, config_from_dict, load_config, save_config


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


def prepare_run(
    config: str | None,
    overrides: list[str],
    resume: str | None = None,
    local: bool = False,
    address: str | None = None,
) -> tuple[ExperimentConfig, Path, bool]:
    """Resolve the config and the run directory. Returns (cfg, run_dir, resuming).

    A new run refuses an existing run directory; ``--resume DIR`` reuses DIR's stored config, and refuses a config
    given on the command line that differs from it in anything but the runtime/logging sections.
    """
    extra = list(overrides)
    if local:
        extra.append("runtime.mode=local")
    if address:
        extra.append(f"runtime.address={address}")
    if resume:
        run_dir = Path(resume)
        stored_path = run_dir / "config.yaml"
        if not stored_path.is_file():
            raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a distrl run directory?")
        import yaml

        stored = config_from_dict(yaml.safe_load(stored_path.read_text()), source=str(stored_path))
        if config:
            given = load_config(config, extra)
            if given.fingerprint() != stored.fingerprint():
                raise ConfigError(
                    f"--resume {run_dir}: {config} (with overrides) differs from the run's stored config "
                    f"{stored_path} outside the runtime/logging sections; refusing to resume"
                )
            cfg = given
        else:
            cfg = load_config(stored_path, extra)
        return cfg, run_dir, True
    cfg = load_config(config, extra)
    name = cfg.runtime.run_name or time.strftime("%Y%m%d-%H%M%S") + "-" + re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.env.name)
    run_dir = Path(cfg.runtime.run_dir) / name
    if (run_dir / "config.yaml").exists():
        raise ConfigError(
            f"run directory {run_dir} already holds a run; pass --resume {run_dir} to continue it or choose "
            "another runtime.run_name"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return cfg, run_dir, False


def cmd_train(args: argparse.Namespace) -> int:
    cfg, run_dir, resuming = prepare_run(
        args.config, _split_overrides(args.overrides), args.resume, args.local, args.address
    )
    if cfg.runtime.mode == "local":
        from distrl.runtime.local import LocalRuntime

        runtime = LocalRuntime(cfg, run_dir, resume=resuming)
    else:
        from distrl.runtime.ray_app import RayRuntime

        runtime = RayRuntime(cfg, run_dir, resume=resuming)
    summary = runtime.train()
    print(json.dumps({"run_dir": str(run_dir), **summary}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from distrl.runtime.evaluate import evaluate

    result = evaluate(
        args.checkpoint,
        episodes=args.episodes,
        greedy=not args.sample,
        video=args.video,
        overrides=_split_overrides(args.overrides),
        seed=args.seed,
    )
    print(json.dumps(result))
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

    e = sub.add_parser("eval", help="run episodes with a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("overrides", nargs=argparse.REMAINDER, help="section.key=value overrides (e.g. env.name=...)")
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--sample", action="store_true", help="sample actions instead of greedy argmax")
    e.add_argument("--video", default=None, help="write an mp4/gif of the first episode (pixel envs and MiniHack)")
    e.add_argument("--seed", type=int, default=12345)
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
    except KeyboardInterrupt:
        print("distrl: interrupted", file=sys.stderr)
        return 130


_FLAGS_WITH_VALUE = {"--resume", "--address", "--episodes", "--video", "--seed"}
_FLAGS_BOOL = {"--local", "--sample"}


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
