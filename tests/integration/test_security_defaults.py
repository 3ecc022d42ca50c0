"""Security defaults: the W&B API key never lands in a run directory or in the run's output; checkpoints load
without executing code (weights_only for learner checkpoints, no pickle for replay shards)."""

from __future__ import annotations

import base64
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distrl.config import ReplayConfig
from distrl.learners.learner import LearnerCheckpointError, load_checkpoint_file
from distrl.replay import CheckpointError, ReplayShard
from distrl.replay.testing import example_trajectory

REPO = Path(__file__).resolve().parents[2]
MEMORY = str(REPO / "configs/fake_memory.yaml")
KEY = "distrlfakekey" + "0123456789abcdef" * 2  # 40 characters, like a real W&B key


def _leaks(root: Path, needles: list[bytes]) -> list[str]:
    out = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            out += [f"{p.relative_to(root)} holds {n[:12]!r}..." for n in needles if n in data]
    return out


def test_the_wandb_key_never_reaches_the_run_directory_or_the_output(tmp_path):
    """A whole ``distrl train`` with WANDB_API_KEY set (wandb offline: it writes its run files, config, console
    log and metadata in the run directory, as online runs do before syncing)."""
    env = {**os.environ, "WANDB_API_KEY": KEY, "WANDB_MODE": "offline", "WANDB_SILENT": "false",
           "DISTRL_STAGING_DIR": str(tmp_path / "stage")}
    cmd = [sys.executable, "-m", "distrl", "train", MEMORY, "--local", f"runtime.run_dir={tmp_path / 'runs'}",
           "runtime.run_name=sec", "logging.wandb=auto", "logging.progress=false", "runtime.total_env_steps=1500",
           "eval.every_updates=0"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    run_dir = tmp_path / "runs" / "sec"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "wandb").is_dir()  # wandb did write its files
    needles = [KEY.encode(), base64.b64encode(KEY.encode()), KEY.encode("utf-16-le")]
    assert _leaks(tmp_path, needles) == []
    assert not any(n in proc.stdout + proc.stderr for n in needles)


def test_learner_checkpoints_never_run_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": {"w": Payload()}, "schema": 1}))
    with pytest.raises(LearnerCheckpointError, match="not a valid distrl checkpoint"):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_replay_checkpoints_refuse_pickled_arrays(tmp_path):
    shard = ReplayShard(ReplayConfig(capacity=8, min_size=2))
    shard.insert(example_trajectory(B=4))
    path = shard.save(tmp_path / "ck")
    # An object array (reading it would need pickle) in place of the first array file.
    victim = sorted(path.glob("a*.npy"))[0]
    with open(victim, "wb") as f:
        np.save(f, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError):
        ReplayShard(shard.cfg).restore(path)
