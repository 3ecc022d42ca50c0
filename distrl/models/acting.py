"""How an env actor acts: which implementation of ``Agent.act`` runs, in which dtype, and the check that keeps
the NumPy implementation honest.

:func:`build_acting_policy` is the one entry point (the env actor calls it). For ``cfg.model`` it builds a
fresh agent on the actor's device and returns

* :class:`~distrl.models.numpy_act.NumpyPolicy` around it when ``actor.inference`` is ``auto`` or ``numpy``,
  the NumPy path covers every part of the model (:func:`~distrl.models.numpy_act.numpy_unsupported`) and
  :func:`check_numpy_policy` finds it computing what ``Agent.act`` computes; a CNN encoder's conv stack,
  which the NumPy path runs through PyTorch, then gets the dtype :func:`_choose_dtype` picks;
* otherwise the agent itself (``Agent.act``), its encoder in the dtype ``actor.precision`` picks. When the
  NumPy path was asked for explicitly (``actor.inference=numpy``) and cannot be used, it raises instead,
  naming the part it does not cover or the difference it measured; with ``auto`` it logs that and falls back.

The start-up check (:func:`check_numpy_policy`) runs both paths side by side on random observations drawn
from the env spec, a small batch for a few steps with the core state carried across them and a reset in the
middle, and compares logits, values and next core states within a float32 tolerance, and the sampled
actions under the same Gumbel noise. It runs in float32 only (bfloat16 acting legitimately differs, by about
1e-2 relative): where ``actor.precision`` picks bfloat16 for a CNN, the NumPy path's conv stack (a copy of
the encoder's PyTorch modules, run by PyTorch) is switched to it after the check has passed.

Usage::

    policy = build_acting_policy(cfg, spec, torch.device("cpu"), seed=actor_seed)
    s = policy.initial_state(cfg.env.num_envs)
    out = policy.act(obs, s)                         # ActOut, NumPy or torch leaves
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from distrl.config import ExperimentConfig
from distrl.models.agent import Agent, build_agent
from distrl.models.encoders import EnvSpecLike
from distrl.models.numpy_act import NumpyPolicy, has_torch_convs, numpy_unsupported
from distrl.models.numpy_kernels import KernelPolicy, NumpyActing, kernel_policy_applies, sampling_seed
from distrl.types import CoreState, as_arrays
from distrl.types import as_numpy as _np

log = logging.getLogger(__name__)

CHECK_BATCH = 4
"""Env slots in the start-up check's batch."""
CHECK_STEPS = 3
"""Steps of the start-up check (the state is carried across them; some slots reset half way)."""
CHECK_TOL = 1e-4
"""Allowed difference between the two paths, relative to the output's scale (max(1, max |Agent.act output|))."""


def build_acting_policy(
    cfg: ExperimentConfig, spec: EnvSpecLike, device: torch.device, seed: int
) -> Agent | NumpyPolicy:
    """The actor's policy for ``cfg.model`` (see the module doc): a :class:`NumpyPolicy` or the agent itself
    (eval mode, on ``device``). ``seed`` (the actor's env seed) also seeds the NumPy path's action sampling,
    through a stream of its own. Raises ValueError when ``actor.inference=numpy`` and the NumPy path does
    not cover the model or fails its check."""
    agent = build_agent(cfg.model, spec)
    agent.to(device)
    agent.eval()
    mode, precision, batch = cfg.actor.inference, cfg.actor.precision, cfg.env.num_envs
    if mode == "torch":
        return _with_precision(agent, precision, spec, batch)
    why = numpy_unsupported(agent)
    if why is None:
        policy = NumpyPolicy(agent, seed=sampling_seed(seed))
        mismatch = check_numpy_policy(policy, spec)
        if mismatch is None:
            if has_torch_convs(agent):  # the one part of the NumPy path that runs through PyTorch
                dtype = _choose_dtype(agent, precision, spec, batch)
                if dtype != torch.float32:
                    policy.set_conv_dtype(dtype)
            return policy
        why = f"its outputs differ from Agent.act's: {mismatch}"
        if mode == "auto":
            log.warning("actor.inference=auto: not acting through NumPy, %s; acting through PyTorch", why)
    elif mode == "auto":
        log.info("actor.inference=auto: acting through PyTorch, the NumPy path cannot run this model: %s", why)
    if mode == "numpy":
        raise ValueError(f"actor.inference=numpy cannot run this model: {why}; use actor.inference=auto or torch")
    return _with_precision(agent, precision, spec, batch)


# ---- the start-up check ----------------------------------------------------------------------------------


def check_numpy_policy(policy: NumpyPolicy, spec: EnvSpecLike, *, batch: int = CHECK_BATCH,
                       steps: int = CHECK_STEPS, seed: int = 0, tol: float = CHECK_TOL) -> str | None:
    """Whether ``policy`` computes ``policy.agent``'s ``act``: None, or what differs (output, step, max
    difference, tolerance).

    Two passes, each ``steps`` steps of ``batch`` slots on random observations from ``spec`` (a random start
    state, carried across steps, every other slot reset half way; the core's ``random_state`` draws it where
    the core has one, as HCAM does: its counters must be in range and its rings partly filled):

    1. ``policy`` itself against its agent, greedy (the actor's own sampling stream is not touched);
    2. a policy of the same class on a copy of the agent with every weight redrawn (biases included, which
       are zero at initialisation and would hide a bias bug), sampling: its actions must be the Gumbel-max
       of ``Agent.act``'s logits under the same Gumbel draws (NumpyPolicy's one ``[B, A]`` draw per call).

    Compares logits, values and next core states within ``tol`` × max(1, max |Agent.act output|), and
    actions where the top two scores are further apart than that. In float32 (the agent's encoder must be
    float32, as it is when the actor builds it). Uses its own random generators; the global ones are left
    alone."""
    return _two_passes(policy, policy.agent, lambda a, s: type(policy)(a, seed=s), spec, "the actor's weights",
                       batch=batch, steps=steps, seed=seed, tol=tol)


def check_kernel_policy(agent: Agent, spec: EnvSpecLike, *, batch: int = CHECK_BATCH, steps: int = CHECK_STEPS,
                        seed: int = 0, tol: float = CHECK_TOL) -> str | None:
    """Whether :class:`~distrl.models.numpy_kernels.KernelPolicy`, built from ``agent.cfg`` and loaded with
    ``agent``'s weights as published (NumPy arrays), computes ``agent``'s ``act``: None, or what differs. The
    same two passes as :func:`check_numpy_policy` (the agent's weights, greedy; every weight redrawn, sampling).
    The learner runs it when it starts if its actors act through the kernels
    (:func:`~distrl.models.numpy_kernels.kernel_policy_applies`): they have no Agent to compare with."""

    def kernels(a: Agent, s: int) -> KernelPolicy:
        policy = KernelPolicy(a.cfg, spec, seed=s)
        policy.load_state_dict(as_arrays(a.state_dict()))
        return policy

    return _two_passes(kernels(agent, seed), agent, kernels, spec, "the learner's weights",
                       batch=batch, steps=steps, seed=seed, tol=tol)


def _two_passes(policy: NumpyActing, agent: Agent, make: Callable[[Agent, int], NumpyActing], spec: EnvSpecLike,
                weights: str, *, batch: int, steps: int, seed: int, tol: float) -> str | None:
    """The checks' two passes: ``policy`` against ``agent``, greedy; then ``make(twin, seed + 1)`` against a copy
    of ``agent`` with every weight redrawn, sampling under the same Gumbel noise (``weights`` names the first)."""
    why = _compare(policy, agent, spec, batch=batch, steps=steps, seed=seed, tol=tol, sample_seed=None)
    if why is not None:
        return f"{why} (with {weights})"
    twin_agent = copy.deepcopy(agent)
    _redraw(twin_agent, seed)
    sample_seed = seed + 1
    why = _compare(make(twin_agent, sample_seed), twin_agent, spec, batch=batch, steps=steps, seed=seed, tol=tol,
                   sample_seed=sample_seed)
    if why is not None:
        return f"{why} (with redrawn weights)"
    return None


def check_actor_kernels(cfg: ExperimentConfig, spec: EnvSpecLike, agent: Agent) -> None:
    """When run ``cfg``'s Ray env actors act through :class:`~distrl.models.numpy_kernels.KernelPolicy`
    (:func:`~distrl.models.numpy_kernels.kernel_policy_applies`), check it against ``agent.act`` on a CPU copy of
    ``agent`` (:func:`check_kernel_policy`) and raise ValueError naming the difference; a no-op otherwise. The
    learner calls it when it starts, before it publishes weights."""
    if not kernel_policy_applies(cfg, spec):
        return
    cpu = copy.deepcopy(agent).cpu().eval()  # a copy, not a new agent: building one would draw from torch's RNG
    why = check_kernel_policy(cpu, spec)
    if why is not None:
        raise ValueError(
            f"the env actors act through NumPy kernels (actor.inference={cfg.actor.inference}), and on this machine "
            f"they do not compute Agent.act: {why}; set actor.inference=torch"
        )


def _compare(policy: NumpyActing, agent: Agent, spec: EnvSpecLike, *, batch: int, steps: int, seed: int,
             tol: float, sample_seed: int | None) -> str | None:
    rng = np.random.default_rng(seed)
    gumbel = None if sample_seed is None else np.random.default_rng(sample_seed)
    random_state = getattr(agent.core, "random_state", None)  # a core with integer state draws a valid one
    if random_state is not None:
        state_t: CoreState = random_state(batch, rng)
    else:
        state_t = {k: torch.from_numpy(rng.standard_normal(tuple(v.shape), dtype=np.float32) * 0.5)
                   for k, v in agent.initial_state(batch).items()}
    state_n: dict[str, np.ndarray] = {k: v.numpy().copy() for k, v in state_t.items()}
    reset = np.arange(batch) % 2 == 0
    worst: dict[str, tuple[float, float, int]] = {}  # output -> (diff, allowed, step) where diff/allowed is largest
    wrong_actions: list[str] = []
    for t in range(steps):
        if t == steps // 2:
            state_t = agent.reset_state(state_t, torch.from_numpy(reset))
            state_n = policy.reset_state(state_n, reset)
        obs = random_obs(spec, agent.encoder.keys, batch, rng)
        ref = agent.act(obs, state_t, greedy=True)
        out = policy.act(obs, state_n, greedy=gumbel is None)
        pairs = {"logits": (ref.logits, out.logits), "value": (ref.value, out.value)}
        pairs.update({f"state[{k!r}]": (ref.state[k], out.state[k]) for k in ref.state})
        for name, (r, o) in pairs.items():
            r, o = _np(r).astype(np.float64), _np(o).astype(np.float64)
            if r.shape != o.shape:
                return f"{name} has shape {o.shape} against Agent.act's {r.shape} at step {t}"
            diff = float(np.abs(r - o).max()) if r.size else 0.0
            allowed = tol * max(1.0, float(np.abs(r).max()) if r.size else 0.0)
            if not diff <= allowed and (name not in worst or not diff / allowed <= worst[name][0] / worst[name][1]):
                worst[name] = (diff, allowed, t)
        logits = _np(ref.logits).astype(np.float64)
        scores = logits if gumbel is None else logits + gumbel.gumbel(size=logits.shape)
        top2 = np.sort(scores, axis=1)[:, -2:] if scores.shape[1] > 1 else None
        clear = np.ones(batch, bool) if top2 is None else top2[:, 1] - top2[:, 0] > 2 * tol * max(
            1.0, float(np.abs(logits).max()))
        bad = clear & (_np(out.action) != scores.argmax(axis=1))
        if bad.any():
            kind = "greedy" if gumbel is None else "sampled"
            wrong_actions.append(f"{kind} actions differ in {int(bad.sum())} of {batch} slots at step {t}")
        state_t, state_n = ref.state, out.state  # as the actor carries them (no copies)
    parts = [f"{name} by up to {d:.3g} (allowed {a:.3g}) at step {t}" for name, (d, a, t) in worst.items()]
    parts += wrong_actions[:1]
    return "; ".join(parts) or None


def random_obs(spec: EnvSpecLike, keys: Any, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random observations ``[batch, ...]`` with the spec's shapes and dtypes for ``keys``: uint8 (pixels)
    over their whole range, other integers (ids such as glyphs, counters) in [0, 32), booleans, and floats
    ~ N(0, 1)."""
    out = {}
    for k in keys:
        s = spec.obs[k]
        dtype, shape = np.dtype(s.dtype), (batch, *tuple(s.shape))
        if dtype == np.bool_:
            out[k] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            hi = 255 if dtype == np.uint8 else min(31, int(np.iinfo(dtype).max))
            out[k] = rng.integers(0, hi, shape, endpoint=True).astype(dtype)
        else:
            out[k] = rng.standard_normal(shape).astype(dtype)
    return out


def _redraw(agent: Agent, seed: int) -> None:
    """Every parameter of ``agent`` redrawn from a generator of its own, so that each term of the function
    shows in the outputs: weight matrices ~ N(0, 1/fan_in), vectors (biases) ~ N(0, 0.5²). The policy
    head's weights are then scaled by 0.01, as :class:`~distrl.models.heads.PolicyHead` initialises them:
    the logits stay within a few nats of each other (the biases'), so sampled actions under the same noise
    can differ where a sampler is wrong, rather than all being the one dominant action."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in agent.parameters():
            std = 0.5 if p.dim() < 2 else p[0].numel() ** -0.5
            p.copy_(torch.randn(p.shape, generator=g) * std)
        agent.heads.policy.fc.weight.mul_(0.01)


# ---- dtype of the PyTorch parts ----------------------------------------------------------------------------


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matrix products natively (CPU: AVX512-BF16 or AMX tiles)."""
    if device.type != "cpu":
        return False  # GPU actors: float32 unless asked (not measured)
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def acting_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The encoder dtype ``actor.precision`` asks for on ``device`` before measuring: bfloat16 for
    ``bfloat16``, and for ``auto`` on a CPU with native bfloat16 dot products (a candidate that
    :func:`time_acting_dtypes` then has to confirm), else float32."""
    if precision == "bfloat16" or (precision == "auto" and native_bf16(device)):
        return torch.bfloat16
    return torch.float32


BF16_MIN_GAIN = 0.9
"""``actor.precision=auto`` keeps bfloat16 only where its encoder call takes at most this fraction of float32's."""


def time_acting_dtypes(agent: Agent, spec: EnvSpecLike, batch: int, reps: int = 7) -> dict[str, float]:
    """Best-of-``reps`` CPU µs of one encoder call at ``batch`` in float32 and in bfloat16 on this machine
    (interleaved, after a warm-up; zero observations of the spec's shapes and dtypes), each through
    :meth:`Agent.encode` as ``act`` runs it. ``agent`` is left as it was; the bfloat16 run uses a copy.

    CPU time, not wall time: actors start while other processes step at full load, and a call that loses
    the core for a moment would otherwise count that wait against its dtype (the thread's CPU time with one
    torch thread, the process's with more).

    Why measure rather than trust the CPU flags: oneDNN's bfloat16 kernels are not faster everywhere that
    reports AVX512-BF16 (on one such Intel Xeon a bfloat16 matmul ran at half float32's rate; see
    BENCHMARKS.md)."""
    obs = {k: np.zeros((batch, *spec.obs[k].shape), spec.obs[k].dtype) for k in agent.encoder.keys}
    bf16 = copy.deepcopy(agent)
    bf16.set_acting_dtype(torch.bfloat16)
    agents = {"float32": agent, "bfloat16": bf16}
    best = {name: float("inf") for name in agents}
    clock = time.thread_time if torch.get_num_threads() == 1 else time.process_time
    with torch.no_grad():
        for rep in range(reps + 2):
            for name, a in agents.items():
                t0 = clock()
                a.encode(obs)
                dt = clock() - t0
                if rep >= 2:  # the first two rounds warm up (oneDNN primitive creation, caches)
                    best[name] = min(best[name], dt * 1e6)
    return best


def _choose_dtype(agent: Agent, precision: str, spec: EnvSpecLike, batch: int) -> torch.dtype:
    """The acting dtype for ``actor.precision``: ``auto`` with a bfloat16-capable CPU times both dtypes at
    ``batch`` (:func:`time_acting_dtypes`) and keeps bfloat16 only if it measured faster; the timings are
    left on ``agent.acting_dtype_timings_us`` (``tools/bench/actors.py`` reports them)."""
    dtype = acting_dtype(precision, agent.device)
    if dtype != torch.float32 and precision == "auto":
        timings = time_acting_dtypes(agent, spec, batch)
        agent.acting_dtype_timings_us = timings
        if timings["bfloat16"] > BF16_MIN_GAIN * timings["float32"]:
            dtype = torch.float32
    return dtype


def _with_precision(agent: Agent, precision: str, spec: EnvSpecLike, batch: int) -> Agent:
    """``agent`` with its acting dtype set for ``actor.precision`` (:func:`_choose_dtype`)."""
    dtype = _choose_dtype(agent, precision, spec, batch)
    if dtype != torch.float32:
        agent.set_acting_dtype(dtype)
    return agent


__all__ = [
    "BF16_MIN_GAIN",
    "CHECK_BATCH",
    "CHECK_STEPS",
    "CHECK_TOL",
    "acting_dtype",
    "build_acting_policy",
    "check_actor_kernels",
    "check_kernel_policy",
    "check_numpy_policy",
    "native_bf16",
    "random_obs",
    "time_acting_dtypes",
]
