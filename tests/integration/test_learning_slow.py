"""Slow learning runs on real envs (excluded by default; run with `bash tools/test.sh -m slow`)."""

from __future__ import annotations

import pytest

from distrl.cli import prepare_run
from distrl.logging import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_quickstart_learns_minihack_room_5x5(tmp_path):
    """The README's main job: mean return >= 0.9 over the last 100 episodes within 60k env steps (one local
    Ray). Measured: 20-22k env steps / about 11 s of training on a 2-core box (BENCHMARKS.md)."""
    pytest.importorskip("minihack")
    from distrl.runtime.ray_app import RayRuntime

    cfg, run_dir, _ = prepare_run(None, [f"runtime.run_dir={tmp_path}", "logging.wandb=disabled",
                                         "logging.progress=false", "runtime.total_env_steps=60000"])
    summary = RayRuntime(cfg, run_dir).train()
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("charts/episodes", 0) >= 100]
    assert rows and max(r["charts/episode_return"] for r in rows) >= 0.9, summary
    assert summary["success_rate"] >= 0.9, summary
