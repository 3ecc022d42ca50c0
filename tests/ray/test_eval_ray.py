"""Evaluation during training in the Ray runtime: an evaluator actor, polled without blocking training."""

from __future__ import annotations

from pathlib import Path

import pytest

from distrl.cli import prepare_run
from distrl.logging import read_jsonl
from distrl.runtime.ray_app import RayRuntime

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
MEMORY = str(REPO / "configs/fake_memory.yaml")


def test_ray_run_logs_evaluations_and_writes_videos(ray_cluster, tmp_path):
    cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", "logging.wandb=disabled",
                                           "logging.progress=false", "logging.log_every_s=1",
                                           "runtime.total_env_steps=6000", "eval.every_updates=10",
                                           "eval.episodes=2"])
    summary = RayRuntime(cfg, run_dir).train()
    evals = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "eval/return_mean" in r]
    assert evals, "no eval/ rows in metrics.jsonl"
    assert all({"eval/success_rate", "eval/length_mean", "eval/learner_version", "eval/stuck_episodes"} <= r.keys()
               for r in evals)
    # The last one evaluates the final weights (the run ends with one when the last version was not evaluated).
    assert summary["eval"] is not None and summary["eval"]["learner_version"] == evals[-1]["eval/learner_version"]
    assert summary["eval"]["learner_version"] >= summary["learner_updates"] - cfg.learner.publish_every
    videos = list((run_dir / "videos").glob("eval_*"))
    assert {p.stem for p in videos} == {f"eval_{int(r['eval/learner_version'])}" for r in evals}, videos
    assert all(p.stat().st_size > 0 for p in videos)
