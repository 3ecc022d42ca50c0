"""Agent models: encoder → core → heads (see :mod:`distrl.models.agent`).

Names are exported lazily (``__getattr__``): importing a torch-free submodule
(:mod:`distrl.models.numpy_kernels`, which a torch-free env actor acts through) does not load torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Agent": "agent", "AgentOut": "agent", "build_agent": "agent", "sample_categorical": "agent",
    "CORES": "cores", "Core": "cores", "IdentityCore": "cores", "LSTMCore": "cores", "build_core": "cores",
    "ENCODERS": "encoders", "ImpalaCNN": "encoders", "MLPEncoder": "encoders", "NatureCNN": "encoders",
    "NetHackEncoder": "encoders", "NetHackSmallEncoder": "encoders", "RGBDEncoder": "encoders",
    "SmallCNN": "encoders", "build_encoder": "encoders",
    "PolicyValueHeads": "heads",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distrl.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"distrl.models.{module}"), name)


__all__ = sorted(_EXPORTS)
