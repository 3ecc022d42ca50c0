"""Learner extras: auxiliary modules the learner trains beside the agent, added without touching learner code.

An extra is an ``nn.Module`` with its own parameters, loss, optimizer group, normalisers (buffers), checkpoint
entry and, optionally, weights that go out to the env actors with the policy, by version. Examples it is made
for: an RND predictor (learner-only, adds an intrinsic reward), an E3B inverse-dynamics embedding (trained here,
shipped to actors for their episodic bonus), an HCAM auxiliary loss, a duration weight on the policy gradient.

To add one: subclass :class:`LearnerExtra` in a new module and add a line to :data:`EXTRAS` (or call
:func:`register_extra`); a config then switches it on with ``learner.extras=[name]``. The learner

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

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from distrl.config import ConfigError, ExperimentConfig
from distrl.envs.base import EnvSpec

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


ExtraFactory = Callable[[ExperimentConfig, EnvSpec, "Agent"], LearnerExtra]


EXTRAS: dict[str, ExtraFactory] = {}
"""Registry of learner extras by config name (``learner.extras``)."""


def register_extra(name: str, factory: ExtraFactory) -> None:
    """Add ``factory`` under ``name`` (a ValueError if the name is taken by another factory)."""
    if name in EXTRAS and EXTRAS[name] is not factory:
        raise ValueError(f"learner extra {name!r} is already registered ({EXTRAS[name]!r})")
    EXTRAS[name] = factory


def build_extras(cfg: ExperimentConfig, spec: EnvSpec, agent: Agent) -> dict[str, LearnerExtra]:
    """The extras :func:`enabled_extras` names (``learner.extras``, then those the bonus section implies), in
    that order. Unknown names are a ConfigError naming the registered ones."""
    out: dict[str, LearnerExtra] = {}
    for name in enabled_extras(cfg):
        extra = EXTRAS[name](cfg, spec, agent)
        if not isinstance(extra, LearnerExtra):
            raise TypeError(f"learner extra {name!r}: factory returned {type(extra).__name__}, not a LearnerExtra")
        out[name] = extra
    return out


BUILTIN_EXTRAS: tuple[str, ...] = ("distrl.learners.e3b_extra", "distrl.learners.bonus", "distrl.learners.duration")
"""Modules that register distrl's own extras when imported (loaded on first use, so this module stays light)."""


def _load_builtin_extras() -> None:
    for module in BUILTIN_EXTRAS:
        importlib.import_module(module)


def implied_extras(cfg: ExperimentConfig) -> tuple[str, ...]:
    """Extras another config section switches on by itself: the exploration bonus (``bonus.episodic`` or
    ``bonus.glob`` not none) needs ``bonus`` (the combination, RND/NovelD/global counts, the normaliser), and
    ``bonus.episodic=e3b`` needs ``e3b`` (the embedding the actors' E3B bonus uses), before it; ``duration.mode``
    other than off, or ``duration.instrument``, needs ``duration`` (distrl.learners.duration)."""
    out: list[str] = []
    if cfg.bonus.episodic == "e3b":
        out.append("e3b")
    if cfg.bonus.episodic != "none" or cfg.bonus.glob != "none":
        out.append("bonus")
    if cfg.duration.mode != "off" or cfg.duration.instrument:  # duration weighting and its instrumentation
        out.append("duration")
    return tuple(out)


def enabled_extras(cfg: ExperimentConfig) -> tuple[str, ...]:
    """Names of the extras a config switches on: ``learner.extras`` followed by :func:`implied_extras` not
    already listed. A ConfigError names a duplicate or an unregistered name (with the registered ones);
    ``distrl train`` calls this before it starts anything."""
    _load_builtin_extras()
    listed = tuple(cfg.learner.extras)
    if len(set(listed)) != len(listed):
        raise ConfigError(f"learner.extras lists an extra twice: {list(listed)}")
    names = listed + tuple(n for n in implied_extras(cfg) if n not in listed)
    for name in names:
        if name not in EXTRAS:
            raise ConfigError(
                f"learner.extras: unknown extra {name!r} (of {list(names)}); registered: "
                f"{sorted(EXTRAS) or 'none'} (distrl.learners.extras.register_extra adds one)"
            )
    return names

