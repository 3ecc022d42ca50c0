"""Preallocated, contiguous, per-leaf storage for fixed-length sequences.

A :class:`Schema` lists the leaves of a :class:`~distrl.types.Trajectory` in replay's batch-major layout
(``Trajectory.batch_major()``: ``obs/*`` ``[B, T + 1, ...]``, other time leaves ``[B, T, ...]``, per-row
leaves such as ``core_state/*`` and ``policy_version`` ``[B, ...]``) with each leaf's per-item shape and
dtype. :class:`SequenceStorage` holds one numpy array ``[capacity, *item_shape]`` per leaf, written as a ring.

* No per-item Python objects: inserting B rows is one slice assignment per leaf (two at the ring's wrap) and
  sampling n rows is one ``np.take`` per leaf. dtypes are kept (uint8 observations stay uint8), so the bytes
  stored per step equal the raw bytes plus a few bytes of bookkeeping per sequence.
* The arrays are reserved without being touched (:func:`reserve`); the OS commits pages only as the ring
  fills. They are plain 4 KiB-page anonymous mappings: numpy's ``np.empty`` asks the kernel for transparent
  huge pages on arrays of 4 MiB and more, and on a VM that hands free memory back to its host (free page
  reporting) committing those cost about 1.7x the kernel time of 4 KiB pages while filling an empty buffer
  (``tools/bench/replay.py``, ``insert_fill``: its ``*_sys_s`` and THP counters show it).
* Frame stacks (Atari's ``frames`` [4, 84, 84], declared in ``EnvSpec.frame_stacks``) arrive packed by the
  inserting side (``Trajectory.batch_major(frame_stacks)``): ``obs/frames`` holds one frame per step and the
  per-row ``obs_stack/frames`` step 0's three older frames, about a quarter of the bytes; the stacks are
  rebuilt exactly when a sample becomes a Trajectory again (``Trajectory.from_batch_major``).
* Compressed leaves (``replay.compress_obs``: every ``obs/*`` and ``obs_stack/*`` leaf): each row is
  kept as one zlib blob (level 1) in a list of ``capacity`` bytes objects instead of an array, compressed as it
  is written and decompressed as it is gathered. A Pong sequence's 41 frames of 84×84 (289,296 bytes) take
  about 3,900 (0.3 ms to compress, 0.1 ms to decompress), its whole stored row 7.2 KB instead of 313 KB, so a
  full 8,192-row Pong shard holds about 60 MB instead of 2.6 GB (BENCHMARKS.md, "Observations compressed in
  replay"). ``LeafSpec.codec`` records it; the rows' Python objects are the price (one per row and leaf).
* Core state (large for HCAM memory): a per-row leaf like any other, so it is stored once per *sequence*,
  not per step. ``core_state_dtype="float16"`` stores float ``core_state/*`` leaves at half precision (read
  back in their original dtype); the recurrent state is re-warmed by burn-in anyway, which is what makes the
  rounding harmless. Planned next step for very large memories: deduplicate the memory between overlapping
  sequences of one actor (consecutive sequences share all but one period of chunks) by storing chunk rows once
  in a separate ring and keeping per-sequence chunk indices, as Reverb's shared chunks do.

Usage::

    schema = Schema.from_leaves(traj.batch_major())
    store = SequenceStorage(capacity=4096, schema=schema)
    store.write(slot=0, leaves=schema.check_and_convert(traj.batch_major()))
    batch = store.gather(np.array([0, 0, 1]))          # dict leaf -> [3, ...]
"""

from __future__ import annotations

import mmap
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from distrl.types import is_tensor

CORE_STATE_PREFIX = "core_state/"
CODECS = ("", "zlib")
"""How a leaf's rows are stored: "" as a plain array, "zlib" as one zlib blob (level 1) per row."""
ZLIB_LEVEL = 1
_HUGE_PAGE_MIN_BYTES = 4 << 20  # numpy's threshold for asking for transparent huge pages


def reserve(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array like ``np.empty(shape, dtype)``, backed by a private anonymous mapping that does
    not ask for transparent huge pages (numpy's allocator does, with madvise, from 4 MiB). Pages are committed
    on first write, 4 KiB at a time, unless the kernel's THP mode is ``always``."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < _HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.empty(shape, dtype=dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)  # the array keeps the mapping alive


def to_numpy(name: str, value: Any) -> np.ndarray:
    """A numpy view of a tensor or array leaf (no copy for CPU tensors). Raises ValueError naming the leaf."""
    if is_tensor(value):
        if str(value.dtype) == "torch.bfloat16":
            raise ValueError(f"replay leaf {name!r}: bfloat16 is not storable (numpy has no bfloat16)")
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise ValueError(f"replay leaf {name!r}: expected a torch.Tensor or numpy array, got {type(value).__name__}")


@dataclass(frozen=True)
class LeafSpec:
    """One stored leaf: per-item shape, the dtype callers see, the dtype it is stored in and its ``codec``
    (:data:`CODECS`)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    stored_dtype: str
    codec: str = ""

    @property
    def item_nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.stored_dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "stored_dtype": self.stored_dtype,
            "codec": self.codec,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> LeafSpec:
        if not isinstance(d, Mapping):
            raise TypeError(f"a replay leaf spec must be a mapping, got {type(d).__name__}")
        codec = str(d.get("codec", ""))  # absent in checkpoints written before compression
        if codec not in CODECS:
            raise ValueError(f"replay leaf {d.get('name')!r}: unknown codec {codec!r} (known: {list(CODECS)})")
        return LeafSpec(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]), str(d["stored_dtype"]),
                        codec)


@dataclass(frozen=True)
class Schema:
    """The leaves every inserted batch must have: names, per-item shapes and dtypes (in sorted name order)."""

    leaves: tuple[LeafSpec, ...]

    @staticmethod
    def from_leaves(leaves: Mapping[str, Any], core_state_dtype: str | None = None,
                    compress: Collection[str] = ()) -> Schema:
        """Schema of a batch-major leaf dict (``[B, ...]``); ``core_state_dtype`` downcasts core state;
        ``compress`` names leaves stored as zlib blobs (the shard passes its observation leaves when
        ``replay.compress_obs`` is on). Raises ValueError naming a ``compress`` entry that is not a leaf here, or
        is bookkeeping the shard reads in place."""
        unknown = sorted(set(compress) - set(leaves))
        if unknown:
            raise ValueError(f"compressed leaves {unknown} are not stored leaves of this run "
                             f"(its leaves: {sorted(leaves)})")
        refused = sorted(n for n in compress if n == "policy_version" or n.startswith(CORE_STATE_PREFIX))
        if refused:
            raise ValueError(f"replay leaves {refused} cannot be compressed (the shard reads them in place); "
                             "name observation leaves such as obs/frames")
        specs = []
        for name in sorted(leaves):
            arr = to_numpy(name, leaves[name])
            if arr.ndim < 1:
                raise ValueError(f"replay leaf {name!r}: needs a leading batch axis, got a scalar")
            stored = arr.dtype
            if core_state_dtype is not None and name.startswith(CORE_STATE_PREFIX) and arr.dtype.kind == "f":
                stored = np.dtype(core_state_dtype)
            specs.append(LeafSpec(name, tuple(int(s) for s in arr.shape[1:]), arr.dtype.str, stored.str,
                                  "zlib" if name in compress else ""))
        return Schema(tuple(specs))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.leaves)

    def spec(self, name: str) -> LeafSpec:
        for s in self.leaves:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def item_nbytes(self) -> int:
        """Bytes one stored sequence occupies across all leaves, uncompressed."""
        return sum(s.item_nbytes for s in self.leaves)

    @property
    def plain_item_nbytes(self) -> int:
        """Bytes one stored sequence occupies in the leaves stored as arrays (not compressed)."""
        return sum(s.item_nbytes for s in self.leaves if not s.codec)

    def check_and_convert(self, leaves: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
        """Validate a batch-major leaf dict against the schema; return (numpy views, batch size B).

        Raises ValueError naming the first offending leaf (missing, unexpected, wrong shape or dtype, or
        a batch size that differs between leaves).
        """
        names = set(leaves)
        expected = set(self.names)
        if names != expected:
            missing, extra = sorted(expected - names), sorted(names - expected)
            raise ValueError(
                f"replay insert does not match the stored schema: missing leaves {missing}, unexpected leaves {extra}"
            )
        out: dict[str, np.ndarray] = {}
        batch: int | None = None
        for s in self.leaves:
            arr = to_numpy(s.name, leaves[s.name])
            if arr.ndim < 1 or tuple(arr.shape[1:]) != s.shape:
                raise ValueError(
                    f"replay leaf {s.name!r}: per-sequence shape {tuple(arr.shape[1:])} does not match the "
                    f"stored schema {s.shape} (batch-major, full shape {tuple(arr.shape)})"
                )
            if arr.dtype.str != s.dtype:
                raise ValueError(
                    f"replay leaf {s.name!r}: dtype {arr.dtype} does not match the stored schema {np.dtype(s.dtype)}"
                )
            if batch is None:
                batch = int(arr.shape[0])
            elif arr.shape[0] != batch:
                raise ValueError(f"replay leaf {s.name!r}: batch size {arr.shape[0]} differs from {batch}")
            out[s.name] = arr
        return out, int(batch or 0)

    def to_json(self) -> list[dict[str, Any]]:
        return [s.to_json() for s in self.leaves]

    @staticmethod
    def from_json(items: list[Mapping[str, Any]]) -> Schema:
        return Schema(tuple(LeafSpec.from_json(d) for d in items))


class SequenceStorage:
    """One preallocated array ``[capacity, *shape]`` per plain schema leaf (:attr:`arrays`), one list of
    ``capacity`` zlib blobs per compressed leaf (:attr:`blobs`), addressed by slot."""

    def __init__(self, capacity: int, schema: Schema) -> None:
        if capacity < 1:
            raise ValueError(f"SequenceStorage: capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.schema = schema
        self.arrays: dict[str, np.ndarray] = {
            s.name: reserve((self.capacity, *s.shape), np.dtype(s.stored_dtype)) for s in schema.leaves if not s.codec
        }
        self.blobs: dict[str, list[bytes]] = {s.name: [b""] * self.capacity for s in schema.leaves if s.codec}
        self.blob_nbytes = 0
        """Bytes held in :attr:`blobs` now (all compressed leaves, all slots)."""

    @property
    def nbytes(self) -> int:
        """Bytes reserved for item data (all slots of the arrays, plus the compressed rows held now)."""
        return sum(a.nbytes for a in self.arrays.values()) + self.blob_nbytes

    def write(self, slot: int, leaves: Mapping[str, np.ndarray]) -> None:
        """Write B rows at slots ``slot, slot + 1, ...`` (mod capacity). B <= capacity."""
        for name, dst in self.arrays.items():
            src = leaves[name]
            b = src.shape[0]
            first = min(b, self.capacity - slot)
            dst[slot : slot + first] = src[:first]  # casts to the stored dtype (e.g. fp16 core state)
            if first < b:
                dst[: b - first] = src[first:]
        for name, rows in self.blobs.items():
            src = np.ascontiguousarray(leaves[name], dtype=np.dtype(self.schema.spec(name).stored_dtype))
            for i in range(src.shape[0]):
                k = (slot + i) % self.capacity
                blob = zlib.compress(src[i], ZLIB_LEVEL)  # the contiguous row itself, no bytes copy
                self.blob_nbytes += len(blob) - len(rows[k])
                rows[k] = blob

    def gather(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Rows at ``slots`` ``[n]`` as new, contiguous, writable arrays ``[n, ...]`` in the stored dtypes."""
        out = {name: np.take(arr, slots, axis=0) for name, arr in self.arrays.items()}
        for name, rows in self.blobs.items():
            s = self.schema.spec(name)
            dst = np.empty((len(slots), *s.shape), dtype=np.dtype(s.stored_dtype))
            flat = dst.reshape(len(slots), -1).view(np.uint8)
            for i, k in enumerate(np.asarray(slots).tolist()):
                flat[i] = np.frombuffer(zlib.decompress(rows[k]), dtype=np.uint8)
            out[name] = dst
        return out

    def export_blobs(self, name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots ``[0, n)`` of compressed leaf ``name`` as (all blobs concatenated [uint8], offsets [n + 1])."""
        rows = self.blobs[name][:n]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        return np.frombuffer(b"".join(rows), dtype=np.uint8), offsets

    def import_blobs(self, name: str, data: np.ndarray, offsets: np.ndarray) -> None:
        """Fill slots ``[0, len(offsets) - 1)`` of compressed leaf ``name`` from :meth:`export_blobs`'s output.
        Raises ValueError when the offsets do not fit the data or a blob does not decompress to one row."""
        n = len(offsets) - 1
        s = self.schema.spec(name)
        if (n < 0 or n > self.capacity or offsets[0] != 0 or offsets[-1] != len(data)
                or np.any(np.diff(offsets) < 0)):
            raise ValueError(f"compressed replay leaf {name!r}: offsets do not fit {len(data)} bytes of blobs")
        raw = data.tobytes()
        rows = self.blobs[name]
        for k in range(n):
            blob = raw[offsets[k] : offsets[k + 1]]
            try:
                size = len(zlib.decompress(blob))
            except zlib.error as e:
                raise ValueError(f"compressed replay leaf {name!r}: row {k} does not decompress ({e})") from e
            if size != s.item_nbytes:
                raise ValueError(f"compressed replay leaf {name!r}: row {k} holds {size} bytes, not {s.item_nbytes}")
            self.blob_nbytes += len(blob) - len(rows[k])
            rows[k] = blob
