"""Env actors on a real local Ray cluster: insert into a real replay shard, pull weights, survive a kill."""

from __future__ import annotations

import time

import pytest
import torch

from distrl.config import EnvConfig, ExperimentConfig, ModelConfig, ReplayConfig, SequenceConfig
from distrl.envs.registry import env_spec
from distrl.models.agent import build_agent
from distrl.runtime.ray_env_actor import restart_env_actor, start_env_actor
from distrl.runtime.ray_replay import make_ray_shard
from distrl.runtime.weights import WeightStore
from distrl.types import PolicyWeights

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def _cfg() -> ExperimentConfig:
    return ExperimentConfig(
        env=EnvConfig(name="fake:counting", num_envs=4, fake_episode_len=5),
        model=ModelConfig(hidden_size=16),
        sequence=SequenceConfig(length=8, burn_in=0, period=8),
        # No rate limit: nobody samples in this test. A tight in-flight bound exercises BoundedInserter.
        replay=ReplayConfig(capacity=4096, min_size=1, samples_per_insert=0.0, max_inflight_inserts=2),
    )


def _wait_for(pred, timeout_s: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_env_actor_inserts_pulls_weights_and_restarts_after_kill(ray_cluster):
    ray = ray_cluster
    cfg = _cfg()
    shard = make_ray_shard(cfg.replay, 0, num_cpus=0.25, seed=0)
    store = ray.remote(num_cpus=0)(WeightStore).remote()
    agent = build_agent(cfg.model, env_spec(cfg.env))
    ray.get(store.publish.remote(3, PolicyWeights(3, agent.state_dict())))

    def size() -> int:
        return ray.get(shard.stats.remote()).size

    h = start_env_actor(cfg, 0, [shard], store, num_cpus=0.25)
    try:
        _wait_for(lambda: size() >= 8, what="first inserts")
        polled = ray.get(h.handle.stats.remote())
        stats = polled.report
        assert stats.policy_version == 3 and stats.incarnation == 0
        assert stats.env_steps > 0 and stats.faults == 0
        assert all(e.episode_return == 1.0 and e.length == 5 for e in polled.episodes)

        # A newer version reaches the running actor without it ever blocking on the store.
        with torch.no_grad():
            for p in agent.parameters():
                p.add_(0.1)
        ray.get(store.publish.remote(4, PolicyWeights(4, agent.state_dict())))
        _wait_for(lambda: ray.get(h.handle.stats.remote()).report.policy_version == 4, what="weights v4")

        # Rows in replay carry provenance (actor id, policy version).
        sample = ray.get(shard.sample.remote(16))
        assert sample.ok
        traj = sample.trajectory()
        assert set(traj.actor_id.tolist()) == {0}
        assert set(traj.policy_version.tolist()) <= {3, 4}
        assert traj.obs["count"].shape[:2] == (9, 16)

        # Kill the actor process: its run() ref fails with RayActorError; a restart carries on.
        ray.kill(h.handle, no_restart=True)
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(h.run_ref, timeout=30)
        before = size()
        h = restart_env_actor(cfg, h, [shard], store, num_cpus=0.25)
        assert h.incarnation == 1
        # Wait on the new actor's own acknowledged inserts: the shard's size alone can grow by the killed
        # actor's last in-flight inserts (up to max_inflight_inserts sequences) before the new one has stepped.
        _wait_for(
            lambda: ray.get(h.handle.stats.remote()).report.inserts_accepted_rows >= 8, what="inserts after restart"
        )
        assert size() >= before + 8
        stats = ray.get(h.handle.stats.remote()).report
        # The restarted actor pulled the current weights before its first step.
        assert stats.incarnation == 1 and stats.policy_version == 4

        # A graceful stop flushes in-flight inserts and returns the final counters.
        h.handle.stop.remote()
        final = ray.get(h.run_ref, timeout=60)
        assert final.inserts_inflight == 0 and final.sequences >= 1
        assert final.inserts_accepted_rows == 4 * final.sequences
    finally:
        for handle in (h.handle, shard, store):
            ray.kill(handle, no_restart=True)


def test_an_actor_started_before_the_learner_publishes_waits_for_the_first_weights(ray_cluster):
    """The runtime starts env actors beside the learner: an actor must not step on its own random weights."""
    ray = ray_cluster
    cfg = _cfg()
    shard = make_ray_shard(cfg.replay, 0, num_cpus=0.25, seed=0)
    store = ray.remote(num_cpus=0)(WeightStore).remote()
    h = start_env_actor(cfg, 0, [shard], store, num_cpus=0.25)
    try:
        ray.get(h.ready_ref, timeout=60)
        time.sleep(1.0)
        report = ray.get(h.handle.stats.remote()).report
        assert report.env_steps == 0 and report.policy_version == -1
        assert ray.get(shard.stats.remote()).size == 0
        agent = build_agent(cfg.model, env_spec(cfg.env))
        ray.get(store.publish.remote(0, PolicyWeights(0, agent.state_dict())))
        _wait_for(lambda: ray.get(shard.stats.remote()).size >= 8, what="inserts after the first publish")
        assert set(ray.get(shard.sample.remote(8)).trajectory().policy_version.tolist()) == {0}
    finally:
        for handle in (h.handle, shard, store):
            ray.kill(handle, no_restart=True)


def test_env_actor_loop_error_surfaces_on_run_ref(ray_cluster):
    ray = ray_cluster
    cfg = _cfg()
    cfg = ExperimentConfig(
        env=EnvConfig(name="fake:faulty?mode=raise&at=1", num_envs=2, fake_episode_len=5),
        model=cfg.model,
        sequence=cfg.sequence,
        replay=cfg.replay,
    )
    shard = make_ray_shard(cfg.replay, 0, num_cpus=0.25, seed=0)
    h = start_env_actor(cfg, 0, [shard], None, num_cpus=0.25)
    try:
        with pytest.raises(ray.exceptions.RayTaskError, match="faults in a row"):
            ray.get(h.run_ref, timeout=60)
    finally:
        ray.kill(h.handle, no_restart=True)
        ray.kill(shard, no_restart=True)


def test_an_atari_actor_sends_newest_frames_and_the_learner_side_gets_full_stacks(ray_cluster):
    pytest.importorskip("ale_py")
    ray = ray_cluster
    cfg = ExperimentConfig(
        env=EnvConfig(name="ALE/Pong-v5", num_envs=2, vectorization="inline", max_episode_steps=15),
        model=ModelConfig(encoder="small_cnn", hidden_size=16),
        sequence=SequenceConfig(length=8, burn_in=0, period=8),
        replay=ReplayConfig(capacity=256, min_size=1, samples_per_insert=0.0, max_inflight_inserts=2),
    )
    shard = make_ray_shard(cfg.replay, 0, num_cpus=0.25, seed=0)
    h = start_env_actor(cfg, 0, [shard], None, num_cpus=0.25)
    try:
        _wait_for(lambda: ray.get(shard.stats.remote()).size >= 8, what="Atari inserts")
        sample = ray.get(shard.sample.remote(8))
        assert sample.ok
        # Stored and sent as one 84x84 frame per step (+ step 0's 3 older frames per row) ...
        assert sample.leaves["obs/frames"].shape == (8, 9, 84, 84)
        assert sample.leaves["obs_stack/frames"].shape == (8, 3, 84, 84)
        # ... and handed to the learner as the stacks the actor saw: each step shifts the previous stack by one
        # frame, or starts an episode with its first frame repeated.
        traj = sample.trajectory()
        f = traj.obs["frames"]
        assert f.shape == (9, 8, 4, 84, 84)
        done = traj.done()
        assert done.any()  # 15-step games inside 8-step sequences
        for t in range(8):
            for b in range(8):
                if done[t, b]:
                    assert all(torch.equal(f[t + 1, b, i], f[t + 1, b, 3]) for i in range(3))
                else:
                    assert torch.equal(f[t + 1, b, :3], f[t, b, 1:])
    finally:
        ray.kill(h.handle, no_restart=True)
        ray.kill(shard, no_restart=True)
