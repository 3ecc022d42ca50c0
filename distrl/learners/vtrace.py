"""The V-trace actor-critic loss over replayed sequences, assembled from pure pieces (ALGORITHMS.md §5.4).

Each function takes tensors and returns tensors (or a small frozen dataclass of them), all time-major
``[T, B]``, so each has its own test against a NumPy reference (``tests/unit/test_learner_vtrace.py``), and
:class:`~distrl.learners.learner.Learner` only composes them:

1. :func:`learning_rewards`: rewards the learner trains on: raw extrinsic plus any intrinsic reward, clipped,
   plus the truncation bootstrap; and :func:`step_discounts`.
2. :func:`step_weights`: per-step weights of the three loss terms: IS weight × validity mask for all three,
   × the KL trust mask × any extra weighting (for example a duration weight) for the policy-gradient term.
3. :func:`vtrace_loss`: V-trace targets (:func:`~distrl.losses.vtrace.vtrace_streams`) and the weighted
   policy-gradient, baseline and entropy terms (:mod:`distrl.losses.pg`).

Value heads beyond the extrinsic one (``bonus.value_heads=2``: an intrinsic head, RND-style) come in as
:class:`ValueStream` s, each with its own rewards and discounts (:func:`intrinsic_stream` builds the intrinsic
one); :func:`vtrace_loss` runs V-trace once per head over the same importance ratios, sums the heads' advantages
(``A_ext + c * A_int``) into the one policy gradient and the heads' baseline losses into one. With no extra
stream it is the one-head loss, bit for bit.

Usage::

    reward = learning_rewards(traj.reward, traj.truncated, traj.truncation_value, gamma, clip=1.0)
    disc = step_discounts(traj.terminated, traj.truncated, gamma)
    trusted = trust_region_mask(mu_logits, logits.detach(), kappa) | fresh[None]
    w = step_weights(is_w, valid, trusted=trusted)
    out = vtrace_loss(logits, values, bootstrap, mu_logits, actions, reward, disc, w, cfg)
    out.loss.backward()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from distrl.config import LearnerConfig
from distrl.losses.pg import (
    action_log_probs,
    baseline_loss,
    clipped_surrogate_loss,
    entropy_loss,
    policy_gradient_loss,
)
from distrl.losses.vtrace import vtrace_streams


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
class ValueStream:
    """A reward stream with a value head of its own, beside the extrinsic one (learner extras return it from
    :meth:`~distrl.learners.extras.LearnerExtra.value_stream`). Its V-trace uses the batch's importance ratios;
    its advantage enters the policy gradient times ``adv_coef``; its baseline loss is added to the extrinsic
    head's (both times ``learner.baseline_cost``). Metrics name it ``learner/value_loss_<name>``."""

    name: str
    rewards: Tensor  # [T, B] float32: what the head's return sums (clipped, with any bootstrap term)
    discounts: Tensor  # [T, B] float32: the head's gamma, 0 where its return is cut
    values: Tensor  # [T + 1, B]: the head's values along the unroll (gradient flows); the last row bootstraps
    adv_coef: float = 1.0


def intrinsic_stream(
    intrinsic: Tensor,
    values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    valid: Tensor,
    gamma: float,
    episodic: bool = True,
    clip: float = 0.0,
    adv_coef: float = 1.0,
) -> ValueStream:
    """The intrinsic head's stream (``bonus.value_heads=2``), all ``[T, B]`` except ``values`` ``[T + 1, B]``.

    * Rewards: ``intrinsic`` clipped to ``±clip`` on its own (``learner.reward_clip``; ``<= 0`` = no clip), as
      the extrinsic reward is: with two heads neither reward's clip sees the other.
    * ``episodic=True`` (E3B, whose bonus resets with the episode): the return is cut at every episode end,
      terminated or truncated. A time limit cuts it too, with no bootstrap: the actors record the extrinsic
      head's value of a cut episode's final observation only, and an episodic bonus does end with its episode.
    * ``episodic=False`` (RND's non-episodic intrinsic return): episode ends do not cut it; the return runs on
      into the next episode's first observation (``obs[t + 1]``, whose core state was reset).
    * Either way, a step whose transition is not real (``valid`` False: a faulted env, padding) breaks the
      stream: its reward is replaced by the head's own ``V(x_t)`` (detached) and its discount by 0, so
      ``delta_t = 0`` and the steps before it bootstrap from the last observation the stream really reached.
    """
    for name, x in (("terminated", terminated), ("truncated", truncated), ("valid", valid)):
        if x.shape != intrinsic.shape:
            raise ValueError(f"intrinsic_stream: {name} {list(x.shape)} must match intrinsic "
                             f"{list(intrinsic.shape)} [T, B]")
    if values.shape != (intrinsic.shape[0] + 1, *intrinsic.shape[1:]):
        raise ValueError(f"intrinsic_stream: values must be [T + 1, B] = [{intrinsic.shape[0] + 1}, "
                         f"{intrinsic.shape[1]}], got {list(values.shape)}")
    r = intrinsic.detach().to(torch.float32)
    if clip > 0:
        r = r.clamp(-clip, clip)
    broken = ~valid.to(torch.bool)
    r = torch.where(broken, values[:-1].detach().to(torch.float32), r)
    cut = broken | terminated.to(torch.bool) | truncated.to(torch.bool) if episodic else broken
    return ValueStream(name="int", rewards=r, discounts=gamma * (~cut).to(torch.float32), values=values,
                       adv_coef=adv_coef)


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
class HeadLoss:
    """One value head's part of :class:`VTraceLoss` (no gradient)."""

    name: str  # "ext", or the ValueStream's name
    baseline_loss: Tensor  # scalar, before baseline_cost
    vs: Tensor  # [T, B] the head's V-trace targets
    values: Tensor  # [T, B] the head's V(x_t)
    pg_advantages: Tensor  # [T, B] the head's own advantage (before its coefficient; without rho under ppo_clip)


@dataclass(frozen=True)
class VTraceLoss:
    """The loss and what the learner logs and turns into priorities. ``loss`` has a gradient; the rest not."""

    loss: Tensor  # scalar: pg + baseline_cost · baseline + entropy_cost · entropy
    policy_loss: Tensor  # scalar
    baseline_loss: Tensor  # scalar, summed over the value heads
    entropy_loss: Tensor  # scalar
    vs: Tensor  # [T, B] V-trace value targets of the extrinsic head
    log_rhos: Tensor  # [T, B] log π(a|x) − log μ(a|x)
    clip_log_ratio: Tensor  # [T, B] the log-ratio PPO's clip is on: log_rhos, or log π − log π_prox against π_prox
    td_error: Tensor  # [T, B] sum over heads of v_s − V(x_s): the TD error of the combined value (priorities)
    heads: tuple[HeadLoss, ...]  # the extrinsic head first, then one per ValueStream


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
    streams: Sequence[ValueStream] = (),
    proximal_logits: Tensor | None = None,
) -> VTraceLoss:
    """IMPALA's loss on one batch: V-trace targets from μ (``behaviour_logits``) and π (``logits``), then
    ``pg + baseline_cost · ½(v_s − V)² − entropy_cost · H(π)``, each term weighted per step by ``weights`` and
    reduced as :mod:`distrl.losses.pg` says (sum over time, mean over sequences). ``cfg.ppo_clip > 0`` swaps the
    policy-gradient term for PPO's clipped surrogate against μ, over advantages without the ρ factor; with
    ``cfg.ppo_clip_against == "proximal"`` the surrogate's ratio is π/π_prox (``proximal_logits``, a recent copy
    of π: :mod:`distrl.learners.proximal`) and the advantage carries min(ρ̄_pg, π_prox/μ), the off-policy
    correction against μ kept apart from the clip (Hilton et al. 2022's decoupled objective).

    ``streams``: further value heads (:class:`ValueStream`). Each gets V-trace over the same ratios; the policy
    gradient uses ``A_ext + sum_k adv_coef_k · A_k`` and the baseline term sums the heads' losses.

    Shapes: ``logits``, ``behaviour_logits`` ``[T, B, A]``; ``values``, ``actions``, ``rewards``, ``discounts``
    ``[T, B]``; ``bootstrap_value`` ``[B]``. Gradients flow into ``logits``, ``values`` and the streams'
    ``values`` only.
    """
    if behaviour_logits.shape != logits.shape:
        raise ValueError(f"vtrace: behaviour_logits {list(behaviour_logits.shape)} and target_logits "
                         f"{list(logits.shape)} must both be [T, B, A]")
    logp = action_log_probs(logits.detach(), actions)
    log_rhos = (logp - action_log_probs(behaviour_logits, actions)).detach()
    clip_log_ratio = log_rhos
    for s in streams:
        if s.values.shape != (values.shape[0] + 1, *values.shape[1:]):
            raise ValueError(f"vtrace_loss: stream {s.name!r} values must be [T + 1, B] = "
                             f"[{values.shape[0] + 1}, {values.shape[1]}], got {list(s.values.shape)}")
    head_values = [values, *(s.values[:-1] for s in streams)]
    vt = vtrace_streams(
        log_rhos,
        discounts=[discounts, *(s.discounts for s in streams)],
        rewards=[rewards, *(s.rewards for s in streams)],
        values=[v.detach() for v in head_values],
        bootstrap_values=[bootstrap_value.detach(), *(s.values[-1].detach() for s in streams)],
        adv_coefs=[1.0, *(s.adv_coef for s in streams)],
        clip_rho=cfg.clip_rho,
        clip_c=cfg.clip_c,
        clip_pg_rho=cfg.clip_pg_rho,
        pg_rho=cfg.ppo_clip <= 0,
    )
    if cfg.ppo_clip > 0 and cfg.ppo_clip_against == "proximal":
        if proximal_logits is None or proximal_logits.shape != logits.shape:
            raise ValueError("vtrace_loss: learner.ppo_clip_against=proximal needs proximal_logits [T, B, A] = "
                             f"{list(logits.shape)}, got "
                             f"{None if proximal_logits is None else list(proximal_logits.shape)}")
        logp_prox = action_log_probs(proximal_logits, actions).detach()
        clip_log_ratio = logp - logp_prox
        log_prox_mu = (logp_prox - action_log_probs(behaviour_logits, actions)).detach()
        adv = vt.pg_advantages * log_prox_mu.exp().clamp(max=cfg.clip_pg_rho)
        pg = clipped_surrogate_loss(logits, proximal_logits, actions, adv, cfg.ppo_clip, mask=weights.policy)
    elif cfg.ppo_clip > 0:
        pg = clipped_surrogate_loss(logits, behaviour_logits, actions, vt.pg_advantages, cfg.ppo_clip,
                                    mask=weights.policy)
    else:
        pg = policy_gradient_loss(logits, actions, vt.pg_advantages, mask=weights.policy)
    head_bl = [baseline_loss(h.vs, v, mask=weights.value) for h, v in zip(vt.streams, head_values)]
    bl = head_bl[0]
    for b in head_bl[1:]:
        bl = bl + b
    ent = entropy_loss(logits, mask=weights.value)
    loss = pg + cfg.baseline_cost * bl + cfg.entropy_cost * ent
    names = ["ext", *(s.name for s in streams)]
    heads = tuple(
        HeadLoss(name=n, baseline_loss=b.detach(), vs=h.vs, values=v.detach(), pg_advantages=h.pg_advantages)
        for n, b, h, v in zip(names, head_bl, vt.streams, head_values)
    )
    td = heads[0].vs - heads[0].values
    for h in heads[1:]:
        td = td + (h.vs - h.values)
    return VTraceLoss(loss=loss, policy_loss=pg.detach(), baseline_loss=bl.detach(), entropy_loss=ent.detach(),
                      vs=vt.streams[0].vs, log_rhos=log_rhos, clip_log_ratio=clip_log_ratio,
                      td_error=td, heads=heads)
