"""The "reconstruction" learner extra: a self-supervised loss that predicts each step's observation from the
core's output (HCAM's agent trains "self-supervised and RL losses", reconstructing its inputs as Hill et al.'s
agents do; ALGORITHMS.md §2.6).

A decoder (two linear layers, ReLU between, as wide as the core) maps the core's output ``features [T, B, D]``
(:attr:`~distrl.models.agent.AgentOut.features`, with gradient) to the observation leaves
``learner.reconstruction_keys`` (default: every key the encoder reads), flattened and concatenated; the loss is
:func:`distrl.losses.reconstruction.reconstruction_loss` on the trained steps (after burn-in, ``valid``), times
``learner.reconstruction_cost``. Its gradient reaches the core and the encoder: what the agent keeps of its input
is shaped by it, not only by the reward. Targets: float leaves as they are, uint8 ones scaled to [0, 1], int8 and
bool ones as their values; other integer leaves (glyph ids: categories) are refused with a ConfigError naming
them. The decoder's output is as wide as the observations it predicts (28,224 for Atari's 4 x 84 x 84 stack: a
7M-parameter last layer at hidden 256), so it suits small symbolic observations best.

Metrics (``extras/reconstruction/``): ``loss`` (scaled by the cost, as added to the learner's) and
``mse/<key>`` per leaf (mean over the trained steps).

Usage::

    distrl train configs/fake_memory.yaml learner.reconstruction_cost=1.0    # switches this extra on by itself
    distrl train configs/ballet_hcam.yaml                                    # HCAM on Ballet, with it
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from distrl.config import ConfigError, ExperimentConfig
from distrl.envs.base import EnvSpec
from distrl.learners.extras import LearnerBatch, LearnerExtra, register_extra
from distrl.losses.reconstruction import reconstruction_loss
from distrl.models.agent import Agent

_AS_IS = (np.dtype(np.int8), np.dtype(np.bool_))


class Reconstruction(LearnerExtra):
    """Decoder from the core's output to the observation (see the module doc)."""

    def __init__(self, cfg: ExperimentConfig, spec: EnvSpec, agent: Agent) -> None:
        super().__init__()
        self.cost = float(cfg.learner.reconstruction_cost)
        if self.cost <= 0:
            raise ConfigError("learner.extras lists 'reconstruction' but learner.reconstruction_cost is "
                              f"{self.cost}: set it > 0 (which also switches the extra on by itself)")
        keys = tuple(cfg.learner.reconstruction_keys) or tuple(agent.encoder.keys)
        if len(set(keys)) != len(keys):
            raise ConfigError(f"learner.reconstruction_keys lists a key twice: {list(keys)}")
        self.keys = keys
        self.scale: dict[str, float] = {}
        for k in keys:
            if k not in spec.obs:
                raise ConfigError(f"learner.reconstruction_keys: {k!r} is not an observation of {spec.name} "
                                  f"(it has {sorted(spec.obs)})")
            dt = np.dtype(spec.obs[k].dtype)
            if dt == np.uint8:
                self.scale[k] = 1.0 / 255.0
            elif dt.kind == "f" or dt in _AS_IS:
                self.scale[k] = 1.0
            else:
                raise ConfigError(
                    f"learner.reconstruction_cost: observation {k!r} of {spec.name} is {dt}, integer ids (categories) "
                    "a squared error cannot predict; leave it out with learner.reconstruction_keys=[...] (float, "
                    "uint8, int8 and bool leaves can be reconstructed)"
                )
        self.shapes = {k: tuple(spec.obs[k].shape) for k in keys}
        self.sizes = tuple(int(np.prod(s)) for s in self.shapes.values())
        width = agent.core.out_dim
        self.decoder = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, sum(self.sizes)))

    def target(self, obs: dict[str, Tensor], steps: int) -> Tensor:
        """The first ``steps`` observations of the leaves, flattened, scaled and concatenated: ``[steps, B, N]``."""
        parts = []
        for k in self.keys:
            v = obs[k][:steps]
            if tuple(v.shape[2:]) != self.shapes[k]:
                raise ValueError(f"reconstruction: observation {k!r} is {list(v.shape)}, the spec says "
                                 f"[T, B, {', '.join(map(str, self.shapes[k]))}]")
            parts.append(v.reshape(v.shape[0], v.shape[1], -1).to(torch.float32) * self.scale[k])
        return torch.cat(parts, dim=-1)

    def loss(self, batch: LearnerBatch) -> tuple[Tensor | None, dict[str, float]]:
        feats = batch.out.features
        if feats is None:
            raise RuntimeError("reconstruction: the agent's unroll returned no features")
        T = batch.valid.shape[0]
        pred = self.decoder(feats[:T])
        loss, per_leaf = reconstruction_loss(pred, self.target(batch.traj.obs, T), self.sizes, batch.valid)
        metrics = {f"mse/{k}": float(v) for k, v in zip(self.keys, per_leaf.tolist(), strict=True)}
        return self.cost * loss, metrics


register_extra("reconstruction", Reconstruction)
