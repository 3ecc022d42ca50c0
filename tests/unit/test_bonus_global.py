"""Global bonuses: the count table (plain and sharded), the count bonus, RND and NovelD."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from distrl.bonuses.counts import (
    CountTable,
    ShardedCounts,
    count_bonus,
    load_count_state,
    make_counts,
    save_count_state,
    shard_of,
)
from distrl.bonuses.global_bonus import RND, noveld
from distrl.config import ConfigError, EnvConfig, ModelConfig, load_config
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.envs.registry import env_spec
from distrl.learners.bonus import BonusExtra, build_rnd, rnd_model_config
from distrl.models.encoders import NetHackSmallEncoder, build_encoder

# ---- counts ---------------------------------------------------------------------------------------------------


def test_count_table_matches_a_counter_over_batches_and_round_trips():
    rng = np.random.default_rng(0)
    table, ref = CountTable(), Counter()
    for _ in range(20):
        keys = rng.integers(-50, 50, size=rng.integers(0, 40)).astype(np.int64)
        table.increment(keys)
        ref.update(keys.tolist())
    probe = np.arange(-60, 60, dtype=np.int64)
    assert table.lookup(probe).tolist() == [ref[int(k)] for k in probe]
    assert table.total == sum(ref.values()) and len(table) == len(ref)
    # shape is kept; a fresh table loaded from the state answers the same
    other = CountTable()
    other.load_state_dict(table.state_dict())
    grid = probe.reshape(12, 10)
    np.testing.assert_array_equal(other.lookup(grid), table.lookup(grid))
    assert other.lookup(grid).shape == (12, 10)


def test_count_table_refuses_non_int64_keys_and_bad_state():
    table = CountTable()
    with pytest.raises(TypeError, match="int64"):
        table.increment(np.array([1.5, 2.0]))
    with pytest.raises(ValueError, match="sorted"):
        table.load_state_dict({"keys": torch.tensor([3, 1]), "counts": torch.tensor([1, 1])})


def test_sharded_counts_equal_one_table_and_shards_balance(tmp_path):
    rng = np.random.default_rng(1)
    keys = rng.integers(-(2**62), 2**62, size=5000, dtype=np.int64)
    keys = np.concatenate([keys, keys[:1000]])  # repeats
    one, four = CountTable(), make_counts(4)
    one.increment(keys)
    four.increment(keys)
    np.testing.assert_array_equal(four.lookup(keys), one.lookup(keys))
    sizes = np.bincount(shard_of(np.unique(keys), 4), minlength=4)
    assert sizes.min() > 0.2 * sizes.sum()  # no shard starves (each should get about a quarter)
    save_count_state(four.state_dict(), tmp_path / "counts.pt")
    back = make_counts(4)
    back.load_state_dict(load_count_state(tmp_path / "counts.pt"))
    np.testing.assert_array_equal(back.lookup(keys), one.lookup(keys))
    with pytest.raises(ValueError, match="count_shards"):
        make_counts(2).load_state_dict(load_count_state(tmp_path / "counts.pt"))
    assert isinstance(back, ShardedCounts)


def test_count_bonus_is_inverse_sqrt_and_unseen_counts_as_a_first_visit():
    b = count_bonus(np.array([0, 1, 4, 100]))
    np.testing.assert_allclose(b.numpy(), [1.0, 1.0, 0.5, 0.1], rtol=1e-6)
    np.testing.assert_allclose(count_bonus(np.array([8]), power=1.0).numpy(), [0.125])


# ---- RND / NovelD ---------------------------------------------------------------------------------------------

def _rnd(power: float = 1.0, on: str = "next") -> tuple[RND, dict]:
    spec = env_spec(EnvConfig(name="fake:counting"))
    enc = build_encoder(ModelConfig(encoder="mlp", hidden_size=32), spec)
    return RND(enc, hidden=64, power=power, on=on), spec.obs  # type: ignore[arg-type]


def _obs(T: int, B: int, offset: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(offset)
    return {k: torch.randint(offset, offset + 50, (T + 1, B, 1), generator=g) for k in ("count", "episode",
                                                                                       "last_action")}


def test_rnd_predictor_loss_falls_on_repeated_states_and_their_bonus_drops_below_new_ones():
    torch.manual_seed(0)
    rnd, _ = _rnd()
    seen = _obs(8, 4, offset=0)
    new = _obs(8, 4, offset=1000)
    valid = torch.ones(8, 4, dtype=torch.bool)
    opt = torch.optim.Adam(rnd.predictor.parameters(), lr=1e-3)
    frozen = {k: v.clone() for k, v in rnd.state_dict().items() if not k.startswith("predictor")}
    first = float(rnd.loss(seen, valid).detach())
    for _ in range(300):
        opt.zero_grad()
        rnd.loss(seen, valid).backward()
        opt.step()
    last = float(rnd.loss(seen, valid).detach())
    assert last < 0.2 * first
    assert float(rnd.bonus(seen).mean()) < 0.5 * float(rnd.bonus(new).mean())
    # the target and the random encoder never move
    for k, v in rnd.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k


def test_rnd_loss_ignores_invalid_steps():
    torch.manual_seed(0)
    rnd, _ = _rnd()
    obs = _obs(6, 3)
    valid = torch.ones(6, 3, dtype=torch.bool)
    valid[2:, 1] = False
    per_step = rnd.novelty({k: v[1:] for k, v in obs.items()})  # power 1 = the loss's un-squared error
    expect = float(per_step[valid].mean())
    assert float(rnd.loss(obs, valid).detach()) == pytest.approx(expect, rel=1e-5)


def test_rnd_power_and_evaluation_state():
    torch.manual_seed(0)
    r1, _ = _rnd(power=1.0)
    r2, _ = _rnd(power=2.0)
    r2.load_state_dict(r1.state_dict())
    rc, _ = _rnd(on="current")
    rc.load_state_dict(r1.state_dict())
    obs = _obs(5, 2)
    b1, b2, bc = r1.bonus(obs), r2.bonus(obs), rc.bonus(obs)
    assert b1.shape == (5, 2)
    torch.testing.assert_close(b2, b1**2)
    full = r1.novelty(obs)  # [T + 1, B]
    torch.testing.assert_close(b1, full[1:])  # s_{t+1} (the E3B code)
    torch.testing.assert_close(bc, full[:-1])  # s_t (the paper's equation)


def test_noveld_math_against_numpy():
    rng = np.random.default_rng(0)
    b = rng.random((7, 3)).astype(np.float32)
    for c in (0.0, 0.1, 0.5, 1.0):
        expect = np.maximum(b[1:] - c * b[:-1], 0.0)
        np.testing.assert_allclose(noveld(torch.from_numpy(b), c).numpy(), expect, rtol=1e-6)
    torch.manual_seed(0)
    rnd, _ = _rnd()
    obs = _obs(5, 2)
    full = rnd.novelty(obs).numpy()
    np.testing.assert_allclose(rnd.bonus(obs, noveld_scale=0.1).numpy(),
                               np.maximum(full[1:] - 0.1 * full[:-1], 0.0), rtol=1e-5, atol=1e-7)
    # NovelD with c = 0 is RND on s_{t+1}
    torch.testing.assert_close(rnd.bonus(obs, noveld_scale=0.0), rnd.bonus(obs))


def test_rnd_refuses_bad_options():
    spec = env_spec(EnvConfig(name="fake:counting"))
    enc = build_encoder(ModelConfig(encoder="mlp", hidden_size=8), spec)
    with pytest.raises(ValueError, match="power"):
        RND(enc, power=0.0)
    with pytest.raises(ValueError, match="on must be"):
        RND(enc, on="later")  # type: ignore[arg-type]


# ---- RND networks: bonus.rnd_net -------------------------------------------------------------------------------

MINIHACK = EnvSpec(
    name="MiniHack-MultiRoom-N4-v0",
    obs={"glyphs_crop": ArraySpec((9, 9), np.dtype(np.int16)), "blstats": ArraySpec((27,), np.dtype(np.int64))},
    num_actions=8,
    family="minihack",
)
# the 2-core explore preset's model (tools/bench/explore.py CPU_OVERRIDES)
SMALL_MODEL = ("model.encoder=nethack_small", "model.hidden_size=128", "model.glyph_embedding_dim=16")


def _rnd_cfg(*over: str):
    return load_config(None, [*SMALL_MODEL, "bonus.glob=rnd", *over])


def _minihack_obs(T: int, B: int, seed: int, glyphs: tuple[int, int] = (2300, 2400)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    crop = torch.randint(*glyphs, (T + 1, B, 9, 9), generator=g).to(torch.int16)
    return {"glyphs_crop": crop, "blstats": torch.randint(0, 80, (T + 1, B, 27), generator=g)}


def _widths(net: torch.nn.Sequential) -> list[int]:
    return [m.out_features for m in net if isinstance(m, torch.nn.Linear)]


def test_rnd_net_e3b_is_the_previous_construction():
    """The default networks are exactly what RND(build_encoder(model, spec), hidden=256) built before the option
    existed: same shapes, and the same random values from the same seed."""
    cfg = _rnd_cfg()
    assert cfg.bonus.rnd_net == "e3b" and rnd_model_config(cfg, MINIHACK) == cfg.model
    torch.manual_seed(3)
    new = build_rnd(cfg, MINIHACK)
    torch.manual_seed(3)
    old = RND(build_encoder(cfg.model, MINIHACK), hidden=256)
    assert new.state_dict().keys() == old.state_dict().keys()
    for k, v in old.state_dict().items():
        assert torch.equal(new.state_dict()[k], v), k
    assert _widths(new.target) == [128] * 4 and _widths(new.predictor) == [256, 256, 128, 128, 128]


def test_rnd_net_small_shapes_and_size():
    torch.manual_seed(0)
    big = build_rnd(_rnd_cfg(), MINIHACK)
    small = build_rnd(_rnd_cfg("bonus.rnd_net=small"), MINIHACK)
    assert isinstance(small.encoder, NetHackSmallEncoder)
    assert small.encoder.glyph_embed.embedding_dim == 8 and small.encoder.out_dim == 128
    assert _widths(small.target) == [128, 128] and _widths(small.predictor) == [128, 128, 128]
    n_big, n_small = (sum(p.numel() for p in r.parameters()) for r in (big, small))
    assert n_small < 0.5 * n_big
    obs = _minihack_obs(6, 3, seed=0)
    err = small.errors(obs)
    assert err.shape == (7, 3) and err.requires_grad
    assert small.bonus_from(err).shape == (6, 3) and small.bonus(obs, noveld_scale=0.1).shape == (6, 3)
    assert small.loss_from(err, torch.ones(6, 3, dtype=torch.bool)).shape == ()
    # bonus.rnd_hidden still sets the predictor's width; the learner extra builds the same networks
    assert _widths(build_rnd(_rnd_cfg("bonus.rnd_net=small", "bonus.rnd_hidden=64"), MINIHACK).predictor) == [
        64,
        64,
        128,
    ]
    extra = BonusExtra(_rnd_cfg("bonus.rnd_net=small"), MINIHACK)
    assert extra.rnd is not None and isinstance(extra.rnd.encoder, NetHackSmallEncoder)
    assert extra.rnd.state_dict().keys() == small.state_dict().keys()


def test_rnd_net_small_frozen_parts_stay_put_and_the_predictor_learns_repeated_states():
    torch.manual_seed(0)
    rnd = build_rnd(_rnd_cfg("bonus.rnd_net=small"), MINIHACK)
    seen = _minihack_obs(8, 4, seed=1)
    new = _minihack_obs(8, 4, seed=2, glyphs=(1000, 1100))
    valid = torch.ones(8, 4, dtype=torch.bool)
    frozen = {k: v.clone() for k, v in rnd.state_dict().items() if not k.startswith("predictor")}
    assert frozen and all(not p.requires_grad for n, p in rnd.named_parameters() if not n.startswith("predictor"))
    opt = torch.optim.Adam(rnd.parameters(), lr=1e-3)  # every parameter: only the predictor may move
    first = float(rnd.loss(seen, valid).detach())
    for _ in range(300):
        opt.zero_grad()
        rnd.loss(seen, valid).backward()
        for name, p in rnd.named_parameters():
            assert (p.grad is not None) == name.startswith("predictor"), name
        opt.step()
    assert float(rnd.loss(seen, valid).detach()) < 0.2 * first
    assert float(rnd.bonus(seen).mean()) < 0.5 * float(rnd.bonus(new).mean())
    for k, v in rnd.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k


def test_rnd_net_small_encoder_per_policy_encoder():
    atari = EnvSpec(
        name="ALE/Pong-v5", obs={"frames": ArraySpec((4, 84, 84), np.dtype(np.uint8))}, num_actions=6, family="atari"
    )
    for spec, model, expect in (
        (atari, (), "small_cnn"),  # auto -> nature_cnn -> small_cnn
        (atari, ("model.encoder=impala_cnn",), "small_cnn"),
        (MINIHACK, ("model.encoder=nethack",), "nethack_small"),
        (EnvSpec(name="MiniHack-Room-5x5-v0", obs={"glyphs": ArraySpec((21, 79), np.dtype(np.int16))},
                 num_actions=8, family="minihack"), (), "nethack"),  # no glyphs_crop: a narrow nethack
    ):
        cfg = load_config(None, [*model, "model.glyph_embedding_dim=32", "bonus.glob=rnd", "bonus.rnd_net=small"])
        m = rnd_model_config(cfg, spec)
        assert (m.encoder, m.hidden_size, m.glyph_embedding_dim) == (expect, 128, 8), spec.name
    narrow = load_config(None, ["model.glyph_embedding_dim=4", "bonus.rnd_net=small"])
    assert rnd_model_config(narrow, MINIHACK).glyph_embedding_dim == 4  # never wider than the policy's


def test_rnd_net_config_validation_names_the_key():
    with pytest.raises(ConfigError, match=r"bonus\.rnd_net"):
        load_config(None, ["bonus.rnd_net=tiny"])
    with pytest.raises(ConfigError, match=r"bonus\.rnd_hidden"):
        load_config(None, ["bonus.rnd_hidden=-1"])
    assert load_config(None, ["bonus.rnd_hidden=0"]).bonus.rnd_hidden == 0  # 0 = by bonus.rnd_net
    spec = env_spec(EnvConfig(name="fake:counting"))
    enc = build_encoder(ModelConfig(encoder="mlp", hidden_size=8), spec)
    with pytest.raises(ValueError, match="net must be"):
        RND(enc, net="tiny")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hidden"):
        RND(enc, hidden=0)
