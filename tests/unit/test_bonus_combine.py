"""Combining episodic and global bonuses, the running-std normaliser, and the ``bonus`` learner extra."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from distrl.bonuses.combine import RunningMoments, combine_bonus, merge_moments
from distrl.bonuses.counts import CountTable, count_bonus
from distrl.bonuses.keys import state_keys
from distrl.config import ConfigError, load_config
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.learners.bonus import BonusExtra, attach_counts
from distrl.learners.extras import LearnerBatch, enabled_extras
from distrl.learners.learner import Learner
from distrl.replay.testing import random_trajectory
from distrl.types import ReplaySample, Trajectory

SPEC = EnvSpec(name="fake:test", obs={"x": ArraySpec((3,), np.dtype(np.float32))}, num_actions=4, family="fake")
T, B = 6, 5


def _cfg(*over: str):
    return load_config(None, ["model.encoder=mlp", "model.hidden_size=16", "sequence.length=6",
                              "sequence.burn_in=0", "sequence.period=6", "learner.batch_size=5",
                              "replay.min_size=5", "bonus.count_key=obs", *over])


def _traj(seed: int, episodic: torch.Tensor | None = None, core_state=None) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    ep = torch.rand(T, B, generator=g) if episodic is None else episodic
    return random_trajectory(T, B, num_actions=4, obs={"x": ((3,), np.float32)}, seed=seed,
                             core_state=core_state, episodic_bonus=ep)


def _batch(traj: Trajectory, valid: torch.Tensor | None = None) -> LearnerBatch:
    v = torch.ones(T, B, dtype=torch.bool) if valid is None else valid
    traj = dataclasses.replace(traj, valid=v)
    return LearnerBatch(traj=traj, out=None, valid=v, is_weights=torch.ones(B),  # type: ignore[arg-type]
                        fresh=torch.zeros(B, dtype=torch.bool), version=0)


# ---- pure pieces ----------------------------------------------------------------------------------------------

def test_combine_modes_against_numpy():
    rng = np.random.default_rng(0)
    ep, gl = rng.random((4, 3)).astype(np.float32), rng.random((4, 3)).astype(np.float32)
    e, g = torch.from_numpy(ep), torch.from_numpy(gl)
    np.testing.assert_allclose(combine_bonus(e, g, "mult").numpy(), ep * gl, rtol=1e-6)
    np.testing.assert_allclose(combine_bonus(e, g, "add", 0.3).numpy(), ep + 0.3 * gl, rtol=1e-6)
    np.testing.assert_allclose(combine_bonus(e, None, "mult").numpy(), ep)
    np.testing.assert_allclose(combine_bonus(None, g, "mult").numpy(), gl)
    np.testing.assert_allclose(combine_bonus(None, g, "add", 0.3).numpy(), 0.3 * gl, rtol=1e-6)
    with pytest.raises(ValueError, match="neither"):
        combine_bonus(None, None)
    with pytest.raises(ValueError, match="differ"):
        combine_bonus(e, g[:2])


def test_running_std_equals_numpy_std_of_the_concatenated_stream():
    rng = np.random.default_rng(1)
    m = RunningMoments()
    stream: list[np.ndarray] = []
    for n in (1, 7, 0, 33, 2, 100, 5):
        x = (rng.standard_normal(n) * 3 + 2).astype(np.float32)
        stream.append(x)
        m.update(torch.from_numpy(x))
        cat = np.concatenate(stream)
        if cat.size:
            assert float(m.std()) == pytest.approx(float(np.std(cat.astype(np.float64))), rel=1e-9)
            assert float(m.mean) == pytest.approx(float(cat.astype(np.float64).mean()), rel=1e-9)
    assert int(m.count) == sum(s.size for s in stream)
    # Chan's merge of two halves equals the moments of the whole
    a, b = rng.random(10), rng.random(17)
    parts = (10, a.mean(), ((a - a.mean()) ** 2).sum(), 17, b.mean(), ((b - b.mean()) ** 2).sum())
    n, mu, m2 = merge_moments(*(torch.tensor(v, dtype=torch.float64) for v in parts))
    whole = np.concatenate([a, b])
    assert float(m2 / n) == pytest.approx(float(whole.var()), rel=1e-12)
    assert float(mu) == pytest.approx(float(whole.mean()), rel=1e-12)


# ---- the learner extra ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("combine,glob,episodic,normalize", [
    ("mult", "rnd", "count", "int"), ("add", "rnd", "count", "int"), ("mult", "noveld", "count", "int"),
    ("mult", "none", "count", "int"), ("mult", "rnd", "none", "int"), ("mult", "rnd", "count", "none"),
])
def test_intrinsic_reward_is_combined_normalised_and_scaled(combine, glob, episodic, normalize):
    torch.manual_seed(0)
    cfg = _cfg(f"bonus.combine={combine}", f"bonus.glob={glob}", f"bonus.episodic={episodic}",
               f"bonus.normalize={normalize}", "bonus.coef=0.7", "bonus.global_coef=0.25")
    extra = BonusExtra(cfg, SPEC)
    stream: list[np.ndarray] = []
    for seed in range(3):
        traj = _traj(seed)
        valid = torch.ones(T, B, dtype=torch.bool)
        valid[4:, seed % B] = False
        r = extra.intrinsic_reward(_batch(traj, valid)).numpy()
        ep = traj.episodic_bonus.numpy() if episodic != "none" else None
        gl = None
        if glob != "none":
            full = extra.rnd.novelty(traj.obs).numpy()  # [T + 1, B]  (RND untrained between calls)
            gl = full[1:] if glob == "rnd" else np.maximum(full[1:] - 0.1 * full[:-1], 0.0)
        if ep is None:
            raw = gl
        elif gl is None:
            raw = ep
        else:
            raw = ep * gl if combine == "mult" else ep + 0.25 * gl
        raw = np.where(valid.numpy(), raw, 0.0)
        stream.append(raw[valid.numpy()])
        std = np.std(np.concatenate(stream).astype(np.float64)) if normalize == "int" else 1.0
        np.testing.assert_allclose(r, 0.7 * raw / std, rtol=2e-5, atol=1e-7)
        assert np.all(r[~valid.numpy()] == 0)
    _, metrics = extra.loss(_batch(traj, valid))
    assert metrics["combined_mean"] > 0 and 0 < metrics["intrinsic_share"] < 1
    if glob != "none":
        assert metrics["rnd_loss"] > 0 and metrics["global_p50"] <= metrics["global_p99"]
    if normalize == "int":
        assert metrics["running_std"] == pytest.approx(float(np.std(np.concatenate(stream))), rel=1e-5)


def test_global_counts_read_the_attached_table_on_next_states():
    cfg = _cfg("bonus.glob=count", "bonus.episodic=none")
    extra = BonusExtra(cfg, SPEC)
    traj = _traj(0)
    with pytest.raises(RuntimeError, match="no count table"):
        extra.intrinsic_reward(_batch(traj))
    table = CountTable()
    keys = state_keys({"x": traj.obs["x"].numpy()}, "obs", lead_ndim=2)  # [T + 1, B]
    for _ in range(3):
        table.increment(keys[::2].reshape(-1))  # even times seen 3 times, odd ones never (a first visit)
    attach_counts({"bonus": extra}, table)
    cfg_none = _cfg("bonus.glob=count", "bonus.episodic=none", "bonus.normalize=none")
    extra2 = BonusExtra(cfg_none, SPEC)
    extra2.attach_counts(table)
    r = extra2.intrinsic_reward(_batch(traj)).numpy()
    expect = count_bonus(table.lookup(keys[1:])).numpy()
    np.testing.assert_allclose(r, expect, rtol=1e-6)
    np.testing.assert_allclose(np.unique(r), [1 / np.sqrt(3), 1.0], rtol=1e-6)


def test_enabled_extras_follow_the_bonus_section():
    assert "bonus" not in enabled_extras(_cfg())
    assert "bonus" in enabled_extras(_cfg("bonus.glob=rnd"))
    assert enabled_extras(_cfg("bonus.episodic=count", "learner.extras=[bonus]")).count("bonus") == 1
    names = enabled_extras(_cfg("bonus.episodic=e3b", "bonus.glob=rnd"))
    assert names.index("e3b") < names.index("bonus")


def test_bonus_config_errors_are_named():
    with pytest.raises(ConfigError, match="needs observation key 'blstats'"):
        load_config(None, ["bonus.glob=count", "bonus.count_key=position", "env.observation_keys=[glyphs_crop]"])
    with pytest.raises(ConfigError, match=r"bonus\.coef"):
        load_config(None, ["bonus.glob=rnd", "bonus.coef=0"])
    with pytest.raises(ConfigError, match="noveld_scale"):
        load_config(None, ["bonus.glob=noveld", "bonus.noveld_scale=-1"])
    with pytest.raises(ConfigError, match="needs observation key 'blstats'"):
        BonusExtra(_cfg("bonus.glob=count", "bonus.count_key=position"), SPEC)


def test_replay_keeps_raw_bonuses_and_a_replayed_sequence_gets_the_current_global_bonus():
    """The learner never writes the combined reward back: the same replayed sequence, trained on twice, keeps its
    raw episodic bonus, and its global bonus is recomputed with the predictor as it is now (lower after training
    on it)."""
    torch.manual_seed(0)
    cfg = _cfg("bonus.glob=rnd", "bonus.episodic=count", "bonus.rnd_lr=0.01")
    learner = Learner(cfg, SPEC, device="cpu")
    assert "bonus" in learner.extras
    traj = _traj(0, core_state=learner.agent.initial_state(B))
    stored = traj.episodic_bonus.clone()
    sample = ReplaySample(traj=traj, keys=torch.arange(B), shard_ids=torch.zeros(B, dtype=torch.int64),
                          weights=torch.ones(B), probs=torch.full((B,), 1.0 / B, dtype=torch.float64),
                          fresh=torch.zeros(B, dtype=torch.bool))
    first = learner.step(sample).metrics
    for _ in range(30):
        last = learner.step(sample).metrics
    assert torch.equal(traj.episodic_bonus, stored)
    assert last["extras/bonus/episodic_mean"] == pytest.approx(first["extras/bonus/episodic_mean"])
    assert last["extras/bonus/global_mean"] < 0.5 * first["extras/bonus/global_mean"]
    assert last["extras/bonus/rnd_loss"] < first["extras/bonus/rnd_loss"]
    # the predictor has its own optimizer group at bonus.rnd_lr
    lrs = [g["lr"] for g in learner.optimizer.param_groups]
    assert 0.01 in lrs and cfg.learner.lr in lrs
