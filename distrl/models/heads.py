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
    """Policy + value (+ intrinsic value: separate extrinsic and intrinsic value heads sharing the torso, as RND
    fits them; trained with ``bonus.value_heads=2``) on one feature. ``value`` is the extrinsic head (the one
    acting reads, for truncation bootstraps); ``value_int`` is read by the learner only."""

    INTRINSIC_PREFIX = "value_int."
    """State-dict prefix of the intrinsic head's parameters (within this module)."""

    def __init__(self, in_dim: int, num_actions: int, separate_intrinsic_value: bool = False) -> None:
        super().__init__()
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        self.policy = PolicyHead(in_dim, num_actions)
        self.value = ValueHead(in_dim)
        self.value_int = ValueHead(in_dim) if separate_intrinsic_value else None

    @property
    def value_heads(self) -> int:
        """1, or 2 with the intrinsic head."""
        return 1 if self.value_int is None else 2

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        v_int = self.value_int(y) if self.value_int is not None else None
        return self.policy(y), self.value(y), v_int
