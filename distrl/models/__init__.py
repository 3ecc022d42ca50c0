"""Agent models: encoder → core → heads (see :mod:`distrl.models.agent`)."""

from distrl.models.agent import Agent, AgentOut, build_agent, sample_categorical
from distrl.models.cores import CORES, Core, IdentityCore, LSTMCore, build_core
from distrl.models.encoders import (
    ENCODERS,
    ImpalaCNN,
    MLPEncoder,
    NatureCNN,
    NetHackEncoder,
    NetHackSmallEncoder,
    RGBDEncoder,
    SmallCNN,
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
    "NetHackSmallEncoder",
    "PolicyValueHeads",
    "RGBDEncoder",
    "SmallCNN",
    "build_agent",
    "build_core",
    "build_encoder",
    "sample_categorical",
]
