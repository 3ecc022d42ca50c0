"""Global counts on a real local Ray cluster: two env actors feed one (sharded) count table, and what the learner
looks up is the sum over both actors (not one dict per process, as in the paper's code)."""

from __future__ import annotations

import numpy as np
import pytest

from distrl.bonuses.keys import state_keys
from distrl.config import BonusConfig, EnvConfig, ExperimentConfig, ModelConfig, ReplayConfig, SequenceConfig
from distrl.runtime.ray_counts import RayCounts, make_count_actors
from distrl.runtime.ray_env_actor import start_env_actor
from distrl.runtime.ray_replay import make_ray_shard

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

ENVS, T, SEQS = 4, 8, 5


def _cfg() -> ExperimentConfig:
    return ExperimentConfig(
        env=EnvConfig(name="fake:counting", num_envs=ENVS, fake_episode_len=5),
        model=ModelConfig(hidden_size=16),
        sequence=SequenceConfig(length=T, burn_in=0, period=T),
        replay=ReplayConfig(capacity=4096, min_size=1, samples_per_insert=0.0),
        bonus=BonusConfig(glob="count", count_key="obs", count_shards=2),
    )


def _key(count: int, episode: int, last_action: int) -> np.int64:
    obs = {"count": np.array([[[count]]]), "episode": np.array([[[episode]]]),
           "last_action": np.array([[[last_action]]])}
    return state_keys(obs, "obs", lead_ndim=2)[0, 0]


def test_two_env_actors_share_one_global_count_table(ray_cluster):
    ray = ray_cluster
    cfg = _cfg()
    shard = make_ray_shard(cfg.replay, 0, num_cpus=0.25, seed=0)
    handles = make_count_actors(cfg)
    assert len(handles) == 2
    actors = [start_env_actor(cfg, i, [shard], None, num_cpus=0.25, max_sequences=SEQS, counts=handles)
              for i in range(2)]
    try:
        reports = ray.get([a.run_ref for a in actors], timeout=120)
        counts = RayCounts(handles)  # the learner's client
        # every state acted on in an emitted sequence was counted exactly once, from both actors
        emitted = sum(SEQS * T * ENVS for _ in reports)
        assert counts.stats()["visits"] == emitted
        # episode 0 of every env slot starts from the same observation: 4 slots x 2 actors = 8 visits in the
        # one table (a per-actor table would answer 4); the second step of episode 0 depends on the action
        first = _key(0, 0, -1)
        assert counts.lookup(np.array([first]))[0] == 2 * ENVS
        # the key the learner computes for a [T, B] batch matches what the actors counted ([B] at a time)
        batch = np.full((3, 2), first)
        np.testing.assert_array_equal(counts.lookup(batch), np.full((3, 2), 2 * ENVS))
        # and the state moves to a new table (checkpoint / --resume) unchanged
        state = counts.state_dict()
        fresh = RayCounts(make_count_actors(cfg))
        fresh.load_state_dict(state)
        assert fresh.lookup(np.array([first]))[0] == 2 * ENVS
        assert fresh.stats() == counts.stats()
        for h in fresh.handles:
            ray.kill(h)
    finally:
        for a in actors:
            ray.kill(a.handle)
        for h in handles:
            ray.kill(h)
        ray.kill(shard)


@pytest.mark.timeout(480)  # two short Ray runs (start-up included), each about a minute on an idle 2-core box
def test_ray_runtime_with_global_counts_and_two_learners_checkpoints_and_resumes(ray_cluster, tmp_path):
    """The whole path on Ray: count-table actor, env actors sending keys, two data-parallel learners looking
    counts up (their normalisers merged by all-gather), the table saved with the learner and loaded by --resume."""
    from pathlib import Path

    from distrl.bonuses.counts import load_count_state, make_counts
    from distrl.cli import prepare_run
    from distrl.learners.learner import load_checkpoint_file
    from distrl.logging import read_jsonl
    from distrl.runtime.ray_app import RayRuntime

    memory = str(Path(__file__).resolve().parents[2] / "configs/fake_memory.yaml")
    over = [f"runtime.run_dir={tmp_path}", "runtime.run_name=counts", "logging.wandb=disabled",
            "logging.progress=false", "logging.log_every_s=1", "eval.every_updates=0", "bonus.glob=count",
            "bonus.episodic=count", "bonus.count_key=obs", "learner.num_learners=2", "runtime.total_env_steps=2500"]
    cfg, run_dir, _ = prepare_run(memory, over)
    summary = RayRuntime(cfg, run_dir).train()
    assert summary["learner_param_max_abs_diff"] == 0.0
    table = make_counts(1)
    table.load_state_dict(load_count_state(run_dir / "checkpoints/counts.pt"))
    visits = table.stats()["visits"]
    assert 0 < visits <= summary["env_steps"]
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert any(r.get("extras/bonus/global_mean", 0) > 0 for r in rows)
    std = load_checkpoint_file(run_dir / "checkpoints/learner.pt")["extras"]["bonus"]["moments.count"]
    assert float(std) > 0

    first = load_count_state(run_dir / "checkpoints/counts.pt")
    keys = np.concatenate([sh["keys"].numpy() for sh in first["shards"]])
    before = table.lookup(keys)

    # the resumed run's target is past what the first run counted (actors may run ahead of the learner's steps)
    target = int(summary["env_steps"]) + 2000
    cfg2, rd2, _ = prepare_run(None, [f"runtime.total_env_steps={target}"], resume=str(run_dir))
    RayRuntime(cfg2, rd2, resume=True).train()
    table2 = make_counts(1)
    table2.load_state_dict(load_count_state(run_dir / "checkpoints/counts.pt"))
    # loaded, then counted on: every key keeps at least its first-run count, and the total grew
    assert (table2.lookup(keys) >= before).all()
    assert table2.stats()["visits"] >= visits + 1000
