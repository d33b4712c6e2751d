"""RoPE over animation time (DiTConfig.rope_frames = "time", the embedded default's choice).

The published RoPE (rope_frames "index") is checked against PyTorch in test_dit_parity.py; here the
time variant is tied to it: on the times that equal the sequence indices the two are the same
function, and the time variant depends on animation times only through their differences
(up to the time-embedding branch, zero at init as published).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from stp_jax.controls.timing import latent_times, model_times
from stp_jax.models.dit import DiTConfig, SpaceTimeDiT, preset
from stp_jax.models.layers import rope_tables

FH, HP, WP, B = 3, 4, 6, 2


def test_latent_times_undo_model_times():
    t = np.array([[16, 3, 3, 9, 0], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(latent_times(model_times(t, 1)), t)
    # two frames per latent frame: each latent frame's time is its two frames' mean
    np.testing.assert_allclose(latent_times(model_times(t, 2)), [[16, 3, 4.5], [0, 1.5, 3.5]])
    # Wan's fold: frame 0 alone, then the mean of each group of four
    np.testing.assert_allclose(latent_times(np.arange(9.0)), [0, 2.5, 6.5])
    np.testing.assert_allclose(np.asarray(latent_times(jnp.arange(9.0))), [0, 2.5, 6.5])
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        latent_times(np.arange(6))


def test_frame_positions_equal_to_indices_give_the_published_tables():
    grid, k = (2 * FH, HP // 2, WP // 2), 32
    cos, sin = rope_tables(grid, k)
    pos = jnp.broadcast_to(jnp.arange(grid[0], dtype=jnp.float32), (B, grid[0]))
    cos_b, sin_b = rope_tables(grid, k, frame_pos=pos)
    assert cos_b.shape == (B, *cos.shape)
    np.testing.assert_allclose(np.asarray(cos_b), np.broadcast_to(np.asarray(cos), cos_b.shape), atol=1e-6)
    np.testing.assert_allclose(np.asarray(sin_b), np.broadcast_to(np.asarray(sin), sin_b.shape), atol=1e-6)
    with pytest.raises(ValueError, match="frame_pos"):
        rope_tables(grid, k, frame_pos=pos[:, 1:])


def _model_and_inputs(rope_frames, seed=0):
    cfg = preset("tiny", in_channels=4, out_channels=4, rope_frames=rope_frames)
    model = SpaceTimeDiT(cfg)
    g = np.random.default_rng(seed)
    x = jnp.asarray(g.standard_normal((B, 2 * FH, HP, WP, 4)), jnp.float32)
    inputs = dict(x=x, timestep=jnp.array([700.0, 40.0]), context=jnp.asarray(g.standard_normal((B, 5, 32)),
                                                                                  jnp.float32),
                  tgt_cam=jnp.asarray(g.standard_normal((B, FH, 12)), jnp.float32),
                  src_cam=jnp.asarray(g.standard_normal((B, FH, 12)), jnp.float32))
    return model, inputs


def _perturbed(params, keep=None):
    """Every weight plus 0.05 noise (init leaves the head at zero), except paths containing ``keep``."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [
        v if keep and keep in jax.tree_util.keystr(p) else v + 0.05 * jax.random.normal(k, v.shape, v.dtype)
        for (p, v), k in zip(leaves, keys)])


def _times(frames):
    return jnp.asarray(np.broadcast_to(model_times(np.asarray(frames), 1), (B, 1 + 4 * (FH - 1))), jnp.float32)


def test_time_rope_on_sequence_times_is_the_published_model():
    """tgt times 0..Fh-1 and src times Fh..2Fh-1 are the sequence indices: both variants, same weights, agree."""
    model_t, inp = _model_and_inputs("time")
    model_i, _ = _model_and_inputs("index")
    inp.update(tgt_time=_times(np.arange(FH)), src_time=_times(np.arange(FH, 2 * FH)))
    # the head and the time branch's last layer start at zero (as published): perturb every weight
    params = _perturbed(nn.unbox(model_i.init(jax.random.PRNGKey(1), **inp))["params"])
    want = model_i.apply({"params": params}, **inp)
    got = model_t.apply({"params": params}, **inp)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    # and it is not the same function on other times: reversed target times move the RoPE angles
    rev = dict(inp, tgt_time=_times(np.arange(FH)[::-1]))
    assert np.abs(np.asarray(model_t.apply({"params": params}, **rev))
                  - np.asarray(model_i.apply({"params": params}, **rev))).max() > 1e-3


def test_time_rope_sees_only_time_differences_through_attention():
    """With the time-embedding branch at its (zero) init, shifting every time by a constant changes
    nothing, while moving the source's times against the target's does."""
    model, inp = _model_and_inputs("time", seed=3)
    inp.update(tgt_time=_times([4, 2, 0]), src_time=_times([0, 1, 2]))
    params = _perturbed(nn.unbox(model.init(jax.random.PRNGKey(2), **inp))["params"], keep="'time'")
    out = np.asarray(model.apply({"params": params}, **inp))
    shifted = dict(inp, tgt_time=inp["tgt_time"] + 7.0, src_time=inp["src_time"] + 7.0)
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, **shifted)), out, atol=1e-4)
    moved = dict(inp, src_time=_times([2, 1, 0]))
    assert np.abs(np.asarray(model.apply({"params": params}, **moved)) - out).max() > 1e-3


def test_rope_frames_config_errors():
    with pytest.raises(ValueError, match="rope_frames 'sideways'"):
        DiTConfig(rope_frames="sideways")
    with pytest.raises(ValueError, match="needs animation times"):
        DiTConfig(rope_frames="time", mode="recammaster")
