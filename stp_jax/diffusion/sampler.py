"""The source-conditioned denoise loop (Euler or UniPC, classifier-free guidance), one lax.scan.

Only the target half is integrated; the clean source half is concatenated before every
model call and never changes. With CFG the conditional and unconditional passes share
one batched call (the pair on the batch axis): v = v_u + scale * (v_c - v_u).

Numerics: ``default`` integrates in float32 and feeds the DiT the float32 timestep.
``reference`` runs as the published pipeline does (docs/REFERENCE.md §6.2): the timestep is
rounded to bf16 before the DiT (1000, 996, 992, ... for 50 steps), latents, velocities and the
CFG combination stay bf16 (each op rounded to bf16 as PyTorch does), the sigma table is float32
and the Euler update x + v * (sigma_next - sigma) is rounded to bf16.

Letters: B batch, F' latent frames per half, h/w latent rows/cols, C channels.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from stp_jax.diffusion import flow
from stp_jax.models.dit import NUMERICS

# velocity(x [B, 2F', h, w, C], timestep [B], context [B, S, E]) -> [B, 2F', h, w, C]
VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


SOLVERS = ("euler", "unipc")


def denoise(velocity: VelocityFn, source, noise, context, *, steps: int = 50, shift: float = 5.0,
            cfg_scale: float = 5.0, null_context=None, solver: str = "euler", numerics: str = "default"):
    """Integrate the target half from ``noise`` (sigma 1) to sigma 0.

    source, noise  [B, F', h, w, C]; context [B, S, E]; null_context [B, S, E] for CFG
    (None or cfg_scale == 1 disables guidance); ``numerics`` default | reference (module doc).
    Returns the target latents [B, F', h, w, C] (float32; bf16 values under reference numerics).
    """
    if numerics not in NUMERICS:
        raise ValueError(f"numerics {numerics!r} is unknown; expected one of {NUMERICS}")
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r} is unknown; expected one of {SOLVERS}")
    ref = numerics == "reference"
    if ref and solver != "euler":
        raise ValueError(f"reference numerics reproduce the published Euler sampler; solver {solver!r} has no "
                         "published reference (use --solver euler or --numerics default)")
    sig = jnp.asarray(flow.sampling_sigmas(steps, shift))
    f = source.shape[1]
    guided = null_context is not None and cfg_scale != 1.0
    state = jnp.bfloat16 if ref else jnp.float32
    source = source.astype(state)

    def v_target(x, sigma):
        inp = jnp.concatenate([x, source], axis=1)
        t = sigma * flow.NUM_TRAIN_TIMESTEPS
        t = jnp.full((x.shape[0],), flow.round_bf16(t) if ref else t)
        if not guided:
            return velocity(inp, t, context)[:, :f].astype(state)
        both = velocity(jnp.concatenate([inp, inp]), jnp.concatenate([t, t]), jnp.concatenate([context, null_context]))
        v_c, v_u = jnp.split(both[:, :f].astype(state), 2)
        return v_u + cfg_scale * (v_c - v_u)  # in bf16 under reference numerics: each op rounded

    if solver == "unipc":
        return _unipc(v_target, noise.astype(jnp.float32), sig)

    def body(x, s):
        sigma, sigma_next = s
        if ref:  # PyTorch: bf16 * float32 scalar -> bf16, then bf16 + bf16 -> bf16
            step = (v_target(x, sigma).astype(jnp.float32) * (sigma_next - sigma)).astype(state)
            return (x.astype(jnp.float32) + step.astype(jnp.float32)).astype(state), None
        return flow.euler_step(x, v_target(x, sigma), sigma, sigma_next), None

    x, _ = jax.lax.scan(body, noise.astype(state), (sig[:-1], sig[1:]))
    return x.astype(jnp.float32)


# ---------------------------------------------------------------- UniPC


def _lam(s):
    """Half log-SNR of the flow path (alpha = 1 - sigma): log(alpha / sigma)."""
    return jnp.log1p(-s) - jnp.log(s)


def _unipc_predict(x, m0, m1, s0, t, s1, order):
    """UniP (B(h) = expm1(h), data prediction) from sigma s0 to t; m0/m1 are the clean-sample
    predictions at s0 and at the step before (s1); order 1 or 2 (rho = 1/2)."""
    h = _lam(t) - _lam(s0)
    phi1 = jnp.expm1(-h)
    base = (t / s0) * x - (1.0 - t) * phi1 * m0
    r = (_lam(s1) - _lam(s0)) / h
    d1 = (m1 - m0) / r
    return jnp.where(order == 2, base - (1.0 - t) * phi1 * 0.5 * d1, base)


def _unipc_correct(x, m0, m1, mt, s0, t, s1, order):
    """UniC: redo the step s0 -> t from ``x`` with the new prediction ``mt`` at t; order 1
    (rho = 1/2) or 2 (rho from the 2x2 system of the bh2 variant)."""
    h = _lam(t) - _lam(s0)
    hh = -h
    phi1 = jnp.expm1(hh)
    base = (t / s0) * x - (1.0 - t) * phi1 * m0
    d1t = mt - m0
    one = base - (1.0 - t) * phi1 * 0.5 * d1t
    r = (_lam(s1) - _lam(s0)) / h
    d1 = (m1 - m0) / r
    k1 = phi1 / hh - 1.0
    b1 = k1 / phi1
    b2 = (k1 / hh - 0.5) * 2.0 / phi1
    rho0 = (b1 - b2) / (1.0 - r)
    rho1 = b1 - rho0
    two = base - (1.0 - t) * phi1 * (rho0 * d1 + rho1 * d1t)
    return jnp.where(order == 2, two, one)


def _unipc(v_target, x, sig):
    """UniPC, order 2, bh2, with the corrector after every step and a first-order last step
    (the multistep predictor-corrector of Zhao et al. 2023 as Wan samples with it), on the
    clean-sample prediction m = x - sigma * v. Like diffusers, sigma = 1 is nudged to 1 - 1e-6
    so the log-SNR stays finite."""
    n = sig.shape[0] - 1
    sig = sig.at[0].set(jnp.minimum(sig[0], 1.0 - 1e-6))
    idx = jnp.arange(n)

    def body(carry, i):
        x, last, m_prev, m_prev2, order_prev = carry
        s_i = sig[i]
        m = x - s_i * v_target(x, s_i)
        prev, prev2 = sig[jnp.maximum(i - 1, 0)], sig[jnp.maximum(i - 2, 0)]
        corrected = _unipc_correct(last, m_prev, m_prev2, m, prev, s_i, prev2, order_prev)
        x = jnp.where(i > 0, corrected, x)
        order = jnp.minimum(jnp.minimum(2, n - i), i + 1)
        x_next = _unipc_predict(x, m, m_prev, s_i, sig[i + 1], prev, order)
        return (x_next, x, m, m_prev, order), None

    zeros = jnp.zeros_like(x)
    (x, *_), _ = jax.lax.scan(body, (x, zeros, zeros, zeros, jnp.int32(1)), idx)
    return x
