"""Node-label requests reach Ray: an actor asking for a label no node has stays unplaced, one asking for a
resource the node has runs (distrl.runtime.resources decides what to ask for; see tests/unit/test_resources.py)."""

from __future__ import annotations

import pytest

from distrl.config import EnvConfig, ExperimentConfig, ReplayConfig
from distrl.runtime.ray_env_actor import start_env_actor
from distrl.runtime.ray_replay import make_ray_shard
from distrl.runtime.resources import LABEL_AMOUNT, NODE_LABELS, REPLAY_SHARD

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


def _cfg() -> ExperimentConfig:
    return ExperimentConfig(env=EnvConfig(name="fake:counting", num_envs=2), replay=ReplayConfig(capacity=64))


def test_label_requests_pin_or_wait(ray_cluster):
    ray = ray_cluster
    cfg = _cfg()
    have = ray.cluster_resources()
    assert not set(NODE_LABELS.values()) & set(have), "the test cluster must not carry distrl's node labels"
    label = {NODE_LABELS[REPLAY_SHARD]: LABEL_AMOUNT}
    unplaced = make_ray_shard(cfg.replay, 0, num_cpus=0.01, resources=label)
    actor = start_env_actor(cfg, 0, [unplaced], None, num_cpus=0.01, resources={"env_actor": LABEL_AMOUNT})
    try:
        ready, _ = ray.wait([unplaced.stats.remote(), actor.handle.ping.remote()], num_returns=1, timeout=3)
        assert not ready, "an actor asking for a label the cluster lacks was placed"
    finally:
        ray.kill(actor.handle)
        ray.kill(unplaced)
    # The same request for a custom resource this node does carry (its node:<ip> resource) is placed.
    node = next(k for k in have if k.startswith("node:") and "__internal" not in k)
    placed = make_ray_shard(cfg.replay, 1, num_cpus=0.01, resources={node: LABEL_AMOUNT})
    try:
        assert ray.get(placed.stats.remote(), timeout=60).size == 0
    finally:
        ray.kill(placed)
