"""The acting path of an :class:`~distrl.models.agent.Agent` in NumPy, for CPU env actors.

Why: an env actor alternates a batch of env steps with one batched ``act``. After the env steps (NetHack, ALE)
the CPU's caches and TLBs hold the simulator, not PyTorch, and every PyTorch op then pays for its cold
dispatch path, several times its warm cost. The same math in NumPy (OpenBLAS sgemm and a handful of ufuncs,
with far less code per op) costs much less in that loop. ``tools/bench/actors.py`` measures both inside the
actors (``--inference``); see BENCHMARKS.md for the figures.

What: :class:`NumpyPolicy` wraps an Agent and computes its ``act`` (same weights, same function to float32
rounding) for the parts listed in :func:`numpy_unsupported`'s allow-list, and nothing else. The kernels that need
no PyTorch (the nethack_small and mlp encoders, the lstm and identity cores, the heads, the matmul and work-array
machinery) live in :mod:`distrl.models.numpy_kernels`, built from parameter arrays by name; this module builds
them from the Agent's modules and adds those that need PyTorch or a module (the CNNs' convs, HCAM). There,
:class:`~distrl.models.numpy_kernels.KernelPolicy` builds the same kernels from the config and published weights
alone, for env actors that never load torch. Covered here:

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
from distrl.models.numpy_kernels import (
    MODEL_OPTIONS,
    Encode,
    IdentityKernel,
    LSTMKernel,
    NumpyActing,
    Params,
    Workspace,
    affine_relu,
    dense,
    mlp_kernel,
    nethack_small_kernel,
)
from distrl.types import as_numpy as _as_array

Array = np.ndarray


# ---- what this module implements: an explicit allow-list ---------------------------------------------------
# Anything not listed here is refused by name (numpy_unsupported), so a new model option or layer makes the
# actor act through PyTorch until a NumPy kernel for it is written and listed, instead of being skipped.

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


def _params(module: nn.Module) -> Params:
    """``module``'s parameters and buffers as a :class:`~distrl.models.numpy_kernels.Params` view (NumPy, no copy)."""
    return Params({k: v.detach().numpy() for k, v in module.state_dict().items()})


# ---- encoders: encode(obs, n, out) writes the [n, out_dim] features into ``out`` ---------------------------
def _nethack_small(enc: NetHackSmallEncoder, ws: Workspace) -> Encode:
    return nethack_small_kernel(_params(enc), ws)


def _mlp(enc: MLPEncoder, ws: Workspace) -> Encode:
    return mlp_kernel(_params(enc), ws, tuple(enc.keys))


def _pixel_cnn(enc: NatureCNN | ImpalaCNN, ws: Workspace) -> Encode:
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
    fc_w, fc_b = dense(_params(enc), "fc")
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
        affine_relu(h.numpy(), fc_mm, fc_b, out)

    return encode


_TORCH_CONV_ENCODERS = (NatureCNN, SmallCNN, ImpalaCNN)
_ENCODERS: dict[type, Callable[[Any, Workspace], Encode]] = {
    NetHackSmallEncoder: _nethack_small,
    MLPEncoder: _mlp,
    **{cls: _pixel_cnn for cls in _TORCH_CONV_ENCODERS},
}


# ---- cores: input(n) is where the encoder writes; step(n, state) -> (features [n, H], next state) -------------
def _lstm(core: LSTMCore, in_dim: int, ws: Workspace) -> LSTMKernel:
    return LSTMKernel(_params(core), in_dim, ws)


def _identity(core: IdentityCore, in_dim: int, ws: Workspace) -> IdentityKernel:
    return IdentityKernel(_params(core), in_dim, ws)


_CORES: dict[type, Any] = {
    LSTMCore: _lstm,
    IdentityCore: _identity,
    HCAMCore: HCAMKernel,  # distrl/models/numpy_hcam.py; also has initial_state, reset and arrays
}
assert set(_ENCODERS) == set(ENCODER_PARTS) and set(_CORES) == set(CORE_PARTS), "kernels and allow-list differ"


class NumpyPolicy(NumpyActing):
    """:class:`~distrl.models.agent.Agent` ``act`` in NumPy (see the module doc). Implements the env actor's
    ``Policy``: ``initial_state``, ``reset_state``, ``act`` (:class:`~distrl.models.numpy_kernels.NumpyActing`),
    ``load_state_dict``, ``state_dict``."""

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
        ws = Workspace(self._plans, self.conv_dtype)
        self._encode = _ENCODERS[type(a.encoder)](a.encoder, ws)
        self._core = _CORES[type(a.core)](a.core, a.encoder.out_dim, ws)
        self._set_heads(_params(a.heads), ws)

    @property
    def core(self) -> nn.Module:
        """The agent's core, as ``Agent.core``: the env actor reads what the core declares from it (HCAM's
        ``episode_memory``, for the sequence writer to store each chunk once)."""
        return self.agent.core

    def set_conv_dtype(self, dtype: torch.dtype) -> None:
        """Run a CNN encoder's conv stack in ``dtype`` from now on (``actor.precision``); re-copies the weights."""
        self.conv_dtype = dtype
        self.sync()

    # ---- Policy (initial_state, reset_state, act: NumpyActing) ---------------------------------------------
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
        self._encode = _ENCODERS[type(self.encoder)](self.encoder, Workspace(self._plans))

    def __call__(self, obs: Mapping[str, Any]) -> Array:
        flat = {k: _as_array(obs[k]) for k in self.keys}
        n = int(flat[self.keys[0]].shape[0])
        out = np.empty((n, self.out_dim), dtype=np.float32)
        self._encode(flat, n, out)
        return out
