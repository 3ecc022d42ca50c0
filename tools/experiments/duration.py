"""Duration-aware updates on an asynchronous actor-learner (issue 21, ALGORITHMS.md §3.4, §7.9).

Env: ``duration:bandit`` with real sleeps: action 0 pays 0.5 and takes ``unit`` seconds, action 1 pays 1.0 and
takes ``k * unit``. ``--actors`` Ray actors each host one distrl :class:`~distrl.actors.env_actor.EnvActor` with
one env slot, stepping in a background thread as fast as the env lets them (a one-step episode per decision, a
sequence of length 1 per step) and acting with whatever weights they last received. The driver is the learner:
it inserts what arrived into a real :class:`~distrl.replay.shard.ReplayShard` (with the actor's duration prior in
mode ``prior``), draws batches with :class:`~distrl.replay.sampler.ReplaySampler` (``--online-fraction`` of each
batch fresh, the rest replayed; the learner drops fresh rows more than ``learner.max_policy_lag`` updates old),
takes a V-trace step with the ``duration`` extra of the mode under test, and publishes weights to all actors
after every update. It updates as soon as enough fresh rows have arrived: the regime where the learner moves the
policy on early, fast arrivals (§3.4 (i)). Every ``--sample-every`` seconds it records the policy's probability
of the slow action.

    .venv/bin/python tools/experiments/duration.py --seeds 0 1 2 --modes off paper --seconds 60
    .venv/bin/python tools/experiments/duration.py --modes off paper prior inclusion --png docs/results/duration.png

Prints one JSON object per (mode, seed) on stdout (the curve and the final slow-action probability), then one per
mode with the mean; ``--png`` writes the curves, ``--md`` a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import ray
import torch

from distrl.actors.env_actor import EnvActor
from distrl.config import load_config
from distrl.envs.registry import env_spec
from distrl.learners.duration import DurationExtra, bin_index, dt_bins
from distrl.learners.learner import Learner
from distrl.replay.client import LocalShardClient
from distrl.replay.sampler import ReplaySampler
from distrl.replay.shard import ReplayShard
from distrl.types import PolicyWeights, ReplaySample, Trajectory


def make_cfg(mode: str, seed: int, args: argparse.Namespace):
    env = f"duration:bandit?k={args.k}&unit={args.unit}&clock=sleep"
    return load_config(None, [
        f"env.name={env}", "env.num_envs=1", "model.encoder=mlp", "model.core=identity", "model.hidden_size=32",
        "sequence.length=1", "sequence.period=1", f"learner.batch_size={args.batch}",
        f"learner.online_fraction={args.online_fraction}", f"learner.lr={args.lr}",
        f"learner.entropy_cost={args.entropy}", f"learner.baseline_cost={args.baseline_cost}",
        f"learner.max_policy_lag={args.max_lag}", "learner.device=cpu",
        "replay.capacity=20000", f"replay.min_size={args.batch}", "replay.samples_per_insert=0",
        "replay.alpha=0.6", "replay.beta_start=1", "replay.beta_end=1", f"duration.mode={mode}",
        f"runtime.seed={seed}", f"env.seed={seed}", "actor.inference=numpy",
        "runtime.mode=local",  # this script drives its own loop and feeds launch counts itself
    ])


class AsyncActor:
    """One EnvActor stepping in a background thread; completed sequences wait in a buffer until drained."""

    def __init__(self, cfg, actor_id: int) -> None:
        torch.set_num_threads(1)
        self.actor = EnvActor(cfg, actor_id)
        self.edges = dt_bins(cfg.duration.dt_min, cfg.duration.dt_max, cfg.duration.bins)
        self.lock = threading.Lock()
        self.buffer: list[tuple[Trajectory, np.ndarray | None]] = []
        self.launched = np.zeros(len(self.edges) - 1, dtype=np.int64)
        self.pending: PolicyWeights | None = None
        self.running = False
        self.thread: threading.Thread | None = None

    def start(self, weights: PolicyWeights) -> None:
        self.stop()
        self.actor.set_weights(weights)
        with self.lock:
            self.buffer.clear()
            self.launched[:] = 0
            self.pending = None
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.running = False
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def _loop(self) -> None:
        while self.running:
            with self.lock:
                w, self.pending = self.pending, None
            if w is not None and w.version > self.actor.policy_version:
                self.actor.set_weights(w)
            traj = self.actor.step()  # sleeps for the chosen action's duration
            if traj is None:
                continue
            prior = self.actor.duration_prior(traj)
            counts = np.bincount(bin_index(traj.duration.reshape(-1), self.edges), minlength=len(self.launched))
            with self.lock:
                self.buffer.append((traj, prior))
                self.launched += counts

    def set_weights(self, weights: PolicyWeights) -> None:
        with self.lock:
            self.pending = weights

    def drain(self) -> tuple[Trajectory | None, np.ndarray | None, np.ndarray]:
        """What completed since the last call, as one Trajectory ``[T, n]`` (and the rows' priors), and the
        launched steps' counts per dt bin."""
        with self.lock:
            out, self.buffer = self.buffer, []
            counts, self.launched = self.launched, np.zeros_like(self.launched)
        if not out:
            return None, None, counts
        priors = [p for _, p in out]
        prior = None if priors[0] is None else np.concatenate(priors)
        return Trajectory.concat([t for t, _ in out]), prior, counts


def pi_slow(learner: Learner) -> float:
    obs = {"x": torch.tensor([[[1.0, 0.0]]])}
    with torch.no_grad():
        out = learner.agent.unroll(obs, torch.zeros(1, 1, dtype=torch.bool), learner.agent.initial_state(1))
    return float(torch.softmax(out.logits[0, 0], -1)[1])


def run_one(mode: str, seed: int, actors: list, args: argparse.Namespace) -> dict:
    cfg = make_cfg(mode, seed, args)
    torch.manual_seed(seed)
    learner = Learner(cfg, env_spec(cfg.env), device="cpu")
    extra = learner.extras["duration"]
    assert isinstance(extra, DurationExtra)
    shard = ReplayShard(cfg.replay, seed=seed)
    n_fresh = round(cfg.learner.batch_size * cfg.learner.online_fraction)
    sampler = ReplaySampler([LocalShardClient(shard)], cfg.replay, cfg.learner.batch_size, n_fresh=n_fresh,
                            prefetch=0, seed=seed)
    w0 = ray.put(learner.weights())
    ray.get([a.start.remote(w0) for a in actors])
    t0 = time.monotonic()
    curve: list[tuple[float, float]] = [(0.0, pi_slow(learner))]
    next_sample = args.sample_every
    arrived = np.zeros(2, dtype=np.int64)
    metrics_sum: dict[str, float] = {}
    n_metrics = 0
    pending: list[Trajectory] = []  # windowed collection: rows that finished inside their launch window
    wall0 = time.time()
    trained_windows = 0
    dropped = 0
    while (now := time.monotonic() - t0) < args.seconds:
        for traj, prior, counts in ray.get([a.drain.remote() for a in actors]):
            extra.observe_launched(counts=counts)
            if traj is None:
                continue
            arrived += np.bincount(traj.action.reshape(-1).numpy(), minlength=2)[:2]
            if args.window > 0:
                # windowed collection: windows [wall0 + nW, wall0 + (n + 1)W); a step still running when its
                # launch window closed was in flight at the window's end and is dropped
                launch = traj.launch_time[0].numpy()
                done_at = launch + traj.duration.double().sum(0).numpy()
                keep = np.floor((launch - wall0) / args.window) == np.floor((done_at - wall0) / args.window)
                dropped += int((~keep).sum())
                if keep.any():
                    pending.append(traj.index_batch(torch.from_numpy(np.flatnonzero(keep))))
            else:
                shard.insert(traj, prior=prior)
        out = sample = None
        if args.window > 0:
            closed = int((time.time() - wall0) // args.window)
            if closed > trained_windows and pending:  # a window closed: one update on what it collected
                trained_windows = closed
                traj = Trajectory.concat(pending)
                pending = []
                b = traj.B
                sample = ReplaySample(traj=traj, keys=torch.arange(b), shard_ids=torch.zeros(b, dtype=torch.int64),
                                      weights=torch.ones(b), probs=torch.zeros(b, dtype=torch.float64),
                                      fresh=torch.ones(b, dtype=torch.bool))
                out = learner.step(sample)
        elif (st := shard.stats()).size >= cfg.replay.min_size and st.fresh_pending >= n_fresh:
            sampler.set_min_policy_version(learner.version - cfg.learner.max_policy_lag)
            sample = sampler.next_batch(timeout=5.0)
            out = learner.step(sample)
            sampler.update_priorities(sample.keys, sample.shard_ids, out.priorities)
        if out is not None:
            w = ray.put(learner.weights())
            for a in actors:
                a.set_weights.remote(w)
            if now > args.seconds / 2:  # instrumentation over the second half
                for k, v in out.metrics.items():
                    if k.startswith("extras/duration/") and np.isfinite(v):
                        metrics_sum[k] = metrics_sum.get(k, 0.0) + v
                n_metrics += 1
        else:
            time.sleep(0.002)
        if now >= next_sample:
            curve.append((round(now, 2), pi_slow(learner)))
            next_sample += args.sample_every
    ray.get([a.stop.remote() for a in actors])
    sampler.close()
    curve.append((round(time.monotonic() - t0, 2), pi_slow(learner)))
    keep = ("action1_share", "action1_mu_launch", "dt_consumed_mean", "dt_launched_mean", "weight_mean")
    inst = {k.split("/")[-1]: round(v / max(n_metrics, 1), 4) for k, v in metrics_sum.items()
            if k.split("/")[-1] in keep}
    return {
        "experiment": "duration_bandit", "mode": mode, "seed": seed, "seconds": args.seconds,
        "actors": args.actors, "k": args.k, "unit_s": args.unit, "updates": learner.version,
        "arrived_fast": int(arrived[0]), "arrived_slow": int(arrived[1]), "dropped_in_flight": dropped,
        "window_s": args.window, "baseline_cost": args.baseline_cost,
        "final_pi_slow": round(curve[-1][1], 4), "curve": [(t, round(p, 4)) for t, p in curve],
        "second_half": inst,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["off", "paper"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--actors", type=int, default=8)
    ap.add_argument("--k", type=float, default=20.0, help="slow action's duration in units")
    ap.add_argument("--unit", type=float, default=0.02, help="fast action's duration, seconds")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--online-fraction", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--entropy", type=float, default=0.01)
    ap.add_argument("--max-lag", type=int, default=100)
    ap.add_argument("--sample-every", type=float, default=2.0)
    ap.add_argument("--window", type=float, default=0.0,
                    help="windowed collection: train once per window of this many seconds on the steps launched "
                         "and finished inside it, dropping work still in flight (0 = update as fresh rows arrive)")
    ap.add_argument("--baseline-cost", type=float, default=0.5,
                    help="learner.baseline_cost (0: the value head stays untrained, advantages are not centred)")
    ap.add_argument("--png", default="")
    ap.add_argument("--md", default="")
    args = ap.parse_args()

    ray.init(num_cpus=max(2, args.actors), include_dashboard=False, log_to_driver=False, configure_logging=False)
    cfg0 = make_cfg("off", 0, args)
    Remote = ray.remote(num_cpus=0, max_concurrency=4)(AsyncActor)
    actors = [Remote.remote(cfg0, i) for i in range(args.actors)]
    # warm-up: actor processes import, build their envs and take their first steps before any run's clock starts
    w0 = ray.put(Learner(cfg0, env_spec(cfg0.env), device="cpu").weights())
    ray.get([a.start.remote(w0) for a in actors])
    time.sleep(3.0)
    ray.get([a.stop.remote() for a in actors])
    results = []
    for mode in args.modes:
        for seed in args.seeds:
            r = run_one(mode, seed, actors, args)
            results.append(r)
            print(json.dumps(r), flush=True)
    for mode in args.modes:
        fin = [r["final_pi_slow"] for r in results if r["mode"] == mode]
        print(json.dumps({"experiment": "duration_bandit", "mode": mode, "summary": True, "seeds": len(fin),
                          "final_pi_slow_mean": round(float(np.mean(fin)), 4),
                          "final_pi_slow_min": round(float(np.min(fin)), 4),
                          "final_pi_slow_max": round(float(np.max(fin)), 4)}), flush=True)
    if args.png:
        plot(results, args.png)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(table(results))
    ray.shutdown()
    return 0


def table(results: list[dict]) -> str:
    lines = ["| mode | seed | updates | fast / slow arrivals | slow share in batches (2nd half) | "
             "π(slow) at launch (2nd half) | final π(slow) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        h = r["second_half"]
        lines.append(f"| {r['mode']} | {r['seed']} | {r['updates']} | {r['arrived_fast']} / {r['arrived_slow']} | "
                     f"{h.get('action1_share', float('nan')):.3f} | {h.get('action1_mu_launch', float('nan')):.3f} | "
                     f"{r['final_pi_slow']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"off": "tab:red", "paper": "tab:blue", "prior": "tab:green", "inclusion": "tab:purple",
              "episode": "tab:orange"}
    for r in results:
        t, p = zip(*r["curve"])
        ax.plot(t, p, color=colors.get(r["mode"], "k"), alpha=0.8,
                label=r["mode"] if r["seed"] == results[0]["seed"] else None)
    ax.axhline(0.7, ls=":", c="gray")
    ax.axhline(0.3, ls=":", c="gray")
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylabel("π(slow, better action)")
    ax.set_ylim(0, 1)
    ax.set_title(f"duration bandit: {results[0]['actors']} async actors, slow = {results[0]['k']:g}× fast")
    ax.legend()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
