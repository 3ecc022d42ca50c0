"""Habitat PointNav adapter.

Most tests run the adapter against FakeHabitat (:mod:`distrl.envs.habitat_fake`), a FAKE of habitat-lab's API
built from a recorded real run: they test the adapter's logic, NOT Habitat. The fake also reproduces three
hazards of the real habitat-sim/habitat-lab that the adapter defends against (episode lists shuffled in place
with the global ``random``; closing the simulator that holds the process's GL context kills the others; a
second ``close()`` raising); the tests under "Seeding" and "Closing" check the adapter's defences. The tests
marked ``envs`` at the end run the adapter on real habitat-lab + habitat-sim where those are installed, and
are skipped elsewhere.
"""

from __future__ import annotations

import copy
import gc
import math
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from distrl.config import EnvConfig
from distrl.envs import habitat as hab
from distrl.envs import habitat_fake
from distrl.envs.registry import env_spec, make_env

RECORDING, FRAMES = habitat_fake.load_recording()  # shipped with distrl: distrl/envs/habitat_data/

FAKE = hab.FAKE_ID
RECORDED_LIMIT = 60  # the recording ran with habitat.environment.max_episode_steps=60
BY_ID = {e["episode_id"]: e for e in RECORDING["episodes"]}
# distrl action index of each recorded habitat action index (the recorded order is habitat's default).
TO_DISTRL = [hab.ACTIONS.index(n) for n in RECORDING["task_action_order"]]


def fake_env(seed=0, **cfg_fields):
    cfg_fields.setdefault("image_size", 64)
    return hab.make(EnvConfig(name=FAKE, **cfg_fields), seed)


def replay(env, episode):
    """Step the recorded actions of `episode`; returns the list of adapter step results."""
    return [env.step(TO_DISTRL[s["action"]]) for s in episode["steps"]]


def reset_to(env, episode_id, max_resets=25):
    for _ in range(max_resets):
        obs, info = env.reset()
        if info["episode_id"] == episode_id:
            return obs
    raise AssertionError(f"episode {episode_id} never came up")


# ------------------------------------------------------------------------------------------------------------
# Spec, observations, action mapping
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 32])
def test_spec_matches_reset_and_step_observations(size):
    cfg = EnvConfig(name=FAKE, image_size=size)
    spec = hab.spec(cfg)
    assert spec == env_spec(cfg)
    assert spec.num_actions == 4 and spec.family == "habitat"
    assert {k: s.shape for k, s in spec.obs.items()} == {
        "rgb": (3, size, size),
        "depth": (1, size, size),
        "pointgoal": (2,),
    }
    env = make_env(cfg, seed=0)
    obs, _ = env.reset()
    for _ in range(4):
        assert set(obs) == set(spec.obs)
        for k, v in obs.items():
            spec.obs[k].check(k, v)
        assert 0.0 <= obs["depth"].min() and obs["depth"].max() <= 1.0
        obs, *_ = env.step(2)


@pytest.mark.parametrize("episode_id", ["7", "15", "19"])
def test_reset_observation_is_the_recorded_one_channel_first(episode_id):
    env = fake_env()
    obs = reset_to(env, episode_id)
    info = {"episode_id": episode_id}
    index = [e["episode_id"] for e in RECORDING["episodes"]].index(info["episode_id"])
    np.testing.assert_array_equal(obs["rgb"], FRAMES[f"ep{index}_reset_rgb"].transpose(2, 0, 1))
    np.testing.assert_array_equal(obs["depth"], FRAMES[f"ep{index}_reset_depth"].transpose(2, 0, 1))
    np.testing.assert_allclose(
        obs["pointgoal"], BY_ID[info["episode_id"]]["reset_obs"]["pointgoal_with_gps_compass"]
    )


def test_sensor_size_differing_from_image_size_is_area_resized():
    sensors = "habitat.simulator.agents.main_agent.sim_sensors"
    user = [f"{sensors}.{s}.{d}=64" for s in ("rgb_sensor", "depth_sensor") for d in ("width", "height")]
    env = hab.HabitatPointNavEnv(
        EnvConfig(name=FAKE, image_size=32),
        0,
        habitat_module=habitat_fake.fake_habitat_module(),
        overrides=user,
    )
    reset_to(env, "15")
    obs, info = env.reset(seed=0)
    while info["episode_id"] not in BY_ID:
        obs, info = env.reset()
    index = [e["episode_id"] for e in RECORDING["episodes"]].index(info["episode_id"])
    raw = FRAMES[f"ep{index}_reset_rgb"].astype(np.float64)
    pooled = raw.reshape(32, 2, 32, 2, 3).mean((1, 3))  # 64 -> 32 area resize = 2x2 means
    assert obs["rgb"].shape == (3, 32, 32)
    assert np.abs(obs["rgb"].transpose(1, 2, 0) - pooled).max() <= 0.5 + 1e-3
    depth = FRAMES[f"ep{index}_reset_depth"].reshape(32, 2, 32, 2, 1).mean((1, 3))
    np.testing.assert_allclose(obs["depth"].transpose(1, 2, 0), depth, atol=1e-6)


def test_observation_key_subset():
    env = fake_env(observation_keys=("pointgoal", "rgb"))
    obs, _ = env.reset()
    assert set(obs) == {"pointgoal", "rgb"}
    assert set(hab.spec(env.cfg).obs) == {"pointgoal", "rgb"}


def test_adapter_maps_actions_by_name(monkeypatch):
    """A task with its actions in another order must still give distrl's 0=stop 1=forward 2=left 3=right."""
    rec, frames = copy.deepcopy(RECORDING), FRAMES
    order = ["move_forward", "turn_right", "stop", "turn_left"]
    old = rec["task_action_order"]
    for ep in rec["episodes"]:
        for s in ep["steps"]:
            s["action"] = order.index(old[s["action"]])
    rec["task_action_order"] = order
    monkeypatch.setattr(habitat_fake, "load_recording", lambda folder=None: (rec, frames))
    env = fake_env(max_episode_steps=RECORDED_LIMIT)
    success_ep = BY_ID["15"]  # recorded success: must be reproduced through the permuted mapping
    reset_to(env, "15")
    results = [env.step(hab.ACTIONS.index(old[s["action"]])) for s in success_ep["steps"]]
    assert [r[1] for r in results] == pytest.approx([s["reward"] for s in success_ep["steps"]])
    assert results[-1][4]["success"] == 1.0


# ------------------------------------------------------------------------------------------------------------
# Episode semantics against the three recorded episodes
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "episode_id, terminated, truncated, success",
    [
        ("7", False, True, 0.0),  # recorded: hit the 60-step limit
        ("15", True, False, 1.0),  # recorded: reached the goal and called stop
        ("19", True, False, 0.0),
    ],  # recorded: stop at the start, far from the goal
)
def test_recorded_episodes_convert_to_terminated_or_truncated(episode_id, terminated, truncated, success):
    ep = BY_ID[episode_id]
    env = fake_env(max_episode_steps=RECORDED_LIMIT)
    reset_to(env, episode_id)
    results = replay(env, ep)
    for (obs, reward, term, trunc, info), s in zip(results[:-1], ep["steps"][:-1]):
        assert not term and not trunc and info == {}
        assert reward == pytest.approx(s["reward"])
        np.testing.assert_allclose(obs["pointgoal"], s["pointgoal_with_gps_compass"], rtol=1e-6)
    obs, reward, term, trunc, info = results[-1]
    last = ep["steps"][-1]
    assert (term, trunc) == (terminated, truncated)
    assert reward == pytest.approx(last["reward"])
    assert info["success"] == success
    assert info["extra"]["spl"] == pytest.approx(last["info"]["spl"])
    assert info["extra"]["distance_to_goal"] == pytest.approx(last["info"]["distance_to_goal"])
    assert info["episode_return"] == pytest.approx(sum(s["reward"] for s in ep["steps"]))
    if success:
        assert reward == pytest.approx(2.49) and 0.9 < info["extra"]["spl"] <= 1.0
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(1)


def test_stop_on_the_last_allowed_step_is_terminated_not_truncated():
    env = fake_env(max_episode_steps=3)
    env.reset()
    assert env.step(2)[2:4] == (False, False)
    assert env.step(2)[2:4] == (False, False)
    assert env.step(2)[2:4] == (False, True)  # time limit
    env.reset()
    env.step(2)
    env.step(2)
    _, _, term, trunc, info = env.step(hab.STOP)
    assert (term, trunc) == (True, False) and info["success"] == 0.0


def test_greedy_policy_succeeds_off_the_recording():
    """Off the recorded actions the fake's planar model takes over; the adapter still reports success/SPL."""
    env = fake_env(max_episode_steps=500)
    obs, _ = env.reset()
    rewards = []
    for _ in range(400):
        rho, angle = obs["pointgoal"]
        if rho < 0.15:
            action = hab.STOP
        elif abs(angle) > math.radians(6):
            action = 2 if angle > 0 else 3  # positive angle = goal to the left
        else:
            action = 1
        obs, reward, term, trunc, info = env.step(action)
        rewards.append(reward)
        if term or trunc:
            break
    assert term and not trunc and action == hab.STOP
    assert info["success"] == 1.0 and 0.0 < info["extra"]["spl"] <= 1.0
    assert rewards[-1] == pytest.approx(2.49)
    assert info["episode_return"] == pytest.approx(sum(rewards))


def test_reward_free_zeroes_rewards_but_reports_the_raw_return():
    env = fake_env(max_episode_steps=RECORDED_LIMIT, reward_free=True)
    reset_to(env, "15")
    results = replay(env, BY_ID["15"])
    assert all(r[1] == 0.0 for r in results)
    assert results[-1][4]["episode_return"] == pytest.approx(sum(s["reward"] for s in BY_ID["15"]["steps"]))


# ------------------------------------------------------------------------------------------------------------
# Seeding and reset semantics
# ------------------------------------------------------------------------------------------------------------


def _episode_ids(env, n, seed=None):
    ids = [env.reset(seed=seed)[1]["episode_id"]]
    return ids + [env.reset()[1]["episode_id"] for _ in range(n - 1)]


def test_same_seed_same_episode_sequence_and_first_observation():
    a, b = fake_env(seed=5), fake_env(seed=5)
    obs_a, _ = a.reset()
    obs_b, _ = b.reset()
    for k in obs_a:
        np.testing.assert_array_equal(obs_a[k], obs_b[k])
    assert _episode_ids(a, 6)[1:] == _episode_ids(b, 6)[1:]
    orders = {tuple(_episode_ids(fake_env(seed=s), 3)) for s in range(8)}
    assert len(orders) > 1  # the seed shuffles the episode order


def test_reset_with_seed_rewinds_the_episode_sequence():
    env = fake_env(seed=0)
    fresh = _episode_ids(fake_env(seed=9), 5)
    _episode_ids(env, 4)
    assert _episode_ids(env, 5, seed=9) == fresh


def test_seed_alone_does_not_rewind_in_habitat_but_reset_with_seed_does():
    """What the adapter works around: Habitat's env.seed() leaves the episode iterator where it is."""
    hmod = habitat_fake.fake_habitat_module()
    raw = hmod.gym.make_gym_from_config(hmod.get_config(hab.DEFAULT_TASK_CONFIG))
    henv = raw.unwrapped.habitat_env
    ids = []
    for _ in range(6):
        henv.seed(1)
        raw.reset()
        ids.append(henv.current_episode.episode_id)
    assert len(set(ids)) > 1
    env = fake_env()
    assert len({env.reset(seed=1)[1]["episode_id"] for _ in range(6)}) == 1
    env.close()
    raw.close()  # raw fakes are outside the adapter's registry: close the adapter's first, as habitat needs


def test_fake_iterator_shuffles_the_dataset_in_place_like_habitat():
    """Fidelity of the fake (what the real habitat-lab does): seed 0 does not seed, the dataset's own list is
    shuffled in place with the global `random`, and env.seed() reseeds the global RNG without rewinding."""
    hmod = habitat_fake.fake_habitat_module()
    raw = hmod.gym.make_gym_from_config(hmod.get_config(hab.DEFAULT_TASK_CONFIG, ["habitat.seed=0"]))
    henv = raw.unwrapped.habitat_env
    ids = lambda: [e.episode_id for e in henv._dataset.episodes]  # noqa: E731
    assert sorted(ids(), key=int) == [str(i) for i in range(habitat_fake.NUM_EPISODES)]
    before = ids()
    random.seed(123)
    henv._dataset.get_episode_iterator(shuffle=True, seed=0)
    after_0 = ids()
    assert after_0 != before  # shuffled in place, by the global random (seed 0 did not reseed it)
    random.seed(123)
    henv._dataset.get_episode_iterator(shuffle=True, seed=0)
    assert ids() != after_0  # the same global state, an already shuffled list: another order
    raw.close()


def test_two_envs_with_the_same_seed_start_on_the_same_episodes():
    """Real-Habitat failure `'17' == '5'`: two envs with seed 0 started on different episodes."""
    for seed in (0, 7):
        a = fake_env(seed=seed)
        random.random()  # anything else drawing from the global RNG in between
        b = fake_env(seed=seed)
        assert _episode_ids(a, 45) == _episode_ids(b, 45)  # past two cycles (20 episodes each) too
        a.close()
        b.close()


def test_reset_with_seed_rewinds_after_the_list_was_shuffled():
    env = fake_env(seed=3)
    first = _episode_ids(env, 25)
    assert _episode_ids(env, 25, seed=3) == first
    assert _episode_ids(env, 25, seed=3) == first
    other = _episode_ids(env, 25, seed=4)
    assert other != first
    assert _episode_ids(fake_env(seed=4), 25) == other


def test_episode_sequence_ignores_other_users_of_the_global_rng():
    """Interleaved envs (one vectorised actor) and other code drawing or reseeding `random` mid-sequence."""
    alone = _episode_ids(fake_env(seed=11), 45)
    env, other = fake_env(seed=11), fake_env(seed=12)
    ids = [env.reset()[1]["episode_id"]]
    other.reset()
    for k in range(44):
        random.seed(k)  # e.g. another env's habitat_env.seed()
        np.random.seed(k)
        other.reset(seed=k if k % 5 == 0 else None)
        ids.append(env.reset()[1]["episode_id"])
    assert ids == alone


def test_same_seed_same_episodes_in_a_fresh_process():
    code = (
        "from distrl.config import EnvConfig\n"
        "from distrl.envs import habitat as hab\n"
        "import random; random.seed(99)\n"
        "env = hab.make(EnvConfig(name=hab.FAKE_ID, image_size=16), 5)\n"
        "ids = [env.reset()[1]['episode_id'] for _ in range(25)]\n"
        "print(','.join(ids))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    env = fake_env(seed=5, image_size=16)
    assert out.stdout.strip().split(",") == [env.reset()[1]["episode_id"] for _ in range(25)]


# ------------------------------------------------------------------------------------------------------------
# Closing: the shared GL context and idempotent close
# ------------------------------------------------------------------------------------------------------------


def test_fake_closing_the_context_holder_kills_the_others_like_habitat_sim(monkeypatch):
    """Fidelity of the fake: the real habitat-sim aborts the process (SIGABRT) where the fake raises."""
    monkeypatch.setattr(habitat_fake, "_TLS", threading.local())  # as in a fresh process: no GL context yet
    hmod = habitat_fake.fake_habitat_module()
    cfg = hmod.get_config(hab.DEFAULT_TASK_CONFIG)
    a, b = hmod.gym.make_gym_from_config(cfg), hmod.gym.make_gym_from_config(cfg)
    a.reset()
    b.reset()
    a.close()
    with pytest.raises(habitat_fake.FakeGLContextLost, match="no current context"):
        b.reset()
    with pytest.raises(AttributeError):
        a.close()  # habitat-lab's gym wrapper: a second close raises
    c, d = hmod.gym.make_gym_from_config(cfg), hmod.gym.make_gym_from_config(cfg)
    d.close()  # closing one that shares the context is harmless
    c.reset()
    c.close()


@pytest.mark.parametrize("first_closed", [0, 1, 2])
def test_closing_one_env_keeps_the_others_running(first_closed, monkeypatch):
    monkeypatch.setattr(habitat_fake, "_TLS", threading.local())  # fresh process: envs[0] creates the context
    envs = [fake_env(seed=s) for s in range(3)]
    for e in envs:
        e.reset()
    envs[first_closed].close()
    for k, e in enumerate(envs):
        if k != first_closed:
            e.reset()
            e.step(2)
    for e in envs:
        e.close()
    assert all(e.env.unwrapped.habitat_env._closed for e in envs)  # all closed once all were released
    fresh = fake_env(seed=9)  # a new simulator after all were closed
    fresh.reset()
    fresh.step(1)
    fresh.close()


def test_a_garbage_collected_env_does_not_kill_the_others(monkeypatch):
    monkeypatch.setattr(habitat_fake, "_TLS", threading.local())
    a, b = fake_env(seed=1), fake_env(seed=2)
    a.reset()
    b.reset()
    del a
    gc.collect()
    b.reset()
    b.step(1)
    b.close()


def test_envs_made_on_one_thread_and_closed_from_another_do_not_kill_it(monkeypatch):
    """distrl's Ray env actor is threaded: its envs are made and stepped on the run thread and closed from
    another (the real habitat-sim aborted there: GL contexts are current per thread)."""
    monkeypatch.setattr(habitat_fake, "_TLS", threading.local())
    envs, errors = [], []

    def worker():
        try:
            envs.extend(fake_env(seed=s) for s in range(3))
            for e in envs:
                e.reset()
                e.step(1)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert not errors
    main = fake_env(seed=7)  # the main thread's own simulator and context
    main.reset()
    for e in envs:
        e.close()  # from the main thread: released, not closed here
    main.step(1)
    main.close()


def test_close_is_idempotent_and_a_closed_env_refuses_use():
    env = fake_env()
    env.reset()
    env.close()
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.reset()


def test_vector_env_replacing_a_faulted_env_keeps_its_neighbours(monkeypatch):
    """A fault in the env that holds the GL context: its replacement must not take the other slots down."""
    from distrl.envs.vector import InlineVecEnv

    made = []

    class Boom(Exception):
        pass

    def env_fn(cfg, seed):
        env = hab.make(cfg, seed)
        made.append(env)
        if len(made) == 1:  # the first instance (slot 0, the GL context holder) faults at its 3rd step
            step, calls = env.step, []

            def faulty(action):
                calls.append(action)
                if len(calls) == 3:
                    raise Boom("injected")
                return step(action)

            env.step = faulty
        return env

    monkeypatch.setattr(habitat_fake, "_TLS", threading.local())  # fresh process: slot 0 creates the context
    cfg = EnvConfig(name=FAKE, image_size=16, num_envs=3, max_episode_steps=8)
    for prereset in (False, True):
        made.clear()
        venv = InlineVecEnv(cfg, 3, seed=0, prereset=prereset, env_fn=env_fn)
        venv.reset(seed=0)
        faults = 0
        for _ in range(20):
            res = venv.step(np.full(3, 2, dtype=np.int64))
            faults += res.faults
        assert faults == 1
        venv.close()
        assert all(e.env.unwrapped.habitat_env._closed for e in made)


def test_cpu_rendering_when_no_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(hab, "_no_cuda_device", lambda: True)
    assert fake_env().habitat_config.habitat.simulator.habitat_sim_v0.gpu_device_id == -1
    user = EnvConfig(name=FAKE, image_size=16, habitat_overrides=(f"{hab.GPU_KEY}=1",))
    assert hab.make(user, 0).habitat_config.habitat.simulator.habitat_sim_v0.gpu_device_id == 1
    monkeypatch.setattr(hab, "_no_cuda_device", lambda: False)
    assert fake_env().habitat_config.habitat.simulator.habitat_sim_v0.gpu_device_id == 0


def test_shipped_configs_load():
    from distrl.config import load_config

    for name in ("habitat_pointnav.yaml", "habitat_pointnav_cpu.yaml"):
        cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / name)
        assert cfg.env.name == hab.REAL_ID
        assert hab.spec(cfg.env).num_actions == 4


# ------------------------------------------------------------------------------------------------------------
# Lazy import, errors
# ------------------------------------------------------------------------------------------------------------


def test_missing_habitat_raises_with_install_steps(monkeypatch):
    monkeypatch.setitem(sys.modules, "habitat", None)  # makes `import habitat` raise ImportError
    with pytest.raises(ImportError, match="conda install habitat-sim"):
        hab.make(EnvConfig(name=hab.REAL_ID), 0)
    assert hab.spec(EnvConfig(name=hab.REAL_ID)).num_actions == 4  # the spec needs no habitat


def test_real_id_goes_through_import_habitat(monkeypatch):
    fake = habitat_fake.fake_habitat_module()
    monkeypatch.setitem(sys.modules, "habitat", fake)
    monkeypatch.setitem(sys.modules, "habitat.gym", fake.gym)
    env = hab.make(EnvConfig(name=hab.REAL_ID, image_size=64), 0)
    assert env.habitat is fake
    obs, _ = env.reset()
    assert obs["rgb"].shape == (3, 64, 64)


def test_adapter_overrides_reach_the_habitat_config():
    env = fake_env(seed=4, max_episode_steps=17, image_size=48)
    c = env.habitat_config.habitat
    assert c.environment.max_episode_steps == 17 and c.seed == 4
    assert c.simulator.agents.main_agent.sim_sensors.rgb_sensor.width == 48


@pytest.mark.parametrize(
    "cfg, match",
    [
        (EnvConfig(name="habitat:objectnav"), "known habitat ids"),
        (EnvConfig(name=FAKE, observation_keys=("rgb", "semantic")), "subset"),
    ],
)
def test_bad_config_is_named(cfg, match):
    with pytest.raises(ValueError, match=match):
        hab.make(cfg, 0)


def test_bad_action_is_rejected():
    env = fake_env()
    env.reset()
    with pytest.raises(ValueError, match="out of range"):
        env.step(4)


def test_shipped_habitat_data_matches_the_shared_folder():
    """distrl/envs/habitat_data/ holds copies of the project's shared/habitat/ files: byte-identical."""
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2].parent / "shared" / "habitat"
    if not shared.is_dir():
        pytest.skip(f"no {shared} on this machine to compare with")
    names = ["HABITAT.md", "habitat_pointnav_recording.json", "habitat_pointnav_frames.npz", "two_rooms.glb",
             "make_episodes.py", "make_scene.py"]
    for name in names:
        assert (habitat_fake.PACKAGED_DIR / name).read_bytes() == (shared / name).read_bytes(), name


def test_missing_recording_names_the_folder_and_the_env_var(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"DISTRL_HABITAT_DIR"):
        habitat_fake.load_recording(str(tmp_path))


# ------------------------------------------------------------------------------------------------------------
# Real Habitat (skipped unless habitat-sim and habitat-lab are installed)
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_habitat(tmp_path_factory):
    """Real habitat-sim + habitat-lab, with the bundled episodes generated into a fresh cache folder."""
    pytest.importorskip("habitat_sim")
    pytest.importorskip("habitat")
    mp = pytest.MonkeyPatch()
    mp.setenv(hab.CACHE_ENV, str(tmp_path_factory.mktemp("habitat_cache")))
    data_path, scenes_dir = hab.bundled_dataset()
    yield data_path, scenes_dir
    mp.undo()


@pytest.mark.envs
def test_real_habitat_pointnav_on_two_rooms(real_habitat):
    data_path, scenes_dir = real_habitat
    overrides = [  # the bundled data, as explicit settings (what a user fills in for their own data)
        f"habitat.dataset.data_path={data_path}",
        f"habitat.dataset.scenes_dir={scenes_dir}",
        "habitat.simulator.habitat_sim_v0.gpu_device_id=-1",
    ]
    cfg = EnvConfig(name=hab.REAL_ID, image_size=64, max_episode_steps=40)
    spec = hab.spec(cfg)
    env = hab.HabitatPointNavEnv(cfg, 0, overrides=overrides)
    obs, info = env.reset()
    for k, v in obs.items():
        spec.obs[k].check(k, v)
    again = hab.HabitatPointNavEnv(cfg, 0, overrides=overrides)
    obs2, info2 = again.reset()
    assert info2["episode_id"] == info["episode_id"]
    np.testing.assert_allclose(obs2["pointgoal"], obs["pointgoal"], rtol=1e-5)
    again.close()
    rng = np.random.default_rng(0)
    steps = 0
    while True:
        obs, _, term, trunc, info = env.step(int(rng.integers(1, 4)))  # never stop
        steps += 1
        for k, v in obs.items():
            spec.obs[k].check(k, v)
        if term or trunc:
            break
    assert trunc and not term and steps == 40 and info["success"] == 0.0
    env.reset()
    _, _, term, trunc, info = env.step(hab.STOP)
    assert term and not trunc and "spl" in info["extra"]
    env.close()
    env.close()  # idempotent (habitat-lab's own wrapper raises AttributeError here)


@pytest.mark.envs
def test_real_habitat_seeds_are_reproducible(real_habitat):
    cfg = EnvConfig(name=hab.REAL_ID, image_size=32, max_episode_steps=10)  # bundled data, CPU by default
    a, b = hab.make(cfg, 0), hab.make(cfg, 0)
    ids_a = [a.reset()[1]["episode_id"]] + [a.reset()[1]["episode_id"] for _ in range(24)]
    random.seed(5)
    ids_b = [b.reset()[1]["episode_id"]] + [b.reset()[1]["episode_id"] for _ in range(24)]
    assert ids_a == ids_b and len(set(ids_a)) == 20
    assert [a.reset(seed=0)[1]["episode_id"]] + [a.reset()[1]["episode_id"] for _ in range(24)] == ids_a
    other = [a.reset(seed=3)[1]["episode_id"]] + [a.reset()[1]["episode_id"] for _ in range(4)]
    assert other != ids_a[:5]
    code = (
        "from distrl.config import EnvConfig\nfrom distrl.envs import habitat as hab\n"
        "env = hab.make(EnvConfig(name=hab.REAL_ID, image_size=32, max_episode_steps=10), 0)\n"
        "print(','.join([env.reset()[1]['episode_id'] for _ in range(25)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].split(",") == ids_a
    a.close()
    b.close()


@pytest.mark.envs
def test_real_habitat_closing_one_simulator_keeps_the_others(real_habitat):
    """On habitat-sim, closing the simulator that created the GL context used to abort the process."""
    cfg = EnvConfig(name=hab.REAL_ID, image_size=32, max_episode_steps=10)
    code = (
        "from distrl.config import EnvConfig\nfrom distrl.envs import habitat as hab\n"
        "cfg = EnvConfig(name=hab.REAL_ID, image_size=32, max_episode_steps=10)\n"
        "a, b, c = hab.make(cfg, 0), hab.make(cfg, 1), hab.make(cfg, 2)\n"
        "for e in (a, b, c): e.reset()\n"
        "a.close(); a.close()\n"
        "b.reset(); b.step(1); c.reset(); c.step(2)\n"
        "b.close()\n"
        "c.reset(); c.step(1)\n"
        "d = hab.make(cfg, 3); d.reset(); d.step(1)\n"
        "c.close(); d.close()\n"
        "e = hab.make(cfg, 4); e.reset(); e.step(1)\n"  # a new context once all were closed
        "print('ALIVE')\n"  # e is left open: closed at exit
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "ALIVE" in out.stdout, (out.returncode, out.stderr[-3000:])
    assert hab.spec(cfg).num_actions == 4


def test_pointnav_specs_import_no_simulator():
    """A learner builds its model from the spec: that must not need habitat, MiniWorld or OpenGL."""
    code = (
        "import sys\n"
        "from distrl.config import EnvConfig\n"
        "from distrl.envs.registry import env_spec\n"
        "for name in ('habitat:pointnav', 'habitat:fake-pointnav', 'MiniWorld-OneRoom-v0'):\n"
        "    assert env_spec(EnvConfig(name=name, image_size=32)).num_actions == 4\n"
        "loaded = [m for m in ('habitat', 'habitat_sim', 'miniworld', 'pyglet') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
