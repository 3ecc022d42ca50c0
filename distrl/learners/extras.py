"""Learner extras: auxiliary modules the learner trains beside the agent, added without touching learner code.

An extra is an ``nn.Module`` with its own parameters, loss, optimizer group, normalisers (buffers), checkpoint
entry and, optionally, weights that go out to the env actors with the policy, by version. Examples it is made
for: an RND predictor (learner-only, adds an intrinsic reward), an E3B inverse-dynamics embedding (trained here,
shipped to actors for their episodic bonus), an HCAM auxiliary loss, a duration weight on the policy gradient.

To add one: subclass :class:`LearnerExtra` in a new module that calls :func:`register_extra`, and add the module
to :data:`~distrl.learners.extra_names.BUILTIN_EXTRAS` (or import it yourself where the learner is built); a
config then switches it on with ``learner.extras=[name]``. The learner

* builds it with ``factory(cfg, spec, agent)``, moves it to its device, adds :meth:`LearnerExtra.param_groups`
  to its optimizer (so the optimizer's checkpoint covers them) and all-reduces its gradients between replicas;
* on every update calls :meth:`~LearnerExtra.intrinsic_reward`, :meth:`~LearnerExtra.value_stream` and
  :meth:`~LearnerExtra.policy_weight` before the V-trace loss and adds :meth:`~LearnerExtra.loss` to it;
* saves :meth:`state_dict` under ``checkpoint["extras"][name]`` and loads it back on ``--resume``;
* publishes :meth:`~LearnerExtra.actor_weights` in :class:`~distrl.types.PolicyWeights` ``.extras[name]``.

Usage::

    class RewardModel(LearnerExtra):             # predicts the reward from the value the agent computed
        def __init__(self, cfg, spec, agent):
            super().__init__()
            self.head = nn.Linear(1, 1)
        def loss(self, batch):
            pred = self.head(batch.out.value[:-1].detach().unsqueeze(-1)).squeeze(-1)   # [T, B]
            err = ((pred - batch.traj.reward) ** 2 * batch.valid).sum() / batch.valid.sum().clamp(min=1)
            return err, {"mse": float(err)}

    register_extra("reward_model", RewardModel)   # then: distrl train ... learner.extras=[reward_model]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from distrl.config import ExperimentConfig
from distrl.envs.base import EnvSpec
from distrl.learners.extra_names import (  # the registry, torch-free (the driver checks names with it)
    BUILTIN_EXTRAS,
    EXTRAS,
    ExtraFactory,
    enabled_extras,
    implied_extras,
    load_extra_modules,
    register_extra,
)

if TYPE_CHECKING:
    from distrl.learners.vtrace import ValueStream
    from distrl.models.agent import Agent, AgentOut
    from distrl.types import Trajectory


@dataclass(frozen=True)
class LearnerBatch:
    """What an extra sees of one update: the trained part of the batch (after burn-in), time-major.

    ``traj`` holds ``T`` steps (``obs`` ``T + 1``) on the learner's device; ``out`` is the agent's unroll over
    ``traj.obs`` (with gradient: an extra's loss may shape the agent, detach where it must not); ``valid`` is
    ``[T, B]`` bool (steps that carry loss), ``is_weights`` ``[B]`` and ``fresh`` ``[B]`` bool.
    """

    traj: Trajectory
    out: AgentOut
    valid: Tensor
    is_weights: Tensor
    fresh: Tensor
    version: int  # learner version before this update
    prior: Tensor | None = None  # [B] float64 replay sampling prior d_i of each row (None: no replay prior)


class LearnerExtra(nn.Module):
    """Base class of learner extras. Every hook has a neutral default, so an extra overrides only what it uses.

    Parameters and buffers registered on the module are what :meth:`state_dict` saves (``nn.Module``'s own),
    which covers running normalisers kept as buffers.
    """

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer parameter groups (``torch.optim`` dicts: ``params`` plus options such as ``lr``) added to
        the learner's optimizer. Default: all of this module's parameters at the learner's options."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    def intrinsic_reward(self, batch: LearnerBatch) -> Tensor | None:
        """``[T, B]`` reward added to the extrinsic one before clipping (no gradient), or None."""
        return None

    def value_stream(self, batch: LearnerBatch) -> ValueStream | None:
        """A reward stream trained on a value head of its own (:class:`~distrl.learners.vtrace.ValueStream`:
        rewards, discounts, the head's values from ``batch.out``, advantage coefficient), instead of adding to
        the extrinsic reward; or None. The ``bonus`` extra returns the intrinsic stream with
        ``bonus.value_heads=2``. At most one extra may claim a given stream name."""
        return None

    def policy_weight(self, batch: LearnerBatch) -> Tensor | None:
        """``[T, B]`` weight multiplied into the policy-gradient term's per-step weights, or None."""
        return None

    def loss(self, batch: LearnerBatch) -> tuple[Tensor | None, dict[str, float]]:
        """(scalar loss added to the learner's, metrics logged under ``extras/<name>/``). Default: none."""
        return None, {}

    def actor_weights(self) -> dict[str, Tensor] | None:
        """Weights the env actors need (for example an E3B embedding), published with the policy by version,
        or None for a learner-only extra (RND)."""
        return None


def build_extras(cfg: ExperimentConfig, spec: EnvSpec, agent: Agent) -> dict[str, LearnerExtra]:
    """The extras :func:`enabled_extras` names (``learner.extras``, then those the bonus section implies), in
    that order. Unknown names are a ConfigError naming the registered ones."""
    out: dict[str, LearnerExtra] = {}
    names = enabled_extras(cfg)
    load_extra_modules(names)
    for name in names:
        extra = EXTRAS[name](cfg, spec, agent)
        if not isinstance(extra, LearnerExtra):
            raise TypeError(f"learner extra {name!r}: factory returned {type(extra).__name__}, not a LearnerExtra")
        out[name] = extra
    return out


__all__ = [
    "BUILTIN_EXTRAS",
    "EXTRAS",
    "ExtraFactory",
    "LearnerBatch",
    "LearnerExtra",
    "build_extras",
    "enabled_extras",
    "implied_extras",
    "load_extra_modules",
    "register_extra",
]
