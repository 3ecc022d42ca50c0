"""SequenceStorage's array reservation: plain anonymous mappings, no transparent-huge-page request."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distrl.replay.storage import Schema, SequenceStorage, reserve


@pytest.mark.parametrize("shape, dtype", [((3, 5), np.float32), ((200, 21, 79), np.int16), ((600, 9000), np.uint8),
                                          ((0, 7), np.int64)])
def test_reserve_is_a_writable_contiguous_array(shape: tuple[int, ...], dtype: type) -> None:
    a = reserve(shape, np.dtype(dtype))
    assert a.shape == shape and a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous and a.flags.writeable
    ref = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape).astype(dtype)
    a[...] = ref
    np.testing.assert_array_equal(a, ref)
    np.testing.assert_array_equal(np.take(a, [0], axis=0) if shape[0] else a, ref[:1] if shape[0] else ref)


def _mapping_field(addr: int, field: str) -> int | None:
    """``field`` (e.g. THPeligible) of the /proc/self/smaps entry holding ``addr``; None when unreadable."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= addr < hi
        elif inside and head == f"{field}:":
            return int(line.split()[1])
    return None


def test_large_reservations_do_not_ask_for_huge_pages() -> None:
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        pytest.skip("no transparent huge pages on this kernel")
    if "[madvise]" not in mode:
        pytest.skip(f"THP mode is not madvise ({mode.strip()}): the kernel decides for every mapping")
    ours = reserve((64, 1 << 20), np.dtype(np.uint8))  # 64 MiB
    numpy_own = np.empty((64, 1 << 20), dtype=np.uint8)  # numpy madvises this one for huge pages
    # numpy madvises from the first 2 MiB boundary inside the array: look in the middle of each.
    ours_eligible = _mapping_field(ours.ctypes.data + ours.nbytes // 2, "THPeligible")
    numpy_eligible = _mapping_field(numpy_own.ctypes.data + numpy_own.nbytes // 2, "THPeligible")
    if ours_eligible is None or numpy_eligible is None:
        pytest.skip("/proc/self/smaps has no THPeligible field")
    assert numpy_eligible == 1, "numpy no longer asks for huge pages: reserve() may be unnecessary"
    assert ours_eligible == 0


def test_storage_round_trip_through_reserved_arrays() -> None:
    rng = np.random.default_rng(0)
    leaves = {"obs/glyphs": rng.integers(0, 5000, (4, 41, 21, 79)).astype(np.int16),
              "policy_version": np.arange(4, dtype=np.int64)}
    schema = Schema.from_leaves(leaves)
    store = SequenceStorage(capacity=6, schema=schema)
    arrays, b = schema.check_and_convert(leaves)
    store.write(4, arrays)  # wraps: rows at slots 4, 5, 0, 1
    out = store.gather(np.array([4, 5, 0, 1]))
    np.testing.assert_array_equal(out["obs/glyphs"], leaves["obs/glyphs"])
    np.testing.assert_array_equal(out["policy_version"], leaves["policy_version"])
    assert b == 4
