"""HCAM: hierarchical chunk attention memory as a recurrent core (Lampinen et al. 2021, "Towards mental time
travel"; read operation as in DeepMind's released ``htm_attention.py``, see ALGORITHMS.md §2).

The core keeps, per layer, the past of that layer's (layer-normalised) inputs in chunks of ``C`` steps. A query
first attends to the chunk *summaries* (the chunk means) with a single-head, bias-free relevance score, keeps the
``k`` most relevant chunks, attends inside each of them with multi-head attention (sinusoidal positions within
the chunk), and sums the k results weighted by the softmax of their relevance scores. Stored keys and contents
are stop-gradient (only the query path and the attention projections learn), which is what lets replay store
them as acting-time activations. The chunk being filled is read by a local causal attention over its steps
(window ``C``), in parallel with the memory read.

One layer (pre-LayerNorm, residual)::

    z = LN1(h);  acc[pos] = z                         # z goes into the chunk being filled
    h = h + MemRead(z, chunks written before t) + LocalAttn(z, acc[0..pos])
    h = h + FFN(LN2(h))
    if pos == C - 1: write chunk (contents = acc, key = mean(acc)) into FIFO slot count % M

State (:data:`~distrl.types.CoreState`, every tensor batch-first), for each layer ``l``:

* ``mem{l}`` ``[B, M, C, D]``: chunk contents (FIFO ring, slot ``w % M`` holds the w-th chunk written),
* ``key{l}`` ``[B, M, D]``: chunk summaries (the mean of the contents),
* ``acc{l}`` ``[B, C, D]``: the chunk being filled (entries after ``pos`` are zero),

and ``pos`` ``[B]`` (steps in the chunk being filled) and ``count`` ``[B]`` (chunks written this episode; with
``hcam_cross_episode`` since the state was created), int64. :attr:`HCAMCore.episode_memory` declares the
append-only keys (``mem*``, ``key*``) for replay (:mod:`distrl.replay.episode_memory`).

Training on a sequence (``forward``) is vectorised over T: each layer computes its T inputs, the chunk every
step would have written (from the counters, which do not depend on values), and one masked read over the
``M`` stored chunks plus the chunks written during the sequence: a query at step t sees exactly the chunks
completed before t, of its own episode (unless ``hcam_cross_episode``), and only the newest ``M`` of them (the
FIFO). So ``forward`` over T steps equals T calls of :meth:`HCAMCore.step` (tests check to 1e-5), resets
included.

Queries and keys of both attentions are applied in "absorbed" form (``q·(W_k c) = (W_kᵀ q)·c`` and
``Σ a_c W_v c = W_v Σ a_c c``): stored contents are never projected, so a read costs ``O(k C D H + D²)`` per
query instead of ``O(k C D²)``.

Usage::

    core = HCAMCore(ModelConfig(core="hcam", hidden_size=64, num_core_layers=2, hcam_chunk=8,
                                hcam_chunks=16, hcam_topk=4, hcam_heads=4), in_dim=64)
    s = core.initial_state(B)
    y, s = core(x, reset, s)          # x [T, B, 64], reset [T, B] -> y [T, B, 64]
    y1, s = core.step(x[0], s)        # acting: one step
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distrl.config import ModelConfig
from distrl.models.cores import CoreBase, _check_state
from distrl.types import CoreState, EpisodeMemorySpec

TIE_BREAK = 1e-4
"""Relevance logit taken off per chunk of age (:meth:`HCAMLayer.read`): far below any learnt difference, far
above float32 rounding of the logits; it makes the top-k choice the same in every implementation."""


def sinusoid_positions(n: int, dim: int, min_timescale: float = 2.0, max_timescale: float = 1e4) -> Tensor:
    """Sinusoidal encodings ``[n, dim]`` of the positions ``n-1, ..., 0`` (the official module's order: the
    newest entry of a chunk has position 0), timescales from ``min_timescale`` to ``max_timescale``."""
    pos = torch.arange(n - 1, -1, -1, dtype=torch.float64)
    half = dim // 2
    frac = torch.arange(half, dtype=torch.float64) / max(half, 1)
    inv = 1.0 / (min_timescale * (max_timescale / min_timescale) ** frac)
    ang = pos[:, None] * inv[None, :]
    pe = torch.zeros(n, dim, dtype=torch.float64)
    pe[:, :half] = torch.sin(ang)
    pe[:, half: 2 * half] = torch.cos(ang)
    return pe.float()


class _ChunkAttention(nn.Module):
    """Multi-head attention of one query per row over N sets of C vectors, in absorbed form, the N results mixed
    with weights.

    ``forward(z [T, B, D], vecs [T, B, N, C, D], mask [T, B, N, C] | None, w [T, B, N] | None) -> [T, B, D]``:
    ``sum_n w_n MHA(z, vecs_n)`` (heads concatenated, *before* the output projection: the caller applies
    ``out``, with its bias scaled by ``sum_n w_n``). Key and value projections are bias-free (a key bias
    cancels in the softmax). Because the value projection is linear, the weighted sum over the N sets is
    taken on the attended vectors, before projecting: two batched matmuls per read whatever N is.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"HCAM: hidden_size ({dim}) must be a multiple of hcam_heads ({heads})")
        self.h, self.dh = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, z: Tensor, vecs: Tensor, mask: Tensor | None, w: Tensor | None) -> Tensor:
        T, B, D = z.shape
        N, C = vecs.shape[2], vecs.shape[3]
        H, dh, TB = self.h, self.dh, T * B
        q = self.q(z).reshape(TB, H, dh).transpose(0, 1)  # [H, TB, dh]
        qa = torch.bmm(q, self.k.weight.view(H, dh, D)).transpose(0, 1)  # [TB, H, D]: W_k^T q per head
        x = vecs.reshape(TB, N * C, D)
        logits = torch.bmm(qa, x.transpose(1, 2)).view(TB, H, N, C) * (1.0 / math.sqrt(dh))
        if mask is not None:
            logits = logits.masked_fill(~mask.reshape(TB, 1, N, C), float("-inf"))
        att = torch.softmax(logits, dim=-1)
        if w is not None:
            att = att * w.reshape(TB, 1, N, 1)
        ctx = torch.bmm(att.reshape(TB, H, N * C), x)  # [TB, H, D]: sum_n w_n sum_c a_nc x_nc
        v = torch.bmm(ctx.transpose(0, 1), self.v.weight.view(H, dh, D).transpose(1, 2))  # [H, TB, dh]
        return v.transpose(0, 1).reshape(T, B, D)


class HCAMLayer(nn.Module):
    """One HCAM block: memory read (top-k chunks) + local window attention, residual, then FFN (pre-LN)."""

    def __init__(self, dim: int, chunk: int, topk: int, heads: int) -> None:
        super().__init__()
        self.dim, self.chunk, self.topk = dim, chunk, topk
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        # Relevance of chunk summaries: single head, bias-free, VarianceScaling(2.0) as in the official module.
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        std = math.sqrt(2.0 / dim) / 0.87962566  # Haiku's VarianceScaling(2.0, fan_in, truncated normal at 2 std)
        for lin in (self.wq, self.wk):
            nn.init.trunc_normal_(lin.weight, std=std, a=-2 * std, b=2 * std)
        self.mem_att = _ChunkAttention(dim, heads)
        self.local_att = _ChunkAttention(dim, heads)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.register_buffer("pe", sinusoid_positions(chunk, dim), persistent=False)
        # Local window positions by fill level: row p holds the encodings of entries 0..p (entry j is p - j steps
        # old, position 0 = this step; entries after p are masked anyway).
        age = (torch.arange(chunk).view(chunk, 1) - torch.arange(chunk).view(1, chunk)).clamp(min=0)
        self.register_buffer("pe_local", self.pe[chunk - 1 - age], persistent=False)  # [C (pos), C, D]

    def relevance(self, z: Tensor, keys: Tensor, mask: Tensor, age: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The first level of :meth:`read`: which k chunks each query reads and with what weight. z [T, B, D];
        keys [B, N, D]; mask and age as in :meth:`read`. Returns the weights [T, B, k] (a softmax over the
        selected visible chunks; all zero where none is visible) and the chunks' indices [T, B, k]."""
        D = z.shape[-1]
        keys = keys.detach().float()
        qa = F.linear(self.wq(z), self.wk.weight.t())  # (z Wq)·(key Wk) = ((z Wq) Wk^T-side)·key
        logits = torch.einsum("tbd,bnd->tbn", qa, keys) / math.sqrt(D)
        if age is not None:
            logits = logits - TIE_BREAK * age.to(logits.dtype)
        k = min(self.topk, keys.shape[1])
        top_l, top_i = torch.topk(logits.masked_fill(~mask, -1e30), k, dim=-1)  # [T, B, k]
        sel_valid = torch.gather(mask, 2, top_i)
        w = torch.softmax(top_l.masked_fill(~sel_valid, float("-inf")), dim=-1)
        return torch.where(sel_valid, w, torch.zeros_like(w)), top_i  # nothing visible: all zero (not NaN)

    def read(self, z: Tensor, keys: Tensor, contents: Tensor, mask: Tensor, age: Tensor | None = None) -> Tensor:
        """Memory read. z [T, B, D] (queries); keys [B, N, D], contents [B, N, C, D] (stop-gradient);
        mask [T, B, N] bool (chunk n visible to the query at t); age [T, B, N] (chunks written after chunk n,
        before t: 0 for the newest) or None. Returns [T, B, D]; zero where nothing is visible.

        ``age`` breaks ties in the top-k choice: each relevance logit gets ``-TIE_BREAK * age``, so of chunks
        with equal summaries (common with symbolic observations: the same steps in another order) the newer
        wins, whatever order the chunks come in (ring slots when acting, stored + new chunks when training,
        NumPy's argpartition). Without it acting and training picked different chunks on such ties."""
        B = z.shape[1]
        contents = contents.detach().float()
        w, top_i = self.relevance(z, keys, mask, age)
        b_idx = torch.arange(B, device=z.device).view(1, B, 1)
        sel = contents[b_idx, top_i] + self.pe  # [T, B, k, C, D]
        mixed = self.mem_att(z, sel, None, w)  # [T, B, D]
        return F.linear(mixed, self.mem_att.out.weight) + w.sum(-1, keepdim=True) * self.mem_att.out.bias

    def local(self, z: Tensor, acc: Tensor, pos: Tensor) -> Tensor:
        """Causal attention over the chunk being filled: z [T, B, D], acc [T, B, C, D] (z already in
        ``acc[pos]``), pos [T, B] -> [T, B, D]."""
        C = self.chunk
        mask = torch.arange(C, device=z.device).view(1, 1, C) <= pos.unsqueeze(-1)  # [T, B, C]
        pe = self.pe_local[pos]  # [T, B, C, D]: positions count back from the newest entry, as in stored chunks
        return self.local_att.out(self.local_att(z, (acc + pe).unsqueeze(2), mask.unsqueeze(2), None))

    def finish(self, h: Tensor, mem: Tensor, loc: Tensor) -> Tensor:
        """Residual add of both reads, then the pre-LN feed-forward block."""
        h = h + mem + loc
        return h + self.ffn(self.ln2(h))


class HCAMCore(CoreBase):
    """HCAM memory core behind the :class:`~distrl.models.cores.Core` protocol (see the module doc).

    Config: ``hidden_size`` (D), ``num_core_layers`` (L), ``hcam_chunk`` (C), ``hcam_chunks`` (M),
    ``hcam_topk`` (k), ``hcam_heads``, ``hcam_cross_episode``.

    Usage::

        core = HCAMCore(ModelConfig(core="hcam", hidden_size=64), in_dim=64)
        y, state = core(x, reset, core.initial_state(B))
    """

    def __init__(self, cfg: ModelConfig, in_dim: int) -> None:
        super().__init__()
        D = self.dim = cfg.hidden_size
        self.C, self.M, self.L = cfg.hcam_chunk, cfg.hcam_chunks, cfg.num_core_layers
        self.cross_episode = cfg.hcam_cross_episode
        if min(self.C, self.M, self.L, cfg.hcam_topk, cfg.hcam_heads) < 1:
            raise ValueError("HCAM: hcam_chunk, hcam_chunks, hcam_topk, hcam_heads and num_core_layers must be >= 1")
        self.out_dim = D
        self.inp = nn.Linear(in_dim, D) if in_dim != D else nn.Identity()
        self.layers = nn.ModuleList(HCAMLayer(D, self.C, cfg.hcam_topk, cfg.hcam_heads) for _ in range(self.L))
        self.ln_out = nn.LayerNorm(D)

    @property
    def episode_memory(self) -> EpisodeMemorySpec:
        """The append-only state (``mem{l}``, ``key{l}``: rings whose slot ``count % M`` the next chunk writes,
        at most one chunk per C steps), for replay to store each chunk once per stream
        (:mod:`distrl.replay.episode_memory`)."""
        keys = tuple(f"{p}{i}" for i in range(self.L) for p in ("mem", "key"))
        return EpisodeMemorySpec(keys=keys, counter="count", steps_per_item=self.C, ring=self.M,
                                 cleared_at_episode_start=not self.cross_episode)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> CoreState:
        B, M, C, D = batch, self.M, self.C, self.dim
        s: CoreState = {}
        for i in range(self.L):
            s[f"mem{i}"] = torch.zeros(B, M, C, D, device=device)
            s[f"key{i}"] = torch.zeros(B, M, D, device=device)
            s[f"acc{i}"] = torch.zeros(B, C, D, device=device)
        s["pos"] = torch.zeros(B, dtype=torch.int64, device=device)
        s["count"] = torch.zeros(B, dtype=torch.int64, device=device)
        return s

    def random_state(self, batch: int, rng: np.random.Generator) -> CoreState:
        """A random state of the kind acting reaches, for checks that compare two implementations of
        :meth:`step` (:func:`distrl.models.acting.check_numpy_policy`): ``pos`` in [0, C), ``count`` in
        [0, 3M) (so rings both partly filled and wrapped), N(0, 1) entries where a chunk or an entry was
        written, zeros elsewhere, and keys the means of their chunks."""
        B, M, C, D = batch, self.M, self.C, self.dim
        pos = rng.integers(0, C, B)
        count = rng.integers(0, 3 * M, B)
        written = (np.arange(M)[None, :] < np.minimum(count, M)[:, None]).astype(np.float32)  # [B, M]
        filled = (np.arange(C)[None, :] < pos[:, None]).astype(np.float32)  # [B, C]: entries before pos
        s: CoreState = {}
        for i in range(self.L):
            mem = rng.standard_normal((B, M, C, D), dtype=np.float32) * written[:, :, None, None]
            s[f"mem{i}"] = torch.from_numpy(mem)
            s[f"key{i}"] = torch.from_numpy(mem.mean(axis=2))
            s[f"acc{i}"] = torch.from_numpy(rng.standard_normal((B, C, D), dtype=np.float32) * filled[:, :, None])
        s["pos"], s["count"] = torch.from_numpy(pos.astype(np.int64)), torch.from_numpy(count.astype(np.int64))
        return s

    def reset(self, state: CoreState, mask: Tensor) -> CoreState:
        """Episode start for the rows in ``mask`` [B]: everything back to zero, or, with ``hcam_cross_episode``,
        only the chunk being filled (``acc*``, ``pos``); stored chunks stay readable."""
        _check_state(state, self.initial_state(0), "HCAMCore")
        if not self.cross_episode:
            return super().reset(state, mask)
        b = state["pos"].shape[0]
        if mask.shape != (b,):
            raise ValueError(f"reset mask must be [B] = [{b}] bool, got shape {tuple(mask.shape)}")
        m = mask.to(device=state["pos"].device, dtype=torch.bool)
        out = dict(state)
        for i in range(self.L):
            out[f"acc{i}"] = state[f"acc{i}"] * (~m).to(state[f"acc{i}"].dtype).view(b, 1, 1)
        out["pos"] = torch.where(m, torch.zeros_like(state["pos"]), state["pos"])
        return out

    # ---- acting: one step -------------------------------------------------------------------------------------
    def step(self, x: Tensor, state: CoreState) -> tuple[Tensor, CoreState]:
        """One step, no reset: x [B, F] -> (y [B, D], new state). The input state is not modified."""
        if x.dim() != 2:
            raise ValueError(f"HCAMCore.step: x must be [B, F], got {tuple(x.shape)}")
        _check_state(state, self.initial_state(0), "HCAMCore")
        B, C, M = x.shape[0], self.C, self.M
        pos, count = state["pos"], state["count"]
        rows = torch.arange(B, device=x.device)
        complete = pos == C - 1
        any_complete = bool(complete.any())
        slot = count % M
        s_idx = torch.arange(M, device=x.device).view(1, M)
        visible = (s_idx < count.clamp(max=M).view(B, 1)).unsqueeze(0)
        age = torch.remainder(count.view(B, 1) - 1 - s_idx, M).unsqueeze(0)  # slot s holds the newest w = s mod M
        h = self.inp(x)
        new: CoreState = {}
        for i, layer in enumerate(self.layers):
            z = layer.ln1(h)
            acc = state[f"acc{i}"].clone()
            acc[rows, pos] = z
            loc = layer.local(z[None], acc[None], pos[None])[0]
            mem = layer.read(z[None], state[f"key{i}"], state[f"mem{i}"], visible, age)[0]
            h = layer.finish(h, mem, loc)
            mem_i, key_i = state[f"mem{i}"], state[f"key{i}"]
            if any_complete:
                rc, sc = rows[complete], slot[complete]
                chunk = acc[complete]
                mem_i = mem_i.index_put((rc, sc), chunk.to(mem_i.dtype))
                key_i = key_i.index_put((rc, sc), chunk.mean(dim=1).to(key_i.dtype))
                acc = acc * (~complete).to(acc.dtype).view(B, 1, 1)
            new[f"mem{i}"], new[f"key{i}"], new[f"acc{i}"] = mem_i, key_i, acc
        new["pos"] = torch.where(complete, torch.zeros_like(pos), pos + 1)
        new["count"] = count + complete.to(count.dtype)
        return self.ln_out(h), new

    # ---- training: a sequence ---------------------------------------------------------------------------------
    def _counters(self, reset: Tensor, pos0: Tensor, count0: Tensor) -> dict[str, Tensor]:
        """Where every step goes, from the counters alone (values play no part). All [T, B] int64/bool:
        ``pos`` (entry of step t in its chunk), ``complete`` (step t completes a chunk), ``ep`` (episode index
        within the sequence: resets at or before t), ``wmono`` (chunks written before t, counted from the
        state's ``count`` without restarting at episode starts: it orders chunks for the FIFO), ``slot``
        (ring slot step t's chunk goes to), plus ``last_ep`` [B] (index of the last episode)."""
        T, B = reset.shape
        C, M = self.C, self.M
        pos, cnt, w = pos0.clone(), count0.clone(), count0.clone()
        ep = torch.zeros(B, dtype=torch.int64, device=reset.device)
        out = {k: torch.empty(T, B, dtype=torch.int64, device=reset.device) for k in ("pos", "ep", "wmono", "slot")}
        for t in range(T):
            r = reset[t]
            pos = torch.where(r, torch.zeros_like(pos), pos)
            if not self.cross_episode:
                cnt = torch.where(r, torch.zeros_like(cnt), cnt)
            ep = ep + r.to(torch.int64)
            out["pos"][t], out["ep"][t], out["wmono"][t], out["slot"][t] = pos, ep, w, cnt % M
            done = pos == C - 1
            pos = torch.where(done, torch.zeros_like(pos), pos + 1)
            cnt = cnt + done.to(torch.int64)
            w = w + done.to(torch.int64)
        out["complete"] = out["pos"] == C - 1
        out["last_ep"] = ep
        out["pos_final"], out["count_final"] = pos, cnt
        return out

    def forward(self, x: Tensor, reset: Tensor, state: CoreState) -> tuple[Tensor, CoreState]:
        if x.dim() != 3 or reset.shape != x.shape[:2]:
            raise ValueError(f"HCAMCore: x must be [T, B, F] and reset [T, B]; got {tuple(x.shape)} and "
                             f"{tuple(reset.shape)}")
        _check_state(state, self.initial_state(0), "HCAMCore")
        T, B = reset.shape
        C, M, dev = self.C, self.M, x.device
        reset = reset.to(device=dev, dtype=torch.bool)
        if not self.cross_episode:  # a reset at step 0 means: start from the initial state
            state = self.reset(state, reset[0])
        ctr = self._counters(reset, state["pos"], state["count"])
        pos, complete, ep, wmono = ctr["pos"], ctr["complete"], ctr["ep"], ctr["wmono"]
        # Gather plan for the chunk being filled after step t: entry j is step start + j (start = t - pos),
        # or, before the sequence (start + j < 0: the state's partial chunk), the state's acc entry j.
        tt = torch.arange(T, device=dev).view(T, 1, 1)
        jj = torch.arange(C, device=dev).view(1, 1, C)
        src = tt - pos.unsqueeze(-1) + jj  # [T, B, C] source step of entry j
        from_seq = (src >= 0) & (jj <= pos.unsqueeze(-1))
        from_acc = (src < 0)
        b_idx = torch.arange(B, device=dev).view(1, B, 1)
        # Visibility of stored chunks (ring slot s holds the w0-th chunk, w0 = largest w < count, w = s mod M)
        # and of the chunks written at steps s < t during the sequence, for each query t.
        n0 = state["count"]
        s_idx = torch.arange(M, device=dev).view(1, M)
        w0 = s_idx + M * torch.div(n0.view(B, 1) - 1 - s_idx, M, rounding_mode="floor")  # [B, M]
        valid0 = s_idx < n0.clamp(max=M).view(B, 1)
        vis0 = valid0.unsqueeze(0) & (w0.unsqueeze(0) >= wmono.unsqueeze(-1) - M)  # [T, B, M]
        if not self.cross_episode:
            vis0 = vis0 & (ep == 0).unsqueeze(-1)
        earlier = tt.view(T, 1) > torch.arange(T, device=dev).view(1, T)  # [T(query), T(chunk)]: s < t
        vis_new = (earlier.unsqueeze(1) & complete.t().unsqueeze(0)  # [T, B, T]
                   & (wmono.t().unsqueeze(0) >= wmono.unsqueeze(-1) - M))
        if not self.cross_episode:
            vis_new = vis_new & (ep.t().unsqueeze(0) == ep.unsqueeze(-1))
        visible = torch.cat([vis0, vis_new], dim=-1)  # [T, B, M + T]
        age = torch.cat([wmono.unsqueeze(-1) - 1 - w0.unsqueeze(0),  # chunks written after each one, before t
                         wmono.unsqueeze(-1) - 1 - wmono.t().unsqueeze(0)], dim=-1)
        # Final ring: rows that restarted their episode start from zeros; chunks of the last episode are written.
        keep_from_final = complete & ((ep == ctr["last_ep"].view(1, B)) | self.cross_episode)
        write_ts = torch.nonzero(keep_from_final.any(dim=1)).flatten().tolist()

        h = self.inp(x)
        new: CoreState = {}
        for i, layer in enumerate(self.layers):
            z = layer.ln1(h)  # [T, B, D]
            acc0 = state[f"acc{i}"].to(z.dtype)  # [B, C, D]
            g = z[src.clamp(min=0, max=T - 1), b_idx]  # [T, B, C, D]
            acc = torch.where(from_seq.unsqueeze(-1), g,
                              torch.where(from_acc.unsqueeze(-1), acc0.unsqueeze(0), torch.zeros_like(g)))
            loc = layer.local(z, acc, pos)
            acc_d = acc.detach()
            mem0, key0 = state[f"mem{i}"], state[f"key{i}"]
            new_contents = acc_d.to(mem0.dtype).transpose(0, 1)  # [B, T, C, D]: the chunk completed at t
            new_keys = acc_d.mean(dim=2).to(key0.dtype).transpose(0, 1)  # [B, T, D]
            keys = torch.cat([key0, new_keys], dim=1)
            contents = torch.cat([mem0, new_contents], dim=1)
            mem = layer.read(z, keys, contents, visible, age)
            h = layer.finish(h, mem, loc)
            mem_f, key_f = mem0.detach().clone(), key0.detach().clone()
            for t in write_ts:
                rows = torch.nonzero(keep_from_final[t]).flatten()
                sl = ctr["slot"][t, rows]
                mem_f[rows, sl] = new_contents[rows, t]
                key_f[rows, sl] = new_keys[rows, t]
            last = acc_d[T - 1] * (~complete[T - 1]).to(acc_d.dtype).view(B, 1, 1)
            new[f"mem{i}"], new[f"key{i}"], new[f"acc{i}"] = mem_f, key_f, last
        if not self.cross_episode:
            restarted = reset[1:].any(dim=0)  # rows whose last episode began inside the sequence
            if bool(restarted.any()):
                for key in self.episode_memory.keys:
                    new[key] = self._last_episode_only(new[key], restarted, keep_from_final, ctr["slot"])
        new["pos"], new["count"] = ctr["pos_final"], ctr["count_final"]
        return self.ln_out(h), new

    @staticmethod
    def _last_episode_only(ring: Tensor, rows: Tensor, written: Tensor, slot: Tensor) -> Tensor:
        """Zero the ring slots of ``rows`` [B] that no chunk of the row's last episode wrote."""
        B, M = ring.shape[:2]
        hit = torch.zeros(B, M, dtype=torch.bool, device=ring.device)
        tb = torch.nonzero(written)
        if tb.numel():
            hit[tb[:, 1], slot[tb[:, 0], tb[:, 1]]] = True
        clear = rows.view(B, 1) & ~hit
        return ring.masked_fill(clear.view(B, M, *([1] * (ring.dim() - 2))), 0.0)
