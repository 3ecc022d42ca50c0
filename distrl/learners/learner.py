"""The learner: V-trace actor-critic over replayed and fresh sequences (ALGORITHMS.md §5.4).

A plain class: it receives a :class:`~distrl.types.ReplaySample`, takes one optimiser step and returns a
:class:`LearnerOutput` with metrics and new sequence priorities. It never talks to Ray or to replay; the runtime
moves data in and out. Several learners run data-parallel when ``torch.distributed`` is initialised (gloo on CPU,
NCCL on GPU): gradients are all-reduced (averaged) before the optimiser step, so replicas stay identical.

Usage::

    learner = Learner(cfg, spec)
    for sample in sampler:                       # ReplaySample, time-major [T, B]
        out = learner.step(sample)
        sampler.update_priorities(out.shard_ids, out.keys, out.priorities)
        if out.version % cfg.learner.publish_every == 0:
            weight_store.publish(*learner.weights())
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from distrl.config import ConfigError, ExperimentConfig, to_plain
from distrl.envs.base import EnvSpec
from distrl.losses.pg import (
    baseline_loss,
    entropy,
    entropy_loss,
    kl_categorical,
    policy_gradient_loss,
    sequence_priority,
)
from distrl.losses.vtrace import vtrace_targets
from distrl.models.agent import Agent, build_agent
from distrl.types import ReplaySample

CHECKPOINT_SCHEMA = 1


@dataclass(frozen=True)
class LearnerOutput:
    metrics: dict[str, float]
    keys: Tensor  # [B] int64, replay keys of the rows trained on
    shard_ids: Tensor  # [B] int64
    priorities: np.ndarray  # [B] float64: new sequence priorities (eta-mixed |v_s - V|)
    version: int  # learner version after this step
    env_steps: int  # env steps in this batch (post-burn-in steps of fresh rows: the "consumed" count)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Learner:
    def __init__(self, cfg: ExperimentConfig, spec: EnvSpec, device: str | torch.device | None = None) -> None:
        self.cfg = cfg
        self.lcfg = cfg.learner
        self.spec = spec
        self.device = torch.device(device) if device is not None else resolve_device(cfg.learner.device)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, cfg.learner.threads))
        self.agent: Agent = build_agent(cfg.model, spec).to(self.device)
        params = self.agent.parameters()
        if cfg.learner.optimizer == "rmsprop":
            self.optimizer: torch.optim.Optimizer = torch.optim.RMSprop(
                params, lr=cfg.learner.lr, alpha=cfg.learner.rmsprop_alpha, eps=cfg.learner.eps
            )
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg.learner.lr, eps=cfg.learner.eps)
        self.version = 0
        self.env_steps = 0  # env steps consumed (fresh rows, post-burn-in), summed over this learner
        self.samples_trained = 0
        self._distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self._distributed:
            self._broadcast_parameters()

    # ------------------------------------------------------------------------------------------------------------
    def beta(self) -> float:
        """Importance-sampling exponent, annealed linearly over learner updates (Schaul et al. 2016)."""
        r = self.cfg.replay
        frac = min(1.0, self.version / max(1, r.beta_steps))
        return r.beta_start + frac * (r.beta_end - r.beta_start)

    def step(self, sample: ReplaySample) -> LearnerOutput:
        """One V-trace update on a batch of B sequences ``[burn_in + T, B]``."""
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

        reset = traj.reset_mask()  # [L + 1, B]
        state = traj.core_state
        if burn > 0:
            with torch.no_grad():
                burn_obs = {k: v[:burn] for k, v in traj.obs.items()}
                state = self.agent.unroll(burn_obs, reset[:burn], state).state
        obs = {k: v[burn:] for k, v in traj.obs.items()}  # [T + 1, B, ...]
        out = self.agent.unroll(obs, reset[burn:], state)
        logits, values = out.logits[:-1], out.value[:-1]  # [T, B, A], [T, B]
        bootstrap = out.value[-1]  # [B]

        action = traj.action[burn:]
        mu_logits = traj.behaviour_logits[burn:].to(torch.float32)
        terminated = traj.terminated[burn:]
        truncated = traj.truncated[burn:]
        valid = traj.valid[burn:].clone()
        # Fresh data from too old a policy is dropped (Sample Factory's max_policy_lag rule).
        too_old = fresh & (lag > lcfg.max_policy_lag)
        valid &= ~too_old[None, :]

        reward = traj.reward[burn:].to(torch.float32)
        if lcfg.reward_clip > 0:
            reward = reward.clamp(-lcfg.reward_clip, lcfg.reward_clip)
        gamma = lcfg.discount
        # A truncated step bootstraps from the actor's value of the cut episode's last observation; the trace then
        # stops there (discount 0) since obs[t + 1] already belongs to the next episode.
        reward = reward + gamma * truncated.to(torch.float32) * traj.truncation_value[burn:].to(torch.float32)
        discounts = gamma * (~(terminated | truncated)).to(torch.float32)

        log_pi = torch.log_softmax(logits, dim=-1)
        log_mu = torch.log_softmax(mu_logits, dim=-1)
        a = action.unsqueeze(-1)
        log_rhos = (log_pi.gather(-1, a) - log_mu.gather(-1, a)).squeeze(-1)
        vt = vtrace_targets(
            log_rhos=log_rhos.detach(),
            discounts=discounts,
            rewards=reward,
            values=values.detach(),
            bootstrap_value=bootstrap.detach(),
            clip_rho=lcfg.clip_rho,
            clip_c=lcfg.clip_c,
            clip_pg_rho=lcfg.clip_pg_rho,
        )

        mask = valid.to(torch.float32)
        kl = kl_categorical(mu_logits, logits.detach())  # [T, B]
        pg_mask = mask
        trust_frac = 1.0
        if lcfg.kl_trust_region > 0:
            # LASER-style trust region: replayed steps whose behaviour policy is too far from pi carry no PG.
            trusted = (kl <= lcfg.kl_trust_region) | fresh[None, :]
            pg_mask = mask * trusted.to(torch.float32)
            trust_frac = float(trusted[valid].float().mean()) if bool(valid.any()) else 1.0

        pg = policy_gradient_loss(logits, action, vt.pg_advantages, weights=is_w, mask=pg_mask)
        bl = baseline_loss(vt.vs, values, weights=is_w, mask=mask)
        ent = entropy_loss(logits, weights=is_w, mask=mask)
        loss = pg + lcfg.baseline_cost * bl + lcfg.entropy_cost * ent

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self._distributed:
            self._allreduce_gradients()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.agent.parameters(), lcfg.grad_clip)
        self.optimizer.step()
        self.version += 1

        td_abs = (vt.vs - values.detach()).abs()
        prios = sequence_priority(td_abs, valid, self.cfg.replay.priority_eta).double().cpu().numpy()
        consumed = int(valid[:, fresh].sum()) if bool(fresh.any()) else 0
        self.env_steps += consumed
        self.samples_trained += B
        n_valid = max(1.0, float(mask.sum()))
        metrics = {
            "learner/loss": float(loss.detach()),
            "learner/policy_loss": float(pg.detach()),
            "learner/baseline_loss": float(bl.detach()),
            "learner/entropy": float((entropy(logits.detach()) * mask).sum() / n_valid),
            "learner/grad_norm": float(grad_norm),
            "learner/value_mean": float((values.detach() * mask).sum() / n_valid),
            "learner/vs_mean": float((vt.vs * mask).sum() / n_valid),
            "learner/kl_mu_pi": float((kl * mask).sum() / n_valid),
            "learner/trust_fraction": trust_frac,
            "learner/rho_mean": float((log_rhos.detach().exp() * mask).sum() / n_valid),
            "learner/policy_lag_mean": float(lag.mean()),
            "learner/policy_lag_max": float(lag.max()),
            "learner/fresh_fraction": float(fresh.float().mean()),
            "learner/dropped_stale": float(too_old.sum()),
            "learner/is_weight_mean": float(is_w.mean()),
            "learner/beta": self.beta(),
            "learner/step_time_s": time.perf_counter() - t0,
            "learner/version": float(self.version),
        }
        return LearnerOutput(
            metrics=metrics,
            keys=sample.keys,
            shard_ids=sample.shard_ids,
            priorities=prios,
            version=self.version,
            env_steps=consumed,
        )

    # ---- data parallel ------------------------------------------------------------------------------------------
    def _broadcast_parameters(self) -> None:
        """Make every replica start from rank 0's parameters."""
        for p in self.agent.state_dict().values():
            dist.broadcast(p, src=0)

    def _allreduce_gradients(self) -> None:
        grads = [p.grad for p in self.agent.parameters() if p.grad is not None]
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
    def weights(self) -> tuple[int, dict[str, Tensor]]:
        """(version, CPU state_dict) for actors."""
        return self.version, {k: v.detach().to("cpu", copy=True) for k, v in self.agent.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema": CHECKPOINT_SCHEMA,
            "fingerprint": self.cfg.fingerprint(),
            "model": {k: v.detach().cpu() for k, v in self.agent.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "version": self.version,
            "env_steps": self.env_steps,
            "samples_trained": self.samples_trained,
            "config": to_plain(self.cfg.to_dict()),
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        if state.get("schema") != CHECKPOINT_SCHEMA:
            raise ValueError(f"{source}: checkpoint schema {state.get('schema')!r}, expected {CHECKPOINT_SCHEMA}")
        if state.get("fingerprint") != self.cfg.fingerprint():
            raise ConfigError(
                f"{source}: checkpoint was written by a run with a different config (env/model/learner/replay "
                "sections differ); refusing to load it. Start a new run, or resume with the original config."
            )
        self.agent.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])
        self.env_steps = int(state["env_steps"])
        self.samples_trained = int(state["samples_trained"])

    def save_checkpoint(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write atomically: a temp file in the same directory, fsync, then rename over ``path``."""
        return save_checkpoint_file({**self.state_dict(), "extra": extra or {}}, path)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        state = load_checkpoint_file(path)
        self.load_state_dict(state, source=str(path))
        return state.get("extra", {})


def save_checkpoint_file(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, a checkpoint cannot execute code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, ...
        raise ValueError(f"{path}: not a valid distrl checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path}: not a distrl checkpoint (no 'model' entry)")
    return state
