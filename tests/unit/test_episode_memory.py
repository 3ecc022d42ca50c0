"""Replay of append-only memory state (distrl/replay/episode_memory.py): HCAM states survive the round trip
actor -> compacted sequence -> shard -> sample exactly (resets, FIFO wrap, eviction, a checkpoint, float16),
each chunk is stored once per stream, and a learner unrolling a replayed sequence reproduces the actor's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distrl.actors.env_actor import EnvActor
from distrl.config import ExperimentConfig, ModelConfig, ReplayConfig
from distrl.models.cores import build_core
from distrl.replay.episode_memory import EpisodeMemoryStore, MemoryCompactor
from distrl.replay.shard import ReplayShard, key_counter
from distrl.types import Trajectory

PERIOD = 5


def _core(cross: bool = False):
    torch.manual_seed(0)
    cfg = ModelConfig(core="hcam", hidden_size=8, num_core_layers=2, hcam_chunk=2, hcam_chunks=3, hcam_topk=2,
                      hcam_heads=2, hcam_cross_episode=cross)
    return build_core(cfg, 8)


def _stream_of_states(core, B: int, n_seq: int, seed: int = 0):
    """Full core states at every sequence start (every PERIOD steps) of B env slots with random episode starts,
    and for each, which slots had an episode start since the previous one."""
    g = torch.Generator().manual_seed(seed)
    s = core.initial_state(B)
    states, ended = [s], [torch.zeros(B, dtype=torch.bool)]
    with torch.no_grad():
        for _ in range(n_seq - 1):
            e = torch.zeros(B, dtype=torch.bool)
            for _ in range(PERIOD):
                reset = torch.rand(B, generator=g) < 0.06
                s = core.reset(s, reset)
                e |= reset
                _, s = core.step(torch.randn(B, 8, generator=g), s)
            states.append(s)
            ended.append(e)
    return states, ended


def _compact(comp, s, e):
    comp.episode_end(e.numpy())
    return comp.compact(s)


def _leaves(state, version: int):
    B = next(iter(state.values())).shape[0]
    out = {f"core_state/{k}": v for k, v in state.items()}
    out["policy_version"] = torch.full((B,), version, dtype=torch.int64)
    out["reward"] = torch.zeros(B, 3)
    return out


def _check_rows(shard, keys, full_states, atol=0.0):
    rows, _ = shard.read(keys)
    for i, key in enumerate(keys):
        seq, b = divmod(int(key_counter(key)), B_ROWS)  # the row's insert count (restores change the key)
        want = full_states[seq]
        for k, v in want.items():
            got = rows[f"core_state/{k}"][i]
            np.testing.assert_allclose(got, v[b].numpy(), atol=atol,
                                       err_msg=f"{k} key {key}")
    assert not any(k.startswith("core_state/memory.") for k in rows)


B_ROWS = 3


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("dtype", [None, "float16"])
def test_round_trip_through_a_shard_with_eviction_and_checkpoint(tmp_path, cross, dtype):
    core = _core(cross)
    n_seq = 25
    tol = 2e-3 if dtype else 0.0  # float16 storage rounds the memory (and everything else in the state)
    states, ended = _stream_of_states(core, B_ROWS, n_seq)
    comp = MemoryCompactor(core.episode_memory, B_ROWS, PERIOD)
    cap = 20  # rows: the oldest sequences are evicted (and their streams' unneeded chunks with them)
    shard = ReplayShard(ReplayConfig(capacity=cap, min_size=1, samples_per_insert=0), 0, seed=0,
                        core_state_dtype=dtype)
    for i, (s, e) in enumerate(zip(states, ended)):
        small = _compact(comp, s, e)
        assert not any(k in small for k in core.episode_memory.keys)
        assert small["mem0.new"].shape[1] == 3  # ceil(5 / 2) chunks at most per period
        shard.insert_leaves(_leaves(small, i))
        if i in (6, n_seq - 1):
            keys = shard.keys()
            _check_rows(shard, keys, states, tol)
    mem = shard.episode_memory
    assert mem.gaps == 0
    # memory held is bounded by what live rows need, not by what was ever written
    assert len(mem.streams) <= cap
    held = sum(st.n for st in mem.streams.values())
    assert held <= cap * 3 + 3 * B_ROWS
    sample = shard.sample(8)
    assert {k[len("core_state/"):] for k in sample.leaves if k.startswith("core_state/")} == set(
        core.initial_state(1))
    # a checkpoint keeps it
    shard.save(tmp_path / "ck")
    restored = ReplayShard.load(tmp_path / "ck", ReplayConfig(capacity=cap, min_size=1, samples_per_insert=0),
                                core_state_dtype=dtype)
    _check_rows(restored, restored.keys(), states, tol)
    # and it keeps going after the restore: new rows of the same streams
    full, ended = _stream_of_states(core, B_ROWS, n_seq + 6)
    for s, e in zip(full[n_seq:], ended[n_seq:]):  # the same compactor: streams carry on across the restore
        restored.insert_leaves(_leaves(_compact(comp, s, e), 0))
    _check_rows(restored, restored.keys(), full, tol)


def test_each_chunk_is_stored_once_not_per_sequence():
    core = _core()
    B = 4
    spec = core.episode_memory
    comp = MemoryCompactor(spec, B, PERIOD)
    shard = ReplayShard(ReplayConfig(capacity=1000, min_size=1, samples_per_insert=0), 0)
    plain = ReplayShard(ReplayConfig(capacity=1000, min_size=1, samples_per_insert=0), 0)
    g = torch.Generator().manual_seed(0)
    s = core.initial_state(B)
    with torch.no_grad():
        for i in range(30):  # no resets: one stream per slot
            shard.insert_leaves(_leaves(comp.compact(s), i))
            plain.insert_leaves(_leaves(s, i))
            for _ in range(PERIOD):
                _, s = core.step(torch.randn(B, 8, generator=g), s)
    written = int(s["count"][0])
    item_bytes = sum(int(np.prod(s[k].shape[2:])) * 4 for k in spec.keys)
    # every chunk a live row may still need, once per slot (here: all, nothing was evicted)
    assert shard.episode_memory.nbytes <= B * written * item_bytes
    assert shard.stats().row_nbytes < plain.stats().row_nbytes / 2


def test_lost_sequence_is_counted_and_zero_filled():
    core = _core()
    states, ended = _stream_of_states(core, 1, 6)
    comp = MemoryCompactor(core.episode_memory, 1, PERIOD)
    store = EpisodeMemoryStore(capacity=10)
    for i, (s, e) in enumerate(zip(states, ended)):
        small = _compact(comp, s, e)
        if i == 2:
            continue  # lost in transit
        rows, delta = store.split(_leaves(small, i))
        store.add(delta, rows, np.array([i]))
    assert store.gaps > 0


def test_compactor_refuses_a_period_longer_than_declared():
    core = _core()
    comp = MemoryCompactor(core.episode_memory, 1, period=2)  # at most one chunk per 2 steps
    s = core.initial_state(1)
    comp.compact(s)
    with torch.no_grad():
        for _ in range(6):
            _, s = core.step(torch.randn(1, 8), s)
    with pytest.raises(ValueError, match="items since the previous sequence start"):
        comp.compact(s)


def test_replayed_hcam_sequence_reproduces_the_actors_logits():
    """End to end: an env actor with an HCAM agent (compacted memory) -> shard -> sample -> the learner's unroll
    from the rebuilt state gives the logits the actor acted with (memory read across sequences included)."""
    cfg = ExperimentConfig(
        model=ModelConfig(encoder="mlp", core="hcam", hidden_size=16, num_core_layers=2, hcam_chunk=4,
                          hcam_chunks=4, hcam_topk=2, hcam_heads=2),
    )
    import dataclasses

    cfg = dataclasses.replace(
        cfg,
        env=dataclasses.replace(cfg.env, name="Recall-3-30", num_envs=3),
        sequence=dataclasses.replace(cfg.sequence, length=6, period=6),
        actor=dataclasses.replace(cfg.actor, inference="torch"),
    ).validate()
    actor = EnvActor(cfg, 0)
    shard = ReplayShard(ReplayConfig(capacity=64, min_size=1, samples_per_insert=0), 0)
    n = 0
    for traj in actor.run(12):
        assert "mem0.new" in traj.core_state
        shard.insert(traj)
        n += 1
    assert n == 12
    keys = shard.keys()
    rows, _ = shard.read(keys)
    traj = Trajectory.from_batch_major({k: torch.from_numpy(v) for k, v in rows.items()})
    agent = actor.policy
    T = traj.behaviour_logits.shape[0]
    with torch.no_grad():  # obs has T + 1 steps (the last one bootstraps)
        out = agent.unroll({k: v[:T] for k, v in traj.obs.items()}, traj.reset_mask()[:T], traj.core_state)
    # float rounding differs between the batched unroll and the per-step act (through LayerNorms): ~1e-4
    torch.testing.assert_close(out.logits, traj.behaviour_logits, atol=1e-3, rtol=0)
    wiped = {k: (torch.zeros_like(v) if k.startswith(("mem", "key")) else v) for k, v in traj.core_state.items()}
    with torch.no_grad():  # control: without the replayed memory the logits do differ
        off = agent.unroll({k: v[:T] for k, v in traj.obs.items()}, traj.reset_mask()[:T], wiped)
    assert (off.logits - traj.behaviour_logits).abs().max() > 1e-2
    assert int(traj.core_state["count"].max()) > 4  # the memory had wrapped: rows reached the FIFO
    actor.close()
