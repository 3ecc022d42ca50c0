"""Actor-critic loss terms on time-major tensors (IMPALA / TorchBeast), with per-sequence importance weights
and a validity mask, plus the KL divergence and trust-region mask. (R2D2 sequence priorities live with the other
priority math in :mod:`distrl.replay.priorities`.)

Reduction (all three loss terms): **sum over time, mean over the batch of sequences**:
``loss = (1/B) * sum_{t,b} w[t,b] * mask[t,b] * term[t,b]`` where B is the number of sequences (not the
number of valid steps, so a masked step changes nothing else's weight). TorchBeast itself sums over both T and
B; dividing by B makes the gradient scale independent of the batch size (multiply the learning rate by B to
match a TorchBeast run). ``weights`` are the prioritized-replay IS weights, ``[B]`` (one per sequence,
broadcast over time) or anything broadcastable to ``[T, B]``; ``mask`` is ``[T, B]`` bool/float (False =
padding or a masked step: no contribution). Both default to ones.

Usage::

    loss = (policy_gradient_loss(logits, actions, vt.pg_advantages, w, valid)
            + 0.5 * baseline_loss(vt.vs, values, w, valid)
            + 0.01 * entropy_loss(logits, w, valid))
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def action_log_probs(logits: Tensor, actions: Tensor) -> Tensor:
    """log softmax(logits)[a]: logits ``[T, B, A]``, actions ``[T, B]`` int → ``[T, B]`` (differentiable)."""
    if logits.shape[:-1] != actions.shape:
        raise ValueError(
            f"action_log_probs: logits {list(logits.shape)} must be actions {list(actions.shape)} + [A]"
        )
    return F.log_softmax(logits, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits): ``[..., A]`` → ``[...]``."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def _weighting(ref: Tensor, weights: Tensor | None, mask: Tensor | None) -> Tensor:
    """Combined per-step weight ``[T, B]`` = IS weight (broadcast over time) × mask."""
    t_len, b = ref.shape
    w = torch.ones((), dtype=ref.dtype, device=ref.device)
    if weights is not None:
        weights = weights.to(device=ref.device, dtype=ref.dtype)
        if weights.dim() == 1:
            if weights.shape[0] != b:
                raise ValueError(f"weights [B] must have B = {b} entries, got {list(weights.shape)}")
            weights = weights.unsqueeze(0)
        try:
            torch.broadcast_shapes(weights.shape, (t_len, b))
        except RuntimeError as e:
            raise ValueError(
                f"weights {list(weights.shape)} do not broadcast to [T, B] = [{t_len}, {b}]"
            ) from e
        w = w * weights
    if mask is not None:
        if mask.shape != (t_len, b):
            raise ValueError(f"mask must be [T, B] = [{t_len}, {b}], got {list(mask.shape)}")
        w = w * mask.to(device=ref.device, dtype=ref.dtype)
    return w.expand(t_len, b)


def _reduce(per_step: Tensor, w: Tensor) -> Tensor:
    """Sum over time, mean over batch, of ``per_step [T, B]`` times the combined weights ``w [T, B]``."""
    return (per_step * w).sum() / per_step.shape[1]


def _zero_masked(x: Tensor, w: Tensor) -> Tensor:
    """x where the step carries weight, else 0. Applied to the *factors* of a loss term (not only to the
    product), so inf/NaN in a masked (padding) step cannot reach the loss or, via 0 * inf, the gradient."""
    return torch.where(w != 0, x, torch.zeros_like(x))


def _check_advantages(advantages: Tensor, actions: Tensor) -> None:
    if advantages.shape != actions.shape:
        raise ValueError(
            f"advantages {list(advantages.shape)} must match actions {list(actions.shape)} [T, B]"
        )


def policy_gradient_loss(
    logits: Tensor,
    actions: Tensor,
    advantages: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Policy-gradient loss :math:`-\frac1B\sum_{t,b} w\,m\,A_t\log\pi(a_t|x_t)` (IMPALA §4.2, actor
    term; TorchBeast ``compute_policy_gradient_loss``).

    Args:
        logits: ``[T, B, A]`` target-policy logits (gradient flows here).
        actions: ``[T, B]`` int actions taken.
        advantages: ``[T, B]`` (e.g. V-trace ``pg_advantages``); treated as constants (detached).
        weights: IS weights ``[B]`` or broadcastable to ``[T, B]``; mask: ``[T, B]``.
    Returns:
        Scalar loss.
    """
    _check_advantages(advantages, actions)
    logp = action_log_probs(logits, actions)
    w = _weighting(logp, weights, mask)
    return _reduce(-_zero_masked(logp, w) * _zero_masked(advantages.detach(), w), w)


def clipped_surrogate_loss(
    logits: Tensor,
    behaviour_logits: Tensor,
    actions: Tensor,
    advantages: Tensor,
    clip: float,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""PPO's clipped surrogate against the behaviour policy (Schulman et al. 2017, eq. 7; the policy term of
    Sample Factory's APPO): :math:`-\frac1B\sum_{t,b} w\,m\,\min(\rho_t A_t,\ \mathrm{clip}(\rho_t,
    \tfrac{1}{1+\epsilon}, 1+\epsilon)\,A_t)` with :math:`\rho_t=\pi(a_t|x_t)/\mu(a_t|x_t)`.

    Its gradient is :math:`\rho_t A_t\nabla\log\pi(a_t)` while the ratio is inside the band and 0 once it has
    left the band in the direction the advantage pushes: a step can no longer move :math:`\pi(a_t)` further
    from :math:`\mu(a_t)` than a factor :math:`1+\epsilon` either way (the band is symmetric in log-ratio).
    ``advantages`` must not already carry the ratio (V-trace with ``pg_rho=False``).

    Args:
        logits: ``[T, B, A]`` target-policy logits (gradient flows here).
        behaviour_logits: ``[T, B, A]`` the acting policy's logits (no gradient).
        actions: ``[T, B]`` int; advantages: ``[T, B]`` (detached here); clip: epsilon > 0.
        weights, mask: as in :func:`policy_gradient_loss`.
    """
    if clip <= 0:
        raise ValueError(f"clipped_surrogate_loss: clip must be > 0, got {clip}")
    _check_advantages(advantages, actions)
    logp = action_log_probs(logits, actions)
    log_mu = action_log_probs(behaviour_logits.detach(), actions)
    w = _weighting(logp, weights, mask)
    # exp of a masked (padding) step's ratio could overflow: zero its log-ratio first, as the other terms do.
    ratio = torch.exp(_zero_masked(logp - log_mu, w))
    adv = _zero_masked(advantages.detach(), w)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 / (1.0 + clip), 1.0 + clip) * adv)
    return _reduce(-surrogate, w)


def baseline_loss(
    vs: Tensor,
    values: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Value regression :math:`\frac1B\sum_{t,b} w\,m\,\tfrac12 (v_s - V(x_s))^2` (IMPALA §4.2 critic term;
    TorchBeast ``compute_baseline_loss``; the learner multiplies by ``baseline_cost``).

    Args:
        vs: ``[T, B]`` targets (detached here).
        values: ``[T, B]`` predictions V(x_t) (gradient flows here).
        weights, mask: as in :func:`policy_gradient_loss`.
    """
    if vs.shape != values.shape:
        raise ValueError(f"vs {list(vs.shape)} and values {list(values.shape)} must both be [T, B]")
    if values.dim() != 2:
        raise ValueError(f"baseline_loss: values must be [T, B], got {list(values.shape)}")
    w = _weighting(values, weights, mask)
    return _reduce(0.5 * _zero_masked(vs.detach() - values, w) ** 2, w)


def entropy_loss(logits: Tensor, weights: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    r"""Negative entropy :math:`\frac1B\sum_{t,b} w\,m\sum_a \pi_a\log\pi_a` (TorchBeast
    ``compute_entropy_loss``): minimising it raises entropy; the learner multiplies by ``entropy_cost``.

    Args:
        logits: ``[T, B, A]``; weights, mask: as in :func:`policy_gradient_loss`.
    """
    if logits.dim() != 3:
        raise ValueError(f"entropy_loss: logits must be [T, B, A], got {list(logits.shape)}")
    h = entropy(logits)
    w = _weighting(h, weights, mask)
    return _reduce(-_zero_masked(h, w), w)


def kl_categorical(logits_mu: Tensor, logits_pi: Tensor) -> Tensor:
    r""":math:`\mathrm{KL}(\mu\,\|\,\pi) = \sum_a \mu_a(\log\mu_a - \log\pi_a)` per step:
    ``[..., A]`` → ``[...]``.

    Used for the trust-region mask on replayed data (ALGORITHMS §5.4, LASER, Schmitt et al. 2020): keep step t
    when KL(behaviour ‖ current) ≤ kappa. Differentiable in both arguments.
    """
    if logits_mu.shape != logits_pi.shape:
        raise ValueError(f"kl_categorical: shapes differ: {list(logits_mu.shape)} vs {list(logits_pi.shape)}")
    log_mu = F.log_softmax(logits_mu, dim=-1)
    log_pi = F.log_softmax(logits_pi, dim=-1)
    return (log_mu.exp() * (log_mu - log_pi)).sum(-1)


def kl_loss(logits_mu: Tensor, logits_pi: Tensor, weights: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    r"""KL penalty :math:`\frac1B\sum_{t,b} w\,m\,\mathrm{KL}(\mu(\cdot|x_t)\,\|\,\pi(\cdot|x_t))`, the gradient into
    ``logits_pi`` only (``logits_mu`` is the behaviour policy, a constant). RLlib's APPO adds such a term; the
    learner weights it by ``learner.kl_cost``.

    Args:
        logits_mu, logits_pi: ``[T, B, A]``; weights, mask: as in :func:`policy_gradient_loss`.
    """
    if logits_pi.dim() != 3:
        raise ValueError(f"kl_loss: logits must be [T, B, A], got {list(logits_pi.shape)}")
    kl = kl_categorical(logits_mu.detach(), logits_pi)
    w = _weighting(kl, weights, mask)
    return _reduce(_zero_masked(kl, w), w)


@torch.no_grad()
def trust_region_mask(logits_mu: Tensor, logits_pi: Tensor, max_kl: float) -> Tensor:
    """``[T, B]`` bool: KL(mu ‖ pi) ≤ ``max_kl`` (ALGORITHMS §5.4 trust mask; no gradient).

    ``max_kl <= 0`` disables the mask (all True)."""
    if max_kl <= 0:
        return torch.ones(logits_mu.shape[:-1], dtype=torch.bool, device=logits_mu.device)
    return kl_categorical(logits_mu, logits_pi) <= max_kl
