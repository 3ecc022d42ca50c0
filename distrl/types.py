"""Data that crosses component boundaries: named, frozen, time-major.

Shape letters: T time (sequence length incl. burn-in), B batch (env slots or sequences), A actions,
F features, H hidden.

* :class:`Trajectory`: what an env actor emits and what replay stores: one fixed-length sequence per batch row,
  time-major ``[T, B, ...]`` (``obs`` has ``T + 1`` steps: the last one is the bootstrap observation). Its
  per-step fields are declared once, with :func:`per_step` (dtype, trailing shape, the writer's default);
  the sequence writer, flattening, replay storage and the test builder all follow that declaration.
* :class:`ReplaySample`: a Trajectory drawn from replay plus its keys, shard ids and IS weights.
* :class:`ActOut`: one acting step of the agent.

Tensors here are torch tensors on the CPU unless a component moved them. Observations and core states are
``dict[str, Tensor]`` because their keys depend on the env and the core; every other field is named.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: a replay shard's or the driver's process never loads it
    import torch
    from torch import Tensor


def is_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch: a process that has not loaded torch (a replay
    shard, the driver) holds no tensors."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_numpy(x: Any) -> np.ndarray:
    """``x`` as a NumPy array: a tensor (any device) detached and brought to the host, anything else through
    ``np.asarray`` (NumPy arrays pass through uncopied). Does not import torch."""
    return x.detach().cpu().numpy() if is_tensor(x) else np.asarray(x)


def as_tensors(leaves: Mapping[str, Any]) -> dict[str, Tensor]:
    """A name -> array mapping (a published :class:`PolicyWeights` state_dict: NumPy arrays, possibly read-only
    views of a Ray object) as CPU tensors; tensors pass through. Imports torch."""
    import torch

    return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v, copy=True))
            for k, v in leaves.items()}


def as_arrays(leaves: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A name -> tensor mapping as NumPy arrays that own their memory (CPU copies): what a learner publishes, so
    a process that receives it needs no torch to read it."""
    return {k: np.array(as_numpy(v), copy=True) for k, v in leaves.items()}


CoreState = dict[str, "Tensor"]
"""Recurrent-core state: named tensors, each batch-first ``[B, ...]`` (state has no time axis)."""

Obs = dict[str, "Tensor"]
"""Observation dict: each value ``[T, B, ...]`` (sequence) or ``[B, ...]`` (one step)."""


@dataclass(frozen=True)
class StepField:
    """One per-step field of :class:`Trajectory`: a ``[T, B, *shape]`` tensor of ``dtype``.

    ``shape`` names the trailing dims, by letter where they depend on the env (``("A",)``: one entry per
    action; resolved by :meth:`shape_for`). ``default`` is what the sequence writer records for a step that
    leaves the field out (or passes None); ``None`` makes the field required. Declared on the Trajectory class
    with :func:`per_step`, read back with :meth:`Trajectory.step_fields`.
    """

    name: str
    dtype: np.dtype
    shape: tuple[str | int, ...] = ()
    default: bool | int | float | None = None

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return torch.from_numpy(np.zeros(0, dtype=self.dtype)).dtype

    def shape_for(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        """The trailing shape with its letters replaced from ``dims`` (e.g. ``{"A": spec.num_actions}``)."""
        missing = [d for d in self.shape if isinstance(d, str) and d not in dims]
        if missing:
            raise KeyError(f"step field {self.name!r}: no size given for dim {missing[0]!r} (given: {sorted(dims)})")
        return tuple(d if isinstance(d, int) else int(dims[d]) for d in self.shape)


_STEP = "distrl.per_step"


def per_step(
    dtype: Any, *, shape: tuple[str | int, ...] = (), default: bool | int | float | None = None
) -> dict[str, StepField]:
    """Field metadata that declares a per-step :class:`Trajectory` field ``[T, B, *shape]`` (see
    :class:`StepField`)::

        reward: Tensor = field(metadata=per_step(np.float32))  # [T, B]
    """
    return {_STEP: StepField("", np.dtype(dtype), tuple(shape), default)}


@functools.cache
def _step_fields(cls: type) -> tuple[StepField, ...]:
    return tuple(
        dataclasses.replace(f.metadata[_STEP], name=f.name) for f in dataclasses.fields(cls) if _STEP in f.metadata
    )


@functools.cache
def _time_fields(cls: type) -> frozenset[str]:
    return frozenset(["obs", *(f.name for f in _step_fields(cls))])


@dataclass(frozen=True)
class Trajectory:
    """One fixed-length sequence on each of B rows, time-major.

    Step t means: the agent saw ``obs[t]`` with core state s_t, took ``action[t]`` (logits
    ``behaviour_logits[t]``), got ``reward[t]`` and then ``terminated[t]`` / ``truncated[t]`` tell whether that
    action ended the episode. If it did, ``obs[t + 1]`` is the *first* observation of the next episode and the
    core state is reset before it. ``core_state`` is the state to use with ``obs[0]`` as is (already reset if
    ``obs[0]`` starts an episode).

    On a truncated step, ``truncation_value[t]`` holds the actor's value estimate of the final observation of
    the cut episode (discounting is the learner's job), so the learner can bootstrap through time limits; it is
    zero elsewhere. ``valid[t]`` is False for padding steps (none by default; reserved for partial sequences
    closed after an env fault) which carry no loss.

    Per-step fields (``[T, B, ...]``) are declared with :func:`per_step`, and that line is all a new one needs:
    :meth:`step_fields` lists them for the sequence writer (which allocates, fills and emits them by name),
    flattening and replay storage treat them as time leaves, and ``distrl.replay.testing.random_trajectory``
    fills them. The producer then passes the value to ``SequenceWriter.add(name=...)``.

    Usage::

        traj = actor_batch                      # [T, B]
        first = traj.reset_mask()               # [T + 1, B]: reset the core before obs[t]
        items = traj.unbind_batch()             # B single-row trajectories for replay
    """

    obs: Obs  # each [T + 1, B, ...]
    action: Tensor = field(metadata=per_step(np.int64))  # [T, B]
    reward: Tensor = field(metadata=per_step(np.float32))  # [T, B], raw extrinsic
    terminated: Tensor = field(metadata=per_step(np.bool_))  # [T, B]
    truncated: Tensor = field(metadata=per_step(np.bool_))  # [T, B]
    truncation_value: Tensor = field(metadata=per_step(np.float32))  # [T, B], zero where not truncated
    behaviour_logits: Tensor = field(metadata=per_step(np.float32, shape=("A",)))  # [T, B, A]
    episodic_bonus: Tensor = field(metadata=per_step(np.float32, default=0.0))  # [T, B], raw, actor-side (0: no bonus)
    duration: Tensor = field(metadata=per_step(np.float32))  # [T, B] seconds of env.step for this step
    launch_time: Tensor = field(metadata=per_step(np.float64, default=0.0))  # [T, B] wall clock (s) at env.step
    episode_time: Tensor = field(metadata=per_step(np.float32, default=0.0))  # [T, B] episode's seconds so far
    valid: Tensor = field(metadata=per_step(np.bool_, default=True))  # [T, B]
    core_state: CoreState  # each [B, ...]
    policy_version: Tensor  # [B] int64: weights version that acted at step 0
    actor_id: Tensor  # [B] int64
    env_step: Tensor  # [B] int64: the actor's env-step counter at step 0

    # ---- shape helpers ---------------------------------------------------------------------------------------
    @property
    def T(self) -> int:
        return int(self.action.shape[0])

    @property
    def B(self) -> int:
        return int(self.action.shape[1])

    def done(self) -> Tensor:
        """[T, B] bool: step t ended an episode (terminated or truncated)."""
        return self.terminated | self.truncated

    def reset_mask(self) -> Tensor:
        """[T + 1, B] bool: reset the core state before processing obs[t]. Row 0 is False (see class doc)."""
        import torch

        first = torch.zeros((self.T + 1, self.B), dtype=torch.bool, device=self.action.device)
        first[1:] = self.done()
        return first

    # ---- the field declaration -------------------------------------------------------------------------------
    @classmethod
    def step_fields(cls) -> tuple[StepField, ...]:
        """The per-step fields ``[T, B, ...]``, in declaration order (``obs``, ``[T + 1, B, ...]``, is not one)."""
        return _step_fields(cls)

    @classmethod
    def time_fields(cls) -> frozenset[str]:
        """Fields with a time axis first: ``obs`` and the :meth:`step_fields`; the rest are per-row ``[B, ...]``."""
        return _time_fields(cls)

    # ---- flattening (replay storage and transport) -----------------------------------------------------------
    # Keys are "field" or "field/subkey"; time_fields() have a time axis first, the rest are per-row.
    def flatten(self) -> dict[str, Tensor]:
        """Named leaves. Time-axis leaves stay ``[T(+1), B, ...]``; per-row leaves are ``[B, ...]``."""
        out: dict[str, Tensor] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Mapping):
                for k, t in v.items():
                    out[f"{f.name}/{k}"] = t
            else:
                out[f.name] = v
        return out

    @classmethod
    def unflatten(cls, leaves: Mapping[str, Tensor]) -> Trajectory:
        kw: dict[str, Any] = {"obs": {}, "core_state": {}}
        for name, t in leaves.items():
            if "/" in name:
                key, sub = name.split("/", 1)
                kw[key][sub] = t
            else:
                kw[name] = t
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(kw)
        if missing:
            raise KeyError(f"{cls.__name__}.unflatten: missing fields {sorted(missing)}")
        return cls(**kw)

    @classmethod
    def is_time_leaf(cls, name: str) -> bool:
        return name.split("/", 1)[0] in _time_fields(cls)

    def map(self, fn: Callable[[Tensor], Tensor]) -> Trajectory:
        """Apply fn to every tensor (e.g. ``.to(device)``), keeping the structure."""
        return self.unflatten({k: fn(v) for k, v in self.flatten().items()})

    def index_batch(self, idx: Tensor | slice | int) -> Trajectory:
        """Select rows along the batch axis (axis 1 for time leaves, axis 0 for per-row leaves)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return self.unflatten(
            {k: (v[:, idx] if self.is_time_leaf(k) else v[idx]) for k, v in self.flatten().items()}
        )

    def unbind_batch(self) -> Iterator[Trajectory]:
        for b in range(self.B):
            yield self.index_batch(b)

    @staticmethod
    def concat(trajs: list[Trajectory]) -> Trajectory:
        """Concatenate along the batch axis."""
        import torch

        cls = type(trajs[0])
        flat = [t.flatten() for t in trajs]
        return cls.unflatten(
            {k: torch.cat([f[k] for f in flat], dim=1 if cls.is_time_leaf(k) else 0) for k in flat[0]}
        )

    def batch_major(self, frame_stacks: Collection[str] = ()) -> dict[str, Tensor]:
        """Leaves with the batch axis first (``[B, T, ...]``): the layout replay storage uses.

        ``frame_stacks``: observation keys that are frame stacks (``EnvSpec.frame_stacks``); each is stored as
        its newest frame per step plus the older frames of step 0 (:func:`pack_frame_stacks`), a
        ``k``-fold saving for a stack of ``k``. :meth:`from_batch_major` rebuilds the stacks."""
        leaves = {k: (_swap01(v) if self.is_time_leaf(k) else v) for k, v in self.flatten().items()}
        return pack_frame_stacks(leaves, frame_stacks) if frame_stacks else leaves

    @classmethod
    def from_batch_major(cls, leaves: Mapping[str, Tensor]) -> Trajectory:
        """Inverse of :meth:`batch_major`: the one boundary where replay's ``[B, T]`` becomes ``[T, B]``."""
        leaves = unpack_frame_stacks(leaves)
        return cls.unflatten({k: (_swap01(v) if cls.is_time_leaf(k) else v) for k, v in leaves.items()})


def _swap01(x: Any) -> Any:
    """``x`` with its first two axes swapped (a view): a tensor or a NumPy array."""
    return np.swapaxes(x, 0, 1) if isinstance(x, np.ndarray) else x.transpose(0, 1)


# ---- frame stacks in replay -------------------------------------------------------------------------------------
# A frame stack [k, ...] (Atari's 4 x 84 x 84) repeats each frame k times along a sequence. Replay keeps the
# newest frame of every step under the obs key and the k - 1 older frames of step 0 under "obs_stack/<key>"
# (a per-row leaf); the stacks follow from those and the episode boundaries, because the env shifts its stack
# by one frame per step and starts an episode with its first frame repeated (EnvSpec.frame_stacks).
STACK_PREFIX = "obs_stack/"


def pack_frame_stacks(leaves: Mapping[str, Any], keys: Collection[str]) -> dict[str, Any]:
    """Batch-major leaves with each ``obs/<key>`` ``[B, T + 1, k, ...]`` replaced by its newest frames
    ``[B, T + 1, ...]`` and ``obs_stack/<key>`` ``[B, k - 1, ...]`` (step 0's older frames), of the leaf's type
    (CPU tensors or NumPy arrays; the work is NumPy's, so an actor without torch packs too). Raises ValueError
    naming the key, row and step where the stacks do not follow the frame-stack rule, since replay would then
    rebuild observations the actor never saw."""
    out = dict(leaves)
    done = as_numpy(leaves["terminated"]) | as_numpy(leaves["truncated"])  # [B, T]
    for key in keys:
        name = f"obs/{key}"
        if name not in leaves:
            raise KeyError(f"frame stack {key!r}: no observation leaf {name!r} (have {sorted(leaves)})")
        x = as_numpy(leaves[name])
        if x.ndim < 3 or x.shape[2] < 2:
            raise ValueError(f"frame stack {key!r}: expected [B, T + 1, k >= 2, ...], got {tuple(x.shape)}")
        _check_frame_stack(key, x, done)
        # contiguous: the leaves are about to be copied out (to a Ray object or the storage ring) in one piece
        newest, head = np.ascontiguousarray(x[:, :, -1]), np.ascontiguousarray(x[:, 0, :-1])
        if is_tensor(leaves[name]):
            import torch

            newest, head = torch.from_numpy(newest), torch.from_numpy(head)
        out[name], out[STACK_PREFIX + key] = newest, head
    return out


def _check_frame_stack(key: str, x: np.ndarray, done: np.ndarray) -> None:
    """Step t + 1 shifts step t's stack by one frame, or, after an episode end, repeats its newest frame."""
    if x.shape[1] < 2:
        return
    w = _words(x)  # [B, T + 1, k, words]: compared 8 bytes at a time where the frame size allows
    B, T = done.shape
    bad = ~(w[:, 1:, :-1] == w[:, :-1, 1:]).reshape(B, T, -1).all(axis=2) & ~done  # [B, T]
    rows, steps = np.nonzero(done)
    if rows.size:
        first = w[rows, steps + 1]  # [n, k, words]: first stacks of new episodes
        repeated = (first == first[:, -1:]).reshape(rows.size, -1).all(axis=1)
        bad[rows[~repeated], steps[~repeated]] = True
    if bad.any():
        b, t = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"observation {key!r} is declared a frame stack (EnvSpec.frame_stacks), but at row {b}, step {t + 1} "
            "it neither shifts the previous step's stack by one frame nor, after an episode end, repeats its "
            "first frame; replay could not rebuild it (declare only true frame stacks)"
        )


def _words(x: np.ndarray) -> np.ndarray:
    """``[B, T, k, ...]`` with each frame flattened, as int64 words when its bytes allow (an 84 x 84 uint8
    frame is 882 words): the same equality, an eighth of the elements to compare."""
    tm = np.ascontiguousarray(np.swapaxes(x, 0, 1))  # batch_major's leaves are views of time-major arrays: no copy
    frame = tm.reshape(*tm.shape[:3], -1)  # [T + 1, B, k, n]
    if (frame.shape[-1] * frame.itemsize) % 8 == 0 and frame.itemsize < 8:
        frame = frame.view(np.int64)
    return np.swapaxes(frame, 0, 1)


def unpack_frame_stacks(leaves: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`pack_frame_stacks` (leaves without ``obs_stack/*`` pass through unchanged)."""
    import torch

    names = [n for n in leaves if n.startswith(STACK_PREFIX)]
    if not names:
        return dict(leaves)
    out = dict(leaves)
    done = torch.as_tensor(leaves["terminated"]) | torch.as_tensor(leaves["truncated"])  # [B, T]
    for name in names:
        obs = "obs/" + name[len(STACK_PREFIX):]
        out[obs] = rebuild_frame_stacks(torch.as_tensor(out.pop(name)), torch.as_tensor(leaves[obs]), done)
    return out


def rebuild_frame_stacks(head: Tensor, newest: Tensor, done: Tensor) -> Tensor:
    """Stacks ``[B, T + 1, k, ...]`` from step 0's older frames ``head [B, k - 1, ...]``, the newest frames
    ``newest [B, T + 1, ...]`` and the episode ends ``done [B, T]``: position j of step t's stack (lag
    L = k - 1 - j) is the newest frame of step max(t - L, s_t), s_t being the start of t's episode."""
    import torch

    B, T1 = newest.shape[:2]
    k = head.shape[1] + 1
    out = torch.empty((B, T1, k, *newest.shape[2:]), dtype=newest.dtype)
    for j in range(k):  # lag L = k - 1 - j: step t takes step t - L's newest frame, or head's for t < L
        lag = min(k - 1 - j, T1)
        out[:, :lag, j] = head[:, j: j + lag]
        out[:, lag:, j] = newest[:, : T1 - lag]
    if bool(done.any()):  # the first k - 1 steps of an episode repeat its first frame instead
        t = torch.arange(T1)
        start = torch.full((B, T1), -k, dtype=torch.int64)  # -k: the episode began before this sequence
        start[:, 1:] = torch.where(done.to(torch.bool), t[1:], torch.tensor(-k))
        start = start.cummax(dim=1).values  # [B, T + 1]
        lag = torch.arange(k - 1, -1, -1)
        b, tt, j = torch.nonzero(start[:, :, None] > t[None, :, None] - lag, as_tuple=True)
        out[b, tt, j] = newest[b, start[b, tt]]  # such a start is a step of this sequence (>= 1)
    return out


@dataclass(frozen=True)
class EpisodeMemorySpec:
    """What a core declares about the append-only part of its state, so replay can store it once per stream
    instead of once per sequence (:mod:`distrl.replay.episode_memory`), without knowing the core.

    ``keys`` name ring tensors ``[B, ring, *item]``: the c-th item written (c = 0, 1, ...) goes to slot
    ``c % ring`` and is never changed afterwards; ``counter`` names the ``[B]`` int64 count of items written so
    far. ``steps_per_item``: at least this many steps lie between two writes (so a span of P steps adds at most
    ``ceil(P / steps_per_item)``). ``cleared_at_episode_start``: an episode start clears the memory (a new
    stream); False for a memory kept across episodes (a counter that goes down starts a new stream anyway).

    Usage::

        spec = core.episode_memory       # HCAM: EpisodeMemorySpec(("mem0", "key0"), "count", 8, 32, True)
    """

    keys: tuple[str, ...]
    counter: str
    steps_per_item: int
    ring: int
    cleared_at_episode_start: bool = True


@dataclass(frozen=True)
class ReplaySample:
    """A batch of sequences drawn from one or more replay shards.

    ``keys[i]`` identifies row i inside shard ``shard_ids[i]`` (slot and generation, so a priority update for a
    slot that has since been overwritten is ignored). ``weights`` are importance weights normalised by the batch
    max; ``probs`` are the true global sampling probabilities P(i). Fresh (online) rows are flagged in ``fresh`` and
    carry weight 1.
    """

    traj: Trajectory  # [T, B]
    keys: Tensor  # [B] int64
    shard_ids: Tensor  # [B] int64
    weights: Tensor  # [B] float32
    probs: Tensor  # [B] float64
    fresh: Tensor | None = None  # [B] bool: row was handed out as fresh (online) data, not a prioritized draw
    prior: Tensor | None = None  # [B] float64: sampling prior d_i stored with the row (1 = none; ALGORITHMS §3.5)

    @property
    def B(self) -> int:
        return int(self.keys.shape[0])


@dataclass(frozen=True)
class ActOut:
    """One acting step for B env slots (no autograd). Torch tensors from ``Agent.act``, NumPy arrays from the
    NumPy acting path (:class:`~distrl.models.numpy_act.NumpyPolicy`) and ``RandomPolicy``; the env actor
    takes either."""

    action: Any  # [B] int64
    logits: Any  # [B, A] float32
    value: Any  # [B] float32
    state: Any  # CoreState, each leaf [B, ...]: state to use with the *next* observation (before any reset)


@dataclass(frozen=True)
class EpisodeStats:
    """Summary of one finished episode, reported by env actors."""

    actor_id: int
    env_index: int
    episode_return: float  # raw extrinsic return (full game for Atari)
    length: int
    success: float | None = None  # 1.0 / 0.0 where the env defines success, else None
    extra: tuple[tuple[str, float], ...] = ()  # env-specific scalars, e.g. (("spl", 0.7),)


@dataclass(frozen=True)
class PolicyWeights:
    """What a learner publishes to env actors: the policy's weights and any actor-side extra's, one version.

    ``policy`` is the agent's ``state_dict`` as NumPy arrays (:func:`as_arrays`); ``extras[name]`` the weights
    of learner extra ``name`` that actors use (for example an E3B embedding; learner-only extras such as RND are
    absent), also NumPy. One object, so an actor never acts with a policy of one version and an embedding of
    another. NumPy, not tensors, so that a process can receive and read them without loading torch (an env
    actor acting through :mod:`distrl.models.numpy_kernels`); ``Agent.load_state_dict`` takes them as they are,
    other torch modules through :func:`as_tensors`.
    """

    version: int
    policy: dict[str, np.ndarray]
    extras: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class LearnerReport:
    """What a learner worker reports after a round of updates (``LearnerWorker.train``).

    ``metrics`` are the means over the round's updates of :class:`~distrl.learners.learner.LearnerOutput`'s
    metrics (keys ``learner/...`` and ``extras/<name>/...``); empty when ``updates == 0``."""

    updates: int
    env_steps: int  # fresh env steps consumed (post-burn-in steps of fresh rows)
    samples: int  # sequences trained on
    version: int  # learner version after the round
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class ActorReport:
    """An env actor's cumulative counters (``EnvActor.counters``), plus the Ray host's insert and weight
    counters when it runs as a Ray actor (zeros in one process).

    The ``time_*_s`` counters are wall seconds ``EnvActor.step`` spent in the policy (acting, bonus, truncation
    values, state resets), in the VecEnv, and in total (the rest is sequence cutting and bookkeeping)."""

    actor_id: int
    env_steps: int
    steps_per_s: float  # since the actor's first step (the Ray host's ``stats`` reports it since its last call)
    faults: int
    sequences: int
    episodes: int
    policy_version: int
    time_policy_s: float
    time_env_s: float
    time_step_s: float
    incarnation: int = 0  # restarts of this actor id so far (Ray)
    inserts_accepted_rows: int = 0
    inserts_resent: int = 0
    inserts_dropped: int = 0
    inserts_inflight: int = 0
    weight_updates: int = 0


@dataclass(frozen=True)
class ActorStats:
    """One poll of a Ray env actor: its counters (``steps_per_s`` since the previous poll) and the episodes it
    finished since then (drained)."""

    report: ActorReport
    episodes: list[EpisodeStats] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation (:class:`~distrl.runtime.evaluate.Evaluator`, ``distrl eval``) measured.

    ``greedy``: actions were the argmax (else sampled, as in training). ``stuck_episodes``: greedy episodes ended
    early because the same (observation, action) pair, or a short cycle of them, repeated for
    ``eval.stuck_steps`` steps (the greedy policy would have repeated itself until the time limit). Their return
    and length are what they had when cut; they count as failures when the env reports success.
    ``success_rate`` is None when the env does not report success. ``video``: the path of the first episode's
    video, or None."""

    env: str
    episodes: int
    return_mean: float
    return_std: float
    length_mean: float
    success_rate: float | None
    learner_version: int
    greedy: bool
    stuck_episodes: int
    video: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
