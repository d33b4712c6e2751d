"""The denoise loop: exact on an oracle field, source untouched, CFG formula."""
import numpy as np

import jax
import jax.numpy as jnp

from stp_jax.diffusion.sampler import denoise


def test_oracle_velocity_recovers_target():
    g = np.random.default_rng(0)
    x0, src, eps = (jnp.asarray(g.standard_normal((2, 3, 4, 4, 2)), jnp.float32) for _ in range(3))
    seen = []

    def oracle(x, t, ctx):  # the exact velocity of the straight path from x0 to eps
        seen.append(x.shape)
        return jnp.concatenate([eps - x0, jnp.zeros_like(src)], axis=1)

    out = jax.jit(lambda: denoise(oracle, src, eps, jnp.zeros((2, 5, 8)), steps=6, null_context=None))()
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=1e-5)
    assert seen[0] == (2, 6, 4, 4, 2)  # [target | source] on the frame axis


def test_cfg_combination_and_source_passed_clean():
    g = np.random.default_rng(1)
    src, eps = (jnp.asarray(g.standard_normal((1, 2, 2, 2, 1)), jnp.float32) for _ in range(2))
    ctx, null = jnp.ones((1, 3, 4)), jnp.zeros((1, 3, 4))

    def field(x, t, c):
        # source half must be the clean source in every call; velocity = 1 (cond) or 0 (uncond)
        assert x.shape[0] == 2
        v = jnp.broadcast_to(c[:, :1, :1].reshape(-1, 1, 1, 1, 1), x.shape)
        return v + 1000.0 * jnp.abs(x[:, 2:] - jnp.concatenate([src, src])).max()  # 0 iff the source is clean

    out = denoise(field, src, eps, ctx, steps=4, shift=1.0, cfg_scale=3.0, null_context=null)
    # guided velocity 0 + 3 * (1 - 0) = 3 over sigma 1 -> 0: x = eps - 3
    np.testing.assert_allclose(np.asarray(out), np.asarray(eps - 3.0), atol=1e-6)
