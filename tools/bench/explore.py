"""Exploration benchmark: no bonus vs E3B x RND on MiniHack-MultiRoom-N4, success rate against env steps and wall
time, on this machine.

For each config and seed it runs ``distrl train`` (the real CLI, in a subprocess, one run after another) for a
wall-time budget, then reads the run's ``metrics.jsonl``: ``charts/success_rate`` is the success rate of the last
100 finished episodes. Configs are the presets in ``configs/`` (``--configs`` names them by their suffix:
``nobonus`` = ``configs/minihack_multiroom_nobonus.yaml``, ``e3b_rnd`` = ``..._e3b_rnd.yaml``; also ``e3b``,
``e3b_noveld``, ``counts``, and ``e3b_rnd_noreplay``: E3B x RND trained on fresh sequences only), all with the same
``--set`` overrides (default: the cheap MiniHack model and inline env vectorisation, what trains fastest on 2
cores; see ``CPU_OVERRIDES``). The presets differ from ``nobonus`` in their bonus lines, and ``e3b_rnd`` also in
its learner's proximal clip (``learner.ppo_clip=0.1 learner.ppo_clip_against=proximal``; ``--set
learner.ppo_clip=0`` measures it without).

Output (stdout, one JSON object per line; progress on stderr):

* ``{"bench": "explore", "config", "seed", "minutes", "wall_time_s", "env_steps", "success_rate", ...}``: one per
  (config, seed, time checkpoint) every ``--every`` minutes (default: 10 checkpoints per run), from the last
  metrics row logged by then;
* ``{"bench": "explore_run", ...}``: one per run: final numbers, the first time and env step at which success
  was above 0 and at least 0.5, the env-step rate, and ``collapses``: each time success fell below 0.5 after
  reaching 0.9, with the learner's and the bonus's metrics before and during it (:func:`collapses`); and
  ``stopped_early_min`` where the run ended more than a minute before its budget (stopped by hand, or failed);
* ``{"bench": "explore_summary", ...}``: per config, over seeds: final success (median, min, max), how many seeds
  were above 0 within 10 minutes and at least 0.5 within 30 minutes (the issue's goals; only counted when the
  runs were that long: a run stopped early counts for the minutes it ran).

It writes a PNG (success vs env steps and vs wall time, one line per run) to ``--png`` (default
``docs/results/explore_multiroom_n4.png``) and a Markdown table for BENCHMARKS.md to ``--md`` (default: the
PNG's path with ``.md``), and prints the table on stderr.

Usage::

    .venv/bin/python tools/bench/explore.py --minutes 0.5 --seeds 1                 # smoke run, ~2 min
    .venv/bin/python tools/bench/explore.py --minutes 30 --seeds 3                  # the issue's comparison, 3 h
    .venv/bin/python tools/bench/explore.py --minutes 10 --configs e3b_rnd counts --set learner.lr=3e-4
    .venv/bin/python tools/bench/explore.py --minutes 30 --minutes-for nobonus=10     # no bonus for 10 min only
    .venv/bin/python tools/bench/explore.py --report --run-dir DIR                   # table and plot of DIR's runs
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
import tempfile
import time
from pathlib import Path
from typing import Any

from distrl.config import load_config
from distrl.logging.sinks import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
PRESETS = {
    "nobonus": "configs/minihack_multiroom_nobonus.yaml",
    "e3b": "configs/minihack_multiroom_e3b.yaml",
    "e3b_rnd": "configs/minihack_multiroom_e3b_rnd.yaml",
    "e3b_rnd_noreplay": "configs/minihack_multiroom_e3b_rnd_noreplay.yaml",
    "e3b_noveld": "configs/minihack_multiroom_e3b_noveld.yaml",
    "counts": "configs/minihack_multiroom_counts.yaml",
}
CPU_OVERRIDES = [
    "model.encoder=nethack_small", "model.hidden_size=128", "model.glyph_embedding_dim=16",
    "env.observation_keys=[glyphs_crop,blstats]", "env.vectorization=inline", "env.num_envs=16",
]
"""The 2-core settings: configs/minihack_small.yaml's model, inline actors (BENCHMARKS.md: faster than subprocess
workers on 2 cores), 2 actors x 16 envs."""


def log(msg: str) -> None:
    print(f"[explore] {msg}", file=sys.stderr, flush=True)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows = read_jsonl(path) if path.is_file() else []
    return [r for r in rows if "charts/wall_time_s" in r and "charts/env_steps" in r]


def run_one(config: str, name: str, seed: int, minutes: float, args: argparse.Namespace,
            run_root: Path) -> tuple[int, Path, float]:
    """One ``distrl train`` run with a wall-time budget; returns (exit code, run dir, seconds the process took)."""
    over = [
        f"runtime.seed={seed}", f"env.seed={seed}", f"runtime.max_wall_time_s={minutes * 60:.0f}",
        "runtime.total_env_steps=1000000000", f"runtime.run_dir={run_root}", f"runtime.run_name={name}",
        "logging.wandb=disabled", "logging.progress=false", f"logging.log_every_s={args.log_every}",
        "eval.every_updates=0", "learner.checkpoint_every=0", *args.set,
    ]
    cmd = [sys.executable, "-m", "distrl", "train", str(ROOT / config), *over]
    if args.local:
        cmd.append("--local")
    log(" ".join(cmd[1:]))
    run_dir = run_root / name
    t0 = time.monotonic()
    with open(run_root / f"{name}.stdout", "w") as out, open(run_root / f"{name}.stderr", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, start_new_session=True)
        try:
            rc = proc.wait(timeout=minutes * 60 + 300)
        except subprocess.TimeoutExpired:
            log(f"{name}: still running {minutes * 60 + 300:.0f} s after start; stopping it")
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
    return rc, run_dir, time.monotonic() - t0


def first_at(rows: list[dict[str, Any]], threshold: float, strict: bool) -> dict[str, Any] | None:
    for r in rows:
        s = r.get("charts/success_rate")
        if s is not None and (s > threshold if strict else s >= threshold):
            return r
    return None


def checkpoints(rows: list[dict[str, Any]], every_s: float, end_s: float) -> list[tuple[float, dict[str, Any]]]:
    """(checkpoint time, last row logged by then) every ``every_s`` seconds up to ``end_s``."""
    out = []
    k = 1
    while k * every_s <= end_s + 1e-6:
        t = k * every_s
        before = [r for r in rows if r["charts/wall_time_s"] <= t + 0.5]
        if before:
            out.append((t, before[-1]))
        k += 1
    return out


DIAGNOSTICS = (
    "learner/entropy", "extras/bonus/intrinsic_share", "extras/bonus/running_std", "extras/bonus/episodic_p99",
    "extras/bonus/global_mean", "extras/e3b/idm_accuracy", "learner/policy_lag_mean", "learner/kl_mu_pi",
    "learner/trust_fraction", "learner/rho_mean", "learner/grad_norm", "learner/baseline_loss", "learner/value_mean",
    "extras/bonus/intrinsic_p99",
    "charts/episode_length", "charts/episodic_unique", "charts/episode_return",
)
"""What :func:`collapses` averages before and during each collapse (those a run logs)."""


def _means(rows: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for k in DIAGNOSTICS:
        vals = [float(r[k]) for r in rows if r.get(k) is not None]
        if vals:
            out[k] = float(f"{statistics.fmean(vals):.4g}")
    return out


def collapses(rows: list[dict[str, Any]], high: float = 0.9, low: float = 0.5,
              before_s: float = 120.0) -> list[dict[str, Any]]:
    """Each fall of the success rate below ``low`` after it had been at ``high`` or above: it starts at the last
    row at ``high`` or above before the fall and ends at the next such row (``end_min`` None: not back by the end
    of the run). With the lowest success in it, and the mean of each of :data:`DIAGNOSTICS` over the
    ``before_s`` seconds up to the start (``before``) and over the rows below ``high`` (``during``), so what
    changed when a learnt policy fell apart can be read off the run."""
    out: list[dict[str, Any]] = []
    scored = [r for r in rows if r.get("charts/success_rate") is not None]
    last_high: int | None = None
    i = 0
    while i < len(scored):
        s = scored[i]["charts/success_rate"]
        if s >= high:
            last_high = i
        elif last_high is not None and s < low:
            j = i
            while j < len(scored) and scored[j]["charts/success_rate"] < high:
                j += 1
            start, window = scored[last_high], scored[last_high + 1 : j]
            t0 = start["charts/wall_time_s"]
            pre = [r for r in scored[: last_high + 1] if r["charts/wall_time_s"] >= t0 - before_s]
            out.append({
                "start_min": _minutes(start), "start_steps": int(start["charts/env_steps"]),
                "end_min": _minutes(scored[j]) if j < len(scored) else None,
                "min_success": min(r["charts/success_rate"] for r in window),
                "before": _means(pre), "during": _means(window),
            })
            last_high = None
            i = j
            continue
        i += 1
    return out


def _minutes(r: dict[str, Any] | None) -> float | None:
    return None if r is None else round(r["charts/wall_time_s"] / 60, 3)


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"nobonus": "tab:gray", "e3b": "tab:blue", "e3b_rnd": "tab:red", "e3b_noveld": "tab:purple",
              "counts": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    labelled: set[str] = set()
    for run in runs:
        curve = run["curve"]
        if not curve:
            continue
        steps, wall, succ = zip(*curve)
        label = None if run["config"] in labelled else run["config"]
        labelled.add(run["config"])
        c = colors.get(run["config"], "k")
        axes[0].plot(steps, succ, color=c, alpha=0.8, label=label)
        axes[1].plot([w / 60 for w in wall], succ, color=c, alpha=0.8)
    axes[0].set_xlabel("env steps")
    axes[1].set_xlabel("wall time (minutes)")
    axes[0].set_ylabel("success rate (last 100 episodes)")
    for ax in axes:
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def markdown(summaries: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    lines = [
        "| config | seeds | minutes per run | final success (median [min, max]) | env steps (median) | "
        "success > 0 within 10 min | success ≥ 0.5 within 30 min | first success > 0 (min, median over seeds) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        firsts = [r["first_success_min"] for r in runs if r["config"] == s["config"]
                  and r["first_success_min"] is not None]
        first = f"{min(firsts):.1f}, {statistics.median(firsts):.1f}" if firsts else "never"
        fs = s["final_success"]
        lines.append(
            f"| {s['config']} | {s['seeds']} | {s['minutes']:g} | "
            f"{fs['median']:.2f} [{fs['min']:.2f}, {fs['max']:.2f}] | "
            f"{s['env_steps_median']:,.0f} | {s['above0_within_10min']} | {s['half_within_30min']} | {first} |"
        )
    return "\n".join(lines)


EARLY_STOP_SLACK_S = 60.0
"""A run that ended more than this before its wall-time budget was stopped early (or failed): it is labelled so."""


def collect(name: str, seed: int, minutes: float, every_s: float, run_dir: Path,
            process_s: float | None) -> dict[str, Any] | None:
    """Emit a finished run's checkpoint and run lines; return the run (with its curve), or None without metrics."""
    rows = read_rows(run_dir / "metrics.jsonl")
    if not rows:
        return None
    for t, r in checkpoints(rows, every_s, minutes * 60):
        emit({"bench": "explore", "config": name, "seed": seed, "minutes": round(t / 60, 3),
              "wall_time_s": round(r["charts/wall_time_s"], 1), "env_steps": int(r["charts/env_steps"]),
              "success_rate": r.get("charts/success_rate"), "episode_return": r.get("charts/episode_return"),
              "episodes": r.get("charts/episodes"), "intrinsic_share": r.get("extras/bonus/intrinsic_share"),
              "learner_updates": r.get("learner/updates")})
    last = rows[-1]
    first0, half = first_at(rows, 0.0, strict=True), first_at(rows, 0.5, strict=False)
    wall = last["charts/wall_time_s"]
    run = {
        "bench": "explore_run", "config": name, "seed": seed, "minutes": minutes, "wall_time_s": round(wall, 1),
        "process_s": None if process_s is None else round(process_s, 1), "env_steps": int(last["charts/env_steps"]),
        "env_steps_per_s": round(last["charts/env_steps"] / wall, 1) if wall > 0 else None,
        "learner_updates": last.get("learner/updates"), "episodes": last.get("charts/episodes"),
        "final_success": last.get("charts/success_rate"),
        "max_success": max((r.get("charts/success_rate") or 0.0) for r in rows),
        "first_success_min": _minutes(first0),
        "first_success_steps": None if first0 is None else int(first0["charts/env_steps"]),
        "success_half_min": _minutes(half),
        "success_half_steps": None if half is None else int(half["charts/env_steps"]),
        "run_dir": str(run_dir),
        "collapses": collapses(rows),
    }
    if wall < minutes * 60 - EARLY_STOP_SLACK_S:  # stopped (or crashed) well before its budget: say how long it ran
        run["stopped_early_min"] = round(wall / 60, 1)
    for c in run["collapses"]:
        end = "not back by the end" if c["end_min"] is None else f"back at {c['end_min']} min"
        log(f"{name}-seed{seed}: collapse from {c['start_min']} min (low {c['min_success']}, {end})")
    emit(run)
    run["curve"] = [(r["charts/env_steps"], r["charts/wall_time_s"], r.get("charts/success_rate") or 0.0)
                    for r in rows]
    return run


def recorded_minutes(run_dir: Path) -> float | None:
    """A finished run's wall-time budget in minutes, from the ``runtime.max_wall_time_s`` of its saved config (None
    when the run has no config or no budget): ``--report`` reports runs by the budget they ran under."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    budget = load_config(path).runtime.max_wall_time_s
    return budget / 60 if budget > 0 else None


def ran_minutes(run: dict[str, Any]) -> float:
    """The minutes a run counts for: its budget, or less where it was stopped early."""
    return min(run["minutes"], run.get("stopped_early_min") or run["minutes"])


def summarise(name: str, mine: list[dict[str, Any]]) -> dict[str, Any]:
    finals = [r["final_success"] or 0.0 for r in mine]
    minutes = min(ran_minutes(r) for r in mine)

    def count(key: str, limit: float) -> str:
        """Seeds that got there within the limit; runs shorter than it say so: the others are undecided."""
        k = sum(r[key] is not None and r[key] <= limit for r in mine)
        return f"{k}/{len(mine)}" + ("" if minutes >= limit else f" (runs of {minutes:g} min)")

    return {
        "bench": "explore_summary", "config": name, "seeds": len(mine), "minutes": minutes,
        "final_success": {"median": statistics.median(finals), "min": min(finals), "max": max(finals)},
        "env_steps_median": statistics.median(r["env_steps"] for r in mine),
        "env_steps_per_s_median": statistics.median(r["env_steps_per_s"] or 0.0 for r in mine),
        "above0_within_10min": count("first_success_min", 10),
        "half_within_30min": count("success_half_min", 30),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=None,
                    help="wall-time budget of each run (default 30; with --report, each run's own budget)")
    ap.add_argument("--minutes-for", nargs="*", default=[], metavar="CONFIG=MIN",
                    help="a different budget for some configs, e.g. nobonus=10")
    ap.add_argument("--seeds", type=int, default=3, help="seeds first..first+N-1 per config")
    ap.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    ap.add_argument("--configs", nargs="+", default=["nobonus", "e3b_rnd"], choices=sorted(PRESETS))
    ap.add_argument("--every", type=float, default=0.0, help="minutes between checkpoints (0: minutes / 10)")
    ap.add_argument("--local", action="store_true", help="single-process runtime instead of Ray")
    ap.add_argument("--set", nargs="*", default=CPU_OVERRIDES, help="overrides for every run (default: %(default)s)")
    ap.add_argument("--log-every", type=float, default=5.0, help="logging.log_every_s of the runs")
    ap.add_argument("--run-dir", default="", help="where runs go (default: a temp dir)")
    ap.add_argument("--report", action="store_true",
                    help="run nothing: the table and plot of the finished runs already in --run-dir")
    ap.add_argument("--png", default=str(ROOT / "docs/results/explore_multiroom_n4.png"))
    ap.add_argument("--md", default="", help="Markdown table path (default: the PNG path with .md)")
    args = ap.parse_args(argv)
    given_minutes = args.minutes is not None
    args.minutes = args.minutes if given_minutes else 30.0
    if args.minutes <= 0 or args.seeds < 1 or args.first_seed < 0:
        ap.error("--minutes must be > 0, --seeds >= 1 and --first-seed >= 0")
    minutes_for = {name: args.minutes for name in args.configs}
    for item in args.minutes_for:
        name, _, value = item.partition("=")
        if name not in minutes_for:
            ap.error(f"--minutes-for {item}: {name!r} is not one of --configs {args.configs}")
        try:
            minutes_for[name] = float(value)
        except ValueError:
            ap.error(f"--minutes-for {item}: {value!r} is not a number of minutes")
        if minutes_for[name] <= 0:
            ap.error(f"--minutes-for {item}: minutes must be > 0")
    if args.report and not args.run_dir:
        ap.error("--report needs --run-dir, the directory of the runs to report")
    run_root = Path(args.run_dir or tempfile.mkdtemp(prefix="distrl_explore_")).resolve()
    run_root.mkdir(parents=True, exist_ok=True)
    emit({"bench": "explore_machine", "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
          "loadavg_1m": round(os.getloadavg()[0], 2), "configs": args.configs, "seeds": args.seeds,
          "first_seed": args.first_seed,
          "minutes": minutes_for, "overrides": args.set, "runtime": "local" if args.local else "ray",
          "run_root": str(run_root), "report_only": args.report})
    runs: list[dict[str, Any]] = []
    # interleave configs so machine load drifts hit both alike
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name in args.configs:
            run_name = f"{name}-seed{seed}"
            if args.report and not given_minutes:
                minutes_for[name] = recorded_minutes(run_root / run_name) or minutes_for[name]
            minutes = minutes_for[name]
            every_s = (args.every or minutes / 10) * 60
            if args.report:
                rc, run_dir, process_s = 0, run_root / run_name, None
            else:
                rc, run_dir, process_s = run_one(PRESETS[name], run_name, seed, minutes, args, run_root)
            run = collect(name, seed, minutes, every_s, run_dir, process_s) if rc == 0 else None
            if run is None:
                err = run_root / f"{run_name}.stderr"
                tail = err.read_text()[-2000:] if err.is_file() else "(no stderr file)"
                log(f"{run_name}: exit code {rc}, no metric rows in {run_dir}; stderr tail:\n{tail}")
                emit({"bench": "explore_run", "config": name, "seed": seed, "error": f"exit code {rc}, no metrics"})
                continue
            runs.append(run)
    summaries = []
    for name in args.configs:
        mine = [r for r in runs if r["config"] == name]
        if mine:
            summaries.append(summarise(name, mine))
            emit(summaries[-1])
    if runs:
        png = Path(args.png)
        budgets = ", ".join(f"{n} {m:g} min" for n, m in minutes_for.items())
        early = [f"{r['config']} seed {r['seed']} at {r['stopped_early_min']:g} min" for r in runs
                 if r.get("stopped_early_min") is not None]
        if early:
            budgets += f" (stopped early: {', '.join(early)})"
        title = (f"MiniHack-MultiRoom-N4, {os.cpu_count()} cores, {'local' if args.local else 'Ray'} runtime, "
                 f"per run: {budgets}")
        plot(runs, png, title)
        table = markdown(summaries, runs)
        md = Path(args.md) if args.md else png.with_suffix(".md")
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(table + "\n")
        print(table, file=sys.stderr)
        log(f"wrote {png} and {md}")
    return 0 if runs else 1


if __name__ == "__main__":
    sys.exit(main())
