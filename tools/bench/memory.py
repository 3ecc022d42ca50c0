"""Memory benchmark: HCAM vs LSTM on the memory tasks (distrl/envs/memory_tasks.py) at growing delays, and
what HCAM costs.

    .venv/bin/python tools/bench/memory.py --tiny                      # end to end in a few minutes
    .venv/bin/python tools/bench/memory.py --seeds 0 1 2 --steps 300000 \
        --tasks Recall-4 Ballet-2 --delays 8 16 60                     # the full comparison (hours on 2 cores)
    .venv/bin/python tools/bench/memory.py --cost-only                 # only the cost lines
    .venv/bin/python tools/bench/memory.py --act-only --delays 60      # only the act-time lines (quick)
    .venv/bin/python tools/bench/memory.py --no-cost --tasks --merge a.jsonl b.jsonl   # one table from sittings
    .venv/bin/python tools/bench/memory.py --no-cost --tasks Ballet-2 --delays 4to16 --cores hcam   # a range

Learning: one ``distrl train --local`` subprocess per (task, delay, core, seed), 16 envs, sequence length 40 (the
default; delays above 40 put the cue outside every training sequence that holds its query), the same learner
settings for both cores. HCAM: hidden 64, 2 layers, chunk 8, 16 chunks, top-8, 4 heads; LSTM: one layer of
width 112 (about the same parameter count; each line reports both counts). Each run prints one JSON line
``{"kind": "learning", ...}`` with its success-rate curve against env steps, the chance level
(``1 / places`` or ``1 / dancers``) and the config overrides given on the command line; a final
``{"kind": "summary", ...}`` line holds the table rows.

Cost (``{"kind": "cost", ...}`` lines): act time per env step at the actor's batch, for each core through the
policy an env actor builds (``actor.inference=auto``: the NumPy path, for both cores) and through PyTorch, all
four policies in one process (NumPy's BLAS and PyTorch at one thread each, as in an actor), in alternating
rounds on observations and episode ends recorded from the env (``--act-rounds`` rounds of ``--act-steps``
steps each; wall and thread-CPU time, fastest and median round; ``act_us_per_env_step`` times ``act`` alone,
``act_reset_us_per_env_step`` also the actor's ``reset_state`` at episode ends), then one ``act_ratio`` line
per task with each ratio the median over rounds of the same round's HCAM and LSTM times; replay
bytes per stored sequence (12 sequences of a real env actor in a real shard: row bytes plus the shard's
episode-memory bytes per row, also with the shard's float16 core-state storage; for HCAM also the bytes a full
copy of the state would take), and learner update time per sequence (``Learner.step`` on a batch of 16
replayed sequences).

Outputs: ``--out`` (default docs/results/memory) gets ``memory.png`` (success vs env steps, one panel per
task and delay) and ``memory.md`` (a Markdown table: final success, mean over seeds, per core and delay).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from distrl.config import ExperimentConfig, apply_overrides  # noqa: E402
from distrl.envs.memory_tasks import parse_levels  # noqa: E402

MODELS: dict[str, dict[str, Any]] = {
    "hcam": {"encoder": "mlp", "core": "hcam", "hidden_size": 64, "num_core_layers": 2, "hcam_chunk": 8,
             "hcam_chunks": 16, "hcam_topk": 8, "hcam_heads": 4},
    "lstm": {"encoder": "mlp", "core": "lstm", "hidden_size": 112, "num_core_layers": 1},
}
BASE: dict[str, Any] = {
    "env": {"num_envs": 16},
    "sequence": {"length": 40, "period": 40, "burn_in": 0},
    "replay": {"capacity": 2048, "min_size": 16, "samples_per_insert": 4.0},
    "learner": {"batch_size": 16, "lr": 1.0e-3, "entropy_cost": 0.0},
    "eval": {"every_updates": 0},
    "logging": {"wandb": "disabled", "progress": False},
}


Delay = int | str
"""A level's delay, or a range of them (``"4to16"``: each episode's delay drawn from 4..16; Ballet only)."""


def parse_delay(text: str) -> Delay:
    """``"16"`` -> 16; ``"4to16"`` -> ``"4to16"`` (argparse type)."""
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"\d+to\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: a delay is a number (16) or a range (4to16)")


def delay_order(d: Delay) -> tuple[int, str]:
    return int(str(d).split("to")[0]), str(d)


def env_name(task: str, delay: Delay) -> str:
    return f"{task}-{delay}"


def eval_levels(task: str, delay: Delay) -> list[str]:
    """The fixed levels a run trained on a range of delays is evaluated at: the range's ends."""
    _, _, lo, hi = parse_levels(env_name(task, delay))
    return [] if lo == hi else [env_name(task, lo), env_name(task, hi)]


EVAL_EPISODES = 500


def chance_of(task: str) -> float:
    return 1.0 / int(task.split("-")[1])


def run_config(task: str, delay: Delay, core: str, steps: int) -> dict[str, Any]:
    cfg = json.loads(json.dumps(BASE))
    cfg["env"]["name"] = env_name(task, delay)
    cfg["model"] = dict(MODELS[core])
    cfg["runtime"] = {"total_env_steps": steps}
    return cfg


def learning_run(task: str, delay: Delay, core: str, seed: int, steps: int, root: Path, overrides: list[str],
                 log_every: float) -> dict[str, Any]:
    name = f"{task}-{delay}-{core}-s{seed}"
    cfg_path = root / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(run_config(task, delay, core, steps)))
    cmd = [sys.executable, "-m", "distrl", "train", str(cfg_path), "--local", f"runtime.run_dir={root}",
           f"runtime.run_name={name}", f"runtime.seed={seed}", f"env.seed={seed}",
           f"logging.log_every_s={log_every}", *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.time() - t0
    out: dict[str, Any] = {"kind": "learning", "task": task, "env": env_name(task, delay), "delay": delay,
                           "core": core, "seed": seed, "steps": steps, "chance": chance_of(task),
                           "wall_s": round(wall, 1), "rc": proc.returncode, "overrides": list(overrides)}
    metrics = root / name / "metrics.jsonl"
    if proc.returncode != 0 or not metrics.is_file():
        out["error"] = (proc.stderr or proc.stdout)[-2000:]
        return out
    curve = []
    for line in metrics.read_text().splitlines():
        r = json.loads(line)
        if "charts/success_rate" in r and "charts/env_steps" in r:
            curve.append([int(r["charts/env_steps"]), round(float(r["charts/success_rate"]), 4)])
    out["curve"] = curve
    out["final_success"] = curve[-1][1] if curve else None
    ckpt = root / name / "checkpoints" / "learner.pt"
    for level in eval_levels(task, delay):  # the final agent played at each end of its range of delays
        ev = subprocess.run([sys.executable, "-m", "distrl", "eval", str(ckpt), f"env.name={level}",
                             "--episodes", str(EVAL_EPISODES), "--seed", str(10_000 + seed)],
                            cwd=REPO, capture_output=True, text=True)
        if ev.returncode != 0:
            out.setdefault("eval_errors", {})[level] = ev.stderr[-1000:]
            continue
        res = json.loads(ev.stdout.strip().splitlines()[-1])
        out.setdefault("eval_success", {})[level] = res.get("success_rate")
    return out


# ---- cost ------------------------------------------------------------------------------------------------------


def _cfg(task: str, delay: Delay, core: str, overrides: list[str]) -> ExperimentConfig:
    c = run_config(task, delay, core, 1000)
    flat = [f"{s}.{k}={json.dumps(v) if not isinstance(v, str) else v}" for s, d in c.items() for k, v in d.items()]
    return apply_overrides(ExperimentConfig(), [*flat, "runtime.mode=local", *overrides])


def _record(cfg: ExperimentConfig, steps: int, seed: int = 0) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Observations [steps][B, ...] and episode ends [steps, B] of the env's B slots under random actions."""
    from distrl.envs.vector import make_vec_env

    venv = make_vec_env(cfg.env, cfg.env.num_envs, seed)
    rng = np.random.default_rng(seed)
    obs = [{k: np.array(v, copy=True) for k, v in venv.reset().items()}]  # (the VecEnv reuses its buffers)
    done = []
    for _ in range(steps - 1):
        res = venv.step(rng.integers(0, venv.spec.num_actions, cfg.env.num_envs))
        obs.append({k: np.array(v, copy=True) for k, v in res.obs.items()})
        done.append(np.array(res.terminated | res.truncated))
    done.append(np.zeros(cfg.env.num_envs, dtype=bool))
    venv.close()
    return obs, np.stack(done)


def act_cost(task: str, delay: Delay, cores: list[str], overrides: list[str], steps: int = 60,
             rounds: int = 9) -> list[dict[str, Any]]:
    """Act time per env step of each core through NumPy (``actor.inference=auto``) and PyTorch, all in this
    process, in ``rounds`` alternating rounds of ``steps`` steps each (see the module doc)."""
    from distrl.actors.env_actor import limit_numpy_blas_threads
    from distrl.envs.registry import env_spec
    from distrl.models.acting import build_acting_policy

    policies: dict[tuple[str, str], Any] = {}
    for core in cores:
        cfg = _cfg(task, delay, core, overrides)
        for inference in ("auto", "torch"):
            c2 = apply_overrides(cfg, [f"actor.inference={inference}"])
            policies[(core, inference)] = build_acting_policy(c2, env_spec(c2.env), torch.device("cpu"), seed=0)
    limit_numpy_blas_threads(cfg.actor.threads)  # as an env actor does (OpenBLAS's own pool: several-fold)
    torch.set_num_threads(1)
    B = cfg.env.num_envs
    obs, done = _record(cfg, steps)
    states = {key: p.initial_state(B) for key, p in policies.items()}
    timings: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for rnd in range(rounds + 1):  # round 0 warms up (and fills the memories) and is not counted
        for key, p in policies.items():
            for mode in ("act", "act_reset"):
                s = states[key]
                w0, c0 = time.perf_counter(), time.thread_time()
                for t in range(steps):
                    out = p.act(obs[t], s)
                    s = out.state
                    if mode == "act_reset" and done[t].any():
                        s = p.reset_state(s, done[t])
                wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
                states[key] = s
                if rnd:
                    timings.setdefault((*key, mode), []).append((wall / steps / B * 1e6, cpu / steps / B * 1e6))
    rows: list[dict[str, Any]] = []
    for (core, inference, mode), ts in timings.items():
        wall, cpu = np.array(ts).T
        rows.append({"kind": "cost", "metric": f"{mode}_us_per_env_step", "env": env_name(task, delay),
                     "core": core, "inference": inference, "policy": type(policies[(core, inference)]).__name__,
                     "batch": B, "rounds": rounds, "steps_per_round": steps,
                     "value": round(float(wall.min()), 2), "wall_median": round(float(np.median(wall)), 2),
                     "cpu_min": round(float(cpu.min()), 2), "cpu_median": round(float(np.median(cpu)), 2),
                     "act_ms_per_batch": round(float(wall.min()) * B / 1e3, 3)})
    if {"hcam", "lstm"} <= set(cores):
        for mode in ("act", "act_reset"):
            ratio = {}
            for hi in ("auto", "torch"):
                for lo in ("auto", "torch"):
                    h = np.array(timings[("hcam", hi, mode)])[:, 1]  # CPU time: least disturbed by other processes
                    m = np.array(timings[("lstm", lo, mode)])[:, 1]
                    name = f"hcam_{_path(policies[('hcam', hi)])}_over_lstm_{_path(policies[('lstm', lo)])}"
                    ratio[name] = round(float(np.median(h / m)), 2)
            rows.append({"kind": "cost", "metric": "act_ratio", "timed": mode, "env": env_name(task, delay),
                         "batch": B, "clock": "thread CPU, median over rounds of same-round ratios", "goal": 3.0,
                         **ratio})
    return rows


def _path(policy: Any) -> str:
    return "torch" if isinstance(policy, torch.nn.Module) else "numpy"


def replay_cost(task: str, delay: Delay, core: str, overrides: list[str], sequences: int = 12) -> dict[str, Any]:
    """Bytes per stored sequence from a real env actor in a real shard, and the learner's time per sequence."""
    from distrl.actors.env_actor import EnvActor
    from distrl.envs.registry import env_spec
    from distrl.learners.learner import Learner
    from distrl.replay.shard import ReplayShard
    from distrl.types import ReplaySample

    cfg = apply_overrides(_cfg(task, delay, core, overrides), ["actor.inference=torch"])
    spec = env_spec(cfg.env)
    actor = EnvActor(cfg, 0)
    rcfg = dataclasses.replace(cfg.replay, capacity=4096, samples_per_insert=0.0)  # no rate limit: keep them all
    shard = ReplayShard(rcfg, 0, seed=0)
    half = ReplayShard(rcfg, 0, seed=0, core_state_dtype="float16")
    full_state_bytes = 0
    for traj in actor.run(sequences):  # sequences of B rows; the first starts from an empty memory
        shard.insert(traj)
        half.insert(traj)
    actor.close()
    st = shard.stats()
    n = len(shard)
    mem = shard.episode_memory.nbytes
    row = st.row_nbytes
    per_seq = row + mem / max(n, 1)
    per_seq_fp16 = half.stats().row_nbytes + half.episode_memory.nbytes / max(n, 1)
    core_mod = actor.policy.core
    spec_mem = getattr(core_mod, "episode_memory", None)
    if spec_mem is not None:  # what the rows would hold if they carried the whole memory
        s = core_mod.initial_state(1)
        full_state_bytes = sum(v.numel() * v.element_size() for v in s.values())
        compact_bytes = sum(s[k].numel() * s[k].element_size() for k in s if k not in spec_mem.keys)
        full_row = row - _row_memory_bytes(shard) + full_state_bytes - compact_bytes
    else:
        full_row = row
    learner = Learner(cfg, spec, device="cpu")
    torch.set_num_threads(1)
    batch = cfg.learner.batch_size
    times = []
    for i in range(4):
        smp = shard.sample(batch)
        traj = smp.trajectory()
        sample = ReplaySample(traj=traj, keys=torch.from_numpy(smp.keys),
                              shard_ids=torch.zeros(batch, dtype=torch.int64), weights=torch.ones(batch),
                              probs=torch.full((batch,), 1.0 / n, dtype=torch.float64))
        t0 = time.perf_counter()
        learner.step(sample)
        if i:  # the first one warms up
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in learner.agent.parameters())
    return {"kind": "cost", "metric": "replay_and_learner", "env": cfg.env.name, "core": core,
            "stored_rows": n, "row_bytes": row, "episode_memory_bytes_per_row": round(mem / max(n, 1), 1),
            "bytes_per_sequence": round(per_seq, 1), "bytes_per_sequence_full_state_copy": round(full_row, 1),
            "bytes_per_sequence_core_state_fp16": round(per_seq_fp16, 1),
            "learner_ms_per_sequence": round(1e3 * float(np.median(times)) / batch, 3),
            "agent_params": params, "core_params": sum(p.numel() for p in learner.agent.core.parameters())}


def _row_memory_bytes(shard: Any) -> int:
    """Bytes of the per-row memory bookkeeping leaves (core_state/memory.* and the compacted state) in a row."""
    schema = shard.schema
    return sum(s.item_nbytes for s in schema.leaves if s.name.startswith("core_state/"))


# ---- outputs ---------------------------------------------------------------------------------------------------


def write_outputs(results: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    learn = [r for r in results if r["kind"] == "learning" and r.get("curve")]
    groups: dict[tuple[str, Delay, str], list[dict[str, Any]]] = {}
    for r in learn:
        groups.setdefault((r["task"], r["delay"], r["core"]), []).append(r)
    table = []
    for (task, delay, core), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], delay_order(kv[0][1]),
                                                                          kv[0][2])):
        finals = [r["final_success"] for r in rs if r.get("final_success") is not None]
        table.append({"task": task, "delay": delay, "core": core, "seeds": len(rs),
                      "final_success_mean": round(float(np.mean(finals)), 3) if finals else None,
                      "final_success_min": round(float(np.min(finals)), 3) if finals else None,
                      "steps": rs[0]["steps"], "reached_steps": sorted(r["curve"][-1][0] for r in rs),
                      "chance": rs[0]["chance"]})
    lines = ["| task | delay | core | seeds | env steps reached (budget) | final success (mean) | min | chance |",
             "|---|---|---|---|---|---|---|---|"]
    for t in table:
        reached = " / ".join(f"{n:,}" for n in t["reached_steps"])
        lines.append(f"| {t['task']} | {t['delay']} | {t['core']} | {t['seeds']} | {reached} ({t['steps']:,}) | "
                     f"{t['final_success_mean']} | {t['final_success_min']} | {t['chance']:.3f} |")
    cost = [r for r in results if r["kind"] == "cost"]
    if cost:
        lines += ["", "| cost | env | core | value |", "|---|---|---|---|"]
        for r in cost:
            if r["metric"] in ("act_us_per_env_step", "act_reset_us_per_env_step"):
                what = "act" if r["metric"] == "act_us_per_env_step" else "act + reset_state"
                lines.append(f"| {what} µs / env step (batch {r['batch']}, actor.inference={r['inference']}: "
                             f"{r['policy']}; fastest round, wall (thread CPU)) | {r['env']} | {r['core']} | "
                             f"{r['value']} ({r['cpu_min']}) |")
            elif r["metric"] == "act_ratio":
                ratios = ", ".join(f"{k.replace('_over_', ' / ')} {v}" for k, v in r.items() if "_over_" in k)
                lines.append(f"| {r['timed']} time ratio (goal ≤ {r['goal']}) | {r['env']} | hcam / lstm | {ratios} |")
            else:
                lines.append(f"| replay bytes / sequence (float16 core state; full-copy) | {r['env']} | {r['core']} | "
                             f"{r['bytes_per_sequence']:,.0f} ({r['bytes_per_sequence_core_state_fp16']:,.0f}; "
                             f"{r['bytes_per_sequence_full_state_copy']:,.0f}) |")
                lines.append(f"| learner ms / sequence | {r['env']} | {r['core']} | {r['learner_ms_per_sequence']} |")
    (out / "memory.md").write_text("\n".join(lines) + "\n")
    if learn:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = sorted({(r["task"], r["delay"]) for r in learn}, key=lambda p: (p[0], delay_order(p[1])))
        cols = min(3, len(panels))
        rows_n = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False)
        colours = {"hcam": "tab:blue", "lstm": "tab:orange"}
        for ax, (task, delay) in zip(axes.flat, panels):
            for r in learn:
                if (r["task"], r["delay"]) == (task, delay):
                    c = np.array(r["curve"], dtype=float)
                    ax.plot(c[:, 0], c[:, 1], color=colours.get(r["core"], "k"), alpha=0.8,
                            label=r["core"] if r["seed"] == min(x["seed"] for x in learn) else None)
            ax.axhline(chance_of(task), color="grey", ls="--", lw=1)
            ax.set_title(f"{task}, delay {delay}")
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("env steps")
            ax.set_ylabel("success")
            ax.legend(loc="lower right", fontsize=8)
        for ax in list(axes.flat)[len(panels):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "memory.png", dpi=110)
        plt.close(fig)
    return {"kind": "summary", "table": table, "out": str(out), "host": platform.node(),
            "cpu": platform.processor() or platform.machine()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=["Recall-4", "Ballet-2"])
    ap.add_argument("--delays", type=parse_delay, nargs="+", default=[8, 16, 60],
                    help="levels' delays; a range such as 4to16 (Ballet) draws each episode's delay from it, and the "
                         f"final agent is then also played {EVAL_EPISODES} episodes at each end of the range")
    ap.add_argument("--cores", nargs="+", default=["hcam", "lstm"], choices=sorted(MODELS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300_000)
    ap.add_argument("--tiny", action="store_true", help="one delay, one seed, 3k steps: checks the pipeline")
    ap.add_argument("--cost-only", action="store_true")
    ap.add_argument("--no-cost", action="store_true")
    ap.add_argument("--act-only", action="store_true", help="of the cost lines, only act time (no replay/learner)")
    ap.add_argument("--act-rounds", type=int, default=9, help="alternating act-time rounds per policy")
    ap.add_argument("--act-steps", type=int, default=60, help="env steps per act-time round")
    ap.add_argument("--log-every", type=float, default=5.0, help="logging.log_every_s of the runs")
    ap.add_argument("--out", default=str(REPO / "docs/results/memory"))
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--merge", nargs="+", default=[], metavar="JSONL",
                    help="earlier runs' stdout (JSON lines): their learning and cost lines join this run's in the "
                         "table and plot (a comparison run in several sittings); with no task to run "
                         "(--tasks with nothing), only rewrites the outputs")
    ap.add_argument("overrides", nargs="*", help="config overrides for every run (a.b=value)")
    args = ap.parse_args()
    if args.tiny:
        args.delays, args.seeds, args.steps, args.log_every = [args.delays[-1]], [0], 3000, 1.0
    root = Path(args.run_dir or tempfile.mkdtemp(prefix="distrl_memory_"))
    root.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []

    def emit(r: dict[str, Any]) -> None:
        results.append(r)
        print(json.dumps(r), flush=True)

    if not args.no_cost:
        for task in args.tasks:
            delay = args.delays[-1]
            for r in act_cost(task, delay, args.cores, args.overrides, steps=args.act_steps, rounds=args.act_rounds):
                emit(r)
            if not args.act_only:
                for core in args.cores:
                    emit(replay_cost(task, delay, core, args.overrides))
    if args.act_only:
        args.cost_only = True
    if not args.cost_only:
        for task in args.tasks:
            for delay in args.delays:
                for core in args.cores:
                    for seed in args.seeds:
                        print(f"[memory] {task}-{delay} {core} seed {seed}: {args.steps} steps", file=sys.stderr,
                              flush=True)
                        emit(learning_run(task, delay, core, seed, args.steps, root, args.overrides, args.log_every))
    earlier = [json.loads(line) for path in args.merge for line in Path(path).read_text().splitlines()
               if line.strip().startswith("{")]
    earlier = [r for r in earlier if r.get("kind") in ("learning", "cost")]
    print(json.dumps(write_outputs(earlier + results, Path(args.out))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
