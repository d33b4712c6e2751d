"""The denoise loop's step cache and CFG cache (diffusion/sampler.py): off or threshold 0 is
the uncached loop exactly; a large threshold really skips model calls (counted by a host
callback, which a branch lax.switch did not take never runs), never more than max_skips in a
row and never in the first or last steps; the CFG cache runs the unconditional half less often."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stp_jax.diffusion import flow
from stp_jax.diffusion.sampler import CACHES, StepCache, denoise

SHAPE = (2, 3, 4, 4, 2)  # [B, F', h, w, C]
G = np.random.default_rng(0)
A = jnp.asarray(G.standard_normal((2, 2)) * 0.5, jnp.float32)
SRC, NOISE = (jnp.asarray(G.standard_normal(SHAPE), jnp.float32) for _ in range(2))
CTX, NULL = jnp.ones((2, 5, 8)), jnp.zeros((2, 5, 8))


def counted(calls: list):
    """A nonlinear velocity field (depends on x, t and the context) that records, on the host,
    the batch size and timestep of every call that really runs."""

    def velocity(inp, t, ctx):
        jax.debug.callback(lambda b, tt: calls.append((int(b), float(tt))), jnp.int32(inp.shape[0]), t[0],
                           ordered=True)
        f = inp.shape[1] // 2
        x = inp[:, :f]
        c = ctx[:, :1, :1].reshape(-1, 1, 1, 1, 1)
        v = jnp.tanh(x @ A) * (1.0 + t[:, None, None, None, None] / 1000.0) - 0.5 * x + c
        return jnp.concatenate([v, jnp.zeros_like(x)], axis=1)

    return velocity


def run(cache=None, steps=12, solver="euler", guided=False, numerics="default"):
    calls: list = []
    fn = jax.jit(lambda n: denoise(counted(calls), SRC, n, CTX, steps=steps, shift=3.0, cfg_scale=4.0 if guided else 1.0,
                                   null_context=NULL if guided else None, solver=solver, numerics=numerics, cache=cache,
                                   return_stats=True))
    x, stats = fn(NOISE)
    jax.effects_barrier()
    return np.asarray(x), np.asarray(stats["passes"]), calls


@pytest.mark.parametrize("solver,guided,numerics", [("euler", False, "default"), ("euler", True, "default"),
                                                     ("unipc", True, "default"), ("euler", True, "reference")])
def test_threshold_zero_is_the_uncached_loop_exactly(solver, guided, numerics):
    ref, ref_passes, ref_calls = run(None, solver=solver, guided=guided, numerics=numerics)
    assert len(ref_calls) == 12 and (ref_passes == (2 if guided else 1)).all()
    for cache in (StepCache("mag", threshold=0.0), StepCache("mag+cfg", threshold=0.0, cfg_every=1)):
        out, passes, calls = run(cache, solver=solver, guided=guided, numerics=numerics)
        if numerics == "reference":  # bf16: XLA may keep the uncached loop's fused v in excess precision, while a
            # lax.switch output is rounded to bf16 (as PyTorch rounds it): a few bf16 ulps over 12 steps
            np.testing.assert_allclose(out, ref, rtol=0, atol=4 * 2.0 ** -8 * np.abs(ref).max())
        else:
            np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(passes, ref_passes)
        assert calls == ref_calls


@pytest.mark.parametrize("solver,max_skips", [("euler", 1), ("euler", 2), ("euler", 3), ("unipc", 2)])
def test_large_threshold_skips_calls_within_the_bounds(solver, max_skips):
    cache = StepCache("mag", threshold=1e9, max_skips=max_skips, warmup=0.25)
    out, passes, calls = run(cache, steps=12, solver=solver)
    called = passes > 0
    assert len(calls) == called.sum()  # the host saw exactly the calls the loop reports
    ts = 1000.0 * flow.sampling_sigmas(12, 3.0)[:-1]
    np.testing.assert_allclose([t for _, t in calls], ts[called], rtol=1e-5)  # and at those steps (UniPC: sigma 1 is 1 - 1e-6)
    assert called[:3].all() and called[-1]  # warm-up (max(2, 0.25 * 12) = 3 steps) and the last step
    runs = "".join("s" if not c else "c" for c in called).split("c")
    assert max(len(r) for r in runs) == max_skips  # skips happen, never more than max_skips in a row
    # every skippable step between the warm-up and the last one is skipped up to the bound
    assert called.sum() == 3 + 1 + 8 // (max_skips + 1)
    uncached, _, _ = run(None, steps=12, solver=solver)
    assert np.isfinite(out).all() and not np.array_equal(out, uncached)


def test_the_criterion_follows_the_measured_change():
    """A moderate threshold skips steps of a slowly changing field, fewer of a fast one."""

    def field(scale, calls):
        def velocity(inp, t, ctx):
            jax.debug.callback(lambda: calls.append(1), ordered=True)
            f = inp.shape[1] // 2
            v = jnp.ones_like(inp[:, :f]) * jnp.exp(scale * t[:, None, None, None, None] / 1000.0)  # change/sigma: scale
            return jnp.concatenate([v, jnp.zeros_like(v)], axis=1)
        return velocity

    counts = {}
    for scale in (0.0, 0.01, 10.0):
        calls: list = []
        jax.block_until_ready(denoise(field(scale, calls), SRC, NOISE, CTX, steps=20, null_context=None,
                                      cache=StepCache("mag", threshold=0.05)))
        jax.effects_barrier()
        counts[scale] = len(calls)
    assert counts[0.0] < 20 and counts[0.0] <= counts[0.01] < counts[10.0] == 20, counts


def test_cfg_cache_runs_the_unconditional_half_less_often():
    ref, ref_passes, ref_calls = run(None, guided=True)
    out, passes, calls = run(StepCache("cfg"), guided=True)
    batches = [b for b, _ in calls]
    assert len(calls) == 12 and batches.count(4) + batches.count(2) == 12  # every step calls, pair or half
    assert batches[:3] == [4, 4, 4] and batches[-1] == 4  # warm-up (max(2, 0.2 * 12)) and the last step: pairs
    assert batches[3:11] == [2, 4] * 4  # then the pair on every other call
    assert passes.sum() == sum(b // 2 for b in batches) < ref_passes.sum() == 24
    assert np.abs(out - ref).max() < 0.1 * np.abs(ref).max()  # an approximation of guidance, not another result
    both, passes_both, _ = run(StepCache("mag+cfg", threshold=1e9), guided=True)
    assert passes_both.sum() < passes.sum() and (passes_both == 0).any() and (passes_both == 1).any()


def test_cfg_cache_is_exact_when_the_guidance_difference_is_constant():
    """v_c = 1, v_u = 0 everywhere: reusing d = v_c - v_u is exact, so the result is eps - 4."""

    def field(x, t, c):
        v = jnp.broadcast_to(c[:, :1, :1].reshape(-1, 1, 1, 1, 1), x.shape)
        return v

    out = denoise(field, SRC, NOISE, CTX, steps=8, shift=1.0, cfg_scale=4.0, null_context=NULL, cache="cfg")
    np.testing.assert_allclose(np.asarray(out), np.asarray(NOISE - 4.0), atol=1e-5)


@pytest.mark.parametrize("kw,match", [({"mode": "fast"}, "cache 'fast' is unknown; expected one of none, mag"),
                                      ({"mode": "mag", "threshold": -1.0}, "threshold must be a finite number >= 0"),
                                      ({"mode": "mag", "threshold": float("nan")}, "threshold"),
                                      ({"mode": "mag", "max_skips": 0}, "max_skips must be >= 1"),
                                      ({"mode": "cfg", "cfg_every": 0}, "cfg_every must be >= 1"),
                                      ({"mode": "mag", "warmup": 2.0}, "warmup")])
def test_invalid_cache_options_fail_clearly(kw, match):
    with pytest.raises(ValueError, match=match):
        StepCache(**kw)
    if set(kw) == {"mode"}:
        with pytest.raises(ValueError, match=match):
            denoise(counted([]), SRC, NOISE, CTX, steps=2, null_context=None, cache=kw["mode"])
    assert CACHES == ("none", "mag", "cfg", "mag+cfg")


def test_sample_config_checks_the_cache():
    from stp_jax.inference import SampleConfig

    assert SampleConfig().cache == "none"
    with pytest.raises(ValueError, match="sample.cache 'fast' is unknown; expected one of none, mag, cfg, mag\\+cfg"):
        SampleConfig(cache="fast")
    with pytest.raises(ValueError, match="sample.cache threshold must be a finite number >= 0"):
        SampleConfig(cache="mag", cache_threshold=-0.5)
