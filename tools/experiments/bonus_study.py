"""The count finding of "A Study of Global and Episodic Bonuses for Exploration in Contextual MDPs", at small scale.

The study (ALGORITHMS.md §1.1, §1.7) found, with (x, y) counts on MiniHack navigation: a *global* count bonus
``1/sqrt(N(s))`` works when every episode plays the same layout (|C| = 1) and fails when each episode has a new
one (|C| = inf); an *episodic* bonus ``I[N_e(s) = 1]`` works with new layouts; their *product* (GEB eq. 8) is the
one that does well in both. This tool trains distrl on one MiniHack navigation task in the two settings

* ``fixed``: ``env.num_levels=1``: every episode of every env plays the same level (chosen by ``env.seed``,
  which is set to the run's seed, so seeds see different layouts);
* ``procgen``: ``env.num_levels=0``: a new level every episode (MiniHack's default);

with four bonuses: ``none``, ``episodic`` (``bonus.episodic=count``), ``global`` (``bonus.glob=count``) and
``product`` (both, ``bonus.combine=mult``), state key ``bonus.count_key`` (default the agent's position),
episodic form ``first_visit``. Each (setting, bonus, seed) is one ``distrl train`` run in a subprocess with a
wall-time budget (``--minutes``) or an env-step budget (``--env-steps``), run one after another so each gets the
machine. Success rate is the run's ``charts/success_rate`` (a sliding window over the last episodes).

Output: one JSON object per line on stdout: ``{"experiment": "bonus_study", "setting", "bonus", "seed", ...,
"curve": [[env_steps, success_rate, wall_s], ...]}`` per run, then one ``{"experiment": "bonus_study_summary",
...}`` per (setting, bonus) with the mean and spread over seeds of the final success rate and of the mean
success over the last third of the run's env steps. It writes ``docs/results/bonus_study.md`` (the table,
with the command and machine) and ``docs/results/bonus_study.png`` (success vs env steps, one panel per
setting; needs matplotlib, the ``bench`` extra; without it the PNG is skipped and a line says so).

Usage::

    .venv/bin/python tools/experiments/bonus_study.py --minutes 0.5 --seeds 1          # smoke run (~8 min)
    .venv/bin/python tools/experiments/bonus_study.py --env-steps 2000000 --seeds 3    # the study (hours)
    .venv/bin/python tools/experiments/bonus_study.py --env-steps 2000000 --seeds 0 --merge out.jsonl  # table again

An env-step budget compares the bonuses at equal experience; a wall-time budget on a shared machine gives
runs very different step counts (the smoke run above: 4k-29k steps in 30 s under heavy load).
    .venv/bin/python tools/experiments/bonus_study.py --env MiniHack-MultiRoom-N6-Lava-v0 --env-steps 2000000 \\
        --bonuses global product --set bonus.coef=0.1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from distrl.logging.sinks import read_jsonl

ROOT = Path(__file__).resolve().parents[2]

SETTINGS: dict[str, list[str]] = {
    "fixed": ["env.num_levels=1"],
    "procgen": ["env.num_levels=0"],
}
BONUSES: dict[str, list[str]] = {
    "none": ["bonus.episodic=none", "bonus.glob=none"],
    "episodic": ["bonus.episodic=count", "bonus.glob=none"],
    "global": ["bonus.episodic=none", "bonus.glob=count"],
    "product": ["bonus.episodic=count", "bonus.glob=count", "bonus.combine=mult"],
}


def log(msg: str) -> None:
    print(f"[bonus_study] {msg}", file=sys.stderr, flush=True)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def run_overrides(args: argparse.Namespace, setting: str, bonus: str, seed: int, run_dir: Path, name: str) -> list[str]:
    budget = (
        [f"runtime.total_env_steps={args.env_steps}", "runtime.max_wall_time_s=0"]
        if args.env_steps
        else ["runtime.total_env_steps=1000000000", f"runtime.max_wall_time_s={args.minutes * 60:.1f}"]
    )
    return [
        f"env.name={args.env}",
        f"env.seed={seed}",
        f"runtime.seed={seed}",
        *SETTINGS[setting],
        *BONUSES[bonus],
        f"bonus.count_key={args.count_key}",
        "bonus.count_form=first_visit",
        f"runtime.mode={args.runtime}",
        f"runtime.run_dir={run_dir}",
        f"runtime.run_name={name}",
        *budget,
        "eval.every_updates=0",
        "logging.wandb=disabled",
        "logging.progress=false",
        f"logging.log_every_s={args.log_every_s}",
        *args.set,
    ]


def run_child(cmd: list[str], timeout: float, out: Path, err: Path) -> int:
    """Run ``cmd`` in its own process group; on timeout stop the group (SIGTERM, then SIGKILL)."""
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fo, stderr=fe, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"run exceeded {timeout:.0f}s; stopping it")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                return proc.wait()


def read_curve(metrics: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(metrics) if metrics.is_file() else []
    return [r for r in rows if "charts/env_steps" in r]


def one_run(args: argparse.Namespace, setting: str, bonus: str, seed: int, work: Path) -> dict[str, Any]:
    name = f"{setting}_{bonus}_s{seed}"
    overrides = run_overrides(args, setting, bonus, seed, work, name)
    cmd = [sys.executable, "-m", "distrl", "train", str(args.config), *overrides]
    log(" ".join(cmd[1:]))
    t0 = time.monotonic()
    limit = (args.minutes * 60 if not args.env_steps else 24 * 3600) + 300
    rc = run_child(cmd, limit, work / f"{name}.stdout", work / f"{name}.stderr")
    wall = time.monotonic() - t0
    if rc != 0:
        tail = (work / f"{name}.stderr").read_text()[-3000:]
        raise RuntimeError(f"distrl train ({name}) exited with {rc}:\n{tail}")
    rows = read_curve(work / name / "metrics.jsonl")
    curve = [
        [int(r["charts/env_steps"]), r.get("charts/success_rate"), round(float(r.get("charts/wall_time_s", 0.0)), 1)]
        for r in rows
        if r.get("charts/success_rate") is not None
    ]
    last = rows[-1] if rows else {}
    return {
        "experiment": "bonus_study",
        "env": args.env,
        "setting": setting,
        "bonus": bonus,
        "seed": seed,
        "count_key": args.count_key,
        "env_steps": int(last.get("charts/env_steps", 0)),
        "wall_s": round(wall, 1),
        "success_rate": last.get("charts/success_rate"),
        "success_last_third": last_third_mean(curve),
        "episode_return": last.get("charts/episode_return"),
        "episodic_unique": last.get("charts/episodic_unique"),
        "learner_updates": last.get("learner/updates"),
        "overrides": args.set,
        "run_dir": str(work / name),
        "curve": curve,
    }


def last_third_mean(curve: list[list[Any]]) -> float | None:
    """Mean success rate over the log points in the last third of the run's env steps."""
    if not curve:
        return None
    cut = curve[-1][0] * 2 / 3
    xs = [c[1] for c in curve if c[0] >= cut]
    return float(statistics.fmean(xs)) if xs else None


def _stat(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"mean": None, "min": None, "max": None}
    return {"mean": round(statistics.fmean(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def summarise(results: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    for setting in args.settings:
        for bonus in args.bonuses:
            rs = [r for r in results if r["setting"] == setting and r["bonus"] == bonus]
            if not rs:
                continue
            final = [r["success_rate"] for r in rs if r["success_rate"] is not None]
            third = [r["success_last_third"] for r in rs if r["success_last_third"] is not None]
            out.append({
                "experiment": "bonus_study_summary",
                "env": args.env,
                "setting": setting,
                "bonus": bonus,
                "seeds": len(rs),
                "env_steps_mean": round(statistics.fmean(r["env_steps"] for r in rs)),
                "success_final": _stat(final),
                "success_last_third": _stat(third),
            })
    return out


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model or platform.processor()})"


def write_table(summary: list[dict[str, Any]], args: argparse.Namespace, path: Path, argv: list[str],
                seeds: list[int]) -> None:
    budget = f"{args.env_steps} env steps" if args.env_steps else f"{args.minutes:g} min"
    lines = [
        "# Global vs episodic vs product count bonuses (tools/experiments/bonus_study.py)",
        "",
        f"`{args.env}`, state key `{args.count_key}`, {budget} per run, seeds {seeds}, "
        f"runtime `{args.runtime}`, base config `{Path(args.config).name}`, on {machine()}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        f"Command: `.venv/bin/python tools/experiments/bonus_study.py {' '.join(argv)}`",
        "",
        "Success rate (sliding window of training episodes): final, and the mean over the last third of each "
        "run's env steps; mean over seeds [min, max].",
        "",
        "| setting | bonus | seeds | env steps | success (final) | success (last third) |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary:
        f, t = s["success_final"], s["success_last_third"]

        def cell(x: dict[str, float | None]) -> str:
            return "-" if x["mean"] is None else f"{x['mean']:.2f} [{x['min']:.2f}, {x['max']:.2f}]"

        lines.append(f"| {s['setting']} | {s['bonus']} | {s['seeds']} | {s['env_steps_mean']:,} | {cell(f)} | "
                     f"{cell(t)} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def plot(results: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (the bench extra: bash tools/install.sh bench): no PNG written")
        return False
    fig, axes = plt.subplots(1, len(args.settings), figsize=(5.5 * len(args.settings), 4), squeeze=False)
    colors = {"none": "tab:gray", "episodic": "tab:blue", "global": "tab:orange", "product": "tab:green"}
    for ax, setting in zip(axes[0], args.settings):
        for bonus in args.bonuses:
            for i, r in enumerate(x for x in results if x["setting"] == setting and x["bonus"] == bonus):
                if not r["curve"]:
                    continue
                xs = [c[0] for c in r["curve"]]
                ys = [c[1] for c in r["curve"]]
                ax.plot(xs, ys, color=colors.get(bonus), alpha=0.8, label=bonus if i == 0 else None)
        ax.set_title(f"{setting} ({'one layout' if setting == 'fixed' else 'new layout every episode'})")
        ax.set_xlabel("env steps")
        ax.set_ylabel("success rate")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.suptitle(f"{args.env}: count bonuses ({args.count_key}), one line per seed")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="MiniHack-MultiRoom-N4-v0", help="MiniHack navigation task")
    p.add_argument("--config", default=str(ROOT / "configs" / "minihack_small.yaml"), help="base distrl config")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-time budget per run")
    p.add_argument("--env-steps", type=int, default=0, help="env-step budget per run instead of --minutes")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--bonuses", nargs="+", default=list(BONUSES), choices=list(BONUSES))
    p.add_argument("--count-key", default="position", choices=["position", "message", "glyphs", "obs"])
    p.add_argument("--runtime", default="local", choices=["local", "ray"], help="runtime.mode of the runs")
    p.add_argument("--log-every-s", type=float, default=5.0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra distrl config override for every run, repeatable (e.g. bonus.coef=0.1)")
    p.add_argument("--merge", nargs="+", default=[], metavar="JSONL",
                   help="earlier runs' stdout (JSON lines): their per-run lines join this run's in the table and "
                        "plot (a study stopped part-way, or run in several sittings; --seeds 0 only rewrites them)")
    p.add_argument("--work", default=str(ROOT / "runs" / "bonus_study"), help="where the runs are kept")
    p.add_argument("--out", default=str(ROOT / "docs" / "results"), help="where the table and plot go")
    args = p.parse_args(argv)
    if args.minutes <= 0 and not args.env_steps:
        p.error("give a positive --minutes or --env-steps")
    results = [r for path in args.merge for r in read_jsonl(Path(path)) if r.get("experiment") == "bonus_study"]
    work = Path(args.work) / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    log(f"runs under {work}")
    for seed in range(args.seeds):
        for setting in args.settings:
            for bonus in args.bonuses:
                r = one_run(args, setting, bonus, seed, work)
                emit(r)
                results.append(r)
    summary = summarise(results, args)
    for s in summary:
        emit(s)
    out = Path(args.out)
    write_table(summary, args, out / "bonus_study.md", argv, sorted({int(r["seed"]) for r in results}))
    png = plot(results, args, out / "bonus_study.png")
    emit({"experiment": "bonus_study_files", "table": str(out / "bonus_study.md"),
          "plot": str(out / "bonus_study.png") if png else None, "runs": str(work)})


if __name__ == "__main__":
    main()
