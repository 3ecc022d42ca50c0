"""Run locations (distrl.storage): absolute paths, the Ray-job working-dir rule, remote URIs through fsspec (an
in-memory filesystem stands in for s3:// / gs://, which cannot be reached here), and fitting a run's CPU
reservations to a small cluster (distrl.runtime.resources.fit_to_cluster)."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from distrl import storage
from distrl.cli import resolve_run
from distrl.config import ConfigError, ExperimentConfig, load_config
from distrl.replay.testing import example_trajectory
from distrl.runtime.common import RunPaths
from distrl.runtime.ray_replay import StoredShard
from distrl.runtime.resources import (
    ENV_ACTOR,
    LEARNER,
    REPLAY_SHARD,
    component_counts,
    fit_to_cluster,
    ray_options,
)


def test_resolve_location_is_absolute_and_leaves_ray_job_copies():
    assert storage.resolve_location("runs", cwd="/home/u/repo") == "/home/u/repo/runs"
    job_cwd = "/tmp/ray/session_x/runtime_resources/working_dir_files/_ray_pkg_0123abcd"
    assert storage.resolve_location("runs", cwd=job_cwd) == str(Path.home() / "distrl" / "runs")
    assert storage.resolve_location("/abs/runs/", cwd=job_cwd) == "/abs/runs"
    assert storage.resolve_location("file:///abs/runs") == "/abs/runs"
    assert storage.resolve_location("~/r") == str(Path.home() / "r")
    assert storage.resolve_location("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.is_remote("gs://b/x") and storage.is_remote("memory://x")
    assert not storage.is_remote("/a/b") and not storage.is_remote("file:///a/b")
    assert storage.join("s3://b/runs", "r1", "replay") == "s3://b/runs/r1/replay"
    assert storage.join("/a", "r1") == "/a/r1"


def test_resolve_run_local_location_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = resolve_run(None, ["runtime.run_dir=out", "runtime.run_name=r1"])
    assert run.location == str(tmp_path / "out" / "r1") and run.run_dir == tmp_path / "out" / "r1"
    assert (run.run_dir / "config.yaml").is_file()
    again = resolve_run(None, [], resume="out/r1")
    assert again.resuming and again.location == run.location


def test_remote_location_round_trip(tmp_path, monkeypatch):
    """A run at a remote URI: config pushed at start, staged locally, pulled back by --resume on a fresh node."""
    monkeypatch.setenv("DISTRL_STAGING_DIR", str(tmp_path / "stage_a"))
    root = f"memory://distrl-test-{uuid.uuid4().hex[:8]}/runs"
    run = resolve_run(None, [f"runtime.run_dir={root}", "runtime.run_name=r1", "runtime.total_env_steps=5"])
    assert run.location == f"{root}/r1" and not run.resuming
    assert storage.exists(f"{root}/r1/config.yaml")
    assert run.run_dir.is_relative_to(tmp_path / "stage_a")
    with pytest.raises(ConfigError, match="already holds a run"):
        resolve_run(None, [f"runtime.run_dir={root}", "runtime.run_name=r1"])
    # what the runtime writes locally, then pushes (checkpoints mid-run, everything at the end)
    paths = RunPaths(run.run_dir, run.location)
    paths.learner_checkpoint.parent.mkdir(parents=True)
    paths.learner_checkpoint.write_bytes(b"ckpt")
    (run.run_dir / "wandb_run_id").write_text("abc123\n")
    paths.push("checkpoints")
    assert storage.exists(f"{root}/r1/checkpoints/learner.pt")
    storage.push(run.run_dir, run.location)
    assert storage.read_text(f"{root}/r1/wandb_run_id").strip() == "abc123"
    assert paths.shard_location(1) == f"{root}/r1/replay/shard_1"

    monkeypatch.setenv("DISTRL_STAGING_DIR", str(tmp_path / "stage_b"))  # another node: nothing staged yet
    again = resolve_run(None, ["runtime.total_env_steps=9"], resume=run.location)
    assert again.resuming and again.location == run.location and again.cfg.runtime.total_env_steps == 9
    assert (again.run_dir / "checkpoints/learner.pt").read_bytes() == b"ckpt"
    assert (again.run_dir / "wandb_run_id").read_text().strip() == "abc123"  # the same wandb run continues
    with pytest.raises(ConfigError, match=r"no config\.yaml"):
        resolve_run(None, [], resume=f"{root}/nothing-here")


def test_stored_shard_saves_to_and_restores_from_a_remote_location(tmp_path, monkeypatch):
    from distrl.config import ReplayConfig

    cfg = ReplayConfig(capacity=12, min_size=2, samples_per_insert=2.0, samples_per_insert_tolerance=4.0)
    monkeypatch.setenv("DISTRL_STAGING_DIR", str(tmp_path / "node_a"))
    shard = StoredShard(cfg, shard_id=0, seed=0)
    for i in range(3):
        shard.insert(example_trajectory(B=4, start=4 * i, policy_version=i))
    where = f"memory://distrl-test-{uuid.uuid4().hex[:8]}/runs/r/replay/shard_0"
    shard.save(where)
    assert storage.exists(f"{where}/manifest.json")
    monkeypatch.setenv("DISTRL_STAGING_DIR", str(tmp_path / "node_b"))
    other = StoredShard(cfg, shard_id=0, seed=1)
    other.restore(where)
    before, after = shard.stats(), other.stats()
    assert after.incarnation == before.incarnation + 1  # a restored shard is a new incarnation; all else is kept
    assert dataclasses.replace(after, incarnation=before.incarnation) == before
    local = tmp_path / "plain"
    shard.save(local)  # a local path is a plain ReplayShard save
    assert (local / "manifest.json").is_file()


# ---- fitting the CPU reservations to a small cluster ------------------------------------------------------


def _total(cfg: ExperimentConfig, opts: dict) -> float:
    counts = component_counts(cfg)
    return sum(counts[c] * opts[c]["num_cpus"] for c in (LEARNER, ENV_ACTOR, REPLAY_SHARD))


def test_fit_scales_the_default_run_to_a_two_cpu_ray_start():
    cfg = load_config(None, [])
    cluster = {"CPU": 2.0, "memory": 1e9}
    opts, msg = fit_to_cluster(cfg, ray_options(cfg, cluster), cluster)
    assert _total(cfg, ray_options(cfg, cluster)) > 2.0  # the default does not fit as asked ...
    assert 1.9 <= _total(cfg, opts) <= 2.0  # ... and does once scaled
    assert "the cluster has 2 CPUs" in msg and "runtime.fit_to_cluster=false" in msg
    assert opts[LEARNER]["num_cpus"] < 1.0 and opts[REPLAY_SHARD]["num_cpus"] > 0


def test_fit_leaves_runs_that_fit_labelled_clusters_and_opt_outs_alone():
    cfg = load_config(None, [])
    for cluster, c in (({"CPU": 8.0}, cfg), ({"CPU": 2.0, "env_actor": 1.0, "learner": 1.0}, cfg),
                       ({"CPU": 2.0}, load_config(None, ["runtime.fit_to_cluster=false"]))):
        before = ray_options(c, cluster)
        opts, msg = fit_to_cluster(c, before, cluster)
        assert opts == before and msg == ""
