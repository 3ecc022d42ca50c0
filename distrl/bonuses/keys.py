"""State keys for count bonuses: a stable 64-bit hash of a feature of each observation.

A count bonus counts visits to ``ψ(s)``, a feature of the observation (ALGORITHMS.md §1.2 (a)). The kinds
follow the E3B code's ``extract_state_key``:

* ``"position"``: the agent's (x, y), ``blstats[..., 0:2]`` (MiniHack/NLE), packed into one 64-bit word and
  mixed by SplitMix64's finaliser (a bijection, so distinct positions never collide); the key does not depend
  on how blstats was stored.
* ``"message"``: the 256 message bytes (``message``, uint8).
* ``"glyphs"``: the full glyph map (``glyphs``, as int16).
* ``"obs"``: every leaf of the observation, in sorted key order, each in its own dtype. On MiniHack blstats
  holds the turn counter, so every step of an episode gets a new key (as in the paper's ``counts-obs``).

The hash is the same in every process and on every machine (no Python ``hash()``, whose seed changes per
process): each row's bytes, read as little-endian 64-bit words, are combined with fixed odd multipliers (a
multilinear hash modulo 2^64, computed as one vectorised multiply-sum over all rows) and finished with the
SplitMix64 mixer together with the row's byte length. Two rows that differ in a single word never collide.

Observations are batched: any leading dims (``[B, ...]`` on an actor, ``[T, B, ...]`` on a learner); the
result has those dims. NumPy arrays or torch tensors (moved to the CPU) are accepted.

Usage::

    keys = state_keys(obs, "position")        # obs["blstats"]: [B, 27] -> keys: int64 [B]
    keys = state_keys(traj.obs, "message")    # [T + 1, B, 256] -> int64 [T + 1, B]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

KINDS: tuple[str, ...] = ("position", "message", "glyphs", "obs")
"""State-key kinds accepted by :func:`state_keys` (``bonus.count_key``)."""

_NEEDS: dict[str, str] = {"position": "blstats", "message": "message", "glyphs": "glyphs"}
_LEAF_NDIM: dict[str, int] = {"position": 1, "message": 1, "glyphs": 2}

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MULTIPLIERS: dict[int, np.ndarray] = {}
_POSITION_SALT = np.uint64(0x5D1B7C3A2F4E6A91)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise on a uint64 array (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _multipliers(n: int) -> np.ndarray:
    """``n`` fixed odd 64-bit multipliers: SplitMix64 outputs of the counter 1..n (same everywhere)."""
    m = _MULTIPLIERS.get(n)
    if m is None:
        with np.errstate(over="ignore"):
            m = _mix64(np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN) | np.uint64(1)
        _MULTIPLIERS[n] = m
    return m


def hash_rows(x: Any, lead_ndim: int) -> np.ndarray:
    """Stable 64-bit hash (int64) of each row of ``x``: a row is everything after the first ``lead_ndim`` dims.

    Rows hash their bytes (little-endian), so equal values of different dtypes hash differently; cast first
    where that matters."""
    a = _as_numpy(x)
    if lead_ndim < 0 or lead_ndim > a.ndim:
        raise ValueError(f"hash_rows: lead_ndim={lead_ndim} does not fit an array of shape {a.shape}")
    lead = a.shape[:lead_ndim]
    n = int(np.prod(lead, dtype=np.int64))
    b = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).reshape(n, -1).view(np.uint8)
    nbytes = b.shape[1]
    pad = (-nbytes) % 8
    if pad:
        b = np.concatenate([b, np.zeros((n, pad), np.uint8)], axis=1)
    words = b.view("<u8")
    with np.errstate(over="ignore"):
        h = words @ _multipliers(words.shape[1]) if words.shape[1] else np.zeros(n, np.uint64)
        h = _mix64(h.astype(np.uint64) ^ (np.uint64(nbytes) * _GOLDEN))
    return h.view(np.int64).reshape(lead)


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def required_obs_key(kind: str) -> str | None:
    """The observation key state-key ``kind`` reads (None for ``"obs"``, which reads them all)."""
    if kind not in KINDS:
        raise ValueError(f"unknown state key kind {kind!r}; expected one of {KINDS}")
    return _NEEDS.get(kind)


def _leaf(obs: Mapping[str, Any], key: str, kind: str) -> np.ndarray:
    if key not in obs:
        raise KeyError(
            f"state key {kind!r} needs observation key {key!r}, which this env does not have "
            f"(its keys: {sorted(obs)}); choose another bonus.count_key ({', '.join(KINDS)})"
        )
    return _as_numpy(obs[key])


def state_keys(obs: Mapping[str, Any], kind: str, *, lead_ndim: int | None = None) -> np.ndarray:
    """int64 state keys ``[*lead]`` of batched observations ``obs`` (dict of arrays ``[*lead, ...]``).

    ``kind`` is one of :data:`KINDS`. ``lead_ndim`` (the number of batch dims) is inferred: from the leaf's
    known rank for position/message/glyphs, and for ``"obs"`` as the dims all leaves share; give it for an
    ``"obs"`` key of a single-leaf observation. A KeyError names an observation key the kind needs and the env
    lacks (``"position"`` on Atari)."""
    if kind not in KINDS:
        raise ValueError(f"unknown state key kind {kind!r}; expected one of {KINDS}")
    if not isinstance(obs, Mapping):
        obs = {"obs": obs}
    if kind == "obs":
        names = sorted(obs)
        if not names:
            raise ValueError("state_keys: empty observation")
        leaves = [_as_numpy(obs[k]) for k in names]
        if lead_ndim is None:
            if len(leaves) == 1:
                raise ValueError(
                    "state_keys(kind='obs') on a single-leaf observation cannot infer the batch dims: pass lead_ndim"
                )
            lead_ndim = _common_prefix(leaves)
        hs = [hash_rows(x, lead_ndim) for x in leaves]
        if len(hs) == 1:
            return hs[0]
        stacked = np.stack(hs, axis=-1).view(np.uint64)  # [*lead, K]
        return hash_rows(stacked, lead_ndim)
    x = _leaf(obs, _NEEDS[kind], kind)
    nd = x.ndim - _LEAF_NDIM[kind] if lead_ndim is None else lead_ndim
    if nd < 0:
        raise ValueError(f"state key {kind!r}: observation {_NEEDS[kind]!r} has shape {x.shape}, too few dims")
    if kind == "position":
        if x.shape[-1] < 2:
            raise ValueError(f"state key 'position': blstats has shape {x.shape}; needs x, y in its first two")
        # (x, y) packed into one word and mixed: a few vector ops instead of the byte hash (every actor step)
        xy = (x[..., 0].astype(np.int64) << 32) ^ (x[..., 1].astype(np.int64) & 0xFFFFFFFF)
        with np.errstate(over="ignore"):
            return _mix64(xy.view(np.uint64) ^ _POSITION_SALT).view(np.int64)
    elif kind == "glyphs":
        x = x.astype(np.int16, copy=False)
    else:
        x = x.astype(np.uint8, copy=False)
    return hash_rows(x, nd)


def _common_prefix(leaves: list[np.ndarray]) -> int:
    """Number of leading dims every leaf shares (the batch dims), with at least one trailing dim left to
    each leaf that has any."""
    shapes = [x.shape for x in leaves]
    n = min(len(s) for s in shapes)
    k = 0
    while k < n and all(s[k] == shapes[0][k] for s in shapes):
        k += 1
    # A leaf's own dims may coincide with the batch size; keep at least one dim per leaf of rank > 0 beyond it.
    return min(k, min(len(s) - 1 if len(s) > 0 else 0 for s in shapes))
