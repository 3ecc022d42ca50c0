"""RLlib APPO on a MiniHack task with distrl's own network: the RLlib side of ``tools/bench/train_rate.py``.

Runs inside its own virtualenv (``.venv-rllib``: ray[rllib], minihack, and distrl installed with
``--no-deps``), never inside distrl's: ``train_rate.py`` creates that venv when it is missing and starts this
script as a subprocess. It trains for a fixed wall time and prints ONE JSON line on stdout (everything else
goes to stderr): throughput over the measurement window (after ``--warmup`` seconds) and a learning curve.

What is compared with distrl, and how it is kept equal:

* **Env**: the same adapter (``distrl.envs.registry.make_env`` with the env section of ``--config``, default
  the quickstart's, and ``env.name`` = ``--env``: MiniHack's observation keys and per-episode reseeding, or
  Atari's DeepMind preprocessing), registered as an RLlib env; every sub-env gets its own seed.
* **Model**: the exact network distrl trains, ``distrl.models.agent.Agent`` built from the same
  :class:`~distrl.config.ModelConfig` (the quickstart's: NetHack encoder → LSTM 256 → policy/value heads; or
  ``--config``'s, e.g. Pong's Nature CNN; same parameter count, printed in the JSON), wrapped in an RLlib
  ``TorchRLModule`` that implements the APIs APPO needs
  (``ValueFunctionAPI``, ``TargetNetworkAPI``: the target network is a copy of the whole agent).
  RLlib feeds ``[B, T, ...]`` sequences cut at episode ends (zero-padded), so the module transposes to
  distrl's time-major layout and needs no in-sequence resets.
* **Topology**: ``--runners`` env runner(s) with ``--envs`` envs each (gymnasium sync vectorisation: one
  process, like distrl's inline actor), ``--learners`` learner actor(s) (1 CPU each; torch then runs 1
  thread, as distrl's learner does), on a local Ray with the same CPU count.
* **Batch and reuse**: rollout fragments and LSTM sequences of ``--seq-len`` steps, a train batch of
  ``--batch-seqs`` sequences, and APPO's circular buffer with K = ``--reuse`` passes per batch: with the
  defaults (40, 32, 2) every update trains on 32 x 40 steps and each env step is trained on up to twice,
  the same work per step as distrl's 50 % fresh / 50 % replay batches of 32 x 40.
* **Hyper-parameters**: lr, entropy and value coefficients, gradient clip and discount are distrl's
  defaults; the rest is APPO's (clip 0.4, target network, no KL loss).

Counters: ``env_steps`` is RLlib's ``num_env_steps_sampled_lifetime``; ``consumed`` counts env steps of
*distinct* batches the learner trained on (a learner subclass counts each batch object once, however often
the circular buffer hands it out), the analogue of distrl's ``learner/env_steps_consumed``; ``trained``
counts every pass (RLlib's ``num_env_steps_trained_lifetime``); ``dropped`` is RLlib's own count of env steps its
learner group turned away (``learner_group_ts_dropped_lifetime``). Batches still waiting in the circular buffer
when the run stops are neither consumed nor dropped. Learning curve: see :class:`EpisodeLog`.

Usage (from the repo root)::

    .venv-rllib/bin/python tools/bench/rllib_appo.py --seconds 60 --warmup 15
    .venv-rllib/bin/python tools/bench/rllib_appo.py --config configs/pong.yaml --env ALE/Pong-v5 --seconds 60
"""

from __future__ import annotations

import time

LAUNCH_EPOCH = time.time()  # before the heavy imports: start-up counts towards the time to the target

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402
import warnings  # noqa: E402
import weakref  # noqa: E402
from dataclasses import replace  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

UNIQUE_KEY = "distrl_bench_env_steps_consumed_lifetime"
ENV_ID = "distrl_minihack"
_env_counter = itertools.count()


def distrl_config(path: str | None, overrides: list[str], env_name: str) -> Any:
    """The distrl ExperimentConfig whose env and model RLlib runs (``env.name`` set to ``env_name``)."""
    from distrl.config import load_config

    return load_config(path, [*overrides, f"env.name={env_name}"])


def make_env(ctx: Any) -> Any:
    """RLlib env creator: distrl's adapter for the config's env (MiniHack, Atari, ...) with a distinct seed per
    sub-env and process, wrapped so that every finished episode is logged (see :class:`EpisodeLog`)."""
    from distrl.envs.registry import make_env as distrl_make_env

    worker = int(getattr(ctx, "worker_index", 0) or 0)
    seed = int(ctx.get("seed", 0)) * 100_000 + worker * 1000 + next(_env_counter)
    env = distrl_make_env(distrl_config(ctx["config"], ctx["overrides"], ctx["env_name"]).env, seed)
    log_dir = ctx.get("episode_log_dir")
    return EpisodeLog(env, log_dir) if log_dir else env


class EpisodeLog(gym.Wrapper):
    """Appends ``wall_time env_steps_of_this_env return success`` to its own file at each episode end.

    RLlib's own ``episode_return_mean`` is reset at every reporting interval, so the learning curve is built
    from these files instead: the env steps at a point in time are the sum over all sub-envs of their step
    counters (the same count distrl's actors report), and the return is the mean over the last 100 finished
    episodes (distrl's ``charts/episode_return`` window).
    """

    def __init__(self, env: Any, log_dir: str) -> None:
        super().__init__(env)
        os.makedirs(log_dir, exist_ok=True)
        self._file = open(os.path.join(log_dir, f"env_{os.getpid()}_{uuid.uuid4().hex[:8]}.txt"), "a")
        self._steps = 0

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._steps += 1
        if terminated or truncated:
            self._file.write(f"{time.time():.3f} {self._steps} {float(info.get('episode_return', 0.0)):.6f} "
                             f"{float(info.get('success', 0.0)):.0f}\n")
            self._file.flush()
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self._file.close()
        super().close()


def learning_curve(log_dir: str, window: int = 100, every: int = 10,
                   target: float | None = None) -> tuple[list[list[float]], int, float | None]:
    """(``[[env_steps, mean_return, success_rate], ...]`` over the last ``window`` episodes, every ``every``
    episodes and at the last one; the number of episodes; the wall time (epoch) at which the mean return of a
    full window first reached ``target``, or None), from the files :class:`EpisodeLog` wrote."""
    rows: list[tuple[float, str, int, float, float]] = []
    for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else []:
        with open(os.path.join(log_dir, name)) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 4:
                    rows.append((float(parts[0]), name, int(parts[1]), float(parts[2]), float(parts[3])))
    rows.sort()
    latest: dict[str, int] = {}
    total = 0
    recent: list[tuple[float, float]] = []
    curve: list[list[float]] = []
    crossed: float | None = None
    for i, (when, name, steps, ret, succ) in enumerate(rows):
        total += steps - latest.get(name, 0)
        latest[name] = steps
        recent.append((ret, succ))
        recent = recent[-window:]
        if (crossed is None and target is not None and len(recent) == window
                and sum(r for r, _ in recent) / window >= target):
            crossed = when
        if (i + 1) % every == 0 or i == len(rows) - 1:
            n = len(recent)
            curve.append([float(total), sum(r for r, _ in recent) / n, sum(s for _, s in recent) / n])
    return curve, len(rows), crossed


def build_classes() -> tuple[type, type]:
    """The RLModule and Learner classes (defined here so that importing this file needs no ray)."""
    import torch
    from ray.rllib.algorithms.appo.torch.appo_torch_learner import APPOTorchLearner
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.learner.utils import make_target_network
    from ray.rllib.core.rl_module.apis import (
        TARGET_NETWORK_ACTION_DIST_INPUTS,
        InferenceOnlyAPI,
        TargetNetworkAPI,
        ValueFunctionAPI,
    )
    from ray.rllib.core.rl_module.torch import TorchRLModule
    from ray.rllib.utils.metrics import ALL_MODULES

    from distrl.envs.registry import env_spec
    from distrl.models.agent import Agent

    def _time_major(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: _time_major(v) for k, v in x.items()}
        return x.transpose(0, 1)

    class DistrlAgentModule(TorchRLModule, ValueFunctionAPI, TargetNetworkAPI, InferenceOnlyAPI):
        """distrl's Agent as an RLlib module. Batches are ``[B, T, ...]``; state ``{"h","c"}: [B, L, H]``."""

        def setup(self) -> None:
            mc = self.model_config
            cfg = distrl_config(mc["config"], mc["overrides"], mc["env_name"])
            model = cfg.model
            if mc["hidden_size"] is not None:
                model = replace(model, hidden_size=int(mc["hidden_size"]))
            self.agent = Agent(model, env_spec(cfg.env))

        def get_initial_state(self) -> dict[str, np.ndarray]:
            s = self.agent.initial_state(1)
            return {k: v[0].numpy() for k, v in s.items()}  # per sample: [L, H]

        def _run(self, agent: Any, batch: dict[str, Any]) -> tuple[Any, Any, Any, dict[str, Any]]:
            obs = _time_major(batch[Columns.OBS])  # [T, B, ...]
            first = next(iter(obs.values()))
            reset = torch.zeros(first.shape[:2], dtype=torch.bool)  # RLlib never crosses episode ends
            x = agent.encoder(agent._to_device(obs))
            y, state = agent.core(x, reset, dict(batch[Columns.STATE_IN]))
            logits, value, _ = agent.heads(y)
            return logits.transpose(0, 1), value.transpose(0, 1), y.transpose(0, 1), state

        def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            logits, _, _, state = self._run(self.agent, batch)
            return {Columns.ACTION_DIST_INPUTS: logits, Columns.STATE_OUT: state}

        def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            logits, _, y, state = self._run(self.agent, batch)
            return {Columns.ACTION_DIST_INPUTS: logits, Columns.STATE_OUT: state, Columns.EMBEDDINGS: y}

        def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> Any:
            if embeddings is None:
                _, value, _, _ = self._run(self.agent, batch)
                return value
            return self.agent.heads.value(embeddings)

        def make_target_networks(self) -> None:
            self._old_agent = make_target_network(self.agent)

        def get_target_network_pairs(self) -> list[tuple[Any, Any]]:
            return [(self.agent, self._old_agent)]

        def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
            logits, _, _, _ = self._run(self._old_agent, batch)
            return {TARGET_NETWORK_ACTION_DIST_INPUTS: logits}

        def get_non_inference_attributes(self) -> list[str]:
            return ["_old_agent"]

    class CountingAPPOLearner(APPOTorchLearner):
        """APPO's torch learner plus one counter: env steps of distinct batches trained on.

        The learner thread calls ``_make_batch_if_necessary`` with the batch object it took from the circular
        buffer; the same object comes back for each of its K passes, so a weak set tells first passes apart.
        """

        def build(self) -> None:
            super().build()
            self._seen_batches: weakref.WeakSet[Any] = weakref.WeakSet()

        def _make_batch_if_necessary(self, training_data: Any) -> Any:
            batch = super()._make_batch_if_necessary(training_data)
            if threading.current_thread().name == "_LearnerThread" and batch is not None:
                if batch not in self._seen_batches:
                    self._seen_batches.add(batch)
                    self.metrics.log_value((ALL_MODULES, UNIQUE_KEY), int(batch.env_steps()),
                                           reduce="lifetime_sum")
            return batch

    return DistrlAgentModule, CountingAPPOLearner


def _get(d: dict[str, Any], *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="MiniHack-Room-5x5-v0")
    p.add_argument("--envs", type=int, default=16, help="envs per env runner")
    p.add_argument("--runners", type=int, default=1, help="env runner actors")
    p.add_argument("--learners", type=int, default=1,
                   help="learner actors (0 = learner thread in the driver process)")
    p.add_argument("--seconds", type=float, default=120.0, help="measured seconds after the warm-up")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds discarded after the first train() call")
    p.add_argument("--seq-len", type=int, default=40)
    p.add_argument("--batch-seqs", type=int, default=32)
    p.add_argument("--reuse", type=int, default=2, help="APPO circular buffer: passes per batch (K)")
    p.add_argument("--config", default=None,
                   help="distrl config whose env section and model RLlib runs (default: the quickstart's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="distrl config override")
    p.add_argument("--hidden-size", type=int, default=None, help="LSTM width (default: the config's)")
    p.add_argument("--num-cpus", type=int, default=0, help="CPUs for the local Ray (0 = max(cores, needed))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="forward Ray worker logs to stderr")
    p.add_argument("--target", type=float, default=None,
                   help="mean return (last 100 episodes) whose first crossing is timed (default: none)")
    p.add_argument("--iteration-s", type=float, default=2.0, help="min seconds per algo.train() call")
    args = p.parse_args(argv)
    if args.config is not None:
        args.config = os.path.abspath(args.config)  # Ray workers may run in another directory

    warnings.filterwarnings("ignore")
    import ray
    from ray.rllib.algorithms.appo import APPOConfig
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    from distrl.config import LearnerConfig

    module_cls, learner_cls = build_classes()
    register_env(ENV_ID, make_env)
    lc = LearnerConfig()
    need = args.runners * 1 + max(args.learners, 0) * 1
    num_cpus = args.num_cpus or max(os.cpu_count() or 1, need)
    log_dir = tempfile.mkdtemp(prefix="rllib_appo_episodes_")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=args.verbose, _node_ip_address="127.0.0.1",
             configure_logging=False)
    algo = None
    try:
        config = (
            APPOConfig()
            .environment(env=ENV_ID, env_config={"env_name": args.env, "seed": args.seed, "config": args.config,
                                                 "overrides": args.set,
                                                 "episode_log_dir": log_dir})
            .env_runners(
                num_env_runners=args.runners,
                num_envs_per_env_runner=args.envs,
                num_cpus_per_env_runner=1,
                rollout_fragment_length=args.seq_len,
                gym_env_vectorize_mode="sync",
            )
            .learners(num_learners=args.learners, num_cpus_per_learner=1, learner_class=learner_cls)
            .training(
                train_batch_size_per_learner=args.batch_seqs * args.seq_len,
                circular_buffer_iterations_per_batch=args.reuse,
                lr=lc.lr,
                entropy_coeff=lc.entropy_cost,
                vf_loss_coeff=lc.baseline_cost,
                grad_clip=lc.grad_clip,
                gamma=lc.discount,
            )
            .rl_module(rl_module_spec=RLModuleSpec(
                module_class=module_cls,
                model_config={"env_name": args.env, "hidden_size": args.hidden_size, "max_seq_len": args.seq_len,
                              "config": args.config, "overrides": args.set},
            ))
            .reporting(min_time_s_per_iteration=args.iteration_s, metrics_num_episodes_for_smoothing=100)
            .debugging(seed=args.seed, log_level="ERROR")
        )
        t_build = time.monotonic()
        algo = config.build_algo()
        build_s = time.monotonic() - t_build
        module = algo.get_module()
        n_params = int(sum(p.numel() for p in module.agent.parameters()))
        t0 = time.monotonic()
        points: list[dict[str, float]] = []
        while True:
            res = algo.train()
            t = time.monotonic() - t0
            points.append({
                "t": t,
                "time": time.time(),
                "env_steps": float(_get(res, "env_runners", "num_env_steps_sampled_lifetime") or 0),
                "consumed": float(_get(res, "learners", "__all_modules__", UNIQUE_KEY) or 0),
                "trained": float(_get(res, "learners", "__all_modules__", "num_env_steps_trained_lifetime") or 0),
                "return": _get(res, "env_runners", "episode_return_mean"),
                "dropped": float(_get(res, "learner_group", "learner_group_ts_dropped_lifetime") or 0),
            })
            print(json.dumps({"progress": points[-1]}), file=sys.stderr, flush=True)
            if t >= args.warmup + args.seconds:
                break
        # The window starts after the warm-up and once the learner has trained on something (start-up
        # excluded), and ends at the last report.
        start = next((q for q in points if q["t"] >= args.warmup and q["consumed"] > 0), points[-1])
        end = points[-1]
        dt = end["t"] - start["t"]

        def rate(key: str) -> float | None:
            return (end[key] - start[key]) / dt if dt > 0 else None

        curve, n_episodes, target_epoch = learning_curve(log_dir, target=args.target)
        out = {
            "bench": "train_rate",
            "system": "rllib_appo",
            "env": args.env,
            "config": args.config,
            "overrides": args.set,
            "num_envs": args.envs * args.runners,
            "env_runners": args.runners,
            "learners": args.learners,
            "ray_num_cpus": num_cpus,
            "model_params": n_params,
            "env_steps_per_s": rate("env_steps"),
            "consumed_steps_per_s": rate("consumed"),
            "trained_steps_per_s": rate("trained"),
            "duration_s": dt,
            "window_start_s": start["t"],
            "window_epoch": [start["time"], end["time"]],
            "build_s": build_s,
            "first_trained_epoch": next((q["time"] for q in points if q["consumed"] > 0), None),
            "env_steps": end["env_steps"],
            "env_steps_consumed": end["consumed"],
            "env_steps_trained": end["trained"],
            "env_steps_dropped": end["dropped"],
            "episodes": n_episodes,
            "episode_return": curve[-1][1] if curve else None,
            "success_rate": curve[-1][2] if curve else None,
            "curve": curve,
            "target": args.target,
            "target_epoch": target_epoch,
            "time_to_target_s": target_epoch - LAUNCH_EPOCH if target_epoch is not None else None,
            "versions": {"ray": ray.__version__, "torch": __import__("torch").__version__},
        }
        print(json.dumps(out), flush=True)
    finally:
        if algo is not None:
            algo.stop()
        ray.shutdown()
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
