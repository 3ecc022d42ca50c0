"""Shard checkpoints: exact round trip; refusal of truncated, corrupt or mismatched checkpoints; atomicity."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from distrl.config import ReplayConfig
from distrl.replay import CheckpointError, ReplayShard, Schema, key_counter, key_incarnation
from distrl.replay.testing import example_trajectory

CFG = ReplayConfig(capacity=12, min_size=2, samples_per_insert=2.0, samples_per_insert_tolerance=4.0)


def filled_shard() -> ReplayShard:
    shard = ReplayShard(CFG, shard_id=3, seed=0)
    for i in range(4):  # 16 rows into 12 slots: the ring has wrapped
        shard.insert(example_trajectory(B=4, start=4 * i, policy_version=i))
    s = shard.sample(5, n_fresh=2)
    shard.update_priorities(s.keys, np.arange(1.0, 8.0))
    return shard


def file_of(path: Path, name: str) -> Path:
    manifest = json.loads((path / "manifest.json").read_text())
    return path / manifest["files"][name]["file"]


def flip_bits(f: Path, at: int, mask: int) -> None:
    """Corrupt checkpoint file ``f`` in place: XOR byte ``at`` with ``mask`` (length unchanged)."""
    data = bytearray(f.read_bytes())
    data[at] ^= mask
    f.write_bytes(bytes(data))


def test_round_trip_restores_data_priorities_counters_and_rng(tmp_path):
    shard = filled_shard()
    path = shard.save(tmp_path / "shard3")
    restored = ReplayShard.load(path, CFG)
    assert restored.shard_id == 3
    before, after = shard.stats(), restored.stats()
    assert after.incarnation == before.incarnation + 1  # a restore is a new incarnation; all else is kept
    assert dataclasses.replace(after, incarnation=before.incarnation) == before
    np.testing.assert_array_equal(key_counter(shard.keys()), key_counter(restored.keys()))
    assert (key_incarnation(restored.keys()) == 1).all()
    (la, pa), (lb, pb) = shard.read(shard.keys()), restored.read(restored.keys())
    np.testing.assert_array_equal(pa, pb)
    assert la.keys() == lb.keys()
    for k in la:
        np.testing.assert_array_equal(la[k], lb[k])
        assert la[k].dtype == lb[k].dtype
    # Same RNG state and tree: both shards continue identically (fresh rows included).
    sa, sb = shard.sample(6, n_fresh=3), restored.sample(6, n_fresh=3)
    np.testing.assert_array_equal(key_counter(sa.keys), key_counter(sb.keys))
    np.testing.assert_array_equal(sa.probs, sb.probs)
    ka, kb = shard.insert(example_trajectory(B=4)).keys, restored.insert(example_trajectory(B=4)).keys
    np.testing.assert_array_equal(key_counter(ka), key_counter(kb))
    assert not list(tmp_path.glob(".shard3.*"))  # no temporary directories left behind


def test_empty_shard_round_trip(tmp_path):
    shard = ReplayShard(CFG, seed=0)
    restored = ReplayShard.load(shard.save(tmp_path / "empty"), CFG)
    assert len(restored) == 0 and restored.schema is None
    assert restored.insert(example_trajectory(B=2)).ok


def test_saving_over_an_existing_checkpoint_replaces_it_atomically(tmp_path):
    shard = filled_shard()
    path = tmp_path / "ck"
    shard.save(path)
    shard.insert(example_trajectory(B=4, start=50))
    shard.save(path)
    assert ReplayShard.load(path, CFG).stats().inserted == shard.stats().inserted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_truncated_file_is_refused_naming_it(tmp_path):
    path = filled_shard().save(tmp_path / "ck")
    f = file_of(path, "leaf:obs/x")
    f.write_bytes(f.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=rf"{f.name}.*truncated"):
        ReplayShard.load(path, CFG)


def test_corrupt_data_is_refused_by_checksum(tmp_path):
    path = filled_shard().save(tmp_path / "ck")
    f = file_of(path, "leaf:behaviour_logits")
    flip_bits(f, -5, 0xFF)
    with pytest.raises(CheckpointError, match=rf"{f.name}: checksum mismatch"):
        ReplayShard.load(path, CFG)


@pytest.mark.parametrize("what", ["missing_manifest", "bad_json", "version", "missing_file", "header"])
def test_broken_checkpoints_are_refused(tmp_path, what):
    path = filled_shard().save(tmp_path / "ck")
    m = path / "manifest.json"
    if what == "missing_manifest":
        m.unlink()
        match = "manifest.json: missing"
    elif what == "bad_json":
        m.write_text(m.read_text()[:40])
        match = "corrupt or truncated manifest"
    elif what == "version":
        d = json.loads(m.read_text())
        d["schema_version"] = 99
        m.write_text(json.dumps(d))
        match = "schema_version 99"
    elif what == "missing_file":
        file_of(path, "meta:priority").unlink()
        match = "missing from the checkpoint"
    else:  # a file whose .npy header disagrees with the manifest (same byte size)
        f = file_of(path, "leaf:policy_version")
        np.save(f, np.zeros(12, dtype=np.float64))
        match = "header says"
    with pytest.raises(CheckpointError, match=match):
        ReplayShard.load(path, CFG)


def test_schema_or_capacity_mismatch_is_refused(tmp_path):
    path = filled_shard().save(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="capacity 12 differs"):
        ReplayShard.load(path, ReplayConfig(capacity=13, min_size=2))
    other = Schema.from_leaves(example_trajectory(B=1, obs={"x": ((3,), np.uint8)}).batch_major())
    with pytest.raises(CheckpointError, match="obs/x"):
        ReplayShard.load(path, CFG, schema=other)
    # A shard that already holds data of another schema refuses too, and keeps its own data.
    shard = ReplayShard(CFG, seed=0)
    shard.insert(example_trajectory(B=2, num_actions=5))
    with pytest.raises(CheckpointError, match="behaviour_logits"):
        shard.restore(path)
    assert len(shard) == 2 and shard.stats().inserted == 2


def test_a_failed_restore_leaves_the_shard_unchanged(tmp_path):
    path = filled_shard().save(tmp_path / "ck")
    f = file_of(path, "leaf:core_state/h")
    flip_bits(f, -1, 1)
    shard = ReplayShard(CFG, seed=0)
    shard.insert(example_trajectory(B=3, start=70))
    before = shard.stats()
    with pytest.raises(CheckpointError):
        shard.restore(path)
    assert shard.stats() == before
    np.testing.assert_array_equal(shard.read(shard.keys())[0]["env_step"], [70, 71, 72])


def test_no_pickle_in_checkpoint_files(tmp_path):
    path = filled_shard().save(tmp_path / "ck")
    files = sorted(p.name for p in path.rglob("*"))
    arrays = [f for f in files if f.endswith(".npy")]
    assert arrays and set(files) == {*arrays, "manifest.json"}, files  # arrays + a JSON manifest, nothing else
    for f in arrays:
        np.load(path / f, allow_pickle=False)  # every array loads without pickle
    json.loads((path / "manifest.json").read_text())
