"""End-to-end training throughput: distrl vs the raw env rate vs Sample Factory 2 and RLlib APPO, side by side
in one run, on one or more tasks (``--tasks room5x5,pong``).

Tasks: ``room5x5`` runs ``--env`` (default MiniHack-Room-5x5-v0) with ``--config`` (default the quickstart);
``pong`` runs ALE/Pong-v5 with ``--pong-config`` (default ``configs/pong.yaml``: DeepMind preprocessing, Nature
CNN). Every system trains the env and model of that distrl config. Rounds alternate the systems' order.

Prints one JSON object per result line on stdout (progress and child logs go to stderr):

* ``{"bench": "train_rate_machine", ...}``: cores, CPU model, load average at the start.
* ``{"bench": "train_rate", "system": "raw_env", ...}``: MiniHack with random actions and no policy, in ONE
  process stepping ``--envs`` envs built by distrl's own adapter (the same process and env count as the
  training runs' env actor / env runner), autoreset on episode end. The ceiling for env steps/s.
* ``{"bench": "train_rate", "system": "distrl", ...}``: ``distrl train CONFIG`` (default: the quickstart, 1 env
  actor x ``--envs`` envs, 1 replay shard, 1 CPU learner) in a subprocess with a wall-time limit. Rates come
  from the run's ``metrics.jsonl`` between the first log point after ``--warmup`` seconds at which the learner
  has consumed data, and the last log point before the stop: ``consumed_steps_per_s`` (fresh env steps
  trained on, ``learner/env_steps_consumed``), ``env_steps_per_s`` (generated, ``charts/env_steps``) and
  ``trained_steps_per_s`` (updates x batch x sequence length, replayed steps included).
* ``{"bench": "train_rate", "system": "sample_factory", ...}``: ``tools/bench/sample_factory_appo.py`` run by
  the ``.venv-sf`` interpreter (``tools/bench/install_sf.sh``, run here when the venv is missing): Sample
  Factory APPO with distrl's encoder, LSTM and linear heads from the same config (same parameter count),
  ``--sf-workers`` rollout workers sharing ``--envs`` envs, the learner's own env-step counter as consumed.
* ``{"bench": "train_rate", "system": "rllib_appo", ...}``: ``tools/bench/rllib_appo.py`` run by the
  ``.venv-rllib`` interpreter (created here when missing): RLlib APPO with distrl's exact network, the same
  env adapter, env and runner counts, batch shape and reuse; the same window rule and counters (see that
  file's docstring for how each is made equal).
* ``{"bench": "train_rate_ratio", ...}``: ``ratio`` = distrl / RLlib consumed env steps per second (the
  issue's metric), the same for generated steps, and sample efficiency: the mean return of the last 100
  episodes at the env-step count both runs reached (``common_env_steps``).
* ``{"bench": "train_rate_vs_sample_factory", "task": ...}``: per task, each system's medians and their ratios
  to Sample Factory's: ``<system>_consumed_steps_per_s_ratio`` (trained env steps per s), trained and generated
  steps, ``cpu_cores_used``, ``peak_pss_gib`` and ``time_to_target_s`` (> 1: more memory / slower).

Every training line also has ``cpu_cores_used`` (CPU seconds of every process the system started, over the
window), ``peak_pss_gib`` (the largest summed PSS of that process tree over the whole run, sampled every
second; ``window_peak_pss_gib`` over the window only; ``peak_pss_by_role_mib``: that peak per process role, a
Ray actor's class or a program such as ``raylet``), ``startup_s`` (launch to the first trained batch) and,
on a task with a target (room5x5: 0.9), ``time_to_target_s``: launch to the first point at which the mean
return of the last 100 episodes (at least 100 finished) reached it, start-up included. distrl's is read from
its metrics rows (every ``logging.log_every_s``, 0.5 s unless ``--distrl-set`` says otherwise; the row carries
it as ``target_resolution_s``), Sample Factory's after every training step, RLlib's from its per-episode log.

Every measured process runs at the same priority: Ray starts its workers at nice 15 by default, which on a
machine shared with other jobs starves them against everything at nice 0 (including RLlib's own driver, which
polls in a busy loop); ``--ray-worker-niceness`` (default 0) is passed to both Ray instances alike as
``RAY_worker_niceness``. Each system's Ray instance is its own (started and stopped by its subprocess); any
Ray process left behind by a subprocess is found by its session directory (which names the driver's pid) and
killed, and nothing else is touched.

``--learner-cost`` measures something else: the learner's update rate per exploration bonus (issue 19: "RND
keeps >= 0.75 of the learner's update rate"), in this process, without Ray. For each bonus of ``--bonuses``
(``none``, ``rnd``, ``noveld``, ``e3b``, ``e3b_rnd``, ``e3b_noveld``, ``counts``, and ``rnd_small`` /
``e3b_rnd_small`` on the narrow RND networks, ``bonus.rnd_net=small``; ``none`` is always measured, as the
reference) the config is ``--config`` (default ``configs/minihack_multiroom.yaml``, MiniHack-MultiRoom-N4) plus
the ``bonus:`` lines of its preset ``configs/minihack_multiroom_<bonus>.yaml`` (``rnd``/``noveld``: those of
E3B x RND / E3B x NovelD with ``bonus.episodic=none``), plus tools/bench/explore.py's 2-core overrides
(``CPU_OVERRIDES``: the small MiniHack model, inline actors; ``--no-cpu-overrides`` leaves them out), plus
``--distrl-set``. The learner is built as ``distrl train --local`` builds it (a LearnerWorker over local replay
shards, with the learner extras the config implies and, for global counts, the in-process count table), its
shards are filled with ``--fill`` sequences from a real rollout of the config's own EnvActor (so each batch holds
what its bonus needs: the raw episodic bonus, the visited states counted), then ``--updates`` updates are timed
per bonus and round, the bonuses alternating over ``--rounds`` (order reversed every other round) so load drift
hits all alike. torch runs ``learner.threads`` (1) intra-op threads, as the learner does on 2 cores.

* ``{"bench": "learner_cost_machine", ...}``: machine, torch, every bonus's overrides, the settings.
* ``{"bench": "learner_cost", "bonus", "round", ...}``: ``updates_per_s``, ``ms_per_update``, ``sequences_per_s``,
  ``trained_steps_per_s`` (sequences x ``sequence.length``), ``step_ms`` (``Learner.step`` alone),
  ``outside_step_ms`` (sampling, priority updates, weight publishing), ``extra_hook_ms`` (per learner extra:
  the forward work of its hooks; their backward is inside the learner's one backward pass).
* ``{"bench": "learner_cost_summary", "bonus", ...}``: medians over rounds, ``ratio_to_none`` (median updates/s
  over that of ``none``; per round in ``ratio_to_none_rounds``), ``step_ratio_to_none`` (``Learner.step`` alone),
  the extras and their parameter counts.

Usage::

    .venv/bin/python tools/bench/train_rate.py                  # full run (~9-10 min on 2 cores)
    .venv/bin/python tools/bench/train_rate.py --quick          # ~5 min smoke run
    .venv/bin/python tools/bench/train_rate.py --seconds 60 --warmup 15 --systems distrl,rllib_appo
    .venv/bin/python tools/bench/train_rate.py --tasks room5x5,pong --systems distrl,sample_factory,rllib_appo \
        --seconds 120 --warmup 20 --rounds 3
    .venv/bin/python tools/bench/train_rate.py --learner-cost   # 6 bonuses x 5 rounds x 30 updates (~5 min)
    .venv/bin/python tools/bench/train_rate.py --learner-cost --quick               # smoke run, ~1 min
    .venv/bin/python tools/bench/train_rate.py --learner-cost --bonuses rnd,e3b_rnd --rounds 9 --updates 30
"""

from __future__ import annotations

import argparse
import itertools
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

from distrl.logging.sinks import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
RLLIB_VENV = ROOT / ".venv-rllib"
RLLIB_STAMP = ".distrl-bench-installed-2"  # bumped when the install steps change (2: ale-py for the pong task)
SF_VENV = ROOT / ".venv-sf"
SF_STAMP = ".distrl-bench-installed"  # written by tools/bench/install_sf.sh when it has finished
SYSTEMS = ("raw_env", "distrl", "sample_factory", "rllib_appo")
#: task -> (env name, argparse option holding its distrl config, target mean return timed from launch or None).
TASKS: dict[str, tuple[str | None, str, float | None]] = {
    "room5x5": (None, "config", 0.9),  # env: --env (default MiniHack-Room-5x5-v0)
    "pong": ("ALE/Pong-v5", "pong_config", None),
}


def log(msg: str) -> None:
    print(f"[train_rate] {msg}", file=sys.stderr, flush=True)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# ------------------------------------------------------------------------------------------------------------
# The RLlib virtualenv
# ------------------------------------------------------------------------------------------------------------


def ensure_rllib_venv(venv: Path, python: str = "python3.11") -> Path:
    """Create ``venv`` with RLlib when it is missing (or an earlier install did not finish); returns its python.

    torch is pinned to the CPU build that lies on local disk (an unpinned torch would pull a multi-GB CUDA
    wheel). nle 1.3.0 pins gymnasium==1.2.0 while ray[rllib] 2.60.0 pins gymnasium==1.2.2, so nle and minihack
    go in with ``--no-deps`` after RLlib (their other deps, numpy and pybind11, are installed explicitly); the
    patch-level gymnasium difference does not affect the MiniHack API used here. distrl itself goes in with
    ``--no-deps`` (its remaining deps, pyyaml and numpy, come with RLlib).
    """
    py = venv / "bin" / "python"
    if py.exists() and (venv / RLLIB_STAMP).exists():
        return py
    log(f"creating {venv} (RLlib side of the benchmark; a few minutes, once)")
    steps = [
        [python, "-m", "venv", str(venv)],
        [str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"],
        [str(py), "-m", "pip", "install", "-q", "torch==2.13.0"],
        [str(py), "-m", "pip", "install", "-q", "ray[rllib]==2.60.0", "setuptools<81", "minigrid", "pybind11",
         "numpy", "pyyaml"],
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "nle==1.3.0", "minihack==1.0.2"],
        [str(py), "-m", "pip", "install", "-q", "ale-py==0.12.1"],
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)],
    ]
    for cmd in steps:
        if cmd[0] == python and py.exists():
            continue
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"creating {venv}: {' '.join(cmd)} failed:\n{r.stdout[-3000:]}")
    (venv / RLLIB_STAMP).write_text("ok\n")
    return py


def ensure_sf_venv(venv: Path) -> Path:
    """Create ``venv`` with Sample Factory 2 (``tools/bench/install_sf.sh``) when it is missing or an earlier
    install did not finish; returns its python."""
    py = venv / "bin" / "python"
    if py.exists() and (venv / SF_STAMP).exists():
        return py
    log(f"creating {venv} (Sample Factory side of the benchmark; a few minutes, once)")
    cmd = ["bash", str(ROOT / "tools" / "bench" / "install_sf.sh"), str(venv)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"creating {venv}: {' '.join(cmd)} failed:\n{r.stdout[-3000:]}")
    return py


# ------------------------------------------------------------------------------------------------------------
# Process hygiene
# ------------------------------------------------------------------------------------------------------------

_CLK = os.sysconf("SC_CLK_TCK")


def _proc_stats() -> dict[int, tuple[int, int, float]]:
    """pid -> (ppid, start time in clock ticks, CPU seconds used: utime + stime) for every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[0] is field 3 (state) of proc(5): ppid = 4, utime = 14, stime = 15, starttime = 22
        out[int(d.name)] = (int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / _CLK)
    return out


def _pss_bytes(pid: int) -> int:
    """Proportional set size of one process (``/proc/PID/smaps_rollup``; shared pages split among their
    users), 0 when it is gone or unreadable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def role_of_command(cmd: list[str]) -> str:
    """What a process is, from its command line: a Ray actor's class (Ray titles its workers
    ``ray::<Class>.<method>``; ``IDLE`` for a pooled worker), ``multiprocessing worker`` /
    ``multiprocessing forkserver`` for a process that multiprocessing started (an env actor's subprocess envs,
    Sample Factory's rollout workers), ``-m <module> <command>`` for a module run (``-m distrl train``: distrl's
    driver), else the script or program name (``raylet``, ``gcs_server``, ``dashboard.py``). Also used by
    ``tools/chaos.py``."""
    if not cmd:
        return "?"
    if cmd[0].startswith("ray::"):
        return cmd[0].split()[0][5:].split(".")[0] or "ray_worker"
    if "-c" in cmd[1:-1]:
        code = cmd[cmd.index("-c", 1) + 1]
        if "multiprocessing.forkserver" in code:
            return "multiprocessing forkserver"
        if "multiprocessing" in code:
            return "multiprocessing worker"
    if "-m" in cmd[1:-1]:
        i = cmd.index("-m", 1)
        return " ".join(cmd[i : i + 3])
    scripts = [Path(a).name for a in cmd[1:] if a.endswith(".py")]
    return scripts[0] if scripts else Path(cmd[0]).name


def _role(pid: int) -> str:
    """:func:`role_of_command` of the process ``pid`` (``?`` when it is gone)."""
    try:
        cmd = [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return "?"
    return role_of_command(cmd)


class ProcessTree:
    """Every process a child starts (its descendants, Ray's raylet, GCS and workers included): their CPU time,
    the tree's summed PSS at each sample (its peak is the system's memory footprint; Ray's object store is
    shared memory, counted once across its users) and, at the end, the ones still running.

    Processes are keyed by (pid, start time), so a recycled pid is never mistaken for ours; CPU time of a
    process that has exited stays counted at its last sampled value.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.cpu: dict[tuple[int, int], float] = {}
        self.series: list[tuple[float, float]] = []  # (epoch seconds, CPU seconds of the tree so far)
        self.pss: list[tuple[float, int]] = []  # (epoch seconds, summed PSS bytes of the live tree)
        self.peak_by_role: dict[str, int] = {}  # PSS bytes per process role (_role) at the largest sample

    def sample(self) -> None:
        stats = _proc_stats()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        todo = [self.root] if self.root in stats else []
        pss = 0
        by_role: dict[str, int] = {}
        while todo:
            pid = todo.pop()
            _, start, cpu = stats[pid]
            self.cpu[(pid, start)] = cpu
            b = _pss_bytes(pid)
            pss += b
            role = _role(pid)
            by_role[role] = by_role.get(role, 0) + b
            todo.extend(children.get(pid, []))
        now = time.time()
        self.series.append((now, sum(self.cpu.values())))
        if pss > max((b for _, b in self.pss), default=-1):
            self.peak_by_role = by_role
        self.pss.append((now, pss))

    def peak_pss_by_role_mib(self) -> dict[str, float]:
        """The largest sample's PSS per process role (MiB, largest first): where the peak goes."""
        return {k: round(v / 2**20, 1) for k, v in sorted(self.peak_by_role.items(), key=lambda kv: -kv[1])}

    def peak_pss_gib(self, t0: float | None = None, t1: float | None = None) -> float | None:
        """Largest summed PSS (GiB) over the samples between epoch times t0 and t1 (default: the whole run)."""
        vals = [b for t, b in self.pss if (t0 is None or t >= t0) and (t1 is None or t <= t1)]
        return max(vals) / 2**30 if vals else None

    def alive(self) -> list[int]:
        stats = _proc_stats()
        return [pid for (pid, start) in self.cpu if pid in stats and stats[pid][1] == start and pid != os.getpid()]

    def cpu_between(self, t0: float, t1: float) -> float | None:
        """CPU seconds the tree used between epoch times t0 and t1 (linear between samples)."""
        if len(self.series) < 2 or t1 <= t0:
            return None

        def at(t: float) -> float:
            pts = self.series
            if t <= pts[0][0]:
                return pts[0][1]
            for (ta, ca), (tb, cb) in itertools.pairwise(pts):
                if ta <= t <= tb:
                    return ca + (cb - ca) * (t - ta) / max(tb - ta, 1e-9)
            return pts[-1][1]

        return at(t1) - at(t0)


def raylet_count() -> int:
    n = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0", 1)[0]
            except OSError:
                continue
            n += cmd.endswith(b"/raylet")
    return n


def run_child(cmd: list[str], env: dict[str, str], timeout: float, stdout_path: Path,
              stderr_path: Path) -> tuple[int, ProcessTree]:
    """Run ``cmd`` in its own session with a hard timeout, sampling its process tree's CPU time every second;
    afterwards kill whatever it started that is still running (a Ray instance that did not shut down)."""
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
        tree = ProcessTree(proc.pid)
        deadline = time.monotonic() + timeout
        rc = None
        while rc is None:
            tree.sample()
            try:
                rc = proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    log(f"{' '.join(cmd[:4])}... exceeded {timeout:.0f}s; stopping it")
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        rc = proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        rc = proc.wait()
    left = tree.alive()
    if left:
        time.sleep(3)  # ray.shutdown() may still be tearing down
        left = tree.alive()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if left:
        log(f"killed {len(left)} leftover processes started by {cmd[1]}")
    return rc, tree


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ------------------------------------------------------------------------------------------------------------
# The three measurements
# ------------------------------------------------------------------------------------------------------------


def measure_raw(env_name: str, num_envs: int, seconds: float, seed: int) -> dict[str, Any]:
    """Random actions on ``num_envs`` envs in this process (distrl's adapter, autoreset); steps per second."""
    import numpy as np

    from distrl.config import EnvConfig
    from distrl.envs.registry import env_spec, make_env

    cfg = EnvConfig(name=env_name, num_envs=num_envs)
    envs = [make_env(cfg, seed * 1000 + i) for i in range(num_envs)]
    try:
        n_act = env_spec(cfg).num_actions
        rng = np.random.default_rng(seed)
        for e in envs:
            e.reset()

        def loop(duration: float) -> tuple[int, float, float, int]:
            steps = episodes = 0
            t0, c0 = time.perf_counter(), time.process_time()
            while time.perf_counter() - t0 < duration:
                for env, a in zip(envs, rng.integers(0, n_act, num_envs).tolist()):
                    _, _, term, trunc, _ = env.step(a)
                    if term or trunc:
                        env.reset()
                        episodes += 1
                steps += num_envs
            return steps, time.perf_counter() - t0, time.process_time() - c0, episodes

        loop(min(2.0, seconds / 5))  # warm caches, first resets
        load0 = os.getloadavg()[0]
        steps, dt, cpu_s, episodes = loop(seconds)
    finally:
        for e in envs:
            e.close()
    return {
        "bench": "train_rate", "system": "raw_env", "env": env_name, "num_envs": num_envs, "processes": 1,
        "env_steps_per_s": steps / dt, "consumed_steps_per_s": None, "duration_s": dt, "episodes": episodes,
        "cpu_cores_used": cpu_s / dt, "env_steps_per_cpu_s": steps / max(cpu_s, 1e-9),
        "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []


def measure_distrl(args: argparse.Namespace, env: dict[str, str], work: Path) -> dict[str, Any]:
    from distrl.config import load_config

    work.mkdir(parents=True, exist_ok=True)
    overrides = [
        f"env.name={args.env}",
        f"env.num_envs={args.envs}",
        f"runtime.run_dir={work}",
        "runtime.run_name=distrl",
        f"runtime.seed={args.seed}",
        f"runtime.max_wall_time_s={args.warmup + args.seconds}",
        "runtime.total_env_steps=1000000000",
        "logging.wandb=disabled",
        "logging.progress=false",
        "logging.log_every_s=0.5",  # the time-to-target resolution; --distrl-set may change it
        *args.distrl_set,
    ]
    cfg = load_config(args.config, overrides)
    cmd = [sys.executable, "-m", "distrl", "train", str(args.config), *overrides]
    log(f"distrl: {' '.join(cmd[1:])}")
    load0 = os.getloadavg()[0]
    launch = time.time()
    t0 = time.monotonic()
    rc, tree = run_child(cmd, env, args.warmup + args.seconds + 300, work / "distrl.stdout",
                         work / "distrl.stderr")
    process_s = time.monotonic() - t0
    if rc != 0:
        tail = (work / "distrl.stderr").read_text()[-3000:]
        raise RuntimeError(f"distrl train exited with {rc}:\n{tail}")
    rows = _read_jsonl(work / "distrl" / "metrics.jsonl")
    crossing = next((r for r in rows if args.target is not None and "time" in r
                     and (r.get("charts/episode_return") or float("-inf")) >= args.target
                     and r.get("charts/episodes", 0) >= 100), None)
    first = next((r for r in rows if r.get("learner/env_steps_consumed", 0) > 0 and "time" in r), None)
    limit = args.warmup + args.seconds + 1.0  # drop the log written during shutdown
    rows = [r for r in rows if "charts/wall_time_s" in r and r["charts/wall_time_s"] <= limit]
    if len(rows) < 2:
        raise RuntimeError(f"distrl wrote {len(rows)} usable metric rows; see {work}/distrl.stderr")
    start = next((r for r in rows if r["charts/wall_time_s"] >= args.warmup
                  and r.get("learner/env_steps_consumed", 0) > 0), rows[-1])
    end = rows[-1]
    dt = end["charts/wall_time_s"] - start["charts/wall_time_s"]
    per_update = cfg.learner.batch_size * cfg.sequence.length * cfg.learner.num_learners

    def rate(key: str, scale: float = 1.0) -> float | None:
        return (end.get(key, 0.0) - start.get(key, 0.0)) * scale / dt if dt > 0 else None

    curve = [[r["charts/env_steps"], r["charts/episode_return"], r.get("charts/success_rate")]
             for r in rows if "charts/episode_return" in r]
    consumed = end.get("learner/env_steps_consumed", 0.0) - start.get("learner/env_steps_consumed", 0.0)
    return {
        "bench": "train_rate", "system": "distrl", "task": args.task, "env": args.env, "config": str(args.config),
        "num_envs": args.envs * cfg.actor.num_actors,
        "env_actors": cfg.actor.num_actors, "learners": cfg.learner.num_learners, "overrides": args.distrl_set,
        "samples_per_insert": cfg.replay.samples_per_insert, "online_fraction": cfg.learner.online_fraction,
        "env_steps_per_s": rate("charts/env_steps"),
        "consumed_steps_per_s": rate("learner/env_steps_consumed"),
        "trained_steps_per_s": rate("learner/updates", per_update),
        "updates_per_s": rate("learner/updates"),
        "duration_s": dt, "window_start_s": start["charts/wall_time_s"], "process_s": process_s,
        "env_steps": end["charts/env_steps"], "env_steps_consumed": end.get("learner/env_steps_consumed"),
        "episode_return": end.get("charts/episode_return"), "success_rate": end.get("charts/success_rate"),
        "startup_s": first["time"] - launch if first else None, "target": args.target,
        "time_to_target_s": crossing["time"] - launch if crossing else None,
        "env_steps_to_target": crossing.get("charts/env_steps") if crossing else None,
        "target_resolution_s": cfg.logging.log_every_s,
        **cpu_fields(tree, start["time"], end["time"], consumed),
        "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "curve": curve,
    }


def measure_rllib(args: argparse.Namespace, env: dict[str, str], work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    py = ensure_rllib_venv(args.rllib_venv)
    cmd = [str(py), str(ROOT / "tools" / "bench" / "rllib_appo.py"), "--env", args.env, "--envs", str(args.envs),
           "--runners", "1", "--learners", str(args.rllib_learners), "--seconds", str(args.seconds),
           "--warmup", str(args.warmup), "--seed", str(args.seed), "--config", str(args.config)]
    if args.target is not None:
        cmd += ["--target", str(args.target)]
    log(f"rllib: {' '.join(cmd)}")
    load0 = os.getloadavg()[0]
    launch = time.time()
    t0 = time.monotonic()
    rc, tree = run_child(cmd, env, args.warmup + args.seconds + 400, work / "rllib.stdout", work / "rllib.stderr")
    process_s = time.monotonic() - t0
    results = [r for r in _read_jsonl(work / "rllib.stdout") if r.get("system") == "rllib_appo"]
    if rc != 0 or not results:
        tail = (work / "rllib.stderr").read_text()[-3000:]
        raise RuntimeError(f"rllib_appo.py exited with {rc} and {len(results)} results:\n{tail}")
    res = results[-1]
    res["process_s"] = process_s
    res["task"] = args.task
    res["time_to_target_s"] = res["target_epoch"] - launch if res.get("target_epoch") else None
    res["startup_s"] = res["first_trained_epoch"] - launch if res.get("first_trained_epoch") else None
    res["target_resolution_s"] = 0.0
    t0_epoch, t1_epoch = res.pop("window_epoch", (0.0, 0.0))
    consumed = (res.get("consumed_steps_per_s") or 0.0) * res.get("duration_s", 0.0)
    res.update(cpu_fields(tree, t0_epoch, t1_epoch, consumed))
    res["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return res


def measure_sf(args: argparse.Namespace, env: dict[str, str], work: Path) -> dict[str, Any]:
    """``tools/bench/sample_factory_appo.py`` in ``.venv-sf``: Sample Factory APPO with distrl's encoder from
    the same config, ``--sf-workers`` rollout workers sharing ``--envs`` envs."""
    work.mkdir(parents=True, exist_ok=True)
    py = ensure_sf_venv(args.sf_venv)
    if args.envs % (args.sf_workers * 2):
        raise ValueError(f"--envs {args.envs} must split evenly over --sf-workers {args.sf_workers} x 2 halves "
                         "(Sample Factory's double-buffered sampling)")
    cmd = [str(py), str(ROOT / "tools" / "bench" / "sample_factory_appo.py"), "--config", str(args.config),
           "--set", f"env.name={args.env}", "--workers", str(args.sf_workers),
           "--envs-per-worker", str(args.envs // args.sf_workers), "--seconds", str(args.seconds),
           "--warmup", str(args.warmup), "--seed", str(args.seed), "--device", args.sf_device]
    if args.target is not None:
        cmd += ["--target", str(args.target)]
    log(f"sample_factory: {' '.join(cmd)}")
    load0 = os.getloadavg()[0]
    launch = time.time()
    t0 = time.monotonic()
    rc, tree = run_child(cmd, env, args.warmup + args.seconds + 400, work / "sf.stdout", work / "sf.stderr")
    process_s = time.monotonic() - t0
    results = [r for r in _read_jsonl(work / "sf.stdout") if r.get("system") == "sample_factory"]
    if rc != 0 or not results or "error" in results[-1]:
        tail = (work / "sf.stderr").read_text()[-3000:]
        raise RuntimeError(f"sample_factory_appo.py exited with {rc} and results {results[-1:]}:\n{tail}")
    res = results[-1]
    res["process_s"] = process_s
    res["task"] = args.task
    res["time_to_target_s"] = res["target_epoch"] - launch if res.get("target_epoch") else None
    res["startup_s"] = res["launch_epoch"] + res["startup_s"] - launch
    res["target_resolution_s"] = 0.0
    t0_epoch, t1_epoch = res.pop("window_epoch", (0.0, 0.0))
    consumed = (res.get("consumed_steps_per_s") or 0.0) * res.get("duration_s", 0.0)
    res.update(cpu_fields(tree, t0_epoch, t1_epoch, consumed))
    res["loadavg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return res


def cpu_fields(tree: ProcessTree, t0: float, t1: float, consumed: float) -> dict[str, float | None]:
    """CPU use of everything a system started (driver, Ray, actors, learner) over its measurement window:
    cores busy on average, and consumed env steps per CPU second (a rate that background load on a shared
    machine disturbs much less than steps per wall-clock second)."""
    mem = {"peak_pss_gib": tree.peak_pss_gib(), "window_peak_pss_gib": tree.peak_pss_gib(t0, t1),
           "peak_pss_by_role_mib": tree.peak_pss_by_role_mib()}
    cpu = tree.cpu_between(t0, t1)
    if cpu is None or t1 <= t0:
        return {"cpu_cores_used": None, "consumed_steps_per_cpu_s": None, **mem}
    return {"cpu_cores_used": cpu / (t1 - t0), "consumed_steps_per_cpu_s": consumed / cpu if cpu > 0 else None,
            **mem}


def value_at(curve: list[list[Any]], steps: float) -> tuple[float | None, float | None]:
    """(return, success) of the last curve point at or before ``steps`` env steps."""
    best = None
    for p in curve:
        if p[0] <= steps:
            best = p
    return (best[1], best[2]) if best else (None, None)


# ------------------------------------------------------------------------------------------------------------
# --learner-cost: the learner's update rate per exploration bonus (issue 19), in this process, no Ray
# ------------------------------------------------------------------------------------------------------------

#: bonus name -> (preset whose ``bonus:`` lines it takes, overrides on top of them). ``rnd`` and ``noveld`` are
#: the global bonus alone: the E3B x RND / E3B x NovelD presets' lines with the episodic bonus off; ``*_small``:
#: the same on the narrow RND networks (``bonus.rnd_net=small``).
BONUSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "none": ("configs/minihack_multiroom_nobonus.yaml", ()),
    "rnd": ("configs/minihack_multiroom_e3b_rnd.yaml", ("bonus.episodic=none",)),
    "noveld": ("configs/minihack_multiroom_e3b_noveld.yaml", ("bonus.episodic=none",)),
    "e3b": ("configs/minihack_multiroom_e3b.yaml", ()),
    "e3b_rnd": ("configs/minihack_multiroom_e3b_rnd.yaml", ()),
    "e3b_noveld": ("configs/minihack_multiroom_e3b_noveld.yaml", ()),
    "counts": ("configs/minihack_multiroom_counts.yaml", ()),
    "rnd_small": ("configs/minihack_multiroom_e3b_rnd.yaml", ("bonus.episodic=none", "bonus.rnd_net=small")),
    "e3b_rnd_small": ("configs/minihack_multiroom_e3b_rnd.yaml", ("bonus.rnd_net=small",)),
}
LEARNER_COST_BASE = ROOT / "configs" / "minihack_multiroom.yaml"  # what every preset above includes
LEARNER_COST_BONUSES = "none,rnd,e3b,e3b_rnd,noveld,counts"
_HOOKS = ("intrinsic_reward", "policy_weight", "loss")


def bonus_overrides(name: str) -> list[str]:
    """The ``bonus.*`` overrides of bonus ``name``: its preset's ``bonus:`` lines, then its own. On
    ``configs/minihack_multiroom.yaml`` they give the preset's bonus and nothing else of it (e3b_rnd's learner
    lines, its proximal clip, are left out: this measures what the bonus costs)."""
    import yaml

    preset, extra = BONUSES[name]
    section = (yaml.safe_load((ROOT / preset).read_text()) or {}).get("bonus") or {}
    lines = {f"bonus.{k}": v for k, v in section.items()}
    for o in extra:
        key, value = o.split("=", 1)
        lines[key] = value
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in lines.items()]


def learner_cost_overrides(args: argparse.Namespace, name: str) -> list[str]:
    """Every override of bonus ``name``'s config, in order: the bonus lines, the 2-core model and actor settings
    of tools/bench/explore.py (unless ``--no-cpu-overrides``), the local runtime, a shard that holds exactly the
    ``--fill`` sequences and lets the learner sample without new inserts, then ``--distrl-set``."""
    cpu: list[str] = []
    if not args.no_cpu_overrides:
        from explore import CPU_OVERRIDES  # tools/bench/explore.py: one definition of the 2-core settings

        cpu = list(CPU_OVERRIDES)
    return [
        *bonus_overrides(name), *cpu, "runtime.mode=local", f"runtime.seed={args.seed}", f"env.seed={args.seed}",
        f"replay.min_size={args.fill}", "replay.samples_per_insert=0", *args.distrl_set,
    ]


class _HookTimer:
    """Wall seconds each learner extra spends in its hooks (intrinsic_reward, policy_weight, loss), summed.

    The hooks are wrapped on the instances, so the Learner calls them as usual. This is their forward work only:
    their backward runs inside the learner's one ``loss.backward()`` and shows only in the update's total."""

    def __init__(self, extras: dict[str, Any]) -> None:
        self.seconds = dict.fromkeys(extras, 0.0)
        for name, extra in extras.items():
            for hook in _HOOKS:
                setattr(extra, hook, self._wrap(name, getattr(extra, hook)))

    def _wrap(self, name: str, fn: Any) -> Any:
        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[name] += time.perf_counter() - t0

        return timed

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, dict.fromkeys(self.seconds, 0.0)
        return out


class LearnerSetup:
    """One bonus's learner, built as the local runtime builds it (``distrl train --local``:
    distrl/runtime/local.py): replay shards, a ReplaySampler over them, a LearnerWorker (the Learner with the
    extras its config implies) publishing to a WeightStore, and the in-process global count table attached for
    ``bonus.glob=count``. ``measure`` gives the worker a sampler that prefetches like the Ray learner's
    (``--prefetch``, 2; the local runtime builds batches in the learner's thread, prefetch 0) for its block only,
    so no other bonus's prefetch thread runs meanwhile. ``fill`` runs the config's own EnvActor on the real env
    with the learner's initial weights (the E3B embedding included) until the shards hold ``replay.min_size``
    sequences each, counting the visited states into the table as the local runtime does, then closes it."""

    def __init__(self, name: str, cfg: Any, prefetch: int) -> None:
        import torch

        from distrl.bonuses.counts import make_counts
        from distrl.envs.registry import env_spec
        from distrl.learners.bonus import attach_counts
        from distrl.replay.shard import ReplayShard
        from distrl.runtime.learner_worker import LearnerWorker
        from distrl.runtime.weights import WeightStore

        self.name, self.cfg, self.prefetch = name, cfg, prefetch
        torch.manual_seed(cfg.runtime.seed)
        self.spec = env_spec(cfg.env)
        self.shards = [ReplayShard(cfg.replay, j, seed=cfg.runtime.seed + j) for j in range(cfg.replay.num_shards)]
        self.store = WeightStore()
        self.blocks = 0
        self.worker = LearnerWorker(cfg, self.spec, self._sampler(0),
                                    publish=lambda w: self.store.publish(w.version, w))
        self.counts = None
        if cfg.bonus.glob == "count":
            self.counts = make_counts(cfg.bonus.count_shards)
            attach_counts(self.worker.learner.extras, self.counts)
        self.worker.publish_weights()
        self.timer = _HookTimer(self.worker.learner.extras)
        self.fill_s = 0.0
        self.fill_env_steps = 0

    @property
    def learner(self) -> Any:
        return self.worker.learner

    def _sampler(self, prefetch: int) -> Any:
        from distrl.replay.client import LocalShardClient
        from distrl.replay.sampler import ReplaySampler
        from distrl.runtime.common import n_fresh

        cfg = self.cfg
        return ReplaySampler([LocalShardClient(s) for s in self.shards], cfg.replay, cfg.learner.batch_size,
                             n_fresh=n_fresh(cfg), prefetch=prefetch, seed=cfg.runtime.seed + 7919 * self.blocks)

    def fill(self) -> None:
        from distrl.actors.env_actor import EnvActor
        from distrl.learners.duration import DurationExtra

        cfg, t0 = self.cfg, time.monotonic()
        actor = EnvActor(cfg, 0)
        try:
            actor.set_weights(self.store.get()[1])
            dur = self.learner.extras.get("duration")
            i = 0
            while min(s.stats().size for s in self.shards) < cfg.replay.min_size:
                traj = actor.step()
                if traj is None:
                    continue
                if self.counts is not None:  # the states this sequence visited, counted before it is learnt
                    self.counts.increment(actor.drain_state_keys())
                if isinstance(dur, DurationExtra):
                    dur.observe_launched_sequence(traj, cfg.sequence.period)
                shard = self.shards[i % len(self.shards)]
                if not shard.insert(traj, prior=actor.duration_prior(traj), frame_stacks=self.spec.frame_stacks).ok:
                    raise RuntimeError(f"{self.name}: replay shard refused an insert: {shard.stats()}")
                i += 1
            self.fill_env_steps = actor.env_steps
        finally:
            actor.close()
        self.fill_s = time.monotonic() - t0

    def measure(self, updates: int) -> dict[str, Any]:
        """``updates`` updates through the LearnerWorker (sample, Learner.step, priority update, publish), timed,
        after one untimed update (which starts the prefetch thread and warms caches another bonus's block used)."""
        import torch

        torch.set_num_threads(max(1, self.cfg.learner.threads))  # what Learner.__init__ sets (1 on 2 cores)
        cuda = self.learner.device.type == "cuda"
        self.blocks += 1
        self.worker.sampler.close()
        self.worker.sampler = self._sampler(self.prefetch)
        try:
            self.worker.train(max_updates=1, timeout_s=600.0)
            self.timer.take()
            t0 = time.perf_counter()
            report = self.worker.train(max_updates=updates, timeout_s=600.0)
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            hooks = self.timer.take()
        finally:
            self.worker.sampler.close()
            self.worker.sampler = self._sampler(0)
        n = max(report.updates, 1)
        step_s = report.metrics.get("learner/step_time_s", float("nan"))
        return {
            "updates": report.updates, "seconds": round(dt, 3),
            "updates_per_s": round(report.updates / dt, 3),
            "ms_per_update": round(1e3 * dt / n, 2),
            "sequences_per_s": round(report.samples / dt, 2),
            "trained_steps_per_s": round(report.samples * self.cfg.sequence.length / dt, 1),
            "step_ms": round(1e3 * step_s, 2),  # Learner.step alone (its own learner/step_time_s)
            "outside_step_ms": round(1e3 * (dt / n - step_s), 2),  # waiting for the sampler, priorities, publish
            "extra_hook_ms": {k: round(1e3 * v / n, 2) for k, v in hooks.items()},
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }

    def close(self) -> None:
        self.worker.close()


def learner_cost_summary(name: str, rows: list[dict[str, Any]], base_rows: list[dict[str, Any]],
                         setup: LearnerSetup) -> dict[str, Any]:
    """Medians over rounds, and the ratio to ``none`` (``ratio_to_none``: of the median update rates; also per
    round, which pairs blocks measured seconds apart)."""
    med = {k: _median([r[k] for r in rows]) for k in ("updates_per_s", "ms_per_update", "sequences_per_s",
                                                       "trained_steps_per_s", "step_ms", "outside_step_ms")}
    base = {k: _median([r[k] for r in base_rows]) for k in ("updates_per_s", "step_ms")} if base_rows else {}
    hooks = {k: _median([r["extra_hook_ms"][k] for r in rows]) for k in rows[0]["extra_hook_ms"]} if rows else {}
    learner = setup.learner
    ratio = _ratio(med["updates_per_s"], base.get("updates_per_s"))
    step_ratio = _ratio(base.get("step_ms"), med["step_ms"])
    return {
        "bench": "learner_cost_summary", "bonus": name, "rounds": len(rows),
        **{k: (round(v, 3) if v is not None else None) for k, v in med.items()},
        "ratio_to_none": None if ratio is None else round(ratio, 3),
        "ratio_to_none_rounds": [round(r["updates_per_s"] / b["updates_per_s"], 3)
                                 for r, b in zip(rows, base_rows)],
        "step_ratio_to_none": None if step_ratio is None else round(step_ratio, 3),
        "extra_hook_ms": hooks,
        "extras": list(learner.extras),
        "extra_params": {k: sum(p.numel() for p in e.parameters()) for k, e in learner.extras.items()},
        "agent_params": sum(p.numel() for p in learner.agent.parameters()),
        "bonus_config": {k: getattr(setup.cfg.bonus, k) for k in ("episodic", "glob", "combine")},
        "batch": setup.cfg.learner.batch_size,
        "sequence": [setup.cfg.sequence.burn_in, setup.cfg.sequence.length],
        "device": str(learner.device),
        "fill_sequences": sum(s.stats().size for s in setup.shards),
        "fill_s": round(setup.fill_s, 1),
    }


def learner_cost_main(args: argparse.Namespace) -> int:
    """``--learner-cost``: see the module docstring."""
    import torch

    from distrl.config import load_config

    names = [b.strip() for b in args.bonuses.split(",") if b.strip()]
    unknown = sorted(set(names) - set(BONUSES))
    if unknown or not names:
        raise SystemExit(f"--bonuses: unknown {unknown}; choose from {tuple(BONUSES)}")
    if "none" not in names:
        names.insert(0, "none")  # the reference of every ratio
    base = Path(args.config) if args.config else LEARNER_COST_BASE
    configs = {n: load_config(base, learner_cost_overrides(args, n)) for n in names}
    emit({"bench": "learner_cost_machine", **machine_info(), "torch": torch.__version__,
          "torch_threads": configs["none"].learner.threads, "config": str(base),
          "overrides": {n: learner_cost_overrides(args, n) for n in names},
          "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}})
    setups: dict[str, LearnerSetup] = {}
    try:
        for n in names:
            log(f"learner cost: {n}: building the learner and filling replay from {configs[n].env.name} "
                f"(load average {os.getloadavg()[0]:.2f})")
            s = setups[n] = LearnerSetup(n, configs[n], args.prefetch)
            s.fill()
            if args.learner_warmup > 0:
                s.measure(args.learner_warmup)  # untimed: allocator, first-call and optimizer-state warm-up
            log(f"learner cost: {n}: extras {list(s.learner.extras)}, {sum(x.stats().size for x in s.shards)} "
                f"sequences from {s.fill_env_steps} env steps in {s.fill_s:.1f} s")
        rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for rnd in range(args.rounds):
            # Rounds alternate the order, so a drift in the machine's load hits every bonus alike.
            for n in names if rnd % 2 == 0 else list(reversed(names)):
                res = setups[n].measure(args.updates)
                rows[n].append(res)
                emit({"bench": "learner_cost", "bonus": n, "round": rnd, **res})
        for n in names:
            emit(learner_cost_summary(n, rows[n], rows["none"], setups[n]))
    finally:
        for s in setups.values():
            s.close()
    return 0


# ------------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------------


def _median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratio_line(env_name: str, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """distrl vs RLlib: medians over rounds of each rate, their ratios, and sample efficiency (the mean return
    of the last 100 episodes at the env-step count both runs of a round reached; median over rounds)."""
    ds, rs = results["distrl"], results["rllib_appo"]

    def med(runs: list[dict[str, Any]], key: str) -> float | None:
        return _median([x.get(key) for x in runs])

    at: dict[str, list[float | None]] = {k: [] for k in ("common", "d_ret", "r_ret", "d_succ", "r_succ")}
    for d, r in zip(ds, rs):
        common = min(d["env_steps"], r["env_steps"])
        d_ret, d_succ = value_at(d["curve"], common)
        r_ret, r_succ = value_at(r["curve"], common)
        for k, v in zip(at, (common, d_ret, r_ret, d_succ, r_succ)):
            at[k].append(v)
    raw = med(results.get("raw_env", []), "env_steps_per_s")
    d_c, r_c = med(ds, "consumed_steps_per_s"), med(rs, "consumed_steps_per_s")
    return {
        "bench": "train_rate_ratio", "env": env_name, "metric": "consumed_steps_per_s", "rounds": len(ds),
        "distrl_per_s": d_c, "rllib_per_s": r_c, "ratio": _ratio(d_c, r_c),
        "env_steps_ratio": _ratio(med(ds, "env_steps_per_s"), med(rs, "env_steps_per_s")),
        "trained_steps_ratio": _ratio(med(ds, "trained_steps_per_s"), med(rs, "trained_steps_per_s")),
        "per_cpu_s_ratio": _ratio(med(ds, "consumed_steps_per_cpu_s"), med(rs, "consumed_steps_per_cpu_s")),
        "raw_env_per_s": raw,
        "distrl_fraction_of_raw": _ratio(med(ds, "env_steps_per_s"), raw),
        "rllib_fraction_of_raw": _ratio(med(rs, "env_steps_per_s"), raw),
        "common_env_steps": _median(at["common"]),
        "distrl_return_at_common": _median(at["d_ret"]), "rllib_return_at_common": _median(at["r_ret"]),
        "distrl_success_at_common": _median(at["d_succ"]), "rllib_success_at_common": _median(at["r_succ"]),
    }


def sf_ratio_line(task: str, env_name: str, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Every system vs Sample Factory on one task: medians over rounds of each system's rates, cores, peak PSS
    and time to the target, and their ratios to Sample Factory's (``<system>_<key>_ratio``; for peak PSS and
    time to target, > 1 means more memory / slower than Sample Factory)."""
    keys = ("consumed_steps_per_s", "trained_steps_per_s", "env_steps_per_s", "consumed_steps_per_cpu_s",
            "cpu_cores_used", "peak_pss_gib", "time_to_target_s", "startup_s")
    sf = {k: _median([r.get(k) for r in results["sample_factory"]]) for k in keys}
    out: dict[str, Any] = {"bench": "train_rate_vs_sample_factory", "task": task, "env": env_name,
                           "rounds": len(results["sample_factory"]),
                           **{f"sample_factory_{k}": v for k, v in sf.items()}}
    for system in ("distrl", "rllib_appo"):
        runs = results.get(system) or []
        if not runs:
            continue
        for k in keys:
            v = _median([r.get(k) for r in runs])
            out[f"{system}_{k}"] = v
            out[f"{system}_{k}_ratio"] = _ratio(v, sf[k])
        out[f"{system}_times_to_target_s"] = [r.get("time_to_target_s") for r in runs]
    out["sample_factory_times_to_target_s"] = [r.get("time_to_target_s") for r in results["sample_factory"]]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="measured seconds per training run")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds discarded at the start of each training run")
    p.add_argument("--raw-seconds", type=float, default=20.0, help="seconds of the raw env measurement")
    p.add_argument("--envs", type=int, default=16, help="envs per env actor / env runner / raw process")
    p.add_argument("--env", default="MiniHack-Room-5x5-v0")
    p.add_argument("--config", default=None,
                   help="distrl config of the room5x5 task (its env and model are also Sample Factory's and RLlib's; "
                        "default configs/quickstart.yaml); with --learner-cost, the base config every bonus's lines "
                        "go on (default configs/minihack_multiroom.yaml, which the MultiRoom presets include)")
    p.add_argument("--pong-config", default=str(ROOT / "configs" / "pong.yaml"), help="distrl config of the pong task")
    p.add_argument("--tasks", default="room5x5", help=f"comma list from {tuple(TASKS)}")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list from {SYSTEMS}")
    p.add_argument("--distrl-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra distrl config override, repeatable (e.g. replay.samples_per_insert=2.0)")
    p.add_argument("--rllib-learners", type=int, default=1,
                   help="RLlib learner actors (1 = a learner process, like distrl's; 0 = in the driver)")
    p.add_argument("--rllib-venv", type=Path, default=RLLIB_VENV)
    p.add_argument("--sf-venv", type=Path, default=SF_VENV, help="Sample Factory venv (tools/bench/install_sf.sh)")
    p.add_argument("--sf-workers", type=int, default=2, help="Sample Factory rollout workers sharing --envs envs")
    p.add_argument("--sf-device", choices=("cpu", "gpu"), default="cpu",
                   help="Sample Factory's device (gpu: its learner and policy worker on the GPU; compare with "
                        "--distrl-set learner.device=cuda)")
    p.add_argument("--ray-worker-niceness", type=int, default=0,
                   help="RAY_worker_niceness for both Ray instances (Ray's own default is 15; distrl's local "
                        "clusters use 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of round 0; round r runs seed + r (every system)")
    p.add_argument("--rounds", type=int, default=None,
                   help="repeat the measurements, alternating the order (default 1; --learner-cost: 5)")
    p.add_argument("--keep", type=Path, default=None, help="keep run dirs and child logs here")
    p.add_argument("--curves", action="store_true", help="include the learning curves in the JSON lines")
    p.add_argument("--quick", action="store_true",
                   help="short smoke run: 30 s measured, 15 s warm-up, 5 s raw (--learner-cost: 32 sequences, "
                        "1 warm-up and 3 timed updates per bonus, 1 round)")
    lc = p.add_argument_group("--learner-cost: the learner's update rate per exploration bonus (no Ray)")
    lc.add_argument("--learner-cost", action="store_true",
                    help="measure the learner's update rate per bonus instead of the training systems")
    lc.add_argument("--bonuses", default=LEARNER_COST_BONUSES,
                    help=f"comma list from {tuple(BONUSES)} ('none', the reference, is always measured)")
    lc.add_argument("--updates", type=int, default=None, help="timed updates per (bonus, round) block (30)")
    lc.add_argument("--learner-warmup", type=int, default=None,
                    help="untimed updates per bonus before round 1 (5)")
    lc.add_argument("--fill", type=int, default=None,
                    help="sequences in replay per shard (replay.min_size; 256), from a real rollout per bonus")
    lc.add_argument("--prefetch", type=int, default=2,
                    help="ReplaySampler prefetch (2: the Ray learner's; 0: the local runtime's, serial)")
    lc.add_argument("--no-cpu-overrides", action="store_true",
                    help="leave out tools/bench/explore.py's 2-core model and actor overrides (CPU_OVERRIDES)")
    args = p.parse_args(argv)
    if args.learner_cost:
        for key, full, quick in (("fill", 256, 32), ("learner_warmup", 5, 1), ("updates", 30, 3), ("rounds", 5, 1)):
            if getattr(args, key) is None:
                setattr(args, key, quick if args.quick else full)
        return learner_cost_main(args)
    args.config = args.config or str(ROOT / "configs" / "quickstart.yaml")
    args.rounds = 1 if args.rounds is None else args.rounds
    if args.quick:
        args.seconds, args.warmup, args.raw_seconds = 30.0, 15.0, 5.0
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks or set(tasks) - set(TASKS):
        p.error(f"unknown tasks {sorted(set(tasks) - set(TASKS))}; choose from {tuple(TASKS)}")

    env = dict(os.environ)
    env["RAY_worker_niceness"] = str(args.ray_worker_niceness)
    env.pop("RAY_ADDRESS", None)  # each system starts its own local Ray
    env["PYTHONUNBUFFERED"] = "1"

    info = machine_info()
    raylets_before = raylet_count()
    emit({"bench": "train_rate_machine", **info, "raylets_before": raylets_before,
          "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}})

    work = Path(tempfile.mkdtemp(prefix="train_rate_")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {t: {} for t in tasks}
    failures: dict[str, str] = {}
    task_args = {t: task_namespace(args, t) for t in tasks}
    for rnd in range(args.rounds):
        # Rounds alternate the systems, so slow drifts in the machine's background load hit each alike.
        order = systems if rnd % 2 == 0 else [s for s in systems if s == "raw_env"] + [
            s for s in reversed(systems) if s != "raw_env"]
        for task in tasks:
            targs = task_args[task]
            targs.seed = args.seed + rnd  # every system of a round runs one seed; rounds run different seeds
            for system in order:
                log(f"round {rnd + 1}/{args.rounds}, {task}: measuring {system} "
                    f"(load average {os.getloadavg()[0]:.2f})")
                rdir = work / f"{task}_round{rnd}"
                try:
                    if system == "raw_env":
                        res = measure_raw(targs.env, args.envs, args.raw_seconds, args.seed)
                        res["task"] = task
                    elif system == "distrl":
                        res = measure_distrl(targs, env, rdir)
                    elif system == "sample_factory":
                        res = measure_sf(targs, env, rdir)
                    else:
                        res = measure_rllib(targs, env, rdir)
                except Exception as e:  # report and go on: one broken side must not hide the others
                    failures[f"{task}/{system}"] = str(e)
                    emit({"bench": "train_rate", "system": system, "task": task, "env": targs.env, "round": rnd,
                          "error": str(e)[-2000:]})
                    continue
                res["round"], res["seed"] = rnd, targs.seed
                results[task].setdefault(system, []).append(res)
                emit(res if args.curves else {k: v for k, v in res.items() if k != "curve"})

    for task in tasks:
        if results[task].get("distrl") and results[task].get("rllib_appo"):
            emit({**ratio_line(task_args[task].env, results[task]), "task": task})
        if results[task].get("sample_factory"):
            emit(sf_ratio_line(task, task_args[task].env, results[task]))
    raylets_after = raylet_count()
    if raylets_after > raylets_before:
        log(f"note: {raylets_after} raylets now vs {raylets_before} before; ours are gone (checked by session "
            "pid), so the others belong to other processes on this machine")
    if args.keep is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


def task_namespace(args: argparse.Namespace, task: str) -> argparse.Namespace:
    """``args`` with the task's env name, distrl config and target."""
    env_name, config_opt, target = TASKS[task]
    return argparse.Namespace(**{**vars(args), "task": task, "env": env_name or args.env,
                                 "config": getattr(args, config_opt), "target": target})


if __name__ == "__main__":
    sys.exit(main())
