"""Priority math shared by shards, the sampler and learners (ALGORITHMS.md §4.1, §4.3, §4.6).

* :func:`sequence_priority`: R2D2's ``eta * max|td| + (1 - eta) * mean|td|`` over a sequence's valid steps.
* :func:`priority_mass`: the sum-tree leaf value ``(|p| + eps) ** alpha`` (times an optional sampling prior).
* :func:`importance_weights`: ``w = (N * P(i)) ** -beta`` normalised by the batch max.
* :func:`beta_at`: linear beta annealing from a :class:`~distrl.config.ReplayConfig`.
* :func:`duration_prior` and :class:`DurationPrior`: the duration sampling prior ``(dt / running-mean dt) ** kappa``
  of ALGORITHMS.md §3.5 item 3, computed where a sequence is inserted (``duration.mode=prior``).

Usage::

    p = sequence_priority(td.abs(), batch.traj.valid, eta=cfg.priority_eta)      # [B]
    beta = beta_at(cfg, learner_step)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from distrl.config import DurationConfig, ReplayConfig
from distrl.types import Trajectory, as_numpy

if TYPE_CHECKING:  # imported where used: the replay shard imports this module and stays torch-free
    from torch import Tensor


def sequence_priority(td_abs: Tensor, valid: Tensor, eta: float) -> Tensor:
    """R2D2 sequence priority (Kapturowski et al. 2019, §2.3): ``eta * max_t + (1 - eta) * mean_t`` of |td|.

    td_abs: [T, B] float (absolute TD errors, or any non-negative per-step error); valid: [T, B] bool.
    Returns [B] float (same dtype as td_abs). Only valid steps count; a row with no valid step gets 0.
    The max term keeps a sequence with one large error likely to be replayed even when the mean is small.
    """
    import torch

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


def duration_prior(seq_dt: np.ndarray, mean_dt: float, kappa: float, lo: float = 1e-3, hi: float = 1e3) -> np.ndarray:
    """Sampling prior ``d_i = clip((seq_dt_i / mean_dt) ** kappa, lo, hi)`` (ALGORITHMS.md §3.5 item 3).

    seq_dt: [B] mean step duration of each sequence (seconds); mean_dt: running mean step duration at insert
    time (> 0). The clip keeps ``d_i`` finite and > 0 (the sum tree needs positive mass) for zero-duration
    steps. With ``kappa = 1`` and IS weights that divide ``d_i`` out at ``beta = 1``, sampling with the prior
    has the expectation of weighting the loss by ``dt / mean dt`` under uniform replay."""
    seq_dt = np.asarray(seq_dt, dtype=np.float64)
    if not mean_dt > 0 or not np.isfinite(mean_dt):
        raise ValueError(f"duration_prior: mean_dt must be finite and > 0, got {mean_dt}")
    if np.any(seq_dt < 0) or not np.all(np.isfinite(seq_dt)):
        raise ValueError("duration_prior: durations must be finite and >= 0")
    return np.clip(np.power(seq_dt / mean_dt, kappa), lo, hi)


class DurationPrior:
    """Per-inserter running mean of step durations and the prior of each inserted sequence.

    ``__call__(traj)`` returns the ``[B]`` prior of the rows of ``traj`` (``duration.mode=prior``; their valid
    steps' mean ``duration`` over the running mean of all steps this inserter has seen, including these), or
    None in every other mode, so the shard stores prior 1. The env actor holds one; the runtimes pass its answer
    to ``insert(..., prior=...)``.

    Usage::

        prior = DurationPrior(cfg.duration)
        shard.insert(traj, prior=prior(traj))
    """

    def __init__(self, cfg: DurationConfig) -> None:
        self.cfg = cfg
        self.enabled = cfg.mode == "prior"
        self.total_dt = 0.0
        self.steps = 0

    def __call__(self, traj: Trajectory) -> np.ndarray | None:
        if not self.enabled:
            return None
        dt = as_numpy(traj.duration).astype(np.float64)  # [T, B]
        valid = traj.valid.detach().cpu().numpy().astype(bool)
        n = valid.sum(axis=0)  # [B]
        seq_dt = np.where(valid, dt, 0.0).sum(axis=0) / np.maximum(n, 1)
        self.total_dt += float(np.where(valid, dt, 0.0).sum())
        self.steps += int(n.sum())
        mean = self.total_dt / max(self.steps, 1)
        if mean <= 0:
            return np.ones(traj.B)
        return duration_prior(seq_dt, mean, self.cfg.kappa)
