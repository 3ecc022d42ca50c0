"""``distrl eval CHECKPOINT``: run episodes with a trained agent and report return and success.

The checkpoint carries the resolved config of its run, so evaluation rebuilds the same env and model. Episodes run
in this process on single envs (no Ray). A video (GIF; needs Pillow: ``pip install pillow``) of the first episode
can be written: pixel observations (``rgb`` / ``frames``) are used as is, MiniHack's ``chars`` map is drawn as
text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from distrl.config import apply_overrides, config_from_dict
from distrl.envs.registry import env_spec, make_env
from distrl.learners.learner import load_checkpoint_file
from distrl.models.agent import build_agent


def evaluate(
    checkpoint: str | Path,
    episodes: int = 10,
    greedy: bool = True,
    video: str | None = None,
    overrides: list[str] | None = None,
    seed: int = 12345,
    max_steps: int = 100_000,
) -> dict[str, Any]:
    state = load_checkpoint_file(checkpoint)
    stored = state.get("config")
    if not isinstance(stored, dict):
        raise ValueError(f"{checkpoint}: checkpoint has no stored config; cannot rebuild the agent")
    cfg = config_from_dict(stored, source=str(checkpoint))
    if overrides:
        cfg = apply_overrides(cfg, overrides)  # e.g. another env seed or max_episode_steps
    spec = env_spec(cfg.env)
    agent = build_agent(cfg.model, spec)
    agent.load_state_dict(state["model"])
    agent.eval()
    env = make_env(cfg.env, seed)
    returns, successes, lengths = [], [], []
    frames: list[np.ndarray] = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        core = agent.initial_state(1)
        total, n, info = 0.0, 0, {}
        while n < max_steps:
            if video and ep == 0:
                frames.append(_frame(obs))
            t_obs = {k: torch.as_tensor(np.asarray(v))[None] for k, v in obs.items()}
            out = agent.act(t_obs, core, greedy=greedy)
            core = out.state
            obs, r, term, trunc, info = env.step(int(out.action[0]))
            total += float(r)
            n += 1
            if term or trunc:
                if info.get("report", True):
                    break
                # Atari life loss with terminal_on_life_loss: a learning-only end, the game goes on.
                obs, _ = env.reset()
                core = agent.initial_state(1)
        returns.append(float(info.get("episode_return", total)))
        lengths.append(n)
        if info.get("success") is not None:
            successes.append(float(info["success"]))
    env.close()
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "env": cfg.env.name,
        "episodes": episodes,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "length_mean": float(np.mean(lengths)),
        "success_rate": float(np.mean(successes)) if successes else None,
        "learner_version": int(state.get("version", -1)),
    }
    if video:
        result["video"] = _write_gif(frames, video)
    return result


def _frame(obs: dict[str, np.ndarray]) -> np.ndarray:
    if "rgb" in obs:
        return np.asarray(obs["rgb"], dtype=np.uint8)
    if "frames" in obs:
        return np.asarray(obs["frames"][-1], dtype=np.uint8)
    if "chars" in obs:
        return np.asarray(obs["chars"], dtype=np.uint8)  # drawn as text in _write_gif
    key = next(iter(obs))
    return np.asarray(obs[key])


def _write_gif(frames: list[np.ndarray], path: str) -> str:
    try:
        from PIL import Image, ImageDraw
    except ImportError as e:
        raise RuntimeError("writing a video needs Pillow: pip install pillow") from e
    images = []
    for f in frames:
        if f.ndim == 2 and f.dtype == np.uint8 and f.shape[1] > 40:  # a NetHack chars map
            img = Image.new("RGB", (f.shape[1] * 7, f.shape[0] * 12), "black")
            draw = ImageDraw.Draw(img)
            for y, row in enumerate(f):
                draw.text((0, y * 12), bytes(row).decode("latin-1"), fill="white")
            images.append(img)
        else:
            images.append(Image.fromarray(f.squeeze()))
    out = str(Path(path).with_suffix(".gif"))
    images[0].save(out, save_all=True, append_images=images[1:], duration=80, loop=0)
    return out
