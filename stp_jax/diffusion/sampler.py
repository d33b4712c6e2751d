"""The source-conditioned denoise loop (Euler or UniPC, classifier-free guidance), one lax.scan.

Only the target half is integrated; the clean source half is concatenated before every
model call and never changes. With CFG the conditional and unconditional passes share
one batched call (the pair on the batch axis): v = v_u + scale * (v_c - v_u).

Numerics: ``default`` integrates in float32 and feeds the DiT the float32 timestep.
``reference`` runs as the published pipeline does (docs/REFERENCE.md §6.2): the timestep is
rounded to bf16 before the DiT (1000, 996, 992, ... for 50 steps), latents, velocities and the
CFG combination stay bf16 (each op rounded to bf16 as PyTorch does), the sigma table is float32
and the Euler update x + v * (sigma_next - sigma) is rounded to bf16.

Step cache (``cache``, off by default; the uncached loop is untouched): in the spirit of
TeaCache (Liu et al. 2024) and MagCache (Ma et al. 2025), which observe that the model's output
changes slowly and predictably over most of the trajectory, a step may reuse the last computed
velocity instead of calling the model. The criterion is measured online, with no calibration
run: at every model call the relative L1 change of the velocity since the previous call, per
unit of sigma, is the *rate*; a later step's accumulated estimate of the change since the last
call is ``rate * (sigma_last_call - sigma)``. A step is skipped while that estimate is below
the threshold, outside the first steps (at least 2, StepCache.warmup of them) and the last
(StepCache.final), and never more than StepCache.max_skips times in a row. The decision is one
scalar for the whole batch (the largest sample's change) and a ``lax.switch``, so a skipped
step really runs no model. The CFG cache (FasterCache's observation, Lv et al. 2024: the
guidance difference v_c - v_u varies slowly) computes the (conditional, unconditional) pair
only on every StepCache.cfg_every-th model call after the warm-up and the conditional half on
the others: v = v_c + (scale - 1) * d with d the last computed v_c - v_u.

Letters: B batch, F' latent frames per half, h/w latent rows/cols, C channels.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from stp_jax.diffusion import flow
from stp_jax.models.dit import NUMERICS

# velocity(x [B, 2F', h, w, C], timestep [B], context [B, S, E]) -> [B, 2F', h, w, C]
VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


SOLVERS = ("euler", "unipc")
CACHES = ("none", "mag", "cfg", "mag+cfg")
DEFAULT_CACHE_THRESHOLD = 0.1


@dataclasses.dataclass(frozen=True)
class StepCache:
    """Which model calls the denoise loop may replace by cached outputs (module doc).

    mode: none | mag (reuse the last velocity while its estimated change stays under
    ``threshold``) | cfg (reuse the guidance difference on every other call) | mag+cfg."""
    mode: str = "none"
    threshold: float = DEFAULT_CACHE_THRESHOLD  # mag: relative L1 change of the velocity allowed since the last call
    warmup: float = 0.2  # the first max(2, ceil(warmup * steps)) steps always call the model (both CFG halves)
    final: int = 1  # and so do the last ``final`` steps
    max_skips: int = 2  # mag: consecutive skipped steps at most
    cfg_every: int = 2  # cfg: the unconditional half runs on every cfg_every-th model call

    def __post_init__(self):
        if self.mode not in CACHES:
            raise ValueError(f"cache {self.mode!r} is unknown; expected one of {', '.join(CACHES)}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, numbers.Real) or not (
                math.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"cache threshold must be a finite number >= 0, got {self.threshold!r}")
        if not 0 <= self.warmup <= 1:
            raise ValueError(f"cache warmup must be a fraction of the steps in [0, 1], got {self.warmup}")
        for k in ("final", "max_skips", "cfg_every"):
            if getattr(self, k) < 1:
                raise ValueError(f"cache {k} must be >= 1, got {getattr(self, k)}")

    @property
    def mag(self) -> bool:
        return self.mode in ("mag", "mag+cfg")

    @property
    def cfg(self) -> bool:
        return self.mode in ("cfg", "mag+cfg")

    def first(self, steps: int) -> int:
        """How many steps open the loop with model calls (and both CFG halves)."""
        return max(2, math.ceil(self.warmup * steps))


def denoise(velocity: VelocityFn, source, noise, context, *, steps: int = 50, shift: float = 5.0,
            cfg_scale: float = 5.0, null_context=None, solver: str = "euler", numerics: str = "default",
            cache: StepCache | str | None = None, return_stats: bool = False):
    """Integrate the target half from ``noise`` (sigma 1) to sigma 0.

    source, noise  [B, F', h, w, C]; context [B, S, E]; null_context [B, S, E] for CFG
    (None or cfg_scale == 1 disables guidance); ``numerics`` default | reference (module doc);
    ``cache`` a StepCache or its mode (None / "none": every step calls the model).
    Returns the target latents [B, F', h, w, C] (float32; bf16 values under reference numerics);
    with ``return_stats`` also {"passes": [steps] int32}: model passes of batch B per step
    (0 skipped, 1 unguided or conditional half only, 2 the CFG pair).
    """
    if numerics not in NUMERICS:
        raise ValueError(f"numerics {numerics!r} is unknown; expected one of {NUMERICS}")
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r} is unknown; expected one of {SOLVERS}")
    ref = numerics == "reference"
    if ref and solver != "euler":
        raise ValueError(f"reference numerics reproduce the published Euler sampler; solver {solver!r} has no "
                         "published reference (use --solver euler or --numerics default)")
    cache = StepCache(cache or "none") if not isinstance(cache, StepCache) else cache
    sig = jnp.asarray(flow.sampling_sigmas(steps, shift))
    f = source.shape[1]
    guided = null_context is not None and cfg_scale != 1.0
    state = jnp.bfloat16 if ref else jnp.float32
    source = source.astype(state)

    def timestep(x, sigma):  # [B]
        t = sigma * flow.NUM_TRAIN_TIMESTEPS
        return jnp.full((x.shape[0],), flow.round_bf16(t) if ref else t)

    def v_cond(x, sigma):  # the conditional (or unguided) velocity [B, F', h, w, C], one call of batch B
        inp = jnp.concatenate([x, source], axis=1)
        return velocity(inp, timestep(x, sigma), context)[:, :f].astype(state)

    def v_pair(x, sigma):  # (conditional, unconditional) velocities, one call of batch 2B
        inp = jnp.concatenate([x, source], axis=1)
        t = timestep(x, sigma)
        both = velocity(jnp.concatenate([inp, inp]), jnp.concatenate([t, t]), jnp.concatenate([context, null_context]))
        return jnp.split(both[:, :f].astype(state), 2)

    def v_target(x, sigma):
        if not guided:
            return v_cond(x, sigma)
        v_c, v_u = v_pair(x, sigma)
        return v_u + cfg_scale * (v_c - v_u)  # in bf16 under reference numerics: each op rounded

    def result(x, passes):
        return (x, {"passes": passes}) if return_stats else x

    if cache.mode == "none":
        every = jnp.full((steps,), 2 if guided else 1, jnp.int32)
        if solver == "unipc":
            return result(_unipc(lambda c, x, i, sigma: (v_target(x, sigma), c, every[i]), (),
                                 noise.astype(jnp.float32), sig)[0], every)

        def body(x, s):
            sigma, sigma_next = s
            if ref:  # PyTorch: bf16 * float32 scalar -> bf16, then bf16 + bf16 -> bf16
                step = (v_target(x, sigma).astype(jnp.float32) * (sigma_next - sigma)).astype(state)
                return (x.astype(jnp.float32) + step.astype(jnp.float32)).astype(state), None
            return flow.euler_step(x, v_target(x, sigma), sigma, sigma_next), None

        x, _ = jax.lax.scan(body, noise.astype(state), (sig[:-1], sig[1:]))
        return result(x.astype(jnp.float32), every)

    provider, c0 = _step_cache(cache, steps, guided, cfg_scale, v_cond, v_pair, noise.astype(state))
    if solver == "unipc":
        x, passes = _unipc(provider, c0, noise.astype(jnp.float32), sig)
        return result(x, passes)

    def cached_body(carry, s):
        x, c = carry
        i, sigma, sigma_next = s
        v, c, passes = provider(c, x, i, sigma)
        if ref:
            step = (v.astype(jnp.float32) * (sigma_next - sigma)).astype(state)
            return ((x.astype(jnp.float32) + step.astype(jnp.float32)).astype(state), c), passes
        return (flow.euler_step(x, v, sigma, sigma_next), c), passes

    (x, _), passes = jax.lax.scan(cached_body, (noise.astype(state), c0), (jnp.arange(steps), sig[:-1], sig[1:]))
    return result(x.astype(jnp.float32), passes)


def _relative_change(v, v_last):
    """max over the batch of mean|v - v_last| / mean|v_last| (float32 scalar)."""
    axes = tuple(range(1, v.ndim))
    v, v_last = v.astype(jnp.float32), v_last.astype(jnp.float32)
    return jnp.max(jnp.mean(jnp.abs(v - v_last), axes) / (jnp.mean(jnp.abs(v_last), axes) + 1e-12))


def _step_cache(cache: StepCache, steps: int, guided: bool, cfg_scale: float, v_cond, v_pair, like):
    """(provider, initial carry): ``provider(carry, x, i, sigma) -> (velocity, carry, passes)``
    decides per step whether to call the model (both CFG halves, the conditional one, or none:
    module doc) and runs only that branch (lax.switch)."""
    first, last = cache.first(steps), steps - cache.final
    zeros = jnp.zeros_like(like)  # [B, F', h, w, C]
    # carry: last velocity, last guidance difference v_c - v_u, sigma of the last call, rate of change
    # per unit sigma, consecutive skips, calls since the last CFG pair
    c0 = (zeros, zeros, jnp.float32(1.0), jnp.float32(0.0), jnp.int32(0), jnp.int32(0))

    def skip(x, sigma, v_last, d):
        return v_last, d

    def cond_only(x, sigma, v_last, d):
        v_c = v_cond(x, sigma)
        return v_c + (cfg_scale - 1.0) * d, d

    def pair(x, sigma, v_last, d):
        v_c, v_u = v_pair(x, sigma)
        return v_u + cfg_scale * (v_c - v_u), v_c - v_u

    def unguided(x, sigma, v_last, d):
        return v_cond(x, sigma), d

    branches = (skip, cond_only, pair) if guided else (skip, unguided)
    cost = jnp.asarray([0, 1, 2] if guided else [0, 1], jnp.int32)  # passes of batch B per branch

    def provider(c, x, i, sigma):
        v_last, d, sig_last, rate, skips, since_pair = c
        free = (i >= first) & (i < last)
        estimate = rate * (sig_last - sigma)  # accumulated relative change since the last call
        skipped = free & (skips < cache.max_skips) & (estimate < cache.threshold) if cache.mag else jnp.bool_(False)
        if guided:
            full = ~free | (since_pair + 1 >= cache.cfg_every) if cache.cfg else jnp.bool_(True)
            branch = jnp.where(skipped, 0, jnp.where(full, 2, 1))
        else:
            branch = jnp.where(skipped, 0, 1)
        v, d = jax.lax.switch(branch, branches, x, sigma, v_last, d)
        called = branch > 0
        measured = _relative_change(v, v_last) / jnp.maximum(sig_last - sigma, 1e-12)
        rate = jnp.where(called & (i > 0), measured, rate)
        c = (v, d, jnp.where(called, sigma, sig_last), rate, jnp.where(called, 0, skips + 1),
             jnp.where(branch == 2, 0, since_pair + (branch == 1)))
        return v, c, cost[branch]

    return provider, c0


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


def _unipc(provider, c0, x, sig):
    """UniPC, order 2, bh2, with the corrector after every step and a first-order last step
    (the multistep predictor-corrector of Zhao et al. 2023 as Wan samples with it), on the
    clean-sample prediction m = x - sigma * v. Like diffusers, sigma = 1 is nudged to 1 - 1e-6
    so the log-SNR stays finite. ``provider(carry, x, i, sigma) -> (v, carry, passes)`` gives
    the velocity (the step cache's carry ``c0``). Returns (x, passes [N])."""
    n = sig.shape[0] - 1
    sig = sig.at[0].set(jnp.minimum(sig[0], 1.0 - 1e-6))
    idx = jnp.arange(n)

    def body(carry, i):
        (x, last, m_prev, m_prev2, order_prev), c = carry
        s_i = sig[i]
        v, c, passes = provider(c, x, i, s_i)
        m = x - s_i * v
        prev, prev2 = sig[jnp.maximum(i - 1, 0)], sig[jnp.maximum(i - 2, 0)]
        corrected = _unipc_correct(last, m_prev, m_prev2, m, prev, s_i, prev2, order_prev)
        x = jnp.where(i > 0, corrected, x)
        order = jnp.minimum(jnp.minimum(2, n - i), i + 1)
        x_next = _unipc_predict(x, m, m_prev, s_i, sig[i + 1], prev, order)
        return ((x_next, x, m, m_prev, order), c), passes

    zeros = jnp.zeros_like(x)
    ((x, *_), _), passes = jax.lax.scan(body, ((x, zeros, zeros, zeros, jnp.int32(1)), c0), idx)
    return x, passes
