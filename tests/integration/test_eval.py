"""Evaluation: sampled by default, greedy runs that repeat themselves flagged as stuck, and evaluation during
training (``eval/`` rows in metrics.jsonl and in the offline wandb run, videos in the run directory).

The trained-agent path (train fake:memory, then ``evaluate()`` the checkpoint sampled) is checked in
tests/integration/test_local_runtime.py::test_local_runtime_learns_a_memory_task, which trains it anyway.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distrl.cli import main, prepare_run
from distrl.config import load_config
from distrl.learners.learner import load_checkpoint_file
from distrl.logging import read_jsonl, read_wandb_records
from distrl.runtime.evaluate import Evaluator, RepeatDetector, describe
from distrl.runtime.local import LocalRuntime
from distrl.types import PolicyWeights

REPO = Path(__file__).resolve().parents[2]
MEMORY = str(REPO / "configs/fake_memory.yaml")


def test_repeat_detector_sees_one_pair_and_short_cycles():
    det = RepeatDetector(window=6)
    assert not any(det.step(k) for k in [1, 2, 3, 1, 2])
    assert [det.step(7) for _ in range(6)] == [False] * 5 + [True]  # 6 identical steps
    det.reset()
    assert [det.step(k) for k in [1, 2] * 3] == [False] * 5 + [True]  # 1 2 1 2 1 2: a 2-cycle filled the window
    det.reset()
    assert not any(det.step(k) for k in [1, 2, 3, 4, 5] * 3)  # a 5-cycle is longer than the window allows
    assert not any(RepeatDetector(window=0).step(1) for _ in range(100))  # 0 = off


def _repeating_policy_evaluator(tmp_path: Path) -> tuple[Evaluator, PolicyWeights]:
    # fake:memory shows the same blank observation for 200 steps; a core-less (identity) agent maps it to the
    # same argmax every time: a greedy policy that repeats itself until the episode's end.
    cfg = load_config(MEMORY, ["env.fake_episode_len=200", "model.core=identity", "eval.stuck_steps=20"])
    ev = Evaluator(cfg, seed=3)
    return ev, PolicyWeights(version=7, policy=ev.agent.state_dict())


def test_a_greedy_policy_that_repeats_itself_is_flagged_and_cut_short(tmp_path):
    ev, weights = _repeating_policy_evaluator(tmp_path)
    try:
        greedy = ev.run(weights, episodes=3, greedy=True, video_path=tmp_path / "stuck.mp4")
        sampled = ev.run(weights, episodes=3)
    finally:
        ev.close()
    assert greedy.greedy and greedy.stuck_episodes == 3, greedy
    assert greedy.length_mean < 30  # cut after ~20 repeats instead of running 202 steps
    assert greedy.learner_version == 7
    assert greedy.video is not None and Path(greedy.video).is_file() and Path(greedy.video).stat().st_size > 0
    assert "STUCK: 3 of 3 greedy episodes" in describe(greedy, 20) and "20 steps" in describe(greedy, 20)
    # Sampled (the default) is never cut: the episodes run to their end.
    assert not sampled.greedy and sampled.stuck_episodes == 0 and sampled.length_mean == 202
    assert "STUCK" not in describe(sampled, 20)


def test_a_wall_bumping_greedy_policy_on_minihack_is_flagged(tmp_path):
    pytest.importorskip("minihack")
    cfg = load_config(None, ["eval.stuck_steps=10"])  # the defaults: MiniHack-Room-5x5, the full NetHack model
    ev = Evaluator(cfg)
    state = {k: v.clone() for k, v in ev.agent.state_dict().items()}
    state["heads.policy.fc.weight"].zero_()
    state["heads.policy.fc.bias"].zero_()
    state["heads.policy.fc.bias"][0] = 10.0  # always the same move: into the wall, where nothing changes
    try:
        result = ev.run(PolicyWeights(version=1, policy=state), episodes=2, greedy=True)
    finally:
        ev.close()
    assert result.stuck_episodes == 2 and result.length_mean < 30, result
    assert result.success_rate == 0.0  # a stuck episode is a failed one, not a missing report


def test_evaluation_leaves_the_global_random_stream_alone(tmp_path):
    ev, weights = _repeating_policy_evaluator(tmp_path)
    before = torch.get_rng_state()
    try:
        ev.run(weights, episodes=2)
    finally:
        ev.close()
    assert torch.equal(before, torch.get_rng_state())


def test_in_training_evaluation_reaches_metrics_videos_wandb_and_the_cli(tmp_path, capsys):
    cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", "runtime.run_name=ev",
                                           "logging.wandb=offline", "logging.progress=false",
                                           "runtime.total_env_steps=3000", "eval.every_updates=10",
                                           "eval.episodes=2"])
    summary = LocalRuntime(cfg, run_dir).train()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    evals = [r for r in rows if "eval/return_mean" in r]
    assert len(evals) >= 2, [sorted(r) for r in rows]
    versions = [r["eval/learner_version"] for r in evals]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert all({"eval/success_rate", "eval/length_mean", "eval/stuck_episodes"} <= r.keys() for r in evals)
    assert summary["eval"]["learner_version"] == versions[-1] and summary["eval"]["greedy"] is False
    videos = sorted((run_dir / "videos").glob("eval_*"))
    assert {p.stem for p in videos} == {f"eval_{int(v)}" for v in versions}, videos
    assert all(p.suffix in (".mp4", ".gif") and p.stat().st_size > 0 for p in videos)

    (wandb_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    hist = read_wandb_records(wandb_file)["history"]
    assert [h["eval/return_mean"] for h in hist if "eval/return_mean" in h] == [r["eval/return_mean"] for r in evals]
    media = [h for h in hist if h.get("eval/video/_type") == "video-file"]  # wandb.Video, flattened
    assert len(media) == len(videos), hist
    assert all((wandb_file.parent / "files" / m["eval/video/path"]).is_file() for m in media)

    # `distrl eval` on the run's checkpoint: sampled by default, JSON on stdout, the summary line on stderr.
    capsys.readouterr()
    ckpt = str(run_dir / "checkpoints/learner.pt")
    assert main(["eval", ckpt, "--episodes", "3", "--video", str(tmp_path / "cli.mp4")]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["greedy"] is False and result["episodes"] == 3 and result["stuck_episodes"] == 0
    assert result["checkpoint"] == ckpt and Path(result["video"]).is_file()
    assert "sampled actions" in err and "success" in err
    # --greedy on a long blank stretch with a short stuck window: flagged in the JSON and in words.
    assert main(["eval", ckpt, "--greedy", "--episodes", "2", "env.fake_episode_len=100",
                 "eval.stuck_steps=5"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["greedy"] is True and result["stuck_episodes"] >= 1, result
    assert "STUCK" in err and "5 steps" in err
    # --sample is a deprecated no-op alias.
    assert main(["eval", ckpt, "--sample", "--episodes", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["greedy"] is False


def test_eval_settings_do_not_block_resume(tmp_path):
    a = load_config(MEMORY)
    b = load_config(MEMORY, ["eval.every_updates=3", "eval.episodes=9", "eval.greedy=true", "eval.video=false"])
    assert a.fingerprint() == b.fingerprint()


def test_in_training_evaluation_does_not_change_training(tmp_path):
    """Evaluations in the middle of a local run use their own envs, agent and random generator: the run's
    weights come out the same with and without them."""

    def weights(name: str, *over: str) -> dict:
        cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", f"runtime.run_name={name}",
                                               "logging.wandb=disabled", "logging.progress=false",
                                               "runtime.total_env_steps=2000", "runtime.seed=1",
                                               "actor.inference=torch", "actor.precision=float32", *over])
        LocalRuntime(cfg, run_dir).train()
        return load_checkpoint_file(run_dir / "checkpoints/learner.pt")["model"]

    a = weights("with", "eval.every_updates=5")
    b = weights("without", "eval.every_updates=0")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "with/videos").is_dir() and not (tmp_path / "without/videos").exists()
