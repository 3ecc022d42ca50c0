"""Episodic exploration bonuses on the env actor: per-slot state, reset by the actor's own done mask.

Both classes implement :class:`~distrl.actors.env_actor.EpisodicBonusHook` (``step(obs) -> [B]``,
``reset(mask)``) plus ``episode_unique(mask)``, the number of distinct states (by a state key) each slot's
episode visited, which the actor reports as ``episodic_unique`` in the finished episode's stats. The bonus of
step ``t`` is the bonus of ``s_t``, the observation acted on; it goes into ``Trajectory.episodic_bonus[t]``,
raw (the learner combines and normalises it, ALGORITHMS.md §5.5).

* :class:`E3BBonus` (Henaff et al. 2022; ALGORITHMS.md §1.2 (b), §6.1): the elliptical bonus
  ``b_t = phi_t^T C_{t-1}^{-1} phi_t`` with ``C_{t-1} = lambda I + sum_{i=t0}^{t-1} phi_i phi_i^T`` over the
  current episode, the inverse kept directly by Sherman-Morrison rank-1 updates, batched over the B slots
  (``[B, d, d]`` float32, one stacked matrix-vector product and one in-place rank-1 update per step, no
  per-slot Python loop). The first step of an
  episode gets 0 (the E3B code's rule: it would be ``|phi|^2 / lambda``). Every ``resym_every`` updates the
  inverses are re-symmetrised, ``(C + C^T) / 2``, against float32 drift (not in the E3B code).
* :class:`E3BEpisodicBonus`: the actor's E3B hook: embeds the observations with ``phi`` (the learner's "e3b"
  extra's embedding, loaded by version from the weights the learner publishes) under no_grad, in one batched
  call, then :class:`E3BBonus`.
* :class:`EpisodicCountBonus` (ALGORITHMS.md §1.2 (a)): per-slot visit counts ``N_e`` of a state key
  (:mod:`distrl.bonuses.keys`) since the episode began; ``first_visit`` = ``I[N_e(psi(s_t)) = 1]`` (the
  study's episodic bonus), ``isqrt`` = ``1 / sqrt(N_e)`` (RIDE/AGAC), counting ``s_t`` itself.

Usage::

    e3b = E3BBonus(num_envs=B, dim=d, ridge=0.1)
    b = e3b.step(phi)             # phi [B, d] -> bonus [B] float32 (NumPy), 0 on a slot's first step
    e3b.reset(done)               # done [B] bool: those slots start a new episode

    counts = EpisodicCountBonus(num_envs=B, key="position", form="first_visit")
    b = counts.step(obs)          # obs leaves [B, ...] -> [B]
    uniq = counts.episode_unique(done)   # [B] distinct keys of each slot's episode (read before reset)
    counts.reset(done)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distrl.bonuses.keys import KINDS, state_keys
from distrl.types import as_tensors


class E3BBonus:
    """Batched elliptical episodic bonus over ``num_envs`` slots with ``dim``-dimensional embeddings.

    ``cinv`` ``[B, d, d]`` (a CPU tensor sharing memory with a NumPy array) holds each slot's ``C^{-1}``;
    ``dtype`` float32 (the actors') or float64 (tests). The matrix-vector products go through NumPy's
    stacked matmul and the rank-1 update through one in-place ``addcmul_``: at actor batch sizes PyTorch's
    batched matrix-vector ``bmm`` cost 5-20x as much on a 2-core CPU (d = 128-256, B = 16).
    """

    def __init__(
        self, num_envs: int, dim: int, ridge: float = 0.1, *, resym_every: int = 256, dtype: torch.dtype = torch.float32
    ) -> None:
        if num_envs < 1 or dim < 1:
            raise ValueError(f"E3BBonus: num_envs and dim must be >= 1, got {num_envs}, {dim}")
        if not ridge > 0:
            raise ValueError(f"E3BBonus: ridge (bonus.ridge) must be > 0, got {ridge}")
        if resym_every < 0:
            raise ValueError(f"E3BBonus: resym_every must be >= 0 (0 = never), got {resym_every}")
        self.num_envs, self.dim, self.ridge = num_envs, dim, float(ridge)
        self.resym_every = resym_every
        self._np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        self._eye = np.eye(dim, dtype=self._np_dtype) / self._np_dtype.type(self.ridge)
        self._cinv = np.empty((num_envs, dim, dim), dtype=self._np_dtype)
        self._cinv[:] = self._eye
        self.cinv = torch.from_numpy(self._cinv)
        # work arrays reused by every step (u as a column, v as a row, so the update is one broadcast addcmul_)
        self._u = np.empty((num_envs, dim, 1), dtype=self._np_dtype)
        self._v = np.empty((num_envs, 1, dim), dtype=self._np_dtype)
        self._b = np.empty(num_envs, dtype=self._np_dtype)
        self._tu, self._tv = torch.from_numpy(self._u), torch.from_numpy(self._v)
        self.first = np.ones(num_envs, dtype=bool)
        self._updates = 0

    def reset(self, mask: np.ndarray) -> None:
        """Restart the episodes of slots ``mask`` [B] bool: ``C^{-1} = I / lambda``, next bonus 0."""
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return
        self._cinv[idx] = self._eye
        self.first[idx] = True

    def step(self, phi: Tensor | np.ndarray) -> np.ndarray:
        """Bonus ``[B]`` (float32 NumPy) of embeddings ``phi`` ``[B, d]``, then ``C^{-1}`` updated with them."""
        if isinstance(phi, Tensor):
            phi = phi.detach().cpu().numpy()
        p = np.asarray(phi, dtype=self._np_dtype)
        if p.shape != (self.num_envs, self.dim):
            raise ValueError(f"E3BBonus.step: phi must be [{self.num_envs}, {self.dim}], got {p.shape}")
        u, v, b = self._u[:, :, 0], self._v[:, 0, :], self._b
        np.matmul(self._cinv, p[:, :, None], out=self._u)  # u = C^{-1} phi (C^{-1} is symmetric)
        np.multiply(u, p, out=v)
        v.sum(axis=1, out=b)
        np.maximum(b, 0.0, out=b)  # phi^T C^{-1} phi >= 0 in exact arithmetic
        # Sherman-Morrison: (C + phi phi^T)^{-1} = C^{-1} - u u^T / (1 + phi^T C^{-1} phi)
        np.divide(u, (1.0 + b)[:, None], out=v)
        self.cinv.addcmul_(self._tu, self._tv, value=-1.0)
        self._updates += 1
        if self.resym_every and self._updates % self.resym_every == 0:
            self.cinv.add_(self.cinv.transpose(1, 2).clone()).mul_(0.5)
        out = b.astype(np.float32)
        out[self.first] = 0.0
        self.first[:] = False
        return out


class _UniqueStates:
    """Per-slot sets of state keys of the current episodes (for ``episodic_unique``)."""

    def __init__(self, num_envs: int) -> None:
        self.sets: list[set[int]] = [set() for _ in range(num_envs)]

    def add(self, keys: np.ndarray) -> None:
        for s, k in zip(self.sets, keys.tolist()):
            s.add(k)

    def counts(self, mask: np.ndarray) -> np.ndarray:
        return np.array([len(s) if m else 0 for s, m in zip(self.sets, mask)], dtype=np.float32)

    def reset(self, mask: np.ndarray) -> None:
        for i in np.flatnonzero(mask):
            self.sets[i].clear()


class EpisodicCountBonus:
    """Episodic count bonus over a state key (see the module doc): ``form`` ``first_visit`` or ``isqrt``."""

    FORMS = ("first_visit", "isqrt")

    def __init__(self, num_envs: int, key: str = "position", form: str = "first_visit") -> None:
        if key not in KINDS:
            raise ValueError(f"EpisodicCountBonus: unknown state key {key!r} (bonus.count_key); expected {KINDS}")
        if form not in self.FORMS:
            raise ValueError(f"EpisodicCountBonus: unknown form {form!r} (bonus.count_form); expected {self.FORMS}")
        self.num_envs, self.key, self.form = num_envs, key, form
        self.counts: list[dict[int, int]] = [{} for _ in range(num_envs)]

    def step(self, obs: Mapping[str, Any], keys: np.ndarray | None = None) -> np.ndarray:
        """Bonus ``[B]`` of observations ``obs`` (leaves ``[B, ...]``), counting them; ``keys`` = their state
        keys when the caller already has them."""
        if keys is None:
            keys = state_keys(obs, self.key, lead_ndim=1)
        if keys.shape != (self.num_envs,):
            raise ValueError(f"EpisodicCountBonus.step: expected {self.num_envs} keys, got shape {keys.shape}")
        n = np.empty(self.num_envs, dtype=np.float32)
        for i, (c, k) in enumerate(zip(self.counts, keys.tolist())):
            v = c.get(k, 0) + 1
            c[k] = v
            n[i] = v
        if self.form == "first_visit":
            return (n == 1.0).astype(np.float32)
        return (1.0 / np.sqrt(n)).astype(np.float32)

    def episode_unique(self, mask: np.ndarray) -> np.ndarray:
        """``[B]`` distinct keys visited in each slot's current episode (0 where ``mask`` is false)."""
        return np.array([len(c) if m else 0 for c, m in zip(self.counts, mask)], dtype=np.float32)

    def reset(self, mask: np.ndarray) -> None:
        for i in np.flatnonzero(mask):
            self.counts[i].clear()


class E3BEpisodicBonus:
    """The env actor's E3B hook: ``phi(obs)`` by ``embed`` (no grad, one batched call) then :class:`E3BBonus`.

    ``embed`` is the learner "e3b" extra's embedding architecture (built by the caller, so this module needs
    no model code); ``numpy_embed``, when given, computes the same embedding in NumPy (``__call__(obs)`` and
    ``sync()`` after a weight load; :class:`distrl.models.numpy_act.NumpyEncoder`) and is used instead of
    ``embed``'s PyTorch forward, which costs more per call on an actor. :meth:`load_weights` loads
    ``extras["e3b"]`` from the weights the learner publishes when their version changes. Until weights arrive
    the embedding keeps its random initialisation (a fixed random encoder, one of the E3B ablations).
    ``unique_key`` (a state-key kind the env has, or None) is what :meth:`episode_unique` counts distinct
    values of.
    """

    EXTRA = "e3b"

    def __init__(
        self,
        embed: nn.Module,
        num_envs: int,
        dim: int,
        ridge: float = 0.1,
        *,
        resym_every: int = 256,
        unique_key: str | None = None,
        device: str | torch.device = "cpu",
        numpy_embed: Any | None = None,
    ) -> None:
        self.embed = embed.to(device).eval()
        for p in self.embed.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        self.numpy_embed = numpy_embed
        self.e3b = E3BBonus(num_envs, dim, ridge, resym_every=resym_every)
        self.version = -1
        self.unique_key = unique_key
        self._unique = _UniqueStates(num_envs) if unique_key is not None else None

    def load_weights(self, version: int, extras: Mapping[str, Mapping[str, Tensor]]) -> None:
        """Load the embedding from ``extras["e3b"]`` if ``version`` is new (a missing entry is an error: the
        learner must run the "e3b" extra when actors use E3B)."""
        if version == self.version:
            return
        if self.EXTRA not in extras:
            raise KeyError(
                f"E3B episodic bonus: the published weights (version {version}) have no {self.EXTRA!r} extra "
                f"(they have {sorted(extras)}); the learner must run the 'e3b' learner extra"
            )
        self.embed.load_state_dict(as_tensors(extras[self.EXTRA]))
        if self.numpy_embed is not None:
            self.numpy_embed.sync()
        self.version = int(version)

    @torch.no_grad()
    def step(self, obs: Mapping[str, Any]) -> np.ndarray:
        if self.numpy_embed is not None:
            phi = self.numpy_embed(obs)  # [B, d]
        else:
            phi = self.embed({k: torch.as_tensor(v, device=self.device) for k, v in obs.items()})
        if self._unique is not None:
            self._unique.add(state_keys(obs, self.unique_key, lead_ndim=1))  # type: ignore[arg-type]
        return self.e3b.step(phi)

    def episode_unique(self, mask: np.ndarray) -> np.ndarray | None:
        return None if self._unique is None else self._unique.counts(mask)

    def reset(self, mask: np.ndarray) -> None:
        self.e3b.reset(mask)
        if self._unique is not None:
            self._unique.reset(mask)
