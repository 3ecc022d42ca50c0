"""distrl.runtime.resources: what each Ray actor asks for, from the config and the cluster's resources (no Ray)."""

from __future__ import annotations

import pytest

from distrl.config import ConfigError, load_config
from distrl.runtime.resources import (
    ENV_ACTOR,
    LABEL_AMOUNT,
    LEARNER,
    NODE_LABELS,
    REPLAY_SHARD,
    cpus_needed,
    describe,
    placement_message,
    ray_options,
)

LAPTOP = {"CPU": 8.0, "memory": 1e10, "node:127.0.0.1": 1.0, "node:__internal_head__": 1.0}
# What clusters/ray-cluster.yaml gives Ray with 1 GPU learner node and 2 actor nodes (see tests/unit/test_clusters).
CLUSTER = {"CPU": 16.0 + 8 + 2 * 32, "GPU": 1.0, "replay_shard": 1.0, "learner": 1.0, "env_actor": 2.0}


def cfg(*overrides: str):
    return load_config(None, ["runtime.total_env_steps=1000", *overrides])


def test_cpus_come_from_the_config():
    opts = ray_options(cfg("learner.num_cpus=2", "replay.num_cpus=0.25", "actor.num_cpus=1.5"), LAPTOP)
    assert opts == {LEARNER: {"num_cpus": 2.0}, ENV_ACTOR: {"num_cpus": 1.5}, REPLAY_SHARD: {"num_cpus": 0.25}}


def test_default_cpus_and_env_workers():
    assert ray_options(cfg(), LAPTOP) == {LEARNER: {"num_cpus": 1.0}, ENV_ACTOR: {"num_cpus": 1.0},
                                          REPLAY_SHARD: {"num_cpus": 0.5}}
    sub = cfg("env.vectorization=subprocess", "env.num_workers=2", "env.num_envs=4")
    assert ray_options(sub, LAPTOP)[ENV_ACTOR] == {"num_cpus": 3.0}  # its own process + 2 workers
    assert ray_options(cfg("env.vectorization=subprocess", "env.num_workers=2", "env.num_envs=4", "actor.num_cpus=2"),
                       LAPTOP)[ENV_ACTOR] == {"num_cpus": 2.0}
    need = cpus_needed(cfg("actor.num_actors=3", "replay.num_shards=2", "learner.num_learners=2"))
    assert need == {"env actors": 3.0, "learners": 2.0, "replay shards": 1.0, "total": 6.0}


def test_labelled_cluster_pins_each_component_to_its_nodes():
    opts = ray_options(cfg(), CLUSTER)
    assert opts[LEARNER] == {"num_cpus": 1.0, "num_gpus": 1, "resources": {"learner": LABEL_AMOUNT}}
    assert opts[ENV_ACTOR] == {"num_cpus": 1.0, "resources": {"env_actor": LABEL_AMOUNT}}
    assert opts[REPLAY_SHARD] == {"num_cpus": 0.5, "resources": {"replay_shard": LABEL_AMOUNT}}
    # A label pins, it does not count: 1000 actors fit a label declared as 1 (CPUs decide how many really fit).
    assert LABEL_AMOUNT * 1000 <= 1.0 and LABEL_AMOUNT >= 1e-4  # Ray's resource granularity
    line = describe(cfg(), opts, CLUSTER)
    assert "pinned to the nodes labelled env_actor, learner, replay_shard" in line
    assert "1 x learner (1 CPU + 1 GPU + learner=0.001)" in line


def test_only_declared_labels_are_asked_for():
    partial = {"CPU": 40.0, "env_actor": 16.0}
    opts = ray_options(cfg(), partial)
    assert "resources" not in opts[LEARNER] and "resources" not in opts[REPLAY_SHARD]
    assert opts[ENV_ACTOR]["resources"] == {"env_actor": LABEL_AMOUNT}
    assert "no node labelled learner, replay_shard" in describe(cfg(), opts, partial)
    assert all("resources" not in o for o in ray_options(cfg(), LAPTOP).values())
    assert "declares no node labels" in describe(cfg(), ray_options(cfg(), LAPTOP), LAPTOP)
    assert all("resources" not in o for o in ray_options(cfg("runtime.node_labels=false"), CLUSTER).values())


def test_learner_gpu_rule():
    two = cfg("learner.num_learners=2")
    assert "num_gpus" not in ray_options(two, {"CPU": 8.0, "GPU": 1.0})[LEARNER]  # not one GPU per learner
    assert "num_gpus" not in ray_options(cfg("learner.device=cpu"), CLUSTER)[LEARNER]
    with pytest.raises(RuntimeError, match=r"learner\.device=cuda"):
        ray_options(cfg("learner.device=cuda"), LAPTOP)


def test_placement_message_names_the_knobs_and_the_labels():
    msg = placement_message(cfg("actor.num_actors=4"), {"CPU": 2.0})
    assert "reserves 5.5 CPUs" in msg and "the cluster has 2" in msg and "actor.num_cpus" in msg
    assert "pinned" not in msg
    assert "pinned to the nodes labelled env_actor, learner, replay_shard" in placement_message(cfg(), CLUSTER)


def test_negative_cpus_are_config_errors():
    for key in ("actor.num_cpus", "learner.num_cpus", "replay.num_cpus"):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            cfg(f"{key}=-1")


def test_cpu_fields_do_not_change_the_fingerprint():
    """Placement only: a run may resume with other CPU amounts."""
    assert cfg().fingerprint() == cfg("actor.num_cpus=2", "learner.num_cpus=3", "replay.num_cpus=1").fingerprint()


def test_labels_are_named_after_the_components():
    assert NODE_LABELS == {LEARNER: "learner", ENV_ACTOR: "env_actor", REPLAY_SHARD: "replay_shard"}
