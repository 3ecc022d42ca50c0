"""The self-supervised reconstruction loss (HCAM's agent trains "self-supervised and RL losses"; ALGORITHMS.md
§2.6): a decoder predicts the step's observation from the agent's state, here as a squared error per observation
leaf, on time-major tensors.

Reduction, as the actor-critic terms in :mod:`distrl.losses.pg`: **sum over time, mean over the batch of
sequences**, ``loss = (1/B) Σ_{t,b} mask[t,b] · (1/L) Σ_l mean_{i in leaf l} (pred - target)²``: each of the
``L`` leaves counts the same whatever its size (a 9-entry one-hot as much as a 490-entry room), and a masked
step contributes nothing.

Usage::

    loss, per_leaf = reconstruction_loss(pred, target, sizes=(490, 9, 8), mask=valid)   # pred, target [T, B, 507]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def reconstruction_loss(pred: Tensor, target: Tensor, sizes: Sequence[int], mask: Tensor) -> tuple[Tensor, Tensor]:
    """``pred``, ``target`` ``[T, B, N]`` (the leaves flattened and concatenated, ``sizes`` summing to N),
    ``mask`` ``[T, B]`` bool/float → (the loss above, a scalar with gradient to ``pred``; each leaf's mean
    squared error over the masked steps, ``[L]``, detached, for logging: 0 where no step is masked in)."""
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"reconstruction_loss: pred {list(pred.shape)} and target {list(target.shape)} must be "
                         "the same [T, B, N]")
    if sum(sizes) != pred.shape[-1] or not sizes or min(sizes) < 1:
        raise ValueError(f"reconstruction_loss: leaf sizes {list(sizes)} must be >= 1 and sum to N = "
                         f"{pred.shape[-1]}")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"reconstruction_loss: mask {list(mask.shape)} must be [T, B] = {list(pred.shape[:2])}")
    m = mask.to(pred.dtype)
    sq = (pred - target.to(pred.dtype)).square()
    per_leaf = torch.stack([part.mean(-1) for part in torch.split(sq, list(sizes), dim=-1)])  # [L, T, B]
    loss = (per_leaf.mean(0) * m).sum() / pred.shape[1]
    n = m.sum().clamp(min=1.0)
    return loss, ((per_leaf.detach() * m).sum((1, 2)) / n)
