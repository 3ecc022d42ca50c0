"""HCAM's acting step (:meth:`distrl.models.hcam.HCAMCore.step`) in NumPy, for the env actors' NumPy acting
path (:mod:`distrl.models.numpy_act`, which registers :class:`HCAMKernel` as the kernel of ``HCAMCore``).

Same function as the PyTorch step to float32 rounding, batched over the B env slots (no loop over slots or
heads: every op works on ``[B, ...]`` arrays), with the same state layout (``mem{l}``, ``key{l}``, ``acc{l}``,
``pos``, ``count``; see :mod:`distrl.models.hcam`).

Cost model: at an actor's batch (16) each NumPy call costs a few microseconds of dispatch, so the step is
laid out for few calls, and for few bytes moved (the memory is the bulk of the state):

* **Absorbed projections, fused at load.** Per layer one matmul gives every query of the step in the space
  of the stored vectors (so stored chunks are never projected): ``[z, 1]`` times ``[D + 1, D + 2HD + HC]``
  gives the chunk-summary relevance query ``z Wq^T Wk / sqrt(D)``, per head ``W_k,h^T (W_q,h z + b_q,h) /
  sqrt(d_h)`` for the memory's and the window's multi-head attention, and those memory queries' dot
  products with the C positional encodings. One matmul on the way out: ``[ctx_mem | ctx_win | attention
  per chunk position | 1 | seen]`` times the stacked per-head value-and-output blocks, ``pe`` times the
  memory heads' blocks, and both output biases gives ``MemRead + LocalAttn``. Biases ride as a constant-1
  input column everywhere (no op adds them); LN2's scale and shift are folded into the FFN's first layer
  and the final LayerNorm's into the policy/value heads (``output_affine``, folded by NumpyPolicy).
* **Positional encodings never added to the chunks read.** ``q·(c + pe) = q·c + q·pe`` and
  ``Σ a (c + pe) = Σ a c + (Σ_chunks a) pe``: both ``pe`` terms come out of the two fused matmuls above, so
  the ``[B, k, C, D]`` chunks are gathered (one fancy index, after ``np.argpartition`` picks the top k: the
  k reads are summed, so their order does not matter) and read as they are. The window (``C`` entries)
  adds its positions.
* **Softmaxes without reductions over C-long rows** (NumPy's slowest kind): a softmax is taken as
  ``exp(l) / Σ exp(l)`` with no maximum subtracted, the sums per chunk by a matmul with a 0/1 matrix.
  Every sum is checked once per step; if one left float32's normal range ([1e-20, 1e30]: an overflow, or
  terms that would lose precision), the step runs again with each softmax shifted by its maximum. Either
  way the function is the same; only the rounding differs.
* **Masks and positions from tables** indexed by the counters (``min(count, M + count % M)``, ``pos``): one
  fancy index per step for all layers; the relevance mask carries the top-k tie-break by chunk age
  (``HCAMLayer.read``); a row that sees no chunk gets relevance weights 0 (``seen``), as in PyTorch.
* **Copy on write, not in place.** The step is pure like ``HCAMCore.step`` (its input state stays valid:
  the actor's truncation values and the sequence writer read states it has acted from): the memory arrays
  (``mem*`` ``[B, M, C, D]``, ``key*``) pass through unchanged and are copied only at the steps that write a
  chunk (every ``C`` steps), ``acc*`` (``[B, C, D]``) once per step. :meth:`HCAMKernel.reset` copies the
  leaves it zeroes (all of them, or only ``acc*`` and ``pos`` with ``hcam_cross_episode``).

State leaves come back as CPU torch tensors sharing the NumPy arrays' memory (``torch.from_numpy``, no copy),
because the sequence writer's episode-memory compactor (:mod:`distrl.replay.episode_memory`) reads them as
tensors; inputs may be tensors or arrays.

Usage (through :class:`~distrl.models.numpy_act.NumpyPolicy`, which picks this kernel by the core's class)::

    policy = NumpyPolicy(build_agent(ModelConfig(core="hcam", encoder="mlp"), spec))
    s = policy.initial_state(16)              # tensors, HCAMCore's layout
    out = policy.act(obs, s)                  # out.state: the next state (s is unchanged)
    s = policy.reset_state(out.state, done)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from distrl.models.hcam import TIE_BREAK, HCAMCore, HCAMLayer, _ChunkAttention
from distrl.types import CoreState
from distrl.types import as_numpy as _as_array

Array = np.ndarray
_F32 = np.float32
_MASKED = -1e30  # relevance of a chunk not written (finite: a row that sees none gets weights 0 via ``seen``)
_SUM_MIN, _SUM_MAX = 1e-20, 1e30  # per-chunk sums of exp(logits) in this range need no max subtracted


class _Matmul(Protocol):
    def __call__(self, x: Array, out: Array) -> Array: ...


class Workspace(Protocol):
    """What the kernel needs from :class:`distrl.models.numpy_kernels.Workspace`."""

    def matmul(self, w: Array) -> _Matmul: ...

    def get(self, name: str, n: int, width: int) -> Array: ...


def _f64(t: torch.Tensor) -> Array:
    return t.detach().to(torch.float64).cpu().numpy()


def _f32(a: Array) -> Array:
    return np.ascontiguousarray(a, dtype=_F32)


def _ln(m: nn.LayerNorm) -> tuple[Array, Array, float]:
    return _f32(_f64(m.weight)), _f32(_f64(m.bias)), float(m.eps)


def _attention_maps(att: _ChunkAttention) -> tuple[Array, Array, Array, Array]:
    """One attention's absorbed maps (float64): ``G`` [D, H*D] and ``g`` [H*D] (query in the stored vectors'
    space, scaled by 1/sqrt(d_h): ``qa_h = z G_h + g_h``), ``V`` [H*D, D] (values then output projection:
    ``out = Σ_h ctx_h V_h``) and the output bias [D]."""
    H, dh = att.h, att.dh
    wq, bq, wk, wv = _f64(att.q.weight), _f64(att.q.bias), _f64(att.k.weight), _f64(att.v.weight)
    wo_t = _f64(att.out.weight).T  # [D_in, D_out]
    scale = 1.0 / np.sqrt(dh)
    G, g, V = [], [], []
    for h in range(H):
        hs = slice(h * dh, (h + 1) * dh)
        G.append(wq[hs].T @ wk[hs] * scale)  # [D, D]
        g.append(bq[hs] @ wk[hs] * scale)  # [D]
        V.append(wv[hs].T @ wo_t[hs])  # [D, D]
    return np.concatenate(G, axis=1), np.concatenate(g), np.concatenate(V, axis=0), _f64(att.out.bias)


class _Layer:
    """One HCAM block's weights in the kernel's layout (see the module doc). Biases ride as an extra input row
    of their matmuls (the inputs carry a constant 1 column), so no op adds them."""

    def __init__(self, layer: HCAMLayer, ws: Workspace, pe: Array) -> None:
        D, H, C = layer.dim, layer.mem_att.h, pe.shape[0]
        self.g1, self.b1, self.eps1 = _ln(layer.ln1)
        top = _f64(layer.wq.weight).T @ _f64(layer.wk.weight) / np.sqrt(D)  # [D, D]: z -> relevance query
        Gm, gm, Vm, b_mem = _attention_maps(layer.mem_att)
        Gl, gl, Vl, b_loc = _attention_maps(layer.local_att)
        # [z, 1] -> every query of the step: [qa_top (D) | qa_mem (H*D) | qa_loc (H*D) | qa_mem·pe (H*C)]
        pe64 = pe.astype(np.float64)
        q = np.concatenate([top, Gm, Gl], axis=1)
        q_b = np.concatenate([np.zeros(D), gm, gl])
        q_pe = [np.concatenate([Gm[:, h * D : (h + 1) * D], gm[None, h * D : (h + 1) * D]]) @ pe64.T for h in range(H)]
        self.q = ws.matmul(_f32(np.concatenate([np.concatenate([q, q_b[None]]), *q_pe], axis=1)))
        self.q_width = q.shape[1] + H * C
        # [ctx_mem (H*D) | ctx_loc (H*D) | attention per chunk position (H*C) | 1 | seen] -> MemRead + LocalAttn
        # (the positions' share of the memory read, and the memory read's output bias scaled by its relevance
        # weights' sum, ``seen``: 1, or 0 where no chunk is readable)
        pe_v = [pe64 @ Vm[h * D : (h + 1) * D] for h in range(H)]  # [C, D] per head
        self.v = ws.matmul(_f32(np.concatenate([Vm, Vl, *pe_v, b_loc[None], b_mem[None]])))
        self.eps2 = float(layer.ln2.eps)
        g2, b2 = _f64(layer.ln2.weight), _f64(layer.ln2.bias)
        lin1, lin2 = layer.ffn[0], layer.ffn[2]
        w1 = _f64(lin1.weight).T  # [D, 2D]; LN2's scale and shift folded in: [LN2(h) without them, 1] -> FFN
        self.w1 = ws.matmul(_f32(np.concatenate([g2[:, None] * w1, (b2 @ w1 + _f64(lin1.bias))[None]])))
        self.w2 = ws.matmul(_f32(np.concatenate([_f64(lin2.weight).T, _f64(lin2.bias)[None]])))
        self.hidden = w1.shape[1]


class _Buffers:
    """Work arrays for one batch size ``n`` (nothing in them escapes a call), with their constant parts set."""

    def __init__(self, n: int, D: int, H: int, k: int, C: int, L: int, hidden: int) -> None:
        self.rows = np.arange(n)
        self.z = np.ones((n, D + 1), _F32)  # [LN1(h), 1]
        self.zn = np.ones((n, D + 1), _F32)  # [LN2(h) without its affine, 1]
        self.f = np.ones((n, hidden + 1), _F32)  # [FFN hidden, 1]
        # [memory heads' reads | window heads' reads | memory heads' attention per chunk position | 1 | seen]
        self.ctx = np.ones((n, 2 * H * D + H * C + 2), _F32)
        self.window = np.empty((n, C, D), _F32)  # the chunk being filled, positions added
        self.logits = np.empty((n, H, k * C), _F32)
        self.q = np.empty((n, D + 2 * H * D + H * C), _F32)
        self.o = np.empty((n, D), _F32)
        # per layer, the sums the softmaxes divide by: [chunks (n*H*k) | window (n*H) | relevance (n)],
        # checked once per step (see HCAMKernel._attend)
        self.sums = np.empty((L, n * H * (k + 1) + n), _F32)


class HCAMKernel:
    """:meth:`HCAMCore.step` for B slots in NumPy (the module doc), as a core kernel of
    :class:`~distrl.models.numpy_act.NumpyPolicy`: ``input(n)`` is where the encoder writes its ``[n, F]``
    features; ``step(n, state)`` -> ``(y [n, D], next state)`` where ``y`` is the final LayerNorm *without*
    its scale and shift (``output_affine``, which NumpyPolicy folds into the heads); ``initial_state``,
    ``reset`` and ``arrays`` keep ``HCAMCore``'s layout and semantics (``hcam_cross_episode`` included)."""

    def __init__(self, core: HCAMCore, in_dim: int, ws: Workspace) -> None:
        self.core, self.ws = core, ws
        D, C, M = self.D, self.C, self.M = core.dim, core.C, core.M
        self.L = core.L
        first = core.layers[0]
        self.H = first.mem_att.h
        k = self.k = min(first.topk, M)
        self.cross_episode = core.cross_episode
        self.in_dim = in_dim
        if isinstance(core.inp, nn.Linear):
            self.inp: tuple[_Matmul, Array] | None = (
                ws.matmul(_f32(_f64(core.inp.weight).T)),
                _f32(_f64(core.inp.bias)),
            )
        else:
            self.inp = None
        pe, pe_local = first.pe.detach().cpu().numpy(), first.pe_local.detach().cpu().numpy()
        for layer in core.layers:  # one table for all layers (they are built alike; refuse if not)
            if not (
                np.array_equal(layer.pe.cpu().numpy(), pe) and np.array_equal(layer.pe_local.cpu().numpy(), pe_local)
            ):
                raise ValueError("HCAM NumPy kernel: the layers' positional encodings differ")
        self.layers = [_Layer(layer, ws, pe) for layer in core.layers]
        g, b, self.eps_out = _ln(core.ln_out)
        self.output_affine = (g, b)
        self.mean_col = np.full((D, 1), 1.0 / D, _F32)
        # Tables indexed by the counters: one fancy index per step instead of comparisons and np.where.
        # by_count[j] = [relevance mask (M) | seen], j = count for count < M, M + count % M after (the ring is
        # full: only the slot order by age changes): -TIE_BREAK * age for chunks written (age: chunks written
        # after the slot's, as HCAMLayer.read), -1e30 for the rest; with nothing written the mask is all 0 and
        # seen = 0 (the weights are zeroed instead: sums stay positive)
        s_idx = np.arange(M)[None, :]
        n_vis = np.r_[np.arange(M + 1), np.full(M - 1, M)][:, None]  # chunks written, per row j
        last = np.r_[np.arange(M + 1), M + np.arange(1, M)][:, None] - 1  # the newest chunk's number
        age = np.mod(last - s_idx, M)
        by_count = np.zeros((2 * M, M + 1), _F32)
        by_count[:, :M] = np.where(s_idx < n_vis, -TIE_BREAK * age, _MASKED)
        by_count[0, :M] = 0.0
        by_count[1:, M] = 1.0
        self.by_count = by_count
        # by_pos[pos] = [window mask (C): 0 for entries 0..pos, -inf after | the window's positions (C*D)]
        self.by_pos = np.concatenate(
            [np.where(np.arange(C)[None, :] <= np.arange(C)[:, None], 0.0, -np.inf), pe_local.reshape(C, C * D)], axis=1
        ).astype(_F32)
        self.next_pos = np.r_[np.arange(1, C), 0].astype(np.int64)
        self.chunk_of = np.kron(np.eye(k), np.ones((C, 1))).astype(_F32)  # [k*C, k]: entry -> chunk
        self.chunk_of_t = np.ascontiguousarray(self.chunk_of.T)
        self.position_of = np.tile(np.eye(C), (k, 1)).astype(_F32)  # [k*C, C]: entry -> position in its chunk
        self.ones_k = np.ones((k, 1), _F32)
        self.ones_c = np.ones((C, 1), _F32)
        self._buffers: dict[int, _Buffers] = {}
        self._in_tensors: dict[str, torch.Tensor] = {}

    # ---- state ---------------------------------------------------------------------------------------------
    def initial_state(self, batch: int) -> CoreState:
        return self.core.initial_state(batch)

    def reset(self, state: CoreState, mask: Any) -> CoreState:
        """Rows under ``mask`` [B] start an episode: every leaf back to zero, or, with ``hcam_cross_episode``,
        only ``acc*`` and ``pos`` (stored chunks stay readable). Pure: changed leaves are new arrays."""
        m = _as_array(mask).astype(bool)
        if not m.any():
            return dict(state)
        out: CoreState = {}
        for k, v in state.items():
            if self.cross_episode and not (k.startswith("acc") or k == "pos"):
                out[k] = v
                continue
            a = np.array(_as_array(v), copy=True)
            a[m] = 0
            out[k] = torch.from_numpy(a)
        return out

    def arrays(self, state: Mapping[str, Any]) -> dict[str, Array]:
        """The state's leaves as NumPy arrays (CPU tensors are viewed, not copied); remembers the tensors so
        that leaves the step leaves unchanged go back out as the same tensor objects."""
        self._in_tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        out = {}
        for k, v in state.items():
            try:
                out[k] = v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            except (RuntimeError, TypeError):  # on an accelerator or requiring grad
                out[k] = _as_array(v)
        return out

    # ---- one step ------------------------------------------------------------------------------------------
    def input(self, n: int) -> Array:
        return self.ws.get("hcam_in", n, self.in_dim)

    def step(self, n: int, state: Mapping[str, Array]) -> tuple[Array, CoreState]:
        pos, count = state["pos"], state["count"]
        if pos.shape != (n,) or count.shape != (n,):
            raise ValueError(f"HCAM state: pos and count must be [{n}], got {pos.shape} and {count.shape}")
        buf = self._buffers.get(n)
        if buf is None:
            buf = self._buffers[n] = _Buffers(n, self.D, self.H, self.k, self.C, self.L, self.layers[0].hidden)
        with np.errstate(all="ignore"):  # the fast path may overflow; checked below, then redone
            out = self._step(n, state, buf, safe=False)
        if out is None:  # a softmax sum left float32's normal range: again, each softmax shifted by its maximum
            out = self._step(n, state, buf, safe=True)
            assert out is not None
        return out

    def _step(self, n: int, state: Mapping[str, Array], buf: _Buffers, safe: bool) -> tuple[Array, CoreState] | None:
        D, C, M, H, k = self.D, self.C, self.M, self.H, self.k
        kC, HD, rows = k * C, H * D, buf.rows
        pos, count = state["pos"], state["count"]
        complete = pos == C - 1
        written = np.flatnonzero(complete)
        # for every layer: which stored chunks this episode wrote, which window entries are filled, positions
        by_count = self.by_count[np.minimum(count, M + count % M)]
        top_mask = by_count[:, :M]
        buf.ctx[:, -1:] = by_count[:, M:]  # seen
        seen = buf.ctx[:, -1:]
        by_pos = self.by_pos[pos]
        win_mask = by_pos[:, None, :C]  # [n, 1, C]
        pe_win = by_pos[:, C:].reshape(n, C, D)  # the window's positions, counted back from the newest entry
        x = self.ws.get("hcam_in", n, self.in_dim)
        if self.inp is not None:
            w, b = self.inp
            h = w(x, np.empty((n, D), _F32))
            h += b
        else:
            h = x.copy()
        z = buf.z[:, :D]
        ctx3 = buf.ctx[:, : 2 * HD].reshape(n, 2 * H, D)
        new: CoreState = {}
        for i, lw in enumerate(self.layers):
            mem, keys = state[f"mem{i}"], state[f"key{i}"]
            self._normalise(h, lw.eps1, z)
            z *= lw.g1
            z += lw.b1
            acc = state[f"acc{i}"].copy()
            acc[rows, pos] = z
            q = lw.q(buf.z, buf.q)
            # relevance of the chunk summaries, the top k, softmax over the k (normalised below)
            rel = np.matmul(keys, q[:, :D, None]).reshape(n, M)
            rel += top_mask
            if k < M:
                idx = np.argpartition(rel, M - k, axis=1)[:, M - k :]  # [n, k]: the k largest, any order
                rel = rel[rows[:, None], idx]
                chunks = mem[rows[:, None], idx]  # [n, k, C, D]
            else:
                chunks = mem
            if safe:
                rel -= np.maximum.reduce(rel, axis=1, keepdims=True)
            w = np.exp(rel)
            w *= seen / np.matmul(w, self.ones_k, out=buf.sums[i, -n:, None])  # rows that see nothing: zeros
            # memory heads inside the k chunks (one softmax per chunk, weighted by w), window heads over the window
            np.add(acc, pe_win, out=buf.window)
            chunks = chunks.reshape(n, kC, D)
            self._attend(q, chunks, w, win_mask, buf, i, safe)
            np.matmul(buf.logits, chunks, out=ctx3[:, :H])
            # h + MemRead + LocalAttn (value and output projections and biases of both in one matmul), FFN
            h += lw.v(buf.ctx, buf.o)
            self._normalise(h, lw.eps2, buf.zn[:, :D])
            f = lw.w1(buf.zn, buf.f[:, : lw.hidden])
            np.maximum(f, 0.0, out=f)
            h += lw.w2(buf.f, buf.o)
            # chunk write (copy on write: the input state's arrays stay as they were)
            if written.size:
                slot = count[written] % M
                chunk = acc[written]  # [w, C, D]
                mem = mem.copy()
                mem[written, slot] = chunk
                keys = keys.copy()
                keys[written, slot] = chunk.mean(axis=1)
                acc[written] = 0.0
                new[f"mem{i}"], new[f"key{i}"] = torch.from_numpy(mem), torch.from_numpy(keys)
            else:
                new[f"mem{i}"], new[f"key{i}"] = self._same(state, f"mem{i}"), self._same(state, f"key{i}")
            new[f"acc{i}"] = torch.from_numpy(acc)
        if not safe and not (
            np.minimum.reduce(buf.sums, axis=None) > _SUM_MIN and np.maximum.reduce(buf.sums, axis=None) < _SUM_MAX
        ):
            return None
        new["pos"] = torch.from_numpy(self.next_pos[pos])
        new["count"] = torch.from_numpy(count + complete)
        y = np.empty((n, D), _F32)
        self._normalise(h, self.eps_out, y)
        return y, new

    def _normalise(self, x: Array, eps: float, out: Array) -> None:
        """``out = (x - mean) / sqrt(var + eps)`` over the last axis of ``x`` [n, D]. Means as matmuls with a
        ``1/D`` column: faster calls than NumPy's reductions over short rows."""
        np.subtract(x, x @ self.mean_col, out=out)
        var = (out * out) @ self.mean_col  # [n, 1]
        var += _F32(eps)
        np.sqrt(var, out=var)
        out /= var

    def _attend(
        self, q: Array, chunks: Array, w: Array, win_mask: Array, buf: _Buffers, layer: int, safe: bool
    ) -> None:
        """The memory heads' attention weights over the k ``chunks`` [n, kC, D] into ``buf.logits``
        [n, H, kC] (one softmax per chunk, times its relevance weight ``w`` [n, k]) and their sums per chunk
        position into ``buf.ctx``; the window heads' read of ``buf.window`` into their part of ``buf.ctx``.
        ``q`` is the layer's query matmul output (the module doc).

        The chunks' positional encodings are not added to the chunks: their logits (``qa·pe``) come from the
        query matmul, and their share of the read from the attention per position times ``pe`` (in the
        output matmul). A softmax is ``exp(l) / Σ exp(l)``; unless ``safe``, it is taken without subtracting a
        maximum (a shift does not change it; this saves a reduction over C-long rows, NumPy's slowest kind),
        and the sums go to ``buf.sums`` for :meth:`_step` to check, once per step, that all stayed within
        float32's normal range (else it runs the step again with ``safe``)."""
        n, H, D, kC, C, k = q.shape[0], self.H, self.D, self.k * self.C, self.C, self.k
        HD = H * D
        sums = buf.sums[layer]
        flat = buf.logits.reshape(n * H, kC)
        np.matmul(q[:, D : D + HD].reshape(n, H, D), chunks.transpose(0, 2, 1), out=buf.logits)
        buf.logits.reshape(n, H, k, C)[...] += q[:, D + 2 * HD :].reshape(n, H, 1, C)
        if safe:
            per_chunk = flat.reshape(n * H, k, C)
            per_chunk -= np.maximum.reduce(per_chunk, axis=2, keepdims=True)
        np.exp(flat, out=flat)
        chunk_sums = np.matmul(flat, self.chunk_of, out=sums[: n * H * k].reshape(n * H, k))
        coef = np.divide(w[:, None, :], chunk_sums.reshape(n, H, k)).reshape(n * H, k)
        np.multiply(flat, coef @ self.chunk_of_t, out=flat)
        buf.ctx[:, 2 * HD : 2 * HD + H * C] = (flat @ self.position_of).reshape(n, H * C)
        # the window
        att = np.matmul(q[:, D + HD : D + 2 * HD].reshape(n, H, D), buf.window.transpose(0, 2, 1))  # [n, H, C]
        att += win_mask
        if safe:
            att -= np.maximum.reduce(att, axis=2, keepdims=True)
        np.exp(att, out=att)
        att /= np.matmul(att, self.ones_c, out=sums[n * H * k : n * H * (k + 1)].reshape(n, H, 1))
        np.matmul(att, buf.window, out=buf.ctx[:, HD : 2 * HD].reshape(n, H, D))

    def _same(self, state: Mapping[str, Array], key: str) -> torch.Tensor:
        """An unchanged leaf as a tensor: the caller's own tensor when it passed one (see :meth:`arrays`)."""
        t = self._in_tensors.get(key)
        return t if t is not None else torch.from_numpy(state[key])


__all__ = ["HCAMKernel"]
