"""Heartbeat: an env actor whose loop hangs inside a step (a stuck env) is killed and restarted, and the run
completes (runtime.actor_stuck_timeout_s)."""

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


def test_a_hung_env_actor_is_killed_and_restarted(ray_cluster, tmp_path):
    cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", "logging.wandb=disabled",
                                           "logging.progress=false", "logging.log_every_s=1",
                                           "eval.every_updates=0", "runtime.total_env_steps=8000",
                                           "runtime.actor_stuck_timeout_s=3"])
    runtime = RayRuntime(cfg, run_dir)
    hung: dict[str, object] = {}

    def hang_next_step(env_actor) -> None:
        """Runs inside the RayEnvActor (``__ray_call__``; nested, so it travels by value): its next step never
        returns, as with a hung env."""
        env_actor.actor.step = lambda: time.sleep(3600)

    def hanger():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
            if runtime.actor_handles and rows and rows[-1].get("charts/env_steps", 0) >= 2000:
                h = runtime.actor_handles[0]
                try:
                    ray_cluster.get(h.handle.__ray_call__.remote(hang_next_step), timeout=60)
                except Exception as e:  # reported by the assertion below
                    hung["error"] = repr(e)
                    return
                hung["steps"] = rows[-1]["charts/env_steps"]
                hung["incarnation"] = h.incarnation
                return
            time.sleep(0.2)

    t = threading.Thread(target=hanger, daemon=True)
    t.start()
    summary = runtime.train()
    t.join(5)
    assert "steps" in hung, f"the test never hung the actor: {hung}"
    assert summary["actor_restarts"] == 1, summary
    assert runtime.actor_handles[0].incarnation == hung["incarnation"] + 1
    assert summary["env_steps"] >= 8000
