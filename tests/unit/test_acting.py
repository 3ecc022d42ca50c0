"""The choice of acting path (distrl.models.acting): NumPy or PyTorch by actor.inference, the dtype by
actor.precision, and the start-up check that the NumPy path computes what Agent.act computes (a wrong one is
refused: auto falls back to PyTorch with a logged message, numpy raises)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from distrl.config import EnvConfig, ExperimentConfig, ModelConfig, SequenceConfig
from distrl.envs.base import ArraySpec, EnvSpec
from distrl.envs.registry import env_spec
from distrl.models import Agent, acting, build_agent
from distrl.models.acting import build_acting_policy, check_numpy_policy, time_acting_dtypes
from distrl.models.numpy_act import NumpyPolicy


def _a(shape: tuple[int, ...], dtype) -> ArraySpec:
    return ArraySpec(shape, np.dtype(dtype))


MINIHACK = EnvSpec(
    "MiniHack-Room-5x5-v0",
    {"glyphs_crop": _a((9, 9), np.int16), "blstats": _a((27,), np.int64), "message": _a((256,), np.uint8)},
    8, "minihack",
)
MIXED = EnvSpec(  # uint8 pixels, floats, a scalar and a flag: every MLPEncoder input kind
    "fake:spec",
    {"img": _a((3, 4, 4), np.uint8), "vec": _a((5,), np.float32), "t": _a((), np.int64), "on": _a((2,), np.bool_)},
    4, "fake",
)
ATARI = EnvSpec("ALE/Pong-v5", {"frames": _a((4, 84, 84), np.uint8)}, 6, "atari")
SMALL_IMG = EnvSpec("fake:img", {"rgb": _a((3, 36, 36), np.uint8)}, 5, "fake")

CASES = {
    "nethack_small+lstm2": (MINIHACK, ModelConfig(encoder="nethack_small", hidden_size=32, glyph_embedding_dim=4,
                                                   num_core_layers=2)),
    "mlp+identity+intrinsic": (MIXED, ModelConfig(encoder="mlp", hidden_size=24, core="identity",
                                                  separate_intrinsic_value=True)),
    "small_cnn+lstm": (ATARI, ModelConfig(encoder="small_cnn", hidden_size=16)),
    "impala_cnn+lstm": (SMALL_IMG, ModelConfig(encoder="impala_cnn", hidden_size=16)),
}


def _cfg(inference: str, encoder: str = "mlp") -> ExperimentConfig:
    return ExperimentConfig(
        env=EnvConfig(name="fake:memory", num_envs=4, fake_episode_len=3),
        model=ModelConfig(encoder=encoder, hidden_size=16),
        sequence=SequenceConfig(length=5, period=5),
        actor=dataclasses.replace(ExperimentConfig().actor, inference=inference),
    )


# ---- the start-up check -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_passes_an_honest_numpy_policy_and_leaves_rngs_alone(case):
    spec, mcfg = CASES[case]
    agent = build_agent(mcfg, spec)
    policy = NumpyPolicy(agent, seed=5)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()[1].copy()
    sampled = NumpyPolicy(agent, seed=5).act(_zeros(spec, 3), policy.initial_state(3)).action
    assert check_numpy_policy(policy, spec) is None
    assert torch.equal(torch.get_rng_state(), torch_rng) and np.array_equal(np.random.get_state()[1], np_rng)
    assert all(torch.equal(before[k], v) for k, v in agent.state_dict().items())  # the agent is untouched
    # the policy's own sampling stream is untouched too (the check acts greedily with the actor's weights)
    np.testing.assert_array_equal(policy.act(_zeros(spec, 3), policy.initial_state(3)).action, sampled)


def _zeros(spec: EnvSpec, b: int) -> dict[str, np.ndarray]:
    return {k: np.zeros((b, *s.shape), s.dtype) for k, s in spec.obs.items()}


def test_check_refuses_a_numpy_copy_with_one_wrong_weight():
    """One weight perturbed in the NumPy copy only (the Agent keeps the right one): the check names the
    output, the step and the max difference."""
    spec, mcfg = CASES["nethack_small+lstm2"]
    agent = build_agent(mcfg, spec)
    policy = NumpyPolicy(agent, seed=0)
    policy._hw[3, 1] += 0.05  # one weight of the policy head, as the NumPy kernels hold it
    why = check_numpy_policy(policy, spec)
    assert why is not None
    assert "with the actor's weights" in why
    d = float(why.split("logits by up to ")[1].split(" ")[0])
    assert 1e-3 < d < 1.0, why


class _BiasBug(NumpyPolicy):
    """Forgets the heads' biases: invisible at initialisation (biases are zero there), wrong after training."""

    def sync(self) -> None:
        super().sync()
        self._hb = np.zeros_like(self._hb)


class _SamplingBug(NumpyPolicy):
    """Right logits, but samples ignore them (always the last action)."""

    def act(self, obs, state, greedy=False):
        out = super().act(obs, state, greedy)
        if greedy:
            return out
        return dataclasses.replace(out, action=np.full_like(out.action, self.num_actions - 1))


def test_check_redraws_the_weights_so_a_bias_bug_shows():
    spec, mcfg = CASES["mlp+identity+intrinsic"]
    agent = build_agent(mcfg, spec)
    assert not agent.heads.policy.fc.bias.any()  # zero at init: the actor's own weights cannot show it
    why = check_numpy_policy(_BiasBug(agent, seed=0), spec)
    assert why is not None and "with redrawn weights" in why and "logits by up to" in why, why


def test_check_compares_sampled_actions_under_the_same_noise():
    spec, mcfg = CASES["mlp+identity+intrinsic"]
    why = check_numpy_policy(_SamplingBug(build_agent(mcfg, spec), seed=0), spec)
    assert why is not None and "sampled actions differ" in why and "with redrawn weights" in why, why


def test_a_wrong_numpy_path_falls_back_to_torch_or_raises(monkeypatch, caplog):
    """actor.inference=auto: a NumPy path that fails the check is not used; the log says why, with the max
    difference. actor.inference=numpy: it raises with the same reason."""

    class Wrong(NumpyPolicy):
        def sync(self) -> None:
            super().sync()
            self._hw[0, 0] += 0.5

    monkeypatch.setattr(acting, "NumpyPolicy", Wrong)
    cfg = _cfg("auto")
    spec = env_spec(cfg.env)
    with caplog.at_level(logging.WARNING, logger="distrl.models.acting"):
        policy = build_acting_policy(cfg, spec, torch.device("cpu"), 0)
    assert isinstance(policy, Agent)
    assert "not acting through NumPy" in caplog.text and "logits by up to" in caplog.text, caplog.text
    with pytest.raises(ValueError, match=r"actor\.inference=numpy cannot run this model: its outputs differ "
                                         r"from Agent\.act's: logits by up to"):
        build_acting_policy(_cfg("numpy"), spec, torch.device("cpu"), 0)


def test_an_uncovered_option_is_refused_by_name_when_the_actor_picks_the_path(caplog):
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WithLayerNorm(ModelConfig):
        layer_norm: bool = False

    cfg = _cfg("auto")
    cfg = dataclasses.replace(cfg, model=WithLayerNorm(encoder="mlp", hidden_size=16))
    spec = env_spec(cfg.env)
    with caplog.at_level(logging.INFO, logger="distrl.models.acting"):
        assert isinstance(build_acting_policy(cfg, spec, torch.device("cpu"), 0), Agent)
    assert "model.layer_norm" in caplog.text
    numpy_cfg = dataclasses.replace(cfg, actor=_cfg("numpy").actor)
    with pytest.raises(ValueError, match=r"actor\.inference=numpy cannot run this model: model option\(s\) "
                                         r"model\.layer_norm"):
        build_acting_policy(numpy_cfg, spec, torch.device("cpu"), 0)


def test_the_check_runs_when_the_path_is_picked(monkeypatch):
    calls = []
    real = acting.check_numpy_policy
    monkeypatch.setattr(acting, "check_numpy_policy", lambda p, s, **kw: calls.append(type(p)) or real(p, s))
    cfg = _cfg("auto")
    assert isinstance(build_acting_policy(cfg, env_spec(cfg.env), torch.device("cpu"), 0), NumpyPolicy)
    assert calls == [NumpyPolicy]
    build_acting_policy(_cfg("torch"), env_spec(cfg.env), torch.device("cpu"), 0)
    assert len(calls) == 1  # not for the PyTorch path


# ---- path and dtype choice -----------------------------------------------------------------------------------


def test_actor_picks_the_acting_path():
    cfg = _cfg("auto")
    spec = env_spec(cfg.env)
    assert isinstance(build_acting_policy(cfg, spec, torch.device("cpu"), 0), NumpyPolicy)
    assert isinstance(build_acting_policy(_cfg("torch"), spec, torch.device("cpu"), 0), Agent)
    assert isinstance(build_acting_policy(_cfg("numpy"), spec, torch.device("cpu"), 0), NumpyPolicy)
    cnn = dataclasses.replace(_cfg("auto"), model=ModelConfig(encoder="small_cnn"))
    assert isinstance(build_acting_policy(cnn, ATARI, torch.device("cpu"), 0), NumpyPolicy)  # convs through torch
    nethack = dataclasses.replace(_cfg("auto"), model=ModelConfig(encoder="nethack"))
    assert isinstance(build_acting_policy(nethack, MINIHACK, torch.device("cpu"), 0), Agent)  # auto falls back
    with pytest.raises(ValueError, match=r"actor\.inference=numpy cannot run this model: encoder NetHackEncoder"):
        build_acting_policy(dataclasses.replace(nethack, actor=_cfg("numpy").actor), MINIHACK, torch.device("cpu"), 0)


def test_actor_precision_sets_the_torch_encoder_dtype(monkeypatch):
    cnn = dataclasses.replace(_cfg("auto"), model=ModelConfig(encoder="small_cnn", hidden_size=16))

    def encoder_dtype(precision: str, inference: str = "torch") -> torch.dtype:
        """The acting dtype of the CNN: the torch agent's encoder, or the NumPy path's conv stack."""
        actor = dataclasses.replace(cnn.actor, precision=precision, inference=inference)
        policy = build_acting_policy(dataclasses.replace(cnn, actor=actor), ATARI, torch.device("cpu"), 0)
        if inference == "torch":
            return next(policy.encoder.parameters()).dtype
        assert isinstance(policy, NumpyPolicy)
        return policy.conv_dtype

    for inference in ("torch", "auto"):
        assert encoder_dtype("float32", inference) == torch.float32
        assert encoder_dtype("bfloat16", inference) == torch.bfloat16
    # auto: bfloat16 only on a bfloat16-capable CPU where it also measures >= 10% faster at the actor's batch.
    monkeypatch.setattr(acting, "native_bf16", lambda device: True)
    timed: list[int] = []

    def fake_timings(bf16_us: float):
        def timings(agent, spec, batch, reps=5):
            timed.append(batch)
            return {"float32": 100.0, "bfloat16": bf16_us}
        return timings

    monkeypatch.setattr(acting, "time_acting_dtypes", fake_timings(80.0))
    assert encoder_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(acting, "time_acting_dtypes", fake_timings(95.0))
    assert encoder_dtype("auto") == torch.float32
    assert encoder_dtype("auto", inference="auto") == torch.float32
    monkeypatch.setattr(acting, "time_acting_dtypes", fake_timings(80.0))
    assert encoder_dtype("auto", inference="auto") == torch.bfloat16
    assert timed == [cnn.env.num_envs] * 4
    monkeypatch.setattr(acting, "native_bf16", lambda device: False)
    assert encoder_dtype("auto") == torch.float32
    assert encoder_dtype("auto", inference="auto") == torch.float32
    assert len(timed) == 4  # no bfloat16 kernels: nothing to time
    # The NumPy path is float32 whatever the setting.
    numpy_cfg = dataclasses.replace(_cfg("auto"), actor=dataclasses.replace(_cfg("auto").actor, precision="bfloat16"))
    assert isinstance(build_acting_policy(numpy_cfg, env_spec(numpy_cfg.env), torch.device("cpu"), 0), NumpyPolicy)


def test_time_acting_dtypes_measures_both_and_leaves_the_agent_alone():
    agent = build_agent(ModelConfig(encoder="small_cnn", hidden_size=16), ATARI)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    timings = time_acting_dtypes(agent, ATARI, batch=3, reps=2)
    assert set(timings) == {"float32", "bfloat16"}
    assert all(0.0 < t < float("inf") for t in timings.values())
    assert next(agent.encoder.parameters()).dtype == torch.float32 and agent.acting_dtype == torch.float32
    after = agent.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
