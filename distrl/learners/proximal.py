"""The proximal policy: a copy of the learner's policy refreshed every ``learner.proximal_period`` updates, against
which an update's step is limited on every row, fresh or replayed.

Limits measured against the behaviour policy μ (``learner.ppo_clip`` with ``ppo_clip_against: behaviour``,
``learner.kl_cost``) anchor replayed rows to behaviour that can be hundreds of updates old. Here the anchor is a
recent policy instead, decoupled from the one that acted (Hilton et al. 2022, "Batch size-invariance for policy
optimization": PPO's clip against a proximal policy, the off-policy correction against μ kept apart; MPO and V-MPO
bound KL to a target network the same way):

* ``learner.ppo_clip_against: proximal``: the clipped surrogate's ratio is π/π_prox, and the advantage carries the
  truncated importance weight min(ρ̄, π_prox/μ) (:func:`distrl.learners.vtrace.vtrace_loss`).
* ``learner.proximal_kl_cost = c``: ``c · KL(π_prox ‖ π)`` summed over every valid step (each row's own burn-in).

The copy is refreshed from the live policy every ``period`` updates and whenever the learner loads a checkpoint
(it is not checkpointed: a resumed run's proximal policy is the resumed policy). Its forward pass runs under
``no_grad`` over the whole sequence, burn-in included, from the stored core state: one extra forward per update.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from distrl.models.agent import Agent
from distrl.types import Trajectory


class ProximalPolicy:
    def __init__(self, agent: Agent, period: int) -> None:
        if period < 1:
            raise ValueError(f"ProximalPolicy: period must be >= 1 update, got {period}")
        self.period = period
        self.agent = copy.deepcopy(agent)
        self.agent.requires_grad_(False)
        self.refreshed_at = 0  # the learner version the copy was taken at

    def refresh(self, agent: Agent, version: int) -> None:
        """Copy ``agent``'s weights (and its training dtype) into the proximal policy."""
        self.agent.load_state_dict(agent.state_dict())
        self.agent.unroll_dtype = agent.unroll_dtype
        self.refreshed_at = version

    def after_update(self, agent: Agent, version: int) -> None:
        """Called after each optimiser step with the new version: refresh every ``period`` updates."""
        if version - self.refreshed_at >= self.period:
            self.refresh(agent, version)

    @torch.no_grad()
    def logits(self, traj: Trajectory, reset: Tensor, burn: int) -> Tensor:
        """π_prox's logits ``[T, B, A]`` on the trained part of ``traj`` (``[burn + T (+1), B]``), burn-in run by
        the proximal policy itself from the stored core state."""
        state = self.agent.burn_in(traj.obs, reset, traj.core_state, burn)
        out = self.agent.unroll({k: v[burn:] for k, v in traj.obs.items()}, reset[burn:], state)
        return out.logits[:-1].to(torch.float32)
