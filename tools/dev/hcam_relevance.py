"""Where a trained HCAM agent's chunk relevance goes when Ballet asks its question.

Rebuilds the agent of a learner checkpoint trained on a ``Ballet-N-D`` env (its stored config), plays
``--episodes`` episodes with sampled actions, and at the first step of the test phase (the instruction shown)
records each HCAM layer's relevance weights over the stored chunks (``HCAMLayer.relevance``, the first level of
the read). Chunk j holds steps [j*C, (j+1)*C); dancer i dances at steps i*(D+4)+D .. +3. Prints one JSON object:
the mean weight per chunk per layer, the success rate of these episodes, and per layer the mean weight on the
chunk where the named dancer danced against that on the other dancers' chunks. A read that finds the dances but
not the named one puts equal weight on both.

Usage::

    .venv/bin/python tools/dev/hcam_relevance.py runs/<run>/checkpoints/learner.pt --episodes 200
    .venv/bin/python tools/dev/hcam_relevance.py <a Ballet-2-4to16 run>/checkpoints/learner.pt --env Ballet-2-16
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from distrl.envs.memory_tasks import DANCE_LEN, BalletEnv, parse_levels, parse_name
from distrl.models.agent import build_agent
from distrl.models.hcam import HCAMLayer
from distrl.runtime.evaluate import load_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=123, help="env and sampling seed")
    ap.add_argument("--env", default=None,
                    help="the Ballet level to play (default: the one trained on; needed for an agent trained on a "
                         "range of delays, e.g. Ballet-2-4to16, played here at Ballet-2-16)")
    args = ap.parse_args()

    cfg, weights = load_policy(args.checkpoint)
    trained_task, _, _, _ = parse_levels(cfg.env.name)
    if trained_task != "Ballet" or cfg.model.core != "hcam":
        raise SystemExit(f"{args.checkpoint}: needs an HCAM agent trained on Ballet, got {cfg.env.name} with "
                         f"model.core={cfg.model.core}")
    try:
        task, dancers, delay = parse_name(args.env or cfg.env.name)
    except ValueError as e:
        raise SystemExit(f"{e}: pass --env Ballet-<dancers>-<delay>, one level to play") from None
    if task != "Ballet":
        raise SystemExit(f"--env {args.env}: a Ballet level is needed")
    env = BalletEnv(dancers=dancers, delay=delay, seed=args.seed)
    if cfg.model.hcam_cross_episode or env.watch_len // cfg.model.hcam_chunk > cfg.model.hcam_chunks:
        raise SystemExit(f"{args.checkpoint}: this tool reads chunk j from memory slot j, so it needs memory that "
                         f"starts empty each episode (model.hcam_cross_episode=false) and holds the watch phase "
                         f"({env.watch_len // cfg.model.hcam_chunk} chunks of {cfg.model.hcam_chunk} steps; "
                         f"model.hcam_chunks={cfg.model.hcam_chunks})")
    agent = build_agent(cfg.model, BalletEnv.make_spec(cfg.env.name))
    agent.load_state_dict(weights.policy)
    agent.eval()
    torch.manual_seed(args.seed)
    C = cfg.model.hcam_chunk
    dance_chunk = [(i * (delay + DANCE_LEN) + delay) // C for i in range(dancers)]
    n_chunks = env.watch_len // C  # chunks written before the question

    captured: list[np.ndarray] = []
    relevance = HCAMLayer.relevance

    def recording(self: HCAMLayer, z, keys, mask, age=None):  # type: ignore[no-untyped-def]
        w, top_i = relevance(self, z, keys, mask, age)
        full = torch.zeros(keys.shape[:2]).scatter(1, top_i[0], w[0])  # acting: T = 1
        captured.append(full[0].numpy().copy())
        return w, top_i

    HCAMLayer.relevance = recording  # type: ignore[method-assign]
    per_chunk, on_target, on_other, successes = [], [], [], 0.0
    try:
        for _ in range(args.episodes):
            obs, _ = env.reset()
            state = agent.initial_state(1)
            t = 0
            while True:
                captured.clear()
                with torch.no_grad():
                    out = agent.act({k: torch.as_tensor(v)[None] for k, v in obs.items()}, state)
                state = out.state
                if t == env.watch_len:
                    layers = np.stack(captured)[:, :n_chunks]  # [L, chunks]; chunk j in memory slot j
                    per_chunk.append(layers)
                    target = int(env._target)
                    on_target.append(layers[:, dance_chunk[target]])
                    on_other.append(np.mean([layers[:, dance_chunk[i]] for i in range(dancers) if i != target],
                                            axis=0))
                obs, _, term, trunc, info = env.step(int(out.action[0]))
                t += 1
                if term or trunc:
                    successes += float(info.get("success", 0.0))
                    break
    finally:
        HCAMLayer.relevance = relevance  # type: ignore[method-assign]
    print(json.dumps({
        "checkpoint": str(args.checkpoint), "trained_on": cfg.env.name, "env": f"Ballet-{dancers}-{delay}",
        "episodes": args.episodes,
        "success": successes / args.episodes, "dance_chunks": dance_chunk,
        "mean_weight_per_chunk": np.round(np.mean(per_chunk, axis=0, dtype=np.float64), 3).tolist(),
        "weight_on_named_dancers_chunk": np.round(np.mean(on_target, axis=0, dtype=np.float64), 3).tolist(),
        "weight_on_other_dancers_chunks": np.round(np.mean(on_other, axis=0, dtype=np.float64), 3).tolist(),
    }))


if __name__ == "__main__":
    main()
