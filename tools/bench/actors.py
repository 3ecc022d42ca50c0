"""Env-actor throughput vs the raw env rate, on this machine (one JSON object per result line on stdout).

For each env (MiniHack-Room-5x5, MiniHack-MultiRoom-N4, ALE/Pong-v5) it builds long-lived process pools and
measures them in windows of ``--seconds``: each round runs raw, distrl_1, raw, distrl_2, ..., raw, and every
distrl window is divided by the mean of the raw windows just before and after it (a distrl pool whose env config
differs, ``neural_small`` on MiniHack, has a raw pool of its own config, measured around it the same way).
``ratio`` is the median of these paired ratios over rounds, so load from other processes on a shared machine
(the usual case here) largely cancels out; ``raw_steps_per_s`` / ``distrl_steps_per_s`` are medians of the
windows' summed steps/s.
``cpu_ratio`` is the same paired ratio of steps per CPU-second of the whole pool (its processes' user + system
time, VecEnv workers and finished child processes such as MiniHack's level compiler included): insensitive to
how much CPU the pool got, but blind to idle waiting.

Pools (``P`` = ``--procs``, default = CPU count; ``B`` = ``--num-envs`` envs per actor):

* ``raw``: P processes, each stepping B envs (built with the same registry/adapters as distrl) in a tight loop:
  one random action per env from NumPy, ``env.step``, ``env.reset()`` right away when an episode ends. No Ray,
  no policy, no sequence cutting, no copies (the adapters hand out views of their buffers, ``copy_obs=False``,
  as they do inside a VecEnv). This is the strongest simple baseline with the same envs, the
  same env-stepping process count and the same reset handling.
* ``inline``: P :class:`~distrl.actors.env_actor.EnvActor` processes (``env.vectorization=inline``), B envs
  each; compared with ``raw`` (same process count, same envs).
* ``subprocess``: one EnvActor with ``env.vectorization=subprocess`` and ``num_workers=P``, P*B envs, so P
  processes step envs (plus the actor's own process, which runs inference and cuts sequences); compared with
  ``raw`` (P env processes x B envs = the same envs). Spare pre-reset envs per the VecEnv default (on for
  MiniHack, off for Atari); ``subprocess_noprereset`` (not in the default set) turns them off.

Each EnvActor runs its full loop: batched policy call, VecEnv step (per-slot timing, fault checks, autoreset,
episode stats), truncation values, per-slot state reset and the SequenceWriter emitting a Trajectory every
``period`` steps (dropped afterwards: replay transport is measured elsewhere). Policies (torch with 1 thread per
process): ``random`` (:class:`~distrl.actors.env_actor.RandomPolicy`), ``neural_small`` (the small model of the
env family, :data:`SMALL_MODELS`: ``nethack_small`` + LSTM 128 for MiniHack, ``small_cnn`` + LSTM 128 for Atari,
with its config's observation keys, :data:`SMALL_ENV_KEYS`: MiniHack ``glyphs_crop`` and ``blstats``)
and ``neural`` (``build_agent(ModelConfig(), spec)``, the default model). ``--inference`` picks how the actors
run the neural policies (``actor.inference``: ``auto``, the default, runs the models NumPy can run through
:class:`~distrl.models.numpy_act.NumpyPolicy` and the rest through ``Agent.act``; ``torch`` always the latter);
give several to compare them in one run, and each row names the path it measured (``inference``: ``numpy``,
``torch`` or ``torch-bfloat16``). ``--precision`` does the same for ``actor.precision`` (``auto``, the default:
a bfloat16 encoder on CPUs with native bfloat16 dot products; ``float32``; ``bfloat16``).
``--bonus`` does the same for ``bonus.episodic`` (``e3b``: E3B on the actors, its embedding the policy's
encoder architecture, in NumPy where that encoder has a kernel; ``count``: episodic position counts); each row
names it (``episodic_bonus``), and the cost of a bonus is the ratio of its row to the ``none`` row.
``act_us_per_sample`` is one ``act`` of that model and path at batch B measured in the driver process
afterwards (warm caches), and ``cpu_bound_ratio`` the ceiling it implies when every core is busy: env CPU /
(env CPU + inference CPU) per step.

``in_actor_us_per_step`` splits the actors' own step time (their ``time_*_s`` counters over the measured
windows) per env step into ``policy`` (act, truncation values, state resets), ``env`` (the VecEnv: env steps and
resets plus per-slot bookkeeping) and ``other`` (sequence cutting, episode stats); ``cpu_bound_ratio_in_actor``
is the ceiling with the policy cost measured there, right after the envs stepped (cold caches: typically
1.5-2x the driver's warm figure). ``ratio_iqr`` is the interquartile range of the per-round ratios.

Usage::

    .venv/bin/python tools/bench/actors.py            # full run (~4-5 min on 2 cores)
    .venv/bin/python tools/bench/actors.py --quick    # ~1 min smoke run
    .venv/bin/python tools/bench/actors.py --envs MiniHack-Room-5x5-v0 --modes inline --policies random
    .venv/bin/python tools/bench/actors.py --modes inline --policies neural_small --inference auto torch
    .venv/bin/python tools/bench/actors.py --envs ALE/Pong-v5 --modes inline --policies neural_small \
        --precision float32 bfloat16
    .venv/bin/python tools/bench/actors.py --envs MiniHack-MultiRoom-N4-v0 --modes inline --policies neural_small \
        --bonus none e3b
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

from distrl.envs.registry import family_of

ENVS = ("MiniHack-Room-5x5-v0", "MiniHack-MultiRoom-N4-v0", "ALE/Pong-v5")
POLICIES = ("random", "neural_small", "neural")

# ``neural_small``: the small model of each family (configs/minihack_small.yaml, configs/pong_small.yaml).
SMALL_MODELS: dict[str, dict[str, Any]] = {
    "minihack": {"encoder": "nethack_small", "hidden_size": 128, "glyph_embedding_dim": 16},
    "atari": {"encoder": "small_cnn", "hidden_size": 128},
}


# ``neural_small`` also takes its config's observation keys: configs/minihack_small.yaml asks MiniHack only for the
# two the model reads. Other policies use the env's default keys.
SMALL_ENV_KEYS: dict[str, tuple[str, ...]] = {"minihack": ("glyphs_crop", "blstats")}


def cpu_s() -> float:
    """CPU seconds of this process and of its finished child processes (user + system)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def policy_keys(policy: str, env: str) -> tuple[str, ...]:
    """``env.observation_keys`` of a bench policy's pools (and of the raw pool it is compared with)."""
    return SMALL_ENV_KEYS.get(family_of(env)[1], ()) if policy == "neural_small" else ()


def policy_model(policy: str, env: str) -> dict[str, Any]:
    """ModelConfig fields of a bench policy: the default model for ``neural``, the small one for
    ``neural_small``, nothing for ``random``."""
    if policy == "neural_small":
        return dict(SMALL_MODELS[family_of(env)[1]])
    return {}


@dataclass(frozen=True)
class PoolSpec:
    kind: str  # "raw" | "actor"
    env: str
    num_envs: int  # envs per process (raw) or per actor
    procs: int  # processes in the pool
    vectorization: str = "inline"
    num_workers: int = 1
    policy: str = "random"
    model: dict[str, Any] = field(default_factory=dict)
    prereset: bool | None = None
    inference: str = "auto"  # actor.inference
    precision: str = "auto"  # actor.precision
    observation_keys: tuple[str, ...] = ()  # env.observation_keys (empty: the env's default)
    bonus: str = "none"  # bonus.episodic of the actors (e3b: embedding = the policy's encoder architecture)


def _env_cfg(spec: PoolSpec) -> Any:
    from distrl.config import EnvConfig

    return EnvConfig(
        name=spec.env, num_envs=spec.num_envs, vectorization=spec.vectorization, num_workers=spec.num_workers,
        observation_keys=spec.observation_keys,
    )


class _Raw:
    def __init__(self, spec: PoolSpec, seed: int) -> None:
        import numpy as np

        from distrl.envs.registry import env_spec, make_env

        cfg = _env_cfg(spec)
        self.envs = [make_env(cfg, seed * 1000 + i) for i in range(spec.num_envs)]
        for e in self.envs:
            if hasattr(e, "copy_obs"):  # nothing reads the observations: views of the env's buffers will do
                e.copy_obs = False
            e.reset()
        self.rng = np.random.default_rng(seed)
        self.num_actions = env_spec(cfg).num_actions

    def run(self, seconds: float) -> tuple[int, float, float, tuple[float, float, float]]:
        envs, rng, a_n, b = self.envs, self.rng, self.num_actions, len(self.envs)
        n = 0
        c0, t0 = cpu_s(), time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            for env, a in zip(envs, rng.integers(0, a_n, b).tolist()):
                _, _, term, trunc, _ = env.step(a)
                if term or trunc:
                    env.reset()
            n += b
        return n, time.perf_counter() - t0, cpu_s() - c0, (0.0, 0.0, 0.0)

    def close(self) -> None:
        for e in self.envs:
            e.close()


class _Actor:
    def __init__(self, spec: PoolSpec, seed: int) -> None:
        from distrl.actors.env_actor import EnvActor, RandomPolicy
        from distrl.config import ActorConfig, BonusConfig, ExperimentConfig, ModelConfig, SequenceConfig
        from distrl.envs.registry import env_spec

        cfg = ExperimentConfig(
            env=replace(_env_cfg(spec), seed=seed),
            model=ModelConfig(**spec.model),
            sequence=SequenceConfig(length=40, burn_in=0, period=40),
            actor=ActorConfig(inference=spec.inference, precision=spec.precision),
            bonus=BonusConfig(episodic=spec.bonus),  # type: ignore[arg-type]
        )
        policy = RandomPolicy(env_spec(cfg.env).num_actions, seed) if spec.policy == "random" else None
        self.actor = EnvActor(cfg, actor_id=seed, policy=policy, prereset=spec.prereset)
        self.actor.step()

    def _cpu(self) -> float:
        """CPU seconds of this process plus its VecEnv worker processes (subprocess vectorisation), each with
        the children it has waited for."""
        total = cpu_s()
        for p in getattr(self.actor.venv, "_procs", []):
            with open(f"/proc/{p.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime + stime + cutime + cstime
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        return total

    def run(self, seconds: float) -> tuple[int, float, float, tuple[float, float, float]]:
        """(env steps, wall s, CPU s, (policy, env, total) wall s inside EnvActor.step)."""
        a = self.actor
        n0, p0, e0, s0 = a.env_steps, a.time_policy_s, a.time_env_s, a.time_step_s
        c0, t0 = self._cpu(), time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            a.step()
        times = (a.time_policy_s - p0, a.time_env_s - e0, a.time_step_s - s0)
        return a.env_steps - n0, time.perf_counter() - t0, self._cpu() - c0, times

    def close(self) -> None:
        self.actor.close()


def _worker(conn: Any, spec: PoolSpec, seed: int) -> None:
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    try:
        runner = _Raw(spec, seed) if spec.kind == "raw" else _Actor(spec, seed)
    except BaseException as e:
        conn.send(("error", repr(e)))
        raise
    if isinstance(runner, _Actor):
        policy = runner.actor.policy
        timings = getattr(getattr(policy, "agent", policy), "acting_dtype_timings_us", None)
        conn.send(("ready", (policy_path(policy), timings)))
    else:
        conn.send(("ready", None))
    while True:
        cmd, arg = conn.recv()
        if cmd == "run":
            conn.send(("done", runner.run(arg)))
        else:
            runner.close()
            conn.send(("closed", None))
            return


class Pool:
    """``spec.procs`` long-lived processes; :meth:`run` starts them together and returns the summed rate."""

    def __init__(self, spec: PoolSpec, seed: int) -> None:
        ctx = mp.get_context("forkserver")  # imports (torch, NLE, ALE) happen once, in the server
        self.spec = spec
        self.steps = 0
        self.times = [0.0, 0.0, 0.0]
        self.conns, self.procs = [], []
        for i in range(spec.procs):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(b, spec, seed + i), daemon=False)
            p.start()
            self.conns.append(a)
            self.procs.append(p)

    def wait_ready(self) -> None:
        self.paths: list[str] = []  # each actor's acting path, as it chose it
        self.dtype_timings: list[dict[str, float]] = []  # what its actor.precision=auto timing measured, if any
        for c in self.conns:
            status, msg = c.recv()
            if status != "ready":
                raise RuntimeError(f"pool {self.spec}: {msg}")
            if msg is not None:
                path, timings = msg
                self.paths.append(path)
                if timings is not None:
                    self.dtype_timings.append({k: round(v, 1) for k, v in timings.items()})

    def run(self, seconds: float) -> tuple[float, float]:
        """(steps per wall-clock second, summed over processes; steps per CPU second of the whole pool).

        Also adds to :attr:`steps` and :attr:`times` (the actors' policy / env / total step seconds)."""
        for c in self.conns:
            c.send(("run", seconds))
        rate, steps, cpu = 0.0, 0, 0.0
        for c in self.conns:
            _, (n, dt, cpu_used, times) = c.recv()
            rate += n / dt
            steps += n
            cpu += cpu_used
            self.times = [a + b for a, b in zip(self.times, times)]
        self.steps += steps
        return rate, steps / max(cpu, 1e-9)

    def close(self) -> None:
        for c in self.conns:
            c.send(("close", None))
        for c in self.conns:
            c.recv()
        for p in self.procs:
            p.join(30)


def _acting_policy(env: str, model: dict[str, Any], inference: str, precision: str) -> tuple[Any, Any]:
    """(the policy a CPU actor builds for this model, ``actor.inference`` and ``actor.precision``, env spec)."""
    import torch

    from distrl.config import ActorConfig, EnvConfig, ExperimentConfig, ModelConfig
    from distrl.envs.registry import env_spec
    from distrl.models.acting import build_acting_policy as acting_policy

    cfg = ExperimentConfig(env=EnvConfig(name=env), model=ModelConfig(**model),
                           actor=ActorConfig(inference=inference, precision=precision))
    spec = env_spec(cfg.env)
    return acting_policy(cfg, spec, torch.device("cpu"), 0), spec


def acting_path(env: str, model: dict[str, Any], inference: str, precision: str = "auto") -> str:
    """The path an actor takes for this model, ``actor.inference`` and ``actor.precision``: ``numpy``,
    ``numpy+torch-conv`` (a CNN encoder's conv stack through PyTorch, the rest in NumPy; ``-bfloat16`` when
    the convs run in bfloat16), ``torch`` or ``torch-bfloat16``. With ``precision=auto`` the dtype part is
    this process's own timing; the JSON rows report what the actors themselves chose (:func:`policy_path`)."""
    policy, _ = _acting_policy(env, model, inference, precision)
    return policy_path(policy)


def policy_path(policy: Any) -> str:
    """:func:`acting_path`'s label for a built policy (``none`` for the random policy)."""
    import torch

    from distrl.actors.env_actor import RandomPolicy
    from distrl.models.numpy_act import NumpyPolicy, has_torch_convs

    if isinstance(policy, RandomPolicy):
        return "none"
    if isinstance(policy, NumpyPolicy):
        if not has_torch_convs(policy.agent):
            return "numpy"
        return "numpy+torch-conv" + ("" if policy.conv_dtype == torch.float32 else "-bfloat16")
    return "torch" if policy.acting_dtype == torch.float32 else f"torch-{str(policy.acting_dtype).split('.')[-1]}"


def act_cost_us(
    env: str, batch: int, model: dict[str, Any], inference: str = "torch", precision: str = "auto", reps: int = 20
) -> float:
    """CPU microseconds per sample of one ``act`` at batch size ``batch`` of ``ModelConfig(**model)`` on the
    path the actors take with ``actor.inference=inference`` (warm: measured alone, after 3 calls)."""
    import numpy as np
    import torch

    agent, spec = _acting_policy(env, model, inference, precision)
    rng = np.random.default_rng(0)
    obs = {k: rng.integers(0, 100, (batch, *a.shape)).astype(a.dtype) for k, a in spec.obs.items()}
    state = agent.initial_state(batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for _ in range(3):
                agent.act(obs, state)
            times = []
            for _ in range(reps):
                c = time.process_time()
                agent.act(obs, state)
                times.append(time.process_time() - c)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times) / batch * 1e6


def framework_overhead(num_envs: int, reps: int = 15, steps: int = 200) -> dict[str, Any]:
    """CPU µs per env step that distrl adds around a near-free env (``fake:counting``), one process.

    Raw loop vs InlineVecEnv vs EnvActor (random policy, sequence cutting), interleaved; the minimum over
    ``reps`` is robust to other load on the machine. Divide by an env's CPU per step for the expected overhead
    share at that env's speed (e.g. MiniHack ~400 µs, Pong ~700 µs).
    """
    import numpy as np
    import torch

    from distrl.actors.env_actor import EnvActor, RandomPolicy
    from distrl.config import EnvConfig, ExperimentConfig, SequenceConfig
    from distrl.envs.registry import make_env
    from distrl.envs.vector import make_vec_env

    torch.set_num_threads(1)
    cfg = EnvConfig(name="fake:counting", num_envs=num_envs, fake_episode_len=50)
    envs = [make_env(cfg, i) for i in range(num_envs)]
    for e in envs:
        e.reset()
    rng = np.random.default_rng(0)
    venv = make_vec_env(cfg, num_envs, 0)
    venv.reset()
    actor = EnvActor(
        ExperimentConfig(env=cfg, sequence=SequenceConfig(length=40, period=40)), 0, RandomPolicy(3)
    )
    actor.step()

    def raw() -> None:
        for _ in range(steps):
            for env, a in zip(envs, rng.integers(0, 3, num_envs).tolist()):
                _, _, term, trunc, _ = env.step(a)
                if term or trunc:
                    env.reset()

    def vec() -> None:
        for _ in range(steps):
            venv.step(rng.integers(0, 3, num_envs))

    def act() -> None:
        for _ in range(steps):
            actor.step()

    best = {"raw": 1e9, "vecenv": 1e9, "env_actor": 1e9}
    for _ in range(reps):
        for name, fn in (("raw", raw), ("vecenv", vec), ("env_actor", act)):
            c = time.process_time()
            fn()
            best[name] = min(best[name], (time.process_time() - c) / (steps * num_envs) * 1e6)
    venv.close()
    actor.close()
    return {
        "bench": "actors_overhead",
        "num_envs": num_envs,
        "raw_us_per_step": round(best["raw"], 2),
        "vecenv_overhead_us_per_step": round(best["vecenv"] - best["raw"], 2),
        "actor_overhead_us_per_step": round(best["env_actor"] - best["raw"], 2),
    }


def _iqr(xs: list[float]) -> list[float]:
    """[25th, 75th] percentile of the per-round ratios: how far one round's ratio moves on this machine."""
    if len(xs) < 2:
        return [round(xs[0], 3)] * 2 if xs else []
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return [round(q[0], 3), round(q[2], 3)]


def bench_env(env: str, args: argparse.Namespace) -> None:
    procs, b = args.procs, args.num_envs
    pools: dict[str, Pool] = {}
    raw_of: dict[str, str] = {}  # distrl pool -> the raw pool with the same env config
    paths: dict[str, str] = {}  # pool name -> acting path ("none" for the random policy)
    for mode in args.modes:
        for policy in args.policies:
            model = policy_model(policy, env)
            keys = policy_keys(policy, env)
            raw_name = "raw" if not keys else f"raw[{','.join(keys)}]"
            variants = [("auto", "auto")] if policy == "random" else [
                (i, p) for i in args.inference for p in args.precision]
            for (inference, precision), bonus in itertools.product(variants, args.bonus):
                path = "none" if policy == "random" else acting_path(env, model, inference, precision)
                if any(k.startswith(f"{mode}/{policy}/") and k.endswith(f"/{bonus}") and p == path
                       for k, p in paths.items()):
                    continue  # another --inference/--precision value runs the same path
                name = f"{mode}/{policy}/{inference}/{precision}/{bonus}"
                paths[name] = path
                if mode == "inline":
                    spec = PoolSpec("actor", env, b, procs, "inline", 1, policy, model, inference=inference,
                                    precision=precision, observation_keys=keys, bonus=bonus)
                else:
                    pre = False if mode == "subprocess_noprereset" else None
                    spec = PoolSpec("actor", env, b * procs, 1, "subprocess", procs, policy, model, prereset=pre,
                                    inference=inference, precision=precision, observation_keys=keys, bonus=bonus)
                if raw_name not in pools:
                    pools[raw_name] = Pool(PoolSpec("raw", env, b, procs, observation_keys=keys), seed=100)
                pools[name] = Pool(spec, seed=200)
                raw_of[name] = raw_name
    t0 = time.perf_counter()
    for p in pools.values():
        p.wait_ready()
    build_s = time.perf_counter() - t0
    for p in pools.values():  # warm-up: caches, allocator, first sequences
        p.run(args.warmup)
        p.steps, p.times = 0, [0.0, 0.0, 0.0]
    # Each round: raw, d1, raw, d2, ..., raw (a pool whose raw pool differs from the previous one's gets its own
    # window before it). Every distrl window is paired with the mean of its raw pool's windows right before and
    # after it, so slow changes in background load cancel out of the ratio.
    names = list(raw_of)
    raw_w: dict[str, list[float]] = {r: [] for r in set(raw_of.values())}
    raw_c: dict[str, list[float]] = {r: [] for r in raw_w}
    dist_w: dict[str, list[float]] = {k: [] for k in names}
    dist_c: dict[str, list[float]] = {k: [] for k in names}
    ratios: dict[str, list[float]] = {k: [] for k in names}
    cpu_ratios: dict[str, list[float]] = {k: [] for k in names}
    load0 = os.getloadavg()[0]
    for _ in range(args.rounds):
        last: tuple[str, float, float] | None = None  # the window just measured, if it was a raw one
        for k in names:
            rk = raw_of[k]
            if last is None or last[0] != rk:
                r, c = pools[rk].run(args.seconds)
                raw_w[rk].append(r)
                raw_c[rk].append(c)
                last = (rk, r, c)
            dw, dc = pools[k].run(args.seconds)
            r, c = pools[rk].run(args.seconds)
            dist_w[k].append(dw)
            dist_c[k].append(dc)
            ratios[k].append(dw / ((last[1] + r) / 2))
            cpu_ratios[k].append(dc / ((last[2] + c) / 2))
            raw_w[rk].append(r)
            raw_c[rk].append(c)
            last = (rk, r, c)
    load1 = os.getloadavg()[0]
    for p in pools.values():
        p.close()
    med = statistics.median
    act_us = {
        (p, i, q): act_cost_us(env, b, policy_model(p, env), i, q)
        for p in args.policies if p != "random" for i in args.inference for q in args.precision
    }
    for k in names:
        mode, policy, inference, precision, bonus = k.split("/")
        raw, raw_cpu = med(raw_w[raw_of[k]]), med(raw_c[raw_of[k]])
        row: dict[str, Any] = {
            "bench": "actors",
            "env": env,
            "policy": policy,
            # what the pool's actors chose (with precision=auto each times the dtypes itself; a mixed pool
            # shows both, "a/b"); the driver's own guess was only used to skip duplicate variants
            "inference": "/".join(sorted(set(pools[k].paths))) or paths[k],
            "precision": precision,
            "observation_keys": list(policy_keys(policy, env)) or "default",
            "vectorization": mode,
            "episodic_bonus": bonus,
            "num_envs": b * procs,
            "env_processes": procs,
            "raw_steps_per_s": round(raw, 1),
            "distrl_steps_per_s": round(med(dist_w[k]), 1),
            "ratio": round(med(ratios[k]), 3),
            "raw_steps_per_cpu_s": round(raw_cpu, 1),
            "distrl_steps_per_cpu_s": round(med(dist_c[k]), 1),
            "cpu_ratio": round(med(cpu_ratios[k]), 3),
            "ratio_rounds": [round(x, 3) for x in ratios[k]],
            "ratio_iqr": _iqr(ratios[k]),
            "rounds": args.rounds,
            "window_s": args.seconds,
            "build_s": round(build_s, 1),
            "loadavg_1m": [round(load0, 2), round(load1, 2)],
        }
        if pools[k].dtype_timings:  # CPU µs per encoder call, one dict per actor (why it chose its dtype)
            row["acting_dtype_timings_us"] = pools[k].dtype_timings
        # Inside the actors (wall time of EnvActor.step, all measured windows): policy (act + truncation
        # values + state resets), VecEnv, and the rest (sequence cutting, bookkeeping), per env step.
        pool = pools[k]
        pol_us, env_us, step_us = (t / max(pool.steps, 1) * 1e6 for t in pool.times)
        row["in_actor_us_per_step"] = {
            "policy": round(pol_us, 1), "env": round(env_us, 1), "other": round(step_us - pol_us - env_us, 1)
        }
        if (policy, inference, precision) in act_us:
            # The CPU-bound ceiling: env CPU per step / (env CPU + inference CPU per step), with the act cost
            # measured alone in the driver (warm caches) and inside the actors (right after the env steps).
            us = act_us[(policy, inference, precision)]
            row["model"] = policy_model(policy, env)
            row["act_us_per_sample"] = round(us, 1)
            row["cpu_bound_ratio"] = round(1.0 / (1.0 + us * 1e-6 * raw_cpu), 3)
            row["cpu_bound_ratio_in_actor"] = round(1.0 / (1.0 + pol_us * 1e-6 * raw_cpu), 3)
        print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envs", nargs="+", default=list(ENVS))
    ap.add_argument(
        "--modes", nargs="+", default=["inline", "subprocess"],
        choices=["inline", "subprocess", "subprocess_noprereset"],
    )
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    ap.add_argument(
        "--inference", nargs="+", default=["auto"], choices=["auto", "torch", "numpy"],
        help="actor.inference for the neural policies; several = one pool each (paths measured once)",
    )
    ap.add_argument(
        "--precision", nargs="+", default=["auto"], choices=["auto", "float32", "bfloat16"],
        help="actor.precision for the neural policies' torch path; several = one pool each",
    )
    ap.add_argument(
        "--bonus", nargs="+", default=["none"], choices=["none", "e3b", "count"],
        help="bonus.episodic of the actors; several = one pool each (e3b's embedding is the policy's encoder)",
    )
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2, help="env-stepping processes")
    ap.add_argument("--num-envs", type=int, default=16, help="envs per env-stepping process")
    ap.add_argument("--seconds", type=float, default=1.0, help="measurement window per pool per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="short windows, one round, 8 envs per process")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.warmup, args.num_envs = 0.5, 2, 0.5, 8
    mp.set_forkserver_preload(
        ["torch", "numpy", "distrl.actors.env_actor", "distrl.models.agent", "distrl.envs.vector"]
        + [family_of(e)[0] for e in args.envs]
    )
    t0 = time.perf_counter()
    print(json.dumps(framework_overhead(args.num_envs)), flush=True)
    for env in args.envs:
        bench_env(env, args)
    print(f"# total {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
