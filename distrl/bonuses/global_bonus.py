"""Global exploration bonuses, computed on the learner on replayed observations (ALGORITHMS.md §1.3, §6.2).

* :class:`RND` (Burda et al. 2019; GEB eq. 2): a frozen, randomly initialised copy of the policy's encoder
  architecture feeds a frozen random target MLP and a trained predictor MLP; the bonus of a state is
  ``||f(s) - f_bar(s)||_2 ** rnd_power``. The E3B code that produced the paper's results uses the *un-squared*
  norm (``rnd_power=1``, the default; the paper's equation is ``rnd_power=2``), evaluates it on the state the
  action led to, ``s_{t+1}`` (``on="next"``, the default; ``"current"`` = ``s_t``), and trains the predictor on
  the mean un-squared error of the same states (``compute_rnd_loss``).
* NovelD (Zhang et al. 2021; GEB eq. 3): ``[b_RND(s_{t+1}) - c * b_RND(s_t)]_+`` with ``c`` = ``noveld_scale``
  (0.1, the E3B sweep's best; 0 gives RND on ``s_{t+1}``). :meth:`RND.bonus` computes it with ``noveld_scale``.
* Global counts ``1 / sqrt(N(psi(s)))`` are :func:`distrl.bonuses.counts.count_bonus` on counts from the
  run's :class:`~distrl.bonuses.counts.CountTable`.

Networks (``bonus.rnd_net``, built by :func:`distrl.learners.bonus.build_rnd`):

* ``"e3b"`` (default): the E3B code's. The frozen random encoder is the policy's architecture
  (``model.encoder`` at width F = ``model.hidden_size``); target ``F -> 128 -> 128 -> 128 -> 128`` (frozen),
  predictor ``F -> H -> H -> 128 -> 128 -> 128`` (the E3B code's shapes with F = H = 1024; here H =
  ``bonus.rnd_hidden``, 256 when 0).
* ``"small"``: the same computation on cheaper networks. The frozen random encoder is the policy's encoder
  kind at F = 128, glyph embedding width at most 8 (:func:`distrl.learners.bonus.rnd_model_config`),
  and its cheap sibling where there is one (``nethack`` -> ``nethack_small`` when the env has
  ``glyphs_crop``; ``nature_cnn``/``impala_cnn`` -> ``small_cnn``); target ``F -> 128 -> 128``, predictor
  ``F -> H -> H -> 128`` with H = ``bonus.rnd_hidden``, 128 when 0. The predictor's width is most of RND's
  cost (its forward and backward run on every learner step over ``[T + 1, B]``); on the 2-core MiniHack
  preset (``nethack_small`` policy, hidden 128, glyph embedding 16) one RND forward + backward costs about
  0.4x of the ``"e3b"`` networks' (240k parameters against 519k).

The frozen parts are registered as parameters with ``requires_grad=False``, so a checkpoint holds them (they
come from the RNG and must come back identical on ``--resume``).

Usage::

    rnd = RND(build_encoder(model_cfg, spec), hidden=256)   # or distrl.learners.bonus.build_rnd(cfg, spec)
    err = rnd.errors(obs)                                # obs leaves [T + 1, B, ...] -> [T + 1, B], one pass
    b = rnd.bonus_from(err, noveld_scale=0.0)            # [T, B], no grad
    loss = rnd.loss_from(err, valid)                     # predictor loss on the same states, valid [T, B]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

RND_OUT = 128
#: net -> (target layer widths after F, predictor layer widths after H): see the module doc.
_LAYERS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "e3b": ((RND_OUT,) * 4, (RND_OUT,) * 3),
    "small": ((RND_OUT,) * 2, (RND_OUT,)),
}
RND_NETS = tuple(_LAYERS)
#: Predictor hidden width H when ``bonus.rnd_hidden`` is 0.
DEFAULT_HIDDEN = {"e3b": 256, "small": 128}


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def noveld(b: Tensor, scale: float) -> Tensor:
    """NovelD on per-state novelties ``b`` ``[T + 1, B]``: ``[b[t + 1] - scale * b[t]]_+`` ``[T, B]``."""
    return (b[1:] - scale * b[:-1]).clamp(min=0.0)


class RND(nn.Module):
    """Random network distillation over a frozen random encoder (see the module doc).

    ``encoder`` is a freshly built (random) encoder, frozen here: for ``net="e3b"`` one of the policy's
    architecture (:func:`distrl.learners.bonus.build_rnd` builds the one ``bonus.rnd_net`` asks for). ``net``
    sets the target's and the predictor's depths; ``hidden`` is the predictor's hidden width H.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        hidden: int = 256,
        net: Literal["e3b", "small"] = "e3b",
        power: float = 1.0,
        on: Literal["next", "current"] = "next",
    ) -> None:
        super().__init__()
        if power <= 0:
            raise ValueError(f"RND: power must be > 0, got {power}")
        if on not in ("next", "current"):
            raise ValueError(f"RND: on must be 'next' or 'current', got {on!r}")
        if net not in _LAYERS:
            raise ValueError(f"RND: net must be one of {list(RND_NETS)}, got {net!r}")
        if hidden < 1:
            raise ValueError(f"RND: hidden must be >= 1, got {hidden}")
        feat = int(encoder.out_dim)
        target_widths, predictor_tail = _LAYERS[net]
        self.encoder = encoder
        self.target = mlp([feat, *target_widths])
        self.predictor = mlp([feat, hidden, hidden, *predictor_tail])
        for p in [*self.encoder.parameters(), *self.target.parameters()]:
            p.requires_grad_(False)
        self.power = power
        self.on = on

    def errors(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Un-squared prediction error ``||f(s) - f_bar(s)||`` ``[*lead]`` of obs leaves ``[*lead, ...]``, with
        gradient through the predictor (the target and the encoder are frozen). One pass over ``[T + 1, B]``
        serves both :meth:`bonus_from` and :meth:`loss_from`."""
        with torch.no_grad():
            z = self.encoder(obs)
            tgt = self.target(z)
        return (self.predictor(z) - tgt).norm(dim=-1)

    def novelty(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Per-state novelty ``||f(s) - f_bar(s)|| ** power`` for obs leaves ``[*lead, ...]`` -> ``[*lead]``."""
        with torch.no_grad():
            return self.errors(obs).pow(self.power)

    def bonus_from(self, err: Tensor, noveld_scale: float = 0.0) -> Tensor:
        """Global bonus ``[T, B]`` of the T transitions whose states' errors ``err`` ``[T + 1, B]`` are given (no
        gradient). ``noveld_scale == 0``: RND of ``s_{t+1}`` (or of ``s_t`` with ``on="current"``); ``> 0``:
        NovelD ``[b(s_{t+1}) - c b(s_t)]_+`` (which always compares the two states of the transition)."""
        nov = err.detach().pow(self.power)
        if noveld_scale > 0:
            return noveld(nov, noveld_scale)
        return nov[1:] if self.on == "next" else nov[:-1]

    def loss_from(self, err: Tensor, valid: Tensor) -> Tensor:
        """Predictor loss: mean over valid steps of the un-squared error on the states the bonus is evaluated on
        (``s_{t+1}`` by default; the E3B code's ``compute_rnd_loss``). err ``[T + 1, B]``, valid ``[T, B]``."""
        e = err[1:] if self.on == "next" else err[:-1]
        mask = valid.to(e.dtype)
        return (e * mask).sum() / mask.sum().clamp(min=1.0)

    def bonus(self, obs: Mapping[str, Tensor], noveld_scale: float = 0.0) -> Tensor:
        """:meth:`bonus_from` on obs ``[T + 1, B, ...]``."""
        with torch.no_grad():
            return self.bonus_from(self.errors(obs), noveld_scale)

    def loss(self, obs: Mapping[str, Tensor], valid: Tensor) -> Tensor:
        """:meth:`loss_from` on obs ``[T + 1, B, ...]``."""
        return self.loss_from(self.errors(obs), valid)
