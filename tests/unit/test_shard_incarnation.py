"""Shard incarnations (issue 22): a shard restored from its checkpoint issues keys no priority update for the
dead shard's rows can match, even where it reuses their insert counts; the inserter's acknowledgement count
across a restart; the runtime's own limit on shard restarts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distrl.config import ExperimentConfig, ReplayConfig, RuntimeConfig
from distrl.replay import (
    BoundedInserter,
    CheckpointError,
    LocalShardClient,
    ReplayShard,
    ReplayShardError,
    key_counter,
    key_incarnation,
)
from distrl.replay.testing import example_trajectory

CFG = ReplayConfig(capacity=64, min_size=1, samples_per_insert=0.0)


def _insert(shard: ReplayShard, start: int, b: int = 4) -> np.ndarray:
    res = shard.insert(example_trajectory(B=b, start=start))
    assert res.ok
    return res.keys


def test_a_priority_update_from_before_the_death_does_not_land_on_the_restored_shards_new_rows(tmp_path):
    shard = ReplayShard(CFG, seed=0)
    for i in range(2):
        _insert(shard, 4 * i)  # counts 0..7: in the checkpoint
    path = shard.save(tmp_path / "ck")
    for i in range(2, 4):
        _insert(shard, 4 * i)  # counts 8..15: after the checkpoint, lost with the shard
    s = shard.sample(4, n_fresh=8)  # the 8 fresh rows are the newest: counts 8..15
    old_keys = s.keys
    assert set(key_counter(old_keys[:8]).tolist()) == set(range(8, 16))
    del shard  # the shard dies; the learner's update for old_keys is still in flight

    restored = ReplayShard.load(path, CFG, seed=0)
    assert restored.incarnation == 1 and restored.stats().inserted == 8
    new_keys = np.concatenate([_insert(restored, 100 + 4 * i) for i in range(2)])  # reuse counts 8..15
    np.testing.assert_array_equal(key_counter(new_keys), np.arange(8, 16))
    assert not np.isin(old_keys, new_keys).any()  # same counts, other keys
    before = restored.read(restored.keys())[1]
    stats0 = restored.stats()

    assert restored.update_priorities(old_keys, np.full(old_keys.shape[0], 1e6)) == 0
    np.testing.assert_array_equal(restored.read(restored.keys())[1], before)  # every row kept its priority
    st = restored.stats()
    assert st.updates_stale == old_keys.shape[0]  # all of them dropped as stale, none as evicted
    assert st.updates_ignored == stats0.updates_ignored and st.updates_applied == stats0.updates_applied
    assert st.total_priority == stats0.total_priority and st.max_priority == stats0.max_priority
    # The new incarnation's own keys still apply (and a mixed batch applies exactly those).
    mixed = np.concatenate([new_keys[:2], old_keys[:3]])
    assert restored.update_priorities(mixed, np.array([5.0, 6.0, 7.0, 7.0, 7.0])) == 2
    np.testing.assert_array_equal(restored.read(new_keys[:2])[1], [5.0, 6.0])
    assert restored.stats().updates_stale == old_keys.shape[0] + 3


def test_evicted_keys_count_as_ignored_not_stale():
    shard = ReplayShard(ReplayConfig(capacity=8, min_size=1, samples_per_insert=0.0), seed=0)
    first = _insert(shard, 0)
    for i in range(1, 3):
        _insert(shard, 4 * i)  # 12 rows in 8 slots: the first 4 are gone
    assert shard.update_priorities(first, np.ones(4)) == 0
    st = shard.stats()
    assert st.updates_ignored == 4 and st.updates_stale == 0


def test_restoring_twice_from_one_checkpoint_gives_two_incarnations(tmp_path):
    shard = ReplayShard(CFG, seed=0)
    _insert(shard, 0)
    path = shard.save(tmp_path / "ck")
    first = ReplayShard.load(path, CFG)
    keys_first = _insert(first, 10)
    # It dies before it checkpoints: the next one comes from the same checkpoint. The checkpoint alone would make
    # it incarnation 1 again; the runtime passes the dead one's + 1.
    second = ReplayShard(CFG)
    second.restore(path, incarnation=first.incarnation + 1)
    assert second.incarnation == 2
    keys_second = _insert(second, 20)
    np.testing.assert_array_equal(key_counter(keys_first), key_counter(keys_second))
    assert second.update_priorities(keys_first, np.ones(4)) == 0 and second.stats().updates_stale == 4
    # Restoring into a shard object goes above its own incarnation too, and a saved incarnation is kept.
    second.restore(path)
    assert second.incarnation == 3
    assert ReplayShard.load(second.save(tmp_path / "ck3"), CFG).incarnation == 4


def test_an_empty_replacement_takes_the_incarnation_it_is_given():
    shard = ReplayShard(CFG, incarnation=3)
    keys = _insert(shard, 0)
    assert (key_incarnation(keys) == 3).all() and (key_counter(keys) == np.arange(4)).all()
    assert shard.stats().incarnation == 3
    np.testing.assert_array_equal(shard.keys(), keys)
    assert shard.update_priorities(keys, np.arange(4.0)) == 4
    s = shard.sample(8)
    assert (key_incarnation(s.keys) == 3).all()
    with pytest.raises(ValueError, match="incarnation"):
        ReplayShard(CFG, incarnation=-1)


def test_a_checkpoint_without_an_incarnation_loads_as_zero_and_a_bad_one_is_refused(tmp_path):
    shard = ReplayShard(CFG, seed=0)
    _insert(shard, 0)
    path = shard.save(tmp_path / "ck")
    manifest = path / "manifest.json"
    m = json.loads(manifest.read_text())
    m.pop("manifest_crc32")  # a hand-edited (or older) manifest has no checksum
    del m["incarnation"]  # written before incarnations existed
    manifest.write_text(json.dumps(m))
    assert ReplayShard.load(path, CFG).incarnation == 1
    for bad in (-1, "2", 1.5, 1 << 40):
        m["incarnation"] = bad
        manifest.write_text(json.dumps(m))
        with pytest.raises(CheckpointError, match=r"manifest\.json"):
            ReplayShard.load(path, CFG)


class _Gated:
    """A Pending whose answer 'arrives' when the test opens it (ok), or that fails like a dead shard's."""

    def __init__(self, fn) -> None:
        self.fn, self.open, self.dead = fn, False, False

    def done(self) -> bool:
        return self.open or self.dead

    def result(self, timeout=None):
        if self.dead:
            raise ReplayShardError(0, RuntimeError("actor died"))
        if not self.open:
            raise TimeoutError
        return self.fn()


class _GatedClient:
    def __init__(self, shard: ReplayShard) -> None:
        self.shard, self.gates = shard, []

    def insert_async(self, traj, priorities=None, prior=None):
        res = self.shard.insert(traj, priorities, prior=prior)  # stored now, answered when the gate opens
        self.gates.append(_Gated(lambda: res))
        return self.gates[-1]


def test_replace_client_counts_answers_that_arrived_unread_and_resends_only_the_rest(tmp_path):
    shard = ReplayShard(CFG, seed=0)
    _insert(shard, 0)
    path = shard.save(tmp_path / "ck")  # count 4
    dying = ReplayShard.load(path, CFG)  # incarnation 1: keys carry it, acked_end counts rows
    client = _GatedClient(dying)
    ins = BoundedInserter(client, max_inflight=4, timeout=5.0)
    for i in range(3):
        ins.submit(example_trajectory(B=4, start=10 * i))
    assert ins.accepted == 0 and len(ins) == 3
    client.gates[0].open = client.gates[1].open = True  # two answers arrived before the death...
    client.gates[2].dead = True  # ...the third insert was stored but never answered
    fresh = ReplayShard(CFG)
    fresh.restore(path, incarnation=2)
    assert ins.replace_client(LocalShardClient(fresh)) == 4 + 8  # 1 + the largest count acknowledged
    assert ins.accepted == 8
    ins.flush()
    assert fresh.stats().inserted == 4 + 4  # only the unanswered insert was re-sent
    assert ins.acked_end == 8 and ins.accepted == 12


def test_runtime_shard_restarts_is_typed_validated_and_separate_from_actor_restarts():
    assert RuntimeConfig().shard_restarts == RuntimeConfig().actor_restarts == 3
    with pytest.raises(ValueError, match=r"runtime\.shard_restarts"):
        ExperimentConfig(runtime=RuntimeConfig(shard_restarts=-1)).validate()
    ExperimentConfig(runtime=RuntimeConfig(shard_restarts=0, actor_restarts=5)).validate()


def test_load_config_refuses_a_shard_restarts_of_the_wrong_type(tmp_path):
    from distrl.config import ConfigError, load_config

    path = tmp_path / "x.yaml"
    path.write_text("runtime:\n  shard_restarts: many\n")
    with pytest.raises(ConfigError, match=r"runtime\.shard_restarts"):
        load_config(path)
    path.write_text("runtime:\n  shard_restarts: 7\n")
    assert load_config(path).runtime.shard_restarts == 7


def test_the_ray_runtime_stops_at_runtime_shard_restarts_naming_the_shard(tmp_path):
    from distrl.runtime.ray_app import RayRuntime

    cfg = ExperimentConfig(runtime=RuntimeConfig(shard_restarts=2, actor_restarts=9))
    rt = RayRuntime(cfg, tmp_path)
    rt.shard_restarts = {}
    err = RuntimeError("actor died")
    assert rt._count_shard_restart(1, err) == 1 and rt._count_shard_restart(1, err) == 2
    assert rt._count_shard_restart(0, err) == 1  # per shard id
    with pytest.raises(RuntimeError, match=r"replay shard 1 died 3 times \(limit runtime\.shard_restarts=2\)"):
        rt._count_shard_restart(1, err)
