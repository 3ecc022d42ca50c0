"""The V-trace actor-critic loss over replayed sequences, assembled from pure pieces (ALGORITHMS.md §5.4).

Each function takes tensors and returns tensors (or a small frozen dataclass of them), all time-major
``[T, B]``, so each has its own test against a NumPy reference (``tests/unit/test_learner_vtrace.py``), and
:class:`~distrl.learners.learner.Learner` only composes them:

1. :func:`learning_rewards`: rewards the learner trains on: raw extrinsic plus any intrinsic reward, clipped,
   plus the truncation bootstrap; and :func:`step_discounts`.
2. :func:`step_weights`: per-step weights of the three loss terms: IS weight × validity mask for all three,
   × the KL trust mask × any extra weighting (for example a duration weight) for the policy-gradient term.
3. :func:`vtrace_loss`: V-trace targets (:func:`~distrl.losses.vtrace.vtrace_from_logits`) and the weighted
   policy-gradient, baseline and entropy terms (:mod:`distrl.losses.pg`).

Usage::

    reward = learning_rewards(traj.reward, traj.truncated, traj.truncation_value, gamma, clip=1.0)
    disc = step_discounts(traj.terminated, traj.truncated, gamma)
    trusted = trust_region_mask(mu_logits, logits.detach(), kappa) | fresh[None]
    w = step_weights(is_w, valid, trusted=trusted)
    out = vtrace_loss(logits, values, bootstrap, mu_logits, actions, reward, disc, w, cfg)
    out.loss.backward()
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from distrl.config import LearnerConfig
from distrl.losses.pg import baseline_loss, entropy_loss, policy_gradient_loss
from distrl.losses.vtrace import vtrace_from_logits


def learning_rewards(
    reward: Tensor,
    truncated: Tensor,
    truncation_value: Tensor,
    discount: float,
    clip: float = 0.0,
    intrinsic: Tensor | None = None,
) -> Tensor:
    """``clip(r_ext + r_int, ±clip) + γ · truncated · V(final obs)``, all ``[T, B]`` float32.

    ``intrinsic`` (``[T, B]``, optional) is added before clipping, as E3B's code clips the combined reward
    (ALGORITHMS.md §1.5). ``clip <= 0`` disables clipping. On a step cut by a time limit the actor recorded the
    value of the cut episode's last observation (``truncation_value``); adding ``γ`` times it makes the step
    bootstrap through the time limit, and :func:`step_discounts` then stops the trace there, since
    ``obs[t + 1]`` already belongs to the next episode. The bootstrap term is not clipped: it is a value, not a
    reward.
    """
    r = reward.to(torch.float32)
    if intrinsic is not None:
        if intrinsic.shape != r.shape:
            raise ValueError(f"intrinsic reward {list(intrinsic.shape)} must match rewards {list(r.shape)} [T, B]")
        r = r + intrinsic.to(torch.float32)
    if clip > 0:
        r = r.clamp(-clip, clip)
    return r + discount * truncated.to(torch.float32) * truncation_value.to(torch.float32)


def step_discounts(terminated: Tensor, truncated: Tensor, discount: float) -> Tensor:
    """``[T, B]`` float32: ``γ`` on steps that did not end an episode, 0 where step t terminated or was
    truncated (V-trace's recursion then never crosses an episode boundary)."""
    return discount * (~(terminated.to(torch.bool) | truncated.to(torch.bool))).to(torch.float32)


@dataclass(frozen=True)
class StepWeights:
    """Per-step loss weights, each ``[T, B]`` float32 (zero where a step carries no loss)."""

    policy: Tensor  # IS × valid × trusted × extra: the policy-gradient term
    value: Tensor  # IS × valid: the baseline and entropy terms


def step_weights(
    is_weights: Tensor,
    valid: Tensor,
    trusted: Tensor | None = None,
    extra: Tensor | None = None,
) -> StepWeights:
    """Combine the per-step weights of the loss (ALGORITHMS.md §5.4: ``w_i · m_t · w_dur``).

    Args:
        is_weights: ``[B]`` prioritized-replay importance weights (fresh rows carry 1), broadcast over time.
        valid: ``[T, B]`` bool: steps that carry any loss (padding and dropped rows are False).
        trusted: ``[T, B]`` bool or None: the trust-region mask, applied to the policy-gradient term only
            (a replayed step whose behaviour policy is too far from π still trains the value).
        extra: ``[T, B]`` float or None: any further policy-gradient weighting (for example the duration
            weight of ALGORITHMS.md §3), multiplied in as is.
    """
    if valid.dim() != 2:
        raise ValueError(f"step_weights: valid must be [T, B], got {list(valid.shape)}")
    t_len, b = valid.shape
    if is_weights.shape != (b,):
        raise ValueError(f"step_weights: is_weights must be [B] = [{b}], got {list(is_weights.shape)}")
    value = is_weights.to(torch.float32)[None, :] * valid.to(torch.float32)
    policy = value
    for name, m in (("trusted", trusted), ("extra", extra)):
        if m is None:
            continue
        if m.shape != (t_len, b):
            raise ValueError(f"step_weights: {name} must be [T, B] = [{t_len}, {b}], got {list(m.shape)}")
        policy = policy * m.to(torch.float32)
    return StepWeights(policy=policy, value=value)


@dataclass(frozen=True)
class VTraceLoss:
    """The loss and what the learner logs and turns into priorities. ``loss`` has a gradient; the rest not."""

    loss: Tensor  # scalar: pg + baseline_cost · baseline + entropy_cost · entropy
    policy_loss: Tensor  # scalar
    baseline_loss: Tensor  # scalar
    entropy_loss: Tensor  # scalar
    vs: Tensor  # [T, B] V-trace value targets
    log_rhos: Tensor  # [T, B] log π(a|x) − log μ(a|x)


def vtrace_loss(
    logits: Tensor,
    values: Tensor,
    bootstrap_value: Tensor,
    behaviour_logits: Tensor,
    actions: Tensor,
    rewards: Tensor,
    discounts: Tensor,
    weights: StepWeights,
    cfg: LearnerConfig,
) -> VTraceLoss:
    """IMPALA's loss on one batch: V-trace targets from μ (``behaviour_logits``) and π (``logits``), then
    ``pg + baseline_cost · ½(v_s − V)² − entropy_cost · H(π)``, each term weighted per step by ``weights`` and
    reduced as :mod:`distrl.losses.pg` says (sum over time, mean over sequences).

    Shapes: ``logits``, ``behaviour_logits`` ``[T, B, A]``; ``values``, ``actions``, ``rewards``, ``discounts``
    ``[T, B]``; ``bootstrap_value`` ``[B]``. Gradients flow into ``logits`` and ``values`` only.
    """
    vt = vtrace_from_logits(
        behaviour_logits=behaviour_logits,
        target_logits=logits.detach(),
        actions=actions,
        discounts=discounts,
        rewards=rewards,
        values=values.detach(),
        bootstrap_value=bootstrap_value.detach(),
        clip_rho=cfg.clip_rho,
        clip_c=cfg.clip_c,
        clip_pg_rho=cfg.clip_pg_rho,
    )
    pg = policy_gradient_loss(logits, actions, vt.pg_advantages, mask=weights.policy)
    bl = baseline_loss(vt.vs, values, mask=weights.value)
    ent = entropy_loss(logits, mask=weights.value)
    loss = pg + cfg.baseline_cost * bl + cfg.entropy_cost * ent
    return VTraceLoss(loss=loss, policy_loss=pg.detach(), baseline_loss=bl.detach(), entropy_loss=ent.detach(),
                      vs=vt.vs, log_rhos=vt.log_rhos)
