"""Env actors: batched env stepping, batched no-grad inference, sequence cutting (no Ray here)."""

from distrl.actors.env_actor import EnvActor, EpisodicBonusHook, Policy, RandomPolicy, actor_seed
from distrl.actors.sequence import SequenceWriter

__all__ = ["EnvActor", "EpisodicBonusHook", "Policy", "RandomPolicy", "SequenceWriter", "actor_seed"]
