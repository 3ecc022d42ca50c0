"""The agent: encoder → core → heads, with one acting path and one training path sharing the weights.

* :meth:`Agent.act`: one step for B env slots, no autograd; samples an action (or takes the argmax).
* :meth:`Agent.unroll`: a ``[T, B]`` sequence with resets at episode starts; returns :class:`AgentOut`.

``act(obs_t, s_t)`` is exactly ``unroll`` on a length-1 sequence, so the two give the same numbers for the
same inputs (tests check T calls of ``act`` against one ``unroll``).

Usage::

    agent = build_agent(cfg.model, spec)
    state = agent.initial_state(batch=B)
    out = agent.act(obs, state)                       # obs leaves [B, ...] -> ActOut(action [B], ...)
    state = agent.reset_state(out.state, done)        # done [B] bool after env.step
    ...
    res = agent.unroll(traj_obs, reset, traj.core_state)   # obs [T, B, ...], reset [T, B] -> AgentOut
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from distrl.config import ModelConfig
from distrl.models.cores import build_core
from distrl.models.encoders import EnvSpecLike, build_encoder
from distrl.models.heads import PolicyValueHeads
from distrl.types import ActOut, CoreState, as_tensors


@dataclass(frozen=True)
class AgentOut:
    """Outputs of :meth:`Agent.unroll` (time-major)."""

    logits: Tensor  # [T, B, A]
    value: Tensor  # [T, B]: extrinsic value, or the total when there is no separate intrinsic head
    value_int: Tensor | None  # [T, B] when cfg.separate_intrinsic_value (bonus.value_heads=2)
    state: CoreState  # each [B, ...]: core state after the last step
    features: Tensor | None = None  # [T, B, D]: the core's output, what the heads read (set by unroll)


class Agent(nn.Module):
    """Encoder → core → policy/value heads, chosen by :class:`~distrl.config.ModelConfig`.

    Device-agnostic: inputs (torch tensors or NumPy arrays with the spec's dtypes) are moved to the device of
    the parameters; outputs live there too.

    Usage::

        agent = Agent(ModelConfig(), spec)
        s = agent.initial_state(16)
        out = agent.act({"glyphs": g, "blstats": b}, s)      # out.action [16]
        res = agent.unroll(obs_seq, reset_seq, s0)           # res.logits [T, 16, A]
    """

    def __init__(self, cfg: ModelConfig, spec: EnvSpecLike) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_actions = int(spec.num_actions)
        self.obs_keys = tuple(sorted(spec.obs))
        self.encoder = build_encoder(cfg, spec)
        self.core = build_core(cfg, self.encoder.out_dim)
        self.heads = PolicyValueHeads(self.core.out_dim, self.num_actions, cfg.separate_intrinsic_value)
        self.acting_dtype = torch.float32
        self.acting_dtype_timings_us: dict[str, float] | None = None
        """Encoder µs per act in each dtype, when ``actor.precision=auto`` measured them (else None)."""
        self.unroll_dtype = torch.float32
        """What the encoder computes in inside :meth:`unroll`, the learner's forward (``learner.precision``):
        bfloat16 runs it under autocast over the float32 weights (mixed precision: float32 weights, gradients
        and optimizer state; core, heads and losses float32). :meth:`act` is not affected."""

    def set_acting_dtype(self, dtype: torch.dtype) -> None:
        """Run the encoder in ``dtype`` (bfloat16 for cheaper acting; float32 = back to normal).

        Only the encoder changes: its parameters are cast (a later ``load_state_dict`` of float32 weights casts
        again), it runs under autocast and its output goes back to float32, so the core state, logits and values
        stay float32. The logits an actor records are the ones it sampled from, so V-trace's correction stays
        exact; only this agent's copy acts differently from the learner's float32 one (logits differ by ~1e-2
        relative). For actors, not learners: autograd through bfloat16 weights is not what training wants."""
        self.encoder.set_compute_dtype(dtype)
        self.acting_dtype = dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def value_heads(self) -> int:
        """1, or 2 with the separate intrinsic value head (``model.separate_intrinsic_value``)."""
        return self.heads.value_heads

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``, with weights of another number of value heads refused by name first
        (torch's own error would list the intrinsic head's keys as missing or unexpected). Leaves may be NumPy
        arrays (published :class:`~distrl.types.PolicyWeights`) or tensors."""
        got = value_heads_in(state_dict)
        if strict and got != self.value_heads:
            raise ValueError(
                f"Agent.load_state_dict: the weights have {got} value head(s), this agent {self.value_heads}: a "
                "model trained with separate extrinsic and intrinsic value heads loads only into a config with "
                "bonus.value_heads=2 and model.separate_intrinsic_value=true, a one-head model only into one "
                "without"
            )
        return super().load_state_dict(as_tensors(state_dict), strict=strict, assign=assign)

    # ---- state ---------------------------------------------------------------------------------------------
    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> CoreState:
        """Core state for ``batch`` fresh episodes (each tensor ``[batch, ...]``) on ``device``. ``act`` and
        ``unroll`` move the state to the agent's device, so a CPU state works with a CUDA agent."""
        return self.core.initial_state(batch, device)

    def reset_state(self, state: CoreState, mask: Tensor) -> CoreState:
        """Rows where ``mask`` [B] bool is set go back to the initial state. Pure: returns a new dict."""
        return self.core.reset(state, torch.as_tensor(mask, dtype=torch.bool))

    # ---- forward paths -------------------------------------------------------------------------------------
    def _to_device(self, obs: Mapping[str, Any]) -> dict[str, Tensor]:
        dev = self.device
        out = {}
        for k in self.encoder.keys:
            if k not in obs:
                raise KeyError(f"observation key {k!r} missing; the agent needs {list(self.encoder.keys)}, "
                               f"got {sorted(obs)}")
            v = obs[k]
            if isinstance(v, np.ndarray):
                v = torch.from_numpy(np.ascontiguousarray(v))
            out[k] = v.to(dev)
        return out

    def encode(self, obs: Mapping[str, Any], dtype: torch.dtype | None = None) -> Tensor:
        """The encoder step as :meth:`act` and :meth:`unroll` run it: obs leaves ``[*lead, ...]`` (torch or
        NumPy) moved to the agent's device, the encoder in ``dtype`` (default: the acting dtype; under autocast
        when it is not float32), features ``[*lead, F]`` float32. No autograd handling: wrap in
        ``torch.no_grad()`` to act."""
        dtype = self.acting_dtype if dtype is None or dtype == torch.float32 else dtype
        if dtype == torch.float32:
            return self.encoder(self._to_device(obs))
        dev = self.device
        with torch.autocast(device_type=dev.type, dtype=dtype):
            x = self.encoder(self._to_device(obs))
        return x.float()

    def unroll(self, obs: Mapping[str, Tensor], reset: Tensor, state: CoreState) -> AgentOut:
        """Run a sequence.

        Args:
            obs: leaves ``[T, B, ...]`` with the spec's dtypes.
            reset: ``[T, B]`` bool: reset the core state to initial *before* step t.
            state: core state at step 0 (each ``[B, ...]``).
        Returns:
            :class:`AgentOut` with ``logits [T, B, A]``, ``value [T, B]``, ``value_int [T, B] | None``, the
            state after step T-1 and ``features [T, B, D]`` (the core's output, for auxiliary losses).
        """
        x = self.encode(obs, self.unroll_dtype)  # [T, B, F]
        if x.dim() != 3:
            raise ValueError(
                f"unroll expects observations [T, B, ...]; the encoder produced {tuple(x.shape)}"
            )
        dev = x.device
        reset = torch.as_tensor(reset, dtype=torch.bool).to(dev)
        state = {k: v.to(dev) for k, v in state.items()}
        y, new_state = self.core(x, reset, state)
        logits, value, value_int = self.heads(y)
        return AgentOut(logits=logits, value=value, value_int=value_int, state=new_state, features=y)

    @torch.no_grad()
    def burn_in(self, obs: Mapping[str, Tensor], reset: Tensor, state: CoreState, steps: int) -> CoreState:
        """R2D2's burn-in: the core state after the first ``steps`` steps of a sequence (``obs`` and ``reset`` as in
        :meth:`unroll`, at least ``steps`` long), run without autograd from ``state``; ``steps == 0`` returns it."""
        if steps == 0:
            return state
        return self.unroll({k: v[:steps] for k, v in obs.items()}, reset[:steps], state).state

    @torch.no_grad()
    def act(self, obs: Mapping[str, Tensor], state: CoreState, greedy: bool = False) -> ActOut:
        """One step for B slots, no autograd.

        Args:
            obs: leaves ``[B, ...]`` (torch or NumPy, spec dtypes).
            state: core state to use with this observation (already reset where obs starts an episode).
            greedy: take the argmax action instead of sampling.
        Returns:
            ``ActOut(action [B] int64, logits [B, A], value [B], state)`` where ``state`` is the state after
            this observation (apply :meth:`reset_state` for slots whose episode ended).
        """
        # The unroll path on one step without its generic per-call work: the encoder takes [B, ...] leaves
        # directly and the core's step() skips the reset handling (act never resets inside).
        x = self.encode(obs)  # [B, F]
        if x.dim() != 2:
            raise ValueError(f"act expects observations [B, ...]; the encoder produced {tuple(x.shape)}")
        dev = x.device
        y, new_state = self.core.step(x, {k: v.to(dev) for k, v in state.items()})
        logits, value, _ = self.heads(y)
        action = logits.argmax(dim=-1) if greedy else sample_categorical(logits)
        return ActOut(action=action, logits=logits, value=value, state=new_state)


def sample_categorical(logits: Tensor) -> Tensor:
    """One sample per row of ``logits [B, A]`` by the Gumbel-max trick: argmax(logits + Gumbel noise) is
    distributed as softmax(logits) (exactly), at a fraction of ``torch.multinomial``'s CPU cost at acting batch
    sizes (3 elementwise ops instead of softmax + multinomial's per-row set-up). Uses the default generator."""
    # -log(U) for U ~ Uniform(0, 1) is Exp(1), and -log(Exp(1)) is Gumbel(0, 1).
    # (clamped: exponential_ can return exactly 0, whose log would beat every logit, -inf ones included)
    e = torch.empty(logits.shape, dtype=torch.float32, device=logits.device).exponential_()
    e.clamp_(min=torch.finfo(torch.float32).tiny)
    return (logits.float() - e.log()).argmax(dim=-1)


def value_heads_in(state_dict: Mapping[str, Any]) -> int:
    """Value heads (1 or 2) of the model whose :meth:`Agent.state_dict` this is: 2 when it holds the
    intrinsic head's weights."""
    prefix = "heads." + PolicyValueHeads.INTRINSIC_PREFIX
    return 2 if any(str(k).startswith(prefix) for k in state_dict) else 1


def build_agent(cfg: ModelConfig, spec: EnvSpecLike) -> Agent:
    """Build the agent for ``spec`` from ``cfg`` (encoder 'auto' picks by env family)."""
    return Agent(cfg, spec)
