"""Evaluation during training in the Ray runtime: on env actor 0 (``eval.host=env_actor``) or an evaluator actor,
polled without blocking training; an evaluator actor stands in while env actor 0 is down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from distrl.cli import prepare_run
from distrl.logging import read_jsonl
from distrl.runtime.ray_app import RayRuntime

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
MEMORY = str(REPO / "configs/fake_memory.yaml")


@pytest.mark.parametrize("host", ["env_actor", "evaluator"])
def test_ray_run_logs_evaluations_and_writes_videos(ray_cluster, tmp_path, host):
    cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", "logging.wandb=disabled",
                                           "logging.progress=false", "logging.log_every_s=1",
                                           "runtime.total_env_steps=6000", "eval.every_updates=10",
                                           "eval.episodes=2", f"eval.host={host}"])
    runtime = RayRuntime(cfg, run_dir)
    summary = runtime.train()
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
    # On env actor 0 no evaluator process was started, not even for the final evaluation; otherwise one was.
    assert runtime.eval_driver.evaluators_started == (0 if host == "env_actor" else 1)


def test_an_evaluator_actor_stands_in_while_env_actor_0_is_down(ray_cluster, tmp_path):
    """The driver side against real actors: an evaluation on env actor 0 while it steps (stepping goes on),
    one that env actor 0 dies under (logged and skipped, the host dropped), then one on a stand-in evaluator
    actor, which is closed when a host is handed over again."""
    from distrl.config import load_config
    from distrl.envs.registry import env_spec
    from distrl.models import build_agent
    from distrl.runtime.ray_env_actor import start_env_actor
    from distrl.runtime.ray_eval import EvalDriver
    from distrl.runtime.ray_replay import make_ray_shard
    from distrl.runtime.weights import RayWeightStore
    from distrl.types import PolicyWeights, as_arrays

    cfg = load_config(MEMORY, ["env.num_envs=4", "eval.every_updates=1", "eval.episodes=2", "eval.video=false",
                               "replay.samples_per_insert=0"])
    spec = env_spec(cfg.env)
    shard = make_ray_shard(cfg.replay, 0, num_cpus=0.25, seed=0)
    store = ray_cluster.remote(num_cpus=0)(RayWeightStore).remote()
    weights = PolicyWeights(3, as_arrays(build_agent(cfg.model, spec).state_dict()))
    ray_cluster.get(store.publish.remote(3, [ray_cluster.put(weights)]))
    actor = start_env_actor(cfg, 0, [shard], store, num_cpus=0.25)
    evals = EvalDriver(cfg, spec, store, video_path=lambda v: tmp_path / f"eval_{v}.mp4")
    evals.start_at(0)

    def wait_result(timeout_s: float = 120.0) -> list:
        deadline = time.monotonic() + timeout_s
        while evals.ref is not None and time.monotonic() < deadline:
            out = evals.poll(timeout_s=1.0)
            if out or evals.ref is None:
                return out
        raise AssertionError("no evaluation finished in time")

    try:
        evals.set_host(actor.handle)
        evals.on_version(1)
        assert evals.ref_on_host
        steps_before = ray_cluster.get(actor.handle.stats.remote(), timeout=30).report.env_steps
        [result] = wait_result()
        assert result.episodes == 2 and result.learner_version == 3 and evals.evaluators_started == 0
        # stepping goes on beside it (its first step, which builds its envs, may end after a quick evaluation)
        deadline = time.monotonic() + 60
        while ray_cluster.get(actor.handle.stats.remote(), timeout=30).report.env_steps <= steps_before:
            assert time.monotonic() < deadline, "env actor 0 did not step beside its evaluation"
            time.sleep(0.2)

        ray_cluster.kill(actor.handle)  # env actor 0 dies: the evaluation sent to it is skipped
        evals.on_version(2)
        assert wait_result() == [] and evals.host is None
        evals.on_version(3)  # no host: an evaluator actor stands in
        assert not evals.ref_on_host and evals.evaluators_started == 1
        [result] = wait_result()
        assert result.episodes == 2

        actor = start_env_actor(cfg, 0, [shard], store, num_cpus=0.25, incarnation=1)
        evals.set_host(actor.handle)  # a host again: the stand-in is closed, the next runs on env actor 0
        evals.on_version(4)
        assert evals.ref_on_host and evals.handle is None
        [result] = wait_result()
        assert result.episodes == 2
    finally:
        evals.close()
        try:
            ray_cluster.get(actor.handle.close.remote(), timeout=60)  # its evaluator's envs on their own thread
        except ray_cluster.exceptions.RayActorError:  # the killed one, when the test failed before the restart
            pass
        for h in (actor.handle, shard, store):
            ray_cluster.kill(h)
