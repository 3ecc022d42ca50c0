"""NumpyPolicy (distrl.models.numpy_act): the same function as Agent.act, weight loads, sampling, bad input,
what it refuses to run (its allow-list), and env actors acting through it. The choice of acting path and its
start-up check are in test_acting.py."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from distrl.actors import EnvActor
from distrl.config import EnvConfig, ExperimentConfig, ModelConfig, SequenceConfig
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.models import Agent, build_agent
from distrl.models.numpy_act import NumpyPolicy, numpy_unsupported
from distrl.types import PolicyWeights


def _a(shape: tuple[int, ...], dtype) -> ArraySpec:
    return ArraySpec(shape, np.dtype(dtype))


MINIHACK = EnvSpec(
    "MiniHack-Room-5x5-v0",
    {"glyphs_crop": _a((9, 9), np.int16), "blstats": _a((27,), np.int64), "message": _a((256,), np.uint8)},
    8, "minihack",
)
CROP_ONLY = EnvSpec("MiniHack-Room-5x5-v0", {"glyphs_crop": _a((5, 5), np.int16)}, 8, "minihack")
MIXED = EnvSpec(  # uint8 pixels (scaled by 1/255), floats and a scalar: every MLPEncoder input kind
    "fake:spec", {"img": _a((3, 4, 4), np.uint8), "vec": _a((5,), np.float32), "t": _a((), np.int64)}, 4, "fake",
)
ATARI = EnvSpec("ALE/Pong-v5", {"frames": _a((4, 84, 84), np.uint8)}, 6, "atari")
SMALL_IMG = EnvSpec("fake:img", {"rgb": _a((3, 36, 36), np.uint8)}, 5, "fake")  # IMPALA CNN, cheaper frames
HWC_IMG = EnvSpec("fake:img", {"rgb": _a((40, 40, 3), np.uint8)}, 5, "fake")  # channels last, like [H, W, C]

CASES = {
    "nethack_small+lstm": (MINIHACK, ModelConfig(encoder="nethack_small", hidden_size=32, glyph_embedding_dim=4)),
    "nethack_small+lstm2": (
        MINIHACK, ModelConfig(encoder="nethack_small", hidden_size=32, glyph_embedding_dim=4, num_core_layers=2)
    ),
    "nethack_small_crop_only+identity": (CROP_ONLY, ModelConfig(encoder="nethack_small", hidden_size=16,
                                                                 core="identity")),
    "mlp+lstm": (MIXED, ModelConfig(encoder="mlp", hidden_size=24)),
    "mlp+identity": (MIXED, ModelConfig(encoder="mlp", hidden_size=24, core="identity")),
    # CNN encoders: conv stack through PyTorch (first conv's weights pre-scaled by 1/255), the rest in NumPy
    "small_cnn+lstm": (ATARI, ModelConfig(encoder="small_cnn", hidden_size=16)),
    "nature_cnn+identity": (ATARI, ModelConfig(encoder="nature_cnn", hidden_size=16, core="identity")),
    "impala_cnn+lstm": (SMALL_IMG, ModelConfig(encoder="impala_cnn", hidden_size=16)),
    "nature_cnn_channels_last+lstm": (HWC_IMG, ModelConfig(encoder="nature_cnn", hidden_size=16)),
}


def _obs(spec: EnvSpec, b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for k, s in spec.obs.items():
        if np.issubdtype(s.dtype, np.integer):
            hi = 2000 if k.startswith("glyphs") else 255  # glyph ids < num_glyphs(); uint8 pixels
            out[k] = rng.integers(0, hi, (b, *s.shape)).astype(s.dtype)
        else:
            out[k] = rng.normal(size=(b, *s.shape)).astype(s.dtype) * 3
    return out


def _random_state(agent: Agent, b: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=g) for k, v in agent.initial_state(b).items()}


def _randomise(agent: Agent, seed: int) -> None:
    """Weights far from the init (biases included), so every term of the function shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in agent.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 1.0))


@pytest.mark.parametrize("case", sorted(CASES))
def test_numpy_act_equals_agent_act(case):
    spec, mcfg = CASES[case]
    torch.manual_seed(0)
    agent = build_agent(mcfg, spec)
    _randomise(agent, 0)
    policy = NumpyPolicy(agent, seed=0)
    obs = _obs(spec, 7, np.random.default_rng(0))
    state = _random_state(agent, 7)
    ref = agent.act(obs, state, greedy=True)
    out = policy.act(obs, {k: v.numpy() for k, v in state.items()}, greedy=True)
    assert isinstance(out.logits, np.ndarray) and out.logits.dtype == np.float32
    assert out.action.dtype == np.int64 and out.value.dtype == np.float32
    # CNNs: pixels scaled through the first conv's weights instead of the input, and hundreds of terms per
    # conv output, so float32 rounding shows at ~1e-5 relative to the (large, random-weight) logits
    tol = 1e-4 if "cnn" in case else 1e-5
    scale = max(1.0, float(np.abs(ref.logits.numpy()).max()))
    np.testing.assert_allclose(out.logits, ref.logits.numpy(), rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(out.value, ref.value.numpy(), rtol=tol, atol=tol * scale)
    np.testing.assert_array_equal(out.action, ref.action.numpy())
    assert sorted(out.state) == sorted(ref.state)
    for k in ref.state:
        assert out.state[k].shape == tuple(ref.state[k].shape)
        np.testing.assert_allclose(out.state[k], ref.state[k].numpy(), rtol=tol, atol=tol)


def test_numpy_act_over_a_sequence_with_resets_matches_unroll():
    """T act calls with resets between them (the actor's loop) give unroll's logits and final state."""
    spec, mcfg = CASES["nethack_small+lstm2"]
    agent = build_agent(mcfg, spec)
    _randomise(agent, 1)
    policy = NumpyPolicy(agent, seed=0)
    rng = np.random.default_rng(1)
    T, B = 6, 4
    obs = [_obs(spec, B, rng) for _ in range(T)]
    reset = rng.random((T, B)) < 0.3
    reset[0] = False
    s0 = _random_state(agent, B)
    state = {k: v.numpy().copy() for k, v in s0.items()}
    logits = []
    for t in range(T):
        if t:
            state = policy.reset_state(state, reset[t])
        out = policy.act(obs[t], state)
        logits.append(out.logits)
        state = out.state
    with torch.no_grad():
        ref = agent.unroll({k: np.stack([o[k] for o in obs]) for k in spec.obs}, torch.from_numpy(reset), s0)
    np.testing.assert_allclose(np.stack(logits), ref.logits.numpy(), rtol=1e-4, atol=1e-5)
    for k in ref.state:
        np.testing.assert_allclose(state[k], ref.state[k].numpy(), rtol=1e-4, atol=1e-5)


def test_numpy_sampling_follows_softmax():
    """Gumbel-max with the policy's generator: action frequencies match softmax(logits); seeded = repeatable."""
    spec, mcfg = CASES["mlp+identity"]
    agent = build_agent(mcfg, spec)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    with torch.no_grad():
        agent.heads.policy.fc.weight.zero_()
        agent.heads.policy.fc.bias.copy_(torch.from_numpy(np.log(p)))
    obs = _obs(spec, 4000, np.random.default_rng(0))
    a = NumpyPolicy(agent, seed=3).act(obs, {}).action
    freq = np.bincount(a, minlength=4) / a.size
    assert np.abs(freq - p).max() < 0.03, freq  # ~4 standard errors
    np.testing.assert_array_equal(NumpyPolicy(agent, seed=3).act(obs, {}).action, a)
    assert not np.array_equal(NumpyPolicy(agent, seed=4).act(obs, {}).action, a)


def test_load_state_dict_and_sync():
    spec, mcfg = CASES["nethack_small+lstm"]
    agent = build_agent(mcfg, spec)
    policy = NumpyPolicy(agent, seed=0)
    other = build_agent(mcfg, spec)
    _randomise(other, 5)
    obs = _obs(spec, 3, np.random.default_rng(2))
    s = _random_state(agent, 3)
    s_np = {k: v.numpy() for k, v in s.items()}
    policy.load_state_dict(other.state_dict())
    np.testing.assert_allclose(policy.act(obs, s_np).logits, other.act(obs, s).logits.numpy(), atol=1e-5)
    assert policy.state_dict().keys() == other.state_dict().keys()
    # the policy holds copies: an in-place change shows only after sync()
    _randomise(agent, 6)
    before = policy.act(obs, s_np, greedy=True).logits
    np.testing.assert_allclose(before, other.act(obs, s).logits.numpy(), atol=1e-5)
    policy.sync()
    np.testing.assert_allclose(policy.act(obs, s_np).logits, agent.act(obs, s).logits.numpy(), atol=1e-5)


def test_reset_state_zeroes_masked_rows_only():
    spec, mcfg = CASES["mlp+lstm"]
    policy = NumpyPolicy(build_agent(mcfg, spec))
    s = {k: v.numpy() for k, v in _random_state(policy.agent, 4).items()}
    r = policy.reset_state(s, np.array([True, False, False, True]))
    for k in s:
        assert not r[k][[0, 3]].any()
        np.testing.assert_array_equal(r[k][[1, 2]], s[k][[1, 2]])
        assert r[k] is not s[k]
    assert policy.reset_state({}, np.ones(4, bool)) == {}


def test_numpy_act_runs_a_cnn_in_bfloat16_on_request():
    """conv_dtype=bfloat16 (actor.precision): the conv stack runs in bfloat16 and the outputs stay float32,
    close to the float32 function (bfloat16 rounding) but not equal to it."""
    spec, mcfg = CASES["small_cnn+lstm"]
    agent = build_agent(mcfg, spec)
    policy32, policy16 = NumpyPolicy(agent, seed=0), NumpyPolicy(agent, seed=0, conv_dtype=torch.bfloat16)
    obs = _obs(spec, 5, np.random.default_rng(3))
    s = policy32.initial_state(5)
    ref, out = policy32.act(obs, s, greedy=True), policy16.act(obs, s, greedy=True)
    assert out.logits.dtype == np.float32 and out.state["h"].dtype == np.float32
    scale = float(np.abs(ref.logits).max())
    np.testing.assert_allclose(out.logits, ref.logits, rtol=0.0, atol=0.03 * scale)
    assert not np.array_equal(out.logits, ref.logits)


def test_unsupported_models_are_named():
    agent = build_agent(ModelConfig(encoder="nethack"), MINIHACK)
    why = numpy_unsupported(agent)
    assert why is not None and "NetHackEncoder" in why
    with pytest.raises(ValueError, match=r"NetHackEncoder.*actor\.inference=torch"):
        NumpyPolicy(agent)
    assert numpy_unsupported(build_agent(CASES["mlp+lstm"][1], MIXED)) is None


def test_every_model_option_is_on_the_allow_list():
    """Each ModelConfig field is either implemented by the NumPy path (listed in MODEL_OPTIONS, with how) or
    refused by it; adding a field fails here until someone decides which."""
    from distrl.models.numpy_act import MODEL_OPTIONS

    assert {f.name for f in dataclasses.fields(ModelConfig)} == set(MODEL_OPTIONS)


def test_an_option_the_numpy_path_does_not_know_is_refused_by_name():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WithLayerNorm(ModelConfig):
        layer_norm: bool = False

    spec, mcfg = CASES["mlp+lstm"]
    agent = build_agent(WithLayerNorm(**dataclasses.asdict(mcfg)), spec)
    why = numpy_unsupported(agent)
    assert why is not None and "model.layer_norm" in why
    with pytest.raises(ValueError, match=r"model\.layer_norm"):
        NumpyPolicy(agent)


@pytest.mark.parametrize("change,named", [
    ("extra_layer", r"encoder\.norm \(LayerNorm\) is not a part the NumPy kernel of MLPEncoder runs"),
    ("activation", r"encoder\.mlp\.1 \(Tanh\)"),
    ("no_bias", r"heads\.policy\.fc: Linear without a bias"),
    ("head_part", r"heads\.aux \(Linear\)"),
    ("agent_part", r"agent part idm \(Linear\)"),
    ("own_parameter", r"encoder has its own parameters/buffers \['scale'\]"),
    ("lstm_proj", r"core\.lstm: LSTM with .*proj_size=4"),
    ("bfloat16", r"the encoder computes in torch\.bfloat16"),
])
def test_a_part_the_numpy_path_does_not_cover_is_refused_by_name(change, named):
    """The allow-list reaches below the encoder/core/head classes: any submodule, own parameter or layer
    option the kernels do not read is named (so a layer added to a model is not silently skipped)."""
    spec, mcfg = CASES["mlp+lstm"]
    agent = build_agent(mcfg, spec)
    assert numpy_unsupported(agent) is None
    if change == "extra_layer":
        agent.encoder.norm = torch.nn.LayerNorm(24)
    elif change == "activation":
        agent.encoder.mlp[1] = torch.nn.Tanh()
    elif change == "no_bias":
        agent.heads.policy.fc = torch.nn.Linear(24, spec.num_actions, bias=False)
    elif change == "head_part":
        agent.heads.aux = torch.nn.Linear(24, 3)
    elif change == "agent_part":
        agent.idm = torch.nn.Linear(24, 3)
    elif change == "own_parameter":
        agent.encoder.scale = torch.nn.Parameter(torch.ones(1))
    elif change == "lstm_proj":
        agent.core.lstm = torch.nn.LSTM(24, 24, proj_size=4)
    elif change == "bfloat16":
        agent.set_acting_dtype(torch.bfloat16)
    why = numpy_unsupported(agent)
    assert why is not None
    assert re.search(named, why), why
    with pytest.raises(ValueError, match=r"NumpyPolicy cannot run this agent"):
        NumpyPolicy(agent)


def test_intrinsic_value_head_is_covered_and_ignored_like_act_does():
    spec, mcfg = CASES["mlp+lstm"]
    agent = build_agent(dataclasses.replace(mcfg, separate_intrinsic_value=True), spec)
    assert agent.heads.value_int is not None and numpy_unsupported(agent) is None
    _randomise(agent, 2)
    obs, s = _obs(spec, 3, np.random.default_rng(0)), _random_state(agent, 3)
    ref = agent.act(obs, s, greedy=True)
    out = NumpyPolicy(agent).act(obs, {k: v.numpy() for k, v in s.items()}, greedy=True)
    np.testing.assert_allclose(out.value, ref.value.numpy(), rtol=1e-5, atol=1e-5)


def test_bad_input_names_the_problem():
    spec, mcfg = CASES["nethack_small+lstm"]
    policy = NumpyPolicy(build_agent(mcfg, spec))
    obs = _obs(spec, 2, np.random.default_rng(0))
    s = policy.initial_state(2)
    with pytest.raises(KeyError, match="'glyphs_crop' missing"):
        policy.act({"blstats": obs["blstats"]}, s)
    with pytest.raises(ValueError, match="'blstats' has shape"):
        policy.act({**obs, "blstats": obs["blstats"][:, :5]}, s)
    with pytest.raises(ValueError, match="one B for all keys"):
        policy.act({**obs, "blstats": obs["blstats"][:1]}, s)
    with pytest.raises(ValueError, match="core state 'h' has batch 3"):
        policy.act(obs, policy.initial_state(3))
    with pytest.raises(KeyError, match="core state keys"):
        policy.act(obs, {"h": s["h"]})


def _cfg(inference: str, encoder: str = "mlp") -> ExperimentConfig:
    return ExperimentConfig(
        env=EnvConfig(name="fake:memory", num_envs=4, fake_episode_len=3),
        model=ModelConfig(encoder=encoder, hidden_size=16),
        sequence=SequenceConfig(length=5, period=5),
        actor=dataclasses.replace(ExperimentConfig().actor, inference=inference),
    )


@pytest.mark.parametrize("inference,precision", [("numpy", "float32"), ("torch", "float32"), ("torch", "bfloat16")])
def test_actor_sequences_replay_exactly(inference, precision):
    """Behaviour logits and core states the actor stores are what the learner's unroll recomputes from the
    stored sequence (resets, stored start states, weights loaded mid-run): the acting path is the agent
    (with a bfloat16 encoder: up to bfloat16's rounding)."""
    cfg = _cfg(inference)
    cfg = dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, precision=precision))
    actor = EnvActor(cfg, 0)
    agent = actor.policy.agent if inference == "numpy" else actor.policy
    assert isinstance(agent, Agent)
    list(actor.run(2))
    other = build_agent(cfg.model, actor.spec)
    _randomise(other, 7)
    actor.set_weights(PolicyWeights(3, other.state_dict()))
    trajs = list(actor.run(3))
    assert any(bool(t.terminated.any()) for t in trajs)  # episode ends inside the sequences
    for t in trajs:
        assert int(t.policy_version[0]) == 3
        reset = torch.zeros_like(t.terminated)
        reset[1:] = t.terminated[:-1] | t.truncated[:-1]
        with torch.no_grad():
            out = other.unroll({k: v[:-1] for k, v in t.obs.items()}, reset, t.core_state)
        if precision == "float32":
            torch.testing.assert_close(out.logits, t.behaviour_logits, rtol=1e-4, atol=1e-5)
        else:
            scale = float(out.logits.abs().max())
            torch.testing.assert_close(out.logits, t.behaviour_logits, rtol=0.0, atol=0.03 * scale)
            assert not torch.equal(out.logits, t.behaviour_logits)


def test_actor_caps_numpy_blas_threads():
    """An actor caps NumPy's OpenBLAS pool at actor.threads (extra pool threads only compete with the other
    env-stepping processes); PyTorch's thread count is left alone."""
    from threadpoolctl import ThreadpoolController

    torch_threads = torch.get_num_threads()
    actor = EnvActor(_cfg("auto"), 0)
    try:
        pools = ThreadpoolController().select(internal_api="openblas").info()
        assert pools and all(p["num_threads"] == 1 for p in pools), pools
        assert torch.get_num_threads() == torch_threads
    finally:
        actor.close()


@pytest.mark.parametrize("rows", [1, 8, 16, 32])
def test_matmul_in_column_blocks_equals_one_product(rows):
    """Matmul picks a block count by timing; whichever it picks (and every candidate), the product is x @ w."""
    from distrl.models.numpy_kernels import Matmul

    rng = np.random.default_rng(0)
    w = rng.standard_normal((96, 64), dtype=np.float32)
    x = rng.standard_normal((rows, 96), dtype=np.float32)
    plans: dict = {}
    mm = Matmul(w, plans)
    assert mm.candidates == [1, 2, 4]  # blocks of at least 16 columns
    wide = np.full((rows, 70), np.nan, dtype=np.float32)
    out = mm(x, wide[:, 3:67])  # a strided view, as the kernels pass
    np.testing.assert_allclose(out, x @ w, rtol=1e-5, atol=1e-5)
    assert np.isnan(wide[:, :3]).all() and np.isnan(wide[:, 67:]).all()  # nothing written outside the view
    choice = plans[(96, 64, rows)]
    assert choice in mm.candidates and (rows >= 8 or choice == 1)
    for c in mm.candidates:  # every plan gives the same product
        plans[(96, 64, rows)] = c
        np.testing.assert_allclose(mm(x, np.empty((rows, 64), np.float32)), x @ w, rtol=1e-5, atol=1e-5)


def test_block_plans_survive_weight_loads():
    spec, mcfg = CASES["nethack_small+lstm"]
    policy = NumpyPolicy(build_agent(mcfg, spec), seed=0)
    rng = np.random.default_rng(0)
    obs = {k: rng.integers(0, 50, (16, *a.shape)).astype(a.dtype) for k, a in spec.obs.items()}
    policy.act(obs, policy.initial_state(16))
    plans = dict(policy._plans)
    assert plans and all(k[2] == 16 for k in plans)
    policy.load_state_dict(build_agent(mcfg, spec).state_dict())
    assert policy._plans == plans  # not re-timed after a weight load
