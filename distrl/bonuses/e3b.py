"""E3B's embedding training: an inverse-dynamics model (IDM) over an embedding ``phi`` (ALGORITHMS.md §1.2 (c)).

``phi`` is the policy's encoder architecture without the core (``distrl.models.encoders``, built by the
caller with :func:`e3b_model_config`; ``bonus.e3b_encoder`` picks another), output width ``bonus.e3b_dim``
(0 = ``model.hidden_size``). The IDM
predicts the action from ``concat(phi(s_t), phi(s_{t+1}))`` through ``Linear(2d, 256) -> ReLU ->
Linear(256, A)`` (the E3B code's ``MinigridInverseDynamicsNet``); the loss is the cross-entropy of ``a_t``,
averaged over the steps that are real transitions (valid and not the last step of an episode, whose
``s_{t+1}`` is the next episode's first observation). The E3B code sums over time and averages over the
batch; under Adam that only rescales the gradient, which Adam's normalisation undoes (up to gradient
clipping), so the mean is used here and the learning rate keeps its meaning.

The learner extra that trains this and publishes ``phi`` to the actors is
:class:`distrl.learners.e3b_extra.E3BExtra` (``learner.extras`` name ``"e3b"``, switched on by
``bonus.episodic=e3b``); the actor side is :class:`distrl.bonuses.episodic.E3BEpisodicBonus`.

Usage::

    embed = build_encoder(e3b_model_config(cfg), spec)
    idm = InverseDynamics(embed.out_dim, spec.num_actions)
    loss, acc = idm_loss(embed, idm, traj.obs, traj.action, mask)   # obs [T + 1, B, ...], mask [T, B]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distrl.config import ExperimentConfig, ModelConfig

IDM_HIDDEN = 256


def e3b_dim(cfg: ExperimentConfig) -> int:
    """Width of the E3B embedding: ``bonus.e3b_dim`` or, when 0, ``model.hidden_size``."""
    return cfg.bonus.e3b_dim or cfg.model.hidden_size


def e3b_model_config(cfg: ExperimentConfig) -> ModelConfig:
    """The model config whose encoder is the E3B embedding: ``bonus.e3b_encoder`` (default: the policy's
    encoder), width :func:`e3b_dim`."""
    enc = cfg.bonus.e3b_encoder or cfg.model.encoder
    return dataclasses.replace(cfg.model, hidden_size=e3b_dim(cfg), encoder=enc)  # type: ignore[arg-type]


class InverseDynamics(nn.Module):
    """``(phi_t [*, d], phi_{t+1} [*, d]) -> action logits [*, A]``."""

    def __init__(self, dim: int, num_actions: int, hidden: int = IDM_HIDDEN) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, num_actions))

    def forward(self, phi: Tensor, phi_next: Tensor) -> Tensor:
        return self.net(torch.cat([phi, phi_next], dim=-1))


def transition_mask(valid: Tensor, terminated: Tensor, truncated: Tensor) -> Tensor:
    """``[T, B]`` bool: steps whose ``(s_t, a_t, s_{t+1})`` is a real transition of one episode."""
    return valid & ~(terminated | truncated)


def idm_loss(
    embed: nn.Module, idm: InverseDynamics, obs: Mapping[str, Tensor], action: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """(mean cross-entropy of ``a_t`` over ``mask``, accuracy over ``mask``; both scalars).

    ``obs`` leaves ``[T + 1, B, ...]``, ``action`` ``[T, B]`` int, ``mask`` ``[T, B]`` bool. All ``T + 1``
    observations are embedded in one call."""
    phi = embed(obs)  # [T + 1, B, d]
    logits = idm(phi[:-1], phi[1:])  # [T, B, A]
    ce = F.cross_entropy(logits.flatten(0, 1), action.flatten().long(), reduction="none").view_as(mask)
    m = mask.to(ce.dtype)
    n = m.sum().clamp(min=1.0)
    loss = (ce * m).sum() / n
    with torch.no_grad():
        acc = ((logits.argmax(-1) == action.long()).to(ce.dtype) * m).sum() / n
    return loss, acc
