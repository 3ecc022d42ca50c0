"""The acting path of an :class:`~distrl.models.agent.Agent` in NumPy, for CPU env actors.

Why: an env actor alternates a batch of env steps with one batched ``act``. After the env steps (NetHack, ALE)
the CPU's caches and TLBs hold the simulator, not PyTorch, and every PyTorch op then pays for its cold
dispatch path, several times its warm cost. The same math in NumPy (OpenBLAS sgemm and a handful of ufuncs,
with far less code per op) costs much less in that loop. ``tools/bench/actors.py`` measures both inside the
actors (``--inference``); see BENCHMARKS.md for the figures.

What: :class:`NumpyPolicy` wraps an Agent and computes its ``act`` (same weights, same function to float32
rounding) for the parts listed in :func:`numpy_unsupported`'s allow-list, and nothing else:

* model options (:class:`~distrl.config.ModelConfig` fields) ``encoder``, ``core``, ``hidden_size``,
  ``glyph_embedding_dim``, ``num_core_layers``, the ``hcam_*`` options, ``separate_intrinsic_value`` (``act``
  does not read the intrinsic value head); any other option is refused by name until this module says it
  implements it;
* encoders ``nethack_small`` and ``mlp``, and the Atari CNNs (``small_cnn``, ``nature_cnn``, ``impala_cnn``)
  with their conv stack through PyTorch's oneDNN convolutions (NumPy has none; float32, or bfloat16 when
  ``actor.precision`` picks it) and their final Linear in NumPy; cores ``lstm`` (any number of layers),
  ``identity`` and ``hcam`` (:mod:`distrl.models.numpy_hcam`: any number of layers, chunk size, chunks, k,
  heads, within or across episodes); the policy/value heads. Each is checked down to its submodules (names,
  classes, biases), so a layer added to one of them is refused by name rather than skipped.

Where the env actor picks this path (:func:`distrl.models.acting.build_acting_policy`), it first runs a
small side-by-side check against ``Agent.act`` (:func:`distrl.models.acting.check_numpy_policy`) and falls
back to PyTorch, or raises when ``actor.inference=numpy``, if the two differ. Tests compare the two on every
supported model too.

How:

* Weights are copied out of the Agent once per load, laid out for the matmuls (transposed, contiguous; the
  LSTM's two gate matrices stacked into one): a transposed view costs OpenBLAS more per call.
  :meth:`NumpyPolicy.load_state_dict` loads into the Agent and copies again; after changing the Agent's
  parameters any other way, call :meth:`NumpyPolicy.sync`.
* Each NumPy call costs microseconds of dispatch on cold caches, so the kernels make few: matmuls write into
  slices of reused work arrays instead of concatenating, the LSTM runs one tanh over all four gates (sigmoid
  gates' rows halved at load: sigmoid(z) = (tanh(z/2) + 1) / 2), and sampling is one Gumbel draw.
* The CNNs' pixels skip the per-call 1/255 scaling: it is folded into the first conv's weights.
* Actions are sampled by the Gumbel-max trick with one ``[B, A]`` Gumbel draw per call from the policy's own
  ``numpy.random.Generator`` (seeded by the actor), which is exactly softmax sampling; ``greedy=True`` takes
  the argmax.
* Core state is a dict of NumPy arrays with the Agent's layout (``{"h": [B, L, H], "c": [B, L, H]}`` for an
  LSTM); the sequence writer stores it as tensors like any other. HCAM's kernel returns CPU tensors over
  NumPy memory instead (its chunk memory goes through the writer's episode-memory compactor, which reads
  tensors) and has its own ``initial_state``/``reset`` (copy on write; cross-episode memory).

Usage::

    agent = build_agent(cfg.model, spec)
    policy = NumpyPolicy(agent, seed=0)            # raises ValueError if numpy_unsupported(agent)
    s = policy.initial_state(16)
    out = policy.act(obs, s)                       # obs leaves [16, ...] NumPy; out.action [16] int64 NumPy
    s = policy.reset_state(out.state, done)        # done [16] bool
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from distrl.models.agent import Agent
from distrl.models.cores import IdentityCore, LSTMCore
from distrl.models.encoders import ImpalaCNN, MLPEncoder, NatureCNN, NetHackSmallEncoder, SmallCNN, image_nchw
from distrl.models.hcam import HCAMCore, HCAMLayer, _ChunkAttention
from distrl.models.heads import PolicyHead, PolicyValueHeads, ValueHead
from distrl.models.numpy_hcam import HCAMKernel
from distrl.types import ActOut, CoreState
from distrl.types import as_numpy as _as_array

Array = np.ndarray


# ---- what this module implements: an explicit allow-list ---------------------------------------------------
# Anything not listed here is refused by name (numpy_unsupported), so a new model option or layer makes the
# actor act through PyTorch until a NumPy kernel for it is written and listed, instead of being skipped.

MODEL_OPTIONS: dict[str, str] = {
    "encoder": "the encoder's class is checked against ENCODER_PARTS",
    "core": "the core's class is checked against CORE_PARTS",
    "hidden_size": "any width",
    "glyph_embedding_dim": "any width",
    "num_core_layers": "the LSTM and HCAM kernels run any number of layers",
    **{f"hcam_{n}": "the HCAM kernel (distrl.models.numpy_hcam) reads it from the core"
       for n in ("chunk", "chunks", "topk", "heads", "cross_episode")},
    "separate_intrinsic_value": "Agent.act does not read the intrinsic value head",
}
"""The :class:`~distrl.config.ModelConfig` fields the NumPy path implements, with how."""

TORCH_RUN = None
"""Marks a submodule that the NumPy path runs through a copy of the PyTorch module itself (the CNNs' convs)."""
BIAS_FREE = "Linear without a bias"
"""Marks a submodule that must be an ``nn.Linear`` without a bias (the kernel reads no bias for it)."""
Part = type | tuple[type, ...] | str | None
"""What a submodule must be: its exact class, one of several classes, :data:`BIAS_FREE` or :data:`TORCH_RUN`.
Names may use ``*`` for a layer index (``layers.*.ln1``)."""

_CNN_PARTS: dict[str, Part] = {"cnn": TORCH_RUN, "fc": nn.Linear}
ENCODER_PARTS: dict[type, dict[str, Part]] = {
    NetHackSmallEncoder: {"glyph_embed": nn.Embedding, "crop_fc": nn.Linear, "blstats_fc": nn.Linear,
                          "fc": nn.Linear},
    MLPEncoder: {"mlp": nn.Sequential, "mlp.0": nn.Linear, "mlp.1": nn.ReLU, "mlp.2": nn.Linear,
                 "mlp.3": nn.ReLU},
    NatureCNN: _CNN_PARTS,
    SmallCNN: _CNN_PARTS,
    ImpalaCNN: _CNN_PARTS,
}
"""Encoder class (exact, not subclasses) → its submodules the NumPy kernel reads: name → class."""
_ATTENTION: dict[str, Part] = {"q": nn.Linear, "k": BIAS_FREE, "v": BIAS_FREE, "out": nn.Linear}
CORE_PARTS: dict[type, dict[str, Part]] = {
    LSTMCore: {"lstm": nn.LSTM},
    IdentityCore: {},
    HCAMCore: {
        "inp": (nn.Linear, nn.Identity), "layers": nn.ModuleList, "ln_out": nn.LayerNorm,
        "layers.*": HCAMLayer, "layers.*.ln1": nn.LayerNorm, "layers.*.ln2": nn.LayerNorm,
        "layers.*.wq": BIAS_FREE, "layers.*.wk": BIAS_FREE,
        "layers.*.mem_att": _ChunkAttention, **{f"layers.*.mem_att.{n}": p for n, p in _ATTENTION.items()},
        "layers.*.local_att": _ChunkAttention, **{f"layers.*.local_att.{n}": p for n, p in _ATTENTION.items()},
        "layers.*.ffn": nn.Sequential, "layers.*.ffn.0": nn.Linear, "layers.*.ffn.1": nn.ReLU,
        "layers.*.ffn.2": nn.Linear,
    },
}
HEAD_PARTS: dict[type, dict[str, Part]] = {
    PolicyValueHeads: {"policy": PolicyHead, "policy.fc": nn.Linear, "value": ValueHead, "value.fc": nn.Linear,
                       "value_int": ValueHead, "value_int.fc": nn.Linear},  # value_int: act does not read it
}
_LEAVES = (nn.Linear, nn.Embedding, nn.LSTM, nn.LayerNorm)
"""The only modules that may hold parameters or buffers of their own (read by the kernels)..."""
_OWN: dict[type, frozenset[str]] = {HCAMLayer: frozenset({"pe", "pe_local"})}
"""... and these, which hold exactly the buffers named (the HCAM kernel reads its positional encodings)."""


def numpy_unsupported(agent: Agent) -> str | None:
    """Why :class:`NumpyPolicy` cannot run ``agent`` (None when it can): each model option, part or layer
    option outside the allow-list above, by name. Covering every part is necessary, not sufficient: the
    actor also compares the two paths' outputs when it picks this one
    (:func:`distrl.models.acting.check_numpy_policy`)."""
    problems = []
    if type(agent) is not Agent:
        problems.append(f"the agent is a {type(agent).__name__}, not an Agent (its act may differ)")
    if agent.device.type != "cpu":
        problems.append(f"the agent lives on {agent.device}, not the CPU")
    unknown = [f.name for f in dataclasses.fields(agent.cfg) if f.name not in MODEL_OPTIONS]
    if unknown:
        problems.append(f"model option(s) {', '.join('model.' + n for n in unknown)} not implemented by the "
                        f"NumPy path (it implements {', '.join('model.' + n for n in MODEL_OPTIONS)})")
    children = {name for name, _ in agent.named_children()}
    for name in sorted(children - {"encoder", "core", "heads"}):
        problems.append(f"agent part {name} ({type(getattr(agent, name)).__name__}) has no NumPy kernel")
    problems += _uncovered("encoder", agent.encoder, ENCODER_PARTS)
    problems += _uncovered("core", agent.core, CORE_PARTS)
    problems += _uncovered("heads", agent.heads, HEAD_PARTS)
    if getattr(agent.encoder, "compute_dtype", torch.float32) != torch.float32:
        problems.append(f"the encoder computes in {agent.encoder.compute_dtype} (the NumPy path copies float32 "
                        "weights; it runs a CNN's convs in bfloat16 itself when asked)")
    return "; ".join(problems) or None


def _uncovered(part: str, module: nn.Module, table: dict[type, dict[str, Part]]) -> list[str]:
    """Submodules of ``module`` (the agent's ``part``) that the NumPy kernel for its class does not read."""
    parts = table.get(type(module))
    if parts is None:
        return [f"{part} {type(module).__name__} has no NumPy kernel "
                f"(supported: {', '.join(c.__name__ for c in table)})"]
    torch_run = tuple(n for n, cls in parts.items() if cls is TORCH_RUN)
    problems = []
    for name, m in module.named_modules():
        if name and (name in torch_run or name.startswith(tuple(t + "." for t in torch_run))):
            continue
        where = f"{part}.{name}" if name else part
        expected = parts.get(name, parts.get(_LAYER_INDEX.sub(".*", name, count=1))) if name else type(m)
        if expected is BIAS_FREE and type(m) is nn.Linear:
            if m.bias is not None:
                problems.append(f"{where}: Linear with a bias (the NumPy kernel of {type(module).__name__} "
                                "reads none)")
            continue
        if not (type(m) in expected if isinstance(expected, tuple) else type(m) is expected):
            problems.append(f"{where} ({type(m).__name__}) is not a part the NumPy kernel of "
                            f"{type(module).__name__} runs")
            continue
        own = [n for n, _ in m.named_parameters(recurse=False)] + [n for n, _ in m.named_buffers(recurse=False)]
        if own and not isinstance(m, _LEAVES) and set(own) != _OWN.get(type(m)):
            problems.append(f"{where} has its own parameters/buffers {own}, which the NumPy path does not read")
        why = _layer_option(m)
        if why:
            problems.append(f"{where}: {why}")
    return problems


_LAYER_INDEX = re.compile(r"(?<=\w)\.\d+(?=\.|$)")
"""A layer index in a submodule name (the first: ``layers.3.ffn.0``), matched by ``*`` in the allow-list."""


def _layer_option(m: nn.Module) -> str | None:
    """A layer option the NumPy kernels do not implement (None when there is none)."""
    if isinstance(m, nn.Linear) and m.bias is None:
        return "Linear without a bias"
    if isinstance(m, nn.Embedding) and m.max_norm is not None:
        return "Embedding with max_norm"
    if isinstance(m, nn.LSTM) and (not m.bias or m.bidirectional or m.proj_size):
        return f"LSTM with bias={m.bias}, bidirectional={m.bidirectional}, proj_size={m.proj_size}"
    if isinstance(m, nn.LayerNorm) and (not m.elementwise_affine or m.bias is None or len(m.normalized_shape) != 1):
        return (f"LayerNorm with elementwise_affine={m.elementwise_affine}, bias={m.bias is not None}, "
                f"normalized_shape={tuple(m.normalized_shape)}")
    return None


def has_torch_convs(agent: Agent) -> bool:
    """Whether :class:`NumpyPolicy` runs part of ``agent``'s encoder (its conv stack) through PyTorch."""
    return type(agent.encoder) in _TORCH_CONV_ENCODERS


def _dense(layer: torch.nn.Linear) -> tuple[Array, Array]:
    """(weight transposed to [in, out], contiguous; bias [out]), copied out of ``layer``."""
    return np.ascontiguousarray(layer.weight.detach().numpy().T), layer.bias.detach().numpy().copy()


class _Matmul:
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


def _affine_relu(x: Array, w: _Matmul, b: Array, out: Array) -> Array:
    """``out = relu(x @ w + b)``, in ``out``."""
    w(x, out)
    out += b
    return np.maximum(out, 0.0, out=out)


class _Workspace:
    """Intermediate arrays by batch size, reused between calls (nothing in them escapes a call). Every NumPy
    op costs microseconds of dispatch with the caches full of the env (the module doc), so the kernels write
    into slices of these instead of concatenating."""

    def __init__(self, plans: dict[tuple[int, int, int], int], conv_dtype: torch.dtype = torch.float32) -> None:
        self._arrays: dict[tuple[str, int], Array] = {}
        self.plans = plans  # _Matmul block counts by (in, out, batch), kept across weight loads
        self.conv_dtype = conv_dtype  # what the PyTorch conv stacks (CNN encoders) compute in

    def matmul(self, w: Array) -> _Matmul:
        return _Matmul(w, self.plans)

    def get(self, name: str, n: int, width: int) -> Array:
        a = self._arrays.get((name, n))
        if a is None:
            a = self._arrays[(name, n)] = np.empty((n, width), dtype=np.float32)
        return a


# ---- encoders: encode(obs, n, out) writes the [n, out_dim] features into ``out`` ---------------------------
Encode = Callable[[Mapping[str, Array], int, Array], None]


def _nethack_small(enc: NetHackSmallEncoder, ws: _Workspace) -> Encode:
    table = enc.glyph_embed.weight.detach().numpy().copy()
    crop_w, crop_b = _dense(enc.crop_fc)
    fc_w, fc_b = _dense(enc.fc)
    bl = _dense(enc.blstats_fc) if "blstats" in enc.keys else None
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
        _affine_relu(hidden, fc_mm, fc_b, out)

    return encode


def _mlp(enc: MLPEncoder, ws: _Workspace) -> Encode:
    (w1, b1), (w2, b2) = _dense(enc.mlp[0]), _dense(enc.mlp[2])
    mm1, mm2 = ws.matmul(w1), ws.matmul(w2)
    keys = enc.keys

    def encode(obs: Mapping[str, Array], n: int, out: Array) -> None:
        parts = []
        for k in keys:
            v = obs[k].reshape(n, -1)
            parts.append(v.astype(np.float32) * np.float32(1.0 / 255.0) if v.dtype == np.uint8
                          else v.astype(np.float32))
        x = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        _affine_relu(_affine_relu(x, mm1, b1, ws.get("mlp", n, w1.shape[1])), mm2, b2, out)

    return encode


def _pixel_cnn(enc: NatureCNN | ImpalaCNN, ws: _Workspace) -> Encode:
    """Atari CNNs: the conv stack through PyTorch (oneDNN convolutions; NumPy has none), the rest in NumPy.

    The conv stack is a copy of the encoder's with the first conv's weights divided by 255 at load, so the
    uint8 pixels go in as they are (cast to the conv dtype into a reused buffer) instead of being scaled by
    1/255 per call: conv(x / 255, W) + b = conv(x, W / 255) + b (the same function; float32 rounding differs in
    the last bits). The flattened conv features then go through the final Linear + ReLU in NumPy, and the
    core and heads follow in NumPy as for every other encoder."""
    import copy

    key, chw, channels_last = enc.key, enc.chw, enc.channels_last
    pixels = np.dtype(enc.specs[key].dtype) == np.uint8
    dtype = ws.conv_dtype
    cnn = copy.deepcopy(enc.cnn).float().eval()
    if pixels:
        first = next(m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d))
        with torch.no_grad():
            first.weight.mul_(1.0 / 255.0)
    cnn.to(dtype)
    fc_w, fc_b = _dense(enc.fc)
    fc_mm = ws.matmul(fc_w)
    inputs: dict[int, torch.Tensor] = {}

    def encode(obs: Mapping[str, Array], n: int, out: Array) -> None:
        x = image_nchw(torch.from_numpy(np.ascontiguousarray(obs[key])), channels_last, chw)
        buf = inputs.get(n)
        if buf is None:
            buf = inputs[n] = torch.empty((n, *chw), dtype=dtype)
        x = buf.copy_(x)  # exact for uint8 pixels in bfloat16 too (integers up to 256 are representable)
        with torch.inference_mode():
            h = cnn(x)
            if dtype != torch.float32:
                h = h.float()
        _affine_relu(h.numpy(), fc_mm, fc_b, out)

    return encode


_TORCH_CONV_ENCODERS = (NatureCNN, SmallCNN, ImpalaCNN)
_ENCODERS: dict[type, Callable[[Any, _Workspace], Encode]] = {
    NetHackSmallEncoder: _nethack_small,
    MLPEncoder: _mlp,
    **{cls: _pixel_cnn for cls in _TORCH_CONV_ENCODERS},
}


# ---- cores: input(n) is where the encoder writes; step(n, state) -> (features [n, H], next state) -------------
class _LSTM:
    """``nn.LSTM`` one step. Per layer one matmul over ``[x, h]`` (the two weight matrices stacked) and one
    tanh over all four gates: the gate columns are reordered (i, f, o, g) and the sigmoid gates' rows halved
    at load, since sigmoid(z) = (tanh(z / 2) + 1) / 2."""

    def __init__(self, core: LSTMCore, in_dim: int, ws: _Workspace) -> None:
        H, L = self.H, self.L = core.hidden_size, core.num_layers
        self.in_dims = [in_dim] + [H] * (L - 1)
        self.ws = ws
        order = np.r_[0: 2 * H, 3 * H: 4 * H, 2 * H: 3 * H]  # PyTorch's (i, f, g, o) -> (i, f, o, g)
        scale = np.r_[np.full(3 * H, 0.5, np.float32), np.ones(H, np.float32)]
        self.layers = []
        for i in range(L):
            w_ih, w_hh, b_ih, b_hh = (
                getattr(core.lstm, f"{p}_l{i}").detach().numpy()
                for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            )
            w = np.concatenate([w_ih, w_hh], axis=1)[order] * scale[:, None]  # [4H, in + H]
            self.layers.append((ws.matmul(np.ascontiguousarray(w.T)), (b_ih + b_hh)[order] * scale))

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


class _Identity:
    def __init__(self, core: IdentityCore, in_dim: int, ws: _Workspace) -> None:
        self.in_dim, self.ws = in_dim, ws

    def input(self, n: int) -> Array:
        return self.ws.get("identity", n, self.in_dim)

    def step(self, n: int, state: CoreState) -> tuple[Array, CoreState]:
        return self.ws.get("identity", n, self.in_dim), state


_CORES: dict[type, Any] = {
    LSTMCore: _LSTM,
    IdentityCore: _Identity,
    HCAMCore: HCAMKernel,  # distrl/models/numpy_hcam.py; also has initial_state, reset and arrays
}
assert set(_ENCODERS) == set(ENCODER_PARTS) and set(_CORES) == set(CORE_PARTS), "kernels and allow-list differ"


class NumpyPolicy:
    """:class:`~distrl.models.agent.Agent` ``act`` in NumPy (see the module doc). Implements the env actor's
    ``Policy``: ``initial_state``, ``reset_state``, ``act``, ``load_state_dict``, ``state_dict``."""

    def __init__(self, agent: Agent, seed: int = 0, conv_dtype: torch.dtype = torch.float32) -> None:
        why = numpy_unsupported(agent)
        if why is not None:
            raise ValueError(f"NumpyPolicy cannot run this agent: {why}; use actor.inference=torch")
        self.agent = agent
        self.num_actions = agent.num_actions
        self._rng = np.random.default_rng(seed)
        self._keys = agent.encoder.keys
        self._specs = {k: agent.encoder.specs[k] for k in self._keys}
        self._state_keys = sorted(agent.initial_state(0))
        self._plans: dict[tuple[int, int, int], int] = {}
        self.conv_dtype = conv_dtype
        """dtype of the PyTorch conv stack of a CNN encoder (``actor.precision``); the rest is float32."""
        self.sync()

    def sync(self) -> None:
        """Copy the agent's parameters into this policy's NumPy layout (after changing them in place)."""
        a = self.agent
        ws = _Workspace(self._plans, self.conv_dtype)
        self._encode = _ENCODERS[type(a.encoder)](a.encoder, ws)
        self._core = _CORES[type(a.core)](a.core, a.encoder.out_dim, ws)
        h = a.heads
        # policy logits and value from one matmul: columns [0, A) and A
        (pw, pb), (vw, vb) = _dense(h.policy.fc), _dense(h.value.fc)
        hw, hb = np.concatenate([pw, vw], axis=1), np.concatenate([pb, vb])
        affine = getattr(self._core, "output_affine", None)  # a core's last scale and shift, folded in here
        if affine is not None:
            g, b = (np.asarray(v, np.float64) for v in affine)
            hw64 = hw.astype(np.float64)
            hw, hb = (g[:, None] * hw64).astype(np.float32), (b @ hw64 + hb).astype(np.float32)
        self._hw, self._hb = np.ascontiguousarray(hw), hb
        self._heads = ws.matmul(self._hw)

    @property
    def core(self) -> nn.Module:
        """The agent's core, as ``Agent.core``: the env actor reads what the core declares from it (HCAM's
        ``episode_memory``, for the sequence writer to store each chunk once)."""
        return self.agent.core

    def set_conv_dtype(self, dtype: torch.dtype) -> None:
        """Run a CNN encoder's conv stack in ``dtype`` from now on (``actor.precision``); re-copies the weights."""
        self.conv_dtype = dtype
        self.sync()

    # ---- Policy ------------------------------------------------------------------------------------------
    def initial_state(self, batch: int, device: Any = "cpu") -> CoreState:
        if hasattr(self._core, "initial_state"):
            return self._core.initial_state(batch)
        return {k: v.numpy() for k, v in self.agent.initial_state(batch).items()}

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

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.agent.load_state_dict(state_dict)
        self.sync()

    def state_dict(self) -> dict[str, Any]:
        return self.agent.state_dict()


class NumpyEncoder:
    """An encoder's forward alone in NumPy: obs leaves ``[B, ...]`` → ``[B, out_dim]`` float32, with the same
    kernels as :class:`NumpyPolicy` (the env actors' E3B embedding uses it). Raises ValueError naming what
    has no kernel (see :meth:`unsupported`). Call :meth:`sync` after changing the encoder's weights.

    Usage::

        enc = build_encoder(model_cfg, spec)
        fast = NumpyEncoder(enc)
        phi = fast(obs)                    # NumPy [B, enc.out_dim], equal to enc(obs) to float32 rounding
    """

    def __init__(self, encoder: nn.Module) -> None:
        why = self.unsupported(encoder)
        if why is not None:
            raise ValueError(f"NumpyEncoder cannot run this encoder: {why}")
        self.encoder = encoder
        self.keys: tuple[str, ...] = tuple(encoder.keys)
        self.out_dim = int(encoder.out_dim)
        self._plans: dict[tuple[int, int, int], int] = {}
        self.sync()

    @staticmethod
    def unsupported(encoder: nn.Module) -> str | None:
        """Why :class:`NumpyEncoder` cannot run ``encoder`` (None when it can)."""
        problems = _uncovered("encoder", encoder, ENCODER_PARTS)
        if getattr(encoder, "compute_dtype", torch.float32) != torch.float32:
            problems.append(f"the encoder computes in {encoder.compute_dtype}")
        if any(p.device.type != "cpu" for p in encoder.parameters()):
            problems.append("the encoder is not on the CPU")
        return "; ".join(problems) or None

    def sync(self) -> None:
        """Copy the encoder's parameters into the NumPy layout."""
        self._encode = _ENCODERS[type(self.encoder)](self.encoder, _Workspace(self._plans))

    def __call__(self, obs: Mapping[str, Any]) -> Array:
        flat = {k: _as_array(obs[k]) for k in self.keys}
        n = int(flat[self.keys[0]].shape[0])
        out = np.empty((n, self.out_dim), dtype=np.float32)
        self._encode(flat, n, out)
        return out
