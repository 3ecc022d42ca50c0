"""Losses vs slow NumPy references: V-trace targets, loss gradients, IS weighting, masks, priorities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distrl.losses import (
    action_log_probs,
    baseline_loss,
    clipped_surrogate_loss,
    entropy,
    entropy_loss,
    kl_categorical,
    kl_loss,
    policy_gradient_loss,
    trust_region_mask,
    vtrace_from_logits,
    vtrace_targets,
)
from distrl.replay.priorities import sequence_priority

# ----------------------------------------------------------------------------------------------------------
# NumPy references (deliberately the direct sum of IMPALA Eq. 1, not the backward recursion under test)
# ----------------------------------------------------------------------------------------------------------


def _clip(x: np.ndarray, c: float | None) -> np.ndarray:
    return x if c is None else np.minimum(x, c)


def np_vtrace(log_rhos, discounts, rewards, values, bootstrap, clip_rho, clip_c, clip_pg_rho):
    """v_s = V(x_s) + sum_{t=s}^{T-1} (prod_{i=s}^{t-1} gamma_i c_i) delta_t V, element by element."""
    t_len, b_len = log_rhos.shape
    rhos = np.exp(log_rhos)
    rho_bar, c, rho_pg = _clip(rhos, clip_rho), _clip(rhos, clip_c), _clip(rhos, clip_pg_rho)
    v_ext = np.concatenate([values, bootstrap[None]], 0)  # V(x_0..x_T)
    vs = np.zeros((t_len, b_len))
    for b in range(b_len):
        for s in range(t_len):
            total = values[s, b]
            for t in range(s, t_len):
                coef = 1.0
                for i in range(s, t):
                    coef *= discounts[i, b] * c[i, b]
                delta = rho_bar[t, b] * (rewards[t, b] + discounts[t, b] * v_ext[t + 1, b] - values[t, b])
                total += coef * delta
            vs[s, b] = total
    vs_ext = np.concatenate([vs, bootstrap[None]], 0)
    adv = rho_pg * (rewards + discounts * vs_ext[1:] - values)
    return vs, adv


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _random_inputs(rng: np.random.Generator, t_len: int, b_len: int):
    log_rhos = rng.normal(0.0, 1.0, (t_len, b_len))  # ratios both above and below 1
    discounts = 0.95 * (rng.random((t_len, b_len)) > 0.15)  # some episode ends
    rewards = rng.normal(0.0, 1.0, (t_len, b_len))
    values = rng.normal(0.0, 1.0, (t_len, b_len))
    bootstrap = rng.normal(0.0, 1.0, (b_len,))
    return log_rhos, discounts, rewards, values, bootstrap


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------
# V-trace
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t_len,b_len", [(1, 1), (5, 3), (17, 4)])
@pytest.mark.parametrize(
    "clips", [(1.0, 1.0, 1.0), (0.5, 0.9, 2.0), (2.0, 0.3, 0.7), (None, None, None)]
)
def test_vtrace_targets_match_numpy_reference(t_len, b_len, clips):
    rng = np.random.default_rng(t_len * 100 + b_len)
    inputs = _random_inputs(rng, t_len, b_len)
    want_vs, want_adv = np_vtrace(*inputs, *clips)
    out = vtrace_targets(*(_t(x) for x in inputs), *clips)
    np.testing.assert_allclose(out.vs.numpy(), want_vs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.pg_advantages.numpy(), want_adv, rtol=1e-10, atol=1e-10)


def test_vtrace_without_pg_rho_leaves_the_ratio_out_of_the_advantage():
    """pg_rho=False (for the clipped surrogate): the same vs, and A_s = r_s + gamma_s v_{s+1} - V(x_s)."""
    inputs = _random_inputs(np.random.default_rng(7), 9, 3)
    want_vs, want_adv = np_vtrace(*inputs, 1.0, 1.0, 1.0)
    out = vtrace_targets(*(_t(x) for x in inputs), 1.0, 1.0, 1.0, pg_rho=False)
    np.testing.assert_allclose(out.vs.numpy(), want_vs, rtol=1e-10, atol=1e-10)
    log_rhos, discounts, rewards, values, bootstrap = inputs
    vs_tp1 = np.concatenate([want_vs[1:], bootstrap[None]], 0)
    np.testing.assert_allclose(out.pg_advantages.numpy(), rewards + discounts * vs_tp1 - values, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out.pg_advantages.numpy() * np.minimum(np.exp(log_rhos), 1.0), want_adv, atol=1e-10)


def test_vtrace_float32_close_to_float64():
    rng = np.random.default_rng(1)
    inputs = _random_inputs(rng, 40, 8)
    ref = vtrace_targets(*(_t(x) for x in inputs))
    out = vtrace_targets(*(torch.tensor(x, dtype=torch.float32) for x in inputs))
    assert out.vs.dtype == torch.float32
    np.testing.assert_allclose(out.vs.numpy(), ref.vs.numpy(), rtol=1e-4, atol=1e-4)


def test_vtrace_on_policy_is_n_step_bootstrapped_return():
    """rho = c = 1 (log_rhos = 0): v_s = sum_{t>=s} (prod gamma) r_t + (prod gamma) V(x_T)."""
    rng = np.random.default_rng(2)
    t_len, b_len = 7, 3
    _, discounts, rewards, values, bootstrap = _random_inputs(rng, t_len, b_len)
    want = np.zeros((t_len, b_len))
    for s in range(t_len):
        ret, disc = np.zeros(b_len), np.ones(b_len)
        for t in range(s, t_len):
            ret += disc * rewards[t]
            disc = disc * discounts[t]
        want[s] = ret + disc * bootstrap
    out = vtrace_targets(_t(np.zeros((t_len, b_len))), _t(discounts), _t(rewards), _t(values), _t(bootstrap))
    np.testing.assert_allclose(out.vs.numpy(), want, rtol=1e-10, atol=1e-10)
    # On-policy advantage = one-step target with the n-step return of the next state.
    want_next = np.concatenate([want[1:], bootstrap[None]], 0)
    np.testing.assert_allclose(
        out.pg_advantages.numpy(), rewards + discounts * want_next - values, rtol=1e-10, atol=1e-10
    )


def test_vtrace_from_logits_matches_importance_weight_version():
    rng = np.random.default_rng(3)
    t_len, b_len, a = 6, 4, 5
    mu = rng.normal(size=(t_len, b_len, a))
    pi = rng.normal(size=(t_len, b_len, a))
    actions = rng.integers(0, a, (t_len, b_len))
    _, discounts, rewards, values, bootstrap = _random_inputs(rng, t_len, b_len)
    lp_pi = np.take_along_axis(np_log_softmax(pi), actions[..., None], -1)[..., 0]
    lp_mu = np.take_along_axis(np_log_softmax(mu), actions[..., None], -1)[..., 0]
    want_vs, want_adv = np_vtrace(lp_pi - lp_mu, discounts, rewards, values, bootstrap, 1.0, 1.0, 1.0)
    pi_t = _t(pi).requires_grad_(True)
    out = vtrace_from_logits(
        _t(mu), pi_t, torch.tensor(actions), _t(discounts), _t(rewards), _t(values), _t(bootstrap)
    )
    np.testing.assert_allclose(out.vs.numpy(), want_vs, atol=1e-10)
    np.testing.assert_allclose(out.pg_advantages.numpy(), want_adv, atol=1e-10)
    np.testing.assert_allclose(out.log_rhos.numpy(), lp_pi - lp_mu, atol=1e-10)
    np.testing.assert_allclose(out.target_action_log_probs.detach().numpy(), lp_pi, atol=1e-10)
    assert not out.vs.requires_grad and not out.pg_advantages.requires_grad and not out.log_rhos.requires_grad
    assert out.target_action_log_probs.requires_grad


def test_vtrace_targets_carry_no_gradient():
    rng = np.random.default_rng(4)
    inputs = [_t(x).requires_grad_(True) for x in _random_inputs(rng, 4, 2)]
    out = vtrace_targets(*inputs)
    assert not out.vs.requires_grad and not out.pg_advantages.requires_grad


def test_vtrace_rejects_bad_shapes():
    rng = np.random.default_rng(5)
    log_rhos, discounts, rewards, values, bootstrap = (_t(x) for x in _random_inputs(rng, 4, 3))
    with pytest.raises(ValueError, match="rewards"):
        vtrace_targets(log_rhos, discounts, rewards[:3], values, bootstrap)
    with pytest.raises(ValueError, match="bootstrap_value"):
        vtrace_targets(log_rhos, discounts, rewards, values, bootstrap[:2])


# ----------------------------------------------------------------------------------------------------------
# Loss terms: values and gradients vs analytic NumPy
# ----------------------------------------------------------------------------------------------------------


def _case(seed: int, t_len: int = 5, b_len: int = 4, a: int = 6):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(t_len, b_len, a)),  # logits
        rng.integers(0, a, (t_len, b_len)),  # actions
        rng.normal(size=(t_len, b_len)),  # advantages
        rng.uniform(0.1, 1.0, (b_len,)),  # IS weights [B]
        rng.random((t_len, b_len)) > 0.3,  # mask
    )


def test_action_log_probs_and_entropy_match_numpy():
    logits, actions, *_ = _case(10)
    lp = np_log_softmax(logits)
    got = action_log_probs(_t(logits), torch.tensor(actions)).numpy()
    np.testing.assert_allclose(got, np.take_along_axis(lp, actions[..., None], -1)[..., 0], atol=1e-12)
    np.testing.assert_allclose(entropy(_t(logits)).numpy(), -(np.exp(lp) * lp).sum(-1), atol=1e-12)


def test_policy_gradient_loss_value_and_gradient():
    logits, actions, adv, w, mask = _case(11)
    b_len = logits.shape[1]
    z = _t(logits).requires_grad_(True)
    adv_t = _t(adv).requires_grad_(True)
    loss = policy_gradient_loss(z, torch.tensor(actions), adv_t, _t(w), torch.tensor(mask))
    loss.backward()
    lp = np_log_softmax(logits)
    wm = w[None, :] * mask
    logp_a = np.take_along_axis(lp, actions[..., None], -1)[..., 0]
    np.testing.assert_allclose(loss.item(), -(wm * adv * logp_a).sum() / b_len, rtol=1e-12)
    # d/dz of -w m A log softmax(z)[a] = -w m A (onehot(a) - softmax(z)), / B
    onehot = np.eye(logits.shape[-1])[actions]
    want = -(wm * adv)[..., None] * (onehot - np.exp(lp)) / b_len
    np.testing.assert_allclose(z.grad.numpy(), want, atol=1e-12)
    assert adv_t.grad is None, "advantages must be treated as constants"


@pytest.mark.parametrize("clip", [0.1, 0.5])
def test_clipped_surrogate_loss_value_and_gradient(clip):
    logits, actions, adv, w, mask = _case(14)
    b_len, n_act = logits.shape[1], logits.shape[-1]
    rng = np.random.default_rng(15)
    # behaviour logits near the target's, so ratios fall both inside and outside the band [1/(1+eps), 1+eps]
    mu_logits = logits + rng.normal(0.0, 0.3, logits.shape)
    z = _t(logits).requires_grad_(True)
    mu = _t(mu_logits).requires_grad_(True)
    loss = clipped_surrogate_loss(z, mu, torch.tensor(actions), _t(adv), clip, _t(w), torch.tensor(mask))
    loss.backward()
    lp, lmu = np_log_softmax(logits), np_log_softmax(mu_logits)
    take = lambda x: np.take_along_axis(x, actions[..., None], -1)[..., 0]  # noqa: E731
    ratio = np.exp(take(lp) - take(lmu))
    lo, hi = 1.0 / (1.0 + clip), 1.0 + clip
    assert ((ratio < lo) | (ratio > hi))[mask].any() and ((ratio >= lo) & (ratio <= hi))[mask].any()
    wm = w[None, :] * mask
    surr = np.minimum(ratio * adv, np.clip(ratio, lo, hi) * adv)
    np.testing.assert_allclose(loss.item(), -(wm * surr).sum() / b_len, rtol=1e-12)
    # The gradient is rho A grad log pi(a) where the unclipped term is the minimum, else 0.
    active = ratio * adv <= np.clip(ratio, lo, hi) * adv
    onehot = np.eye(n_act)[actions]
    want = -(wm * active * ratio * adv)[..., None] * (onehot - np.exp(lp)) / b_len
    np.testing.assert_allclose(z.grad.numpy(), want, atol=1e-12)
    assert mu.grad is None or not mu.grad.any(), "the behaviour policy must get no gradient"


def test_clipped_surrogate_is_the_policy_gradient_on_policy():
    """mu = pi: ratio 1 everywhere, so the gradient equals the plain policy gradient's (the values differ:
    -A against -A log pi)."""
    logits, actions, adv, w, mask = _case(16)
    grads = []
    for fn in (lambda z: policy_gradient_loss(z, torch.tensor(actions), _t(adv), _t(w), torch.tensor(mask)),
               lambda z: clipped_surrogate_loss(z, _t(logits), torch.tensor(actions), _t(adv), 0.2, _t(w),
                                                torch.tensor(mask))):
        z = _t(logits).requires_grad_(True)
        loss = fn(z)
        loss.backward()
        grads.append(z.grad.numpy())
    assert np.abs(grads[0]).max() > 0
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-12)


def test_clipped_surrogate_masked_steps_cannot_overflow():
    """A padding step with an absurd log-ratio (mu(a) ~ 0) contributes nothing, and no inf/NaN."""
    logits, actions, adv, w, mask = _case(17)
    mu = logits.copy()
    mu[0, 0, actions[0, 0]] = -1e4
    mask[0, 0] = False
    z = _t(logits).requires_grad_(True)
    loss = clipped_surrogate_loss(z, _t(mu), torch.tensor(actions), _t(adv), 0.1, _t(w), torch.tensor(mask))
    loss.backward()
    assert np.isfinite(loss.item()) and np.isfinite(z.grad.numpy()).all()
    with pytest.raises(ValueError, match="clip must be > 0"):
        clipped_surrogate_loss(z, _t(mu), torch.tensor(actions), _t(adv), 0.0)


def test_kl_loss_value_and_gradient_into_pi_only():
    logits, _, _, w, mask = _case(18)
    mu_logits = logits + np.random.default_rng(19).normal(0.0, 0.5, logits.shape)
    b_len = logits.shape[1]
    z, mu = _t(logits).requires_grad_(True), _t(mu_logits).requires_grad_(True)
    loss = kl_loss(mu, z, _t(w), torch.tensor(mask))
    loss.backward()
    lp, lmu = np_log_softmax(logits), np_log_softmax(mu_logits)
    wm = w[None, :] * mask
    np.testing.assert_allclose(loss.item(), (wm * (np.exp(lmu) * (lmu - lp)).sum(-1)).sum() / b_len, rtol=1e-12)
    # d/dz KL(mu || softmax(z)) = softmax(z) - mu
    np.testing.assert_allclose(z.grad.numpy(), wm[..., None] * (np.exp(lp) - np.exp(lmu)) / b_len, atol=1e-12)
    assert mu.grad is None or not mu.grad.any(), "the behaviour policy must get no gradient"


def test_baseline_loss_value_and_gradient():
    _, _, _, w, mask = _case(12)
    rng = np.random.default_rng(12)
    vs, values = rng.normal(size=mask.shape), rng.normal(size=mask.shape)
    b_len = mask.shape[1]
    v = _t(values).requires_grad_(True)
    vs_t = _t(vs).requires_grad_(True)
    loss = baseline_loss(vs_t, v, _t(w), torch.tensor(mask))
    loss.backward()
    wm = w[None, :] * mask
    np.testing.assert_allclose(loss.item(), (wm * 0.5 * (vs - values) ** 2).sum() / b_len, rtol=1e-12)
    np.testing.assert_allclose(v.grad.numpy(), -wm * (vs - values) / b_len, atol=1e-12)
    assert vs_t.grad is None, "targets must be detached"


def test_entropy_loss_value_and_gradient():
    logits, _, _, w, mask = _case(13)
    b_len = logits.shape[1]
    z = _t(logits).requires_grad_(True)
    loss = entropy_loss(z, _t(w), torch.tensor(mask))
    loss.backward()
    lp = np_log_softmax(logits)
    p = np.exp(lp)
    neg_h = (p * lp).sum(-1)
    wm = w[None, :] * mask
    np.testing.assert_allclose(loss.item(), (wm * neg_h).sum() / b_len, rtol=1e-12)
    # d/dz_j sum_a p_a log p_a = p_j (log p_j - sum_a p_a log p_a)
    want = wm[..., None] * p * (lp - neg_h[..., None]) / b_len
    np.testing.assert_allclose(z.grad.numpy(), want, atol=1e-12)


@pytest.mark.parametrize("term", ["pg", "baseline", "entropy"])
def test_is_weights_scale_gradients_per_sequence(term):
    logits, actions, adv, w, _ = _case(14)

    def grad(weights):
        z = _t(logits).requires_grad_(True)
        v = _t(adv).requires_grad_(True)  # reused as values for the baseline term
        if term == "pg":
            loss, leaf = policy_gradient_loss(z, torch.tensor(actions), _t(adv), weights), z
        elif term == "baseline":
            loss, leaf = baseline_loss(torch.zeros_like(v), v, weights), v
        else:
            loss, leaf = entropy_loss(z, weights), z
        loss.backward()
        return leaf.grad.numpy()

    g1, gw = grad(None), grad(_t(w))
    scale = w.reshape(1, -1, *([1] * (g1.ndim - 2)))
    np.testing.assert_allclose(gw, g1 * scale, atol=1e-12)
    # [T, B] weights work too and equal the broadcast [B] version.
    np.testing.assert_allclose(grad(_t(np.broadcast_to(w, adv.shape).copy())), gw, atol=1e-12)


@pytest.mark.parametrize("term", ["pg", "baseline", "entropy"])
def test_mask_zeroes_contributions(term):
    logits, actions, adv, _, mask = _case(15)
    logits_bad = logits.copy()
    logits_bad[~mask] = 1e3  # garbage in masked steps must not matter
    adv_bad = np.where(mask, adv, np.inf)

    def run(lg, ad, m):
        z = _t(lg).requires_grad_(True)
        v = _t(ad).requires_grad_(True)
        if term == "pg":
            loss, leaf = policy_gradient_loss(z, torch.tensor(actions), _t(ad), None, m), z
        elif term == "baseline":
            loss, leaf = baseline_loss(torch.zeros_like(v), v, None, m), v
        else:
            loss, leaf = entropy_loss(z, None, m), z
        loss.backward()
        return loss.item(), leaf.grad.numpy()

    loss_m, g_m = run(logits_bad, adv_bad, torch.tensor(mask))
    assert np.isfinite(loss_m)
    assert np.all(g_m[~mask] == 0)
    # Same loss as zeroing the masked steps by hand (clean inputs, float mask).
    clean_adv = np.where(mask, adv, 0.0)
    loss_ref, g_ref = run(logits, clean_adv, torch.tensor(mask, dtype=torch.float64))
    np.testing.assert_allclose(loss_m, loss_ref, rtol=1e-12)
    np.testing.assert_allclose(g_m[mask], g_ref[mask], atol=1e-12)


def test_loss_terms_reject_bad_weights_and_mask():
    logits, actions, adv, w, mask = _case(16)
    with pytest.raises(ValueError, match="weights"):
        policy_gradient_loss(_t(logits), torch.tensor(actions), _t(adv), _t(w[:2]))
    with pytest.raises(ValueError, match="mask"):
        entropy_loss(_t(logits), None, torch.tensor(mask[:2]))


# ----------------------------------------------------------------------------------------------------------
# KL, trust mask, priorities
# ----------------------------------------------------------------------------------------------------------


def test_kl_categorical_matches_numpy_and_trust_mask():
    rng = np.random.default_rng(20)
    mu, pi = rng.normal(size=(4, 3, 5)), rng.normal(size=(4, 3, 5))
    lmu, lpi = np_log_softmax(mu), np_log_softmax(pi)
    want = (np.exp(lmu) * (lmu - lpi)).sum(-1)
    got = kl_categorical(_t(mu), _t(pi)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert np.all(got >= 0)
    np.testing.assert_allclose(kl_categorical(_t(mu), _t(mu + 3.0)).numpy(), 0.0, atol=1e-12)
    kappa = float(np.median(want))
    np.testing.assert_array_equal(trust_region_mask(_t(mu), _t(pi), kappa).numpy(), want <= kappa)
    assert trust_region_mask(_t(mu), _t(pi), 0.0).all()


@pytest.mark.parametrize("eta", [0.0, 0.9, 1.0])
def test_sequence_priority_matches_numpy(eta):
    rng = np.random.default_rng(21)
    td = rng.normal(size=(8, 5))
    valid = rng.random((8, 5)) > 0.3
    valid[:, 3] = False  # a sequence with no valid step
    td[~valid] = 1e6  # invalid steps must not leak into max or mean
    want = np.zeros(5)
    for b in range(5):
        x = np.abs(td[valid[:, b], b])
        if x.size:
            want[b] = eta * x.max() + (1 - eta) * x.mean()
    got = sequence_priority(torch.tensor(td), torch.tensor(valid), eta).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[3] == 0.0
    all_valid = sequence_priority(torch.tensor(td[:, :1]), torch.ones(8, 1, dtype=torch.bool), eta).item()
    x = np.abs(td[:, 0])
    np.testing.assert_allclose(all_valid, eta * x.max() + (1 - eta) * x.mean(), rtol=1e-6)
