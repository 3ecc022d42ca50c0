"""A learner killed (or hung) mid-run on a real local Ray cluster is restarted from the last learner checkpoint:
the run completes and learns, ``learner/restarts`` counts it, and the update counter is the checkpoint's, then
monotone. With two learners the torch.distributed group re-forms and both replicas end identical."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from distrl.cli import prepare_run
from distrl.learners.learner import load_checkpoint_file
from distrl.logging import read_jsonl
from distrl.runtime.ray_app import RayRuntime

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
MEMORY = str(REPO / "configs/fake_memory.yaml")


def _runtime(tmp_path: Path, *overrides: str) -> tuple[RayRuntime, Path]:
    cfg, run_dir, _ = prepare_run(
        MEMORY,
        [
            f"runtime.run_dir={tmp_path}",
            "logging.wandb=disabled",
            "logging.progress=false",
            "logging.log_every_s=1",
            "eval.every_updates=0",
            "learner.checkpoint_every=20",
            *overrides,
        ],
    )
    return RayRuntime(cfg, run_dir), run_dir


def _versions(run_dir: Path) -> list[float]:
    rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    return [r["learner/version"] for r in rows if "learner/version" in r]


def _when_trained(runtime: RayRuntime, run_dir: Path, min_version: float, act: Any, out: dict[str, Any]) -> None:
    """Once the learner has passed ``min_version`` (and checkpointed past 0 when it checkpoints), call
    ``act(group)``."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        group = runtime.learner_group
        versions = _versions(run_dir)
        checkpointed = runtime.cfg.learner.checkpoint_every == 0 or (group is not None and group.checkpoint_version)
        if group is not None and versions and versions[-1] >= min_version and checkpointed:
            out["version"], out["checkpoint"] = group.version, group.checkpoint_version or 0
            try:
                act(group)
            except Exception as e:  # reported by the caller's assertion
                out["error"] = repr(e)
            return
        time.sleep(0.2)


def _run(runtime: RayRuntime, run_dir: Path, act: Any, min_version: float = 40) -> tuple[dict[str, Any], dict]:
    out: dict[str, Any] = {}
    t = threading.Thread(target=_when_trained, args=(runtime, run_dir, min_version, act, out), daemon=True)
    t.start()
    summary = runtime.train()
    t.join(5)
    assert "version" in out and "error" not in out, f"the test never hit the learner: {out}"
    return summary, out


def _check_counters(summary: dict[str, Any], run_dir: Path, hit: dict[str, Any]) -> None:
    """One restart; the version is the checkpoint's after it and monotone from there; no update is unaccounted
    for: those the driver counted, less those lost with the restart, are the final version."""
    assert summary["learner_restarts"] == 1, summary
    assert summary["learner_version"] == summary["learner_updates"] - summary["learner_updates_lost"], summary
    assert load_checkpoint_file(run_dir / "checkpoints/learner.pt")["version"] == summary["learner_version"]
    versions = _versions(run_dir)
    drops = [i for i in range(1, len(versions)) if versions[i] < versions[i - 1]]
    assert len(drops) <= 1, versions  # back to the checkpoint once, monotone otherwise
    if drops:  # (a restart that lost no update shows none) not further back than the checkpoint at the fault
        assert versions[drops[0]] >= hit["checkpoint"], (versions, hit)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert rows[-1]["learner/restarts"] == 1 and rows[-1]["learner/updates_lost"] == summary["learner_updates_lost"]


def test_a_killed_learner_is_restarted_from_its_checkpoint(ray_cluster, tmp_path):
    runtime, run_dir = _runtime(tmp_path, "runtime.total_env_steps=24000")
    summary, hit = _run(runtime, run_dir, lambda g: ray_cluster.kill(g.handles[0], no_restart=True))
    _check_counters(summary, run_dir, hit)
    assert summary["env_steps"] >= 24000 and summary["actor_restarts"] == 0
    assert summary["success_rate"] >= 0.9, summary  # it learned (chance: 0.5)


def test_two_learners_reform_their_group_when_one_dies(ray_cluster, tmp_path):
    runtime, run_dir = _runtime(
        tmp_path, "learner.num_learners=2", "runtime.total_env_steps=24000", "runtime.learner_stuck_timeout_s=60"
    )
    # rank 0 hosts the group's store and publishes the weights: the harder one to lose
    summary, hit = _run(runtime, run_dir, lambda g: ray_cluster.kill(g.handles[0], no_restart=True))
    _check_counters(summary, run_dir, hit)
    assert summary["learner_param_max_abs_diff"] == 0.0, summary  # both went back to the same checkpoint
    assert summary["env_steps"] >= 24000
    assert summary["success_rate"] >= 0.9, summary


@pytest.mark.parametrize("learners", [1, 2])
def test_a_hung_learner_is_killed_and_restarted(ray_cluster, tmp_path, learners):
    # learner.checkpoint_every=0: the only checkpoint to go back to is the start-of-run one (every update lost).
    # A run of fixed length: it must outlast the stuck timeout after the hang, at any env step rate.
    runtime, run_dir = _runtime(
        tmp_path,
        "runtime.total_env_steps=1000000000",
        "runtime.max_wall_time_s=35",
        "runtime.learner_stuck_timeout_s=15",
        "learner.checkpoint_every=0",
        f"learner.num_learners={learners}",
    )

    def hang_next_step(ray_learner) -> None:
        """Runs inside the RayLearner (``__ray_call__``): its next update never returns."""
        ray_learner.worker.learner.step = lambda sample: time.sleep(3600)

    def hang(group) -> None:
        # With two, the last rank hangs: rank 0 waits in the gradient all-reduce until the collective timeout
        # (half the stuck timeout) fails it; the driver then kills the hung one and the group re-forms.
        ray_cluster.get(group.handles[-1].__ray_call__.remote(hang_next_step), timeout=60)

    summary, hit = _run(runtime, run_dir, hang, min_version=20)
    _check_counters(summary, run_dir, hit)
    assert summary["learner_updates_lost"] >= hit["version"] >= 20, (summary, hit)
    assert summary["learner_version"] > 0, summary  # it trained on after the restart
    if learners == 2:
        assert summary["learner_param_max_abs_diff"] == 0.0, summary
