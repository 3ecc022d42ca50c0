"""Batched envs with same-step autoreset, per-slot step timing, episode stats and fault recovery.

:func:`make_vec_env` builds a :class:`~distrl.envs.base.VecEnv` over ``num_envs`` single envs made by the
registry (``make_env(cfg, seed)``). Two implementations share one per-slot engine (:class:`_SlotRunner`), so
they give the same numbers for the same seeds:

* ``"inline"`` (:class:`InlineVecEnv`): the envs step in this process, writing into preallocated ``[B, ...]``
  arrays.
* ``"subprocess"`` (:class:`SubprocVecEnv`): ``cfg.num_workers`` worker processes each own ``B / num_workers``
  slots. Observations, rewards, flags and step durations travel through one shared-memory block; the pipes
  carry only a one-byte command and a small reply (fault count and finished episodes), so nothing is pickled
  per step on the hot path.

Semantics of :meth:`step` (both implementations):

* Same-step autoreset: where slot i ends an episode (``terminated | truncated``), ``obs[i]`` is already the
  first observation of its next episode and ``final_obs[i]`` is the last observation of the one that ended.
* ``duration[i]`` is the wall-clock time of slot i's ``env.step`` call (not of the autoreset): §3.5's ``dt``,
  or the ``info["duration"]`` the env reported for the step (a simulated clock).
* ``episodes`` lists finished episodes (return = summed raw reward unless the final info has
  ``"episode_return"``; ``"success"``, ``"extra"`` and ``"report"`` info keys as documented in
  :mod:`distrl.envs.registry`).
* Faults: an env that raises in ``step`` or ``reset``, or returns a NaN/inf reward or float observation, is
  closed and replaced by a new instance (new seed). Its slot reports ``truncated=True``, ``reward=0``, a valid
  first observation of the new episode in ``obs[i]`` and the last good observation in ``final_obs[i]``; the
  cut episode is not listed in ``episodes``; ``faults`` counts it, ``faulted[i]`` flags it (a
  :class:`StepResult` field) and a warning is logged. An env that fails :data:`MAX_CONSECUTIVE_FAULTS`
  times in a row on the same slot raises RuntimeError (a broken config, not bad luck).
* Envs that have a ``copy_obs`` attribute are built with it False: they hand out views of their own buffers,
  which the VecEnv copies into its batch buffers before the env's next call (distrl.envs.base).
* The returned arrays are the VecEnv's own buffers: they stay valid until the next ``step``/``reset`` call.
  Copy what you keep (the env actor copies into its sequence ring anyway, so the hot path makes no extra
  copy).

Pre-reset (``prereset=True``; default in subprocess mode except for Atari, see :data:`PRERESET_DEFAULT`): each
slot keeps a spare env instance that is reset *ahead of time*; at an episode end the slot swaps the spare in (no
reset latency on the step path) and the finished instance is reset in the background, while the worker would
otherwise wait for the next actions. This hides MiniHack's expensive resets (2.5 ms Room-5x5, 33 ms
MultiRoom-N4 vs ~0.3 ms per step) behind the actor's inference and removes the reset stragglers from the
workers' lock-step barrier. It costs one more env instance per slot (built at :meth:`reset`). Each slot's
instances alternate, so the episode stream depends on ``prereset`` but not on the vectorisation mode: inline and
subprocess with the same ``prereset`` give identical results.

Seeding: instance n of slot i is built with ``make_env(cfg, slot_seed(seed, i, n))`` and reset without a seed
afterwards (its own RNG continues); a replacement after a fault or a spare is the next instance n.

Usage::

    venv = make_vec_env(cfg.env, num_envs=8, seed=0)
    obs = venv.reset()                            # dict[str, np.ndarray [8, ...]]
    res = venv.step(np.zeros(8, dtype=np.int64))  # StepResult
    venv.close()
"""

from __future__ import annotations

import collections
import ctypes
import logging
import math
import multiprocessing as mp
import pickle
import signal
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from distrl.config import EnvConfig
from distrl.envs.base import EnvSpec, EpisodeInfo, StepResult
from distrl.envs.registry import env_spec, family_of, make_env

log = logging.getLogger(__name__)

EnvFn = Callable[[EnvConfig, int], Any]
MAX_CONSECUTIVE_FAULTS = 3
"""Consecutive failures (of fresh instances) on one slot before the VecEnv gives up and raises."""
_ALIGN = 64


def slot_seed(seed: int, slot: int, instance: int) -> int:
    """Seed of the ``instance``-th env built for ``slot`` of a VecEnv seeded with ``seed`` (a 31-bit int)."""
    if seed < 0:
        raise ValueError(f"VecEnv seed must be >= 0, got {seed}")
    ss = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(slot), int(instance)))
    return int(ss.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


# ----------------------------------------------------------------------------------------------------------
# Buffers (plain numpy or views on one shared block)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Buffers:
    """All per-step arrays of a VecEnv, leading dim B."""

    obs: dict[str, np.ndarray]  # [B, ...] current observation
    final_obs: dict[str, np.ndarray]  # [B, ...] last observation of an episode that just ended
    actions: np.ndarray  # [B] int64
    reward: np.ndarray  # [B] float32
    terminated: np.ndarray  # [B] bool
    truncated: np.ndarray  # [B] bool
    duration: np.ndarray  # [B] float32
    faulted: np.ndarray  # [B] bool: the slot's env failed in this step (reported as truncated)

    @staticmethod
    def layout(spec: EnvSpec, num_envs: int) -> list[tuple[str, tuple[int, ...], np.dtype]]:
        out: list[tuple[str, tuple[int, ...], np.dtype]] = []
        for k, s in spec.obs.items():
            out.append((f"obs/{k}", (num_envs, *s.shape), np.dtype(s.dtype)))
            out.append((f"final_obs/{k}", (num_envs, *s.shape), np.dtype(s.dtype)))
        out += [
            ("actions", (num_envs,), np.dtype(np.int64)),
            ("reward", (num_envs,), np.dtype(np.float32)),
            ("terminated", (num_envs,), np.dtype(np.bool_)),
            ("truncated", (num_envs,), np.dtype(np.bool_)),
            ("duration", (num_envs,), np.dtype(np.float32)),
            ("faulted", (num_envs,), np.dtype(np.bool_)),
        ]
        return out

    @staticmethod
    def nbytes(spec: EnvSpec, num_envs: int) -> int:
        total = 0
        for _, shape, dt in _Buffers.layout(spec, num_envs):
            total += -(-int(np.prod(shape)) * dt.itemsize // _ALIGN) * _ALIGN
        return total

    @classmethod
    def on(cls, block: np.ndarray | None, spec: EnvSpec, num_envs: int) -> _Buffers:
        """Views carved from ``block`` (uint8, at least :meth:`nbytes` long), or fresh arrays if None."""
        arrays: dict[str, np.ndarray] = {}
        off = 0
        for name, shape, dt in cls.layout(spec, num_envs):
            n = int(np.prod(shape)) * dt.itemsize
            if block is None:
                arrays[name] = np.zeros(shape, dtype=dt)
            else:
                arrays[name] = block[off:off + n].view(dt).reshape(shape)
            off += -(-n // _ALIGN) * _ALIGN
        return cls(
            obs={k: arrays[f"obs/{k}"] for k in spec.obs},
            final_obs={k: arrays[f"final_obs/{k}"] for k in spec.obs},
            actions=arrays["actions"],
            reward=arrays["reward"],
            terminated=arrays["terminated"],
            truncated=arrays["truncated"],
            duration=arrays["duration"],
            faulted=arrays["faulted"],
        )


# ----------------------------------------------------------------------------------------------------------
# The per-slot engine (runs in this process for inline, in each worker for subprocess)
# ----------------------------------------------------------------------------------------------------------


class _Fault(Exception):
    """An env produced something unusable (non-finite reward/observation)."""


class _SlotRunner:
    """Steps a subset of slots of a VecEnv, writing into shared :class:`_Buffers`.

    Slot-local state: the active env, an optional spare (pre-reset) env, the next instance number, the running
    episode return/length, and consecutive fault counts.
    """

    def __init__(
        self,
        cfg: EnvConfig,
        env_fn: EnvFn,
        spec: EnvSpec,
        slots: range,
        seed: int,
        bufs: _Buffers,
        prereset: bool,
    ) -> None:
        self.cfg = cfg
        self.env_fn = env_fn
        self.spec = spec
        self.slots = slots
        self.seed = seed
        self.bufs = bufs
        self.prereset = prereset
        n = len(slots)
        self.keys = tuple(spec.obs)
        self.float_keys = tuple(k for k, s in spec.obs.items() if np.dtype(s.dtype).kind == "f")
        self.envs: list[Any] = [None] * n
        self.spares: list[Any] = [None] * n
        self.spare_obs: list[dict[str, np.ndarray] | None] = [None] * n
        self.next_instance = [0] * n
        self.ep_return = [0.0] * n
        self.ep_len = [0] * n
        self.fault_streak = [0] * n
        # Per local slot, the env instance whose step output last passed the full check (_validate_step): each
        # instance is checked on its first step after becoming active (about once per episode), not every step.
        self.step_checked: list[Any] = [None] * n
        self.pending: collections.deque[int] = collections.deque()  # local slots whose spare needs a reset
        # Per local slot, (key, view of its row in bufs.obs): ``row[...] = x`` skips building a view per store.
        self._obs_rows = [tuple((k, bufs.obs[k][i, ...]) for k in self.keys) for i in slots]
        self.faults = 0  # faults handled since the last step() returned

    # ---- helpers -----------------------------------------------------------------------------------------
    def _nonfinite(self, obs: Mapping[str, np.ndarray]) -> str | None:
        for k in self.float_keys:
            if not np.isfinite(obs[k]).all():
                return k
        return None

    def _validate_first(self, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Full spec check on an instance's first observation: wrong keys/shapes/dtypes are bugs, so raise."""
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise KeyError(
                f"env {self.cfg.name!r}: observation lacks keys {missing} of its spec (got {sorted(obs)})"
            )
        out = {}
        for k, s in self.spec.obs.items():
            v = np.asarray(obs[k])
            if v.shape != s.shape or v.dtype != s.dtype:
                raise ValueError(
                    f"env {self.cfg.name!r}: observation {k!r} has shape {v.shape} dtype {v.dtype}, but the "
                    f"spec says shape {s.shape} dtype {s.dtype}"
                )
            out[k] = v
        return out

    def _validate_step(self, res: Any) -> None:
        """Full check of one ``env.step`` result: a 5-tuple, observation keys/shapes/dtypes against the spec,
        scalar reward and flags, a mapping for info. A mismatch is a bug in the env (a wrong shape would
        otherwise be broadcast, a wrong dtype silently cast into the batch buffers), so it raises naming the key
        rather than counting as a fault. Run on each instance's first step after it becomes active."""
        name = self.cfg.name
        if not isinstance(res, tuple) or len(res) != 5:
            raise ValueError(f"env {name!r}: step returned {type(res).__name__} "
                             f"{'of length ' + str(len(res)) if isinstance(res, tuple) else ''}; expected "
                             "(obs, reward, terminated, truncated, info)")
        obs, reward, te, tr, info = res
        if not isinstance(obs, Mapping):
            raise ValueError(f"env {name!r}: step returned observation of type {type(obs).__name__}; expected a "
                             "dict of arrays")
        self._validate_first(obs)
        if np.ndim(reward) != 0 or not isinstance(reward, int | float | np.integer | np.floating) \
                or isinstance(reward, bool | np.bool_):
            raise ValueError(f"env {name!r}: step returned reward {reward!r} ({type(reward).__name__}); expected "
                             "a scalar number")
        for key, flag in (("terminated", te), ("truncated", tr)):
            if not (isinstance(flag, bool | np.bool_) or (isinstance(flag, int | np.integer) and flag in (0, 1))):
                raise ValueError(f"env {name!r}: step returned {key}={flag!r} ({type(flag).__name__}); expected "
                                 "a bool")
        if not isinstance(info, Mapping):
            raise ValueError(f"env {name!r}: step returned info of type {type(info).__name__}; expected a dict")

    def _fresh(self, j: int) -> tuple[Any, dict[str, np.ndarray]]:
        """Build and reset a new instance for local slot j, retrying failures; returns (env, first obs).

        Failures to build/reset (exceptions, non-finite observations) are faults and count in ``self.faults``;
        a first observation whose keys/shapes/dtypes contradict the spec is a bug and raises at once.
        """
        slot = self.slots[j]
        last: BaseException | None = None
        for attempt in range(MAX_CONSECUTIVE_FAULTS + 1):
            inst = self.next_instance[j]
            self.next_instance[j] += 1
            env = None
            try:
                env = self.env_fn(self.cfg, slot_seed(self.seed, slot, inst))
                if hasattr(env, "copy_obs"):  # this runner copies each observation before the env's next call
                    env.copy_obs = False
                raw, _ = env.reset()
            except Exception as e:
                last = e
                self._log_fault(slot, "creation/reset of a new instance", e, attempt)
                self.faults += 1
                _safe_close(env)
                continue
            try:
                obs = self._validate_first(raw)
            except Exception:
                _safe_close(env)
                raise
            bad = self._nonfinite(obs)
            if bad is None:
                return env, obs
            last = _Fault(f"non-finite observation {bad!r} at reset")
            self._log_fault(slot, "reset of a new instance", last, attempt)
            self.faults += 1
            _safe_close(env)
        raise RuntimeError(
            f"env {self.cfg.name!r}, slot {slot}: {MAX_CONSECUTIVE_FAULTS + 1} fresh instances in a row "
            f"failed to build or reset; giving up. Last error: {type(last).__name__}: {last}"
        ) from last

    def _log_fault(self, slot: int, where: str, err: BaseException, streak: int) -> None:
        log.warning("env %r slot %d: fault in %s (%s: %s); replacing the env [streak %d]",
                    self.cfg.name, slot, where, type(err).__name__, err, streak + 1)

    def _write_obs(self, i: int, obs: Mapping[str, np.ndarray]) -> None:
        for k, row in self._obs_rows[i - self.slots.start]:
            row[...] = obs[k]

    def _reset_existing(self, env: Any) -> dict[str, np.ndarray]:
        raw, _ = env.reset()
        bad = self._nonfinite(raw)
        if bad is not None:
            raise _Fault(f"non-finite observation {bad!r} at reset")
        return raw

    # ---- spare handling ----------------------------------------------------------------------------------
    def _prepare_spare(self, j: int) -> None:
        """Make slot j's spare ready: build a first instance or reset the previously active one."""
        spare = self.spares[j]
        if spare is None:
            self.spares[j], obs = self._fresh(j)
        else:
            try:
                obs = self._reset_existing(spare)
            except Exception as e:
                self._log_fault(self.slots[j], "background reset", e, 0)
                self.faults += 1
                _safe_close(spare)
                self.spares[j], obs = self._fresh(j)
        # Copy: the env may reuse its arrays; the spare's first obs must survive until it is swapped in.
        self.spare_obs[j] = {k: np.array(obs[k], copy=True) for k in self.keys}

    def background_pending(self) -> bool:
        return bool(self.pending)

    def background_step(self) -> None:
        """Prepare one spare (called while the actor is busy with inference)."""
        if self.pending:
            self._prepare_spare(self.pending.popleft())

    def _take_spare(self, j: int) -> dict[str, np.ndarray]:
        # Not prepared in time: do it now (the instance order stays the same, so results stay deterministic).
        if self.spare_obs[j] is None:
            try:
                self.pending.remove(j)
            except ValueError:
                pass
            self._prepare_spare(j)
        obs = self.spare_obs[j]
        assert obs is not None
        self.envs[j], self.spares[j] = self.spares[j], self.envs[j]
        self.spare_obs[j] = None
        self.pending.append(j)
        return obs

    # ---- public API --------------------------------------------------------------------------------------
    def reset(self, seed: int | None) -> None:
        for j, i in enumerate(self.slots):
            if self.envs[j] is None:
                self.envs[j], obs = self._fresh(j)
            elif seed is not None:
                raw, _ = self.envs[j].reset(seed=slot_seed(seed, i, 0))
                obs = self._validate_first(raw)
            else:
                obs = self._reset_existing(self.envs[j])
            self._write_obs(i, obs)
            self.ep_return[j] = 0.0
            self.ep_len[j] = 0
            if self.prereset and self.spare_obs[j] is None and j not in self.pending:
                self.pending.append(j)
        # Build the spares now rather than in the background: a start-up cost (as long again as building the
        # envs) instead of a burst of hidden CPU work during the first seconds of stepping.
        while self.pending:
            self.background_step()

    def step(self, actions: np.ndarray) -> tuple[list[EpisodeInfo], int]:
        """Step every owned slot with ``actions[slot]`` into the buffers; returns (episodes, faults).

        Two passes: the first only steps the envs (and times each step), the second checks and stores what they
        returned. Between two env steps the CPU's caches hold the env, so code run there pays cache misses
        throughout; run as one loop over all slots afterwards, it stays warm. The per-slot scalars go into lists
        written once per field (a NumPy scalar store per slot and field costs more)."""
        b = self.bufs
        lo, hi = self.slots.start, self.slots.stop
        n = hi - lo
        envs = self.envs
        if None in envs:
            raise RuntimeError("VecEnv.step called before reset()")
        perf = time.perf_counter
        dur = [0.0] * n
        out: list[Any] = [None] * n  # env.step's 5-tuple, or the exception it raised
        for j, a in enumerate(actions[lo:hi].tolist()):
            t0 = perf()
            try:
                out[j] = envs[j].step(a)
            except Exception as e:
                out[j] = e
            dur[j] = perf() - t0
        keys, float_keys = self.keys, self.float_keys
        episodes: list[EpisodeInfo] = []
        rew = [0.0] * n
        term, trunc, faulted = [False] * n, [False] * n, [False] * n
        for j, res in enumerate(out):
            if self.step_checked[j] is not envs[j] and not isinstance(res, Exception):
                self._validate_step(res)
                self.step_checked[j] = envs[j]
            try:
                if isinstance(res, Exception):
                    raise res
                obs, reward, te, tr, info = res
                if not math.isfinite(reward):
                    raise _Fault(f"non-finite reward {reward}")
                if float_keys:
                    bad = self._nonfinite(obs)
                    if bad is not None:
                        raise _Fault(f"non-finite observation {bad!r}")
            except Exception as e:
                self.faults += 1
                self._on_fault(j, lo + j, e)
                trunc[j] = faulted[j] = True
                continue
            self.fault_streak[j] = 0
            rew[j], term[j], trunc[j] = reward, te, tr
            if "duration" in info:  # an env with a simulated clock reports the time the step stands for
                dur[j] = float(info["duration"])
            self.ep_return[j] += reward
            self.ep_len[j] += 1
            if te or tr:
                i = lo + j
                for k in keys:
                    b.final_obs[k][i] = obs[k]
                if info.get("report", True):
                    episodes.append(self._episode_info(j, i, info))
                self.ep_return[j] = 0.0
                self.ep_len[j] = 0
                self._autoreset(j, i)
            else:
                self._write_obs(lo + j, obs)
        b.duration[lo:hi] = dur
        b.reward[lo:hi] = rew
        b.terminated[lo:hi] = term
        b.truncated[lo:hi] = trunc
        b.faulted[lo:hi] = faulted
        faults, self.faults = self.faults, 0
        return episodes, faults

    def _episode_info(self, j: int, i: int, info: Mapping[str, Any]) -> EpisodeInfo:
        success = info.get("success")
        return EpisodeInfo(
            env_index=i,
            episode_return=float(info.get("episode_return", self.ep_return[j])),
            length=int(info.get("episode_length", self.ep_len[j])),
            success=None if success is None else float(success),
            extra={str(k): float(v) for k, v in (info.get("extra") or {}).items()},
        )

    def _autoreset(self, j: int, i: int) -> None:
        """Start slot j's next episode (a reset failure is a fault: a fresh instance takes over)."""
        if self.prereset:
            obs = self._take_spare(j)
        else:
            try:
                obs = self._reset_existing(self.envs[j])
            except Exception as e:
                self.faults += 1
                self._log_fault(i, "reset", e, 0)
                _safe_close(self.envs[j])
                self.envs[j], obs = self._fresh(j)
        self._write_obs(i, obs)

    def _on_fault(self, j: int, i: int, err: BaseException) -> None:
        """Slot j failed in step: keep its last good observation as the final one and start a fresh instance
        (the caller reports the step as truncated and faulted, reward 0)."""
        b = self.bufs
        self.fault_streak[j] += 1
        self._log_fault(i, "step", err, self.fault_streak[j] - 1)
        if self.fault_streak[j] > MAX_CONSECUTIVE_FAULTS:
            raise RuntimeError(
                f"env {self.cfg.name!r}, slot {i}: {self.fault_streak[j]} faults in a row; giving up. Last "
                f"error: {type(err).__name__}: {err}"
            ) from err
        for k in self.keys:
            b.final_obs[k][i] = b.obs[k][i]  # last good observation
        self.ep_return[j] = 0.0
        self.ep_len[j] = 0
        _safe_close(self.envs[j])
        if self.prereset:
            # The spare is a healthy, independent instance: use it, and build a new spare in the background.
            self.envs[j] = None
            obs = self._take_spare(j)
            self.spares[j] = None
        else:
            self.envs[j], obs = self._fresh(j)
        self._write_obs(i, obs)

    def close(self) -> None:
        for env in (*self.envs, *self.spares):
            _safe_close(env)
        self.envs = [None] * len(self.slots)
        self.spares = [None] * len(self.slots)


def _safe_close(env: Any) -> None:
    if env is None:
        return
    try:
        env.close()
    except Exception as e:  # a broken env may fail to close; that must not hide the original fault
        log.debug("env close failed: %s", e)


def _result(bufs: _Buffers, episodes: list[EpisodeInfo], faults: int) -> StepResult:
    done = np.flatnonzero(bufs.terminated | bufs.truncated)
    final = {int(i): {k: v[i] for k, v in bufs.final_obs.items()} for i in done}
    return StepResult(
        obs=bufs.obs,
        reward=bufs.reward,
        terminated=bufs.terminated,
        truncated=bufs.truncated,
        final_obs=final,
        duration=bufs.duration,
        episodes=episodes,
        faults=faults,
        faulted=bufs.faulted,
    )


# ----------------------------------------------------------------------------------------------------------
# Inline
# ----------------------------------------------------------------------------------------------------------


class InlineVecEnv:
    """All envs step in this process. See the module doc for step semantics.

    Usage::

        venv = InlineVecEnv(EnvConfig(name="fake:counting"), num_envs=4, seed=0)
        obs = venv.reset(); res = venv.step(np.zeros(4, dtype=np.int64))
    """

    def __init__(
        self, cfg: EnvConfig, num_envs: int, seed: int, *, prereset: bool = False, env_fn: EnvFn = make_env
    ) -> None:
        self.cfg = cfg
        self.spec = env_spec(cfg)
        self.num_envs = num_envs
        self.bufs = _Buffers.on(None, self.spec, num_envs)
        self._runner = _SlotRunner(cfg, env_fn, self.spec, range(num_envs), seed, self.bufs, prereset)

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        self._runner.reset(seed)
        return self.bufs.obs

    def step(self, actions: np.ndarray) -> StepResult:
        self.bufs.actions[:] = actions
        episodes, faults = self._runner.step(self.bufs.actions)
        # Inline pre-reset cannot overlap anything; prepare spares now so the next step finds them ready.
        while self._runner.background_pending():
            self._runner.background_step()
        return _result(self.bufs, episodes, faults)

    def close(self) -> None:
        self._runner.close()


# ----------------------------------------------------------------------------------------------------------
# Subprocess
# ----------------------------------------------------------------------------------------------------------

_CMD_STEP, _CMD_RESET, _CMD_CLOSE = b"s", b"r", b"c"


def _worker_main(
    conn: Any,
    cfg: EnvConfig,
    env_fn: EnvFn,
    slots: range,
    seed: int,
    raw: Any,
    num_envs: int,
    prereset: bool,
) -> None:
    """Worker process: own ``slots``, step them on command, prepare spares while idle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then closes us
    runner: _SlotRunner | None = None
    try:
        spec = env_spec(cfg)
        bufs = _Buffers.on(np.frombuffer(raw, dtype=np.uint8), spec, num_envs)
        runner = _SlotRunner(cfg, env_fn, spec, slots, seed, bufs, prereset)
        conn.send_bytes(b"ready")
        while True:
            # Background resets only while no command waits: a step request always goes first.
            if runner.background_pending() and not conn.poll():
                runner.background_step()
                continue
            msg = conn.recv_bytes()
            cmd = msg[:1]
            if cmd == _CMD_STEP:
                episodes, faults = runner.step(bufs.actions)
                conn.send_bytes(pickle.dumps((faults, episodes), protocol=pickle.HIGHEST_PROTOCOL))
            elif cmd == _CMD_RESET:
                runner.reset(pickle.loads(msg[1:]))
                conn.send_bytes(pickle.dumps((0, []), protocol=pickle.HIGHEST_PROTOCOL))
            elif cmd == _CMD_CLOSE:
                break
            else:  # pragma: no cover - protocol bug
                raise RuntimeError(f"unknown command {cmd!r}")
    except (EOFError, BrokenPipeError):  # parent is gone
        pass
    except BaseException:
        try:
            conn.send_bytes(b"E" + traceback.format_exc().encode())
        except Exception:
            pass
    finally:
        if runner is not None:
            runner.close()
        conn.close()


def _mp_context(family_module: str) -> Any:
    """forkserver: safe with threaded parents (Ray actors, torch), and cheap per worker once started."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["distrl.envs.vector", family_module])
    return ctx


class SubprocVecEnv:
    """Envs step in ``num_workers`` worker processes; shared-memory buffers, one-byte commands over pipes.

    Usage::

        venv = SubprocVecEnv(EnvConfig(name="fake:counting"), num_envs=8, seed=0, num_workers=2)
        obs = venv.reset(); res = venv.step(np.zeros(8, dtype=np.int64)); venv.close()
    """

    def __init__(
        self,
        cfg: EnvConfig,
        num_envs: int,
        seed: int,
        *,
        num_workers: int,
        prereset: bool = True,
        env_fn: EnvFn = make_env,
        start_timeout_s: float = 300.0,
    ) -> None:
        if num_workers < 1 or num_envs % num_workers != 0:
            raise ValueError(
                f"SubprocVecEnv: num_envs ({num_envs}) must be a positive multiple of num_workers "
                f"({num_workers})"
            )
        self.cfg = cfg
        self.spec = env_spec(cfg)
        self.num_envs = num_envs
        self._closed = False
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        ctx = _mp_context(family_of(cfg.name)[0])
        self._raw = ctx.RawArray(ctypes.c_uint8, _Buffers.nbytes(self.spec, num_envs))
        self.bufs = _Buffers.on(np.frombuffer(self._raw, dtype=np.uint8), self.spec, num_envs)
        per = num_envs // num_workers
        try:
            for w in range(num_workers):
                parent, child = ctx.Pipe(duplex=True)
                slots = range(w * per, (w + 1) * per)
                p = ctx.Process(
                    target=_worker_main,
                    args=(child, cfg, env_fn, slots, seed, self._raw, num_envs, prereset),
                    name=f"distrl-venv-{w}",
                    daemon=True,
                )
                p.start()
                child.close()
                self._procs.append(p)
                self._conns.append(parent)
            for w, c in enumerate(self._conns):
                if not c.poll(start_timeout_s):
                    raise RuntimeError(f"SubprocVecEnv: worker {w} did not start within {start_timeout_s} s")
                try:
                    self._check(c.recv_bytes(), w)
                except EOFError:
                    self._procs[w].join(5.0)
                    raise RuntimeError(
                        f"SubprocVecEnv: worker {w} exited while starting (exit code "
                        f"{self._procs[w].exitcode}). Workers start with multiprocessing's forkserver, which "
                        "re-imports the main script: a script that builds envs at import time needs an "
                        "`if __name__ == '__main__':` guard."
                    ) from None
        except BaseException:
            self.close()
            raise

    def _check(self, msg: bytes, w: int) -> bytes:
        if msg[:1] == b"E":
            raise RuntimeError(f"SubprocVecEnv worker {w} ({self.cfg.name!r}) failed:\n{msg[1:].decode()}")
        return msg

    def _died(self, w: int) -> RuntimeError:
        self._procs[w].join(1.0)
        return RuntimeError(
            f"SubprocVecEnv worker {w} ({self.cfg.name!r}) died (exit code {self._procs[w].exitcode})"
        )

    def _send(self, payload: bytes) -> None:
        for w, c in enumerate(self._conns):
            try:
                c.send_bytes(payload)
            except OSError:  # BrokenPipeError: the worker is gone
                raise self._died(w) from None

    def _gather(self) -> tuple[list[EpisodeInfo], int]:
        episodes: list[EpisodeInfo] = []
        faults = 0
        for w, c in enumerate(self._conns):
            try:
                msg = c.recv_bytes()
            except (EOFError, OSError):
                raise self._died(w) from None
            f, eps = pickle.loads(self._check(msg, w))
            faults += f
            episodes += eps
        return episodes, faults

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        self._assert_open()
        self._send(_CMD_RESET + pickle.dumps(seed))
        self._gather()
        return self.bufs.obs

    def step(self, actions: np.ndarray) -> StepResult:
        self._assert_open()
        self.bufs.actions[:] = actions
        self._send(_CMD_STEP)
        episodes, faults = self._gather()
        episodes.sort(key=lambda e: e.env_index)
        return _result(self.bufs, episodes, faults)

    def _assert_open(self) -> None:
        if self._closed:
            raise RuntimeError("SubprocVecEnv is closed")

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the workers (graceful command, then terminate, then kill). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for c in self._conns:
            try:
                c.send_bytes(_CMD_CLOSE)
            except (OSError, BrokenPipeError):
                pass
        deadline = time.monotonic() + timeout_s
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.terminate()
                p.join(2.0)
            if p.is_alive():  # pragma: no cover - an env stuck in C code
                p.kill()
                p.join(2.0)
        for c in self._conns:
            c.close()

    def __del__(self) -> None:
        try:
            self.close(timeout_s=1.0)
        except Exception:
            pass


# ----------------------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------------------


PRERESET_DEFAULT: dict[str, bool] = {
    "minihack": True,  # resets cost 10-100 steps
    "miniworld": True,  # a new world per episode
    "habitat": True,  # scene/episode loading
    "fake": True,
    "atari": False,  # a reset is rare (episodes of thousands of steps) and a spare ALE instance costs memory
}
"""Default of ``prereset`` per env family with subprocess vectorisation (inline mode never pre-resets by default:
one process cannot hide the work)."""


def make_vec_env(
    cfg: EnvConfig,
    num_envs: int,
    seed: int,
    *,
    prereset: bool | None = None,
    env_fn: EnvFn = make_env,
) -> InlineVecEnv | SubprocVecEnv:
    """A VecEnv of ``num_envs`` envs of ``cfg.name`` per ``cfg.vectorization``.

    ``prereset`` keeps a pre-reset spare env per slot (see the module doc); default: False inline,
    :data:`PRERESET_DEFAULT` of the env family with subprocess vectorisation. ``env_fn(cfg, seed)`` builds
    one env (default: the registry); it must be picklable for subprocess mode (a module-level function).
    """
    if num_envs < 1:
        raise ValueError(f"make_vec_env: num_envs must be >= 1, got {num_envs}")
    if cfg.vectorization == "inline":
        return InlineVecEnv(cfg, num_envs, seed, prereset=bool(prereset), env_fn=env_fn)
    if cfg.vectorization == "subprocess":
        workers = min(cfg.num_workers, num_envs)
        pre = PRERESET_DEFAULT.get(family_of(cfg.name)[1], True) if prereset is None else prereset
        return SubprocVecEnv(cfg, num_envs, seed, num_workers=workers, prereset=pre, env_fn=env_fn)
    raise ValueError(f"env.vectorization must be 'inline' or 'subprocess', got {cfg.vectorization!r}")
