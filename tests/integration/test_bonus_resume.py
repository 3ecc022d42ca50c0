"""Exploration bonuses in the real local runtime: set by the bonus section alone, their metrics logged, their
modules (RND predictor and frozen nets, the normaliser, the global count table) checkpointed and restored by
--resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distrl.bonuses.counts import load_count_state, make_counts
from distrl.cli import prepare_run
from distrl.learners.learner import load_checkpoint_file
from distrl.logging import read_jsonl
from distrl.runtime.local import LocalRuntime

REPO = Path(__file__).resolve().parents[2]
MEMORY = str(REPO / "configs/fake_memory.yaml")
BASE = ["logging.wandb=disabled", "logging.progress=false", "eval.every_updates=0", "runtime.mode=local",
        "bonus.count_key=obs"]


def _run(tmp_path: Path, name: str, bonus: list[str], steps: int) -> Path:
    cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", f"runtime.run_name={name}", *BASE,
                                           f"runtime.total_env_steps={steps}", *bonus])
    LocalRuntime(cfg, run_dir).train()
    return run_dir


def _resume(run_dir: Path, steps: int) -> None:
    cfg, rd, _ = prepare_run(None, [f"runtime.total_env_steps={steps}"], resume=str(run_dir))
    LocalRuntime(cfg, rd, resume=True).train()


def test_rnd_bonus_runs_logs_and_resumes_with_its_predictor_and_normaliser(tmp_path):
    run_dir = _run(tmp_path, "rnd", ["bonus.glob=rnd"], 2000)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert any("extras/bonus/rnd_loss" in r and "extras/bonus/intrinsic_share" in r for r in rows)
    st = load_checkpoint_file(run_dir / "checkpoints/learner.pt")
    saved = st["extras"]["bonus"]
    assert float(saved["moments.count"]) > 0 and float(saved["moments.m2"]) > 0
    frozen = {k: v for k, v in saved.items() if k.startswith(("rnd.target", "rnd.encoder"))}
    assert frozen
    _resume(run_dir, 3000)
    after = load_checkpoint_file(run_dir / "checkpoints/learner.pt")["extras"]["bonus"]
    # the normaliser went on counting from where it was (not from zero), the frozen nets came back identical,
    # and the predictor kept training
    assert float(after["moments.count"]) > float(saved["moments.count"])
    for k, v in frozen.items():
        assert torch.equal(after[k], v), k
    pk = next(k for k in saved if k.startswith("rnd.predictor") and k.endswith("weight"))
    assert not torch.equal(after[pk], saved[pk])


def test_global_counts_are_counted_checkpointed_and_resumed(tmp_path, monkeypatch):
    run_dir = _run(tmp_path, "counts", ["bonus.glob=count", "bonus.episodic=count"], 1500)
    state = load_count_state(run_dir / "checkpoints/counts.pt")
    table = make_counts(1)
    table.load_state_dict(state)
    visits = table.stats()["visits"]
    # every env step up to the last emitted sequence was counted once: the actor sends the keys it buffered with
    # each sequence it emits (every 16 steps of its 16 envs), so at most one period's steps are not in yet
    assert visits % (16 * 16) == 0 and 1504 - 16 * 16 < visits <= 1504
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert any("extras/bonus/global_mean" in r for r in rows)

    # On resume the table is loaded before the actors start: spy on the first lookup's table size.
    from distrl.bonuses.counts import ShardedCounts
    seen: list[float] = []
    original = ShardedCounts.lookup

    def spy(self, keys):
        seen.append(self.stats()["visits"])
        return original(self, keys)

    monkeypatch.setattr(ShardedCounts, "lookup", spy)
    _resume(run_dir, 3000)
    assert seen and seen[0] >= visits
    table2 = make_counts(1)
    table2.load_state_dict(load_count_state(run_dir / "checkpoints/counts.pt"))
    assert table2.stats()["visits"] >= visits + 1000
    assert np.all(table2.lookup(table.tables[0]._keys) >= table.lookup(table.tables[0]._keys))


@pytest.mark.parametrize("preset, learner_diff", [
    ("minihack_multiroom_e3b_rnd.yaml", {"ppo_clip": 0.1, "ppo_clip_against": "proximal"}),
    ("minihack_multiroom_counts.yaml", {}),
])
def test_presets_differ_from_the_base_by_their_bonus_lines_and_named_learner_keys(preset, learner_diff):
    """An exploration preset is the no-bonus base plus its bonus lines; e3b_rnd also limits each update against the
    proximal policy (its measured fix for collapses with replay), and nothing else."""
    from distrl.config import load_config
    base = load_config(REPO / "configs/minihack_multiroom_nobonus.yaml")
    cfg = load_config(REPO / "configs" / preset)
    assert cfg.bonus != base.bonus
    d, b = cfg.to_dict(), base.to_dict()
    assert {k for k in d if d[k] != b[k]} == ({"bonus", "learner"} if learner_diff else {"bonus"})
    changed = {k: v for k, v in d["learner"].items() if v != b["learner"][k]}
    assert changed == learner_diff


def test_the_noreplay_preset_is_e3b_rnd_on_fresh_sequences_without_the_clip():
    from distrl.config import load_config
    rnd = load_config(REPO / "configs/minihack_multiroom_e3b_rnd.yaml").to_dict()
    fresh = load_config(REPO / "configs/minihack_multiroom_e3b_rnd_noreplay.yaml").to_dict()
    assert {k for k in fresh if fresh[k] != rnd[k]} == {"learner", "replay"}
    assert {k: v for k, v in fresh["learner"].items() if v != rnd["learner"][k]} == {
        "online_fraction": 1.0, "ppo_clip": 0.0, "ppo_clip_against": "behaviour"}
    assert {k: v for k, v in fresh["replay"].items() if v != rnd["replay"][k]} == {"samples_per_insert": 1.0}
