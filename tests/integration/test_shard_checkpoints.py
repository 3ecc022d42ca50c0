"""Periodic replay-shard checkpoints (replay.checkpoint_every_s) in the single-process runtime."""

from __future__ import annotations

from pathlib import Path

from distrl.cli import prepare_run
from distrl.config import load_config
from distrl.replay import ReplayShard
from distrl.runtime.local import LocalRuntime

REPO = Path(__file__).resolve().parents[2]
MEMORY = str(REPO / "configs/fake_memory.yaml")


def _run(tmp_path, monkeypatch, *over):
    saves: list[tuple[int, int]] = []  # (shard id, rows inserted when saved)
    real = ReplayShard.save

    def counting_save(self, path, **kw):
        saves.append((self.shard_id, self.stats().inserted))
        return real(self, path, **kw)

    monkeypatch.setattr(ReplayShard, "save", counting_save)
    cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", "logging.wandb=disabled",
                                           "logging.progress=false", "eval.every_updates=0",
                                           "runtime.total_env_steps=1200", *over])
    LocalRuntime(cfg, run_dir).train()
    return saves, run_dir


def test_shards_checkpoint_periodically_during_a_run(tmp_path, monkeypatch):
    saves, run_dir = _run(tmp_path, monkeypatch, "replay.checkpoint_every_s=0.05", "replay.num_shards=2",
                          "actor.num_actors=2")
    for j in (0, 1):
        counts = [n for s, n in saves if s == j]
        assert len(counts) >= 3, saves  # periodic ones, then the final one
        assert counts == sorted(counts) and counts[0] < counts[-1]  # taken as the shard filled
        # The checkpoint on disk is the last one, complete and loadable.
        shard = ReplayShard.load(run_dir / f"replay/shard_{j}", load_config(MEMORY).replay)
        assert shard.stats().inserted == counts[-1]


def test_no_periodic_shard_checkpoints_by_default(tmp_path, monkeypatch):
    saves, _ = _run(tmp_path, monkeypatch)
    assert len(saves) == 1  # the final one only (replay.checkpoint_every_s = 0)
