"""EnvActor on CountingEnv: every acting step checks that state, observation and action stay aligned."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from distrl.actors import EnvActor, RandomPolicy, actor_seed
from distrl.config import EnvConfig, ExperimentConfig, ModelConfig, SequenceConfig
from distrl.envs.vector import slot_seed
from distrl.models.agent import build_agent
from distrl.types import ActOut, PolicyWeights


class CountingPolicy:
    """Core state ``n`` = steps since the episode started; ``act`` asserts it equals the env's ``count``.

    So any mistake in the order of act / env.step / reset_state, or in the state used for the truncation
    value, fails inside the actor. Action = count % A; value = count (the truncation value is then the count
    of the final observation).
    """

    def __init__(self, num_actions: int = 3) -> None:
        self.num_actions = num_actions
        self.calls = 0

    def initial_state(self, batch, device="cpu"):
        return {"n": torch.zeros(batch, dtype=torch.int64)}

    def reset_state(self, state, mask):
        mask = torch.as_tensor(mask)  # the actor hands policies NumPy masks and observations
        return {"n": torch.where(mask, torch.zeros_like(state["n"]), state["n"])}

    def act(self, obs, state, greedy=False):
        self.calls += 1
        count = torch.as_tensor(obs["count"][:, 0])
        assert torch.equal(state["n"], count), f"state {state['n'].tolist()} != count {count.tolist()}"
        logits = torch.nn.functional.one_hot(count % self.num_actions, self.num_actions).float()
        return ActOut(action=count % self.num_actions, logits=logits, value=count.float(),
                      state={"n": state["n"] + 1})


def _cfg(name="fake:counting", num_envs=3, length=4, burn_in=1, period=3, mode="inline", **env_kw):
    return ExperimentConfig(
        env=EnvConfig(name=name, num_envs=num_envs, vectorization=mode, num_workers=1, **env_kw),
        model=ModelConfig(hidden_size=16),
        sequence=SequenceConfig(length=length, burn_in=burn_in, period=period),
    )


@pytest.mark.parametrize("mode", ["inline", "subprocess"])
def test_sequences_keep_state_obs_and_actions_aligned(mode):
    cfg = _cfg(fake_episode_len=3, mode=mode)
    actor = EnvActor(cfg, actor_id=5, policy=CountingPolicy())
    try:
        trajs = list(actor.run(num_sequences=4))
    finally:
        actor.close()
    total = cfg.sequence.total
    for k, traj in enumerate(trajs):
        assert traj.T == total and traj.B == 3
        count = traj.obs["count"][..., 0]  # [T + 1, B]
        assert torch.equal(traj.core_state["n"], count[0])
        assert torch.equal(traj.action, count[:-1] % 3)
        assert torch.equal(traj.behaviour_logits.argmax(-1), count[:-1] % 3)
        # The env saw exactly the recorded action (where the next obs is still the same episode).
        same_ep = ~traj.done()
        assert torch.equal(traj.obs["last_action"][1:, :, 0][same_ep], traj.action[same_ep])
        assert torch.equal(traj.terminated, count[:-1] == 2)  # step from count 2 ends a 3-step episode
        assert torch.equal(traj.reset_mask()[1:], count[1:] == 0)
        assert torch.equal(traj.reward, traj.terminated.float())
        assert not traj.truncated.any() and (traj.truncation_value == 0).all()
        assert (traj.duration > 0).all()
        assert traj.env_step.tolist() == [k * cfg.sequence.period * 3] * 3
        assert traj.actor_id.tolist() == [5] * 3 and traj.policy_version.tolist() == [-1] * 3
    for a, b in itertools.pairwise(trajs):  # overlap of total - period steps
        p = cfg.sequence.period
        assert torch.equal(a.obs["count"][p:], b.obs["count"][: total + 1 - p])
    c = actor.counters()
    assert c.env_steps == 3 * (total + 3 * cfg.sequence.period) and c.sequences == 4
    stats = actor.episode_stats()
    assert len(stats) == c.episodes > 0 and actor.episode_stats() == []
    assert {(s.episode_return, s.length, s.success, s.actor_id) for s in stats} == {(1.0, 3, 1.0, 5)}


def test_truncation_value_is_the_value_of_the_final_observation():
    cfg = _cfg(fake_episode_len=10, max_episode_steps=2, length=5, burn_in=0, period=5)
    actor = EnvActor(cfg, actor_id=0, policy=CountingPolicy())
    traj = next(actor.run(1))
    actor.close()
    count = traj.obs["count"][..., 0]
    assert torch.equal(traj.truncated, count[:-1] == 1) and not traj.terminated.any()
    # CountingPolicy's value is the count of the observation it sees: the final obs of a cut episode has 2.
    assert torch.equal(traj.truncation_value, traj.truncated.float() * 2.0)


def test_env_fault_closes_the_episode_as_truncated():
    cfg = _cfg(fake_episode_len=10, length=6, burn_in=0, period=6)
    bad = slot_seed(actor_seed(cfg.env.seed, 0, 0), 1, 0)
    cfg = _cfg(name=f"fake:faulty?mode=nan_obs&at=4&seed={bad}", fake_episode_len=10, length=6, burn_in=0,
               period=6)
    actor = EnvActor(cfg, actor_id=0, policy=CountingPolicy())
    traj = next(actor.run(1))
    actor.close()
    assert actor.faults == 1
    assert traj.truncated[:, 1].tolist() == [False, False, False, True, False, False]
    assert not traj.truncated[:, [0, 2]].any()
    assert traj.obs["count"][:, 1, 0].tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert traj.truncation_value[3, 1] == 3.0  # value of the last good observation (count 3)
    assert traj.valid[:, 1].tolist() == [True, True, True, False, True, True]  # no loss on the fake step
    assert traj.valid[:, [0, 2]].all()
    assert torch.isfinite(traj.obs["real"]).all()


def test_incarnations_get_different_env_seeds():
    seeds = {actor_seed(0, a, i) for a in range(4) for i in range(4)}
    assert len(seeds) == 16
    a, b = (EnvActor(_cfg(name="fake:spec", num_envs=2), 0, RandomPolicy(5), incarnation=i) for i in (0, 1))
    ta, tb = next(a.run(1)), next(b.run(1))
    assert not torch.equal(ta.obs["vector"], tb.obs["vector"])


def test_real_agent_acts_and_set_weights_changes_the_policy():
    cfg = _cfg(name="fake:memory", num_envs=4, fake_episode_len=2, burn_in=0, length=4, period=4)
    actor = EnvActor(cfg, actor_id=1)
    t1 = next(actor.run(1))
    assert set(t1.core_state) and all(v.shape[0] == 4 for v in t1.core_state.values())
    assert t1.behaviour_logits.shape == (cfg.sequence.total, 4, 2)
    other = build_agent(cfg.model, actor.spec)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * torch.randn_like(p))
    actor.set_weights(PolicyWeights(7, other.state_dict()))
    t2 = next(actor.run(1))
    # The first step of t2 was acted on with version 7 and the new weights.
    assert t2.policy_version.tolist() == [7] * 4
    obs0 = {k: v[0] for k, v in t2.obs.items()}
    expect = other.act(obs0, t2.core_state).logits
    assert torch.allclose(t2.behaviour_logits[0], expect, atol=1e-5)
    actor.close()


class StepBonus:
    """Episodic bonus stub: bonus = steps since this slot's episode started; records reset masks."""

    def __init__(self, b: int) -> None:
        self.n = np.zeros(b)
        self.resets: list[list[bool]] = []

    def reset(self, mask):
        self.resets.append(mask.tolist())
        self.n[mask] = 0

    def step(self, obs):
        out = self.n.copy()
        self.n += 1
        return out


def test_episodic_bonus_hook_is_stepped_and_reset_per_slot():
    cfg = _cfg(fake_episode_len=3, length=6, burn_in=0, period=6)
    bonus = StepBonus(3)
    actor = EnvActor(cfg, 0, CountingPolicy(), bonus=bonus)
    traj = next(actor.run(1))
    assert torch.equal(traj.episodic_bonus, traj.obs["count"][:-1, :, 0].float())
    assert bonus.resets == [[True] * 3, [True] * 3]


def test_random_policy_actor_runs_in_subprocess_mode():
    cfg = _cfg(name="fake:spec", num_envs=4, mode="subprocess", fake_episode_len=3)
    env = EnvConfig(name="fake:spec", num_envs=4, vectorization="subprocess", num_workers=2)
    cfg = ExperimentConfig(env=env, sequence=cfg.sequence)
    actor = EnvActor(cfg, 0, RandomPolicy(5, seed=0))
    try:
        trajs = list(actor.run(3))
    finally:
        actor.close()
    assert all(t.action.max() < 5 and t.action.min() >= 0 for t in trajs)
    assert trajs[0].core_state == {}


class _SlowPolicy(RandomPolicy):
    """RandomPolicy that burns ``ms`` of CPU per act call."""

    def __init__(self, num_actions: int, ms: float) -> None:
        super().__init__(num_actions)
        self.ms = ms

    def act(self, obs, state, greedy=False):
        import time

        end = time.perf_counter() + self.ms / 1e3
        while time.perf_counter() < end:
            pass
        return super().act(obs, state, greedy)


@pytest.mark.parametrize(("policy_ms", "step_ms"), [(4.0, 0.0), (0.0, 2.0)])
def test_counters_split_step_time_between_policy_and_envs(policy_ms, step_ms):
    # 2 envs x step_ms per batched step in the VecEnv vs policy_ms per act: whichever is set dominates.
    cfg = _cfg(name=f"fake:counting?step_ms={step_ms}", num_envs=2, fake_episode_len=5)
    actor = EnvActor(cfg, actor_id=0, policy=_SlowPolicy(3, policy_ms))
    try:
        for _ in range(20):
            actor.step()
        c = actor.counters()
    finally:
        actor.close()
    policy, env, total = c.time_policy_s, c.time_env_s, c.time_step_s
    assert 0.0 < policy + env <= total
    if policy_ms:
        assert policy >= 20 * policy_ms / 1e3 and policy > 0.8 * total and env < 0.2 * total
    else:
        assert env >= 20 * 2 * step_ms / 1e3 and env > 0.8 * total and policy < 0.2 * total


def test_actor_whose_numpy_path_fails_its_check_acts_through_torch(monkeypatch):
    """The actor's own policy comes from distrl.models.acting, check included: a NumPy path that computes
    something else than Agent.act is not used (actor.inference=auto), and the actor still runs."""
    from distrl.models import acting
    from distrl.models.agent import Agent
    from distrl.models.numpy_act import NumpyPolicy

    class Wrong(NumpyPolicy):
        def sync(self) -> None:
            super().sync()
            self._hb = self._hb + 1.0

    cfg = _cfg(name="fake:memory", num_envs=2, fake_episode_len=2, burn_in=0, length=2, period=2)
    actor = EnvActor(cfg, actor_id=0)
    assert isinstance(actor.policy, NumpyPolicy)
    actor.close()
    monkeypatch.setattr(acting, "NumpyPolicy", Wrong)
    actor = EnvActor(cfg, actor_id=0)
    try:
        assert isinstance(actor.policy, Agent)
        assert next(actor.run(1)).behaviour_logits.shape == (2, 2, 2)
    finally:
        actor.close()
