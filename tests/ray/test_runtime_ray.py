"""RayRuntime on a real local Ray cluster: learning with 2 data-parallel learners, actor death and restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

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
    runtime, run_dir = _run(tmp_path, "runtime.total_env_steps=12000", "actor.num_actors=1")
    killed = {}

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
            if runtime.actor_handles and rows and rows[-1].get("charts/env_steps", 0) >= 2000:
                h = runtime.actor_handles[0]
                ray_cluster.kill(h.handle, no_restart=True)
                killed["steps"] = rows[-1]["charts/env_steps"]
                return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    summary = runtime.train()
    t.join(5)
    assert "steps" in killed, "the test never killed the actor"
    assert summary["actor_restarts"] >= 1
    assert summary["env_steps"] >= 12000
