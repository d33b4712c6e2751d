"""Reference numerics: the published pipeline's bf16 timesteps, float64 sinusoids and bf16 sampler
(docs/REFERENCE.md §6.2, §6.5), checked against values computed here in numpy / ml_dtypes."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from stp_jax.diffusion import flow
from stp_jax.diffusion.sampler import denoise
from stp_jax.models.dit import SpaceTimeDiT, dummy_inputs, preset
from stp_jax.models.layers import sinusoid, sinusoid_f64

BF16 = ml_dtypes.bfloat16

# The published lists' heads (docs/REFERENCE.md §6.2) ...
PUBLISHED_50 = [1000, 996, 992]
PUBLISHED_20 = [1000, 988, 980, 964]


def _published_timesteps(n):
    """... and the whole lists as the published scheduler makes them: float32 sigmas
    linspace(1, 0, N + 1)[:N], shifted by 5, times 1000, cast to bf16."""
    s = np.linspace(1, 0, n + 1, dtype=np.float64)[:n].astype(np.float32)
    s = (np.float32(5) * s / (np.float32(1) + np.float32(4) * s)).astype(np.float32)
    return (s * np.float32(1000)).astype(BF16).astype(np.float32)


@pytest.mark.parametrize("n,head", [(50, PUBLISHED_50), (20, PUBLISHED_20)])
def test_bf16_timesteps_equal_the_published_lists(n, head):
    t = flow.sampling_timesteps(n, 5.0, bf16=True)
    assert t[:len(head)].tolist() == head
    np.testing.assert_array_equal(t, _published_timesteps(n))
    assert flow.sampling_timesteps(50, 5.0)[1] != 996  # float32 timesteps are not rounded
    # the published Euler step looks sigma up by the nearest timestep: for these schedules that is the step itself
    grid = flow.sampling_sigmas(n, 5.0)[:-1] * 1000
    assert (np.argmin(np.abs(grid[None] - t[:, None]), 1) == np.arange(n)).all()


def _sinusoid64(p, dim):
    a = np.outer(np.asarray(p, np.float64), 10000.0 ** (-np.arange(dim // 2, dtype=np.float64) / (dim // 2)))
    return np.concatenate([np.cos(a), np.sin(a)], 1)


def test_sinusoid_f64_matches_float64():
    t = np.concatenate([_published_timesteps(50), _published_timesteps(20)])
    frames = np.arange(85, dtype=np.float32)  # animation indices, 81..84 included
    rand = np.random.default_rng(0).uniform(0, 1000, 4096).astype(np.float32)
    for p in (t, frames, rand):
        want = _sinusoid64(p, 256)
        got = np.asarray(sinusoid_f64(jnp.asarray(p), 256))
        assert np.abs(got - want).max() < 3e-7
    want = _sinusoid64(t, 256)
    plain = np.asarray(sinusoid(jnp.asarray(t), 256))
    assert np.abs(plain - want).max() > 1e-5  # what float32 gives (measured 5.3e-5)
    # cast to bf16 as the published pipeline does: identical for every fed timestep
    got = np.asarray(sinusoid_f64(jnp.asarray(t), 256)).astype(BF16)
    np.testing.assert_array_equal(got, want.astype(BF16))


def test_reference_sampler_rounds_as_published():
    """Euler with bf16 state: v fed bf16 timesteps, v * dsigma rounded to bf16, added in bf16."""
    n, shift = 6, 5.0
    noise = np.random.default_rng(1).standard_normal((1, 1, 2, 2, 3)).astype(np.float32)
    src = np.zeros_like(noise)

    def velocity(x, t, ctx):  # a float32 "model" of x and of the timestep it is fed
        return x.astype(jnp.float32) * 0.37 + (t / 1000.0)[:, None, None, None, None]

    got = np.asarray(jax.jit(lambda z: denoise(velocity, jnp.asarray(src), z, jnp.zeros((1, 1, 1)), steps=n,
                                               shift=shift, cfg_scale=1.0, numerics="reference"))(jnp.asarray(noise)))
    sig = flow.sampling_sigmas(n, shift)
    x = noise.astype(BF16)
    for k in range(n):
        t = np.float32(np.float32(sig[k]) * np.float32(1000)).astype(BF16).astype(np.float32)
        v = (x.astype(np.float32) * np.float32(0.37) + t / np.float32(1000)).astype(BF16)
        step = (v.astype(np.float32) * (sig[k + 1] - sig[k])).astype(BF16)
        x = (x.astype(np.float32) + step.astype(np.float32)).astype(BF16)
    np.testing.assert_array_equal(got, x.astype(np.float32)[:, :1])
    default = np.asarray(denoise(velocity, jnp.asarray(src), jnp.asarray(noise), jnp.zeros((1, 1, 1)), steps=n,
                                 shift=shift, cfg_scale=1.0))
    assert np.abs(default - got).max() > 1e-4
    with pytest.raises(ValueError, match="Euler"):
        denoise(velocity, jnp.asarray(src), jnp.asarray(noise), None, steps=n, numerics="reference", solver="unipc")


def test_dit_reference_numerics_round_the_timestep():
    cfg = preset("tiny")
    inp = dummy_inputs(cfg, latent_frames=2)
    inp["x"] = jax.random.normal(jax.random.PRNGKey(0), inp["x"].shape)
    inp["tgt_time"] = jnp.array([[0, 1, 2, 84, 3]], jnp.float32)  # any float index, 84 included
    params = jax.jit(lambda x: SpaceTimeDiT(cfg).init(jax.random.PRNGKey(1), **x))(inp)
    leaves, tree = jax.tree.flatten(params)  # random weights everywhere (zero-initialised heads would hide t)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    ref = SpaceTimeDiT(cfg.replace(numerics="reference"))
    fns = {}

    def run(m, t):
        fn = fns.setdefault(m.cfg.numerics, jax.jit(lambda p, x: m.apply(p, **x)))
        return np.asarray(fn(params, {**inp, "timestep": jnp.array([t])}))

    np.testing.assert_array_equal(run(ref, 997.5), run(ref, 996.0))  # both are 996 in bf16
    assert np.abs(run(ref, 998.5) - run(ref, 996.0)).max() > 1e-3  # 998.5 is 1000 in bf16
    with pytest.raises(ValueError, match="numerics"):
        cfg.replace(numerics="fast")


def test_bf16_training_timesteps():
    """Published training: t drawn on the 1000-step grid, cast to bf16 (294 distinct values),
    sigma and weight those of the grid timestep nearest to it."""
    sig, t, w = flow.training_schedule(5.0)
    tb = t.astype(BF16).astype(np.float32)
    assert len(np.unique(tb)) == 294
    s, got_t, got_w = (np.asarray(a) for a in flow.sample_sigma(jax.random.PRNGKey(0), 4096, bf16_timesteps=True))
    assert set(got_t.tolist()) <= set(tb.tolist())
    j = np.argmin(np.abs(t[None] - got_t[:, None]), 1)
    np.testing.assert_array_equal(s, sig[j])
    np.testing.assert_array_equal(got_w, w[j])
    assert flow.FlowConfig().bf16_timesteps is False  # off unless a config asks for it
    s2, t2, _ = flow.sample_sigma(jax.random.PRNGKey(0), 64, mode="logit_normal", bf16_timesteps=True)
    np.testing.assert_array_equal(np.asarray(t2), np.asarray(t2).astype(BF16).astype(np.float32))
    np.testing.assert_allclose(np.asarray(s2), np.asarray(t2) / 1000, rtol=3e-7)
