"""Observation encoders: ``obs`` (dict of ``[*lead, ...]`` tensors, env spec dtypes) → ``[*lead, F]``.

Every encoder takes observation leaves with arbitrary leading dims (``[T, B, ...]`` on the learner,
``[B, ...]`` when acting): it flattens the leading dims, runs, and restores them. Raw dtypes (uint8 pixels,
int16 glyphs, int64 blstats) are converted and normalised *inside* the encoder, so actors ship observations
as the env produced them.

Encoders are picked by :attr:`distrl.config.ModelConfig.encoder` through :func:`build_encoder` ('auto' picks
by the env family). Models never import :mod:`distrl.envs`: a spec here is anything with ``obs`` (a mapping
from key to an object with ``shape`` and ``dtype``), ``num_actions`` and ``family``, which
:class:`distrl.envs.base.EnvSpec` is.

Usage::

    enc = build_encoder(cfg.model, spec)
    feat = enc(obs)             # obs leaves [T, B, ...] -> feat [T, B, enc.out_dim]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distrl.config import ModelConfig
from distrl.models.images import image_chw, pick_image_key

# NLE's glyph count (nle.nethack.MAX_GLYPH for NLE 0.9 - 1.x). Used when nle is not importable so that a
# learner host without the minihack extra builds the same parameter shapes as the actors.
NLE_MAX_GLYPH = 5976


class ArraySpecLike(Protocol):
    shape: tuple[int, ...]
    dtype: Any


class EnvSpecLike(Protocol):
    """The part of :class:`distrl.envs.base.EnvSpec` models use (models must not import distrl.envs)."""

    name: str
    obs: Mapping[str, ArraySpecLike]
    num_actions: int
    family: str


# ------------------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------------------


def num_glyphs() -> int:
    """Glyph vocabulary size: NLE's MAX_GLYPH when nle is installed, else the NLE 1.x constant."""
    try:
        from nle import nethack  # lazy: nle is an optional extra and slow-ish to import
    except ImportError:
        return NLE_MAX_GLYPH
    return int(nethack.MAX_GLYPH)


def _lead_dims(x: Tensor, spec: ArraySpecLike, key: str) -> tuple[int, ...]:
    nd = len(spec.shape)
    if x.dim() < nd or tuple(x.shape[x.dim() - nd:]) != tuple(spec.shape):
        raise ValueError(
            f"observation {key!r}: expected trailing shape {tuple(spec.shape)} (after leading [T, B] or [B] "
            f"dims), got {tuple(x.shape)}"
        )
    return tuple(x.shape[: x.dim() - nd])


def _flatten_obs(
    obs: Mapping[str, Tensor], specs: Mapping[str, ArraySpecLike], keys: Sequence[str]
) -> tuple[tuple[int, ...], dict[str, Tensor]]:
    """Check that every key is present with the same leading dims; return (lead, {key: [N, *spec.shape]})."""
    lead: tuple[int, ...] | None = None
    flat: dict[str, Tensor] = {}
    for k in keys:
        if k not in obs:
            raise KeyError(f"observation key {k!r} missing: the encoder was built for {sorted(keys)}, "
                           f"got {sorted(obs)}")
        x = obs[k]
        ld = _lead_dims(x, specs[k], k)
        if lead is None:
            lead = ld
        elif ld != lead:
            raise ValueError(f"observation {k!r} has leading dims {ld}, but {keys[0]!r} has {lead}")
        flat[k] = x.reshape(-1, *specs[k].shape)
    assert lead is not None, "encoder with no observation keys"
    return lead, flat


def _conv_out(module: nn.Module, in_shape: Sequence[int]) -> int:
    """Flattened output size of ``module`` on a [1, *in_shape] input (computed once, at construction)."""
    with torch.no_grad():
        return int(module(torch.zeros(1, *in_shape)).flatten(1).shape[1])


def symlog(x: Tensor) -> Tensor:
    """sign(x) * log(1 + |x|): squashes counters of any size (score, gold, turn) into a trainable range."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def _orthogonal_init(module: nn.Module, gain: float = math.sqrt(2)) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear):
            nn.init.orthogonal_(m.weight, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _CPULookup(torch.autograd.Function):
    """``F.embedding(idx, table)`` whose CPU backward is one ``index_add_`` (about 3x faster than
    ``embedding_dense_backward`` on the ~2M glyph cells of a [40, 32] MiniHack batch; same sum)."""

    @staticmethod
    def forward(ctx: Any, idx: Tensor, table: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.num_rows = table.shape[0]
        return F.embedding(idx, table)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor]:
        (idx,) = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        out = torch.zeros(ctx.num_rows, g.shape[1], dtype=g.dtype, device=g.device)
        return None, out.index_add_(0, idx.reshape(-1), g)


def embedding_lookup(idx: Tensor, table: Tensor) -> Tensor:
    """[*] int64 ids, [V, D] table → [*, D]; uses :class:`_CPULookup` on CPU, ``F.embedding`` elsewhere."""
    if table.device.type == "cpu" and torch.is_grad_enabled() and table.requires_grad:
        return _CPULookup.apply(idx, table)
    return F.embedding(idx, table)


class Encoder(nn.Module):
    """Base class: ``forward(obs) -> [*lead, out_dim]``; subclasses implement ``encode`` on ``[N, ...]``.

    ``compute_dtype`` is the dtype of the parameters and of the pixels fed to them: float32 unless
    :meth:`set_compute_dtype` changed it (bfloat16 acting, see :meth:`Agent.set_acting_dtype`)."""

    out_dim: int
    keys: tuple[str, ...]
    compute_dtype: torch.dtype = torch.float32

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Cast the parameters to ``dtype``; image inputs are then converted straight to it (one pass)."""
        self.to(dtype)
        self.compute_dtype = dtype

    def __init__(self, spec: EnvSpecLike, keys: Sequence[str]) -> None:
        super().__init__()
        if not keys:
            raise ValueError(f"{type(self).__name__}: no usable observation keys in spec {sorted(spec.obs)}")
        self.keys = tuple(keys)
        self.specs = {k: spec.obs[k] for k in keys}

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        lead, flat = _flatten_obs(obs, self.specs, self.keys)
        y = self.encode(flat)
        return y.reshape(*lead, self.out_dim)

    def encode(self, flat: dict[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


# ------------------------------------------------------------------------------------------------------------
# NetHack / MiniHack
# ------------------------------------------------------------------------------------------------------------


class NetHackEncoder(Encoder):
    """Glyph embeddings + CNN over the full map and over the egocentric crop, blstats MLP, message CNN.

    Uses whichever of ``glyphs`` [21, 79], ``glyphs_crop`` [c, c] (int16), ``blstats`` [27] (int64) and
    ``message`` [256] (uint8) the spec has (at least one). Built to be cheap on a CPU learner: the glyph
    lookup over the 1659 map cells dominates the cost, so the map path reads an 8-wide projection of the
    shared embedding table (projecting the [G, E] table is the same linear map as projecting every looked-up
    cell, at a fraction of the cost) and downsamples with stride-2 convs; the 9×9 crop keeps full width and
    resolution where detail matters. Convs read the looked-up [N, h, w, C] tensor through a permuted
    (channels-last) view, which oneDNN consumes without a copy.

    * glyphs → embedding·P [8] → conv(8→16, s2) → conv(16→32, s2) → conv(32→16) → Linear → 256
    * glyphs_crop → embedding [E] → conv(E→16) → conv(16→16) → Linear → 128
    * blstats → symlog → MLP 64 → 64 (symlog: counters like score and turn span many orders of magnitude)
    * message bytes → embedding 8 → flatten → Linear → 64 (position-aware; a conv1d over 256 bytes costs
      more than the rest of the encoder on CPU)
    * concat → Linear → ReLU → hidden_size

    Usage::

        enc = NetHackEncoder(ModelConfig(), spec)       # spec.obs has glyphs/glyphs_crop/blstats
        feat = enc({"glyphs": g, "glyphs_crop": c, "blstats": s})   # [T, B, 256]
    """

    KEYS = ("glyphs", "glyphs_crop", "blstats", "message")
    MAP_EMBED = 8

    def __init__(self, cfg: ModelConfig, spec: EnvSpecLike) -> None:
        super().__init__(spec, [k for k in self.KEYS if k in spec.obs])
        e = cfg.glyph_embedding_dim
        self.num_glyphs = num_glyphs()
        parts = 0
        if "glyphs" in self.keys or "glyphs_crop" in self.keys:
            self.glyph_embed = nn.Embedding(self.num_glyphs, e)
        if "glyphs" in self.keys:
            h, w = self.specs["glyphs"].shape
            self.map_proj = nn.Linear(e, self.MAP_EMBED, bias=False)
            self.map_cnn = nn.Sequential(
                nn.Conv2d(self.MAP_EMBED, 16, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, 16, 3, stride=1, padding=1), nn.ReLU(),
                nn.Flatten(),
            )
            self.map_fc = nn.Linear(_conv_out(self.map_cnn, (self.MAP_EMBED, h, w)), 256)
            parts += 256
        if "glyphs_crop" in self.keys:
            h, w = self.specs["glyphs_crop"].shape
            self.crop_cnn = nn.Sequential(
                nn.Conv2d(e, 16, 3, padding=1), nn.ReLU(),
                nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                nn.Flatten(),
            )
            self.crop_fc = nn.Linear(_conv_out(self.crop_cnn, (e, h, w)), 128)
            parts += 128
        if "blstats" in self.keys:
            (n,) = self.specs["blstats"].shape
            self.blstats_mlp = nn.Sequential(nn.Linear(n, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
            parts += 64
        if "message" in self.keys:
            (n,) = self.specs["message"].shape
            self.msg_embed = nn.Embedding(256, 8)
            self.msg_fc = nn.Linear(n * 8, 64)
            parts += 64
        self.out_dim = cfg.hidden_size
        self.fc = nn.Linear(parts, self.out_dim)
        _orthogonal_init(self)

    def _map_table(self) -> Tensor:
        """The [G, 8] projected glyph table. With autograd off (acting, evaluation) it is computed once per
        weight update and cached: keyed by the parameters' identities and in-place versions, so
        ``load_state_dict`` and optimizer steps (both bump ``_version``) invalidate it. At acting batch sizes
        the projection costs as much as the whole map CNN."""
        e, p = self.glyph_embed.weight, self.map_proj.weight
        if torch.is_grad_enabled() and (e.requires_grad or p.requires_grad):
            self._table_cache = None
            return self.map_proj(e)
        key = (e.data_ptr(), e._version, p.data_ptr(), p._version, e.device, e.dtype)
        cache = getattr(self, "_table_cache", None)
        if cache is None or cache[0] != key:
            with torch.no_grad():
                cache = (key, self.map_proj(e))
            self._table_cache = cache
        return cache[1]

    def encode(self, flat: dict[str, Tensor]) -> Tensor:
        feats = []
        if "glyphs" in flat:
            table = self._map_table()  # [G, 8]
            # [N, 8, h, w] with NHWC strides
            x = embedding_lookup(flat["glyphs"].long(), table).permute(0, 3, 1, 2)
            feats.append(F.relu(self.map_fc(self.map_cnn(x))))
        if "glyphs_crop" in flat:
            x = embedding_lookup(flat["glyphs_crop"].long(), self.glyph_embed.weight).permute(0, 3, 1, 2)
            feats.append(F.relu(self.crop_fc(self.crop_cnn(x))))
        if "blstats" in flat:
            feats.append(self.blstats_mlp(symlog(flat["blstats"].float())))
        if "message" in flat:
            m = embedding_lookup(flat["message"].long(), self.msg_embed.weight).flatten(1)  # [N, L * 8]
            feats.append(F.relu(self.msg_fc(m)))
        return F.relu(self.fc(torch.cat(feats, dim=1)))


class NetHackSmallEncoder(Encoder):
    """A cheap MiniHack encoder for CPU-bound runs: an MLP over the egocentric glyph crop and the bottom-line
    stats.

    * glyphs_crop [c, c] → embedding [E] → flatten → Linear → 128
    * blstats → symlog → Linear → 64
    * concat → Linear → ReLU → hidden_size

    The full 21×79 map and the message (if the env provides them) are ignored: on tasks whose relevant
    surroundings fit in the crop (Room, MultiRoom's rooms and corridors as they are walked) this is enough, at
    a fraction of :class:`NetHackEncoder`'s cost per sample (``tools/bench/actors.py`` reports both). Set
    ``env.observation_keys=[glyphs_crop, blstats]`` with it so the unused keys are not produced or stored.

    Usage::

        enc = NetHackSmallEncoder(ModelConfig(encoder="nethack_small"), spec)
        feat = enc({"glyphs_crop": c, "blstats": s})   # [T, B, hidden_size]
    """

    KEYS = ("glyphs_crop", "blstats")

    def __init__(self, cfg: ModelConfig, spec: EnvSpecLike) -> None:
        keys = [k for k in self.KEYS if k in spec.obs]
        if "glyphs_crop" not in keys:
            raise ValueError(
                f"NetHackSmallEncoder needs 'glyphs_crop'; env {spec.name!r} has {sorted(spec.obs)} "
                "(add glyphs_crop to env.observation_keys)"
            )
        super().__init__(spec, keys)
        e = cfg.glyph_embedding_dim
        h, w = self.specs["glyphs_crop"].shape
        self.glyph_embed = nn.Embedding(num_glyphs(), e)
        self.crop_fc = nn.Linear(h * w * e, 128)
        parts = 128
        if "blstats" in keys:
            (n,) = self.specs["blstats"].shape
            self.blstats_fc = nn.Linear(n, 64)
            parts += 64
        self.out_dim = cfg.hidden_size
        self.fc = nn.Linear(parts, self.out_dim)
        _orthogonal_init(self)

    def encode(self, flat: dict[str, Tensor]) -> Tensor:
        x = embedding_lookup(flat["glyphs_crop"].long(), self.glyph_embed.weight).flatten(1)  # [N, c*c*E]
        feats = [F.relu(self.crop_fc(x))]
        if "blstats" in flat:
            feats.append(F.relu(self.blstats_fc(symlog(flat["blstats"].float()))))
        return F.relu(self.fc(torch.cat(feats, dim=1)))


# ------------------------------------------------------------------------------------------------------------
# Pixels: Atari
# ------------------------------------------------------------------------------------------------------------


class NatureCNN(Encoder):
    """DQN Nature CNN (Mnih et al. 2015): conv 32×8 s4, 64×4 s2, 64×3 s1, then Linear → hidden_size.

    Reads ``frames`` ([stack, 84, 84] uint8) or the spec's single image key; pixels are scaled by 1/255.

    Usage::

        enc = NatureCNN(ModelConfig(encoder="nature_cnn"), atari_spec)
        feat = enc({"frames": frames})     # frames uint8 [T, B, 4, 84, 84] -> [T, B, 256]
    """

    def __init__(self, cfg: ModelConfig, spec: EnvSpecLike) -> None:
        key = pick_image_key(spec, ("frames",))
        super().__init__(spec, [key])
        self.key = key
        self.channels_last, chw = image_chw(spec.obs[key].shape, key)
        self.cnn = self.conv_stack(chw[0])
        self.out_dim = cfg.hidden_size
        self.fc = nn.Linear(_conv_out(self.cnn, chw), self.out_dim)
        _orthogonal_init(self)
        self.chw = chw

    @staticmethod
    def conv_stack(in_channels: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )

    def encode(self, flat: dict[str, Tensor]) -> Tensor:
        x = _image_input(flat[self.key], self.channels_last, self.chw, self.compute_dtype)
        return F.relu(self.fc(self.cnn(x)))


class SmallCNN(NatureCNN):
    """The DQN network of Mnih et al. 2013: conv 16×8 s4, conv 32×4 s2, then Linear → hidden_size.

    About a third of :class:`NatureCNN`'s multiply-adds per frame; for CPU-bound acting and quick runs. Reads
    the same input as NatureCNN (``frames`` or the spec's single image key).

    Usage::

        enc = SmallCNN(ModelConfig(encoder="small_cnn"), atari_spec)
        feat = enc({"frames": frames})     # [T, B, 4, 84, 84] uint8 -> [T, B, hidden_size]
    """

    @staticmethod
    def conv_stack(in_channels: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_channels, 16, 8, stride=4), nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2), nn.ReLU(),
            nn.Flatten(),
        )


def image_nchw(x: Tensor, channels_last: bool, chw: tuple[int, int, int]) -> Tensor:
    """[N, *spec.shape] raw → [N, C, H, W] view, dtype unchanged (``channels_last, chw`` from the spec's
    image shape, as the image encoders keep them)."""
    if channels_last:
        x = x.permute(0, 3, 1, 2)
    return x.reshape(x.shape[0], *chw)


def _image_input(
    x: Tensor, channels_last: bool, chw: tuple[int, int, int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """[N, *spec.shape] raw → [N, C, H, W] of ``dtype`` (in [0, 1] for integer pixels). Under autocast (the
    learner's bfloat16 encoder) pixels go straight to the autocast dtype: the convs would cast a float32 copy
    to it anyway, and a [T*B, 4, 84, 84] float32 copy is the learner's largest memory pass."""
    x = image_nchw(x, channels_last, chw)
    if dtype == torch.float32 and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    if x.dtype.is_floating_point:
        return x.to(dtype)
    # In place on the fresh float copy: ``x.float() * s`` allocates a second frame-sized buffer, and on CPU
    # glibc hands buffers of that size back to the OS on free, so every call page-faults them in again.
    return x.to(dtype).mul_(1.0 / 255.0)


class _ResidualBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ImpalaCNN(Encoder):
    """IMPALA ResNet (Espeholt et al. 2018, Fig. 3 "large"): 3 stacks of (conv 3×3 → max-pool 3×3 s2 → 2
    residual blocks) with 16, 32, 32 channels (15 conv layers), ReLU, Linear → hidden_size.

    Usage::

        enc = ImpalaCNN(ModelConfig(encoder="impala_cnn"), atari_spec)
        feat = enc({"frames": frames})     # [T, B, 4, 84, 84] uint8 -> [T, B, 256]
    """

    def __init__(self, cfg: ModelConfig, spec: EnvSpecLike, channels: Sequence[int] = (16, 32, 32)) -> None:
        key = pick_image_key(spec, ("frames",))
        super().__init__(spec, [key])
        self.key = key
        self.channels_last, chw = image_chw(spec.obs[key].shape, key)
        layers: list[nn.Module] = []
        c_in = chw[0]
        for c in channels:
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1),
                nn.MaxPool2d(3, stride=2, padding=1),
                _ResidualBlock(c),
                _ResidualBlock(c),
            ]
            c_in = c
        layers += [nn.ReLU(), nn.Flatten()]
        self.cnn = nn.Sequential(*layers)
        self.out_dim = cfg.hidden_size
        self.fc = nn.Linear(_conv_out(self.cnn, chw), self.out_dim)
        self.chw = chw

    def encode(self, flat: dict[str, Tensor]) -> Tensor:
        x = _image_input(flat[self.key], self.channels_last, self.chw, self.compute_dtype)
        return F.relu(self.fc(self.cnn(x)))


# ------------------------------------------------------------------------------------------------------------
# RGB-D (Habitat, MiniWorld)
# ------------------------------------------------------------------------------------------------------------


class RGBDEncoder(Encoder):
    """Small CNN over RGB (+ depth) stacked as channels, MLP over vector observations, concat → hidden_size.

    ``rgb`` [3, H, W] uint8 (scaled by 1/255; [H, W, 3] also accepted) is required; ``depth`` [1, H, W]
    float32 is used as is when present (the adapters normalise it to [0, 1]); every other observation
    (``pointgoal`` [2] float32, polar or Cartesian, GPS/compass, ...) is flattened, cast to float and fed to
    a 2-layer MLP.

    Usage::

        enc = RGBDEncoder(ModelConfig(encoder="rgbd"), spec)
        feat = enc({"rgb": rgb, "depth": depth, "pointgoal": goal})   # [T, B, 256]
    """

    def __init__(self, cfg: ModelConfig, spec: EnvSpecLike) -> None:
        if "rgb" not in spec.obs:
            raise ValueError(
                f"RGBDEncoder needs an 'rgb' observation; env {spec.name!r} has {sorted(spec.obs)}"
            )
        vec_keys = sorted(k for k in spec.obs if k not in ("rgb", "depth"))
        img_keys = ["rgb"] + (["depth"] if "depth" in spec.obs else [])
        super().__init__(spec, img_keys + vec_keys)
        self.img_keys, self.vec_keys = tuple(img_keys), tuple(vec_keys)
        self.layouts = {k: image_chw(spec.obs[k].shape, k) for k in img_keys}
        sizes = {chw[1:] for _, chw in self.layouts.values()}
        if len(sizes) != 1:
            raise ValueError(f"RGBDEncoder: rgb and depth must have the same H×W, got {self.layouts}")
        c = sum(chw[0] for _, chw in self.layouts.values())
        hw = next(iter(sizes))
        self.cnn = nn.Sequential(
            nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 32, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        n_img = _conv_out(self.cnn, (c, *hw))
        self.img_fc = nn.Linear(n_img, 256)
        n_vec = sum(int(np.prod(spec.obs[k].shape)) for k in vec_keys)
        self.vec_mlp: nn.Module | None = None
        parts = 256
        if n_vec:
            self.vec_mlp = nn.Sequential(nn.Linear(n_vec, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
            parts += 64
        self.out_dim = cfg.hidden_size
        self.fc = nn.Linear(parts, self.out_dim)
        _orthogonal_init(self)

    def encode(self, flat: dict[str, Tensor]) -> Tensor:
        imgs = [_image_input(flat[k], *self.layouts[k], self.compute_dtype) for k in self.img_keys]
        feats = [F.relu(self.img_fc(self.cnn(torch.cat(imgs, dim=1))))]
        if self.vec_mlp is not None:
            n = feats[0].shape[0]
            vec = torch.cat([flat[k].reshape(n, -1).float() for k in self.vec_keys], dim=1)
            feats.append(self.vec_mlp(vec))
        return F.relu(self.fc(torch.cat(feats, dim=1)))


# ------------------------------------------------------------------------------------------------------------
# Flat / fake envs
# ------------------------------------------------------------------------------------------------------------


class MLPEncoder(Encoder):
    """Flattens every observation (keys sorted), casts to float, concatenates, 2-layer MLP → hidden_size.

    uint8 observations are taken as pixels and scaled by 1/255; other dtypes are cast as they are.

    Usage::

        enc = MLPEncoder(ModelConfig(encoder="mlp"), spec)
        feat = enc({"obs": x})     # x [T, B, 3] any dtype -> [T, B, 256]
    """

    def __init__(self, cfg: ModelConfig, spec: EnvSpecLike) -> None:
        super().__init__(spec, sorted(spec.obs))
        n_in = sum(max(1, int(np.prod(spec.obs[k].shape))) for k in self.keys)
        self.out_dim = cfg.hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(n_in, self.out_dim), nn.ReLU(), nn.Linear(self.out_dim, self.out_dim), nn.ReLU()
        )
        _orthogonal_init(self)

    def encode(self, flat: dict[str, Tensor]) -> Tensor:
        n = flat[self.keys[0]].shape[0]
        parts = [
            flat[k].reshape(n, -1).float() * (1.0 / 255.0) if flat[k].dtype == torch.uint8
            else flat[k].reshape(n, -1).float()
            for k in self.keys
        ]
        return self.mlp(torch.cat(parts, dim=1))


# ------------------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------------------

ENCODERS: dict[str, Callable[[ModelConfig, EnvSpecLike], Encoder]] = {
    "nethack": NetHackEncoder,
    "nethack_small": NetHackSmallEncoder,
    "nature_cnn": NatureCNN,
    "small_cnn": SmallCNN,
    "impala_cnn": ImpalaCNN,
    "rgbd": RGBDEncoder,
    "mlp": MLPEncoder,
}

AUTO_ENCODER: dict[str, str] = {
    "minihack": "nethack",
    "atari": "nature_cnn",
    "habitat": "rgbd",
    "miniworld": "rgbd",
    "fake": "mlp",
    "memory": "mlp",
}


def encoder_name(cfg: ModelConfig, spec: EnvSpecLike) -> str:
    """The encoder key for this config and env ('auto' resolved by env family)."""
    if cfg.encoder != "auto":
        return cfg.encoder
    if spec.family not in AUTO_ENCODER:
        raise ValueError(
            f"model.encoder=auto: no default encoder for env family {spec.family!r} (env {spec.name!r}); "
            f"set model.encoder to one of {sorted(ENCODERS)}"
        )
    return AUTO_ENCODER[spec.family]


def build_encoder(cfg: ModelConfig, spec: EnvSpecLike) -> Encoder:
    """Build the encoder chosen by ``cfg.encoder`` for ``spec``."""
    name = encoder_name(cfg, spec)
    if name not in ENCODERS:
        raise ValueError(f"model.encoder={name!r} is not one of {sorted(ENCODERS)}")
    return ENCODERS[name](cfg, spec)
