"""Flow-matching schedule, noising, loss and Euler stepping."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stp_jax.diffusion import flow


def test_sampling_sigmas_match_formula():
    s = flow.sampling_sigmas(4, shift=5.0)
    base = np.array([1.0, 0.75, 0.5, 0.25])
    want = 5 * base / (1 + 4 * base)  # [1, 0.9375, 0.8333, 0.625]
    np.testing.assert_allclose(s[:-1], want, rtol=1e-6)
    assert s[-1] == 0.0 and s.shape == (5,)
    with pytest.raises(ValueError, match=">= 1"):
        flow.sampling_sigmas(0)


def test_euler_recovers_x0_on_the_straight_path():
    g = np.random.default_rng(0)
    x0, eps = g.standard_normal((2, 3, 4)), g.standard_normal((2, 3, 4))
    sig = flow.sampling_sigmas(7, shift=3.0)
    x = (1 - sig[0]) * x0 + sig[0] * eps
    for a, b in zip(sig[:-1], sig[1:]):
        x = flow.euler_step(x, eps - x0, a, b)  # the exact velocity of this path
    np.testing.assert_allclose(x, x0, atol=1e-6)


def test_training_weights():
    sig, t, w = flow.training_schedule(5.0)
    assert sig.shape == t.shape == w.shape == (1000,)
    assert abs(w.mean() - 1.0) < 1e-5 and w.min() == 0.0
    assert t[np.argmax(w)] == pytest.approx(500, abs=3)  # peaks mid-schedule
    s, ts, ww = flow.sample_sigma(jax.random.PRNGKey(0), 64)
    assert s.shape == (64,) and (s >= 0).all() and (s <= 1).all()
    np.testing.assert_allclose(ts, 1000 * s, rtol=1e-6)
    s2, _, w2 = flow.sample_sigma(jax.random.PRNGKey(0), 64, mode="logit_normal")
    assert (w2 == 1).all() and (s2 > 0).all() and (s2 < 1).all()
    s3, _, w3 = flow.sample_sigma(jax.random.PRNGKey(0), 4096, mode="uniform_sigma", shift=1.0)
    assert (w3 == 1).all() and 0.12 < float((s3 < 0.15).mean()) < 0.18  # the clean end is trained too
    with pytest.raises(ValueError, match="logit_normal"):
        flow.sample_sigma(jax.random.PRNGKey(0), 2, mode="cosine")


def test_only_target_half_is_noised_and_scored():
    g = np.random.default_rng(1)
    tgt, src, eps = (jnp.asarray(g.standard_normal((2, 3, 4, 4, 2)), jnp.float32) for _ in range(3))
    sigma = jnp.array([0.3, 0.9])
    x = flow.noise_target_half(tgt, src, eps, sigma)
    np.testing.assert_array_equal(np.asarray(x[:, 3:]), np.asarray(src))
    np.testing.assert_allclose(np.asarray(x[1, :3]), np.asarray(0.1 * tgt[1] + 0.9 * eps[1]), atol=1e-6)
    perfect = jnp.concatenate([eps - tgt, 100.0 + src], axis=1)  # garbage on the source half
    assert float(flow.flow_loss(perfect, tgt, eps, jnp.ones(2))) == 0.0
    off = jnp.concatenate([eps - tgt + 1.0, src], axis=1)
    assert float(flow.flow_loss(off, tgt, eps, jnp.array([1.0, 3.0]))) == pytest.approx(2.0)
