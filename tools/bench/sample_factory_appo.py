"""Sample Factory 2 APPO on a distrl task with distrl's own encoder: the Sample Factory side of
``tools/bench/train_rate.py``.

Runs inside its own virtualenv (``.venv-sf``, made by ``tools/bench/install_sf.sh``: sample-factory 2.1.1 pins
numpy<2 and gymnasium<1.0), never inside distrl's; ``train_rate.py`` creates the venv when it is missing and
starts this script as a subprocess. It trains for a fixed wall time and prints ONE JSON line on stdout
(everything else goes to stderr): throughput over the measurement window (after ``--warmup`` seconds), the
learning curve, and the wall-clock time at which the mean return of the last 100 episodes first reached
``--target``.

What is compared with distrl, and how it is kept equal (everything is read from the distrl config given with
``--config``, e.g. ``configs/minihack_small.yaml`` or ``configs/pong.yaml``):

* **Env**: distrl's own adapter (``distrl.envs.registry.make_env`` with the config's ``env`` section: the same
  observation keys, MiniHack's 9x9 glyph crop cut by the adapter, Atari's DeepMind preprocessing: 84x84 gray,
  frame skip 4, max-pool, 4-frame stack, sticky actions), registered as a Sample Factory env; every env gets its
  own seed. Sample Factory's ``env_frameskip`` stays 1 (the adapter skips), so its step counts are agent steps,
  as distrl's are.
* **Model**: Sample Factory's actor-critic with a custom encoder (``register_encoder_factory``) that *is*
  distrl's encoder (``distrl.models.encoders.build_encoder`` from the config's ``model`` section: e.g.
  ``nethack_small``, ``nethack``, ``nature_cnn``), then Sample Factory's LSTM core of ``model.hidden_size``
  and its linear policy and value heads (no decoder MLP): the same layers as distrl's Agent (encoder → LSTM →
  linear heads). Observations reach the encoder in their raw dtypes (``normalize_input=False``,
  ``obs_scale=1``): distrl's encoders convert and scale inside, as they do in distrl.
* **Topology**: ``--workers`` rollout worker processes x ``--envs-per-worker`` envs (double-buffered:
  ``--splits`` 2), one inference worker, one learner process on the CPU: Sample Factory's own layout on a
  2-core machine.
* **Batch and hyper-parameters**: rollouts and recurrence of ``sequence.length`` steps, batches of
  ``learner.batch_size`` sequences, one epoch (each env step trained on once); ``lr``, entropy and value
  coefficients, gradient clip and discount are the distrl config's; the rest is Sample Factory's APPO defaults
  (PPO clip, GAE, return normalisation).

Counters: ``env_steps`` are the samples Sample Factory's rollout workers collected; ``consumed`` is the
learner's own env-step counter (env steps of the batches it trained on: the analogue of distrl's
``learner/env_steps_consumed``); ``trained`` = consumed x epochs. The return is Sample Factory's episodic
``reward`` statistic (mean over the last 100 finished episodes, the window distrl's ``charts/episode_return``
uses); a crossing of ``--target`` counts once 100 episodes have finished (``tools/bench/learn.py``'s rule).

Usage (from the repo root)::

    .venv-sf/bin/python tools/bench/sample_factory_appo.py --config configs/minihack_small.yaml --target 0.9
    .venv-sf/bin/python tools/bench/sample_factory_appo.py --config configs/pong.yaml --seconds 60
"""

from __future__ import annotations

import time

LAUNCH_EPOCH = time.time()  # before the heavy imports: start-up counts towards the time to the target

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from typing import Any  # noqa: E402

ENV_ID = "distrl_bench_env"


def _distrl_config(cfg: Any) -> Any:
    """The distrl ExperimentConfig named by the Sample Factory cfg's extra arguments."""
    from distrl.config import load_config

    return load_config(cfg.distrl_config, json.loads(cfg.distrl_overrides))


def make_env(full_env_name: str, cfg: Any = None, env_config: Any = None, render_mode: Any = None) -> Any:
    """Sample Factory env factory: distrl's adapter for the config's env, seeded per worker and env slot."""
    from distrl.envs.registry import make_env as distrl_make_env

    dcfg = _distrl_config(cfg)
    worker = int(getattr(env_config, "worker_index", 0) or 0) if env_config is not None else 0
    vec = int(getattr(env_config, "vector_index", 0) or 0) if env_config is not None else 0
    seed = int(cfg.seed or 0) * 100_000 + worker * 1000 + vec
    return distrl_make_env(dcfg.env, seed)


def make_encoder(cfg: Any, obs_space: Any) -> Any:
    """Sample Factory encoder factory: distrl's encoder built from the config's model and env sections."""
    from sample_factory.model.encoder import Encoder

    from distrl.envs.registry import env_spec
    from distrl.models.encoders import build_encoder

    class DistrlEncoder(Encoder):
        """distrl's encoder as a Sample Factory encoder: ``obs_dict`` leaves ``[N, ...]`` → ``[N, out_dim]``."""

        def __init__(self, sf_cfg: Any) -> None:
            super().__init__(sf_cfg)
            dcfg = _distrl_config(sf_cfg)
            self.enc = build_encoder(dcfg.model, env_spec(dcfg.env))

        def forward(self, obs_dict: dict[str, Any]) -> Any:
            return self.enc({k: obs_dict[k] for k in self.enc.keys})

        def get_out_size(self) -> int:
            return int(self.enc.out_dim)

    return DistrlEncoder(cfg)


def register_components() -> None:
    from sample_factory.algo.utils.context import global_model_factory
    from sample_factory.envs.env_utils import register_env

    register_env(ENV_ID, make_env)
    global_model_factory().register_encoder_factory(make_encoder)


def sf_argv(args: argparse.Namespace, dcfg: Any, train_dir: str) -> list[str]:
    lc, seq = dcfg.learner, dcfg.sequence
    return [
        "--algo=APPO", f"--env={ENV_ID}", "--experiment=bench", f"--train_dir={train_dir}",
        "--restart_behavior=overwrite", f"--device={args.device}", f"--seed={args.seed}",
        f"--num_workers={args.workers}", f"--num_envs_per_worker={args.envs_per_worker}",
        f"--worker_num_splits={args.splits}", "--num_policies=1", "--policy_workers_per_policy=1",
        f"--rollout={seq.length}", f"--recurrence={seq.length}", f"--batch_size={lc.batch_size * seq.length}",
        "--num_batches_per_epoch=1", f"--num_epochs={args.epochs}",
        "--use_rnn=True", "--rnn_type=lstm", f"--rnn_size={dcfg.model.hidden_size}", "--rnn_num_layers=1",
        f"--learning_rate={lc.lr}", f"--exploration_loss_coeff={lc.entropy_cost}",
        f"--value_loss_coeff={lc.baseline_cost}", f"--max_grad_norm={lc.grad_clip}", f"--gamma={lc.discount}",
        "--normalize_input=False", "--obs_scale=1.0", "--env_frameskip=1", "--summaries_use_frameskip=False",
        "--train_for_env_steps=10000000000", f"--train_for_seconds={int(args.warmup + args.seconds + 600)}",
        "--save_every_sec=1000000", "--save_best_every_sec=1000000", "--with_wandb=False",
        f"--stats_avg={args.window}",
        f"--distrl_config={args.config}", f"--distrl_overrides={json.dumps(args.set)}",
    ]


def parse_sf_cfg(argv: list[str]) -> Any:
    from sample_factory.cfg.arguments import parse_full_cfg, parse_sf_args

    parser, _ = parse_sf_args(argv=argv, evaluation=False)
    parser.add_argument("--distrl_config", type=str, required=True, help="distrl config YAML")
    parser.add_argument("--distrl_overrides", type=str, default="[]", help="distrl overrides, a JSON list")
    return parse_full_cfg(parser, argv)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/minihack_small.yaml", help="distrl config: env, model, batch")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="distrl config override")
    p.add_argument("--workers", type=int, default=2, help="rollout worker processes")
    p.add_argument("--envs-per-worker", type=int, default=8)
    p.add_argument("--splits", type=int, default=2, help="worker_num_splits (double-buffered sampling)")
    p.add_argument("--epochs", type=int, default=1, help="passes over each batch")
    p.add_argument("--seconds", type=float, default=120.0, help="measured seconds after the warm-up")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds discarded after the first trained batch")
    p.add_argument("--target", type=float, default=None,
                   help="mean return (last 100 episodes) whose first crossing is timed (default: none)")
    p.add_argument("--window", type=int, default=100, help="episodes in the mean return")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="Sample Factory's --device: gpu puts its learner and its policy worker on the first GPU")
    args = p.parse_args(argv)
    args.config = os.path.abspath(args.config)  # Sample Factory's processes read it again
    if args.workers < 1 or args.envs_per_worker < 1 or args.envs_per_worker % args.splits:
        p.error(f"--workers and --envs-per-worker must be >= 1 and --envs-per-worker a multiple of --splits, got "
                f"{args.workers}, {args.envs_per_worker}, {args.splits}")

    warnings.filterwarnings("ignore")
    import torch
    from sample_factory.algo.runners.runner import AlgoObserver, Runner
    from sample_factory.algo.utils.misc import ExperimentStatus
    from sample_factory.train import make_runner

    from distrl.config import load_config

    dcfg = load_config(args.config, args.set)
    try:  # Sample Factory's workers log an env that cannot be built and keep waiting: fail here instead
        from distrl.envs.registry import make_env as distrl_make_env

        probe = distrl_make_env(dcfg.env, 0)
        probe.close()
    except Exception as e:  # any failure to build the env ends the run, named
        print(json.dumps({"bench": "train_rate", "system": "sample_factory", "error":
                          f"cannot build {dcfg.env.name}: {type(e).__name__}: {e}"}), flush=True)
        return 1
    register_components()
    train_dir = tempfile.mkdtemp(prefix="sf_appo_")
    cfg = parse_sf_cfg(sf_argv(args, dcfg, train_dir))
    stop_at = args.warmup + args.seconds

    points: list[dict[str, float]] = []
    state: dict[str, Any] = {"first_trained": None, "target": None, "episodes": 0}

    class Recorder(AlgoObserver):
        """After every training step: the learner's env-step counter, samples collected, the mean return."""

        def on_training_step(self, runner: Runner, training_iteration_since_resume: int) -> None:
            now = time.time()
            consumed = float(runner.env_steps.get(0, 0))
            if consumed > 0 and state["first_trained"] is None:
                state["first_trained"] = now
            rewards = runner.policy_avg_stats.get("reward", [[]])[0]
            ret = float(sum(rewards) / len(rewards)) if len(rewards) else None
            points.append({"time": now, "env_steps": float(runner.samples_collected[0]), "consumed": consumed,
                           "return": ret, "full_window": len(rewards) >= args.window})
            if (state["target"] is None and args.target is not None and ret is not None and ret >= args.target
                    and len(rewards) >= args.window):
                state["target"] = {"epoch": now, "env_steps": float(runner.samples_collected[0])}
            if state["first_trained"] is not None and now - state["first_trained"] >= stop_at:
                runner._stop_training()

    cfg, runner = make_runner(cfg)
    runner.register_observer(Recorder())
    t_init = time.time()
    status = runner.init()
    if status == ExperimentStatus.SUCCESS:
        status = runner.run()
    try:
        if status != ExperimentStatus.SUCCESS or not points or state["first_trained"] is None:
            print(json.dumps({"bench": "train_rate", "system": "sample_factory", "error":
                              f"Sample Factory exited with status {status} after {len(points)} training steps"}))
            return 1
        t_first = state["first_trained"]
        start = next((q for q in points if q["time"] - t_first >= args.warmup and q["consumed"] > 0), points[-1])
        end = points[-1]
        dt = end["time"] - start["time"]

        def rate(key: str, scale: float = 1.0) -> float | None:
            return (end[key] - start[key]) * scale / dt if dt > 0 else None

        curve = [[q["env_steps"], q["return"]] for q in points[:: max(1, len(points) // 200)]
                 if q["return"] is not None and q["full_window"]]
        model_params = count_params(cfg)
        target = state["target"]
        out = {
            "bench": "train_rate", "system": "sample_factory", "env": dcfg.env.name, "config": args.config,
            "overrides": args.set, "num_envs": args.workers * args.envs_per_worker, "workers": args.workers,
            "envs_per_worker": args.envs_per_worker, "worker_num_splits": args.splits, "epochs": args.epochs,
            "device": args.device,
            "model": {"encoder": dcfg.model.encoder, "hidden_size": dcfg.model.hidden_size},
            "model_params": model_params,
            "env_steps_per_s": rate("env_steps"), "consumed_steps_per_s": rate("consumed"),
            "trained_steps_per_s": rate("consumed", float(args.epochs)),
            "duration_s": dt, "window_start_s": start["time"] - LAUNCH_EPOCH,
            "window_epoch": [start["time"], end["time"]], "launch_epoch": LAUNCH_EPOCH,
            "startup_s": t_first - LAUNCH_EPOCH, "runner_init_s": t_init - LAUNCH_EPOCH,
            "env_steps": end["env_steps"], "env_steps_consumed": end["consumed"],
            "episode_return": end["return"], "target": args.target,
            "time_to_target_s": target["epoch"] - LAUNCH_EPOCH if target else None,
            "target_epoch": target["epoch"] if target else None,
            "env_steps_to_target": target["env_steps"] if target else None,
            "curve": curve,
            "versions": {"sample_factory": _version("sample-factory"), "torch": torch.__version__},
        }
        print(json.dumps(out), flush=True)
    finally:
        shutil.rmtree(train_dir, ignore_errors=True)
    return 0


def count_params(cfg: Any) -> int | None:
    """Parameters of the actor-critic Sample Factory trains (built once more here, after the run)."""
    try:
        from sample_factory.algo.utils.env_info import obtain_env_info_in_a_separate_process
        from sample_factory.model.actor_critic import create_actor_critic

        info = obtain_env_info_in_a_separate_process(cfg)
        model = create_actor_critic(cfg, info.obs_space, info.action_space)
        return int(sum(p.numel() for p in model.parameters()))
    except Exception as e:  # the count is informative only
        print(f"[sample_factory_appo] parameter count failed: {e}", file=sys.stderr)
        return None


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
