"""The "e3b" learner extra: trains E3B's embedding by inverse dynamics and ships it to the env actors.

``phi`` is the policy's encoder architecture without the core (width ``bonus.e3b_dim``, 0 = the model's
``hidden_size``), trained with the IDM head by the cross-entropy of ``a_t`` from ``(phi(s_t), phi(s_{t+1}))``
on the learner's batch (:func:`distrl.bonuses.e3b.idm_loss`; ALGORITHMS.md §1.2 (c)). Its parameters are an
optimizer group of their own at ``bonus.e3b_lr`` (the learner's optimizer kind: Adam by default, as in the
E3B code), their gradients clipped separately from the agent's. :meth:`E3BExtra.actor_weights` is the
embedding's ``state_dict``, which the actors' :class:`~distrl.bonuses.episodic.E3BEpisodicBonus` loads by
version. The episodic bonus itself is computed on the actors and combined with any global bonus by the
"bonus" extra; this one adds no reward.

Metrics (``extras/e3b/``): ``loss`` (the IDM cross-entropy), ``idm_accuracy`` and ``transitions`` (the
steps trained on).

Usage::

    distrl train configs/minihack_multiroom.yaml bonus.episodic=e3b     # adds this extra by itself
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from distrl.bonuses.e3b import InverseDynamics, e3b_model_config, idm_loss, transition_mask
from distrl.config import ExperimentConfig
from distrl.envs.base import EnvSpec
from distrl.learners.extras import LearnerBatch, LearnerExtra, register_extra
from distrl.models.agent import Agent
from distrl.models.encoders import build_encoder


class E3BExtra(LearnerExtra):
    """E3B embedding + inverse-dynamics head (see the module doc)."""

    def __init__(self, cfg: ExperimentConfig, spec: EnvSpec, agent: Agent | None = None) -> None:
        super().__init__()
        self.lr = cfg.bonus.e3b_lr
        self.embed = build_encoder(e3b_model_config(cfg), spec)
        self.idm = InverseDynamics(self.embed.out_dim, spec.num_actions)

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.parameters()), "lr": self.lr}]

    def loss(self, batch: LearnerBatch) -> tuple[Tensor | None, dict[str, float]]:
        traj = batch.traj
        mask = transition_mask(batch.valid, traj.terminated, traj.truncated)
        loss, acc = idm_loss(self.embed, self.idm, traj.obs, traj.action, mask)
        return loss, {"idm_accuracy": float(acc), "transitions": float(mask.sum())}

    def actor_weights(self) -> dict[str, Tensor]:
        return self.embed.state_dict()


register_extra("e3b", E3BExtra)
