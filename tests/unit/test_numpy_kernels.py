"""KernelPolicy: Agent.act in NumPy from the config and published (NumPy) weights alone, the policy of an env
actor that never loads torch; and the EnvActor that acts through it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_numpy_act import ATARI, MINIHACK, MIXED, _a  # the same spec shapes as the NumpyPolicy tests
from test_numpy_act import CASES as NUMPY_CASES

from distrl.actors import EnvActor
from distrl.config import EnvConfig, ExperimentConfig, ModelConfig, SequenceConfig
from distrl.envs.base import EnvSpec
from distrl.models import build_agent
from distrl.models.acting import _redraw, check_actor_kernels, check_kernel_policy
from distrl.models.encoders import AUTO_ENCODER
from distrl.models.numpy_kernels import (
    AUTO_KERNEL_ENCODER,
    KERNEL_ENCODERS,
    KernelPolicy,
    kernel_policy_applies,
    kernel_unsupported,
)
from distrl.types import PolicyWeights, as_arrays

CASES = {  # NumpyPolicy's cases but the Impala CNN, plus model.encoder=auto and a second value head
    **{k: v for k, v in NUMPY_CASES.items() if "impala" not in k},
    "auto(nature_cnn)+lstm": (ATARI, ModelConfig(hidden_size=16)),
    "auto(mlp)+lstm": (MIXED, ModelConfig(hidden_size=24)),
    "two_value_heads": (MINIHACK, ModelConfig(encoder="nethack_small", hidden_size=16, glyph_embedding_dim=4,
                                              separate_intrinsic_value=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_policy_computes_agent_act(case):
    """The learner's start-up check passes on every covered model (greedy with the agent's weights, sampled
    with every weight redrawn), and a direct comparison on random weights agrees to float32 rounding."""
    spec, mcfg = CASES[case]
    torch.manual_seed(0)
    agent = build_agent(mcfg, spec)
    assert check_kernel_policy(agent, spec) is None
    _redraw(agent, 3)
    policy = KernelPolicy(mcfg, spec, seed=0)
    policy.load_state_dict(PolicyWeights(0, as_arrays(agent.state_dict())).policy)
    rng = np.random.default_rng(0)
    obs = {k: (rng.integers(0, 300, (6, *s.shape)) if np.issubdtype(s.dtype, np.integer)
               else rng.normal(size=(6, *s.shape))).astype(s.dtype) for k, s in spec.obs.items()}
    state = {k: v + 0.3 for k, v in policy.initial_state(6).items()}
    ref = agent.act(obs, {k: torch.from_numpy(v) for k, v in state.items()}, greedy=True)
    out = policy.act(obs, state, greedy=True)
    np.testing.assert_allclose(out.logits, ref.logits.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.value, ref.value.numpy(), rtol=1e-5, atol=1e-5)
    assert sorted(out.state) == sorted(ref.state)
    for k in ref.state:
        np.testing.assert_allclose(out.state[k], ref.state[k].numpy(), rtol=1e-5, atol=1e-5)


def test_the_check_catches_a_kernel_that_differs(monkeypatch):
    """A kernel that reads one weight wrong (the LSTM's forget-gate bias) fails the learner's check, which then
    stops the run with a message naming actor.inference=torch."""
    spec, mcfg = CASES["nethack_small+lstm"]
    agent = build_agent(mcfg, spec)
    load = KernelPolicy.load_state_dict

    def wrong(self, sd):
        sd = dict(sd)
        sd["core.lstm.bias_hh_l0"] = sd["core.lstm.bias_hh_l0"] + np.float32(0.05)
        load(self, sd)

    monkeypatch.setattr(KernelPolicy, "load_state_dict", wrong)
    why = check_kernel_policy(agent, spec)
    assert why is not None and "state['c']" in why
    cfg = ExperimentConfig(model=mcfg)
    with pytest.raises(ValueError, match=r"actor\.inference=torch"):
        check_actor_kernels(cfg, spec, agent)


def test_the_learners_check_leaves_the_global_random_stream_alone():
    """check_actor_kernels runs in the learner before training: it must not draw from torch's global generator."""
    spec, mcfg = CASES["nethack_small+lstm"]
    agent = build_agent(mcfg, spec)
    before = torch.random.get_rng_state()
    check_actor_kernels(ExperimentConfig(model=mcfg), spec, agent)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_weights_with_a_parameter_no_kernel_reads_are_refused_by_name():
    spec, mcfg = CASES["nethack_small+lstm"]
    weights = as_arrays(build_agent(mcfg, spec).state_dict())
    policy = KernelPolicy(mcfg, spec)
    with pytest.raises(ValueError, match=r"encoder\.extra\.weight"):
        policy.load_state_dict({**weights, "encoder.extra.weight": np.zeros((2, 2), np.float32)})
    missing = {k: v for k, v in weights.items() if k != "encoder.crop_fc.bias"}
    with pytest.raises(KeyError, match=r"encoder\.crop_fc\.bias"):
        policy.load_state_dict(missing)
    wide = as_arrays(build_agent(dataclasses.replace(mcfg, num_core_layers=2), spec).state_dict())
    with pytest.raises(ValueError, match="2 layer"):
        policy.load_state_dict(wide)
    with pytest.raises(RuntimeError, match="no weights loaded"):
        policy.act({k: np.zeros((1, *s.shape), s.dtype) for k, s in spec.obs.items()}, policy.initial_state(1))


def test_uncovered_models_are_named_from_the_config():
    assert kernel_unsupported(ModelConfig(encoder="nethack_small"), MINIHACK) is None
    assert "encoder 'auto'" in kernel_unsupported(ModelConfig(), MINIHACK)  # auto: nethack for MiniHack
    assert "core 'hcam'" in kernel_unsupported(ModelConfig(encoder="mlp", core="hcam"), MIXED)
    assert "glyphs_crop" in kernel_unsupported(
        ModelConfig(encoder="nethack_small"), EnvSpec("x", {"blstats": _a((27,), np.int64)}, 8, "minihack"))
    with pytest.raises(ValueError, match="encoder 'impala_cnn'"):
        KernelPolicy(ModelConfig(encoder="impala_cnn"), ATARI)
    assert "exactly one 2-D/3-D observation" in kernel_unsupported(
        ModelConfig(encoder="small_cnn"), EnvSpec("x", {"blstats": _a((27,), np.int64)}, 8, "minihack"))
    policy = KernelPolicy(ModelConfig(encoder="nature_cnn", hidden_size=8), MIXED)  # a 4x4 image: no 8x8 conv
    with pytest.raises(ValueError, match=r"conv0: a 8x8 kernel does not fit a 4x4 input"):
        policy.load_state_dict(as_arrays(build_agent(ModelConfig(encoder="mlp", hidden_size=8), MIXED).state_dict())
                               | {"encoder.cnn.0.weight": np.zeros((2, 3, 8, 8), np.float32),
                                  "encoder.cnn.0.bias": np.zeros(2, np.float32)})
    # model.encoder=auto resolves as the torch encoders' table does, where it picks a covered encoder
    assert AUTO_KERNEL_ENCODER == {f: e for f, e in AUTO_ENCODER.items() if e in KERNEL_ENCODERS}
    cfg = ExperimentConfig(model=ModelConfig(encoder="nethack_small"))
    assert kernel_policy_applies(cfg, MINIHACK)
    pong = ExperimentConfig(model=ModelConfig())  # auto: nature_cnn; float32 NumPy convs unless bfloat16 is asked
    assert kernel_policy_applies(pong, ATARI)
    assert not kernel_policy_applies(dataclasses.replace(pong, actor=dataclasses.replace(
        pong.actor, precision="bfloat16")), ATARI)
    for actor in ({"inference": "torch"}, {"device": "cuda"}):
        assert not kernel_policy_applies(dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, **actor)),
                                         MINIHACK)


@pytest.mark.parametrize("layout,dtype,k,stride,cin", [
    ("nchw", np.uint8, 8, 4, 4),  # Atari's first conv: s pixels moved as one word
    ("nchw", np.uint8, 6, 3, 2),  # no word of 3 bytes: the element-wise copy
    ("nchw", np.float32, 4, 2, 3),
    ("nhwc", np.float32, 4, 2, 5),
    ("nhwc", np.float32, 3, 1, 6),  # stride 1: the input is the blocks, no copy
    ("nhwc", np.uint8, 2, 2, 3),
])
def test_conv_kernel_equals_torch_conv2d(layout, dtype, k, stride, cin):
    from distrl.models.numpy_kernels import ConvKernel, Workspace

    rng = np.random.default_rng(k * 10 + stride)
    n, h, w, cout = 3, 19, 23, 7
    x = (rng.integers(0, 256, (n, cin, h, w)) if dtype == np.uint8 else rng.normal(size=(n, cin, h, w))).astype(dtype)
    weight, bias = rng.normal(size=(cout, cin, k, k)).astype(np.float32) * 0.1, rng.normal(size=cout).astype(np.float32)
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(weight),
                                                torch.from_numpy(bias), stride=stride)).numpy().transpose(0, 2, 3, 1)
    conv = ConvKernel(weight, bias, stride, (h, w), Workspace({}), "c", nchw=layout == "nchw")
    out = np.empty((n, *conv.out_hw, cout), np.float32)
    conv(x if layout == "nchw" else np.ascontiguousarray(x.transpose(0, 2, 3, 1)), n, out)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    with pytest.raises(ValueError, match="size the stride divides"):
        ConvKernel(np.zeros((2, 2, 3, 3), np.float32), np.zeros(2, np.float32), 2, (9, 9), Workspace({}), "bad")


def _cfg() -> ExperimentConfig:
    return ExperimentConfig(
        env=EnvConfig(name="fake:memory", num_envs=4, fake_episode_len=3),
        model=ModelConfig(encoder="mlp", hidden_size=16),
        sequence=SequenceConfig(length=5, period=5),
    )


def test_an_actor_on_kernels_emits_numpy_sequences_the_learner_replays_exactly():
    """``EnvActor(kernels=True)``: NumPy leaves throughout, and the behaviour logits and start states it stores
    are what the agent's unroll recomputes from the stored sequence (resets, weights loaded mid-run)."""
    cfg = _cfg()
    actor = EnvActor(cfg, 0, kernels=True)
    assert actor.kernels and isinstance(actor.policy, KernelPolicy)
    first = build_agent(cfg.model, actor.spec)
    actor.set_weights(PolicyWeights(0, as_arrays(first.state_dict())))
    list(actor.run(2))
    other = build_agent(cfg.model, actor.spec)
    _redraw(other, 7)
    actor.set_weights(PolicyWeights(3, as_arrays(other.state_dict())))
    trajs = list(actor.run(3))
    assert any(bool(t.terminated.any()) for t in trajs)
    for t in trajs:
        leaves = t.flatten()
        assert all(isinstance(v, np.ndarray) for v in leaves.values()), {k: type(v) for k, v in leaves.items()}
        assert int(t.policy_version[0]) == 3
        tt = t.map(torch.from_numpy)
        with torch.no_grad():
            out = other.unroll({k: v[:-1] for k, v in tt.obs.items()}, tt.reset_mask()[:-1], tt.core_state)
        torch.testing.assert_close(out.logits, tt.behaviour_logits, rtol=1e-4, atol=1e-5)
    actor.close()


def test_an_actor_on_kernels_does_not_load_torch():
    """In a process where importing torch fails, an EnvActor with ``kernels=True`` steps a real MiniHack env with
    the nethack_small model, on weights published as NumPy, and emits sequences the Ray shard client packs."""
    code = """
import sys
import numpy as np
weights = dict(np.load(sys.argv[1]))
sys.modules["torch"] = None
from distrl.actors import EnvActor
from distrl.config import load_config
from distrl.runtime.ray_replay import RayShardClient
from distrl.types import PolicyWeights
cfg = load_config("configs/quickstart.yaml", ["env.num_envs=4", "sequence.length=8", "sequence.period=8"])
actor = EnvActor(cfg, 0, kernels=True)
actor.set_weights(PolicyWeights(0, weights))
trajs = list(actor.run(2))
leaves = trajs[0].batch_major()
assert all(isinstance(v, np.ndarray) for v in leaves.values())
assert leaves["action"].shape == (4, 8)
actor.close()
print("ok", type(actor.policy).__name__, "torch" in sys.modules and sys.modules["torch"] is not None)
"""
    out = _run_without_torch(code)
    assert out.stdout.strip().splitlines()[-1] == "ok KernelPolicy False"


def test_an_atari_actor_on_kernels_does_not_load_torch():
    """The same for Pong with the small CNN: real ALE frames through the NumPy convs, and the frame stacks packed
    for replay (one frame per step, checked against the stacking rule) without torch."""
    code = """
import sys
import numpy as np
weights = dict(np.load(sys.argv[1]))
sys.modules["torch"] = None
from distrl.actors import EnvActor
from distrl.config import load_config
from distrl.envs.registry import env_spec
from distrl.types import STACK_PREFIX, PolicyWeights
cfg = load_config("configs/pong_small.yaml", sys.argv[2:])
actor = EnvActor(cfg, 0, kernels=True)
actor.set_weights(PolicyWeights(0, weights))
traj = next(iter(actor.run(1)))
leaves = traj.batch_major(env_spec(cfg.env).frame_stacks)
assert all(isinstance(v, np.ndarray) for v in leaves.values())
assert leaves["obs/frames"].shape == (2, 9, 84, 84) and leaves[STACK_PREFIX + "frames"].shape == (2, 3, 84, 84)
actor.close()
print("ok", type(actor.policy).__name__, "torch" in sys.modules and sys.modules["torch"] is not None)
"""
    out = _run_without_torch(code, "configs/pong_small.yaml",
                             ["env.num_envs=2", "env.vectorization=inline", "sequence.length=8", "sequence.period=8"])
    assert out.stdout.strip().splitlines()[-1] == "ok KernelPolicy False"


def test_an_evaluator_on_kernels_plays_what_the_agent_plays():
    """``Evaluator(kernels=True)`` (the Ray runtime's) plays greedy episodes exactly as the torch evaluator does
    with the same weights, and samples with its own generator (same seed, same result)."""
    from distrl.runtime.evaluate import Evaluator

    cfg = _cfg()
    torch.manual_seed(0)
    agent = build_agent(cfg.model, EnvActor(cfg, 0, kernels=True).spec)
    _redraw(agent, 5)
    weights = PolicyWeights(4, as_arrays(agent.state_dict()))
    fast, slow = Evaluator(cfg, seed=11, kernels=True), Evaluator(cfg, seed=11)
    assert fast.kernels and fast.agent is None and not slow.kernels
    a, b = fast.run(weights, 6, greedy=True), slow.run(weights, 6, greedy=True)
    assert (a.return_mean, a.length_mean, a.success_rate) == (b.return_mean, b.length_mean, b.success_rate)
    assert a.learner_version == 4
    again = Evaluator(cfg, seed=11, kernels=True)
    assert fast.run(weights, 6) == again.run(weights, 6)


def test_an_evaluator_on_kernels_does_not_load_torch():
    """In a process where importing torch fails, the kernel evaluator plays MiniHack with the quickstart's model."""
    code = """
import sys
import numpy as np
weights = dict(np.load(sys.argv[1]))
sys.modules["torch"] = None
from distrl.config import load_config
from distrl.runtime.evaluate import Evaluator
from distrl.types import PolicyWeights
cfg = load_config("configs/quickstart.yaml")
ev = Evaluator(cfg, kernels=True)
r = ev.run(PolicyWeights(2, weights), 2)
ev.close()
print("ok", r.episodes, r.learner_version)
"""
    out = _run_without_torch(code)
    assert out.stdout.strip().splitlines()[-1] == "ok 2 2"


def _run_without_torch(code: str, config: str = "configs/quickstart.yaml",
                       overrides: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a subprocess (repo root as cwd) with the initial weights of ``config``'s agent saved as
    NumPy at ``sys.argv[1]`` and ``overrides`` after it; the code blocks torch itself after loading them.
    Asserts it exited 0."""
    import tempfile

    from distrl.config import load_config
    from distrl.envs.registry import env_spec

    cfg = load_config(f"{_repo()}/{config}", overrides or [])
    agent = build_agent(cfg.model, env_spec(cfg.env))
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/w.npz"
        np.savez(path, **as_arrays(agent.state_dict()))
        out = subprocess.run([sys.executable, "-c", code, path, *(overrides or [])], capture_output=True,
                             text=True, timeout=300, cwd=_repo())
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _repo() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])
