"""A replay shard killed mid-run on a real local Ray cluster: restarted from its last periodic checkpoint, the
learner and the env actor reconnect, the run completes and learns, and the lost inserts are counted exactly."""

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


def test_killed_replay_shard_is_restarted_and_lost_inserts_are_counted(ray_cluster, tmp_path):
    # A run of fixed wall time, not env steps: on an idle box the fake env steps at ~8,000 a second, so a run of
    # 24,000 steps ended 3.6 s in, before the shard killed after 6,000 steps (and a checkpoint, and 1.3 s more)
    # could be found dead and restarted.
    cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", "logging.wandb=disabled",
                                           "logging.progress=false", "logging.log_every_s=1",
                                           "eval.every_updates=0", "runtime.total_env_steps=1000000000",
                                           "runtime.max_wall_time_s=40", "replay.checkpoint_every_s=2"])
    runtime = RayRuntime(cfg, run_dir)
    killed: dict[str, float] = {}

    def killer():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
            done = [r for r in rows if r.get("replay/checkpoints", 0) >= 1]
            if done and rows[-1].get("charts/env_steps", 0) >= 6000:
                time.sleep(1.3)  # between two checkpoints: inserts acknowledged since the last one are lost
                ray_cluster.kill(runtime.shard_handles[0], no_restart=True)
                killed["steps"] = rows[-1]["charts/env_steps"]
                return
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    summary = runtime.train()
    t.join(5)
    assert "steps" in killed, "the test never killed the shard"
    assert summary["replay_shard_restarts"] == 1 and summary["actor_restarts"] == 0, summary
    assert summary["env_steps"] >= 24000
    assert summary["success_rate"] >= 0.9, summary  # it learned (chance: 0.5)
    # Every acknowledged insert is in the final shard or counted lost: the actor's acknowledged rows (old
    # shard and new) less the new shard's insert counter (restored checkpoint + what it acknowledged since).
    lost = summary["replay_lost_inserts"]
    assert lost == summary["replay_inserts_acked"] - summary["replay_inserted"], summary
    assert lost > 0, summary  # killed 1.3 s after a checkpoint, with the actor inserting all along
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[-1]["replay/lost_inserts"] == lost and rows[-1]["replay/shard_restarts"] == 1
