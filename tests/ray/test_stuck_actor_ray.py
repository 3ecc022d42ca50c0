"""Heartbeat: an env actor whose loop hangs inside a step (a stuck env) is killed and restarted, and the run
completes (runtime.actor_stuck_timeout_s)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from faults import at_env_steps

from distrl.cli import prepare_run
from distrl.runtime.ray_app import RayRuntime

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]
MEMORY = str(REPO / "configs/fake_memory.yaml")


def _one_fault_one_restart(ray_cluster, tmp_path, overrides, fault) -> Path:
    """Train the fake memory task for 40,000 env steps, apply ``fault(handle)`` to env actor 0 once 2,000 are
    logged; the run completes with exactly one restart of that actor. Returns the run directory.

    The total leaves the restart needed: the fault waits for a metrics row (one a second), and the fake env
    steps at over 5,000 a second on an idle box, so with 8,000 the one actor had once made them all before its
    fault landed, and the run ended with no restart."""
    cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", "logging.wandb=disabled",
                                           "logging.progress=false", "logging.log_every_s=1",
                                           "eval.every_updates=0", "runtime.total_env_steps=40000", *overrides])
    runtime = RayRuntime(cfg, run_dir)

    def fault_first_actor() -> int:
        h = runtime.actor_handles[0]
        fault(h.handle)
        return h.incarnation

    t, faulted = at_env_steps(runtime, run_dir, 2000, fault_first_actor)
    summary = runtime.train()
    t.join(5)
    assert "steps" in faulted, f"the test never faulted the actor: {faulted}"
    assert summary["actor_restarts"] == 1, summary
    assert runtime.actor_handles[0].incarnation == faulted["value"] + 1
    assert faulted["steps"] < 40000, faulted
    assert summary["env_steps"] >= 40000
    return run_dir


def _evaluation_envs_hang(evaluator_of):
    """A function for ``handle.__ray_call__`` (nested, so it travels by value): in that actor, every env an
    Evaluator builds from then on hangs on step; the envs ``evaluator_of(actor)`` (an Evaluator or None) built
    before are dropped, so its next evaluation builds hung ones. Returns the time it was applied."""
    def hang(actor) -> float:
        import time as _time

        from distrl.runtime import evaluate

        build = evaluate.Evaluator._env

        class Hung:
            def __init__(self, env) -> None:
                self.env = env

            def __getattr__(self, name):
                return getattr(self.env, name)

            def step(self, action):
                _time.sleep(3600)

        evaluate.Evaluator._env = lambda self, render: Hung(build(self, render))
        evaluator = evaluator_of(actor)
        if evaluator is not None:
            evaluator._envs.clear()
        return _time.time()

    return hang


def test_a_hung_env_actor_is_killed_and_restarted(ray_cluster, tmp_path):
    def hang_next_step(env_actor) -> None:
        """Runs inside the RayEnvActor (``__ray_call__``; nested, so it travels by value): its next step never
        returns, as with a hung env."""
        env_actor.actor.step = lambda: time.sleep(3600)

    # 10 s, not less: on a machine busy with other work (a benchmark at a higher priority beside the tests) a
    # healthy actor's step can take seconds, and at 3 s the restarted, healthy incarnation could be taken for hung too
    _one_fault_one_restart(ray_cluster, tmp_path, ["runtime.actor_stuck_timeout_s=10"],
                           lambda handle: ray_cluster.get(handle.__ray_call__.remote(hang_next_step), timeout=60))


def test_a_slow_starting_env_actor_is_not_taken_for_dead(ray_cluster, tmp_path):
    """A restarted actor whose envs take longer to build than the heartbeat's answer timeout (a busy machine)
    is left to start: one kill gives one restart, not a chain of them."""
    _one_fault_one_restart(ray_cluster, tmp_path, ["env.name=fake:counting?make_ms=500",  # 16 envs: 8 s to build
                                                   "runtime.actor_stuck_timeout_s=3"],
                           lambda handle: ray_cluster.kill(handle, no_restart=True))


def test_an_evaluation_env_that_hangs_in_env_actor_0_gets_it_restarted(ray_cluster, tmp_path):
    """eval.host=env_actor: an evaluation whose env call never returns (here: every step of the evaluator's env,
    in env actor 0's process only) is seen by the heartbeat as that actor being stuck; the actor is restarted
    once, and evaluations go on after it (the restarted process has a healthy evaluator)."""
    hang_evaluation_envs = _evaluation_envs_hang(
        lambda env_actor: None if env_actor._evaluator is None else env_actor._evaluator.evaluator)

    fault_time: list[float] = []

    def fault(handle) -> None:
        fault_time.append(ray_cluster.get(handle.__ray_call__.remote(hang_evaluation_envs), timeout=60))

    # A run of fixed wall time, not env steps: the fake env steps at thousands a second, so 40,000 steps can end
    # before the heartbeat (10 s) finds the hung evaluation; then the run's end would wait out the final evaluation.
    run_dir = _one_fault_one_restart(ray_cluster, tmp_path, ["runtime.actor_stuck_timeout_s=10", "eval.host=env_actor",
                                                             "eval.every_updates=5", "eval.episodes=2",
                                                             "eval.video=false", "runtime.total_env_steps=1000000000",
                                                             "runtime.max_wall_time_s=60"], fault)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals_after = [r for r in rows if any(k.startswith("eval/") for k in r) and r.get("time", 0) > fault_time[0] + 10]
    assert evals_after, "no evaluation finished after the hung one"


def test_a_hung_evaluator_actor_is_killed_and_a_fresh_one_evaluates(ray_cluster, tmp_path):
    """eval.host=evaluator: an evaluation whose env call never returns (every step of the envs the evaluator
    actor builds from then on) gets that actor killed by its heartbeat after runtime.actor_stuck_timeout_s; the
    evaluation is dropped, a fresh evaluator actor plays the next ones, training is not restarted, and the end of
    the run does not wait out the final evaluation's timeout (300 s)."""
    hang_evaluation_envs = _evaluation_envs_hang(lambda ray_evaluator: ray_evaluator.evaluator)

    cfg, run_dir, _ = prepare_run(MEMORY, [f"runtime.run_dir={tmp_path}", "logging.wandb=disabled",
                                           "logging.progress=false", "logging.log_every_s=1",
                                           "runtime.actor_stuck_timeout_s=10", "eval.host=evaluator",
                                           "eval.every_updates=5", "eval.episodes=2", "eval.video=false",
                                           "runtime.total_env_steps=1000000000", "runtime.max_wall_time_s=60"])
    runtime = RayRuntime(cfg, run_dir)

    def fault() -> float:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            driver = getattr(runtime, "eval_driver", None)
            handle = None if driver is None else driver.handle
            if handle is not None:
                return ray_cluster.get(handle.__ray_call__.remote(hang_evaluation_envs), timeout=60)
            time.sleep(0.2)
        raise TimeoutError("no evaluator actor started within 60 s")

    t, faulted = at_env_steps(runtime, run_dir, 2000, fault)
    start = time.monotonic()
    summary = runtime.train()
    took = time.monotonic() - start
    t.join(5)
    assert "steps" in faulted, f"the test never faulted the evaluator: {faulted}"
    driver = runtime.eval_driver
    assert driver.evaluators_hung == 1, (driver.evaluators_hung, summary)
    assert driver.evaluators_started >= 2
    assert summary["actor_restarts"] == 0 and summary["learner_restarts"] == 0, summary
    assert took < 200, f"the run took {took:.0f} s: its end waited for the hung evaluation"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    hung_at = faulted["value"]
    evals_after = [r for r in rows if any(k.startswith("eval/") for k in r) and r.get("time", 0) > hung_at + 10]
    assert evals_after, "no evaluation finished after the hung one"
