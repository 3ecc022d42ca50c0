"""Agent model tests: encoder shapes per env family, act == unroll, core reset semantics, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distrl.config import ModelConfig
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.models import (
    Agent,
    AgentOut,
    IdentityCore,
    ImpalaCNN,
    LSTMCore,
    MLPEncoder,
    NatureCNN,
    NetHackEncoder,
    NetHackSmallEncoder,
    RGBDEncoder,
    SmallCNN,
    build_agent,
    build_encoder,
    sample_categorical,
)
from distrl.models.encoders import embedding_lookup, num_glyphs
from distrl.types import ActOut


def _a(shape: tuple[int, ...], dtype) -> ArraySpec:
    return ArraySpec(shape, np.dtype(dtype))


MINIHACK_OBS = {
    "glyphs": _a((21, 79), np.int16),
    "glyphs_crop": _a((9, 9), np.int16),
    "blstats": _a((27,), np.int64),
    "message": _a((256,), np.uint8),
}
SPECS = {
    "minihack": EnvSpec("MiniHack-Room-5x5-v0", MINIHACK_OBS, 8, "minihack"),
    "minihack_crop_only": EnvSpec(
        "MiniHack-Room-5x5-v0", {"glyphs_crop": _a((9, 9), np.int16), "blstats": _a((27,), np.int64)}, 8,
        "minihack",
    ),
    "atari": EnvSpec("ALE/Pong-v5", {"frames": _a((4, 84, 84), np.uint8)}, 6, "atari"),
    # distrl's Habitat / MiniWorld adapters are channel-first; channels-last is detected too.
    "habitat": EnvSpec(
        "habitat:pointnav",
        {"rgb": _a((3, 64, 64), np.uint8), "depth": _a((1, 64, 64), np.float32),
         "pointgoal": _a((2,), np.float32)},
        4, "habitat",
    ),
    "habitat_hwc": EnvSpec(
        "habitat:pointnav",
        {"rgb": _a((64, 64, 3), np.uint8), "depth": _a((64, 64, 1), np.float32),
         "pointgoal": _a((2,), np.float32)},
        4, "habitat",
    ),
    "miniworld": EnvSpec("MiniWorld-OneRoom-v0", {"rgb": _a((3, 60, 80), np.uint8)}, 3, "miniworld"),
    "fake": EnvSpec("fake:counting", {"obs": _a((3,), np.float32), "count": _a((), np.int64)}, 2, "fake"),
}
SMALL = ModelConfig(hidden_size=32, glyph_embedding_dim=8)


def random_obs(
    spec: EnvSpec, lead: tuple[int, ...], gen: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Observations with the spec's dtypes and plausible value ranges."""
    out = {}
    for k, s in spec.obs.items():
        shape = (*lead, *s.shape)
        dt = torch.from_numpy(np.zeros((), s.dtype)).dtype
        if k.startswith("glyphs"):
            out[k] = torch.randint(0, num_glyphs(), shape, generator=gen).to(dt)
        elif s.dtype == np.uint8:
            out[k] = torch.randint(0, 256, shape, generator=gen).to(dt)
        elif s.dtype.kind in "iu":
            out[k] = torch.randint(0, 50, shape, generator=gen).to(dt)
        else:
            out[k] = torch.rand(shape, generator=gen).to(dt)
    return out


# ----------------------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,encoder,cls",
    [
        ("minihack", "auto", NetHackEncoder),
        ("minihack_crop_only", "auto", NetHackEncoder),
        ("atari", "auto", NatureCNN),
        ("atari", "impala_cnn", ImpalaCNN),
        ("habitat", "auto", RGBDEncoder),
        ("habitat_hwc", "auto", RGBDEncoder),
        ("miniworld", "auto", RGBDEncoder),
        ("fake", "auto", MLPEncoder),
        ("minihack", "mlp", MLPEncoder),
        ("minihack", "nethack_small", NetHackSmallEncoder),
        ("minihack_crop_only", "nethack_small", NetHackSmallEncoder),
        ("atari", "small_cnn", SmallCNN),
    ],
)
def test_encoder_shapes_and_leading_dims(name, encoder, cls):
    spec = SPECS[name]
    cfg = ModelConfig(hidden_size=32, glyph_embedding_dim=8, encoder=encoder)
    enc = build_encoder(cfg, spec)
    assert isinstance(enc, cls)
    assert enc.out_dim == 32
    obs = random_obs(spec, (3, 2))
    feat = enc(obs)
    assert feat.shape == (3, 2, 32) and feat.dtype == torch.float32
    assert torch.isfinite(feat).all()
    # [T, B, ...] gives the same numbers as the flattened [T * B, ...] batch and as one [B, ...] step.
    # (rtol 1e-4: the MLP on raw glyph ids sees inputs in the thousands, and matmul blocking depends on N.)
    flat = enc({k: v.reshape(6, *v.shape[2:]) for k, v in obs.items()})
    torch.testing.assert_close(flat.reshape(3, 2, 32), feat, rtol=1e-4, atol=1e-5)
    step = enc({k: v[1] for k, v in obs.items()})
    torch.testing.assert_close(step, feat[1], rtol=1e-4, atol=1e-5)


def test_nethack_encoder_uses_every_present_key():
    enc = NetHackEncoder(SMALL, SPECS["minihack"])
    obs = random_obs(SPECS["minihack"], (4,))
    base = enc(obs)
    for key in MINIHACK_OBS:
        changed = dict(obs)
        changed[key] = random_obs(SPECS["minihack"], (4,), torch.Generator().manual_seed(7))[key]
        assert not torch.allclose(enc(changed), base), f"{key} does not influence the encoding"
    assert enc.glyph_embed.num_embeddings == num_glyphs() == 5976


def test_nethack_encoder_handles_large_blstats_and_images_are_scaled():
    enc = NetHackEncoder(SMALL, SPECS["minihack_crop_only"])
    obs = random_obs(SPECS["minihack_crop_only"], (2,))
    obs["blstats"][:] = 2**40  # e.g. a huge score/turn counter: symlog keeps activations finite
    assert torch.isfinite(enc(obs)).all()
    # uint8 frames are scaled to [0, 1]: equal to the same image given as float already divided by 255.
    frames = random_obs(SPECS["atari"], (2,))["frames"]
    nat = NatureCNN(SMALL, SPECS["atari"])
    float_spec = EnvSpec("x", {"frames": _a((4, 84, 84), np.float32)}, 6, "atari")
    nat_f = NatureCNN(SMALL, float_spec)
    nat_f.load_state_dict(nat.state_dict())
    torch.testing.assert_close(nat({"frames": frames}), nat_f({"frames": frames.float() / 255.0}))


def test_channels_last_images_equal_channels_first():
    chw = RGBDEncoder(SMALL, SPECS["habitat"])
    hwc = RGBDEncoder(SMALL, SPECS["habitat_hwc"])
    hwc.load_state_dict(chw.state_dict())
    obs = random_obs(SPECS["habitat"], (2, 3))
    obs_hwc = {k: (v.movedim(2, -1) if v.dim() == 5 else v) for k, v in obs.items()}
    torch.testing.assert_close(hwc(obs_hwc), chw(obs), rtol=1e-5, atol=1e-5)


def test_mlp_encoder_scales_uint8_like_pixels():
    spec_u8 = EnvSpec("fake:img", {"image": _a((3, 4, 4), np.uint8)}, 2, "fake")
    spec_f = EnvSpec("fake:img", {"image": _a((3, 4, 4), np.float32)}, 2, "fake")
    enc_u8, enc_f = MLPEncoder(SMALL, spec_u8), MLPEncoder(SMALL, spec_f)
    enc_f.load_state_dict(enc_u8.state_dict())
    img = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    torch.testing.assert_close(enc_u8({"image": img}), enc_f({"image": img.float() / 255.0}))


def test_fast_embedding_lookup_matches_f_embedding_gradient():
    table = torch.randn(50, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 10, (6, 7, 3))  # many duplicates
    upstream = torch.randn(6, 7, 3, 4, dtype=torch.float64)
    (embedding_lookup(idx, table) * upstream).sum().backward()
    ours = table.grad.clone()
    table.grad = None
    (torch.nn.functional.embedding(idx, table) * upstream).sum().backward()
    torch.testing.assert_close(ours, table.grad)
    torch.testing.assert_close(embedding_lookup(idx, table), torch.nn.functional.embedding(idx, table))


def test_encoder_errors_name_the_problem():
    enc = build_encoder(SMALL, SPECS["minihack"])
    obs = random_obs(SPECS["minihack"], (2,))
    del obs["blstats"]
    with pytest.raises(KeyError, match="blstats"):
        enc(obs)
    obs = random_obs(SPECS["minihack"], (2,))
    obs["glyphs"] = obs["glyphs"][:, :20]
    with pytest.raises(ValueError, match="glyphs"):
        enc(obs)
    with pytest.raises(ValueError, match="family"):
        build_encoder(SMALL, EnvSpec("weird", {"x": _a((2,), np.float32)}, 2, "unknown"))
    with pytest.raises(ValueError, match="rgb"):
        build_encoder(ModelConfig(encoder="rgbd"), SPECS["fake"])


# ----------------------------------------------------------------------------------------------------------
# Cores
# ----------------------------------------------------------------------------------------------------------


def _lstm(layers: int = 1, hidden: int = 16, in_dim: int = 8) -> LSTMCore:
    return LSTMCore(ModelConfig(hidden_size=hidden, num_core_layers=layers), in_dim)


def test_lstm_state_is_batch_first_and_reset_is_pure():
    core = _lstm(layers=2)
    s0 = core.initial_state(5)
    assert set(s0) == {"h", "c"} and s0["h"].shape == (5, 2, 16) and s0["c"].shape == (5, 2, 16)
    x = torch.randn(3, 5, 8)
    _, s = core(x, torch.zeros(3, 5, dtype=torch.bool), s0)
    assert s["h"].shape == (5, 2, 16) and s["h"].abs().sum() > 0
    before = {k: v.clone() for k, v in s.items()}
    mask = torch.tensor([True, False, True, False, False])
    r = core.reset(s, mask)
    for k in s:
        torch.testing.assert_close(s[k], before[k])  # input untouched
        assert torch.all(r[k][mask] == 0)
        torch.testing.assert_close(r[k][~mask], s[k][~mask])
    with pytest.raises(ValueError, match="mask"):
        core.reset(s, torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_step_equals_one_step_unroll_and_rejects_bad_state(layers):
    core = _lstm(layers=layers)
    s0 = {k: torch.randn_like(v) for k, v in core.initial_state(4).items()}
    x = torch.randn(4, 8)
    y, s1 = core.step(x, s0)
    y_ref, s_ref = core(x[None], torch.zeros(1, 4, dtype=torch.bool), s0)
    torch.testing.assert_close(y, y_ref[0], rtol=1e-5, atol=1e-6)
    for k in s_ref:
        torch.testing.assert_close(s1[k], s_ref[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match="state keys"):
        core.step(x, {"h": s0["h"]})
    with pytest.raises(ValueError, match=r"state\['h'\] has shape"):
        core.step(x, {"h": s0["h"][:, :1, :3], "c": s0["c"]})
    with pytest.raises(ValueError, match="differ"):
        core.step(x, {"h": s0["h"], "c": s0["c"][:2]})


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_reset_inside_sequence_equals_separate_unrolls(layers):
    core = _lstm(layers=layers)
    b = 3
    x = torch.randn(7, b, 8)
    s0 = {k: torch.randn_like(v) for k, v in core.initial_state(b).items()}
    reset = torch.zeros(7, b, dtype=torch.bool)
    reset[4] = True  # all rows start a new episode at t = 4
    y, s_end = core(x, reset, s0)
    y1, _ = core(x[:4], torch.zeros(4, b, dtype=torch.bool), s0)
    y2, s2 = core(x[4:], torch.zeros(3, b, dtype=torch.bool), core.initial_state(b))
    torch.testing.assert_close(y, torch.cat([y1, y2]), rtol=1e-5, atol=1e-6)
    for k in s_end:
        torch.testing.assert_close(s_end[k], s2[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_paths_agree_with_per_step_reference(layers):
    """Fused, segmented and step-loop paths all equal stepping one time step at a time."""
    core = _lstm(layers=layers)
    t_len, b = 9, 4
    x = torch.randn(t_len, b, 8)
    s0 = {k: torch.randn_like(v) for k, v in core.initial_state(b).items()}
    patterns = {
        "none": torch.zeros(t_len, b, dtype=torch.bool),
        "few": torch.zeros(t_len, b, dtype=torch.bool),
        "many": torch.rand(t_len, b) < 0.4,
    }
    patterns["few"][0, 1] = patterns["few"][3, 2] = patterns["few"][6, 0] = True
    patterns["many"][1:, 0] = True  # a reset at every step: more segments than MAX_SEGMENTS
    for name, reset in patterns.items():
        s, ys = s0, []
        for t in range(t_len):
            s = core.reset(s, reset[t])
            y_t, s = core(x[t : t + 1], torch.zeros(1, b, dtype=torch.bool), s)
            ys.append(y_t)
        y, s_end = core(x, reset, s0)
        torch.testing.assert_close(y, torch.cat(ys), rtol=1e-5, atol=1e-6, msg=f"pattern {name}")
        torch.testing.assert_close(s_end["h"], s["h"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s_end["c"], s["c"], rtol=1e-5, atol=1e-6)
    # Force the step loop on a sequence without resets: same as the fused call.
    y_fused, _ = core(x, patterns["none"], s0)
    core.MAX_SEGMENTS = 0
    y_loop, _ = core(x, patterns["none"], s0)
    torch.testing.assert_close(y_loop, y_fused, rtol=1e-5, atol=1e-6)


def test_lstm_step_loop_gradients_equal_the_fused_call():
    """The step loop (taken when a batch resets at many times) back-propagates what the fused nn.LSTM call does."""
    core = _lstm(layers=2)
    t_len, b = 7, 3
    x = torch.randn(t_len, b, 8)
    s0 = {k: torch.randn_like(v) for k, v in core.initial_state(b).items()}
    reset = torch.zeros(t_len, b, dtype=torch.bool)
    grads = []
    for max_segments in (4, 0):
        core.MAX_SEGMENTS = max_segments
        core.zero_grad()
        xi = x.clone().requires_grad_(True)
        y, s = core(xi, reset, s0)
        (y.square().sum() + s["c"].sum()).backward()
        grads.append([xi.grad, *(p.grad.clone() for p in core.parameters())])
    for g_fused, g_loop in zip(*grads, strict=True):
        torch.testing.assert_close(g_loop, g_fused, rtol=1e-4, atol=1e-5)


def test_identity_core():
    core = IdentityCore(SMALL, 12)
    assert core.initial_state(3) == {} and core.reset({}, torch.ones(3, dtype=torch.bool)) == {}
    x = torch.randn(2, 3, 12)
    y, s = core(x, torch.zeros(2, 3, dtype=torch.bool), {})
    assert y is x and s == {} and core.out_dim == 12


# ----------------------------------------------------------------------------------------------------------
# Agent
# ----------------------------------------------------------------------------------------------------------


def _reset_pattern(t_len: int, b: int) -> torch.Tensor:
    """Resets at t = 0 and inside the sequence, on different rows (needs t_len >= 6, b >= 3)."""
    reset = torch.zeros(t_len, b, dtype=torch.bool)
    reset[0, 0] = True  # an episode starting at the very first step
    reset[2, 1] = True
    reset[4, 0] = reset[4, 2] = True
    reset[5, 1] = True
    return reset


@pytest.mark.parametrize(
    "name,core,layers", [("minihack", "lstm", 1), ("fake", "lstm", 2), ("atari", "identity", 1),
                         ("habitat", "lstm", 1)]
)
def test_act_equals_unroll_with_resets(name, core, layers):
    spec = SPECS[name]
    cfg = ModelConfig(hidden_size=32, glyph_embedding_dim=8, core=core, num_core_layers=layers)
    agent = build_agent(cfg, spec)
    t_len, b = 6, 3
    obs = random_obs(spec, (t_len, b))
    reset = _reset_pattern(t_len, b)
    s0 = {k: torch.randn_like(v) for k, v in agent.initial_state(b).items()}

    out = agent.unroll(obs, reset, s0)
    assert isinstance(out, AgentOut)
    assert out.logits.shape == (t_len, b, spec.num_actions) and out.value.shape == (t_len, b)
    assert out.value_int is None

    state = s0
    for t in range(t_len):
        state = agent.reset_state(state, reset[t])
        step = agent.act({k: v[t] for k, v in obs.items()}, state)
        assert isinstance(step, ActOut)
        torch.testing.assert_close(step.logits, out.logits[t], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(step.value, out.value[t], rtol=1e-5, atol=1e-5)
        assert step.action.shape == (b,) and step.action.dtype == torch.int64
        assert ((step.action >= 0) & (step.action < spec.num_actions)).all()
        assert not step.logits.requires_grad
        state = step.state
    for k in state:
        torch.testing.assert_close(state[k], out.state[k], rtol=1e-5, atol=1e-5)


def test_unroll_rows_are_independent_and_state_rows_index_by_batch():
    """Batch-first state: row b of a batched unroll equals unrolling row b alone with state[k][b]."""
    agent = build_agent(SMALL, SPECS["minihack"])
    obs = random_obs(SPECS["minihack"], (6, 3))
    reset = _reset_pattern(6, 3)
    s0 = {k: torch.randn_like(v) for k, v in agent.initial_state(3).items()}
    out = agent.unroll(obs, reset, s0)
    row = agent.unroll(
        {k: v[:, 1:2] for k, v in obs.items()}, reset[:, 1:2], {k: v[1:2] for k, v in s0.items()}
    )
    torch.testing.assert_close(row.logits, out.logits[:, 1:2], rtol=1e-5, atol=1e-5)
    for k in out.state:
        torch.testing.assert_close(row.state[k], out.state[k][1:2], rtol=1e-5, atol=1e-5)


def test_reset_state_semantics():
    agent = build_agent(SMALL, SPECS["fake"])
    init = agent.initial_state(4)
    state = {k: torch.randn_like(v) for k, v in init.items()}
    before = {k: v.clone() for k, v in state.items()}
    mask = torch.tensor([False, True, True, False])
    new = agent.reset_state(state, mask)
    for k in state:
        torch.testing.assert_close(state[k], before[k])
        torch.testing.assert_close(new[k][mask], init[k][mask])
        torch.testing.assert_close(new[k][~mask], state[k][~mask])
    # A numpy mask works too (actors hold numpy `done` arrays).
    new_np = agent.reset_state(state, np.array([False, True, True, False]))
    torch.testing.assert_close(new_np["h"], new["h"])


def test_act_greedy_numpy_input_and_intrinsic_head():
    cfg = ModelConfig(hidden_size=32, glyph_embedding_dim=8, separate_intrinsic_value=True)
    agent = build_agent(cfg, SPECS["minihack"])
    obs = random_obs(SPECS["minihack"], (4,))
    state = agent.initial_state(4)
    out = agent.act(obs, state, greedy=True)
    torch.testing.assert_close(out.action, out.logits.argmax(-1))
    out_np = agent.act({k: v.numpy() for k, v in obs.items()}, state, greedy=True)
    torch.testing.assert_close(out_np.logits, out.logits)
    seq = agent.unroll({k: v[None] for k, v in obs.items()}, torch.zeros(1, 4, dtype=torch.bool), state)
    assert seq.value_int is not None and seq.value_int.shape == (1, 4)
    assert not torch.allclose(seq.value_int, seq.value)


def test_sampling_follows_the_policy():
    agent = build_agent(SMALL, SPECS["fake"])
    with torch.no_grad():
        agent.heads.policy.fc.weight.zero_()
        agent.heads.policy.fc.bias.copy_(torch.tensor([0.0, np.log(3.0)]))  # p = [0.25, 0.75]
    obs = random_obs(SPECS["fake"], (4000,))
    a = agent.act(obs, agent.initial_state(4000)).action
    assert abs(a.float().mean().item() - 0.75) < 0.03


def test_sample_categorical_matches_softmax_chi_square():
    """Gumbel-max sampling: the empirical action frequencies per row fit softmax(logits) (chi-square), and a
    wrong distribution (uniform) is rejected by the same test, so it can fail."""
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0, 0.5], [3.0, -2.0, 0.0, 0.0, 1.0]])
    n = 20_000
    samples = sample_categorical(logits.repeat(n, 1)).view(n, 2)
    p = torch.softmax(logits, dim=-1).numpy()
    for row in range(2):
        counts = np.bincount(samples[:, row].numpy(), minlength=5)
        chi2 = float((((counts - n * p[row]) ** 2) / (n * p[row])).sum())
        assert chi2 < 18.5, f"row {row}: chi2 {chi2:.1f} (4 dof, p=0.001 bound 18.5)"  # fits softmax
        uni = np.full(5, 0.2)
        chi2_uniform = float((((counts - n * uni) ** 2) / (n * uni)).sum())
        assert chi2_uniform > 100.0
    # -inf logits (masked actions) are never drawn; dtype and shape.
    masked = torch.tensor([[0.0, float("-inf"), 0.0]]).repeat(5000, 1)
    a = sample_categorical(masked)
    assert a.dtype == torch.int64 and a.shape == (5000,) and not (a == 1).any()


def test_nethack_map_table_cache_follows_weight_updates():
    """Acting caches the projected glyph table; loading new weights or an optimizer step must invalidate it."""
    spec = SPECS["minihack"]
    agent = build_agent(SMALL, spec)
    obs = random_obs(spec, (4,), torch.Generator().manual_seed(1))
    state = agent.initial_state(4)
    with torch.no_grad():
        before = agent.unroll({k: v[None] for k, v in obs.items()}, torch.zeros(1, 4, dtype=torch.bool), state)
        again = agent.unroll({k: v[None] for k, v in obs.items()}, torch.zeros(1, 4, dtype=torch.bool), state)
    torch.testing.assert_close(before.logits, again.logits)
    # In-place updates of both tables (as optimizer steps do), with no forward in between that has grad on.
    with torch.no_grad():
        agent.encoder.glyph_embed.weight.mul_(-2.0)
        agent.encoder.map_proj.weight.add_(0.5)
        stepped = agent.unroll({k: v[None] for k, v in obs.items()}, torch.zeros(1, 4, dtype=torch.bool), state)
    fresh = build_agent(SMALL, spec)
    fresh.load_state_dict(agent.state_dict())
    with torch.no_grad():
        reference = fresh.unroll({k: v[None] for k, v in obs.items()}, torch.zeros(1, 4, dtype=torch.bool), state)
    torch.testing.assert_close(stepped.logits, reference.logits)
    assert not torch.allclose(stepped.logits, before.logits)
    # load_state_dict into the acting copy (what an env actor does with new weights).
    agent.load_state_dict(build_agent(SMALL, spec).state_dict())
    with torch.no_grad():
        loaded = agent.unroll({k: v[None] for k, v in obs.items()}, torch.zeros(1, 4, dtype=torch.bool), state)
    assert not torch.allclose(loaded.logits, stepped.logits)


def test_small_encoders_scale_pixels_and_ignore_unused_keys():
    atari = SPECS["atari"]
    enc = SmallCNN(ModelConfig(hidden_size=16, encoder="small_cnn"), atari)
    frames = random_obs(atari, (2,))["frames"]
    ref = F.relu(enc.fc(enc.cnn(frames.float() / 255.0)))
    torch.testing.assert_close(enc({"frames": frames}), ref)
    mh = SPECS["minihack"]
    small = NetHackSmallEncoder(ModelConfig(hidden_size=16, glyph_embedding_dim=4), mh)
    assert small.keys == ("glyphs_crop", "blstats")
    obs = random_obs(mh, (3,))
    y0 = small(obs)
    obs2 = dict(obs, glyphs=torch.zeros_like(obs["glyphs"]), message=torch.zeros_like(obs["message"]))
    torch.testing.assert_close(small(obs2), y0)
    crop = dict(obs2, glyphs_crop=torch.flip(obs["glyphs_crop"], dims=[-1]))
    assert not torch.allclose(small(crop), y0)
    no_crop = EnvSpec("MiniHack-x", {"blstats": mh.obs["blstats"]}, 8, "minihack")
    with pytest.raises(ValueError, match="glyphs_crop"):
        NetHackSmallEncoder(ModelConfig(), no_crop)


@pytest.mark.parametrize("name", ["minihack", "atari", "habitat", "fake"])
def test_unroll_gradients_reach_every_parameter(name):
    cfg = ModelConfig(hidden_size=32, glyph_embedding_dim=8, separate_intrinsic_value=True)
    if name == "atari":
        cfg = ModelConfig(hidden_size=32, encoder="impala_cnn", separate_intrinsic_value=True)
    agent = build_agent(cfg, SPECS[name])
    obs = random_obs(SPECS[name], (6, 3))
    out = agent.unroll(obs, _reset_pattern(6, 3), agent.initial_state(3))
    assert out.value_int is not None
    loss = out.logits.pow(2).sum() + out.value.pow(2).sum() + out.value_int.pow(2).sum()
    loss.backward()
    for pname, p in agent.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


def test_default_config_minihack_agent_is_small():
    agent = build_agent(ModelConfig(), SPECS["minihack"])
    n = sum(p.numel() for p in agent.parameters())
    assert n < 3_000_000, f"default MiniHack agent has {n} parameters"
    out = agent.act(random_obs(SPECS["minihack"], (2,)), agent.initial_state(2))
    assert out.logits.shape == (2, 8) and out.state["h"].shape == (2, 1, 256)


def test_agent_is_an_agent_and_reports_num_actions():
    agent = build_agent(SMALL, SPECS["atari"])
    assert isinstance(agent, Agent) and agent.num_actions == 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_agent_on_cuda_matches_cpu():
    cpu = build_agent(SMALL, SPECS["minihack"])
    gpu = build_agent(SMALL, SPECS["minihack"]).cuda()
    gpu.load_state_dict(cpu.state_dict())
    obs = random_obs(SPECS["minihack"], (6, 3))
    reset = _reset_pattern(6, 3)
    s0 = cpu.initial_state(3)  # CPU state and obs: the agent moves them
    a, b = cpu.unroll(obs, reset, s0), gpu.unroll(obs, reset, s0)
    assert b.logits.is_cuda
    torch.testing.assert_close(b.logits.cpu(), a.logits, rtol=1e-3, atol=1e-3)
    step = gpu.act({k: v[0] for k, v in obs.items()}, s0)
    assert step.action.is_cuda and step.state["h"].is_cuda


@pytest.mark.parametrize(
    "name,encoder",
    [("minihack", "auto"), ("minihack", "nethack_small"), ("atari", "auto"), ("atari", "small_cnn"),
     ("atari", "impala_cnn"), ("habitat", "auto"), ("habitat_hwc", "auto"), ("miniworld", "auto"),
     ("fake", "auto")],
)
def test_bfloat16_acting_stays_close_to_float32_and_takes_float32_weights(name, encoder):
    """actor.precision=bfloat16: the encoder runs in bfloat16, everything the actor records stays float32."""
    import dataclasses

    spec = SPECS[name]
    cfg = dataclasses.replace(SMALL, encoder=encoder)
    ref = build_agent(cfg, spec).eval()
    bf = build_agent(cfg, spec).eval()
    bf.set_acting_dtype(torch.bfloat16)
    bf.load_state_dict(ref.state_dict())  # the learner's float32 weights, cast on load
    assert {p.dtype for p in bf.encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for m in (bf.core, bf.heads) for p in m.parameters()} == {torch.float32}
    gen = torch.Generator().manual_seed(0)
    obs = random_obs(spec, (5,), gen)
    s0 = {k: 0.5 * torch.randn(v.shape, generator=gen) for k, v in ref.initial_state(5).items()}
    a, b = ref.act(obs, s0), bf.act(obs, s0)
    assert b.logits.dtype == b.value.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in b.state.values())
    assert not torch.equal(a.logits, b.logits)  # it did run in bfloat16
    for x, y in [(a.logits, b.logits), (a.value, b.value), *((a.state[k], b.state[k]) for k in a.state)]:
        torch.testing.assert_close(y, x, rtol=0.0, atol=0.03 * float(x.abs().max()) + 1e-6)
    # unroll takes the same path as act
    out = bf.unroll({k: v[None] for k, v in obs.items()}, torch.zeros(1, 5, dtype=torch.bool), s0)
    torch.testing.assert_close(out.logits[0], b.logits, rtol=1e-5, atol=1e-6)


def test_image_pixels_go_straight_to_the_autocast_dtype():
    """Under autocast uint8 pixels become the autocast dtype in one pass (no float32 frame copy for the convs
    to cast again); outside it, the encoder's own dtype; both scaled to [0, 1]."""
    from distrl.models.encoders import _image_input

    x = torch.randint(0, 256, (6, 4, 84, 84), dtype=torch.uint8)
    ref = x.double() / 255.0
    plain = _image_input(x, False, (4, 84, 84))
    assert plain.dtype == torch.float32
    torch.testing.assert_close(plain.double(), ref, rtol=0.0, atol=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = _image_input(x, False, (4, 84, 84))
    assert auto.dtype == torch.bfloat16
    torch.testing.assert_close(auto.double(), ref, rtol=2.0 ** -7, atol=0.0)
    floats = torch.rand(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _image_input(floats, False, (3, 8, 8)).dtype == torch.bfloat16


@pytest.mark.parametrize("name,encoder", [("atari", "nature_cnn"), ("minihack", "nethack_small"), ("fake", "auto")])
def test_bfloat16_unroll_trains_float32_weights_and_leaves_act_alone(name, encoder):
    """learner.precision=bfloat16 (``Agent.unroll_dtype``): the encoder's forward in unroll runs under autocast
    over the float32 weights, close to float32; gradients reach every parameter in float32; act is untouched."""
    import dataclasses

    spec = SPECS[name]
    cfg = dataclasses.replace(SMALL, encoder=encoder)
    ref = build_agent(cfg, spec)
    bf = build_agent(cfg, spec)
    bf.load_state_dict(ref.state_dict())
    bf.unroll_dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(0)
    obs = random_obs(spec, (4, 3), gen)
    reset = torch.zeros(4, 3, dtype=torch.bool)
    s0 = {k: 0.5 * torch.randn(v.shape, generator=gen) for k, v in ref.initial_state(3).items()}
    a, b = ref.unroll(obs, reset, s0), bf.unroll(obs, reset, s0)
    assert b.logits.dtype == b.value.dtype == torch.float32
    assert not torch.equal(a.logits, b.logits)  # it did run in bfloat16
    for x, y in [(a.logits.detach(), b.logits.detach()), (a.value.detach(), b.value.detach())]:
        torch.testing.assert_close(y, x, rtol=0.0, atol=0.03 * float(x.abs().max()) + 1e-6)
    (b.logits.sum() + b.value.sum()).backward()
    assert all(p.dtype == torch.float32 for p in bf.parameters())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for n, p in bf.named_parameters()
               if not n.startswith("heads.value_int"))
    step_obs = {k: v[0] for k, v in obs.items()}
    torch.testing.assert_close(bf.act(step_obs, s0, greedy=True).logits, ref.act(step_obs, s0, greedy=True).logits,
                               rtol=0.0, atol=0.0)
