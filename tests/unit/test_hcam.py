"""HCAMCore: step == sequence (resets, FIFO wrap, cross-episode), the read against a two-level softmax reference,
top-k selection, causal and episode masks, reset semantics, gradients only through the query path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distrl.config import ConfigError, ExperimentConfig, ModelConfig
from distrl.models import build_agent
from distrl.models.cores import CORES, build_core
from distrl.models.hcam import HCAMCore, sinusoid_positions
from distrl.models.numpy_act import numpy_unsupported


def _cfg(**kw) -> ModelConfig:
    base = dict(core="hcam", hidden_size=16, num_core_layers=2, hcam_chunk=3, hcam_chunks=4, hcam_topk=2,
                hcam_heads=2)
    base.update(kw)
    return ModelConfig(**base)


def _core(**kw) -> HCAMCore:
    torch.manual_seed(0)
    core = build_core(_cfg(**kw), 16)
    assert isinstance(core, HCAMCore)
    return core


def _steps(core: HCAMCore, x, reset, state):
    ys = []
    for t in range(x.shape[0]):
        state = core.reset(state, reset[t])
        y, state = core.step(x[t], state)
        ys.append(y)
    return torch.stack(ys), state


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("topk", [1, 2, 4, 9])
def test_sequence_equals_steps_with_resets_and_fifo_wrap(cross, topk):
    core = _core(hcam_cross_episode=cross, hcam_topk=topk)
    T, B = 29, 4
    g = torch.Generator().manual_seed(1)
    # warm up: a memory that already wrapped (7 chunks > M = 4) and a partial chunk
    _, s0 = core(torch.randn(22, B, 16, generator=g), torch.zeros(22, B, dtype=torch.bool), core.initial_state(B))
    assert (s0["count"] == 7).all() and (s0["pos"] == 1).all()
    x = torch.randn(T, B, 16, generator=g)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[0, 1] = True          # a row that starts an episode at step 0
    reset[5, 2] = reset[17, 2] = True
    reset[11, 3] = True
    with torch.no_grad():
        y, s_seq = core(x, reset, s0)
        y_steps, s_steps = _steps(core, x, reset, s0)
    torch.testing.assert_close(y, y_steps, atol=1e-5, rtol=0)
    assert set(s_seq) == set(s_steps)
    for k in s_seq:
        torch.testing.assert_close(s_seq[k].float(), s_steps[k].float(), atol=1e-5, rtol=0, msg=k)


@pytest.mark.parametrize("cross", [False, True])
def test_sequence_equals_steps_when_chunk_summaries_tie(cross):
    """Symbolic inputs make equal chunk summaries (the same steps in another order), so top-k meets exact ties;
    both paths (and NumPy, test_numpy_act_hcam.py) must pick the same chunks: the newer one (HCAMLayer.read)."""
    core = _core(hcam_cross_episode=cross, hcam_topk=2, hcam_chunk=2, hcam_chunks=6)
    with torch.no_grad():  # weights far from the init, so a different choice shows in the outputs
        g = torch.Generator().manual_seed(3)
        for p in core.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 1.0))
    T, B = 40, 6
    a, b = torch.randn(2, 16, generator=g)
    pick = torch.randint(0, 2, (T, B), generator=g).bool()
    x = torch.where(pick.unsqueeze(-1), a, b)  # [T, B, 16]: two distinct inputs only
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[23, 1] = True
    s0 = core.initial_state(B)
    with torch.no_grad():
        _, s_half = core(x[:17], reset[:17], s0)  # the stored-memory case too: a sequence that starts mid-episode
        y, _ = core(x[17:], reset[17:], s_half)
        y_steps, _ = _steps(core, x, reset, s0)
    torch.testing.assert_close(y, y_steps[17:], atol=1e-5, rtol=0)


def test_sequence_split_equals_whole():
    core = _core()
    T, B = 24, 3
    x = torch.randn(T, B, 16)
    reset = torch.rand(T, B) < 0.1
    with torch.no_grad():
        y, s = core(x, reset, core.initial_state(B))
        y1, s1 = core(x[:10], reset[:10], core.initial_state(B))
        y2, s2 = core(x[10:], reset[10:], s1)
    torch.testing.assert_close(torch.cat([y1, y2]), y, atol=1e-5, rtol=0)
    for k in s:
        torch.testing.assert_close(s2[k].float(), s[k].float(), atol=1e-5, rtol=0)


def _reference_read(layer, z, keys, contents, mask):
    """Two-level softmax over *all* visible chunks (k = M): relevance softmax over chunk summaries, standard
    multi-head attention (explicit projections, no absorption) inside each chunk with positions. z [B, D]."""
    B, D = z.shape
    H = layer.mem_att.h
    dh = D // H
    att = layer.mem_att
    out = torch.zeros(B, D)
    for b in range(B):
        vis = [m for m in range(keys.shape[1]) if mask[b, m]]
        if not vis:
            out[b] = 0.0
            continue
        q = layer.wq.weight @ z[b]
        rel = torch.stack([q @ (layer.wk.weight @ keys[b, m]) for m in vis]) / math.sqrt(D)
        w = torch.softmax(rel, 0)
        acc = torch.zeros(D)
        for wj, m in zip(w, vis):
            kv = contents[b, m] + layer.pe  # [C, D]
            qh = (att.q.weight @ z[b] + att.q.bias).view(H, dh)
            kh = (kv @ att.k.weight.T).view(-1, H, dh)
            vh = (kv @ att.v.weight.T).view(-1, H, dh)
            heads = []
            for h in range(H):
                a = torch.softmax(kh[:, h] @ qh[h] / math.sqrt(dh), 0)
                heads.append(a @ vh[:, h])
            acc = acc + wj * (att.out.weight @ torch.cat(heads) + att.out.bias)
        out[b] = acc
    return out


def test_read_with_k_equal_m_matches_two_level_softmax_reference():
    core = _core(hcam_chunks=5, hcam_topk=5, hcam_chunk=4, num_core_layers=1)
    layer = core.layers[0]
    B, M, C, D = 3, 5, 4, 16
    z = torch.randn(B, D)
    contents = torch.randn(B, M, C, D)
    keys = contents.mean(2)
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[1, 2:] = False
    mask[2] = False  # nothing visible: the read is zero
    with torch.no_grad():
        got = layer.read(z[None], keys, contents, mask[None])[0]
        ref = _reference_read(layer, z, keys, contents, mask)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert got[2].abs().max() == 0


def test_topk_reads_only_the_most_relevant_chunks():
    """With k = 2, changing a chunk outside the top 2 (by relevance) does not change the read; changing one in
    the top 2 does."""
    core = _core(hcam_chunks=6, hcam_topk=2, hcam_chunk=3, num_core_layers=1)
    layer = core.layers[0]
    B, M, C, D = 1, 6, 3, 16
    z = torch.randn(B, D)
    contents = torch.randn(B, M, C, D)
    keys = contents.mean(2)
    mask = torch.ones(1, B, M, dtype=torch.bool)
    with torch.no_grad():
        rel = (layer.wq(z) @ layer.wk.weight) @ keys[0].T  # [1, M]
        order = rel[0].argsort(descending=True)
        base = layer.read(z[None], keys, contents, mask)
        c2 = contents.clone()
        c2[0, order[-1]] += 5.0  # least relevant: its key is unchanged, so it stays out of the top 2
        same = layer.read(z[None], keys, c2, mask)
        c3 = contents.clone()
        c3[0, order[0]] += 5.0
        diff = layer.read(z[None], keys, c3, mask)
        # masking the most relevant chunk moves the selection to the next two
        mask2 = mask.clone()
        mask2[0, 0, order[0]] = False
        ref = _reference_read_topk(layer, z, keys, contents, mask2[0], 2)
        got = layer.read(z[None], keys, contents, mask2)[0]
    torch.testing.assert_close(same, base)
    assert (diff - base).abs().max() > 1e-3
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def _reference_read_topk(layer, z, keys, contents, mask, k):
    rel = (layer.wq(z) @ layer.wk.weight) @ keys[0].T
    rel = rel.masked_fill(~mask, -float("inf"))
    keep = rel[0].topk(k).indices
    m2 = torch.zeros_like(mask)
    m2[0, keep] = True
    return _reference_read(layer, z, keys, contents, m2 & mask)


def test_causal_mask_a_query_never_sees_later_steps():
    """Outputs at steps < t do not change when inputs from step t on change (chunks written later included)."""
    core = _core()
    T, B = 20, 2
    x = torch.randn(T, B, 16)
    reset = torch.zeros(T, B, dtype=torch.bool)
    s0 = core.initial_state(B)
    with torch.no_grad():
        y, _ = core(x, reset, s0)
        for t in (4, 9, 15):
            x2 = x.clone()
            x2[t:] = torch.randn(T - t, B, 16)
            y2, _ = core(x2, reset, s0)
            torch.testing.assert_close(y2[:t], y[:t], atol=1e-6, rtol=0)
            assert (y2[t] - y[t]).abs().max() > 1e-4


def test_memory_of_earlier_steps_is_read_across_sequences():
    """A chunk written in an earlier sequence changes the output now (it is in the state), unless reset."""
    core = _core(hcam_chunks=8, hcam_topk=8)
    B = 2
    xa, xb = torch.randn(9, B, 16), torch.randn(9, B, 16)
    probe = torch.randn(1, B, 16)
    no = torch.zeros(9, B, dtype=torch.bool)
    with torch.no_grad():
        _, sa = core(xa, no, core.initial_state(B))
        _, sb = core(xb, no, core.initial_state(B))
        assert (sa["count"] == 3).all() and (sa["pos"] == 0).all()
        ya, _ = core(probe, torch.zeros(1, B, dtype=torch.bool), sa)
        yb, _ = core(probe, torch.zeros(1, B, dtype=torch.bool), sb)
        assert (ya - yb).abs().max() > 1e-3
        ra, _ = core(probe, torch.ones(1, B, dtype=torch.bool), sa)
        rb, _ = core(probe, torch.ones(1, B, dtype=torch.bool), sb)
        torch.testing.assert_close(ra, rb)


def test_reset_semantics_clear_or_keep_across_episodes():
    B = 3
    x = torch.randn(10, B, 16)
    no = torch.zeros(10, B, dtype=torch.bool)
    mask = torch.tensor([True, False, True])
    core = _core()
    with torch.no_grad():
        _, s = core(x, no, core.initial_state(B))
    r = core.reset(s, mask)
    init = core.initial_state(B)
    for k in s:
        torch.testing.assert_close(r[k][mask], init[k][mask])
        torch.testing.assert_close(r[k][~mask], s[k][~mask])
    cross = _core(hcam_cross_episode=True)
    with torch.no_grad():
        _, s = cross(x, no, cross.initial_state(B))
    r = cross.reset(s, mask)
    for k in s:
        if k.startswith(("mem", "key")) or k == "count":  # stored chunks stay readable
            torch.testing.assert_close(r[k], s[k])
        else:  # the chunk being filled is dropped
            assert (r[k][mask] == 0).all(), k
            torch.testing.assert_close(r[k][~mask], s[k][~mask])
    with pytest.raises(ValueError, match="reset mask"):
        core.reset(s, torch.ones(2, dtype=torch.bool))


def test_cross_episode_memory_reads_the_previous_episode():
    core = _core(hcam_cross_episode=True, hcam_chunks=8, hcam_topk=8)
    plain = _core(hcam_chunks=8, hcam_topk=8)
    B = 1
    x1, x2 = torch.randn(9, B, 16), torch.randn(9, B, 16)
    probe = torch.randn(1, B, 16)
    start = torch.ones(1, B, dtype=torch.bool)
    no = torch.zeros(9, B, dtype=torch.bool)
    with torch.no_grad():
        outs = {}
        for name, c in (("cross", core), ("plain", plain)):
            _, s1 = c(x1, no, c.initial_state(B))
            _, s2 = c(x2, no, c.initial_state(B))
            outs[name] = (c(probe, start, s1)[0], c(probe, start, s2)[0])
    assert (outs["cross"][0] - outs["cross"][1]).abs().max() > 1e-3  # the old episode's chunks are read
    torch.testing.assert_close(outs["plain"][0], outs["plain"][1])  # cleared


def test_gradients_reach_the_query_path_but_not_stored_memory():
    core = _core()
    B, T = 2, 12
    with torch.no_grad():
        _, s0 = core(torch.randn(14, B, 16), torch.zeros(14, B, dtype=torch.bool), core.initial_state(B))
    s0 = {k: (v.clone().requires_grad_(True) if v.is_floating_point() else v) for k, v in s0.items()}
    x = torch.randn(T, B, 16, requires_grad=True)
    y, s1 = core(x, torch.zeros(T, B, dtype=torch.bool), s0)
    y.square().sum().backward()
    for i in range(core.L):
        for k in (f"mem{i}", f"key{i}"):
            assert s0[k].grad is None or s0[k].grad.abs().max() == 0, k
        lay = core.layers[i]
        for p in (lay.wq.weight, lay.wk.weight, lay.mem_att.q.weight, lay.mem_att.k.weight, lay.mem_att.v.weight,
                  lay.local_att.q.weight):
            assert p.grad is not None and p.grad.abs().max() > 0
    assert x.grad is not None and x.grad.abs().max() > 0
    assert all(not v.requires_grad for v in s1.values())  # the returned state is stop-gradient


def test_sinusoid_positions_newest_is_position_zero():
    pe = sinusoid_positions(5, 8)
    assert pe.shape == (5, 8)
    torch.testing.assert_close(pe[-1], torch.tensor([0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float32))
    assert np.unique(pe.numpy().round(5), axis=0).shape[0] == 5


def test_bad_input_and_config_are_refused():
    core = _core()
    with pytest.raises(ValueError, match=r"\[T, B, F\]"):
        core(torch.randn(3, 16), torch.zeros(3, dtype=torch.bool), core.initial_state(1))
    with pytest.raises(KeyError, match="state keys"):
        core.step(torch.randn(2, 16), {"h": torch.zeros(2, 1)})
    with pytest.raises(ConfigError, match="hcam_heads"):
        ExperimentConfig(model=_cfg(hidden_size=10, hcam_heads=4)).validate()
    ExperimentConfig(model=_cfg()).validate()
    assert "hcam" in CORES


def test_agent_with_hcam_acts_like_it_unrolls_and_the_numpy_path_covers_it():
    """(The NumPy acting path itself is tested against Agent.act in test_numpy_act_hcam.py.)"""
    from distrl.envs.memory_tasks import RecallEnv

    spec = RecallEnv.make_spec("Recall-3-5", 3)
    torch.manual_seed(0)
    agent = build_agent(_cfg(encoder="mlp"), spec)
    assert numpy_unsupported(agent) is None
    lstm = build_agent(ModelConfig(encoder="mlp", hidden_size=16), spec)
    assert numpy_unsupported(lstm) is None  # the hcam_* options do not block other cores
    env = RecallEnv(3, 5, seed=0)
    obs, _ = env.reset()
    B = 1
    s = agent.initial_state(B)
    s0 = s
    logits, seq = [], []
    for _ in range(7):
        o = {k: v[None] for k, v in obs.items()}
        out = agent.act(o, s)
        logits.append(out.logits)
        seq.append(o)
        s = out.state
        obs, *_ = env.step(int(out.action[0]))
    obs_seq = {k: torch.from_numpy(np.stack([o[k] for o in seq])) for k in seq[0]}
    res = agent.unroll(obs_seq, torch.zeros(7, B, dtype=torch.bool), s0)
    torch.testing.assert_close(res.logits, torch.stack(logits), atol=1e-5, rtol=0)


def test_random_state_is_a_state_acting_can_reach():
    """HCAMCore.random_state (the NumPy path's start-up check starts from it): counters in range, rings filled
    up to the count (wrapped ones full), zeros elsewhere, keys the chunk means; step and sequence accept it."""
    core = _core()
    s = core.random_state(64, np.random.default_rng(0))
    C, M = core.C, core.M
    assert set(s) == set(core.initial_state(1))
    assert s["pos"].dtype == torch.int64 and 0 <= int(s["pos"].min()) and int(s["pos"].max()) < C
    assert int(s["count"].min()) == 0 and int(s["count"].max()) > M
    for b in range(64):
        n = min(int(s["count"][b]), M)
        assert not s["mem0"][b, n:].any() and (n == 0 or bool(s["mem0"][b, :n].abs().min() > 0))
        assert not s["acc1"][b, int(s["pos"][b]):].any()
    torch.testing.assert_close(s["key1"], s["mem1"].mean(dim=2))
    with torch.no_grad():
        y, _ = core(torch.randn(3, 64, 16), torch.zeros(3, 64, dtype=torch.bool), s)
        y1, _ = core.step(torch.randn(64, 16), s)
    assert torch.isfinite(y).all() and torch.isfinite(y1).all()
