"""replay.compress_obs: observation leaves stored as one zlib blob per sequence read back exactly, across the
ring's wrap and through shard checkpoints (frame-stack packing: tests/unit/test_frame_stacks.py); bad names and
corrupt checkpoints are refused with the leaf named."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distrl.config import ReplayConfig
from distrl.replay import ReplayShard
from distrl.replay import checkpoint as ckpt
from distrl.replay.checkpoint import CheckpointError
from distrl.replay.storage import Schema, SequenceStorage
from distrl.replay.testing import example_trajectory

OBS = {"frames": ((4, 8, 8), np.uint8), "g": ((3,), np.int16)}


def cfg(**kw) -> ReplayConfig:
    base = dict(capacity=10, min_size=1, samples_per_insert=0.0, alpha=0.6, epsilon=1e-6)
    base.update(kw)
    return ReplayConfig(**base)


def filled(compress_obs: bool, inserts: int = 4) -> ReplayShard:
    shard = ReplayShard(cfg(compress_obs=compress_obs), seed=0)
    for i in range(inserts):  # 16 rows into 10 slots: the ring wraps
        assert shard.insert(example_trajectory(B=4, obs=OBS, start=4 * i, random_obs=True, seed=i)).ok
    return shard


def test_storage_round_trips_compressed_rows_across_the_wrap():
    leaves = {"obs/frames": np.random.default_rng(0).integers(0, 5, (6, 3, 4, 8, 8)).astype(np.uint8),
              "policy_version": np.zeros(6, dtype=np.int64)}
    schema = Schema.from_leaves(leaves, compress=("obs/frames",))
    assert schema.spec("obs/frames").codec == "zlib" and schema.spec("policy_version").codec == ""
    store = SequenceStorage(capacity=4, schema=schema)
    assert "obs/frames" not in store.arrays and len(store.blobs["obs/frames"]) == 4
    store.write(2, leaves)  # slots 2, 3, 0, 1, 2, 3: rows 4 and 5 overwrite rows 0 and 1
    out = store.gather(np.array([2, 3, 0, 1]))
    np.testing.assert_array_equal(out["obs/frames"], leaves["obs/frames"][[4, 5, 2, 3]])
    assert out["obs/frames"].flags.writeable and out["obs/frames"].dtype == np.uint8
    assert store.blob_nbytes == sum(len(b) for b in store.blobs["obs/frames"])
    assert 0 < store.blob_nbytes < 4 * schema.spec("obs/frames").item_nbytes  # 5 values per byte compress
    data, offsets = store.export_blobs("obs/frames", 4)
    again = SequenceStorage(capacity=4, schema=schema)
    again.import_blobs("obs/frames", data, offsets)
    np.testing.assert_array_equal(again.gather(np.arange(4))["obs/frames"], store.gather(np.arange(4))["obs/frames"])


def test_a_compressed_shard_samples_what_a_plain_one_does():
    plain, packed = filled(False), filled(True)
    assert set(packed._storage.blobs) == {"obs/frames", "obs/g"} and "obs/g" in plain._storage.arrays
    a, b = plain.sample(32), packed.sample(32)  # same seed, same priorities: the same rows
    np.testing.assert_array_equal(a.keys, b.keys)
    for name in a.leaves:
        np.testing.assert_array_equal(a.leaves[name], b.leaves[name], err_msg=name)
    assert torch.equal(a.trajectory().obs["frames"], b.trajectory().obs["frames"])
    # Stats count what is stored: the compressed leaf at its blobs' mean size.
    raw = plain.stats().row_nbytes
    assert packed.stats().row_nbytes < raw
    assert packed.stats().row_nbytes == Schema.plain_item_nbytes.fget(packed._schema) + round(
        packed._storage.blob_nbytes / len(packed))


def test_a_compressed_shard_checkpoint_restores_exactly(tmp_path):
    shard = filled(True)
    shard.save(tmp_path / "ckpt")
    back = ReplayShard.load(tmp_path / "ckpt", cfg(compress_obs=True), seed=0)
    assert len(back) == len(shard) == 10  # a new incarnation: new keys for the same rows, in the same order
    got, _ = back.read(back.keys())
    want, _ = shard.read(shard.keys())
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert back._storage.blob_nbytes == shard._storage.blob_nbytes


def test_a_corrupt_compressed_checkpoint_is_refused_naming_the_leaf(tmp_path):
    shard = filled(True)
    path = shard.save(tmp_path / "ckpt")
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    # Move one offset: the files' checksums hold (rewritten the way the checkpoint writer does), but the blobs
    # no longer line up, so only the content is wrong.
    arrays = {}
    for name, e in manifest["files"].items():
        a = np.empty(tuple(e["shape"]), dtype=np.dtype(e["dtype"]))
        ckpt.load_array_into(path, e, a)
        arrays[name] = a
    arrays["offsets:obs/frames"] = arrays["offsets:obs/frames"].copy()
    arrays["offsets:obs/frames"][1] += 1
    meta = {k: v for k, v in manifest.items() if k not in ("files", ckpt._MANIFEST_CRC)}
    ckpt.save_arrays(tmp_path / "bad", meta, arrays)
    with pytest.raises(CheckpointError, match="obs/frames"):
        ReplayShard.load(tmp_path / "bad", cfg(compress_obs=True), seed=0)


@pytest.mark.parametrize(("names", "match"), [(("obs/nope",), "not stored leaves"),
                                              (("core_state/h",), "cannot be compressed")])
def test_schema_refuses_compressing_missing_leaves_and_bookkeeping(names, match):
    leaves = {"obs/x": np.zeros((2, 3), np.uint8), "core_state/h": np.zeros((2, 4), np.float32),
              "policy_version": np.zeros(2, np.int64)}
    with pytest.raises(ValueError, match=match):
        Schema.from_leaves(leaves, compress=names)
