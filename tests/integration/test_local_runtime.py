"""LocalRuntime end to end (one process, no Ray): learning, checkpoints, kill + resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distrl.cli import main, prepare_run
from distrl.learners.learner import load_checkpoint_file
from distrl.logging import read_jsonl
from distrl.runtime.evaluate import evaluate
from distrl.runtime.local import LocalRuntime

REPO = Path(__file__).resolve().parents[2]
MEMORY = str(REPO / "configs/fake_memory.yaml")


def test_local_runtime_learns_a_memory_task(tmp_path):
    """fake:memory needs the LSTM to carry a cue over 4 blank steps; chance is 0.5."""
    cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", "logging.wandb=disabled",
                                           "logging.progress=false", "runtime.total_env_steps=32000"])
    summary = LocalRuntime(cfg, run_dir).train()
    assert summary["success_rate"] is not None and summary["success_rate"] >= 0.9, summary
    assert (run_dir / "checkpoints/learner.pt").is_file()
    assert (run_dir / "replay/shard_0").is_dir()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[-1]["charts/env_steps"] >= 32000
    assert any("learner/policy_loss" in r for r in rows)
    # `distrl eval` rebuilds env and agent from the checkpoint alone and, sampling as in training (the default),
    # reaches the training success.
    result = evaluate(run_dir / "checkpoints/learner.pt", episodes=100, overrides=["env.fake_episode_len=4"])
    assert result.env == "fake:memory" and not result.greedy and result.stuck_episodes == 0, result
    assert result.success_rate is not None and result.success_rate >= summary["success_rate"] - 0.1, (result, summary)


def test_resume_continues_counters_and_replay(tmp_path):
    over = [f"runtime.run_dir={tmp_path}", "runtime.run_name=r", "logging.wandb=disabled",
            "logging.progress=false", "runtime.total_env_steps=3000"]
    cfg, run_dir, _ = prepare_run(MEMORY, over)
    LocalRuntime(cfg, run_dir).train()
    first = load_checkpoint_file(run_dir / "checkpoints/learner.pt")
    assert first["extra"]["env_steps"] >= 3000 and first["version"] > 0
    rows_before = len(read_jsonl(run_dir / "metrics.jsonl"))

    cfg2, run_dir2, resuming = prepare_run(None, ["runtime.total_env_steps=6000"], resume=str(run_dir))
    assert resuming and run_dir2 == run_dir
    LocalRuntime(cfg2, run_dir2, resume=True).train()
    second = load_checkpoint_file(run_dir / "checkpoints/learner.pt")
    assert second["version"] > first["version"]
    assert second["extra"]["env_steps"] >= 6000
    rows = read_jsonl(run_dir / "metrics.jsonl")[rows_before:]
    assert rows and min(r["charts/env_steps"] for r in rows) >= first["extra"]["env_steps"]
    # The replay shard came back with what it held: its insert counter continued.
    assert rows[-1]["replay/inserted"] > read_jsonl(run_dir / "metrics.jsonl")[rows_before - 1]["replay/inserted"]


def test_kill_mid_run_then_resume(tmp_path):
    """SIGKILL while training: the last checkpoint is intact and --resume continues from it."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    cmd = [sys.executable, "-m", "distrl", "train", MEMORY, "--local", f"runtime.run_dir={tmp_path}",
           "runtime.run_name=k", "logging.wandb=disabled", "logging.progress=false",
           "learner.checkpoint_every=5", "runtime.total_env_steps=10000000"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = tmp_path / "k/checkpoints/learner.pt"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if ckpt.is_file() and load_checkpoint_file(ckpt)["version"] >= 15:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint within 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = load_checkpoint_file(ckpt)  # never a torn file: written to a temp file, then renamed
    assert {"model", "optimizer", "version", "extra"} <= state.keys() and state["version"] >= 15
    # A SIGKILL mid-write may leave the one temp file being written (learner.pt.<random>.tmp), never anything at
    # the target's name; resume reads only the target. Plant a torn temp file to show it is not read.
    leftovers = [p.name for p in ckpt.parent.glob("*.tmp")]
    assert len(leftovers) <= 1 and all(n.startswith("learner.pt.") for n in leftovers), leftovers
    (ckpt.parent / "learner.pt.torn.tmp").write_bytes(b"PK\x03\x04 torn")
    steps_at_kill = state["extra"]["env_steps"]
    code = main(["train", "--resume", str(tmp_path / "k"), f"runtime.total_env_steps={steps_at_kill + 2000}",
                 "runtime.mode=local"])
    assert code == 0
    after = load_checkpoint_file(ckpt)
    assert after["version"] > state["version"]
    assert after["extra"]["env_steps"] >= steps_at_kill + 2000
    out = read_jsonl(tmp_path / "k/metrics.jsonl")
    assert out[-1]["charts/env_steps"] >= steps_at_kill + 2000
    # every logged value is a plain number (the sinks refuse anything else), so the file stays plain JSON
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for row in out for v in row.values())


def test_a_seeded_local_run_repeats_itself_exactly(tmp_path):
    """Same config and seed, same weights after training (what a batch holds depends on counts, not timing);
    another seed, other weights."""
    import torch

    def weights(name: str, seed: int) -> dict:
        over = [f"runtime.run_dir={tmp_path}", f"runtime.run_name={name}", "logging.wandb=disabled",
                "logging.progress=false", "runtime.total_env_steps=3000", f"runtime.seed={seed}",
                "actor.inference=torch", "actor.precision=float32"]
        cfg, run_dir, _ = prepare_run(MEMORY, over)
        LocalRuntime(cfg, run_dir).train()
        return load_checkpoint_file(run_dir / "checkpoints/learner.pt")["model"]

    a, b, c = weights("a", 1), weights("b", 1), weights("c", 2)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
