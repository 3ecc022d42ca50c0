"""RayRuntime on a real local Ray cluster: learning with 2 data-parallel learners, actor death and restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from faults import at_env_steps

from distrl.cli import prepare_run
from distrl.logging import read_jsonl
from distrl.runtime.ray_app import RayRuntime

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
MEMORY = str(REPO / "configs/fake_memory.yaml")


def _run(tmp_path, *over):
    cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", "logging.wandb=disabled",
                                           "logging.progress=false", "logging.log_every_s=1", *over])
    return RayRuntime(cfg, run_dir), run_dir


def test_two_learners_learn_and_stay_in_sync(ray_cluster, tmp_path):
    runtime, run_dir = _run(tmp_path, "learner.num_learners=2", "runtime.total_env_steps=32000")
    summary = runtime.train()
    assert summary["success_rate"] >= 0.9, summary  # chance is 0.5
    # Identical parameters on both replicas after all updates (gradient all-reduce over gloo).
    assert summary["learner_param_max_abs_diff"] == 0.0
    assert summary["learner_updates"] > 20
    assert (run_dir / "checkpoints/learner.pt").is_file() and (run_dir / "replay/shard_0").is_dir()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert any("learner/policy_lag_mean" in r for r in rows)


def test_killed_env_actor_is_restarted_and_the_run_goes_on(ray_cluster, tmp_path):
    # the kill waits for a metrics row with 2,000 env steps (one a second); the fake env makes 5,000 a second
    runtime, run_dir = _run(tmp_path, "runtime.total_env_steps=24000", "actor.num_actors=1")
    t, killed = at_env_steps(runtime, run_dir, 2000,
                             lambda: ray_cluster.kill(runtime.actor_handles[0].handle, no_restart=True), timeout_s=120)
    summary = runtime.train()
    t.join(5)
    assert "steps" in killed, "the test never killed the actor"
    assert summary["actor_restarts"] >= 1
    assert summary["env_steps"] >= 24000


@pytest.mark.parametrize("over, what", [
    # 4 learners + 0.5 (shard) CPUs on the 4-CPU test cluster: one learner never starts.
    (("learner.num_learners=4", "runtime.placement_timeout_s=3"), "the learners"),
    # 1 learner + 0.5 + 3 actors: the learner and two actors start, the third never does (the timeout leaves
    # the placed learner ample time to import torch and set up on a loaded 2-core box: ~5 s here).
    (("actor.num_actors=3", "runtime.placement_timeout_s=40"), "the env actors"),
])
def test_a_run_the_cluster_cannot_place_fails_with_the_arithmetic(ray_cluster, tmp_path, over, what):
    """Ray would wait for ever for CPUs it lacks; the runtime warns at once and fails after the timeout."""
    import ray

    cpus = ray.cluster_resources()["CPU"]
    # fit_to_cluster=false: keep the reservations (by default they would be scaled down to fit this unlabelled
    # cluster: test_fit_to_cluster_runs_where_it_would_not_place)
    runtime, _ = _run(tmp_path, "runtime.total_env_steps=1000", "runtime.fit_to_cluster=false", *over)
    with pytest.raises(RuntimeError, match=f"{what} did not start within") as e:
        runtime.train()
    assert f"and the cluster has {cpus:g}" in str(e.value) and "ray start --num-cpus" in str(e.value)
    # Nothing it started keeps CPUs reserved for the tests after it.
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < cpus and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == cpus


def test_fit_to_cluster_runs_where_it_would_not_place(ray_cluster, tmp_path):
    """The same 3-actor run that cannot be placed as asked (1 + 0.5 + 3 CPUs on 4) runs once its reservations
    are scaled to the cluster's CPUs, as a user's first run on `ray start --head` must."""
    runtime, _ = _run(tmp_path, "runtime.total_env_steps=1500", "actor.num_actors=3",
                      "runtime.placement_timeout_s=120")
    summary = runtime.train()
    assert summary["env_steps"] >= 1500
    opts = summary["ray_resources"]
    assert opts["env_actor"]["num_cpus"] < 1 and 3 * opts["env_actor"]["num_cpus"] + opts["learner"]["num_cpus"] \
        + opts["replay_shard"]["num_cpus"] <= 4
