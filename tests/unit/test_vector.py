"""VecEnv: same-step autoreset, final obs, durations, episode stats, faults, inline == subprocess, close."""

from __future__ import annotations

import copy
import os
import signal
from dataclasses import replace

import numpy as np
import pytest

from distrl.config import EnvConfig
from distrl.envs import fake
from distrl.envs.vector import (
    MAX_CONSECUTIVE_FAULTS,
    InlineVecEnv,
    SubprocVecEnv,
    make_vec_env,
    slot_seed,
)

MODES = ["inline", "subprocess"]


def _venv(name: str, mode: str, num_envs: int = 4, seed: int = 0, prereset: bool | None = None, **kw):
    cfg = EnvConfig(name=name, vectorization=mode, num_workers=2, **kw)
    return make_vec_env(cfg, num_envs, seed, prereset=prereset)


def _snapshot(res):
    """Deep copy of a StepResult (its arrays are the VecEnv's buffers, reused by the next step)."""
    return copy.deepcopy(res)


def _count(obs):
    return obs["count"][:, 0].tolist()


@pytest.mark.parametrize("mode", MODES)
def test_same_step_autoreset_final_obs_and_episode_stats(mode):
    # Episode length 3; slot-specific actions show up in last_action, so slot mixing would be visible.
    venv = _venv("fake:counting", mode, fake_episode_len=3)
    try:
        obs = venv.reset()
        assert _count(obs) == [0, 0, 0, 0]
        actions = np.array([0, 1, 2, 1])
        for t in range(1, 7):
            res = venv.step(actions)
            assert res.obs["last_action"][:, 0].tolist() == ([-1] * 4 if t % 3 == 0 else actions.tolist())
            if t % 3 == 0:
                assert _count(res.obs) == [0, 0, 0, 0]  # already the next episode
                assert res.terminated.all() and not res.truncated.any()
                assert res.reward.tolist() == [1.0] * 4
                assert sorted(res.final_obs) == [0, 1, 2, 3]
                for i in range(4):
                    assert res.final_obs[i]["count"][0] == 3
                    assert res.final_obs[i]["last_action"][0] == actions[i]
                assert [e.env_index for e in res.episodes] == [0, 1, 2, 3]
                assert all((e.length, e.episode_return, e.success) == (3, 1.0, 1.0) for e in res.episodes)
                assert res.episodes[0].extra == {"final_count": 3.0}
            else:
                assert _count(res.obs) == [t % 3] * 4
                assert not res.terminated.any() and res.final_obs == {} and res.episodes == []
            assert res.duration.dtype == np.float32 and (res.duration > 0).all()
            assert res.faults == 0
    finally:
        venv.close()


@pytest.mark.parametrize("mode", MODES)
def test_truncation_is_not_termination(mode):
    venv = _venv("fake:counting", mode, fake_episode_len=10, max_episode_steps=2)
    try:
        venv.reset()
        venv.step(np.zeros(4, dtype=np.int64))
        res = venv.step(np.zeros(4, dtype=np.int64))
        assert res.truncated.all() and not res.terminated.any()
        assert res.reward.tolist() == [0.0] * 4
        assert [e.success for e in res.episodes] == [None] * 4
        assert [res.final_obs[i]["count"][0] for i in range(4)] == [2] * 4
        assert _count(res.obs) == [0] * 4
    finally:
        venv.close()


@pytest.mark.parametrize("prereset", [False, True])
def test_inline_and_subprocess_give_identical_results(prereset):
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 5, size=(25, 4))
    runs = []
    for mode in MODES:
        venv = _venv("fake:spec", mode, seed=11, prereset=prereset, fake_episode_len=4, max_episode_steps=3)
        try:
            trace = [copy.deepcopy(venv.reset())]
            trace += [_snapshot(venv.step(a)) for a in actions]
        finally:
            venv.close()
        runs.append(trace)
    first_inline, *steps_inline = runs[0]
    first_sub, *steps_sub = runs[1]
    for k in first_inline:
        assert np.array_equal(first_inline[k], first_sub[k])
    n_done = 0
    for a, b in zip(steps_inline, steps_sub):
        for k in a.obs:
            assert np.array_equal(a.obs[k], b.obs[k]), k
        for f in ("reward", "terminated", "truncated"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
        assert sorted(a.final_obs) == sorted(b.final_obs)
        for i in a.final_obs:
            for k in a.final_obs[i]:
                assert np.array_equal(a.final_obs[i][k], b.final_obs[i][k])
        assert [(e.env_index, e.episode_return, e.length) for e in a.episodes] == [
            (e.env_index, e.episode_return, e.length) for e in b.episodes
        ]
        n_done += len(a.final_obs)
    assert n_done >= 20  # the comparison did cover many autoresets


def test_seeds_differ_between_slots_and_vec_seeds():
    assert len({slot_seed(0, i, n) for i in range(8) for n in range(8)}) == 64
    assert slot_seed(0, 0, 0) != slot_seed(1, 0, 0)
    a = _venv("fake:spec", "inline", seed=1).reset()["vector"].copy()
    b = _venv("fake:spec", "inline", seed=1).reset()["vector"].copy()
    c = _venv("fake:spec", "inline", seed=2).reset()["vector"].copy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])


@pytest.mark.parametrize("prereset", [False, True])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", ["raise", "nan_obs", "inf_obs", "nan_reward"])
def test_step_fault_closes_the_episode_as_truncated_and_recreates_the_env(mode, fault, prereset):
    # Only slot 1's first instance is armed: it fails at its 2nd step.
    name = f"fake:faulty?mode={fault}&at=2&seed={slot_seed(0, 1, 0)}"
    venv = _venv(name, mode, seed=0, prereset=prereset, fake_episode_len=10)
    try:
        venv.reset()
        res = venv.step(np.zeros(4, dtype=np.int64))
        assert res.faults == 0 and _count(res.obs) == [1, 1, 1, 1]
        res = venv.step(np.zeros(4, dtype=np.int64))
        assert res.faults == 1
        assert res.truncated.tolist() == [False, True, False, False]
        assert res.faulted.tolist() == [False, True, False, False]
        assert not res.terminated.any()
        assert res.reward[1] == 0.0
        assert list(res.final_obs) == [1]
        assert res.final_obs[1]["count"][0] == 1  # the last good observation
        assert np.isfinite(res.final_obs[1]["real"]).all() and np.isfinite(res.obs["real"]).all()
        assert _count(res.obs) == [2, 0, 2, 2]  # slot 1 starts over on a fresh instance
        assert res.obs["episode"][1, 0] == 0
        assert res.episodes == []  # a cut episode is not reported as finished
        for _ in range(3):  # the replacement is healthy
            res = venv.step(np.zeros(4, dtype=np.int64))
            assert res.faults == 0 and not res.truncated.any() and not res.faulted.any()
        assert _count(res.obs) == [5, 3, 5, 5]
    finally:
        venv.close()


@pytest.mark.parametrize("prereset", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_reset_fault_recreates_the_env(mode, prereset):
    # Every instance raises in its 2nd reset (= the first autoreset); the episode itself ended normally.
    venv = _venv("fake:faulty?mode=raise_reset&at=2", mode, prereset=prereset, fake_episode_len=2)
    try:
        venv.reset()
        faults = 0
        for _ in range(6):
            res = venv.step(np.zeros(4, dtype=np.int64))
            faults += res.faults
            if res.terminated.any():
                assert res.terminated.all() and len(res.episodes) == 4
                assert _count(res.obs) == [0] * 4
        assert faults > 0  # prereset hides *when* the failing reset runs, but it is still counted
    finally:
        venv.close()


@pytest.mark.parametrize("mode", MODES)
def test_persistent_fault_raises_instead_of_looping(mode):
    venv = _venv("fake:faulty?mode=raise&at=1", mode, prereset=False)
    try:
        venv.reset()
        with pytest.raises(RuntimeError, match="faults in a row"):
            for _ in range(MAX_CONSECUTIVE_FAULTS + 2):
                venv.step(np.zeros(4, dtype=np.int64))
    finally:
        venv.close()


class _WrongShapeEnv(fake.CountingEnv):
    def _obs(self):
        obs = super()._obs()
        obs["count"] = np.zeros(2, dtype=np.int64)
        return obs


def test_observation_contradicting_the_spec_is_an_error_not_a_fault():
    venv = InlineVecEnv(
        EnvConfig(name="fake:counting"), 2, 0, env_fn=lambda cfg, seed: _WrongShapeEnv(seed=seed)
    )
    with pytest.raises(ValueError, match=r"observation 'count' has shape \(2,\).*spec says shape \(1,\)"):
        venv.reset()


def test_report_false_and_info_overrides():
    class Env(fake.CountingEnv):
        def step(self, action):
            obs, r, term, trunc, info = super().step(action)
            if term:
                info.update(report=self.episode_len == 2, episode_return=42.0, episode_length=99)
            return obs, r, term, trunc, info

    cfg = EnvConfig(name="fake:counting")
    venv = InlineVecEnv(cfg, 2, 0, env_fn=lambda c, s: Env(episode_len=2))
    venv.reset()
    venv.step(np.zeros(2, dtype=np.int64))
    res = venv.step(np.zeros(2, dtype=np.int64))
    assert [(e.episode_return, e.length) for e in res.episodes] == [(42.0, 99), (42.0, 99)]
    venv2 = InlineVecEnv(cfg, 2, 0, env_fn=lambda c, s: Env(episode_len=3))
    venv2.reset()
    for _ in range(3):
        res = venv2.step(np.zeros(2, dtype=np.int64))
    assert res.terminated.all() and res.episodes == []  # learning-only ends (report=False) are not listed


def test_subprocess_close_stops_workers_and_is_idempotent():
    venv = _venv("fake:counting", "subprocess")
    assert isinstance(venv, SubprocVecEnv)
    venv.reset()
    procs = list(venv._procs)
    assert all(p.is_alive() for p in procs)
    venv.close()
    assert not any(p.is_alive() for p in procs)
    assert all(p.exitcode == 0 for p in procs)  # they left through the close command
    venv.close()
    with pytest.raises(RuntimeError, match="closed"):
        venv.step(np.zeros(4, dtype=np.int64))


def test_dead_worker_is_reported():
    venv = _venv("fake:counting", "subprocess")
    try:
        venv.reset()
        os.kill(venv._procs[1].pid, signal.SIGKILL)
        venv._procs[1].join(5)
        with pytest.raises(RuntimeError, match=r"worker 1 .* died"):
            venv.step(np.zeros(4, dtype=np.int64))
    finally:
        venv.close()


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of num_workers"):
        SubprocVecEnv(EnvConfig(name="fake:counting"), 3, 0, num_workers=2)
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        make_vec_env(EnvConfig(name="fake:counting"), 0, 0)
    cfg = replace(EnvConfig(name="fake:counting"), vectorization="threads")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vectorization"):
        make_vec_env(cfg, 2, 0)
