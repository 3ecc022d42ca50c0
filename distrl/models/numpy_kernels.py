"""NumPy kernels of the agent's acting path that need no PyTorch, and :class:`KernelPolicy`, a policy built from
the config and published weights alone: an env actor that acts through it never imports torch.

Why: torch costs a process about 140 MB of PSS (``tools/dev/import_pss.py``; BENCHMARKS.md, "Processes that do
not need torch do not load it"). An env actor whose model is covered here (:func:`kernel_unsupported`) acts
through NumPy anyway (:mod:`distrl.models.numpy_act`), and with its weights published as NumPy arrays
(:class:`~distrl.types.PolicyWeights`) nothing else in it needs torch.

What: the kernels of the ``nethack_small``, ``mlp``, ``nature_cnn`` and ``small_cnn`` encoders (the CNNs' convs
as one matmul each over space-to-depth blocks, :class:`ConvKernel`), the ``lstm`` (any number of layers) and
``identity`` cores and the policy/value heads, each built from a :class:`Params` view of the parameters (NumPy
arrays by state_dict name); matmuls through :class:`Matmul` into reused work arrays (:class:`Workspace`).
:class:`~distrl.models.numpy_act.NumpyPolicy` builds the same kernels from an Agent's modules, so the two paths
compute one function, except the CNNs: there it runs the convs through PyTorch (in bfloat16 where
``actor.precision`` picks it; float32 NumPy convs cost about what PyTorch's float32 ones do), and it adds HCAM.

What is checked, and where: :class:`KernelPolicy` refuses a model option, encoder or core outside the allow-list
(:func:`kernel_unsupported`, from the config alone), and weights that hold a parameter its kernels do not read
or lack one they do (by name, at load). Whether it computes ``Agent.act`` is checked where an Agent exists: the
learner compares the two on random observations when it starts
(:func:`distrl.models.acting.check_kernel_policy`), and tests compare them on every covered model.

Usage::

    policy = KernelPolicy(cfg.model, spec, seed=0)   # raises ValueError if kernel_unsupported(cfg.model, spec)
    policy.load_state_dict(weights.policy)           # NumPy arrays by the Agent's state_dict names
    s = policy.initial_state(16)
    out = policy.act(obs, s)                         # NumPy leaves; out.action [16] int64
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from distrl.config import ExperimentConfig, ModelConfig
from distrl.models.images import image_chw, pick_image_key
from distrl.types import ActOut, CoreState
from distrl.types import as_numpy as _as_array

Array = np.ndarray

MODEL_OPTIONS: dict[str, str] = {
    "encoder": "the encoder's kernel is chosen by its class (numpy_act) or its name (KernelPolicy)",
    "core": "the core's kernel is chosen by its class (numpy_act) or its name (KernelPolicy)",
    "hidden_size": "any width",
    "glyph_embedding_dim": "any width",
    "num_core_layers": "the LSTM and HCAM kernels run any number of layers",
    **{f"hcam_{n}": "the HCAM kernel (distrl.models.numpy_hcam) reads it from the core"
       for n in ("chunk", "chunks", "topk", "heads", "cross_episode")},
    "separate_intrinsic_value": "Agent.act does not read the intrinsic value head",
}
"""The :class:`~distrl.config.ModelConfig` fields the NumPy paths implement, with how."""

KERNEL_ENCODERS = ("nethack_small", "mlp", "nature_cnn", "small_cnn")
"""Encoders :class:`KernelPolicy` runs (``model.encoder``; ``auto`` resolves to ``mlp`` for the fake and memory
envs and to ``nature_cnn`` for Atari, see :data:`AUTO_KERNEL_ENCODER`)."""
KERNEL_CORES = ("lstm", "identity")
"""Cores :class:`KernelPolicy` runs (``model.core``)."""
AUTO_KERNEL_ENCODER = {"fake": "mlp", "memory": "mlp", "atari": "nature_cnn"}
"""``model.encoder=auto`` by env family, where it picks a covered encoder (``distrl.models.encoders.AUTO_ENCODER``
holds the full table; a test keeps the two in agreement)."""
INTRINSIC_PREFIX = "heads.value_int."
"""Parameters of the intrinsic value head, which ``Agent.act`` does not read."""


# ---- parameters by name ----------------------------------------------------------------------------------
class Params:
    """NumPy parameters by state_dict name under ``prefix``, recording which names the kernels read, so weights
    with a parameter no kernel reads are refused by name instead of being ignored.

    Usage::

        p = Params({k: v for k, v in weights.items()})
        enc = p.sub("encoder.")
        table = enc["glyph_embed.weight"]          # float32 array; the name is now read
        p.unread()                                  # names no kernel read, sorted
    """

    def __init__(self, arrays: Mapping[str, Any], prefix: str = "", _read: set[str] | None = None) -> None:
        self.arrays = arrays
        self.prefix = prefix
        self._read: set[str] = set() if _read is None else _read

    def sub(self, prefix: str) -> Params:
        return Params(self.arrays, self.prefix + prefix, self._read)

    def __contains__(self, name: str) -> bool:
        return self.prefix + name in self.arrays

    def __getitem__(self, name: str) -> Array:
        full = self.prefix + name
        if full not in self.arrays:
            raise KeyError(f"weights lack parameter {full!r}, which the NumPy kernels read "
                           f"(have {sorted(self.arrays)})")
        self._read.add(full)
        return np.asarray(_as_array(self.arrays[full]), dtype=np.float32)

    def unread(self, ignore: tuple[str, ...] = ()) -> list[str]:
        return sorted(k for k in self.arrays if k not in self._read and not k.startswith(ignore))


def dense(p: Params, name: str) -> tuple[Array, Array]:
    """(weight transposed to [in, out], contiguous; bias [out]) of the Linear layer ``name``, copied."""
    return np.ascontiguousarray(p[f"{name}.weight"].T), p[f"{name}.bias"].copy()


# ---- matmuls and work arrays -----------------------------------------------------------------------------
class Matmul:
    """``x @ w`` for a fixed weight ``w`` [in, out] into ``out`` (any view with unit inner stride), as one BLAS
    call or as 2-8 blocks of output columns, whichever runs faster here for the batch size at hand.

    Why: for a large product OpenBLAS copies both operands into packed buffers on every call (for an actor's
    16-32 rows that is mostly the weights), while below a size threshold (M·N·K; kernel- and version-specific)
    it runs small-matrix kernels that read them in place. Splitting the columns puts each block under that
    threshold where it exists (BENCHMARKS.md has the figures for one OpenBLAS build), and the env that runs
    next finds more of its data in cache. The block count is chosen the first time a batch size is seen, by
    timing each candidate (fewest blocks unless more are at least 10% faster), and kept in ``plans`` (shared
    across weight loads: it depends on shapes only). Below 8 rows, or with no candidate, one call."""

    def __init__(self, w: Array, plans: dict[tuple[int, int, int], int]) -> None:
        self.w = w
        self.plans = plans
        n_out = w.shape[1]
        self.candidates = [c for c in (1, 2, 4, 8) if n_out % c == 0 and n_out // c >= 16]
        self._blocks: dict[int, list[tuple[slice, Array]]] = {}

    def blocks(self, c: int) -> list[tuple[slice, Array]]:
        if c not in self._blocks:
            width = self.w.shape[1] // c
            cols = [slice(i * width, (i + 1) * width) for i in range(c)]
            self._blocks[c] = [(s, np.ascontiguousarray(self.w[:, s])) for s in cols]
        return self._blocks[c]

    def __call__(self, x: Array, out: Array) -> Array:
        n = x.shape[0]
        key = (self.w.shape[0], self.w.shape[1], n)
        c = self.plans.get(key)
        if c is None:
            c = self.plans[key] = self._choose(x, out)
        if c == 1:
            return np.matmul(x, self.w, out=out)
        for cols, w in self.blocks(c):
            np.matmul(x, w, out=out[:, cols])
        return out

    def _choose(self, x: Array, out: Array) -> int:
        if x.shape[0] < 8 or len(self.candidates) == 1:
            return 1
        best: dict[int, float] = {}
        for c in self.candidates:
            blocks = [(slice(None), self.w)] if c == 1 else self.blocks(c)
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                for cols, w in blocks:
                    np.matmul(x, w, out=out[:, cols])
                times.append(time.perf_counter() - t0)
            best[c] = min(times[2:])
        choice = 1
        for c in self.candidates[1:]:
            if best[c] < 0.9 * best[choice]:
                choice = c
        in_use = {choice} | {v for (k, m, _), v in self.plans.items() if (k, m) == self.w.shape}
        for c in list(self._blocks):  # keep only the blocks some batch size's plan uses
            if c not in in_use:
                del self._blocks[c]
        return choice


def affine_relu(x: Array, w: Matmul, b: Array, out: Array) -> Array:
    """``out = relu(x @ w + b)``, in ``out``."""
    w(x, out)
    out += b
    return np.maximum(out, 0.0, out=out)


class Workspace:
    """Intermediate arrays by batch size, reused between calls (nothing in them escapes a call). Every NumPy
    op costs microseconds of dispatch with the caches full of the env (:mod:`distrl.models.numpy_act`), so
    the kernels write into slices of these instead of concatenating. ``conv_dtype`` is what a PyTorch conv
    stack (the CNN encoders of numpy_act) computes in; the kernels here ignore it."""

    def __init__(self, plans: dict[tuple[int, int, int], int], conv_dtype: Any = None) -> None:
        self._arrays: dict[tuple[str, int], Array] = {}
        self.plans = plans  # Matmul block counts by (in, out, batch), kept across weight loads
        self.conv_dtype = conv_dtype

    def matmul(self, w: Array) -> Matmul:
        return Matmul(w, self.plans)

    def get(self, name: str, n: int, width: int, dtype: Any = np.float32) -> Array:
        a = self._arrays.get((name, n))
        if a is None:
            a = self._arrays[(name, n)] = np.empty((n, width), dtype=dtype)
        return a


# ---- encoders: encode(obs, n, out) writes the [n, out_dim] features into ``out`` ---------------------------
Encode = Callable[[Mapping[str, Array], int, Array], None]


def nethack_small_kernel(p: Params, ws: Workspace) -> Encode:
    """:class:`~distrl.models.encoders.NetHackSmallEncoder`: glyph crop embedding → Linear, symlog blstats →
    Linear (when the weights have ``blstats_fc``), concatenated → ReLU → Linear → ReLU."""
    table = p["glyph_embed.weight"].copy()
    crop_w, crop_b = dense(p, "crop_fc")
    fc_w, fc_b = dense(p, "fc")
    bl = dense(p, "blstats_fc") if "blstats_fc.weight" in p else None
    width, n_crop = fc_w.shape[0], crop_w.shape[1]  # crop features (+ blstats features)
    hidden_b = crop_b if bl is None else np.concatenate([crop_b, bl[1]])
    crop_mm, fc_mm = ws.matmul(crop_w), ws.matmul(fc_w)
    bl_mm = None if bl is None else ws.matmul(bl[0])

    def encode(obs: Mapping[str, Array], n: int, out: Array) -> None:
        hidden = ws.get("nethack_small", n, width)  # [crop features | blstats features]
        x = table.take(obs["glyphs_crop"].reshape(n, -1), axis=0).reshape(n, -1)  # [N, c*c*E]
        crop_mm(x, hidden[:, :n_crop])
        if bl_mm is not None:
            s = np.abs(obs["blstats"], dtype=np.float32)  # symlog: sign(s) * log(1 + |s|)
            np.log1p(s, out=s)
            np.copysign(s, obs["blstats"], out=s)
            bl_mm(s, hidden[:, n_crop:])
        hidden += hidden_b
        np.maximum(hidden, 0.0, out=hidden)
        affine_relu(hidden, fc_mm, fc_b, out)

    return encode


def nethack_small_keys(p: Params) -> tuple[str, ...]:
    """The observation keys the ``nethack_small`` kernel reads, from its weights."""
    return ("glyphs_crop", "blstats") if "blstats_fc.weight" in p else ("glyphs_crop",)


def mlp_kernel(p: Params, ws: Workspace, keys: tuple[str, ...]) -> Encode:
    """:class:`~distrl.models.encoders.MLPEncoder`: ``keys`` flattened (uint8 scaled by 1/255), concatenated,
    two Linear + ReLU layers."""
    (w1, b1), (w2, b2) = dense(p, "mlp.0"), dense(p, "mlp.2")
    mm1, mm2 = ws.matmul(w1), ws.matmul(w2)

    def encode(obs: Mapping[str, Array], n: int, out: Array) -> None:
        parts = []
        for k in keys:
            v = obs[k].reshape(n, -1)
            parts.append(v.astype(np.float32) * np.float32(1.0 / 255.0) if v.dtype == np.uint8
                         else v.astype(np.float32))
        x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        affine_relu(affine_relu(x, mm1, b1, ws.get("mlp", n, w1.shape[1])), mm2, b2, out)

    return encode


CNN_STRIDES: dict[str, tuple[int, ...]] = {"nature_cnn": (4, 2, 1), "small_cnn": (4, 2)}
"""The conv strides (layers ``cnn.0``, ``cnn.2``, ...) of the CNN encoders the kernels run; kernel sizes and
channels come from the weights."""


class ConvKernel:
    """One ``Conv2d`` (square kernel k, stride s dividing k, no padding) + ReLU into NHWC float32, as one matmul
    and (k/s)² shifted adds, with no im2col copy of overlapping patches.

    How: the input is cut into s × s blocks (space-to-depth: ``[N, H/s, W/s, s·s·C]``, one copy that also casts
    to float32). A stride-s conv with a k × k kernel is then a stride-1 conv with a (k/s) × (k/s) kernel over the
    blocks; one matmul against the weights of all (k/s)² kernel offsets side by side gives ``[N, Hb, Wb, (k/s)²,
    C_out]``, and output (i, j) sums offset (a, b) taken at block (i + a, j + b). The matmul computes ``Hb·Wb``
    rather than ``Ho·Wo`` positions (1.1× for Atari's first conv, 1.23× the second, 1.65× a 3 × 3 stride-1 conv)
    against im2col's copy of every patch.

    ``nchw``: the input is ``[N, C, H, W]`` (the env's pixels; a block's features are then ordered (c, sy, sx),
    so the copy reads runs of s pixels, moved as one s-byte word for uint8), else ``[N, H, W, C]`` (features
    (sy, sx, c))."""

    def __init__(self, w: Array, b: Array, stride: int, in_hw: tuple[int, int], ws: Workspace, name: str,
                 nchw: bool = False) -> None:
        cout, cin, k, k2 = w.shape
        s = int(stride)
        if k != k2 or k % s:
            raise ValueError(f"{name}: the NumPy conv kernel runs square kernels whose size the stride divides, "
                             f"got {k}x{k2} with stride {s}")
        kb = k // s
        ho, wo = (in_hw[0] - k) // s + 1, (in_hw[1] - k) // s + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"{name}: a {k}x{k} kernel does not fit a {in_hw[0]}x{in_hw[1]} input")
        self.out_hw = (ho, wo)
        self.grid = (ho + kb - 1, wo + kb - 1)  # blocks read: (grid - 1) * s + k <= input size
        self.s, self.kb, self.cin, self.cout, self.nchw = s, kb, cin, cout, nchw
        # wm[(sy, sx, c) or (c, sy, sx), (a, b, o)] = w[o, c, a*s + sy, b*s + sx]
        w6 = w.reshape(cout, cin, kb, s, kb, s)  # (o, c, a, sy, b, sx)
        wm = w6.transpose((1, 3, 5, 2, 4, 0) if nchw else (3, 5, 1, 2, 4, 0)).reshape(s * s * cin, kb * kb * cout)
        self.mm = ws.matmul(np.ascontiguousarray(wm, dtype=np.float32))
        self.b = np.asarray(b, np.float32).copy()
        self.ws, self.name = ws, name

    def __call__(self, x: Array, n: int, out: Array) -> Array:
        """``x`` ``[n, H, W, C_in]`` (``[n, C_in, H, W]`` with ``nchw``; any dtype and strides) → ``out``
        ``[n, Ho, Wo, C_out]`` float32 (written)."""
        s, kb, (hb, wb), c = self.s, self.kb, self.grid, self.cin
        if not self.nchw and s == 1 and x.dtype == np.float32 and x.flags.c_contiguous and x.shape[1:3] == (hb, wb):
            rows = x.reshape(n * hb * wb, c)
        else:
            rows = self.ws.get(self.name + "/blocks", n * hb * wb, s * s * c)
            self._blocks(x, n, rows)
        y = self.mm(rows, self.ws.get(self.name + "/offsets", n * hb * wb, kb * kb * self.cout))
        y6 = y.reshape(n, hb, wb, kb, kb, self.cout)
        ho, wo = self.out_hw
        np.add(y6[:, :ho, :wo, 0, 0], self.b, out=out)
        for a in range(kb):
            for b in range(kb):
                if a or b:
                    out += y6[:, a: a + ho, b: b + wo, a, b]
        return np.maximum(out, 0.0, out=out)

    def _blocks(self, x: Array, n: int, rows: Array) -> None:
        s, (hb, wb), c = self.s, self.grid, self.cin
        if not self.nchw:
            src = x[:, : hb * s, : wb * s].reshape(n, hb, s, wb, s, c).transpose(0, 1, 3, 2, 4, 5)
            np.copyto(rows.reshape(n, hb, wb, s, s, c), src, casting="unsafe")
            return
        xs = x[:, :, : hb * s, : wb * s]
        if x.dtype == np.uint8 and s in (2, 4, 8) and xs.strides[-1] == 1:
            # s pixels side by side as one s-byte word: a quarter (s = 4) of the elements to move, then one
            # contiguous cast
            word = np.dtype(f"u{s}")
            tmp = self.ws.get(self.name + "/bytes", n * hb * wb, c * s * s, np.uint8)
            src = xs.view(word).reshape(n, c, hb, s, wb).transpose(0, 2, 4, 1, 3)  # (n, hb, wb, c, sy)
            np.copyto(tmp.view(word).reshape(n, hb, wb, c, s), src)
            np.copyto(rows, tmp, casting="unsafe")
            return
        src = xs.reshape(n, c, hb, s, wb, s).transpose(0, 2, 4, 1, 3, 5)  # (n, hb, wb, c, sy, sx)
        np.copyto(rows.reshape(n, hb, wb, c, s, s), src, casting="unsafe")


def cnn_kernel(p: Params, ws: Workspace, strides: tuple[int, ...], key: str, chw: tuple[int, int, int],
               channels_last: bool, pixels: bool) -> Encode:
    """The Atari CNN encoders (:class:`~distrl.models.encoders.NatureCNN`, ``SmallCNN``): conv + ReLU layers
    ``cnn.0, cnn.2, ...`` with ``strides`` (:class:`ConvKernel`), flattened, Linear ``fc`` + ReLU. Reads
    ``obs[key]`` laid out as the spec says (``chw``, ``channels_last``); uint8 ``pixels`` go in unscaled, the
    1/255 folded into the first conv's weights (conv(x / 255, W) = conv(x, W / 255)). The conv output is NHWC,
    so the ``fc`` weight's rows are reordered from PyTorch's NCHW flattening once, at load."""
    c, h, w = chw
    hw, cin = (h, w), c
    layers = []
    for i, s in enumerate(strides):
        wt, b = p[f"cnn.{2 * i}.weight"], p[f"cnn.{2 * i}.bias"]
        if wt.ndim != 4 or wt.shape[1] != cin:
            raise ValueError(f"cnn.{2 * i}.weight has shape {wt.shape}; expected [out, {cin}, k, k]")
        if i == 0 and pixels:
            wt = wt * np.float32(1.0 / 255.0)
        conv = ConvKernel(wt, b, s, hw, ws, f"conv{i}", nchw=i == 0 and not channels_last)
        layers.append(conv)
        hw, cin = conv.out_hw, conv.cout
    fc_w, fc_b = dense(p, "fc")
    ho, wo = hw
    if fc_w.shape[0] != cin * ho * wo:
        raise ValueError(f"fc.weight reads {fc_w.shape[0]} features; the conv stack gives {cin}x{ho}x{wo}")
    fc_w = np.ascontiguousarray(fc_w.reshape(cin, ho, wo, -1).transpose(1, 2, 0, 3).reshape(ho * wo * cin, -1))
    fc_mm = ws.matmul(fc_w)

    def encode(obs: Mapping[str, Array], n: int, out: Array) -> None:
        x = obs[key].reshape(n, h, w, c) if channels_last else obs[key].reshape(n, c, h, w)
        for i, conv in enumerate(layers):
            (oh, ow), oc = conv.out_hw, conv.cout
            y = ws.get(f"conv{i}/out", n * oh * ow, oc).reshape(n, oh, ow, oc)
            conv(x, n, y)
            x = y
        affine_relu(x.reshape(n, -1), fc_mm, fc_b, out)

    return encode


# ---- cores: input(n) is where the encoder writes; step(n, state) -> (features [n, H], next state) -------------
class LSTMKernel:
    """``nn.LSTM`` one step (``lstm.*_l{i}`` parameters). Per layer one matmul over ``[x, h]`` (the two weight
    matrices stacked) and one tanh over all four gates: the gate columns are reordered (i, f, o, g) and the
    sigmoid gates' rows halved at load, since sigmoid(z) = (tanh(z / 2) + 1) / 2."""

    def __init__(self, p: Params, in_dim: int, ws: Workspace) -> None:
        L = 0
        while f"lstm.weight_ih_l{L}" in p:
            L += 1
        if L == 0:
            raise KeyError("weights lack the LSTM core's parameters (lstm.weight_ih_l0, ...)")
        H = p["lstm.weight_hh_l0"].shape[1]
        self.H, self.L = H, L
        self.in_dims = [in_dim] + [H] * (L - 1)
        self.ws = ws
        order = np.r_[0: 2 * H, 3 * H: 4 * H, 2 * H: 3 * H]  # PyTorch's (i, f, g, o) -> (i, f, o, g)
        scale = np.r_[np.full(3 * H, 0.5, np.float32), np.ones(H, np.float32)]
        self.layers = []
        for i in range(L):
            w_ih, w_hh, b_ih, b_hh = (p[f"lstm.{n}_l{i}"] for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            w = np.concatenate([w_ih, w_hh], axis=1)[order] * scale[:, None]  # [4H, in + H]
            self.layers.append((ws.matmul(np.ascontiguousarray(w.T)), (b_ih + b_hh)[order] * scale))

    def initial_state(self, batch: int) -> CoreState:
        z = np.zeros((batch, self.L, self.H), np.float32)
        return {"h": z, "c": z.copy()}

    def input(self, n: int) -> Array:
        return self.ws.get("lstm0", n, self.in_dims[0] + self.H)[:, : self.in_dims[0]]

    def step(self, n: int, state: CoreState) -> tuple[Array, CoreState]:
        H, L = self.H, self.L
        h0, c0 = state["h"], state["c"]  # [n, L, H]
        hs, cs = [], []
        h = None
        for i, (w, b) in enumerate(self.layers):
            d = self.in_dims[i]
            xh = self.ws.get(f"lstm{i}", n, d + H)
            if h is not None:
                xh[:, :d] = h
            xh[:, d:] = h0[:, i]
            g = w(xh, np.empty((n, 4 * H), dtype=np.float32))  # [n, 4H]: i, f, o halved, then g
            g += b
            np.tanh(g, out=g)
            sig = g[:, : 3 * H]
            sig *= 0.5
            sig += 0.5
            c = sig[:, H: 2 * H] * c0[:, i]
            c += sig[:, :H] * g[:, 3 * H:]
            h = np.tanh(c)
            h *= sig[:, 2 * H:]
            hs.append(h)
            cs.append(c)
        assert h is not None
        if L == 1:  # views, no copies
            return h, {"h": h.reshape(n, 1, H), "c": cs[0].reshape(n, 1, H)}
        return h, {"h": np.stack(hs, axis=1), "c": np.stack(cs, axis=1)}


class IdentityKernel:
    def __init__(self, p: Params, in_dim: int, ws: Workspace) -> None:
        self.in_dim, self.ws = in_dim, ws

    def initial_state(self, batch: int) -> CoreState:
        return {}

    def input(self, n: int) -> Array:
        return self.ws.get("identity", n, self.in_dim)

    def step(self, n: int, state: CoreState) -> tuple[Array, CoreState]:
        return self.ws.get("identity", n, self.in_dim), state


def heads_kernel(p: Params, ws: Workspace, output_affine: Any = None) -> tuple[Matmul, Array, Array]:
    """The policy logits and the value from one matmul (columns ``[0, A)`` and ``A``): (matmul, weight, bias).
    ``output_affine``: a core's last scale and shift (HCAM's LayerNorm), folded into the weights."""
    (pw, pb), (vw, vb) = dense(p, "policy.fc"), dense(p, "value.fc")
    hw, hb = np.concatenate([pw, vw], axis=1), np.concatenate([pb, vb])
    if output_affine is not None:
        g, b = (np.asarray(v, np.float64) for v in output_affine)
        hw64 = hw.astype(np.float64)
        hw, hb = (g[:, None] * hw64).astype(np.float32), (b @ hw64 + hb).astype(np.float32)
    hw = np.ascontiguousarray(hw)
    return ws.matmul(hw), hw, hb


# ---- the policy ------------------------------------------------------------------------------------------
class NumpyActing:
    """``Agent.act`` over kernels (an encode function, a core kernel, the heads): the env actor's ``Policy``
    methods ``initial_state``, ``reset_state`` and ``act``. Subclasses build the kernels (:meth:`_build`)."""

    num_actions: int
    _keys: tuple[str, ...]
    _specs: Mapping[str, Any]
    _state_keys: list[str]
    _encode: Encode
    _core: Any
    _heads: Matmul
    _hw: Array
    _hb: Array
    _rng: np.random.Generator

    def _set_heads(self, p: Params, ws: Workspace) -> None:
        self._heads, self._hw, self._hb = heads_kernel(p, ws, getattr(self._core, "output_affine", None))

    def initial_state(self, batch: int, device: Any = "cpu") -> CoreState:
        return self._core.initial_state(batch)

    def reset_state(self, state: CoreState, mask: Any) -> CoreState:
        """Rows under ``mask`` [B] bool go back to the initial (zero) state. Pure: returns new arrays."""
        if not state:
            return state
        if hasattr(self._core, "reset"):
            return self._core.reset(state, mask)
        keep = ~_as_array(mask).astype(bool)
        return {k: v * keep.reshape(-1, *([1] * (v.ndim - 1))).astype(v.dtype) for k, v in state.items()}

    def act(self, obs: Mapping[str, Any], state: CoreState, greedy: bool = False) -> ActOut:
        """``Agent.act`` for B slots: obs leaves ``[B, ...]`` (NumPy or CPU tensors). Returns NumPy arrays:
        ``action [B] int64, logits [B, A] float32, value [B] float32`` and the next state."""
        flat = {}
        n = -1
        for k in self._keys:
            if k not in obs:
                raise KeyError(f"observation key {k!r} missing; the agent needs {list(self._keys)}, "
                               f"got {sorted(obs)}")
            v = _as_array(obs[k])
            shape = tuple(self._specs[k].shape)
            if v.shape[1:] != shape or (n >= 0 and v.shape[0] != n):
                raise ValueError(f"observation {k!r} has shape {v.shape}; expected [B, {', '.join(map(str, shape))}]"
                                 f" with one B for all keys")
            n = v.shape[0]
            flat[k] = v
        if set(state) != set(self._state_keys):
            raise KeyError(f"core state keys {sorted(state)} do not match the core's {self._state_keys}")
        st = self._core.arrays(state) if hasattr(self._core, "arrays") else {k: _as_array(v) for k, v in state.items()}
        for k, v in st.items():
            if v.shape[0] != n:
                raise ValueError(f"core state {k!r} has batch {v.shape[0]}, observations have {n}")
        self._encode(flat, n, self._core.input(n))
        y, new_state = self._core.step(n, st)
        out = self._heads(y, np.empty((n, self._hw.shape[1]), dtype=np.float32))
        out += self._hb
        logits, value = out[:, : self.num_actions], out[:, self.num_actions]
        if greedy:
            action = logits.argmax(axis=1)
        else:  # Gumbel-max: argmax(logits + G), G ~ Gumbel(0, 1) i.i.d., is a softmax sample
            action = (self._rng.gumbel(size=logits.shape) + logits).argmax(axis=1)
        return ActOut(action=action.astype(np.int64, copy=False), logits=logits, value=value, state=new_state)


def kernel_encoder(cfg: ModelConfig, family: str) -> str:
    """``model.encoder`` with ``auto`` resolved where it picks an encoder :class:`KernelPolicy` runs (else as is)."""
    return AUTO_KERNEL_ENCODER.get(family, cfg.encoder) if cfg.encoder == "auto" else cfg.encoder


def kernel_unsupported(cfg: ModelConfig, spec: Any) -> str | None:
    """Why :class:`KernelPolicy` cannot run ``cfg`` on env ``spec`` (None when it can), from the config alone."""
    problems = []
    unknown = [f.name for f in dataclasses.fields(cfg) if f.name not in MODEL_OPTIONS]
    if unknown:
        problems.append(f"model option(s) {', '.join('model.' + n for n in unknown)} not implemented")
    enc = kernel_encoder(cfg, spec.family)
    if enc not in KERNEL_ENCODERS:
        problems.append(f"encoder {enc!r} (runs {', '.join(KERNEL_ENCODERS)})")
    elif enc == "nethack_small" and "glyphs_crop" not in spec.obs:
        problems.append(f"nethack_small needs the glyphs_crop observation (env has {sorted(spec.obs)})")
    elif enc in CNN_STRIDES:
        try:
            image_chw(spec.obs[pick_image_key(spec, ("frames",))].shape, enc)
        except ValueError as e:
            problems.append(str(e))
    if cfg.core not in KERNEL_CORES:
        problems.append(f"core {cfg.core!r} (runs {', '.join(KERNEL_CORES)})")
    return "; ".join(problems) or None


def sampling_seed(actor_seed: int) -> int:
    """The seed of a NumPy policy's action sampling from the actor's env seed: a stream of its own, not the env
    seed's (the VecEnv draws from that one)."""
    return int(np.random.SeedSequence(entropy=int(actor_seed), spawn_key=(0xAC7, 0x5A3)).generate_state(1)[0])


def kernel_policy_applies(cfg: ExperimentConfig, spec: Any) -> bool:
    """Whether a Ray env actor of run ``cfg`` acts through :class:`KernelPolicy` (and so loads no torch for its
    policy): a CPU actor (``actor.device=cpu``) with ``actor.inference`` ``auto`` or ``numpy`` whose model the
    kernels run (:func:`kernel_unsupported`), and for a CNN encoder no ``actor.precision=bfloat16`` (the kernels
    compute in float32; bfloat16 convs run through PyTorch). The learner uses the same test to decide whether to
    check the kernels against ``Agent.act`` when it starts (:func:`distrl.models.acting.check_kernel_policy`)."""
    a = cfg.actor
    if a.precision == "bfloat16" and kernel_encoder(cfg.model, spec.family) in CNN_STRIDES:
        return False  # asked for bfloat16 convs: those run through PyTorch (numpy_act)
    return a.device == "cpu" and a.inference in ("auto", "numpy") and kernel_unsupported(cfg.model, spec) is None


class KernelPolicy(NumpyActing):
    """``Agent.act`` for ``cfg`` in NumPy, from published weights alone (no PyTorch; see the module doc).
    Acts once :meth:`load_state_dict` has loaded weights; ``initial_state`` works before."""

    def __init__(self, cfg: ModelConfig, spec: Any, seed: int = 0) -> None:
        why = kernel_unsupported(cfg, spec)
        if why is not None:
            raise ValueError(f"KernelPolicy cannot run this model: {why}")
        self.cfg = cfg
        self.spec = spec
        self.encoder_name = kernel_encoder(cfg, spec.family)
        self.num_actions = int(spec.num_actions)
        self._rng = np.random.default_rng(seed)
        self._plans: dict[tuple[int, int, int], int] = {}
        H, L = cfg.hidden_size, cfg.num_core_layers
        self._state_keys = ["c", "h"] if cfg.core == "lstm" else []
        self._zero_state = (lambda b: {"h": np.zeros((b, L, H), np.float32), "c": np.zeros((b, L, H), np.float32)}
                            ) if cfg.core == "lstm" else (lambda b: {})
        self._loaded = False

    def initial_state(self, batch: int, device: Any = "cpu") -> CoreState:
        return self._zero_state(batch)

    def act(self, obs: Mapping[str, Any], state: CoreState, greedy: bool = False) -> ActOut:
        if not self._loaded:
            raise RuntimeError("KernelPolicy.act: no weights loaded yet (load_state_dict first)")
        return super().act(obs, state, greedy)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Build the kernels from ``state_dict`` (the Agent's names; NumPy arrays or CPU tensors). Raises
        KeyError/ValueError naming a parameter the kernels read and the weights lack, one they hold that no
        kernel reads, or a shape that does not fit the config and env."""
        p = Params(state_dict)
        ws = Workspace(self._plans)
        enc = p.sub("encoder.")
        if self.encoder_name == "nethack_small":
            keys = nethack_small_keys(enc)
            encode = nethack_small_kernel(enc, ws)
        elif self.encoder_name in CNN_STRIDES:
            key = pick_image_key(self.spec, ("frames",))
            channels_last, chw = image_chw(self.spec.obs[key].shape, key)
            keys = (key,)
            encode = cnn_kernel(enc, ws, CNN_STRIDES[self.encoder_name], key, chw, channels_last,
                                np.dtype(self.spec.obs[key].dtype) == np.uint8)
        else:
            keys = tuple(sorted(self.spec.obs))
            encode = mlp_kernel(enc, ws, keys)
        in_dim = self.cfg.hidden_size
        core = (LSTMKernel if self.cfg.core == "lstm" else IdentityKernel)(p.sub("core."), in_dim, ws)
        self._encode, self._core = encode, core
        self._set_heads(p.sub("heads."), ws)
        unread = p.unread(ignore=(INTRINSIC_PREFIX,))
        if unread:
            raise ValueError(f"KernelPolicy: the weights hold parameters no NumPy kernel reads: {unread} (a layer "
                             "the kernels do not implement; act through actor.inference=torch)")
        self._check_shapes(core, in_dim)
        self._keys = keys
        self._specs = {k: self.spec.obs[k] for k in keys}
        self._loaded = True

    def _check_shapes(self, core: Any, in_dim: int) -> None:
        cfg = self.cfg
        if isinstance(core, LSTMKernel) and (core.L, core.H) != (cfg.num_core_layers, cfg.hidden_size):
            raise ValueError(f"KernelPolicy: the weights' LSTM has {core.L} layer(s) of {core.H}, the config "
                             f"{cfg.num_core_layers} of {cfg.hidden_size}")
        if self._hw.shape[1] != self.num_actions + 1:
            raise ValueError(f"KernelPolicy: the weights' policy head has {self._hw.shape[1] - 1} actions, the env "
                             f"{self.num_actions}")


__all__ = [
    "AUTO_KERNEL_ENCODER",
    "CNN_STRIDES",
    "KERNEL_CORES",
    "KERNEL_ENCODERS",
    "MODEL_OPTIONS",
    "ConvKernel",
    "IdentityKernel",
    "KernelPolicy",
    "LSTMKernel",
    "Matmul",
    "NumpyActing",
    "Params",
    "Workspace",
    "affine_relu",
    "cnn_kernel",
    "dense",
    "heads_kernel",
    "kernel_encoder",
    "kernel_policy_applies",
    "kernel_unsupported",
    "mlp_kernel",
    "nethack_small_kernel",
    "nethack_small_keys",
    "sampling_seed",
]
