"""Priority math shared by shards, the sampler and learners (ALGORITHMS.md §4.1, §4.3, §4.6).

* :func:`sequence_priority`: R2D2's ``eta * max|td| + (1 - eta) * mean|td|`` over a sequence's valid steps.
* :func:`priority_mass`: the sum-tree leaf value ``(|p| + eps) ** alpha`` (times an optional sampling prior).
* :func:`importance_weights`: ``w = (N * P(i)) ** -beta`` normalised by the batch max.
* :func:`beta_at`: linear beta annealing from a :class:`~distrl.config.ReplayConfig`.

Usage::

    p = sequence_priority(td.abs(), batch.traj.valid, eta=cfg.priority_eta)      # [B]
    beta = beta_at(cfg, learner_step)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from distrl.config import ReplayConfig


def sequence_priority(td_abs: Tensor, valid: Tensor, eta: float) -> Tensor:
    """R2D2 sequence priority (Kapturowski et al. 2019, §2.3): ``eta * max_t + (1 - eta) * mean_t`` of |td|.

    td_abs: [T, B] float (absolute TD errors, or any non-negative per-step error); valid: [T, B] bool.
    Returns [B] float (same dtype as td_abs). Only valid steps count; a row with no valid step gets 0.
    The max term keeps a sequence with one large error likely to be replayed even when the mean is small.
    """
    if td_abs.shape != valid.shape or td_abs.dim() != 2:
        raise ValueError(
            f"sequence_priority: td_abs {tuple(td_abs.shape)} and valid {tuple(valid.shape)} must both be [T, B]"
        )
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"sequence_priority: eta must be in [0, 1], got {eta}")
    td_abs = td_abs.detach()
    valid = valid.to(torch.bool)
    zero = torch.zeros((), dtype=td_abs.dtype, device=td_abs.device)
    masked = torch.where(valid, td_abs.abs(), zero)
    count = valid.sum(dim=0)
    mx = masked.max(dim=0).values
    mean = masked.sum(dim=0) / count.clamp(min=1).to(td_abs.dtype)
    return torch.where(count > 0, eta * mx + (1.0 - eta) * mean, zero)


def priority_mass(priorities: np.ndarray, alpha: float, epsilon: float) -> np.ndarray:
    """Sum-tree leaf values ``(|p| + epsilon) ** alpha`` (float64). ValueError on NaN/inf priorities."""
    p = np.abs(np.asarray(priorities, dtype=np.float64))
    if not np.all(np.isfinite(p)):
        raise ValueError("replay priorities must be finite (got NaN or inf); check the learner's TD errors")
    return np.power(p + epsilon, alpha)


def importance_weights(
    probs: np.ndarray, size: int, beta: float, prior: np.ndarray | None = None
) -> np.ndarray:
    """``w_i = (N * P(i) / d_i) ** -beta / max_j w_j`` (Schaul et al. 2016; batch-max normalisation as in Acme).

    probs: [n] float64 true sampling probabilities P(i) > 0; size: N, the items sampling ranged over;
    prior: [n] sampling priors d_i > 0 that were multiplied into the priorities on purpose (ALGORITHMS.md §3.5:
    divided out here, so the prior changes what is sampled but the weights correct only for the priorities),
    default 1. Returns [n] float64 in (0, 1]. An empty input gives an empty output.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.size == 0:
        return probs.copy()
    if np.any(probs <= 0) or not np.all(np.isfinite(probs)):
        raise ValueError("importance_weights: probabilities must be finite and > 0")
    # In log space: N * P(i) can underflow for tiny probabilities in huge buffers, and only ratios matter.
    logw = -beta * (np.log(float(size)) + np.log(probs))
    if prior is not None:
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != probs.shape or np.any(prior <= 0) or not np.all(np.isfinite(prior)):
            raise ValueError("importance_weights: prior must be finite, > 0 and shaped like probs")
        logw = logw + beta * np.log(prior)
    return np.exp(logw - logw.max())


def beta_at(cfg: ReplayConfig, step: int) -> float:
    """Linear annealing ``beta_start -> beta_end`` over ``beta_steps`` learner updates, then constant."""
    if cfg.beta_steps <= 0:
        return float(cfg.beta_end)
    frac = min(max(step, 0) / cfg.beta_steps, 1.0)
    return float(cfg.beta_start + frac * (cfg.beta_end - cfg.beta_start))
