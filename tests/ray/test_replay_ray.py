"""Replay shards as real Ray actors: remote inserts, sampling with priority updates, kill and restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distrl.config import ReplayConfig
from distrl.replay import (
    BoundedInserter,
    ReplaySampler,
    ReplayShardError,
    insert_with_retry,
    key_counter,
    key_incarnation,
)
from distrl.replay.testing import example_trajectory
from distrl.runtime.ray_replay import RayShardClient, make_ray_shard, make_ray_shards, ray_shard_clients

pytestmark = pytest.mark.ray

CFG = ReplayConfig(capacity=64, min_size=8, samples_per_insert=0.0, alpha=0.6)


def test_ray_shards_serve_a_sampler_and_survive_kill_and_restore(ray_cluster, tmp_path):
    ray = ray_cluster
    handles = make_ray_shards(CFG, 2, num_cpus=0.25, seed=0)
    clients = ray_shard_clients(handles)

    @ray.remote(num_cpus=0.25)
    def insert_task(handle, shard_id: int, start: int) -> int:
        client = RayShardClient(handle, shard_id)
        for i in range(3):
            insert_with_retry(client, example_trajectory(B=4, start=start + 4 * i), timeout=60.0)
        return 12

    @ray.remote(num_cpus=0.25)
    class EnvActorStandIn:
        def run(self, handle, shard_id: int, start: int, n: int) -> int:
            ins = BoundedInserter(RayShardClient(handle, shard_id), max_inflight=2, timeout=60.0)
            for i in range(n):
                ins.submit(example_trajectory(B=4, start=start + 4 * i, policy_version=i))
            ins.flush()
            return ins.accepted

    actor = EnvActorStandIn.remote()
    done = ray.get(
        [
            insert_task.remote(handles[0], 0, 0),
            actor.run.remote(handles[0], 0, 1000, 2),
            insert_task.remote(handles[1], 1, 2000),
        ],
        timeout=120,
    )
    assert done == [12, 8, 12]
    assert [ray.get(h.stats.remote()).size for h in handles] == [20, 12]

    sampler = ReplaySampler(clients, CFG, batch_size=16, n_fresh=4, prefetch=2, seed=0)
    seen = set()
    for _ in range(6):
        b = sampler.next_batch(timeout=60.0)
        assert b.B == 16 and b.traj.obs["x"].shape == (6, 16, 2)
        seen |= set(b.shard_ids.tolist())
        # Each row is exactly the row its (shard, key) names in that shard.
        for j in (0, 1):
            m = b.shard_ids == j
            if m.any():
                leaves, _ = ray.get(handles[j].read.remote(b.keys[m].numpy()))
                np.testing.assert_array_equal(leaves["env_step"], b.traj.env_step[m].numpy())
        sampler.update_priorities(b.keys, b.shard_ids, torch.full((16,), 50.0))
    assert seen == {0, 1}

    # Checkpoint shard 0, change it afterwards, kill it, restore it: it holds exactly the checkpointed items.
    sampler.flush_updates(timeout=60.0)  # priority updates are asynchronous: let the last ones land first
    path = clients[0].save(tmp_path / "shard0")
    keys_at_ckpt = ray.get(handles[0].keys.remote())
    leaves_at_ckpt, prio_at_ckpt = ray.get(handles[0].read.remote(keys_at_ckpt))
    assert (prio_at_ckpt == 50.0).any()  # the sampler's priority updates reached the shard
    insert_with_retry(clients[0], example_trajectory(B=4, start=5000), timeout=60.0)
    ray.kill(handles[0])
    with pytest.raises(ReplayShardError, match="shard 0"):
        for _ in range(50):
            sampler.next_batch(timeout=60.0)

    new = make_ray_shard(CFG, 0, num_cpus=0.25, seed=0, restore_from=path)
    new_keys = ray.get(new.keys.remote())  # the same rows, under the new incarnation's keys
    np.testing.assert_array_equal(key_counter(new_keys), key_counter(keys_at_ckpt))
    assert (key_incarnation(new_keys) == 1).all() and (key_incarnation(keys_at_ckpt) == 0).all()
    leaves, prio = ray.get(new.read.remote(new_keys))
    np.testing.assert_array_equal(prio, prio_at_ckpt)
    assert leaves.keys() == leaves_at_ckpt.keys()
    for k in leaves:
        np.testing.assert_array_equal(leaves[k], leaves_at_ckpt[k])
    assert ray.get(new.stats.remote()).size == 20

    sampler.replace_client(0, RayShardClient(new, 0))
    seen = set()
    for _ in range(10):
        seen |= set(sampler.next_batch(timeout=60.0).shard_ids.tolist())
    assert seen == {0, 1}
    sampler.close()
    for h in (new, handles[1], actor):
        ray.kill(h)
