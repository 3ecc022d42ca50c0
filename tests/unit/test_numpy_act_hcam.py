"""HCAM's NumPy acting kernel (distrl/models/numpy_hcam.py): NumpyPolicy with an HCAM core computes Agent.act
(logits, values, every state leaf) over many steps with resets, FIFO wrap-around, cross-episode memory and
several k, from fresh and from random states; it leaves its input state alone; its overflow fallback; the
actor picks it and its start-up check catches a wrong kernel; its states go through replay unchanged; and
the allow-list names a changed HCAM part."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import torch

from distrl.actors.env_actor import EnvActor
from distrl.config import ExperimentConfig, ModelConfig, ReplayConfig
from distrl.envs.memory_tasks import RecallEnv
from distrl.models import build_agent
from distrl.models.acting import build_acting_policy, check_numpy_policy
from distrl.models.cores import build_core
from distrl.models.hcam import HCAMCore
from distrl.models.numpy_act import NumpyPolicy, numpy_unsupported
from distrl.models.numpy_hcam import HCAMKernel
from distrl.models.numpy_kernels import Workspace
from distrl.replay.shard import ReplayShard
from distrl.types import Trajectory

SPEC = RecallEnv.make_spec("Recall-3-5", 3)
TOL = 1e-5


def _cfg(**kw) -> ModelConfig:
    base = dict(
        encoder="mlp",
        core="hcam",
        hidden_size=16,
        num_core_layers=2,
        hcam_chunk=3,
        hcam_chunks=4,
        hcam_topk=2,
        hcam_heads=2,
    )
    base.update(kw)
    return ModelConfig(**base)


def _randomise(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Weights far from the init, biases and LayerNorm shifts included, so every term shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (scale if p.dim() > 1 else 1.0))


def _agent(seed: int = 0, **kw):
    torch.manual_seed(seed)
    agent = build_agent(_cfg(**kw), SPEC)
    _randomise(agent, seed + 1)
    return agent


def _obs(b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: (rng.standard_normal((b, *s.shape)) * 2).astype(s.dtype) for k, s in SPEC.obs.items()}


def _close(name: str, got, want, tol: float = TOL) -> None:
    got = got.numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = want.numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, want.shape, got.dtype, want.dtype)
    np.testing.assert_allclose(
        got.astype(np.float64),
        want.astype(np.float64),
        rtol=0,
        atol=tol * max(1.0, float(np.abs(want).max(initial=0.0))),
        err_msg=name,
    )


def _symbolic_obs(b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One of two observations per row: chunks with equal summaries (ties in the top-k choice) are common."""
    two = [_obs(1, np.random.default_rng(i)) for i in (11, 12)]
    pick = rng.integers(0, 2, b)
    return {k: np.concatenate([two[i][k] for i in pick]) for k in SPEC.obs}


def _run_both(agent, steps: int, B: int, seed: int, state=None, reset_p: float = 0.1, obs_fn=None):
    """``steps`` act calls of Agent.act and NumpyPolicy side by side (resets between steps), comparing logits,
    values and every state leaf at each step. Returns the largest count reached."""
    policy = NumpyPolicy(agent, seed=0)
    rng = np.random.default_rng(seed)
    st = agent.initial_state(B) if state is None else state
    sn = policy.initial_state(B) if state is None else {k: v.numpy().copy() for k, v in state.items()}
    top = 0
    for t in range(steps):
        obs = (obs_fn or _obs)(B, rng)
        ref = agent.act(obs, st, greedy=True)
        out = policy.act(obs, sn, greedy=True)
        _close(f"logits at step {t}", out.logits, ref.logits)
        _close(f"value at step {t}", out.value, ref.value)
        assert sorted(out.state) == sorted(ref.state)
        for k in ref.state:
            assert isinstance(out.state[k], torch.Tensor)  # the episode-memory compactor reads tensors
            _close(f"state[{k}] at step {t}", out.state[k], ref.state[k])
        np.testing.assert_array_equal(out.action, ref.action.numpy())
        top = max(top, int(ref.state["count"].max()))
        done = rng.random(B) < reset_p
        st = agent.reset_state(ref.state, torch.from_numpy(done))
        sn = policy.reset_state(out.state, done)
    return top


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("topk", [1, 2, 4, 9])  # k < M (gather), k = M and k > M (all chunks, no gather)
def test_numpy_hcam_equals_agent_act_over_many_steps(topk, cross):
    agent = _agent(hcam_topk=topk, hcam_cross_episode=cross)
    top = _run_both(agent, steps=70, B=5, seed=topk)
    assert top > 2 * 4  # rings wrapped around (M = 4) during the run


@pytest.mark.parametrize("cross", [False, True])
def test_numpy_hcam_breaks_top_k_ties_as_torch_does(cross):
    """Two distinct observations only: many chunks share a summary, so the top-k choice meets exact ties, before
    and after the rings wrap; NumPy's argpartition must pick the chunks PyTorch's topk picks (the newer)."""
    agent = _agent(hcam_topk=2, hcam_cross_episode=cross)
    top = _run_both(agent, steps=70, B=5, seed=3, reset_p=0.03, obs_fn=_symbolic_obs)
    assert top > 2 * 4


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_core_layers=1, hcam_heads=1, hcam_chunk=1, hcam_chunks=1, hcam_topk=1),  # degenerate sizes
        dict(num_core_layers=3, hcam_heads=4, hcam_chunk=5, hcam_chunks=6, hcam_topk=3, hidden_size=24),
    ],
)
def test_numpy_hcam_other_shapes(kw):
    _run_both(_agent(**kw), steps=25, B=3, seed=5)


@pytest.mark.parametrize("cross", [False, True])
def test_numpy_hcam_from_a_random_state(cross):
    """From HCAMCore.random_state (partly filled and wrapped rings, a chunk half filled): what the start-up
    check uses, and what an actor meets after a weight load in the middle of episodes."""
    agent = _agent(hcam_topk=3, hcam_cross_episode=cross)
    state = agent.core.random_state(6, np.random.default_rng(3))
    assert 0 < int(state["count"].min()) or int(state["count"].max()) > 4
    _run_both(agent, steps=12, B=6, seed=2, state=state, reset_p=0.2)


def test_numpy_hcam_leaves_its_input_state_alone():
    """act and reset_state are pure: they return new leaves where anything changed (copy on write), at chunk
    writes and resets too, so states the actor keeps (truncation values, sequence starts) stay valid."""
    agent = _agent()
    policy = NumpyPolicy(agent, seed=0)
    rng = np.random.default_rng(0)
    s = policy.initial_state(4)
    for t in range(12):
        before = {k: v.clone() for k, v in s.items()}
        out = policy.act(_obs(4, rng), s)
        reset = policy.reset_state(out.state, np.array([t % 3 == 0, False, True, False]))
        for k, v in s.items():
            torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
        s = reset
    assert int(s["count"].max()) >= 2


def test_numpy_hcam_state_plumbing():
    """Leaves the step does not change are passed through (no copy); changed ones are new; NumPy inputs work."""
    agent = _agent(hcam_chunk=3)
    policy = NumpyPolicy(agent, seed=0)
    rng = np.random.default_rng(1)
    s = policy.initial_state(2)
    out = policy.act(_obs(2, rng), s)  # pos 0 -> 1: no chunk written
    assert out.state["mem0"] is s["mem0"] and out.state["key1"] is s["key1"]
    assert out.state["acc0"] is not s["acc0"]
    s2 = policy.act(_obs(2, rng), {k: v.numpy() for k, v in out.state.items()}).state
    assert isinstance(s2["mem0"], torch.Tensor) and np.shares_memory(s2["mem0"].numpy(), out.state["mem0"].numpy())
    cross = NumpyPolicy(_agent(hcam_cross_episode=True), seed=0)
    c = cross.initial_state(2)
    r = cross.reset_state(c, np.array([True, False]))
    assert r["mem0"] is c["mem0"] and r["acc0"] is not c["acc0"]  # across episodes only the window restarts


def test_numpy_hcam_overflow_falls_back_to_shifted_softmaxes():
    """Logits far beyond exp's float32 range (attention weights scaled up): the fast path's sums overflow, the
    kernel runs the step again with shifted softmaxes, and still equals PyTorch's (stable) softmax."""
    agent = _agent(hcam_topk=2)
    with torch.no_grad():
        for layer in agent.core.layers:
            for att in (layer.mem_att, layer.local_att):
                att.q.weight.mul_(60.0)
            layer.wq.weight.mul_(40.0)
    policy = NumpyPolicy(agent, seed=0)
    kernel = policy._core
    calls = []
    real = kernel._step
    kernel._step = lambda n, state, buf, safe: calls.append(safe) or real(n, state, buf, safe)
    rng = np.random.default_rng(0)
    st, sn = agent.initial_state(3), policy.initial_state(3)
    for t in range(10):
        obs = _obs(3, rng)
        ref, out = agent.act(obs, st, greedy=True), policy.act(obs, sn, greedy=True)
        _close(f"logits at {t}", out.logits, ref.logits, tol=1e-4)
        for k in ref.state:
            _close(f"state[{k}] at {t}", out.state[k], ref.state[k], tol=1e-4)
        st, sn = ref.state, out.state
    assert True in calls  # the fallback ran


def test_kernel_with_an_input_projection():
    """A core whose input width differs from hidden_size (``inp`` is a Linear): the kernel against
    HCAMCore.step directly (its output is the final LayerNorm before its scale and shift)."""
    torch.manual_seed(0)
    core = build_core(_cfg(hcam_topk=3), 7)
    assert isinstance(core, HCAMCore) and isinstance(core.inp, torch.nn.Linear)
    _randomise(core, 4)
    kernel = HCAMKernel(core, 7, Workspace({}))
    g, b = kernel.output_affine
    rng = np.random.default_rng(0)
    st = core.random_state(4, rng)
    sn = dict(st)
    for t in range(9):
        x = rng.standard_normal((4, 7)).astype(np.float32)
        kernel.input(4)[:] = x
        y, sn = kernel.step(4, kernel.arrays(sn))
        with torch.no_grad():
            y_ref, st = core.step(torch.from_numpy(x), st)
        _close(f"y at {t}", y * g + b, y_ref)
        for k in st:
            _close(f"state[{k}] at {t}", sn[k], st[k])


def test_the_actor_acts_hcam_through_numpy_and_its_check_catches_a_wrong_kernel():
    cfg = dataclasses.replace(
        ExperimentConfig(model=_cfg()), env=dataclasses.replace(ExperimentConfig().env, name="Recall-3-5")
    )
    for mode in ("auto", "numpy"):
        c = dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, inference=mode))
        assert isinstance(build_acting_policy(c, SPEC, torch.device("cpu"), seed=0), NumpyPolicy)
    policy = NumpyPolicy(build_agent(_cfg(), SPEC), seed=0)
    assert check_numpy_policy(policy, SPEC) is None

    class NoWindowMask(NumpyPolicy):  # a kernel that lets the window read entries not yet written
        def sync(self) -> None:
            super().sync()
            self._core.by_pos[:, : self._core.C] = 0.0

    why = check_numpy_policy(NoWindowMask(build_agent(_cfg(), SPEC), seed=0), SPEC)
    assert why is not None and re.search(r"^(logits|value|state\[)", why), why


def test_numpy_hcam_states_replay_to_the_actors_logits():
    """An env actor acting HCAM through NumPy -> compacted memory in a shard -> the learner's unroll from the
    rebuilt state reproduces the actor's logits (as with the PyTorch path, test_episode_memory.py)."""
    cfg = ExperimentConfig(model=_cfg(hcam_chunk=4))
    cfg = dataclasses.replace(
        cfg,
        env=dataclasses.replace(cfg.env, name="Recall-3-30", num_envs=3),
        sequence=dataclasses.replace(cfg.sequence, length=6, period=6),
        actor=dataclasses.replace(cfg.actor, inference="numpy"),
    ).validate()
    actor = EnvActor(cfg, 0)
    assert isinstance(actor.policy, NumpyPolicy)
    shard = ReplayShard(ReplayConfig(capacity=64, min_size=1, samples_per_insert=0), 0)
    for traj in actor.run(12):
        assert "mem0.new" in traj.core_state
        shard.insert(traj)
    rows, _ = shard.read(shard.keys())
    traj = Trajectory.from_batch_major({k: torch.from_numpy(v) for k, v in rows.items()})
    agent = actor.policy.agent
    T = traj.behaviour_logits.shape[0]
    with torch.no_grad():
        out = agent.unroll({k: v[:T] for k, v in traj.obs.items()}, traj.reset_mask()[:T], traj.core_state)
    torch.testing.assert_close(out.logits, traj.behaviour_logits, atol=1e-3, rtol=0)
    assert int(traj.core_state["count"].max()) > 4  # rows reached the FIFO
    actor.close()


def test_replayed_memory_gives_the_learner_the_actors_query_step_on_a_recall_episode():
    """The recall case end to end: delay longer than the trained sequence, so the cue's chunk is always in the
    stored memory at the query, and a memory that spans the whole episode (the cue is still there when asked).
    NumPy acting -> compacted memory in a shard -> the learner's burn-in then unroll from the rebuilt state
    gives, at every query step, the logits the actor answered with; without the replayed memory they differ."""
    burn, length = 2, 6
    cfg = ExperimentConfig(model=_cfg(hcam_chunk=2, hcam_chunks=8))  # 16 steps of memory, episodes of 13
    cfg = dataclasses.replace(
        cfg,
        env=dataclasses.replace(cfg.env, name="Recall-3-11", num_envs=3),
        sequence=dataclasses.replace(cfg.sequence, burn_in=burn, length=length, period=length),
        actor=dataclasses.replace(cfg.actor, inference="numpy"),
    ).validate()
    actor = EnvActor(cfg, 0)
    agent = actor.policy.agent
    _randomise(agent, 7)  # weights far from the init: the memory read shows in the logits
    actor.policy = NumpyPolicy(agent, seed=0)
    shard = ReplayShard(ReplayConfig(capacity=64, min_size=1, samples_per_insert=0), 0)
    for traj in actor.run(16):
        shard.insert(traj)
    actor.close()
    rows, _ = shard.read(shard.keys())
    traj = Trajectory.from_batch_major({k: torch.from_numpy(v) for k, v in rows.items()})
    T = traj.behaviour_logits.shape[0]
    reset = traj.reset_mask()[:T]

    def learner_logits(state):  # as Learner.step: burn-in without gradient, then the trained part
        with torch.no_grad():
            state = agent.unroll({k: v[:burn] for k, v in traj.obs.items()}, reset[:burn], state).state
            return agent.unroll({k: v[burn:T] for k, v in traj.obs.items()}, reset[burn:T], state).logits

    query = traj.obs["query"][burn:T, :, 0].bool()  # [T - burn, B]
    cue = traj.obs["cue"][:T].sum(-1) > 0  # [T, B]
    for t, b in torch.nonzero(query).tolist():  # the query's cue came before the stored window (13 > 8 steps)
        assert not bool(cue[: burn + t, b].any())
    assert int(query.sum()) >= 4
    got = learner_logits(traj.core_state)
    torch.testing.assert_close(got[query], traj.behaviour_logits[burn:T][query], atol=1e-3, rtol=0)
    wiped = {k: (torch.zeros_like(v) if k.startswith(("mem", "key")) else v) for k, v in traj.core_state.items()}
    off = learner_logits(wiped)
    assert float((off[query] - traj.behaviour_logits[burn:T][query]).abs().amax(-1).min()) > 1e-2


@pytest.mark.parametrize(
    "change,named",
    [
        ("key_bias", r"core\.layers\.1\.mem_att\.k: Linear with a bias"),
        ("query_no_bias", r"core\.layers\.0\.local_att\.q: Linear without a bias"),
        ("activation", r"core\.layers\.0\.ffn\.1 \(GELU\) is not a part"),
        ("extra_part", r"core\.layers\.1\.gate \(Linear\) is not a part"),
        ("own_parameter", r"core\.layers\.0 has its own parameters/buffers \['gain', 'pe', 'pe_local'\]"),
        ("layer_norm", r"core\.ln_out: LayerNorm with elementwise_affine=False"),
    ],
)
def test_a_changed_hcam_part_is_refused_by_name(change, named):
    agent = build_agent(_cfg(), SPEC)
    assert numpy_unsupported(agent) is None
    layers = agent.core.layers
    if change == "key_bias":
        layers[1].mem_att.k = torch.nn.Linear(16, 16)
    elif change == "query_no_bias":
        layers[0].local_att.q = torch.nn.Linear(16, 16, bias=False)
    elif change == "activation":
        layers[0].ffn[1] = torch.nn.GELU()
    elif change == "extra_part":
        layers[1].gate = torch.nn.Linear(16, 16)
    elif change == "own_parameter":
        layers[0].register_parameter("gain", torch.nn.Parameter(torch.ones(1)))
    elif change == "layer_norm":
        agent.core.ln_out = torch.nn.LayerNorm(16, elementwise_affine=False)
    why = numpy_unsupported(agent)
    assert why is not None and re.search(named, why), why
