"""Frame stacks in replay: stored as newest frames + step 0's older frames, rebuilt exactly on the way out."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from distrl.config import ReplayConfig
from distrl.replay import ReplayShard
from distrl.replay.testing import example_trajectory
from distrl.types import STACK_PREFIX, Trajectory, rebuild_frame_stacks


def _stacked_trajectory(done: np.ndarray, k: int = 4, hw: tuple[int, int] = (6, 5), seed: int = 0,
                        truncate_every: int = 0) -> Trajectory:
    """A Trajectory [T, B] whose obs["frames"] [T + 1, B, k, H, W] is what a frame-stacking env emits: a fresh
    random frame per step, shifted in; after an episode end (``done [T, B]``) the first frame repeated k times.
    Step 0's stack is mid-episode (k distinct frames). Every ``truncate_every``-th done is a truncation."""
    rng = np.random.default_rng(seed)
    T, B = done.shape
    stacks = np.zeros((T + 1, B, k, *hw), dtype=np.uint8)
    stacks[0] = rng.integers(0, 256, (B, k, *hw))
    for t in range(T):
        new = rng.integers(0, 256, (B, *hw), dtype=np.uint8)
        for b in range(B):
            stacks[t + 1, b] = new[b] if done[t, b] else np.concatenate([stacks[t, b, 1:], new[b][None]])
    terminated, truncated = done.copy(), np.zeros_like(done)
    if truncate_every:
        idx = np.argwhere(done)[::truncate_every]
        terminated[tuple(idx.T)], truncated[tuple(idx.T)] = False, True
    base = example_trajectory(T=T, B=B)
    return dataclasses.replace(
        base,
        obs={"frames": torch.from_numpy(stacks)},
        terminated=torch.from_numpy(terminated),
        truncated=torch.from_numpy(truncated),
    )


def _reference_rebuild(head: np.ndarray, newest: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Step by step, like the env: shift in the newest frame, or refill after an episode end."""
    B, T1 = newest.shape[:2]
    out = np.zeros((B, T1, head.shape[1] + 1, *newest.shape[2:]), dtype=newest.dtype)
    for b in range(B):
        out[b, 0] = np.concatenate([head[b], newest[b, :1]])
        for t in range(1, T1):
            out[b, t] = newest[b, t] if done[b, t - 1] else np.concatenate([out[b, t - 1, 1:], newest[b, t][None]])
    return out


def _done(T: int, B: int, ends: list[tuple[int, int]]) -> np.ndarray:
    d = np.zeros((T, B), dtype=bool)
    for t, b in ends:
        d[t, b] = True
    return d


CASES = {
    "no episode end": _done(8, 2, []),
    "end at step 0": _done(8, 2, [(0, 0)]),
    "episodes of one step": _done(8, 2, [(2, 1), (3, 1), (4, 1)]),
    "end at the last step": _done(8, 2, [(7, 0)]),
    "end inside the first k - 1 steps, and twice in a row": _done(8, 3, [(1, 0), (5, 2), (6, 2), (2, 1)]),
    "random ends": np.random.default_rng(3).random((20, 5)) < 0.2,
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("k", [2, 4])
def test_packed_stacks_rebuild_exactly(name, k):
    traj = _stacked_trajectory(CASES[name], k=k, truncate_every=2)
    packed = traj.batch_major(frame_stacks=("frames",))
    T1, B = traj.T + 1, traj.B
    assert packed["obs/frames"].shape == (B, T1, 6, 5)
    assert packed[STACK_PREFIX + "frames"].shape == (B, k - 1, 6, 5)
    back = Trajectory.from_batch_major(packed)
    assert torch.equal(back.obs["frames"], traj.obs["frames"])
    for leaf, value in traj.flatten().items():  # everything else untouched
        assert torch.equal(back.flatten()[leaf], value), leaf
    done = (traj.terminated | traj.truncated).T.numpy()
    ref = _reference_rebuild(packed[STACK_PREFIX + "frames"].numpy(), packed["obs/frames"].numpy(), done)
    np.testing.assert_array_equal(
        rebuild_frame_stacks(packed[STACK_PREFIX + "frames"], packed["obs/frames"], torch.from_numpy(done)).numpy(),
        ref,
    )


def test_without_frame_stacks_the_leaves_are_unchanged():
    traj = _stacked_trajectory(CASES["random ends"])
    plain = traj.batch_major()
    assert plain["obs/frames"].shape[2] == 4 and not any(n.startswith(STACK_PREFIX) for n in plain)
    assert torch.equal(Trajectory.from_batch_major(plain).obs["frames"], traj.obs["frames"])


@pytest.mark.parametrize(
    "tamper, where",
    [
        (lambda f: f[3, 1, 0].add_(1), "row 1, step 3"),  # an older frame that does not shift
        (lambda f: f[5, 0, 2].add_(1), "row 0, step 5"),  # the first stack of an episode not repeated
    ],
)
def test_a_key_that_is_not_a_frame_stack_is_refused_naming_row_and_step(tamper, where):
    traj = _stacked_trajectory(_done(8, 2, [(4, 0)]))
    frames = traj.obs["frames"].clone()
    tamper(frames)
    bad = dataclasses.replace(traj, obs={"frames": frames})
    with pytest.raises(ValueError, match=f"'frames' is declared a frame stack.*{where}"):
        bad.batch_major(frame_stacks=("frames",))
    with pytest.raises(KeyError, match="no observation leaf 'obs/pixels'"):
        traj.batch_major(frame_stacks=("pixels",))


def test_replay_stores_newest_frames_and_samples_full_stacks():
    traj = _stacked_trajectory(CASES["random ends"], k=4, hw=(84, 84))
    cfg = ReplayConfig(capacity=16, min_size=1, samples_per_insert=0.0)
    packed, plain = ReplayShard(cfg, seed=0), ReplayShard(cfg, seed=0)
    assert packed.insert(traj, frame_stacks=("frames",)).ok and plain.insert(traj).ok
    stored = packed._storage.arrays
    assert stored["obs/frames"].shape == (16, traj.T + 1, 84, 84)
    assert stored[STACK_PREFIX + "frames"].shape == (16, 3, 84, 84)
    ratio = plain._storage.nbytes / packed._storage.nbytes
    assert plain.stats().row_nbytes / packed.stats().row_nbytes == pytest.approx(ratio)
    assert packed.stats().row_nbytes == packed._storage.nbytes // 16
    assert ratio == pytest.approx(4 * (traj.T + 1) / (traj.T + 1 + 3), rel=0.02)  # 3.5 at T = 20
    sample = packed.sample(traj.B)
    got = sample.trajectory()
    order = torch.from_numpy(sample.keys)  # row b of the insert has key b
    assert torch.equal(got.obs["frames"], traj.obs["frames"][:, order])


def test_packed_and_compressed_frames_sample_the_same_stacks():
    """configs/pong.yaml's replay: obs/frames (one frame per step) and obs_stack/frames (step 0's older frames)
    each stored as zlib blobs (replay.compress_obs) come back as the same full stacks."""
    traj = _stacked_trajectory(CASES["random ends"], k=4, hw=(84, 84))
    names = ("obs/frames", STACK_PREFIX + "frames")
    packed = ReplayShard(ReplayConfig(capacity=16, min_size=1, samples_per_insert=0.0), seed=0)
    both = ReplayShard(ReplayConfig(capacity=16, min_size=1, samples_per_insert=0.0, compress_obs=True), seed=0)
    assert packed.insert(traj, frame_stacks=("frames",)).ok and both.insert(traj, frame_stacks=("frames",)).ok
    assert set(both._storage.blobs) == set(names)
    a, b = packed.sample(traj.B), both.sample(traj.B)
    np.testing.assert_array_equal(a.keys, b.keys)
    assert torch.equal(b.trajectory().obs["frames"], a.trajectory().obs["frames"])
    # These frames are random noise, which zlib cannot shrink: the stats count the blobs as they are.
    assert both.stats().row_nbytes == both._schema.plain_item_nbytes + round(both._storage.blob_nbytes / len(both))


def test_sampler_batches_across_shards_come_back_as_full_stacks():
    from distrl.replay import ReplaySampler
    from distrl.replay.client import LocalShardClient, insert_with_retry

    cfg = ReplayConfig(capacity=32, min_size=1, samples_per_insert=0.0, num_shards=2)
    shards = [ReplayShard(cfg, j, seed=j) for j in range(2)]
    clients = [LocalShardClient(s, frame_stacks=("frames",)) for s in shards]
    trajs = [_stacked_trajectory(CASES["random ends"], seed=j) for j in range(2)]
    for client, traj in zip(clients, trajs, strict=True):
        insert_with_retry(client, traj, timeout=5.0)
    sampler = ReplaySampler(clients, cfg, batch_size=8, prefetch=0, seed=0)
    try:
        batch = sampler.next_batch(timeout=10.0)
    finally:
        sampler.close()
    assert batch.traj.obs["frames"].shape == (21, 8, 4, 6, 5)
    for i in range(8):
        src = trajs[int(batch.shard_ids[i])]
        assert torch.equal(batch.traj.obs["frames"][:, i], src.obs["frames"][:, int(batch.keys[i])])
