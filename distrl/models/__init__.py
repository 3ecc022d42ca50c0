"""Agent models: encoder → core → heads (see :mod:`distrl.models.agent`)."""

from distrl.models.agent import Agent, AgentOut, build_agent
from distrl.models.cores import CORES, Core, IdentityCore, LSTMCore, build_core
from distrl.models.encoders import (
    ENCODERS,
    ImpalaCNN,
    MLPEncoder,
    NatureCNN,
    NetHackEncoder,
    RGBDEncoder,
    build_encoder,
)
from distrl.models.heads import PolicyValueHeads

__all__ = [
    "CORES",
    "ENCODERS",
    "Agent",
    "AgentOut",
    "Core",
    "IdentityCore",
    "ImpalaCNN",
    "LSTMCore",
    "MLPEncoder",
    "NatureCNN",
    "NetHackEncoder",
    "PolicyValueHeads",
    "RGBDEncoder",
    "build_agent",
    "build_core",
    "build_encoder",
]
