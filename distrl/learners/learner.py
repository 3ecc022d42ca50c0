"""The learner: V-trace actor-critic over replayed and fresh sequences (ALGORITHMS.md §5.4).

A plain class: it receives a :class:`~distrl.types.ReplaySample`, takes one optimiser step and returns a
:class:`LearnerOutput` with metrics and new sequence priorities. It never talks to Ray or to replay; the runtime
moves data in and out. :meth:`Learner.step` composes pure pieces: the agent's unroll (burn-in under no_grad),
:mod:`distrl.learners.vtrace` (rewards, per-step weights, the V-trace loss) and the learner extras
(:mod:`distrl.learners.extras`: auxiliary modules with their own losses, optimizer groups, checkpoint entries
and actor weights), so a new loss term or weighting is a new extra, not an edit here. An extra's reward goes
into the extrinsic reward (``intrinsic_reward``) or, with a value head of its own, comes back as a
:class:`~distrl.learners.vtrace.ValueStream` (``value_stream``: the ``bonus`` extra's intrinsic stream with
``bonus.value_heads=2``), which V-trace handles beside the extrinsic head.

Several learners run data-parallel when ``torch.distributed`` is initialised (gloo on CPU, NCCL on GPU):
gradients (the agent's and the extras') are all-reduced (averaged) before the optimiser step, so replicas stay
identical.

Usage::

    learner = Learner(cfg, spec)
    for sample in sampler:                       # ReplaySample, time-major [T, B]
        out = learner.step(sample)
        sampler.update_priorities(out.shard_ids, out.keys, out.priorities)
        if out.version % cfg.learner.publish_every == 0:
            weight_store.publish(learner.weights())
"""

from __future__ import annotations

import copy
import dataclasses
import io
import logging
import math
import operator
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from distrl.config import ConfigError, ExperimentConfig, to_plain
from distrl.envs.base import EnvSpec
from distrl.learners.extras import LearnerBatch, LearnerExtra, build_extras
from distrl.learners.proximal import ProximalPolicy
from distrl.learners.vtrace import HeadLoss, ValueStream, learning_rewards, step_discounts, step_weights, vtrace_loss
from distrl.losses.pg import entropy, kl_categorical, kl_loss, trust_region_mask
from distrl.models.acting import native_bf16
from distrl.models.agent import Agent, build_agent, value_heads_in
from distrl.replay.checkpoint import CheckpointError
from distrl.replay.priorities import sequence_priority
from distrl.storage import atomic_write
from distrl.types import CoreState, PolicyWeights, ReplaySample, Trajectory, as_arrays

CHECKPOINT_SCHEMA = 1  # checkpoints without an 'extras' entry (written before extras existed) load as none

log = logging.getLogger(__name__)


class LearnerCheckpointError(CheckpointError, ValueError):
    """A learner checkpoint is missing, truncated, corrupt, foreign or does not fit this learner. Raised before
    anything is loaded, or after the learner was put back as it was: a refused checkpoint loads nothing."""


@dataclass(frozen=True)
class LearnerOutput:
    metrics: dict[str, float]
    keys: Tensor  # [B] int64, replay keys of the rows trained on
    shard_ids: Tensor  # [B] int64
    priorities: np.ndarray  # [B] float64: new sequence priorities (eta-mixed |v_s - V|, V summed over heads)
    version: int  # learner version after this step
    env_steps: int  # env steps in this batch (post-burn-in steps of fresh rows: the "consumed" count)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def bf16_native_on(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CPU with AVX512-BF16 or AMX, a CUDA GPU that
    supports bfloat16."""
    if device.type == "cpu":
        return native_bf16(device)
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def learner_precision(precision: str, device: torch.device) -> str:
    """The dtype name the learner's encoder trains in for ``learner.precision`` on ``device``: ``auto`` is
    bfloat16 where it is native (:func:`bf16_native_on`), else float32; the others as given."""
    if precision == "auto":
        return "bfloat16" if bf16_native_on(device) else "float32"
    return precision


def _masked_mean(x: Tensor, mask: Tensor, n: float) -> float:
    return float((x * mask).sum() / n)


class Learner:
    def __init__(self, cfg: ExperimentConfig, spec: EnvSpec, device: str | torch.device | None = None) -> None:
        self.cfg = cfg
        self.lcfg = cfg.learner
        self.spec = spec
        self.device = torch.device(device) if device is not None else resolve_device(cfg.learner.device)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, cfg.learner.threads))
        self.agent: Agent = build_agent(cfg.model, spec).to(self.device)
        self.precision = learner_precision(cfg.learner.precision, self.device)
        self.agent.unroll_dtype = getattr(torch, self.precision)  # learner.precision: the encoder's dtype
        if cfg.learner.precision == "bfloat16" and not bf16_native_on(self.device):
            log.warning("learner.precision=bfloat16 on %s, which has no native bfloat16 matrix products: they are "
                        "emulated, usually slower than float32; set learner.precision=auto or float32", self.device)
        elif cfg.learner.precision == "auto":
            log.info("learner.precision=auto: the encoder trains in %s on %s", self.precision, self.device)
        self.extras: dict[str, LearnerExtra] = {
            name: e.to(self.device) for name, e in build_extras(cfg, spec, self.agent).items()
        }
        groups: list[dict[str, Any]] = [{"params": list(self.agent.parameters())}]
        for e in self.extras.values():
            groups.extend(e.param_groups())
        if cfg.learner.optimizer == "rmsprop":
            self.optimizer: torch.optim.Optimizer = torch.optim.RMSprop(
                groups, lr=cfg.learner.lr, alpha=cfg.learner.rmsprop_alpha, eps=cfg.learner.eps
            )
        else:
            self.optimizer = torch.optim.Adam(groups, lr=cfg.learner.lr, eps=cfg.learner.eps)
        lc = cfg.learner
        uses_proximal = lc.proximal_kl_cost > 0 or (lc.ppo_clip > 0 and lc.ppo_clip_against == "proximal")
        # A recent copy of pi that each update's step is limited against (distrl.learners.proximal).
        self.proximal = ProximalPolicy(self.agent, lc.proximal_period) if uses_proximal else None
        self.version = 0
        self.env_steps = 0  # env steps consumed (fresh rows, post-burn-in), summed over this learner
        self.samples_trained = 0
        self._distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self._distributed:
            self._broadcast_parameters()

    # ------------------------------------------------------------------------------------------------------------
    def step(self, sample: ReplaySample) -> LearnerOutput:
        """One V-trace update on a batch of B sequences ``[burn_in + T, B]``.

        Fresh rows acted by too old a policy never get here: the sampler drops them when it builds the batch
        (``learner.max_policy_lag``, :meth:`~distrl.replay.sampler.ReplaySampler.set_min_policy_version`)."""
        t0 = time.perf_counter()
        cfg, lcfg = self.cfg, self.lcfg
        traj = sample.traj.map(lambda x: x.to(self.device, non_blocking=True))
        B = traj.B
        burn = cfg.sequence.burn_in
        if traj.T != cfg.sequence.total:
            raise ValueError(
                f"Learner.step: sequences have {traj.T} steps, config says burn_in + length = {cfg.sequence.total}"
            )
        is_w = sample.weights.to(self.device, torch.float32)  # [B]
        fresh = (
            sample.fresh.to(self.device)
            if sample.fresh is not None
            else torch.zeros(B, dtype=torch.bool, device=self.device)
        )
        lag = (self.version - traj.policy_version).to(torch.float32)  # [B]

        # Burn-in under no_grad from the stored core state, then the trained part with gradient.
        reset = traj.reset_mask()  # [L + 1, B]
        state = self.agent.burn_in(traj.obs, reset, traj.core_state, burn)
        part = _after_burn_in(traj, burn, state)  # [T, B] (obs [T + 1, B]), core_state after burn-in
        out = self.agent.unroll(part.obs, reset[burn:], state)
        logits, values = out.logits[:-1], out.value[:-1]  # [T, B, A], [T, B]
        valid = part.valid
        batch = LearnerBatch(traj=part, out=out, valid=valid, is_weights=is_w, fresh=fresh, version=self.version,
                             prior=None if sample.prior is None else sample.prior.to(self.device))

        intrinsic = _combine((e.intrinsic_reward(batch) for e in self.extras.values()), operator.add)
        streams = self._value_streams(batch)  # value heads beside the extrinsic one (bonus.value_heads=2)
        pg_extra = _combine((e.policy_weight(batch) for e in self.extras.values()), operator.mul)
        rewards = learning_rewards(part.reward, part.truncated, part.truncation_value, lcfg.discount,
                                   clip=lcfg.reward_clip, intrinsic=intrinsic)
        discounts = step_discounts(part.terminated, part.truncated, lcfg.discount)
        mu_logits = part.behaviour_logits.to(torch.float32)
        prox_logits = None if self.proximal is None else self.proximal.logits(traj, reset, burn)
        trusted = None
        if lcfg.kl_trust_region > 0:
            # LASER-style trust region: replayed steps whose behaviour policy is too far from pi carry no PG.
            trusted = trust_region_mask(mu_logits, logits.detach(), lcfg.kl_trust_region) | fresh[None, :]
        weights = step_weights(is_w, valid, trusted=trusted, extra=pg_extra)
        vl = vtrace_loss(logits, values, out.value[-1], mu_logits, part.action, rewards, discounts, weights, lcfg,
                         streams=streams, proximal_logits=prox_logits)

        loss = vl.loss
        extra_metrics: dict[str, float] = {}
        if lcfg.kl_cost > 0 and bool(fresh.any()):
            kl_term = kl_loss(mu_logits, logits, mask=valid & fresh[None, :])
            loss = loss + lcfg.kl_cost * kl_term
            extra_metrics["learner/kl_loss"] = float(kl_term.detach())
        if prox_logits is not None:
            prox_kl = kl_categorical(prox_logits, logits.detach())
            extra_metrics["learner/proximal_kl"] = _masked_mean(prox_kl, valid.to(torch.float32),
                                                                max(1.0, float(valid.sum())))
            if lcfg.proximal_kl_cost > 0:
                prox_term = kl_loss(prox_logits, logits, mask=valid)
                loss = loss + lcfg.proximal_kl_cost * prox_term
                extra_metrics["learner/proximal_kl_loss"] = float(prox_term.detach())
        for name, e in self.extras.items():
            e_loss, e_metrics = e.loss(batch)
            if e_loss is not None:
                loss = loss + e_loss
                extra_metrics[f"extras/{name}/loss"] = float(e_loss.detach())
            extra_metrics.update({f"extras/{name}/{k}": float(v) for k, v in e_metrics.items()})

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self._distributed:
            self._allreduce_gradients()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.agent.parameters(), lcfg.grad_clip)
        for e in self.extras.values():
            torch.nn.utils.clip_grad_norm_(list(e.parameters()), lcfg.grad_clip)
        self.optimizer.step()
        self.version += 1
        if self.proximal is not None:
            self.proximal.after_update(self.agent, self.version)

        # With several heads the priority is the TD error of their summed value on the summed reward (what one
        # head would see; ALGORITHMS.md §5.5), not the sum of the heads' absolute errors.
        prios = sequence_priority(vl.td_error.abs(), valid, cfg.replay.priority_eta)
        consumed = int(valid[:, fresh].sum()) if bool(fresh.any()) else 0
        self.env_steps += consumed
        self.samples_trained += B
        mask = valid.to(torch.float32)
        n_valid = max(1.0, float(mask.sum()))
        trust_frac = float(trusted[valid].float().mean()) if trusted is not None and bool(valid.any()) else 1.0
        if lcfg.ppo_clip > 0:  # share of the policy-weighted steps whose ratio has left the clip band
            band = math.log1p(lcfg.ppo_clip)
            pw = weights.policy > 0
            outside = (vl.clip_log_ratio.abs() > band) & pw
            extra_metrics["learner/ppo_clip_fraction"] = float(outside.sum()) / max(1, int(pw.sum()))
        metrics = {
            "learner/loss": float(loss.detach()),
            "learner/policy_loss": float(vl.policy_loss),
            "learner/baseline_loss": float(vl.baseline_loss),
            "learner/entropy": _masked_mean(entropy(logits.detach()), mask, n_valid),
            "learner/grad_norm": float(grad_norm),
            "learner/value_mean": _masked_mean(values.detach(), mask, n_valid),
            "learner/vs_mean": _masked_mean(vl.vs, mask, n_valid),
            "learner/kl_mu_pi": _masked_mean(kl_categorical(mu_logits, logits.detach()), mask, n_valid),
            "learner/trust_fraction": trust_frac,
            "learner/rho_mean": _masked_mean(vl.log_rhos.exp(), mask, n_valid),
            "learner/policy_lag_mean": float(lag.mean()),
            "learner/policy_lag_max": float(lag.max()),
            "learner/fresh_fraction": float(fresh.float().mean()),
            "learner/is_weight_mean": float(is_w.mean()),
            "learner/step_time_s": time.perf_counter() - t0,
            "learner/version": float(self.version),
            **_head_metrics(vl.heads, mask, n_valid),
            **extra_metrics,
        }
        return LearnerOutput(
            metrics=metrics,
            keys=sample.keys,
            shard_ids=sample.shard_ids,
            priorities=prios.double().cpu().numpy(),
            version=self.version,
            env_steps=consumed,
        )

    def _value_streams(self, batch: LearnerBatch) -> tuple[ValueStream, ...]:
        """The extras' value streams, one per extra value head of the agent (names unique)."""
        streams = tuple(s for e in self.extras.values() if (s := e.value_stream(batch)) is not None)
        names = [s.name for s in streams]
        if len(set(names)) != len(names) or "ext" in names:
            raise RuntimeError(f"learner extras returned value streams {names}: each name at most once, not 'ext'")
        if self.agent.value_heads != 1 + len(streams):
            raise RuntimeError(
                f"the agent has {self.agent.value_heads} value heads but the extras returned {len(streams)} value "
                f"stream(s) {names} beside the extrinsic one (bonus.value_heads and model.separate_intrinsic_value "
                "must agree; ExperimentConfig.validate() checks it)"
            )
        return streams

    # ---- data parallel ------------------------------------------------------------------------------------------
    def _trained_modules(self) -> list[torch.nn.Module]:
        return [self.agent, *self.extras.values()]

    def _broadcast_parameters(self) -> None:
        """Make every replica start from rank 0's parameters (the extras' included)."""
        for m in self._trained_modules():
            for p in m.state_dict().values():
                dist.broadcast(p, src=0)

    def _allreduce_gradients(self) -> None:
        grads = [p.grad for m in self._trained_modules() for p in m.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= dist.get_world_size()
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    # ---- weights and checkpoints --------------------------------------------------------------------------------
    def weights(self) -> PolicyWeights:
        """The policy's and the actor-side extras' weights as NumPy copies, stamped with this learner's version
        (NumPy, so an env actor that acts through NumPy kernels never needs torch to read them)."""
        extras = {}
        for name, e in self.extras.items():
            w = e.actor_weights()
            if w is not None:
                extras[name] = as_arrays(w)
        policy = as_arrays(self.agent.state_dict())
        return PolicyWeights(version=self.version, policy=policy, extras=extras)

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema": CHECKPOINT_SCHEMA,
            "fingerprint": self.cfg.fingerprint(),
            "model": {k: v.detach().cpu() for k, v in self.agent.state_dict().items()},
            "extras": {
                name: {k: v.detach().cpu() for k, v in e.state_dict().items()} for name, e in self.extras.items()
            },
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
            "env_steps": self.env_steps,
            "samples_trained": self.samples_trained,
            "config": to_plain(self.cfg.to_dict()),
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Load a :meth:`state_dict`; all or nothing. A checkpoint of another schema, config or set of extras,
        or one whose tensors do not fit this learner, raises (LearnerCheckpointError, or ConfigError for another
        config) and leaves the learner as it was."""
        if not isinstance(state, dict):
            raise LearnerCheckpointError(f"{source}: expected a dict, got {type(state).__name__}")
        if state.get("schema") != CHECKPOINT_SCHEMA:
            raise LearnerCheckpointError(
                f"{source}: checkpoint schema {state.get('schema')!r}, expected {CHECKPOINT_SCHEMA}"
            )
        model = state.get("model")
        if isinstance(model, dict) and value_heads_in(model) != self.agent.value_heads:
            raise ConfigError(
                f"{source}: the checkpoint's model has {value_heads_in(model)} value head(s), this config "
                f"{self.agent.value_heads} (bonus.value_heads with model.separate_intrinsic_value); a model "
                "trained with separate extrinsic and intrinsic value heads resumes only with bonus.value_heads=2 "
                "and model.separate_intrinsic_value=true, and a one-head model only with the defaults"
            )
        if state.get("fingerprint") != self.cfg.fingerprint():
            raise ConfigError(
                f"{source}: checkpoint was written by a run with a different config (env/model/learner/replay "
                "sections differ); refusing to load it. Start a new run, or resume with the original config."
            )
        saved = state.get("extras", {})
        if not isinstance(saved, dict) or set(saved) != set(self.extras):
            raise LearnerCheckpointError(
                f"{source}: checkpoint has learner extras {sorted(saved) if isinstance(saved, dict) else saved!r}, "
                f"this learner has {sorted(self.extras)}"
            )
        backup = self._snapshot()
        try:
            counters = {k: int(state[k]) for k in ("version", "env_steps", "samples_trained")}
            if min(counters.values()) < 0:
                raise ValueError(f"negative counters {counters}")
            self.agent.load_state_dict(state["model"])
            for name, e in self.extras.items():
                e.load_state_dict(saved[name])
            self.optimizer.load_state_dict(state["optimizer"])
            self._check_optimizer_state()
        except Exception as err:
            self._restore_snapshot(backup)
            raise LearnerCheckpointError(
                f"{source}: does not fit this learner ({type(err).__name__}: {err}); nothing was loaded"
            ) from err
        self.version = counters["version"]
        if self.proximal is not None:  # not checkpointed: a resumed run's proximal policy is the resumed policy
            self.proximal.refresh(self.agent, self.version)
        self.env_steps = counters["env_steps"]
        self.samples_trained = counters["samples_trained"]

    def _snapshot(self) -> dict[str, Any]:
        return {
            "model": {k: v.detach().clone() for k, v in self.agent.state_dict().items()},
            "extras": {n: {k: v.detach().clone() for k, v in e.state_dict().items()} for n, e in self.extras.items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
        }

    def _restore_snapshot(self, backup: dict[str, Any]) -> None:
        self.agent.load_state_dict(backup["model"])
        for name, e in self.extras.items():
            e.load_state_dict(backup["extras"][name])
        self.optimizer.load_state_dict(backup["optimizer"])

    def _check_optimizer_state(self) -> None:
        """torch's Optimizer.load_state_dict checks group sizes only; a moment buffer of the wrong shape would
        fail at the next step, far from the checkpoint that caused it."""
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                for name, v in self.optimizer.state.get(p, {}).items():
                    if isinstance(v, Tensor) and v.dim() > 0 and v.shape != p.shape:
                        raise ValueError(f"optimizer state {name!r} has shape {tuple(v.shape)}, its parameter "
                                         f"{tuple(p.shape)}")

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write atomically: a temp file in the same directory, fsync, then rename over ``path``."""
        return save_checkpoint_file({**self.state_dict(), "extra": extra or {}}, path)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        state = load_checkpoint_file(path)
        self.load_state_dict(state, source=str(path))
        return state.get("extra", {})


def _after_burn_in(traj: Trajectory, burn: int, state: CoreState) -> Trajectory:
    """The trained part of a sequence: time leaves from step ``burn`` on, ``core_state`` = ``state`` (the state
    burn-in reached), per-row leaves as they are."""
    if burn == 0:
        return dataclasses.replace(traj, core_state=state)
    leaves = {k: (v[burn:] if Trajectory.is_time_leaf(k) else v) for k, v in traj.flatten().items()
              if not k.startswith("core_state/")}
    return Trajectory.unflatten({**leaves, **{f"core_state/{k}": v for k, v in state.items()}})


def _head_metrics(heads: tuple[HeadLoss, ...], mask: Tensor, n_valid: float) -> dict[str, float]:
    """``learner/value_loss_<name>`` for every head, and the extra heads' value and target means, when there is
    more than one value head (one head: nothing; ``learner/baseline_loss`` says it all)."""
    if len(heads) < 2:
        return {}
    m = {f"learner/value_loss_{h.name}": float(h.baseline_loss) for h in heads}
    for h in heads[1:]:
        m[f"learner/value_{h.name}_mean"] = _masked_mean(h.values, mask, n_valid)
        m[f"learner/vs_{h.name}_mean"] = _masked_mean(h.vs, mask, n_valid)
    return m


def _combine(values: Iterable[Tensor | None], op: Callable[[Tensor, Tensor], Tensor]) -> Tensor | None:
    """The extras' ``[T, B]`` hook answers combined with ``op`` (rewards add, policy weights multiply), detached;
    None when no extra answered."""
    out = None
    for v in values:
        if v is not None:
            out = v.detach() if out is None else op(out, v.detach())
    return out


_STATE_KEYS = frozenset({"schema", "fingerprint", "model", "extras", "optimizer", "version", "env_steps",
                         "samples_trained", "config", "extra", "checksum"})


def state_checksum(obj: Any, crc: int = 0) -> int:
    """CRC-32 over a checkpoint's content: nested dicts (order-free), lists, tensors (dtype, shape, bytes) and
    scalars. ``torch.load`` does not verify the CRCs of the zip it reads, so a flipped bit in a tensor would
    load silently without this."""
    if isinstance(obj, Tensor):
        t = obj.detach().to("cpu").contiguous()
        crc = zlib.crc32(f"T{t.dtype}{tuple(t.shape)}".encode(), crc)
        if t.numel():
            crc = zlib.crc32(memoryview(t.reshape(-1).view(torch.uint8).numpy()), crc)
        return crc
    if isinstance(obj, dict):
        crc = zlib.crc32(f"D{len(obj)}".encode(), crc)
        for k in sorted(obj, key=repr):
            crc = state_checksum(obj[k], zlib.crc32(repr(k).encode(), crc))
        return crc
    if isinstance(obj, list | tuple):
        crc = zlib.crc32(f"L{len(obj)}".encode(), crc)
        for v in obj:
            crc = state_checksum(v, crc)
        return crc
    return zlib.crc32(f"S{obj!r}".encode(), crc)


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """The bytes :func:`save_checkpoint_file` writes for ``state``: ``torch.save`` of it with its
    :func:`state_checksum`. A Ray learner returns these to the driver, which writes them with
    :func:`~distrl.storage.atomic_write` and so never loads torch."""
    state = {**{k: v for k, v in state.items() if k != "checksum"}, "checksum": None}
    state["checksum"] = state_checksum({k: v for k, v in state.items() if k != "checksum"})
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_checkpoint_file(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (a :meth:`Learner.state_dict`, plus ``extra``) with its :func:`state_checksum` to
    ``path`` atomically: a temp file in the same directory, fsync, then rename over ``path``."""
    data = checkpoint_bytes(state)
    return atomic_write(path, lambda f: f.write(data))


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True`` (tensors and plain containers only: a checkpoint cannot execute code) and
    verify its checksum. A missing, truncated, corrupt or foreign file raises LearnerCheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise LearnerCheckpointError(f"checkpoint not found: {path}")
    return load_checkpoint_bytes(path, path)


def load_checkpoint_bytes(data: bytes | Path, path: str | Path) -> dict[str, Any]:
    """:func:`load_checkpoint_file` on a file's content (``data``: its bytes, or the file itself); ``path``
    names it in errors. A Ray learner restarted from a checkpoint gets the bytes from the driver, whose node
    holds the run directory."""
    try:
        state = torch.load(io.BytesIO(data) if isinstance(data, bytes) else data, map_location="cpu",
                           weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, ...
        raise LearnerCheckpointError(f"{path}: not a valid distrl checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise LearnerCheckpointError(f"{path}: not a distrl checkpoint (no 'model' entry)")
    unknown = sorted(map(repr, set(state) - _STATE_KEYS))
    if unknown:
        raise LearnerCheckpointError(f"{path}: not a distrl checkpoint (unknown entries {', '.join(unknown)})")
    stored = state.pop("checksum", None)  # absent in checkpoints written before it existed
    if stored is not None:
        try:
            crc = state_checksum(state)
        except Exception as e:  # e.g. a tensor type the checksum cannot read
            raise LearnerCheckpointError(f"{path}: unreadable content ({type(e).__name__}: {e})") from e
        if crc != stored:
            raise LearnerCheckpointError(f"{path}: checksum mismatch (corrupt file: content CRC-32 {crc:#010x}, "
                                         f"stored {stored!r})")
    return state
