"""Duration-aware updates (ALGORITHMS.md §3, §6.5): a learner extra that corrects for steps that take different
wall-clock time reaching the learner at different rates, and the instrumentation that shows whether a run needs it.

In an asynchronous actor-learner, a fast action's samples reach the learner sooner and more often than a slow
one's; early updates, staleness filters and windowed collection then push the policy toward fast, poor actions
(§3.4). ``duration.mode`` picks the correction; each applies exactly once to a sample:

* ``paper`` (Yang et al. 2025, §3.3): policy-gradient weight ``clip(dt / mean(dt[valid]), w_min, w_max)``; the
  batch mean is all-reduced across learners when ``torch.distributed`` is initialised.
* ``episode``: the same with each step's *episode* duration (``episode_time`` at the episode's last step in the
  sequence; an episode still running at the sequence end counts the time it has had so far).
* ``prior`` (§3.5 item 3): the env actor stores ``d_i = (dt_i / running-mean dt) ** kappa`` with the sequence in
  replay (:class:`~distrl.replay.priorities.DurationPrior`), the shard samples in proportion to
  ``p_i ** alpha * d_i`` and the sampler divides ``d_i`` out of the IS weights. Prioritised rows therefore carry no
  loss weight here; fresh (online) rows were not drawn with the prior, so they carry ``d_i`` as a loss weight.
* ``inclusion`` (Horvitz-Thompson, §3.5 item 4): weight ``1 / P_incl(dt)``, the estimated probability that a
  launched step reaches the learner, from launched vs consumed counts binned by ``dt``
  (:class:`InclusionEstimator`; launched counts come from the actors through
  :meth:`DurationExtra.observe_launched`: the local runtime feeds every emitted sequence, the Ray runtime does not
  yet), or ``max(0, 1 - dt / W)`` for windowed collection (``duration.window_s = W``) while none have arrived;
  normalised to batch mean 1 and clipped.

Metrics (``extras/duration/...``, also with mode ``off`` while ``duration.instrument``): dt quantiles of consumed
steps and of launched ones (when counts arrive), mean policy lag per dt bin, each action's share of the trained
steps next to the behaviour policy's probability of it at launch, and the mean weight.

Usage::

    cfg = load_config(None, ["duration.mode=paper"])      # the learner builds this extra by itself
    learner = Learner(cfg, spec)
    out = learner.step(sample)                            # out.metrics["extras/duration/weight_mean"]
    w = paper_weights(dt, valid, 0.1, 10.0)               # [T, B], the pure piece
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from distrl.config import DurationConfig, ExperimentConfig
from distrl.envs.base import EnvSpec
from distrl.learners.extras import LearnerBatch, LearnerExtra, register_extra

if TYPE_CHECKING:
    from distrl.models.agent import Agent
    from distrl.types import Trajectory

log = logging.getLogger(__name__)

NAME = "duration"


# ---- pure pieces ------------------------------------------------------------------------------------------------
def masked_mean(x: Tensor, valid: Tensor, allreduce: bool = False) -> Tensor:
    """Mean of ``x`` over ``valid`` steps (0-d float64); summed across learners first when ``allreduce`` and
    ``torch.distributed`` is initialised, so every replica divides by the same global mean."""
    v = valid.to(torch.float64)
    stats = torch.stack([(x.to(torch.float64) * v).sum(), v.sum()])
    if allreduce and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    return stats[0] / stats[1].clamp(min=1.0)


def normalise_clip(w: Tensor, valid: Tensor, w_min: float, w_max: float, allreduce: bool = False) -> Tensor:
    """``clip(w / mean(w[valid]), w_min, w_max)`` as float32 ``[T, B]``; 1 on invalid steps (they carry no loss
    anyway) and everywhere when the valid mean is not positive."""
    mean = masked_mean(w, valid, allreduce)
    if not bool(mean > 0):
        return torch.ones_like(w, dtype=torch.float32)
    out = (w.to(torch.float64) / mean).clamp(w_min, w_max).to(torch.float32)
    return torch.where(valid.to(torch.bool), out, torch.ones_like(out))


def paper_weights(dt: Tensor, valid: Tensor, w_min: float = 0.1, w_max: float = 10.0,
                  allreduce: bool = False) -> Tensor:
    """Duration weight of Yang et al. 2025 (ALGORITHMS.md §3.3, §3.5 item 1): ``clip(dt / mean(dt[valid]))``.
    dt: ``[T, B]`` seconds; valid: ``[T, B]`` bool. Returns ``[T, B]`` float32."""
    if dt.shape != valid.shape or dt.dim() != 2:
        raise ValueError(f"paper_weights: dt {list(dt.shape)} and valid {list(valid.shape)} must both be [T, B]")
    if bool((dt[valid.to(torch.bool)] < 0).any()):
        raise ValueError("paper_weights: durations must be >= 0")
    return normalise_clip(dt, valid, w_min, w_max, allreduce)


def episode_durations(episode_time: Tensor, done: Tensor) -> Tensor:
    """``[T, B]``: each step's episode duration, broadcast over the episode's steps in the sequence.

    episode_time: ``[T, B]`` seconds the episode has taken up to and including step t (the actor's
    ``Trajectory.episode_time``); done: ``[T, B]`` bool, step t ended its episode. A step's value is
    ``episode_time`` at the first step ``s >= t`` that ends the episode, or at the sequence's last step when the
    episode runs past it (the time it has had so far)."""
    if episode_time.shape != done.shape or done.dim() != 2:
        raise ValueError("episode_durations: episode_time and done must both be [T, B]")
    out = torch.empty_like(episode_time)
    cur = episode_time[-1].clone()
    for t in range(episode_time.shape[0] - 1, -1, -1):
        cur = torch.where(done[t].to(torch.bool), episode_time[t], cur)
        out[t] = cur
    return out


def prior_loss_weights(prior: Tensor, fresh: Tensor, t_len: int) -> Tensor:
    """Mode ``prior``: ``[T, B]`` loss weight ``d_i`` on fresh rows (not drawn with the prior), 1 on rows drawn by
    priority (their sampling probability already holds ``d_i``, and the IS weight divides it out): each sample's
    duration factor counts once."""
    w = torch.where(fresh.to(torch.bool), prior.to(torch.float32), torch.ones_like(prior, dtype=torch.float32))
    return w[None, :].expand(t_len, -1)


def window_inclusion(dt: Tensor, window_s: float, floor: float = 1e-3) -> Tensor:
    """``P_incl = max(floor, 1 - dt / W)``: a step launched uniformly in a collection window of ``W`` seconds
    completes inside it with this probability (ALGORITHMS.md §3.5 item 4)."""
    return (1.0 - dt.to(torch.float64) / window_s).clamp(min=floor)


def dt_bins(dt_min: float, dt_max: float, bins: int) -> np.ndarray:
    """``bins + 1`` log-spaced edges; values below the first or above the last fall in the end bins."""
    return np.geomspace(dt_min, dt_max, bins + 1)


def bin_index(dt: Tensor | np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each duration (int64, same shape), clamped to ``[0, len(edges) - 2]``."""
    x = dt.detach().cpu().numpy() if isinstance(dt, Tensor) else np.asarray(dt)
    return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2).astype(np.int64)


def quantiles_from_counts(counts: np.ndarray, edges: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Quantiles of a binned distribution (geometric bin centres); NaN when empty."""
    total = counts.sum()
    if total <= 0:
        return [float("nan")] * len(qs)
    centres = np.sqrt(edges[:-1] * edges[1:])
    cdf = np.cumsum(counts) / total
    return [float(centres[min(int(np.searchsorted(cdf, q)), len(centres) - 1)]) for q in qs]


class InclusionEstimator(torch.nn.Module):
    """Online estimate of ``P(a launched step reaches the learner | dt)`` from counts binned by dt.

    ``launched[k]`` counts steps actors launched in bin k, ``consumed[k]`` the ones the learner trained on (fresh
    rows, each step once). ``p()`` is ``(consumed + 1) / (launched + 1)`` per bin scaled to a maximum of 1; only
    ratios between bins matter, because the weights are normalised to batch mean 1. The counts are buffers, so
    they are checkpointed with the learner.

    Usage::

        est = InclusionEstimator(dt_bins(1e-4, 100, 16))
        est.add(launched_dt, consumed=False); est.add(batch_dt, consumed=True)
        w = 1 / est.p_of(dt)                                   # [T, B]
    """

    def __init__(self, edges: np.ndarray) -> None:
        super().__init__()
        self.edges = np.asarray(edges, dtype=np.float64)
        n = len(self.edges) - 1
        self.register_buffer("launched", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("consumed", torch.zeros(n, dtype=torch.float64))

    def add(self, dt: Tensor | np.ndarray, *, consumed: bool) -> None:
        counts = np.bincount(bin_index(dt, self.edges).reshape(-1), minlength=len(self.edges) - 1)
        self.add_counts(counts, consumed=consumed)

    def add_counts(self, counts: np.ndarray | Tensor, *, consumed: bool) -> None:
        c = torch.as_tensor(np.asarray(counts, dtype=np.float64))
        if c.shape != self.launched.shape or bool((c < 0).any()):
            raise ValueError(f"InclusionEstimator: counts must be [{self.launched.shape[0]}] and >= 0")
        (self.consumed if consumed else self.launched).add_(c.to(self.launched.device))

    @property
    def has_launches(self) -> bool:
        return bool(self.launched.sum() > 0)

    def p(self) -> Tensor:
        """``[bins]`` float64 in (0, 1]."""
        r = (self.consumed + 1.0) / (self.launched + 1.0)
        return r / r.max()

    def p_of(self, dt: Tensor) -> Tensor:
        idx = torch.from_numpy(bin_index(dt, self.edges)).to(self.launched.device)
        return self.p()[idx].to(dt.device)


def inclusion_weights(p_incl: Tensor, valid: Tensor, w_min: float, w_max: float, allreduce: bool = False) -> Tensor:
    """Horvitz-Thompson weight ``1 / P_incl`` per step, normalised to mean 1 over valid steps and clipped."""
    if bool((p_incl[valid.to(torch.bool)] <= 0).any()):
        raise ValueError("inclusion_weights: inclusion probabilities must be > 0")
    return normalise_clip(1.0 / p_incl.to(torch.float64), valid, w_min, w_max, allreduce)


# ---- the extra --------------------------------------------------------------------------------------------------
class DurationExtra(LearnerExtra):
    """The ``duration`` learner extra: the policy-gradient weight of ``duration.mode`` and the instrumentation
    (see the module docstring). No parameters; the inclusion counts are buffers."""

    def __init__(self, cfg: ExperimentConfig, spec: EnvSpec, agent: Agent | None = None) -> None:
        super().__init__()
        self.dcfg: DurationConfig = cfg.duration
        self.num_actions = spec.num_actions
        self.edges = dt_bins(self.dcfg.dt_min, self.dcfg.dt_max, self.dcfg.bins)
        self.inclusion = InclusionEstimator(self.edges)
        self._allreduce = cfg.learner.num_learners > 1
        self._last_weight: Tensor | None = None
        self._warned = False

    def observe_launched(self, dt: Tensor | np.ndarray | None = None, counts: np.ndarray | None = None) -> None:
        """Count steps the actors launched (durations ``dt``, or per-bin ``counts`` over :attr:`edges`), for
        mode ``inclusion`` and the launch-side quantiles."""
        if dt is not None:
            self.inclusion.add(dt, consumed=False)
        if counts is not None:
            self.inclusion.add_counts(counts, consumed=False)

    def observe_launched_sequence(self, traj: Trajectory, period: int) -> None:
        """Count the steps an emitted sequence adds (its last ``period`` steps; earlier ones were in the previous,
        overlapping sequence) as launched: for a runtime that sees every sequence its actors emit (the local one)."""
        new = traj.duration[-period:]
        self.observe_launched(dt=new[traj.valid[-period:].to(torch.bool)])

    def policy_weight(self, batch: LearnerBatch) -> Tensor | None:
        c, traj, valid = self.dcfg, batch.traj, batch.valid
        fresh_steps = valid & batch.fresh[None, :]
        if bool(fresh_steps.any()):  # consumed = fresh steps, each trained on once as fresh
            self.inclusion.add(traj.duration[fresh_steps], consumed=True)
        w: Tensor | None = None
        if c.mode == "paper":
            w = paper_weights(traj.duration, valid, c.w_min, c.w_max, self._allreduce)
        elif c.mode == "episode":
            ep = episode_durations(traj.episode_time.to(torch.float64), traj.done())
            w = normalise_clip(ep, valid, c.w_min, c.w_max, self._allreduce)
        elif c.mode == "prior":
            if batch.prior is not None:
                w = prior_loss_weights(batch.prior, batch.fresh, traj.T)
        elif c.mode == "inclusion":
            if self.inclusion.has_launches:
                p = self.inclusion.p_of(traj.duration)
            elif c.window_s > 0:
                p = window_inclusion(traj.duration, c.window_s)
            else:
                p = None
                if not self._warned:
                    self._warned = True
                    log.warning("duration.mode=inclusion: no launch counts reached the learner and "
                                "duration.window_s=0, so no inclusion weight is applied yet")
            if p is not None:
                w = inclusion_weights(p, valid, c.w_min, c.w_max, self._allreduce)
        self._last_weight = None if w is None else w.detach()
        return w

    def loss(self, batch: LearnerBatch) -> tuple[Tensor | None, dict[str, float]]:
        return None, self.metrics(batch)

    @torch.no_grad()
    def metrics(self, batch: LearnerBatch) -> dict[str, float]:
        """The instrumentation of the module docstring (cheap: a few reductions over ``[T, B]``)."""
        traj, valid = batch.traj, batch.valid.to(torch.bool)
        out: dict[str, float] = {}
        if not bool(valid.any()):
            return out
        dt = traj.duration[valid].to(torch.float64)
        qs = torch.quantile(dt, torch.tensor([0.5, 0.9], dtype=torch.float64, device=dt.device))
        out["dt_consumed_mean"] = float(dt.mean())
        out["dt_consumed_p50"], out["dt_consumed_p90"] = float(qs[0]), float(qs[1])
        if self.inclusion.has_launches:
            launched = self.inclusion.launched.cpu().numpy()
            p50, p90 = quantiles_from_counts(launched, self.edges, (0.5, 0.9))
            out["dt_launched_p50"], out["dt_launched_p90"] = p50, p90
            centres = np.sqrt(self.edges[:-1] * self.edges[1:])
            out["dt_launched_mean"] = float((launched * centres).sum() / launched.sum())
        # policy lag per dt bin: lag of a step = learner version - the version that acted on its sequence
        lag = (batch.version - traj.policy_version.to(torch.float64))[None, :].expand_as(traj.duration)[valid]
        bins = torch.from_numpy(bin_index(dt, self.edges)).to(lag.device)
        n_bins = len(self.edges) - 1
        count = torch.zeros(n_bins, dtype=torch.float64, device=lag.device).index_add_(0, bins, torch.ones_like(lag))
        total = torch.zeros(n_bins, dtype=torch.float64, device=lag.device).index_add_(0, bins, lag)
        for k, (c, t) in enumerate(zip(count.tolist(), total.tolist())):
            if c > 0:
                out[f"lag_mean_dt_bin{k:02d}"] = t / c
        # each action's share in the trained steps vs the behaviour policy's probability of it at launch
        n_a = min(self.num_actions, 8)
        actions = traj.action[valid]
        share = (torch.bincount(actions, minlength=self.num_actions)[:n_a].double() / actions.numel()).tolist()
        mu = torch.softmax(traj.behaviour_logits.to(torch.float32)[valid], dim=-1).mean(0)[:n_a].tolist()
        pi = torch.softmax(batch.out.logits[:-1].detach().to(torch.float32)[valid], dim=-1).mean(0)[:n_a].tolist()
        for a in range(n_a):
            out[f"action{a}_share"], out[f"action{a}_mu_launch"], out[f"action{a}_pi"] = share[a], mu[a], pi[a]
        if self._last_weight is not None:
            w = self._last_weight[valid]
            out["weight_mean"], out["weight_max"] = float(w.mean()), float(w.max())
        return out


register_extra(NAME, DurationExtra)
