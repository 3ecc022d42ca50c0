"""Building the env actor's episodic bonus from ``cfg.bonus`` (the registry of episodic bonuses).

:data:`EPISODIC_BONUSES` maps ``bonus.episodic`` to a factory ``(cfg, spec, num_envs, device) -> hook``; the
hooks (:mod:`distrl.bonuses.episodic`) implement :class:`~distrl.actors.env_actor.EpisodicBonusHook`. Adding
an episodic bonus is a module with its hook class and a line here. The bonus math lives in
:mod:`distrl.bonuses`, which may not import model code; the E3B embedding's architecture (the policy's
encoder) is built here and handed to the hook.

Usage::

    hook = build_episodic_bonus(cfg, spec, num_envs=cfg.env.num_envs)    # None for bonus.episodic=none
    b = hook.step(obs)                                                    # [B]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distrl.bonuses.keys import required_obs_key
from distrl.config import ConfigError, ExperimentConfig
from distrl.envs.base import EnvSpec

if TYPE_CHECKING:  # the bonuses and models load torch: imported by the factories, so an actor without an
    # episodic bonus does not load it
    import torch

    from distrl.bonuses.episodic import E3BEpisodicBonus, EpisodicCountBonus


def check_state_key(kind: str, spec: EnvSpec, what: str) -> None:
    """ConfigError when env ``spec`` lacks the observation key that state-key ``kind`` reads."""
    need = required_obs_key(kind)
    if need is not None and need not in spec.obs:
        raise ConfigError(
            f"{what} counts state key bonus.count_key={kind!r}, which reads observation {need!r}; env "
            f"{spec.name!r} has {sorted(spec.obs)} (add it to env.observation_keys or choose another count_key)"
        )


def _e3b(cfg: ExperimentConfig, spec: EnvSpec, num_envs: int, device: torch.device) -> E3BEpisodicBonus:
    """E3B with the embedding in NumPy where a kernel exists (an actor on the CPU with ``actor.inference``
    not ``torch``), else in PyTorch."""
    from distrl.bonuses.e3b import e3b_dim, e3b_model_config
    from distrl.bonuses.episodic import E3BEpisodicBonus
    from distrl.models.encoders import build_encoder
    from distrl.models.numpy_act import NumpyEncoder

    embed = build_encoder(e3b_model_config(cfg), spec)
    fast = None
    if device.type == "cpu" and cfg.actor.inference != "torch" and NumpyEncoder.unsupported(embed) is None:
        fast = NumpyEncoder(embed)
    b = cfg.bonus
    unique = b.count_key if (required_obs_key(b.count_key) or "") in spec.obs else None
    return E3BEpisodicBonus(
        embed, num_envs, e3b_dim(cfg), b.ridge, resym_every=b.e3b_resym_every, unique_key=unique, device=device,
        numpy_embed=fast,
    )


def _count(cfg: ExperimentConfig, spec: EnvSpec, num_envs: int, device: torch.device) -> EpisodicCountBonus:
    from distrl.bonuses.episodic import EpisodicCountBonus

    check_state_key(cfg.bonus.count_key, spec, "bonus.episodic=count")
    return EpisodicCountBonus(num_envs, cfg.bonus.count_key, cfg.bonus.count_form)


EPISODIC_BONUSES: dict[str, Callable[[ExperimentConfig, EnvSpec, int, torch.device], Any]] = {
    "e3b": _e3b,
    "count": _count,
}
"""Episodic bonuses by ``bonus.episodic`` name."""


def build_episodic_bonus(
    cfg: ExperimentConfig, spec: EnvSpec, num_envs: int, device: Any = "cpu"
) -> Any | None:
    """The actor's episodic bonus hook for ``cfg.bonus.episodic`` (None for ``none``)."""
    name = cfg.bonus.episodic
    if name == "none":
        return None
    if name not in EPISODIC_BONUSES:
        raise ConfigError(f"bonus.episodic={name!r} is not one of {['none', *sorted(EPISODIC_BONUSES)]}")
    import torch

    return EPISODIC_BONUSES[name](cfg, spec, num_envs, torch.device(device))
