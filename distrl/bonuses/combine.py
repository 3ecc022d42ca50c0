"""Combining episodic and global bonuses, and the running-std normaliser of the intrinsic reward (ALGORITHMS.md
§1.4-1.5).

``combine_bonus(b_ep, b_glob, mode, beta)`` is the one place both bonuses meet (E3B's ``e3b.py`` /
``e3b_noveld.py`` pair as one function): ``mult`` (the study's winner, default) is ``b_ep * b_glob``, ``add``
is ``b_ep + beta * b_glob``; with only one bonus configured, it is that bonus alone. The result is divided by a
running standard deviation of itself (:class:`RunningMoments`: Chan/Welford-merged moments over every batch
since the start, population std, no mean subtraction, as the E3B code's ``reward_norm='int'``), times the
coefficient; the learner then adds the extrinsic reward and clips.

Usage::

    moments = RunningMoments()
    r = combine_bonus(b_ep, b_glob, "mult")            # [T, B]
    moments.update(r[valid])                            # all-reduced across learners when distributed
    r_int = coef * r / moments.std()
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn


def combine_bonus(
    episodic: Tensor | None,
    glob: Tensor | None,
    mode: Literal["mult", "add"] = "mult",
    global_coef: float = 1.0,
) -> Tensor:
    """The combined raw bonus ``[T, B]``: ``mult`` = ``episodic * glob``, ``add`` = ``episodic + global_coef *
    glob``; one of them alone when the other is None (``global_coef`` still scales a lone global bonus under
    ``add``). Both None is a ValueError."""
    if episodic is None and glob is None:
        raise ValueError("combine_bonus: neither an episodic nor a global bonus was given")
    if mode not in ("mult", "add"):
        raise ValueError(f"combine_bonus: mode must be 'mult' or 'add', got {mode!r}")
    if glob is None:
        assert episodic is not None
        return episodic
    if episodic is None:
        return glob * global_coef if mode == "add" else glob
    if episodic.shape != glob.shape:
        raise ValueError(f"combine_bonus: episodic {tuple(episodic.shape)} and global {tuple(glob.shape)} differ")
    return episodic * glob if mode == "mult" else episodic + global_coef * glob


def merge_moments(
    n_a: Tensor, mean_a: Tensor, m2_a: Tensor, n_b: Tensor, mean_b: Tensor, m2_b: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Chan et al.'s parallel merge of (count, mean, sum of squared deviations)."""
    n = n_a + n_b
    if float(n) == 0.0:
        return n, mean_a, m2_a
    delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n
    m2 = m2_a + m2_b + delta * delta * n_a * n_b / n
    return n, mean, m2


class RunningMoments(nn.Module):
    """Count, mean and M2 of every value seen since the start (float64 buffers: they go into checkpoints).

    :meth:`update` merges a batch's moments in; when ``torch.distributed`` is initialised with more than one
    process, the batch moments of all learners are gathered first and merged in rank order, so every replica
    holds the same statistics (of the union of their batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("m2", torch.zeros((), dtype=torch.float64))

    def update(self, values: Tensor) -> None:
        x = values.detach().reshape(-1).to(torch.float64)
        n = torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)
        mean = x.mean() if x.numel() else torch.zeros((), dtype=torch.float64, device=x.device)
        m2 = ((x - mean) ** 2).sum()
        batch = torch.stack([n, mean, m2])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [torch.zeros_like(batch) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, batch)
        else:
            parts = [batch]
        c, mu, s = self.count, self.mean, self.m2
        for p in parts:
            p = p.to(c.device)
            c, mu, s = merge_moments(c, mu, s, p[0], p[1], p[2])
        self.count.copy_(c)
        self.mean.copy_(mu)
        self.m2.copy_(s)

    def var(self) -> Tensor:
        """Population variance (ddof 0) of everything seen; 0 before any value."""
        return self.m2 / self.count.clamp(min=1.0)

    def std(self) -> Tensor:
        return self.var().sqrt()
