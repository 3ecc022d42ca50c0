"""Periodic replay-shard checkpoints on a real local Ray cluster (replay.checkpoint_every_s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from distrl.cli import prepare_run
from distrl.config import load_config
from distrl.logging import read_jsonl
from distrl.replay import ReplayShard
from distrl.runtime.ray_app import RayRuntime

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
MEMORY = str(REPO / "configs/fake_memory.yaml")


def test_shards_checkpoint_themselves_during_a_run(ray_cluster, tmp_path):
    cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", "logging.wandb=disabled",
                                           "logging.progress=false", "logging.log_every_s=0.5",
                                           "eval.every_updates=0", "runtime.total_env_steps=6000",
                                           "replay.checkpoint_every_s=0.5"])
    summary = RayRuntime(cfg, run_dir).train()
    assert summary["env_steps"] >= 6000
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "replay/checkpoints" in r]
    assert rows, "no periodic shard checkpoint was reported"
    assert rows[-1]["replay/checkpoints"] >= 2 and rows[-1]["replay/checkpoint_s"] > 0
    # Counts taken at each checkpoint grow with the run; what is on disk is the final, complete save.
    shard = ReplayShard.load(run_dir / "replay/shard_0", load_config(MEMORY).replay)
    assert shard.stats().inserted == rows[-1]["replay/inserted"]
