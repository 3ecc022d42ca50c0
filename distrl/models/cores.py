"""Recurrent cores: ``forward(x [T, B, F], reset [T, B], state) -> (y [T, B, H], state)``.

A core owns its state layout. State is a :data:`~distrl.types.CoreState`: a ``dict[str, Tensor]`` of named
tensors, each batch-first ``[B, ...]``, so replay can store it per row and the actor can reset single env
slots.
``reset[t, b]`` means *reset row b to the initial state before step t* (the step-t observation starts an
episode). Resetting happens inside the core, so the Agent never branches on the core type, and an LSTM and an
HCAM memory (state: per-layer ``keys [B, M, D]``, ``contents [B, M, C, D]``, accumulator ...) fit the same
protocol.

Usage::

    core = CORES[cfg.core](cfg, encoder.out_dim)
    state = core.initial_state(batch=B, device="cpu")
    y, state = core(x, reset, state)          # x [T, B, F], reset [T, B] bool -> y [T, B, core.out_dim]
    state = core.reset(state, done)           # done [B] bool: those rows back to the initial state
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distrl.config import ModelConfig
from distrl.types import CoreState


@runtime_checkable
class Core(Protocol):
    """What the Agent needs from a core (LSTM, identity, HCAM)."""

    out_dim: int

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> CoreState:
        """State for ``batch`` fresh episodes; each tensor ``[batch, ...]``."""
        ...

    def reset(self, state: CoreState, mask: Tensor) -> CoreState:
        """Rows where ``mask`` [B] bool is set go back to the initial state. Pure: returns a new dict."""
        ...

    def __call__(self, x: Tensor, reset: Tensor, state: CoreState) -> tuple[Tensor, CoreState]:
        """x [T, B, F] float, reset [T, B] bool (reset before step t), state at step 0.

        Returns (y [T, B, out_dim], state after step T-1)."""
        ...

    def step(self, x: Tensor, state: CoreState) -> tuple[Tensor, CoreState]:
        """The acting path: one step, no resets: x [B, F] → (y [B, out_dim], new state). Equal to
        ``core(x[None], zeros, state)`` with the time dim dropped, with less per-call work."""
        ...


def _check_state(state: CoreState, expected: CoreState, core: str) -> None:
    if set(state) != set(expected):
        raise KeyError(f"{core}: state keys {sorted(state)} do not match the core's {sorted(expected)}")
    for k, v in state.items():
        if v.shape[1:] != expected[k].shape[1:]:
            want = ", ".join(map(str, expected[k].shape[1:]))
            raise ValueError(f"{core}: state[{k!r}] has shape {tuple(v.shape)}, expected [B, {want}]")


class CoreBase(nn.Module):
    """Shared reset logic: rows under ``mask`` take the values of :meth:`initial_state`; a generic
    :meth:`step` through ``forward`` (cores override it with a cheaper one)."""

    out_dim: int

    def step(self, x: Tensor, state: CoreState) -> tuple[Tensor, CoreState]:
        reset = torch.zeros(1, x.shape[0], dtype=torch.bool, device=x.device)
        y, new_state = self(x.unsqueeze(0), reset, state)
        return y[0], new_state

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> CoreState:  # pragma: no cover
        raise NotImplementedError

    def reset(self, state: CoreState, mask: Tensor) -> CoreState:
        if not state:
            return {}
        b = next(iter(state.values())).shape[0]
        if mask.shape != (b,):
            raise ValueError(f"reset mask must be [B] = [{b}] bool, got shape {tuple(mask.shape)}")
        device = next(iter(state.values())).device
        init = self.initial_state(b, device)
        mask = mask.to(device=device, dtype=torch.bool)
        out = {}
        for k, v in state.items():
            m = mask.view(b, *([1] * (v.dim() - 1)))
            out[k] = torch.where(m, init[k].to(v.dtype), v)
        return out


class LSTMCore(CoreBase):
    """Multi-layer LSTM with reset-on-episode-start inside the sequence.

    State ``{"h": [B, L, H], "c": [B, L, H]}`` (batch-first; ``nn.LSTM`` wants ``[L, B, H]``, transposed at
    the boundary). The initial state is zeros, so a reset multiplies the rows by 0.

    Speed: the sequence is split at the time steps where *any* row resets. With no episode start inside the
    sequence it is one fused ``nn.LSTM`` call; with a few starts, one fused call per segment; on the acting
    path (T = 1) and with many starts (typical for short MiniHack episodes on B = 32 rows, where some row
    resets at almost every step) an explicit step loop that computes the input projections of all T steps in
    one matmul, which is faster on CPU than T fused calls of length 1 (oneDNN's per-call overhead). All paths
    compute the same function (to float rounding; tests check them against each other).

    Usage::

        core = LSTMCore(ModelConfig(hidden_size=256, num_core_layers=1), in_dim=256)
        y, s = core(x, reset, core.initial_state(B))
    """

    MAX_SEGMENTS = 4
    """More segments than this and the step loop is used instead of one fused call per segment."""

    def __init__(self, cfg: ModelConfig, in_dim: int) -> None:
        super().__init__()
        self.hidden_size = cfg.hidden_size
        self.num_layers = cfg.num_core_layers
        self.out_dim = cfg.hidden_size
        self.lstm = nn.LSTM(in_dim, cfg.hidden_size, num_layers=cfg.num_core_layers)
        for name, p in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.zeros_(p)
                # Forget-gate bias 1 (Jozefowicz et al. 2015): keeps early gradients flowing through time.
                h = self.hidden_size
                with torch.no_grad():
                    p[h: 2 * h].fill_(0.5)  # two biases (ih, hh) per layer sum to 1
            else:
                nn.init.orthogonal_(p)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> CoreState:
        z = torch.zeros(batch, self.num_layers, self.hidden_size, device=device)
        return {"h": z, "c": z.clone()}

    def reset(self, state: CoreState, mask: Tensor) -> CoreState:
        _check_state(state, self.initial_state(0), "LSTMCore")
        b = state["h"].shape[0]
        if mask.shape != (b,):
            raise ValueError(f"reset mask must be [B] = [{b}] bool, got shape {tuple(mask.shape)}")
        keep = (~mask.to(device=state["h"].device, dtype=torch.bool)).to(state["h"].dtype).view(b, 1, 1)
        return {"h": state["h"] * keep, "c": state["c"] * keep}

    def forward(self, x: Tensor, reset: Tensor, state: CoreState) -> tuple[Tensor, CoreState]:
        if x.dim() != 3 or reset.shape != x.shape[:2]:
            raise ValueError(f"LSTMCore: x must be [T, B, F] and reset [T, B]; got {tuple(x.shape)} and "
                             f"{tuple(reset.shape)}")
        _check_state(state, self.initial_state(0), "LSTMCore")
        t_len = x.shape[0]
        reset = reset.to(device=x.device, dtype=torch.bool)
        if t_len == 1:  # acting: no segment search (a host sync); one fused oneDNN call on one step costs ~2x more
            return self._step_loop(x, reset, state)
        # Segment starts: 0 and every later t where some row resets. One host sync, needed to pick the split.
        inner = torch.nonzero(reset[1:].any(dim=1)).flatten().tolist()
        bounds = [0, *(int(t) + 1 for t in inner), t_len]
        if len(bounds) - 1 > self.MAX_SEGMENTS:
            return self._step_loop(x, reset, state)
        h, c = state["h"], state["c"]
        ys = []
        for i in range(len(bounds) - 1):
            t0, t1 = bounds[i], bounds[i + 1]
            keep = (~reset[t0]).to(x.dtype).view(-1, 1, 1)
            h, c = h * keep, c * keep
            hc = (h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous())
            y, (hn, cn) = self.lstm(x[t0:t1], hc)
            h, c = hn.transpose(0, 1), cn.transpose(0, 1)
            ys.append(y)
        y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=0)
        return y, {"h": h, "c": c}

    def step(self, x: Tensor, state: CoreState) -> tuple[Tensor, CoreState]:
        """One step, no resets, one fused ``lstm_cell`` per layer (the acting path)."""
        h0, c0 = state.get("h"), state.get("c")
        if h0 is None or c0 is None or h0.shape[1:] != (self.num_layers, self.hidden_size) or c0.shape != h0.shape:
            _check_state(state, self.initial_state(0), "LSTMCore")  # raises, naming the key or the shape
            raise ValueError(f"LSTMCore.step: state h {tuple(h0.shape)} and c {tuple(c0.shape)} differ")
        inp = x
        hs, cs = [], []
        for layer in range(self.num_layers):
            h, c = torch.lstm_cell(
                inp, (h0[:, layer], c0[:, layer]),
                getattr(self.lstm, f"weight_ih_l{layer}"), getattr(self.lstm, f"weight_hh_l{layer}"),
                getattr(self.lstm, f"bias_ih_l{layer}"), getattr(self.lstm, f"bias_hh_l{layer}"),
            )
            hs.append(h)
            cs.append(c)
            inp = h
        if self.num_layers == 1:
            return inp, {"h": hs[0].unsqueeze(1), "c": cs[0].unsqueeze(1)}
        return inp, {"h": torch.stack(hs, dim=1), "c": torch.stack(cs, dim=1)}

    def _step_loop(self, x: Tensor, reset: Tensor, state: CoreState) -> tuple[Tensor, CoreState]:
        """The same LSTM written out per step (PyTorch gate order i, f, g, o), layer by layer."""
        keep = (~reset).to(x.dtype).unsqueeze(-1)  # [T, B, 1]
        hs, cs = [], []
        inp = x
        for layer in range(self.num_layers):
            w_ih = getattr(self.lstm, f"weight_ih_l{layer}")
            w_hh = getattr(self.lstm, f"weight_hh_l{layer}")
            bias = getattr(self.lstm, f"bias_ih_l{layer}") + getattr(self.lstm, f"bias_hh_l{layer}")
            xw = F.linear(inp, w_ih, bias)  # [T, B, 4H]: all input projections in one matmul
            h, c = state["h"][:, layer], state["c"][:, layer]
            ys = []
            # unbind, not xw[t]: the backward of T selects writes T zero-filled [T, B, 4H] gradients, of one
            # unbind a single stack.
            for xw_t, keep_t in zip(xw.unbind(0), keep.unbind(0), strict=True):
                h, c = h * keep_t, c * keep_t
                i, f, g, o = (xw_t + F.linear(h, w_hh)).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                ys.append(h)
            inp = torch.stack(ys)
            hs.append(h)
            cs.append(c)
        return inp, {"h": torch.stack(hs, dim=1), "c": torch.stack(cs, dim=1)}


class IdentityCore(CoreBase):
    """No memory: ``y = x``, state ``{}``. For feed-forward agents.

    Usage::

        core = IdentityCore(cfg, in_dim=256)
        y, _ = core(x, reset, {})       # y is x
    """

    def __init__(self, cfg: ModelConfig, in_dim: int) -> None:
        super().__init__()
        self.out_dim = in_dim

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> CoreState:
        return {}

    def forward(self, x: Tensor, reset: Tensor, state: CoreState) -> tuple[Tensor, CoreState]:
        if x.dim() != 3 or reset.shape != x.shape[:2]:
            raise ValueError(f"IdentityCore: x must be [T, B, F] and reset [T, B]; got {tuple(x.shape)} and "
                             f"{tuple(reset.shape)}")
        return x, {}

    def step(self, x: Tensor, state: CoreState) -> tuple[Tensor, CoreState]:
        return x, {}


CORES: dict[str, Callable[[ModelConfig, int], CoreBase]] = {
    "lstm": LSTMCore,
    "identity": IdentityCore,
    "hcam": lambda cfg, in_dim: _hcam_core(cfg, in_dim),
}
"""Core constructors keyed by ``ModelConfig.core``: ``CORES[name](cfg, in_dim)``."""


def _hcam_core(cfg: ModelConfig, in_dim: int) -> CoreBase:
    from distrl.models.hcam import HCAMCore  # hcam.py builds on CoreBase above (imported here, not at the top)

    return HCAMCore(cfg, in_dim)


def build_core(cfg: ModelConfig, in_dim: int) -> CoreBase:
    if cfg.core not in CORES:
        raise ValueError(f"model.core={cfg.core!r} is not available; implemented cores: {sorted(CORES)}")
    return CORES[cfg.core](cfg, in_dim)
