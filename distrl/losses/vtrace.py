"""V-trace off-policy actor-critic targets (Espeholt et al. 2018, "IMPALA", §4.1 Eq. 1 and the policy-gradient
advantage of §4.2), with TorchBeast's semantics: targets are computed under ``no_grad``, used as constants.

All inputs are time-major ``[T, B]`` (``bootstrap_value`` is ``[B]``). Episode ends are expressed through
``discounts`` (``gamma * (1 - terminated)``), as in TorchBeast: the recursion below then never crosses an
episode boundary.

Several value heads (extrinsic and intrinsic, RND's two-head form) share one set of importance ratios:
:func:`vtrace_streams` runs the targets once per head and sums the heads' policy-gradient advantages with
their coefficients.

Usage::

    vt = vtrace_from_logits(behaviour_logits, out.logits, actions, discounts, rewards, out.value, bootstrap)
    pg = policy_gradient_loss(out.logits, actions, vt.pg_advantages, weights=is_w, mask=valid)
    vl = baseline_loss(vt.vs, out.value, weights=is_w, mask=valid)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from distrl.losses.pg import action_log_probs


@dataclass(frozen=True)
class VTraceOut:
    """V-trace outputs, both ``[T, B]`` and without gradient."""

    vs: Tensor  # [T, B] value targets v_s
    pg_advantages: Tensor  # [T, B] rho^pg_s * (r_s + gamma_s * v_{s+1} - V(x_s))


@dataclass(frozen=True)
class VTraceFromLogitsOut(VTraceOut):
    """:class:`VTraceOut` plus the log-probabilities it was computed from (all ``[T, B]``)."""

    log_rhos: Tensor  # [T, B] log pi(a_t|x_t) - log mu(a_t|x_t), no gradient
    behaviour_action_log_probs: Tensor  # [T, B] log mu(a_t|x_t)
    target_action_log_probs: Tensor  # [T, B] log pi(a_t|x_t); keeps its gradient for the caller


def _check_tb(name: str, x: Tensor, shape: torch.Size) -> None:
    if x.shape != shape:
        raise ValueError(f"vtrace: {name} must have shape [T, B] = {list(shape)}, got {list(x.shape)}")


@torch.no_grad()
def vtrace_targets(
    log_rhos: Tensor,
    discounts: Tensor,
    rewards: Tensor,
    values: Tensor,
    bootstrap_value: Tensor,
    clip_rho: float | None = 1.0,
    clip_c: float | None = 1.0,
    clip_pg_rho: float | None = 1.0,
    pg_rho: bool = True,
) -> VTraceOut:
    r"""V-trace value targets and policy-gradient advantages (IMPALA Eq. 1; TorchBeast
    ``from_importance_weights``).

    With :math:`\rho_t = \pi(a_t|x_t)/\mu(a_t|x_t)`, :math:`\bar\rho_t=\min(\bar\rho,\rho_t)`,
    :math:`c_t=\min(\bar c,\rho_t)` and :math:`\delta_t = \bar\rho_t(r_t+\gamma_t V(x_{t+1})-V(x_t))`:

    .. math::
        v_s - V(x_s) = \delta_s + \gamma_s c_s (v_{s+1} - V(x_{s+1})),\qquad
        A_s = \min(\bar\rho_{pg},\rho_s)\,(r_s + \gamma_s v_{s+1} - V(x_s))

    with :math:`V(x_T)` = ``bootstrap_value`` and :math:`v_T` = ``bootstrap_value``.

    Args:
        log_rhos: ``[T, B]`` log importance ratios log pi(a_t) - log mu(a_t).
        discounts: ``[T, B]`` gamma_t, zero where step t terminated the episode.
        rewards: ``[T, B]`` r_t.
        values: ``[T, B]`` V(x_t) under the current parameters.
        bootstrap_value: ``[B]`` V(x_T).
        clip_rho, clip_c, clip_pg_rho: truncation levels rho-bar, c-bar, rho-bar_pg (None = no truncation).
        pg_rho: False leaves the factor :math:`\min(\bar\rho_{pg},\rho_s)` out of ``pg_advantages``, for a
            loss that weights by the ratio itself (:func:`~distrl.losses.pg.clipped_surrogate_loss`).
    Returns:
        :class:`VTraceOut` (``vs``, ``pg_advantages``), both ``[T, B]``, no gradient.
    """
    if log_rhos.dim() != 2:
        raise ValueError(f"vtrace: log_rhos must be [T, B], got {list(log_rhos.shape)}")
    shape = log_rhos.shape
    for name, x in (("discounts", discounts), ("rewards", rewards), ("values", values)):
        _check_tb(name, x, shape)
    if bootstrap_value.shape != shape[1:]:
        raise ValueError(
            f"vtrace: bootstrap_value must be [B] = [{shape[1]}], got {list(bootstrap_value.shape)}"
        )
    dtype = values.dtype if values.dtype.is_floating_point else torch.float32
    log_rhos, discounts, rewards, values, bootstrap_value = (
        t.to(dtype) for t in (log_rhos, discounts, rewards, values, bootstrap_value)
    )

    rhos = torch.exp(log_rhos)
    clipped_rhos = rhos.clamp(max=clip_rho) if clip_rho is not None else rhos
    cs = rhos.clamp(max=clip_c) if clip_c is not None else rhos
    values_tp1 = torch.cat([values[1:], bootstrap_value.unsqueeze(0)], dim=0)
    deltas = clipped_rhos * (rewards + discounts * values_tp1 - values)

    # Backward recursion over time; T is small (tens to hundreds), so a Python loop costs little.
    acc = torch.zeros_like(bootstrap_value)
    vs_minus_v = torch.empty_like(values)
    decay = discounts * cs
    for t in range(values.shape[0] - 1, -1, -1):
        acc = deltas[t] + decay[t] * acc
        vs_minus_v[t] = acc
    vs = vs_minus_v + values

    vs_tp1 = torch.cat([vs[1:], bootstrap_value.unsqueeze(0)], dim=0)
    pg_advantages = rewards + discounts * vs_tp1 - values
    if pg_rho:
        pg_advantages = (rhos.clamp(max=clip_pg_rho) if clip_pg_rho is not None else rhos) * pg_advantages
    return VTraceOut(vs=vs, pg_advantages=pg_advantages)


def vtrace_from_logits(
    behaviour_logits: Tensor,
    target_logits: Tensor,
    actions: Tensor,
    discounts: Tensor,
    rewards: Tensor,
    values: Tensor,
    bootstrap_value: Tensor,
    clip_rho: float | None = 1.0,
    clip_c: float | None = 1.0,
    clip_pg_rho: float | None = 1.0,
) -> VTraceFromLogitsOut:
    """V-trace from behaviour (mu) and target (pi) logits ``[T, B, A]`` and actions ``[T, B]`` (TorchBeast
    ``from_logits``). ``vs``, ``pg_advantages`` and ``log_rhos`` carry no gradient;
    ``target_action_log_probs`` does.
    Other arguments as in :func:`vtrace_targets`.
    """
    if behaviour_logits.shape != target_logits.shape:
        raise ValueError(f"vtrace: behaviour_logits {list(behaviour_logits.shape)} and target_logits "
                         f"{list(target_logits.shape)} must both be [T, B, A]")
    target_lp = action_log_probs(target_logits, actions)
    behaviour_lp = action_log_probs(behaviour_logits, actions)
    log_rhos = (target_lp - behaviour_lp).detach()
    out = vtrace_targets(log_rhos, discounts, rewards, values, bootstrap_value, clip_rho, clip_c, clip_pg_rho)
    return VTraceFromLogitsOut(
        vs=out.vs,
        pg_advantages=out.pg_advantages,
        log_rhos=log_rhos,
        behaviour_action_log_probs=behaviour_lp.detach(),
        target_action_log_probs=target_lp,
    )


@dataclass(frozen=True)
class VTraceStreamsOut:
    """:func:`vtrace_streams` outputs, no gradient."""

    streams: tuple[VTraceOut, ...]  # per value head: vs [T, B] and that head's own advantages [T, B]
    pg_advantages: Tensor  # [T, B] sum_k adv_coefs[k] * streams[k].pg_advantages


@torch.no_grad()
def vtrace_streams(
    log_rhos: Tensor,
    discounts: Sequence[Tensor],
    rewards: Sequence[Tensor],
    values: Sequence[Tensor],
    bootstrap_values: Sequence[Tensor],
    adv_coefs: Sequence[float],
    clip_rho: float | None = 1.0,
    clip_c: float | None = 1.0,
    clip_pg_rho: float | None = 1.0,
    pg_rho: bool = True,
) -> VTraceStreamsOut:
    r"""V-trace for K value heads over the same importance ratios (one behaviour and one target policy).

    Head k has its own rewards, discounts (its own gamma and episode cuts), values and bootstrap; each gets
    :func:`vtrace_targets`, and the policy gradient uses :math:`A_s = \sum_k c_k A^{(k)}_s` (RND, Burda et al.
    2018 §2.3: separate extrinsic and intrinsic value heads fitted to their own returns and combined; RND
    weights them :math:`c_E=2, c_I=1`, as recalled). Since :math:`A^{(k)}` is linear in the head's rewards and
    values, K heads with a common discount and :math:`c_k=1` give the same advantage as one head on the summed
    reward and summed values.

    Args:
        log_rhos: ``[T, B]`` log pi(a_t) - log mu(a_t), shared by all heads.
        discounts, rewards, values: K tensors ``[T, B]`` each; bootstrap_values: K tensors ``[B]``.
        adv_coefs: K floats c_k (a coefficient of exactly 1 is not multiplied in, so one head with c = 1 is
            :func:`vtrace_targets` bit for bit).
        clip_rho, clip_c, clip_pg_rho, pg_rho: as in :func:`vtrace_targets`.
    """
    k = len(discounts)
    if k < 1 or not (len(rewards) == len(values) == len(bootstrap_values) == len(adv_coefs) == k):
        raise ValueError(
            f"vtrace_streams: need K >= 1 heads with one of each input, got {k} discounts, {len(rewards)} rewards, "
            f"{len(values)} values, {len(bootstrap_values)} bootstrap values, {len(adv_coefs)} coefficients"
        )
    outs = tuple(
        vtrace_targets(log_rhos, d, r, v, b, clip_rho, clip_c, clip_pg_rho, pg_rho)
        for d, r, v, b in zip(discounts, rewards, values, bootstrap_values)
    )
    adv: Tensor | None = None
    for out, c in zip(outs, adv_coefs):
        a = out.pg_advantages if c == 1.0 else c * out.pg_advantages
        adv = a if adv is None else adv + a
    assert adv is not None
    return VTraceStreamsOut(streams=outs, pg_advantages=adv)
