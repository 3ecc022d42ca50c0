"""The runtime's shard restart on a real Ray cluster, without a training run: the lost-insert count survives
the death of the env actor that held the highest acknowledgement (the driver's last stats poll of the shard
witnesses it), a shard that dies twice before it checkpoints comes back as two distinct incarnations (priority
updates for the dead one's keys are dropped and counted), and ``runtime.shard_restarts`` bounds the restarts."""

from __future__ import annotations

import time

import numpy as np
import pytest

from distrl.config import ExperimentConfig, ReplayConfig, RuntimeConfig
from distrl.replay import BoundedInserter, key_counter, key_incarnation
from distrl.replay.testing import example_trajectory
from distrl.runtime.ray_app import RayRuntime
from distrl.runtime.ray_env_actor import EnvActorHandle
from distrl.runtime.ray_replay import PeriodicShardCheckpoints, RayShardClient, make_ray_shards
from distrl.runtime.resources import REPLAY_SHARD

pytestmark = pytest.mark.ray


class _Learners:
    """What _restart_shard needs of the LearnerGroup: it hands the new shard over."""

    def __init__(self) -> None:
        self.replaced: list[tuple[int, object]] = []

    def replace_shard(self, j: int, handle: object) -> None:
        self.replaced.append((j, handle))


def _wait_dead(ray, handle) -> None:
    """Kill an actor and return once calls to it fail (ray.kill is asynchronous)."""
    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get(handle.__ray_ready__.remote(), timeout=60)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    pytest.fail(f"{handle} still answers 60 s after ray.kill")


def test_restart_counts_lost_inserts_after_the_acking_actor_died_and_bumps_incarnations(ray_cluster, tmp_path):
    ray = ray_cluster

    @ray.remote(num_cpus=0)
    class Inserter:  # an env actor's replay side (RayEnvActor's BoundedInserter and replace_shard)
        def __init__(self, shard) -> None:
            self.ins = BoundedInserter(RayShardClient(shard, 0), max_inflight=2, timeout=60.0)

        def insert(self, start: int, b: int) -> int:
            self.ins.submit(example_trajectory(B=b, start=start))
            self.ins.flush()
            return self.ins.acked_end

        def replace_shard(self, handle) -> int:
            return self.ins.replace_client(RayShardClient(handle, 0))

    cfg = ExperimentConfig(replay=ReplayConfig(capacity=64, min_size=1, samples_per_insert=0.0),
                           runtime=RuntimeConfig(shard_restarts=2, actor_restarts=9))
    rt = RayRuntime(cfg, tmp_path)
    rt.options = {REPLAY_SHARD: {"num_cpus": 0}}
    rt.shard_restarts, rt._shard_seen, rt._stale_updates_dead, rt.lost_inserts = {}, {}, 0, 0
    shards = make_ray_shards(cfg.replay, 1, num_cpus=0, seed=0)
    location = rt.paths.shard_location(0)
    ckpts = PeriodicShardCheckpoints(0.0, [location])
    learners = _Learners()
    a = Inserter.remote(shards[0])
    actors = [EnvActorHandle(0, 0, a, None)]
    try:
        assert ray.get(a.insert.remote(0, 8)) == 8
        assert ray.get(shards[0].checkpoint.remote(location))[0] == 8
        assert ray.get(a.insert.remote(100, 6)) == 14  # 6 acknowledged after the checkpoint
        rt._shard_stats(shards, learners, actors, ckpts)  # the driver's poll sees 14
        # The env actor holding the acknowledgements dies, then the shard: only the driver's poll knows 14.
        _wait_dead(ray, a)
        _wait_dead(ray, shards[0])
        st = rt._shard_stats(shards, learners, actors, ckpts)[0]
        assert rt.shard_restarts == {0: 1} and learners.replaced == [(0, shards[0])]
        assert st.inserted == 8 and st.incarnation == 1
        assert rt.lost_inserts == 14 - 8

        # A new env actor inserts into the restarted shard; a learner samples it; the shard dies before its next
        # checkpoint, so it comes back from the same checkpoint: incarnation 2, not 1 again.
        b = Inserter.remote(shards[0])
        actors[0] = EnvActorHandle(0, 1, b, None)
        assert ray.get(b.insert.remote(200, 4)) == 12
        sampled = ray.get(shards[0].sample.remote(0, 4)).keys  # the 4 fresh rows: counts 8..11, incarnation 1
        assert (key_incarnation(sampled) == 1).all()
        assert sorted(key_counter(sampled).tolist()) == [8, 9, 10, 11]
        rt._shard_stats(shards, learners, actors, ckpts)
        _wait_dead(ray, shards[0])
        st = rt._shard_stats(shards, learners, actors, ckpts)[0]
        assert st.incarnation == 2 and st.inserted == 8
        assert rt.lost_inserts == 6 + (12 - 8)  # b survived and reported its acknowledgements
        assert ray.get(b.insert.remote(300, 4)) == 12  # the new shard reuses counts 8..11...
        assert ray.get(shards[0].update_priorities.remote(sampled, np.full(4, 1e6))) == 0  # ...not their keys
        rt._shard_stats(shards, learners, actors, ckpts)
        assert rt._stale_updates() == 4

        _wait_dead(ray, shards[0])  # a third death: past runtime.shard_restarts=2
        with pytest.raises(RuntimeError, match=r"replay shard 0 died 3 times \(limit runtime\.shard_restarts=2\)"):
            rt._shard_stats(shards, learners, actors, ckpts)
        assert rt.shard_restarts == {0: 2}
    finally:
        for h in [*shards, *(x.handle for x in actors)]:
            ray.kill(h)
