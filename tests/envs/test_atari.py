"""Atari adapter on the real ALE (DeepMind preprocessing, episode ends, life loss, seeding); AreaResize."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distrl.config import EnvConfig
from distrl.envs.atari import AreaResize, area_weights

# ------------------------------------------------------------------------------------------------------------
# AreaResize (pure NumPy, no ALE needed)
# ------------------------------------------------------------------------------------------------------------


def _dense_reference(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    wy, wx = area_weights(img.shape[0], out_hw[0]), area_weights(img.shape[1], out_hw[1])
    return np.einsum("ai,ij...,bj->ab...", wy, img.astype(np.float64), wx, optimize=True)


@pytest.mark.parametrize(
    "in_hw, out_hw, channels",
    [
        ((210, 160), (84, 84), None),
        ((210, 160), (64, 64), None),
        ((64, 64), (84, 84), 3),
        ((64, 48), (32, 20), 3),
        ((64, 64), (32, 32), 1),
        ((7, 5), (3, 2), None),
    ],
)
def test_area_resize_matches_dense_area_average(in_hw, out_hw, channels):
    rng = np.random.default_rng(0)
    shape = in_hw if channels is None else (*in_hw, channels)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    resize = AreaResize(in_hw, out_hw)
    ref = _dense_reference(img, out_hw)
    out = resize(img)
    assert out.dtype == np.uint8 and out.shape == ref.shape
    assert np.abs(out.astype(np.float64) - ref).max() <= 0.5 + 1e-3  # rounded to nearest
    out_f = resize(img.astype(np.float32))
    assert out_f.dtype == np.float32
    np.testing.assert_allclose(out_f, ref, atol=1e-3)


def test_area_weights_rows_sum_to_one_and_cover_the_input():
    w = area_weights(210, 84)
    np.testing.assert_allclose(w.sum(1), 1.0)
    np.testing.assert_allclose(w.sum(0), 84 / 210)  # every input pixel contributes its full area


def test_area_resize_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match="expects an image of shape"):
        AreaResize((210, 160), (84, 84))(np.zeros((84, 84), np.uint8))


# ------------------------------------------------------------------------------------------------------------
# The env (real ALE)
# ------------------------------------------------------------------------------------------------------------

ale_py = pytest.importorskip("ale_py")
from distrl.envs import atari  # noqa: E402
from distrl.envs.registry import env_spec, make_env  # noqa: E402
from distrl.types import PolicyWeights  # noqa: E402

envs = pytest.mark.envs
PONG = "ALE/Pong-v5"


@envs
def test_spec_matches_observations():
    cfg = EnvConfig(name=PONG)
    spec = atari.spec(cfg)
    assert spec.family == "atari" and spec.num_actions == 6
    assert dict(spec.obs) == {"frames": atari.ArraySpec((4, 84, 84), np.dtype(np.uint8))}
    env = atari.make(cfg, seed=0)
    obs, _ = env.reset()
    spec.obs["frames"].check("frames", obs["frames"])
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(0)
        spec.obs["frames"].check("frames", obs["frames"])
        assert isinstance(reward, float) and not (terminated or truncated) and "lives" in info


@envs
def test_custom_sizes_and_registry():
    cfg = EnvConfig(name=PONG, image_size=64, frame_stack=2, frame_skip=3)
    assert env_spec(cfg).obs["frames"].shape == (2, 64, 64)
    obs, _ = make_env(cfg, seed=0).reset()
    assert obs["frames"].shape == (2, 64, 64)


@envs
def test_reset_fills_the_stack_and_steps_shift_it():
    env = atari.make(EnvConfig(name=PONG), seed=0)
    obs, _ = env.reset()
    assert all((obs["frames"][i] == obs["frames"][0]).all() for i in range(4))
    rng = np.random.default_rng(0)
    for _ in range(30):
        new, *_ = env.step(int(rng.integers(6)))
        np.testing.assert_array_equal(new["frames"][:-1], obs["frames"][1:])
        obs = new
    assert len({obs["frames"][i].tobytes() for i in range(4)}) > 1  # the game moves


@envs
def test_last_frame_is_max_pool_of_the_last_two_raw_frames_resized():
    """Re-run each agent step frame by frame from a cloned emulator state; rebuild the frame independently."""
    env = atari.make(EnvConfig(name=PONG, sticky_action_prob=0.0, noop_max=0), seed=0)
    env.reset()
    ale = env.ale
    actions = ale.getMinimalActionSet()
    rng = np.random.default_rng(1)
    pool_mattered = False
    for _ in range(40):
        a = int(rng.integers(6))
        state = ale.cloneState()
        obs, *_ = env.step(a)
        after = ale.cloneState()
        ale.restoreState(state)
        frames = []
        for _ in range(4):
            ale.act(actions[a])
            frames.append(ale.getScreenGrayscale().astype(np.float64))
        ale.restoreState(after)
        pooled = _dense_reference(np.maximum(frames[-2], frames[-1]), (84, 84))
        assert np.abs(obs["frames"][-1].astype(np.float64) - pooled).max() <= 0.5 + 1e-3
        last_only = np.floor(_dense_reference(frames[-1], (84, 84)) + 0.5)
        pool_mattered |= bool((last_only != obs["frames"][-1]).any())
    assert pool_mattered, "max-pooling never changed a frame: the test would not catch a missing pool"


@envs
def test_same_seed_same_trajectory_different_seed_differs():
    cfg = EnvConfig(name=PONG)  # sticky actions and no-op starts both draw from the seed

    def run(seed):
        env = atari.make(cfg, seed=seed)
        frames = [env.reset()[0]["frames"]]
        rng = np.random.default_rng(0)
        frames += [env.step(int(rng.integers(6)))[0]["frames"] for _ in range(60)]
        return np.stack(frames)

    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    env = atari.make(cfg, seed=3)
    env.reset()
    env.step(1)
    np.testing.assert_array_equal(env.reset(seed=3)[0]["frames"], a[0])


@envs
def test_max_episode_steps_truncates_the_game():
    env = atari.make(EnvConfig(name=PONG, max_episode_steps=5), seed=0)
    env.reset()
    ends = [env.step(0)[2:] for _ in range(5)]
    assert [e[:2] for e in ends] == [(False, False)] * 4 + [(False, True)]
    assert "episode_return" in ends[-1][2]
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(0)


def _play(env, rng, max_steps):
    """Random play until an episode end; returns (steps, summed reward, terminated, truncated, info)."""
    total = 0.0
    for t in range(1, max_steps + 1):
        _, r, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        total += r
        if terminated or truncated:
            return t, total, terminated, truncated, info
    raise AssertionError(f"no episode end within {max_steps} steps")


@envs
def test_life_loss_ends_learning_episodes_and_reports_the_full_game():
    env = atari.make(EnvConfig(name="ALE/Asterix-v5", terminal_on_life_loss=True), seed=0)
    env.reset()
    start_lives = env.ale.lives()
    rng = np.random.default_rng(0)
    game_total, segments = 0.0, 0
    while True:
        _, total, terminated, truncated, info = _play(env, rng, 2000)
        game_total += total
        segments += 1
        if info.get("report", True):
            break
        assert terminated and not truncated and "episode_return" not in info
        assert info["lives"] == start_lives - segments
        env.reset()
        assert env.ale.lives() == start_lives - segments  # the game went on: no real reset
    assert segments == start_lives and terminated
    assert info["episode_return"] == game_total > 0


@envs
@pytest.mark.parametrize(
    "env_cfg",
    [
        EnvConfig(name=PONG, num_envs=3, max_episode_steps=23),  # games cut by the time limit
        EnvConfig(name="ALE/Asterix-v5", num_envs=3, terminal_on_life_loss=True),  # life-loss episode ends
    ],
    ids=["pong-time-limit", "asterix-life-loss"],
)
def test_actor_sequences_are_stored_as_newest_frames_and_rebuilt_exactly(env_cfg):
    """The spec declares the stack, so replay keeps one frame per step; what the learner gets back is what the
    actor saw, across every kind of episode end (real reset, time limit, life loss)."""
    from distrl.actors.env_actor import EnvActor, RandomPolicy
    from distrl.config import ExperimentConfig, SequenceConfig
    from distrl.types import Trajectory

    spec = env_spec(env_cfg)
    assert spec.frame_stacks == ("frames",)
    assert env_spec(EnvConfig(name=PONG, frame_stack=1)).frame_stacks == ()
    cfg = ExperimentConfig(env=env_cfg, sequence=SequenceConfig(length=40, burn_in=0, period=40))
    actor = EnvActor(cfg, 0, RandomPolicy(spec.num_actions, seed=0))
    ends = 0
    for traj in actor.run(num_sequences=6):
        ends += int(traj.done().sum())
        packed = traj.batch_major(frame_stacks=spec.frame_stacks)
        assert packed["obs/frames"].shape == (traj.B, traj.T + 1, 84, 84)
        assert torch.equal(Trajectory.from_batch_major(packed).obs["frames"], traj.obs["frames"])
    actor.close()
    assert ends >= 3  # episode ends inside the sequences were exercised


@envs
def test_cnn_actor_on_the_numpy_path_records_what_the_learner_recomputes():
    """An actor running the small CNN on the NumPy path (convolutions through PyTorch, 1/255 folded into the
    first conv's weights) stores behaviour logits and start states that the learner's float32 unroll of the
    stored (frame-packed) sequence reproduces, across time-limit episode ends and a weight load."""
    from distrl.actors.env_actor import EnvActor
    from distrl.config import ActorConfig, ExperimentConfig, ModelConfig, SequenceConfig
    from distrl.models import build_agent
    from distrl.models.numpy_act import NumpyPolicy
    from distrl.types import Trajectory

    cfg = ExperimentConfig(
        env=EnvConfig(name=PONG, num_envs=2, max_episode_steps=9),
        model=ModelConfig(encoder="small_cnn", hidden_size=16),
        sequence=SequenceConfig(length=6, burn_in=2, period=6),
        actor=ActorConfig(inference="auto", precision="float32"),
    )
    actor = EnvActor(cfg, 0)
    assert isinstance(actor.policy, NumpyPolicy)
    list(actor.run(1))
    other = build_agent(cfg.model, actor.spec)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    actor.set_weights(PolicyWeights(2, other.state_dict()))
    list(actor.run(1))  # its burn-in overlaps steps acted before the load
    ends = 0
    for traj in actor.run(4):
        traj = Trajectory.from_batch_major(traj.batch_major(frame_stacks=actor.spec.frame_stacks))
        ends += int(traj.done().sum())
        reset = torch.zeros_like(traj.terminated)
        reset[1:] = traj.terminated[:-1] | traj.truncated[:-1]
        with torch.no_grad():
            out = other.unroll({k: v[:-1] for k, v in traj.obs.items()}, reset, traj.core_state)
        torch.testing.assert_close(out.logits, traj.behaviour_logits, rtol=1e-4, atol=1e-4)
    actor.close()
    assert ends >= 2


@envs
def test_without_life_loss_mode_a_lost_life_does_not_end_the_episode():
    env = atari.make(EnvConfig(name="ALE/Asterix-v5"), seed=0)
    env.reset()
    lives = env.ale.lives()
    rng = np.random.default_rng(0)
    for _ in range(2000):
        _, _, terminated, truncated, info = env.step(int(rng.integers(9)))
        if info["lives"] < lives:
            break
    else:
        raise AssertionError("no life lost")
    assert not terminated and not truncated and "report" not in info


@envs
def test_reward_free_zeroes_rewards_and_keeps_the_raw_score():
    cfg = EnvConfig(name="ALE/Asterix-v5", max_episode_steps=150)
    raw, free = (
        atari.make(cfg, seed=0),
        atari.make(EnvConfig(name=cfg.name, max_episode_steps=150, reward_free=True), seed=0),
    )
    raw.reset()
    free.reset()
    rng = np.random.default_rng(0)
    raw_total = 0.0
    for _ in range(150):
        a = int(rng.integers(9))
        _, r, *_, info_raw = raw.step(a)
        _, r_free, *_, info_free = free.step(a)
        raw_total += r
        assert r_free == 0.0
    assert raw_total > 0 and info_free["episode_return"] == info_raw["episode_return"] == raw_total


@envs
@pytest.mark.parametrize(
    "cfg, match",
    [
        (EnvConfig(name="ALE/NoSuchGame-v5"), "no ALE ROM"),
        (EnvConfig(name="ALE/Pong-v4"), "ALE/<Game>-v5"),
        (EnvConfig(name=PONG, frame_skip=0), "frame_skip"),
        (EnvConfig(name=PONG, sticky_action_prob=1.5), "sticky_action_prob"),
        (EnvConfig(name=PONG, observation_keys=("rgb",)), "observation_keys"),
    ],
)
def test_bad_config_is_named(cfg, match):
    with pytest.raises(ValueError, match=match):
        atari.make(cfg, seed=0)
