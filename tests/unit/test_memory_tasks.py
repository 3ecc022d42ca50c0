"""Memory tasks: rules (timeline, reward, what the agent's actions do when), chance levels, specs and ids."""

from __future__ import annotations

import numpy as np
import pytest

from distrl.config import EnvConfig
from distrl.envs import memory_tasks as mt
from distrl.envs.registry import env_spec, family_of, make_env
from distrl.envs.vector import make_vec_env


def _check_obs(spec, obs):
    for k, s in spec.obs.items():
        s.check(k, obs[k])


def _dancer_cell(env: mt.BalletEnv, i: int) -> tuple[int, int]:
    return env._places[i]


def _walk_to(env: mt.BalletEnv, cell: tuple[int, int]):
    """Step towards ``cell`` with the 8-direction moves until the episode ends."""
    while True:
        r, c = env._agent
        dr, dc = np.sign(cell[0] - r), np.sign(cell[1] - c)
        a = mt.AGENT_MOVES.index((int(dr), int(dc)))
        _, rew, term, trunc, info = env.step(a)
        if term or trunc:
            return rew, info


@pytest.mark.parametrize("dancers,delay", [(1, 0), (2, 3), (4, 5), (8, 2)])
def test_ballet_timeline_dances_and_reward(dancers, delay):
    env = mt.BalletEnv(dancers, delay, seed=3)
    spec = mt.BalletEnv.make_spec(f"Ballet-{dancers}-{delay}")
    obs, _ = env.reset()
    _check_obs(spec, obs)
    assert obs["room"][0, 3, 3] == 1 and obs["room"][0].sum() == 1
    homes = {int(np.argmax(obs["room"][1:mt.IDENTITIES + 1, r, c])): (r, c) for (r, c) in env._places}
    assert len(homes) == dancers  # distinct identities, each on its place
    seen_dances = []
    for t in range(env.watch_len):
        ds = env._dance_step()
        assert obs["room"][mt.IDENTITIES + 1].sum() == dancers  # the occupancy plane: every dancer
        if ds is None:
            assert obs["performing"].sum() == 0
            assert all(obs["room"][mt.IDENTITIES + 1, r, c] == 1 for (r, c) in env._places)
        else:
            i, k = ds
            d = mt.DANCES[env._dances[i]][k]
            assert obs["performing"][1 + env._dances[i]] == 1 and obs["performing"].sum() == 1
            r, c = env._places[i]
            off = (r + mt.DIRS[d][0], c + mt.DIRS[d][1])
            assert obs["room"][1 + env._ids[i], off[0], off[1]] == 1
            assert obs["room"][mt.IDENTITIES + 1, off[0], off[1]] == 1
            if k == 0:
                seen_dances.append(i)
        assert obs["instruction"].sum() == 0
        obs, rew, term, trunc, info = env.step(int(t % 9))  # actions do nothing before the test phase
        assert rew == 0 and not term and not trunc
        assert env._agent == mt.CENTRE
    assert seen_dances == list(range(dancers))  # in turn
    assert obs["instruction"][env._dances[env._target]] == 1 and obs["instruction"].sum() == 1
    rew, info = _walk_to(env, _dancer_cell(env, env._target))
    assert rew == 1.0 and info == {"success": 1.0, "chance": 1.0 / dancers, "delay": env.delay}


def test_ballet_wrong_dancer_and_timeout_score_zero():
    env = mt.BalletEnv(4, 2, seed=0)
    env.reset()
    for _ in range(env.watch_len):
        env.step(0)
    wrong = next(i for i in range(4) if i != env._target)
    rew, info = _walk_to(env, _dancer_cell(env, wrong))
    assert rew == 0.0 and info["success"] == 0.0 and info["chance"] == 0.25
    env.reset()
    steps = 0
    while True:
        _, rew, term, trunc, info = env.step(0)  # stay put until time runs out
        steps += 1
        if term or trunc:
            break
    assert steps == env.watch_len + mt.TEST_STEPS and term and rew == 0.0 and info["success"] == 0.0
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_ballet_random_choice_of_dancer_scores_chance():
    """Chance = 1/N: an agent that walks to a dancer it picks at random (here: random walks, counting the
    episodes that end on a dancer; a random walk may also run out of time, which scores 0)."""
    rng = np.random.default_rng(0)
    env = mt.BalletEnv(2, 0, seed=1)
    wins = []
    for _ in range(1500):
        env.reset()
        while True:
            _, rew, term, trunc, _ = env.step(int(rng.integers(1, 9)))
            if term or trunc:
                if env._agent in env._places:
                    wins.append(rew)
                break
    assert len(wins) > 300 and abs(np.mean(wins) - 0.5) < 0.07


@pytest.mark.parametrize("places,delay", [(2, 0), (4, 7), (5, 60)])
def test_recall_rules_and_chance(places, delay):
    env = mt.RecallEnv(places, delay, seed=2)
    spec = mt.RecallEnv.make_spec(f"Recall-{places}-{delay}", places)
    obs, _ = env.reset()
    _check_obs(spec, obs)
    cue = int(obs["cue"].argmax())
    assert obs["cue"].sum() == 1 and obs["distractor"].sum() == 0 and obs["query"][0] == 0
    for _ in range(delay):
        obs, rew, term, trunc, info = env.step((cue + 1) % places)  # wrong answers before the query do nothing
        assert rew == 0 and not term and not trunc
        assert obs["cue"].sum() == 0 and obs["distractor"].sum() == 1
    obs, rew, term, trunc, info = env.step(0)
    assert obs["query"][0] == 1 and obs["distractor"].sum() == 0
    _, rew, term, _, info = env.step(cue)
    assert rew == 1.0 and term and info == {"success": 1.0, "chance": 1.0 / places}
    env.reset(seed=5)
    for _ in range(delay + 1):
        env.step(0)
    _, rew, term, _, info = env.step((env._cue + 1) % places)
    assert rew == 0.0 and term and info["success"] == 0.0


def test_recall_distractors_do_not_leak_the_cue():
    """Only the cue tells where the object is. Distractors once skipped the cue's place, so naming the place shown
    least often among them scored 1.0 with no memory of the cue, and HCAM learnt that instead of recalling (at
    delay 60 its trained policy scored 0.98 on that env and 0.34 once distractors were independent of the cue)."""
    places, delay, n = 4, 30, 800
    env = mt.RecallEnv(places, delay, seed=3)
    rng = np.random.default_rng(0)
    wins, hits, shown = [], 0, 0
    for _ in range(n):
        obs, _ = env.reset()
        cue = int(obs["cue"].argmax())
        counts = np.zeros(places)
        for _ in range(delay + 1):
            counts += obs["distractor"]
            obs, *_ = env.step(0)
        hits += int(counts[cue])
        shown += int(counts.sum())
        least = np.flatnonzero(counts == counts.min())
        _, rew, term, _, _ = env.step(int(rng.choice(least)))
        assert term
        wins.append(rew)
    assert shown == n * delay
    assert abs(hits / shown - 1 / places) < 0.02  # the cue's place is shown as often as any other
    assert abs(np.mean(wins) - 1 / places) < 0.06  # distractor statistics alone score chance


def test_ids_registry_and_vec_env():
    assert family_of("Ballet-2-16")[1] == "memory" and family_of("Recall-4-60")[1] == "memory"
    assert mt.parse_name("Ballet-8-48") == ("Ballet", 8, 48)
    assert mt.parse_levels("Ballet-2-4to16") == ("Ballet", 2, 4, 16)
    assert mt.parse_levels("Recall-4-60") == ("Recall", 4, 60, 60)
    for bad in ("Ballet-9-16", "Ballet-2", "Recall-1-5", "Recall-x-5", "Ballet-2-16to4", "Recall-4-8to16",
                "Ballet-2-4to"):
        with pytest.raises(ValueError, match=r"env\.name"):
            mt.parse_levels(bad)
    with pytest.raises(ValueError, match=r"range of delays"):
        mt.parse_name("Ballet-2-4to16")  # one level expected
    cfg = EnvConfig(name="Recall-3-4", num_envs=2)
    spec = env_spec(cfg)
    assert spec.num_actions == 3 and spec.family == "memory"
    env = make_env(cfg, seed=0, render=True)
    env.reset()
    assert env.render().ndim == 3
    b = make_env(EnvConfig(name="Ballet-2-1"), seed=0)
    b.reset()
    frame = b.render()
    assert frame.shape == (84, 84, 3) and frame.dtype == np.uint8
    venv = make_vec_env(cfg, num_envs=2, seed=0)
    obs = venv.reset()
    assert obs["cue"].shape == (2, 3)
    successes = []
    for _ in range(30):
        res = venv.step(np.zeros(2, dtype=np.int64))
        successes += [e.success for e in res.episodes]
    venv.close()
    assert successes and all(s in (0.0, 1.0) for s in successes)
    e = mt.RecallEnv(3, 1, seed=0)
    e.reset()
    with pytest.raises(ValueError, match="out of range"):
        e.step(3)


def test_ballet_delay_range_draws_each_episodes_delay_and_plays_it():
    """Ballet-2-4to16: every episode has one delay from 4..16, all of them drawn; the dances, the instruction
    and the test phase follow that episode's delay; the spec is the fixed levels' (one model plays all)."""
    env = make_env(EnvConfig(name="Ballet-2-4to16"), seed=3)
    assert env_spec(EnvConfig(name="Ballet-2-4to16")).obs == env_spec(EnvConfig(name="Ballet-2-16")).obs
    delays = []
    for _ in range(300):
        obs, _ = env.reset()
        d = env.delay
        assert env.watch_len == 2 * (d + mt.DANCE_LEN) + d
        dancing = []
        for _ in range(env.watch_len):
            dancing.append(bool(obs["performing"].sum()))
            assert obs["instruction"].sum() == 0
            obs, _, term, _, info = env.step(0)
            assert not term
        starts = [t for t, on in enumerate(dancing) if on and (t == 0 or not dancing[t - 1])]
        assert starts == [d, 2 * d + mt.DANCE_LEN]  # each dance after d quiet steps
        assert obs["instruction"].sum() == 1
        for _ in range(mt.TEST_STEPS):
            obs, _, term, _, info = env.step(0)  # stay: time runs out
            if term:
                break
        assert term and info["delay"] == d and info["success"] == 0.0
        delays.append(d)
    assert set(delays) == set(range(4, 17))
    with pytest.raises(ValueError, match="max_delay"):
        mt.BalletEnv(dancers=2, delay=8, max_delay=4)
