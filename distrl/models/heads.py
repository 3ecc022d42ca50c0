"""Output heads on the core output ``[*, H]``: policy logits ``[*, A]``, value ``[*]``, optional intrinsic
value.

Usage::

    heads = PolicyValueHeads(in_dim=256, num_actions=8, separate_intrinsic_value=True)
    logits, value, value_int = heads(y)     # y [T, B, H] -> [T, B, A], [T, B], [T, B]
"""

from __future__ import annotations

from torch import Tensor, nn


class PolicyHead(nn.Module):
    """Linear → logits [*, A]. Initialised with a small gain so the first policy is close to uniform
    (large initial logits cut exploration before learning starts)."""

    def __init__(self, in_dim: int, num_actions: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, num_actions)
        nn.init.orthogonal_(self.fc.weight, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, y: Tensor) -> Tensor:
        return self.fc(y)


class ValueHead(nn.Module):
    """Linear → scalar value [*]."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, 1)
        nn.init.orthogonal_(self.fc.weight, 1.0)
        nn.init.zeros_(self.fc.bias)

    def forward(self, y: Tensor) -> Tensor:
        return self.fc(y).squeeze(-1)


class PolicyValueHeads(nn.Module):
    """Policy + value (+ intrinsic value, Agent57-style separate heads sharing the torso) on one feature."""

    def __init__(self, in_dim: int, num_actions: int, separate_intrinsic_value: bool = False) -> None:
        super().__init__()
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        self.policy = PolicyHead(in_dim, num_actions)
        self.value = ValueHead(in_dim)
        self.value_int = ValueHead(in_dim) if separate_intrinsic_value else None

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        v_int = self.value_int(y) if self.value_int is not None else None
        return self.policy(y), self.value(y), v_int
