"""The source-conditioned denoise loop (Euler, classifier-free guidance), one lax.scan.

Only the target half is integrated; the clean source half is concatenated before every
model call and never changes. With CFG the conditional and unconditional passes share
one batched call (the pair on the batch axis): v = v_u + scale * (v_c - v_u).

Letters: B batch, F' latent frames per half, h/w latent rows/cols, C channels.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from stp_jax.diffusion import flow

# velocity(x [B, 2F', h, w, C], timestep [B], context [B, S, E]) -> [B, 2F', h, w, C]
VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def denoise(velocity: VelocityFn, source, noise, context, *, steps: int = 50, shift: float = 5.0,
            cfg_scale: float = 5.0, null_context=None):
    """Integrate the target half from ``noise`` (sigma 1) to sigma 0.

    source, noise  [B, F', h, w, C]; context [B, S, E]; null_context [B, S, E] for CFG
    (None or cfg_scale == 1 disables guidance). Returns the target latents [B, F', h, w, C].
    """
    sig = jnp.asarray(flow.sampling_sigmas(steps, shift))
    f = source.shape[1]
    guided = null_context is not None and cfg_scale != 1.0

    def v_target(x, sigma):
        inp = jnp.concatenate([x, source], axis=1)
        t = jnp.full((x.shape[0],), sigma * flow.NUM_TRAIN_TIMESTEPS)
        if not guided:
            return velocity(inp, t, context)[:, :f]
        both = velocity(jnp.concatenate([inp, inp]), jnp.concatenate([t, t]), jnp.concatenate([context, null_context]))
        v_c, v_u = jnp.split(both[:, :f], 2)
        return v_u + cfg_scale * (v_c - v_u)

    def body(x, s):
        sigma, sigma_next = s
        return flow.euler_step(x, v_target(x, sigma), sigma, sigma_next), None

    x, _ = jax.lax.scan(body, noise.astype(jnp.float32), (sig[:-1], sig[1:]))
    return x
