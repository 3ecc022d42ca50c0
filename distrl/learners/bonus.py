"""The ``bonus`` learner extra: the exploration bonus of a run, recomputed on every replayed batch
(ALGORITHMS.md §1.4-1.5, §5.5, §6.2).

Switched on by the bonus section alone (``bonus.episodic`` or ``bonus.glob`` not none; see
:func:`distrl.learners.extras.implied_extras`). Replay holds raw bonuses only: the actors' episodic bonus
``traj.episodic_bonus[t]`` of ``s_t`` (E3B or episodic counts, :mod:`distrl.bonuses`). At learn time this extra

1. computes the global bonus with the current global model on the replayed observations: RND or NovelD
   (:class:`~distrl.bonuses.global_bonus.RND`, frozen random encoder of the policy's architecture or, with
   ``bonus.rnd_net=small``, a narrow one; predictor trained here on its own optimizer group at
   ``bonus.rnd_lr``), or global counts ``N(psi(s_{t+1}))^-0.5``
   looked up in the run's count table (attached by the runtime, :meth:`BonusExtra.attach_counts`);
2. combines them (:func:`~distrl.bonuses.combine.combine_bonus`: ``mult`` = ``b_ep(s_t) * b_glob(s_{t+1})``, the
   E3B code's alignment, or ``add``);
3. divides by the running std of the combined bonus (``bonus.normalize=int``: moments of every valid step since
   the start, merged across learners), times ``bonus.coef``;
4. with ``bonus.value_heads=1`` (default) hands it to the learner, which adds it to the extrinsic reward and
   clips the sum (:func:`distrl.learners.vtrace.learning_rewards`): one value head learns the summed return.
   With ``bonus.value_heads=2`` it returns it as the intrinsic :class:`~distrl.learners.vtrace.ValueStream`
   instead (:func:`~distrl.learners.vtrace.intrinsic_stream`: clipped on its own at ``learner.reward_clip``,
   discounted by ``bonus.intrinsic_gamma``, cut at episode ends unless ``bonus.intrinsic_episodic=false``,
   trained on the agent's intrinsic head, advantage weighted by ``bonus.intrinsic_adv_coef``).

So a sequence replayed later gets the global bonus of the predictor and counts as they are then. Its
``state_dict`` holds the RND networks (the frozen ones too) and the normaliser; the count table is the
runtime's (checkpointed beside the learner). Metrics under ``extras/bonus/``: means and percentiles of the
episodic, global, combined and final intrinsic reward, the RND loss, the running std and the intrinsic share of
the pre-clip reward; the learner logs the heads' losses (``learner/value_loss_ext``, ``learner/value_loss_int``)
when there are two.

Usage::

    cfg = load_config("configs/minihack_multiroom_e3b_rnd.yaml")    # bonus: {episodic: e3b, glob: rnd}
    learner = Learner(cfg, spec)                        # builds extras "e3b" and "bonus"
    learner.extras["bonus"].attach_counts(table)        # only for bonus.glob=count (the runtimes do it)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from distrl.bonuses.combine import RunningMoments, combine_bonus
from distrl.bonuses.counts import CountSource, count_bonus
from distrl.bonuses.global_bonus import DEFAULT_HIDDEN, RND
from distrl.bonuses.keys import state_keys
from distrl.config import ConfigError, ExperimentConfig, ModelConfig
from distrl.envs.base import EnvSpec
from distrl.learners.extras import LearnerBatch, LearnerExtra, register_extra
from distrl.learners.vtrace import ValueStream, intrinsic_stream
from distrl.models.encoders import EnvSpecLike, build_encoder, encoder_name

_QUANTILES = (0.5, 0.9, 0.99)
SMALL_FEATURES = 128
"""``rnd_net="small"``: width F of the frozen random encoder's output."""
SMALL_GLYPH_EMBEDDING = 8
"""``rnd_net="small"``: the frozen random glyph embedding's width (at most; the policy's when narrower)."""
_SMALL_SIBLING = {"nethack": "nethack_small", "nature_cnn": "small_cnn", "impala_cnn": "small_cnn"}


def rnd_model_config(cfg: ExperimentConfig, spec: EnvSpecLike) -> ModelConfig:
    """The model config whose encoder is RND's frozen random encoder (``bonus.rnd_net``, see
    :mod:`distrl.bonuses.global_bonus`): the policy's (``"e3b"``), or its cheap narrow sibling (``"small"``)."""
    if cfg.bonus.rnd_net == "e3b":
        return cfg.model
    name = encoder_name(cfg.model, spec)
    if name == "nethack" and "glyphs_crop" not in spec.obs:
        small = name
    else:
        small = _SMALL_SIBLING.get(name, name)
    return dataclasses.replace(
        cfg.model,
        encoder=small,  # type: ignore[arg-type]
        hidden_size=SMALL_FEATURES,
        glyph_embedding_dim=min(cfg.model.glyph_embedding_dim, SMALL_GLYPH_EMBEDDING),
    )


def build_rnd(cfg: ExperimentConfig, spec: EnvSpecLike) -> RND:
    """RND as ``cfg.bonus`` asks (``rnd_net``, ``rnd_hidden``, ``rnd_power``, ``rnd_on``), with a freshly built,
    random encoder of :func:`rnd_model_config`."""
    b = cfg.bonus
    return RND(
        build_encoder(rnd_model_config(cfg, spec), spec),
        hidden=b.rnd_hidden or DEFAULT_HIDDEN[b.rnd_net],
        net=b.rnd_net,
        power=b.rnd_power,
        on=b.rnd_on,
    )


class BonusExtra(LearnerExtra):
    """See the module doc. ``cfg.bonus`` decides what it computes; ``agent`` is unused (RND has its own
    random encoder)."""

    def __init__(self, cfg: ExperimentConfig, spec: EnvSpec, agent: Any = None) -> None:
        super().__init__()
        b = cfg.bonus
        if b.episodic == "none" and b.glob == "none":
            raise ConfigError("learner extra 'bonus': bonus.episodic and bonus.glob are both none; nothing to do")
        self.bcfg = b
        self.reward_clip = cfg.learner.reward_clip
        self.rnd: RND | None = None
        if b.glob in ("rnd", "noveld"):
            self.rnd = build_rnd(cfg, spec)
        if b.glob == "count" or b.episodic == "count":
            need = {"position": "blstats", "message": "message", "glyphs": "glyphs"}.get(b.count_key)
            if need is not None and need not in spec.obs:
                raise ConfigError(
                    f"bonus.count_key={b.count_key!r} needs observation key {need!r}; env {spec.name!r} has "
                    f"{sorted(spec.obs)} (choose another bonus.count_key or add it to env.observation_keys)"
                )
        self.moments = RunningMoments()
        self._counts: CountSource | None = None
        self._metrics: dict[str, float] = {}
        self._rnd_err: Tensor | None = None

    # ---- wiring ------------------------------------------------------------------------------------------
    def attach_counts(self, source: CountSource) -> None:
        """The run's global count table (``lookup(keys) -> counts``), for ``bonus.glob=count``."""
        self._counts = source

    def param_groups(self) -> list[dict[str, Any]]:
        if self.rnd is None:
            return []
        return [{"params": list(self.rnd.predictor.parameters()), "lr": self.bcfg.rnd_lr}]

    # ---- the bonus ---------------------------------------------------------------------------------------
    def global_bonus(self, obs: dict[str, Tensor]) -> Tensor | None:
        """``[T, B]`` global bonus of the transitions in ``obs`` ``[T + 1, B, ...]`` (None without one)."""
        b = self.bcfg
        if b.glob == "none":
            return None
        if b.glob == "count":
            if self._counts is None:
                raise RuntimeError(
                    "learner extra 'bonus': bonus.glob=count but no count table is attached "
                    "(the runtime calls attach_counts; in a test, attach a distrl.bonuses.counts.CountTable)"
                )
            states = {k: (v[1:] if b.rnd_on == "next" else v[:-1]) for k, v in obs.items()}
            keys = state_keys(states, b.count_key, lead_ndim=2)  # [T, B] int64
            counts = self._counts.lookup(np.ascontiguousarray(keys))
            dev = next(iter(obs.values())).device
            return count_bonus(counts, b.count_power).to(dev)
        assert self.rnd is not None
        self._rnd_err = self.rnd.errors(obs)  # [T + 1, B], with gradient: loss() reuses this pass
        return self.rnd.bonus_from(self._rnd_err, noveld_scale=b.noveld_scale if b.glob == "noveld" else 0.0)

    def intrinsic_reward(self, batch: LearnerBatch) -> Tensor | None:
        """The intrinsic reward added to the extrinsic one (one value head), or None with two heads."""
        return self.bonus(batch) if self.bcfg.value_heads == 1 else None

    def value_stream(self, batch: LearnerBatch) -> ValueStream | None:
        """With ``bonus.value_heads=2``: the intrinsic reward as the intrinsic head's stream."""
        b = self.bcfg
        if b.value_heads == 1:
            return None
        if batch.out.value_int is None:
            raise RuntimeError("learner extra 'bonus': bonus.value_heads=2 but the agent has no intrinsic value head "
                               "(model.separate_intrinsic_value=true builds it)")
        traj = batch.traj
        return intrinsic_stream(self.bonus(batch), batch.out.value_int, traj.terminated, traj.truncated, batch.valid,
                                b.intrinsic_gamma, episodic=b.intrinsic_episodic, clip=self.reward_clip,
                                adv_coef=b.intrinsic_adv_coef)

    def bonus(self, batch: LearnerBatch) -> Tensor:
        """``[T, B]`` intrinsic reward of the batch (combined, normalised, times ``bonus.coef``; 0 on invalid
        steps), no gradient; records this batch's bonus metrics and updates the running moments."""
        b = self.bcfg
        traj, valid = batch.traj, batch.valid
        episodic = traj.episodic_bonus.to(torch.float32) if b.episodic != "none" else None
        glob = self.global_bonus(traj.obs)
        raw = combine_bonus(episodic, glob, b.combine, b.global_coef)  # [T, B]
        raw = torch.where(valid, raw, torch.zeros_like(raw))
        if b.normalize == "int":
            self.moments.update(raw[valid])
            std = float(self.moments.std())
            r_int = raw / std if std > 0 else raw
        else:
            r_int = raw
        r_int = b.coef * r_int
        self._metrics = self._bonus_metrics(episodic, glob, raw, r_int, traj.reward, valid)
        return r_int

    def loss(self, batch: LearnerBatch) -> tuple[Tensor | None, dict[str, float]]:
        metrics, self._metrics = self._metrics, {}
        if self.rnd is None:
            return None, metrics
        err, self._rnd_err = self._rnd_err, None
        if err is None:  # intrinsic_reward was not called on this batch
            err = self.rnd.errors(batch.traj.obs)
        loss = self.rnd.loss_from(err, batch.valid)
        metrics["rnd_loss"] = float(loss.detach())
        return loss, metrics

    # ---- metrics -----------------------------------------------------------------------------------------
    def _bonus_metrics(
        self, episodic: Tensor | None, glob: Tensor | None, raw: Tensor, r_int: Tensor, r_ext: Tensor, valid: Tensor
    ) -> dict[str, float]:
        m: dict[str, float] = {}
        if not bool(valid.any()):
            return m
        for name, x in (("episodic", episodic), ("global", glob), ("combined", raw), ("intrinsic", r_int)):
            if x is None:
                continue
            v = x.detach()[valid].to(torch.float32)
            m[f"{name}_mean"] = float(v.mean())
            qs = torch.quantile(v, torch.tensor(_QUANTILES, dtype=v.dtype, device=v.device))
            for q, val in zip(_QUANTILES, qs.tolist()):
                m[f"{name}_p{round(q * 100)}"] = float(val)
        ext = r_ext.detach()[valid].abs().sum()
        intr = r_int.detach()[valid].abs().sum()
        m["intrinsic_share"] = float(intr / (ext + intr).clamp(min=1e-12))
        m["running_std"] = float(self.moments.std())
        return m


register_extra("bonus", BonusExtra)


def attach_counts(extras: Mapping[str, LearnerExtra], source: CountSource) -> None:
    """Give the ``bonus`` extra among ``extras`` (a learner's) the run's count table; a RuntimeError when there is
    none (``bonus.glob=count`` always builds it)."""
    extra = extras.get("bonus")
    if not isinstance(extra, BonusExtra):
        raise RuntimeError(f"attach_counts: no 'bonus' learner extra among {sorted(extras)}")
    extra.attach_counts(source)
