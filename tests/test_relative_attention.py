"""Relative attention over animation time and camera (the embedded default's choices, ours):
DiTConfig.rope_frames = "time" and DiTConfig.cam_heads.

The published RoPE (rope_frames "index", cam_heads 0) is checked against PyTorch in
test_dit_parity.py; here the variants are tied to it: on the times that equal the sequence indices
time RoPE is the same function; time RoPE sees animation times, and camera heads see poses, only
relative to one another (up to the time and camera embedding branches, zero at init as published).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from stp_jax.controls import camera as cam_lib
from stp_jax.controls.timing import latent_times, model_times
from stp_jax.data import camxtime as cx
from stp_jax.data import pipeline as pl
from stp_jax.models.dit import DiTConfig, SpaceTimeDiT, copy_distance2, copy_units, preset
from stp_jax.models.layers import apply_pose, pose_mats, rope_tables

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


def _model_and_inputs(rope_frames, seed=0, cam_heads=0):
    cfg = preset("tiny", in_channels=4, out_channels=4, rope_frames=rope_frames, cam_heads=cam_heads)
    model = SpaceTimeDiT(cfg)
    g = np.random.default_rng(seed)
    x = jnp.asarray(g.standard_normal((B, 2 * FH, HP, WP, 4)), jnp.float32)
    inputs = dict(x=x, timestep=jnp.array([700.0, 40.0]), context=jnp.asarray(g.standard_normal((B, 5, 32)),
                                                                                  jnp.float32),
                  tgt_cam=jnp.asarray(g.standard_normal((B, FH, 12)), jnp.float32),
                  src_cam=jnp.asarray(g.standard_normal((B, FH, 12)), jnp.float32))
    return model, inputs


def _perturbed(params, keep=()):
    """Every weight plus 0.05 noise (init leaves the head at zero), except paths containing one of ``keep``."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [
        v if any(s in jax.tree_util.keystr(p) for s in keep) else v + 0.05 * jax.random.normal(k, v.shape, v.dtype)
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
    params = _perturbed(nn.unbox(model.init(jax.random.PRNGKey(2), **inp))["params"], keep=("'time'",))
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
    with pytest.raises(ValueError, match="cam_heads 5 needs"):
        preset("tiny", cam_heads=5)
    with pytest.raises(ValueError, match="cam_heads 1 needs"):
        preset("tiny", cam_heads=1, mode="wan")
    with pytest.raises(ValueError, match="multiple of 4"):
        preset("tiny", dim=72, num_heads=4, cam_heads=1, time_groups=8)  # head_dim 18: frame dims 6


def _rigid(g, n):
    """n random rigid 4x4 poses."""
    q, _ = np.linalg.qr(g.standard_normal((n, 3, 3)))
    q *= np.sign(np.linalg.det(q))[:, None, None]
    m = np.tile(np.eye(4), (n, 1, 1))
    m[:, :3, :3], m[:, :3, 3] = q, g.uniform(-3, 3, (n, 3))
    return m


def test_apply_pose_gives_relative_products():
    """(inv(P_i)^T q) . (P_j k) = q^T inv(P_i) P_j k in every 4-block, and the other dims pass through."""
    g = np.random.default_rng(0)
    b, l, n, k, dims = 1, 2, 3, 20, 8
    q, kk = g.standard_normal((2, b, l, n, k)).astype(np.float32)
    p = _rigid(g, l)[None].astype(np.float32)  # [B, L, 4, 4]
    qp = np.asarray(apply_pose(jnp.asarray(q), jnp.asarray(np.swapaxes(np.linalg.inv(p), -1, -2)), dims))
    kp = np.asarray(apply_pose(jnp.asarray(kk), jnp.asarray(p), dims))
    np.testing.assert_array_equal(qp[..., dims:], q[..., dims:])
    rel = np.linalg.inv(p[0, 0]) @ p[0, 1]
    for h in range(n):
        for blk in range(dims // 4):
            s = slice(4 * blk, 4 * blk + 4)
            np.testing.assert_allclose(qp[0, 0, h, s] @ kp[0, 1, h, s], q[0, 0, h, s] @ rel @ kk[0, 1, h, s],
                                       rtol=1e-4, atol=1e-4)


def _pack(poses):  # [B, Fh, 4, 4] -> [B, Fh, 12]
    return jnp.asarray(poses[..., :3, :4].reshape(*poses.shape[:2], 12), jnp.float32)


def test_camera_heads_see_only_relative_poses():
    """With the camera encoder at its (zero) init, moving the whole world (every pose left-multiplied
    by one rigid transform) changes nothing; moving the source's cameras against the target's does."""
    model, inp = _model_and_inputs("time", seed=4, cam_heads=2)
    g = np.random.default_rng(5)
    tgt, src = _rigid(g, B * FH).reshape(B, FH, 4, 4), _rigid(g, B * FH).reshape(B, FH, 4, 4)
    inp.update(tgt_time=_times([4, 2, 0]), src_time=_times([0, 1, 2]), tgt_cam=_pack(tgt), src_cam=_pack(src))
    params = _perturbed(nn.unbox(model.init(jax.random.PRNGKey(2), **inp))["params"], keep=("'cam_encoder'",))
    out = np.asarray(model.apply({"params": params}, **inp))
    world = _rigid(g, 1)[0]
    moved = dict(inp, tgt_cam=_pack(world @ tgt), src_cam=_pack(world @ src))
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, **moved)), out, atol=2e-4)
    other = dict(inp, src_cam=_pack(world @ src))
    assert np.abs(np.asarray(model.apply({"params": params}, **other)) - out).max() > 1e-3
    # and the plain model (cam_heads 0, same weights) does not see poses at all through attention
    plain, _ = _model_and_inputs("time", seed=4)
    base = np.asarray(plain.apply({"params": params}, **inp))
    np.testing.assert_allclose(np.asarray(plain.apply({"params": params}, **other)), base, atol=1e-6)


def test_camera_heads_put_source_and_target_in_one_frame():
    """cam_heads > 0 switches the source rule to the target's (relative to the source's first camera,
    unscaled): a fixed-camera pair then has identical source and target inputs."""
    assert preset("tiny").source_camera_rule == "published"
    assert preset("tiny", cam_heads=1).source_camera_rule == "first_camera"
    cams = np.asarray(cx.camera_path(3, 17), np.float64)
    src = cam_lib.source_condition(cams, 17, frames_per_latent=1, rule="first_camera")
    tgt = cam_lib.target_condition(cams, reference=cams[0], frames_per_latent=1)
    np.testing.assert_allclose(src, tgt, atol=1e-6)
    assert np.abs(cam_lib.source_condition(cams, 17, frames_per_latent=1) - tgt).max() > 1e-2  # published: not
    with pytest.raises(ValueError, match="source camera rule"):
        cam_lib.source_condition(cams, 17, rule="world")
    from configs.tiny_camxtime import get_config

    c = get_config()
    assert c.model.cam_heads and pl.DataConfig.from_config(c).source_camera_rule == "first_camera"
    c.model.cam_heads = 0
    assert pl.DataConfig.from_config(c).source_camera_rule == "published"


def test_precomputed_latents_must_match_the_models_source_rule(tmp_path):
    """stp-precompute bakes the source cameras in: a camera-relative model refuses latents made by the
    published rule, with a message naming the folder and the fix."""
    import json

    (tmp_path / "meta.json").write_text(json.dumps({"num_frames": 17, "height": 24, "width": 24,
                                                    "source_camera_rule": "published"}))
    cfg = pl.DataConfig(source="latents", latents_dir=str(tmp_path), height=24, width=24,
                        source_camera_rule="first_camera")
    with pytest.raises(ValueError, match="'published' rule.*'first_camera'.*stp-precompute"):
        pl.latents_source(cfg)
    with pytest.raises(ValueError, match="source camera rule 'world'"):
        pl.DataConfig(source_camera_rule="world")


def test_pose_mats_invert_rigid_poses():
    g = np.random.default_rng(1)
    p = _rigid(g, 3)
    q_mats, k_mats = (np.asarray(m) for m in pose_mats(_pack(p[None])))
    np.testing.assert_allclose(k_mats[0], p, atol=1e-6)
    np.testing.assert_allclose(np.swapaxes(q_mats[0], -1, -2) @ p, np.tile(np.eye(4), (3, 1, 1)), atol=1e-5)


def test_camera_heads_carry_no_frame_angle():
    """With every head a camera head (and the time and camera embeddings at their zero init), the
    animation times reach attention nowhere: moving the source's times changes nothing."""
    model, inp = _model_and_inputs("time", seed=6, cam_heads=4)
    g = np.random.default_rng(7)
    inp.update(tgt_time=_times([4, 2, 0]), src_time=_times([0, 1, 2]),
               tgt_cam=_pack(_rigid(g, B * FH).reshape(B, FH, 4, 4)),
               src_cam=_pack(_rigid(g, B * FH).reshape(B, FH, 4, 4)))
    params = _perturbed(nn.unbox(model.init(jax.random.PRNGKey(3), **inp))["params"], keep=("'time'", "'cam_encoder'"))
    out = np.asarray(model.apply({"params": params}, **inp))
    moved = dict(inp, src_time=_times([2, 0, 1]))
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, **moved)), out, atol=1e-5)


def _copy_model_and_params(seed=0, perturb_head=False, unit="patch"):
    model, inp = _model_and_inputs("time", seed=seed, cam_heads=1)
    model = SpaceTimeDiT(model.cfg.replace(copy_source=True, copy_unit=unit))
    inp.update(tgt_time=_times([4, 2, 0]), src_time=_times([0, 1, 2]))
    params = nn.unbox(model.init(jax.random.PRNGKey(4), **inp))["params"]
    return model, inp, _perturbed(params, keep=() if perturb_head else ("'head'",))


def test_copy_source_returns_source_tokens():
    """With the head at its zero init the target half is a mixture of source patch vectors: all of one
    vector when every source token is that vector (whatever the attention), inside their range
    otherwise; the source half stays the head's output (zero)."""
    model, inp, params = _copy_model_and_params()
    assert "q" in params["copy"] and params["copy"]["q"]["kernel"].ndim == 3  # [D, N, K]: one query per token
    patch = np.random.default_rng(5).standard_normal((B, 1, 2, 2, 4))
    x = np.asarray(inp["x"]).copy()
    x[:, FH:] = np.tile(patch, (1, FH, HP // 2, WP // 2, 1))
    out = np.asarray(model.apply({"params": params}, **dict(inp, x=jnp.asarray(x))))
    np.testing.assert_allclose(out[:, :FH], x[:, FH:], atol=1e-5)
    assert np.abs(out[:, FH:]).max() == 0.0
    out = np.asarray(model.apply({"params": params}, **inp))  # random source tokens [B, L/2, P]
    src = np.asarray(inp["x"][:, FH:]).reshape(B, FH, HP // 2, 2, WP // 2, 2, 4).transpose(0, 1, 2, 4, 3, 5, 6)
    tgt = out[:, :FH].reshape(B, FH, HP // 2, 2, WP // 2, 2, 4).transpose(0, 1, 2, 4, 3, 5, 6)
    src, tgt = src.reshape(B, -1, 16), tgt.reshape(B, -1, 16)
    assert (tgt >= src.min(1, keepdims=True) - 1e-5).all() and (tgt <= src.max(1, keepdims=True) + 1e-5).all()
    assert tgt.std(axis=1).min() > 1e-3  # target tokens copy different mixtures, not one mean


def test_copy_pixel_units_move_pixels_within_a_patch():
    """copy_unit pixel: every latent pixel is copied on its own. Source pixels at one place of their
    2x2 patch all A, at the other three all Z: a patch copy returns A exactly at that place of every
    target patch (patches move whole); the pixel copy mixes A and Z there, and returns a pixel
    vector exactly when every source pixel is that vector (the values are pixels, not patches)."""
    a, z = np.array([1.0, -2.0, 0.5, 3.0]), np.array([-1.0, 0.0, 2.0, -3.0])
    for unit in ("patch", "pixel"):
        model, inp, params = _copy_model_and_params(seed=2, unit=unit)
        x = np.asarray(inp["x"]).copy()
        x[:, FH:] = z
        x[:, FH:, 0::2, 0::2] = a
        out = np.asarray(model.apply({"params": params}, **dict(inp, x=jnp.asarray(x))))[:, :FH]
        at_a = out[:, :, 0::2, 0::2]  # [B, FH, HP/2, WP/2, C]
        if unit == "patch":
            np.testing.assert_allclose(at_a, np.broadcast_to(a, at_a.shape), atol=1e-5)
        else:
            share = (at_a - z) / (a - z)  # the weight on A-pixels, the same in every channel
            np.testing.assert_allclose(share, share[..., :1].repeat(4, -1), atol=1e-4)
            assert (share > 1e-3).all() and (share < 1 - 1e-3).all()
            assert params["copy"]["q"]["kernel"].shape[1:3] == (4, model.cfg.num_heads)  # [D, ph*pw, N, K]
            x[:, FH:] = a
            out = np.asarray(model.apply({"params": params}, **dict(inp, x=jnp.asarray(x))))
            np.testing.assert_allclose(out[:, :FH], x[:, FH:], atol=1e-5)


def test_copy_sows_the_logits_it_mixes_units_by():
    """The sown logits [B, Q, S] and copy_units' order are the copy's own: with the head at zero the
    target half's units are softmax(logits) times the source's units, patch and pixel units alike
    (what flow.FlowConfig.copy_loss supervises is what the copy does)."""
    for unit, per in (("patch", 1), ("pixel", 4)):
        model, inp, params = _copy_model_and_params(seed=6, unit=unit)
        out, inter = model.apply({"params": params}, **inp, mutable=["intermediates"])
        logits = inter["intermediates"]["copy"]["logits"][0]
        assert logits.shape == (B, FH * HP * WP // 4 * per, FH * HP * WP // 4 * per)
        src_units = copy_units(model.cfg, inp["x"][:, FH:])
        want = jnp.einsum("bqs,bsv->bqv", jax.nn.softmax(logits, -1), src_units)
        np.testing.assert_allclose(copy_units(model.cfg, out[:, :FH]), want, atol=1e-5)
        assert float(jnp.std(jax.nn.softmax(logits, -1).max(-1))) > 0  # not one uniform mixture


def test_copy_geometry_finds_the_unit_that_saw_the_same_point():
    """copy_fov: the copy's logits fall with the distance between the world points of a target and a
    source unit (rays at the initial depth, placed by the poses). With the learned q, k silent and a
    large distance weight, target cameras moved sideways by one unit's footprint at that depth copy,
    at every unit, the source unit one column over, patch units and pixel units alike (the depth head
    [D, units per token]); copy_geometry "ray" (source points against the target units' rays) too;
    without the geometry the same silent attention returns the source's mean."""
    for unit, geometry in (("patch", "point"), ("pixel", "point"), ("pixel", "ray")):
        model, inp, params = _copy_model_and_params(seed=3, unit=unit)
        cfg = model.cfg.replace(copy_fov=50.0, copy_depth=4.0, copy_geometry=geometry)
        geo_model = SpaceTimeDiT(cfg)
        step = 1 if unit == "pixel" else 2  # latent columns per unit
        focal = 0.5 * (WP // step) / np.tan(np.deg2rad(25.0))
        footprint = cfg.copy_depth / focal  # one unit across, at the initial depth
        copy = jax.tree.map(jnp.zeros_like, params["copy"])  # q, k silent
        per_token = 4 if unit == "pixel" else 1  # units per 2x2 patch
        copy["depth"] = {"kernel": jnp.zeros((cfg.dim, per_token)), "bias": jnp.zeros((per_token,))}  # copy_depth
        copy["log_weight"] = jnp.full((1,), np.log(40.0 / footprint ** 2))
        params = dict(params, copy=copy)
        eye = np.eye(4)[:3].reshape(12)
        moved = eye.copy()
        moved[3] = footprint  # target camera centres one footprint to the right (x)
        g = np.random.default_rng(6)
        x = np.asarray(inp["x"]).copy()
        x[:, FH:] = g.standard_normal((B, 1, HP, WP, 4))  # one source frame, filmed FH times from one camera
        inp = dict(inp, x=jnp.asarray(x), src_cam=jnp.asarray(np.tile(eye, (B, FH, 1)), jnp.float32),
                   tgt_cam=jnp.asarray(np.tile(moved, (B, FH, 1)), jnp.float32))
        out = np.asarray(geo_model.apply({"params": params}, **inp))[:, :FH]  # [B, FH, HP, WP, C]
        want = np.broadcast_to(x[:, FH:FH + 1, :, step:], out[:, :, :, :-step].shape)
        np.testing.assert_allclose(out[:, :, :, :-step], want, atol=1e-4)
        if unit == "patch" or geometry == "ray":
            continue
        plain = dict(params)
        plain["copy"] = {k: v for k, v in params["copy"].items() if k not in ("depth", "log_weight")}
        mean = np.asarray(model.apply({"params": plain}, **inp))[:, :FH]
        assert np.abs(mean - out).max() > 0.1
        src = x[:, FH].reshape(B, HP // step, step, WP // step, step, 4)  # [B, H/s, s, W/s, s, C] units
        got = mean.reshape(B, FH, HP // step, step, WP // step, step, 4)
        np.testing.assert_allclose(got, np.broadcast_to(src.mean((1, 3))[:, None, None, :, None], got.shape), atol=1e-4)


def test_copy_distance_to_a_target_ray_ignores_depth_along_it():
    """copy_geometry "ray": a source point anywhere on the target unit's half-line is at distance 0,
    one r off it at r^2 whatever its depth, one behind the camera at its distance to the centre;
    "point" compares the target's own point (at its depth) instead."""
    o, d = jnp.asarray([[[1.0, 2.0, 3.0]]]), jnp.asarray([[[0.0, 0.0, 2.0]]])  # [B, Q, 3]: looking along +z
    pts = jnp.asarray([[[1.0, 2.0, 4.0], [1.0, 2.0, 30.0], [1.5, 2.0, 9.0], [1.0, 2.0, 1.0]]])  # [B, S, 3]
    ray = np.asarray(copy_distance2("ray", None, pts, o, d))[0, 0]
    np.testing.assert_allclose(ray, [0.0, 0.0, 0.25, 4.0], atol=1e-4)
    point = np.asarray(copy_distance2("point", o + 3 * d, pts, o, d))[0, 0]  # target point at z = 9
    np.testing.assert_allclose(point, [25.0, 441.0, 0.25, 64.0], atol=1e-3)


def test_copy_block_shortcut_closes_only_same_camera_other_time():
    """copy_block_shortcut: a target frame does not copy from a source frame filmed from its camera at
    another time; the frame at its time and frames from other cameras stay open. With q, k silent
    (uniform weights over the open units) each target frame is the mean of the open frames' pixels."""
    model, inp, params = _copy_model_and_params(seed=4, unit="pixel")
    cfg = model.cfg.replace(copy_block_shortcut=True)
    params = dict(params, copy=jax.tree.map(jnp.zeros_like, params["copy"]))  # q, k silent
    eye = np.eye(4)[:3].reshape(12)
    other = eye.copy()
    other[3] = 1.0
    src_cam = np.stack([eye, other, eye])  # source frame 1 from another camera
    x = np.asarray(inp["x"]).copy()
    inp = dict(inp, x=jnp.asarray(x), tgt_time=_times([2, 0, 1]), src_time=_times([0, 1, 2]),
               tgt_cam=jnp.asarray(np.tile(eye, (B, FH, 1)), jnp.float32),
               src_cam=jnp.asarray(np.tile(src_cam, (B, 1, 1)), jnp.float32))
    out = np.asarray(SpaceTimeDiT(cfg).apply({"params": params}, **inp))[:, :FH]  # [B, FH, HP, WP, C]
    frame_mean = x[:, FH:].mean((2, 3))  # [B, FH, C]
    open_frames = {0: (1, 2), 1: (0, 1), 2: (1,)}  # target frame -> open source frames
    for i, js in open_frames.items():
        want = frame_mean[:, list(js)].mean(1)[:, None, None]
        np.testing.assert_allclose(out[:, i], np.broadcast_to(want, out[:, i].shape), atol=1e-5)
    plain = np.asarray(model.apply({"params": params}, **inp))[:, :FH]  # without the rule: all open
    np.testing.assert_allclose(plain[:, 0], np.broadcast_to(frame_mean.mean(1)[:, None, None], plain[:, 0].shape),
                               atol=1e-5)


def test_copy_gate_mixes_the_open_and_the_closed_copy():
    """copy_gate: a second copy closed to the camera-matched shortcut, mixed with the first by a
    learned per-unit gate (half each at init; all the first's when its logit is large)."""
    model, inp, params = _copy_model_and_params(seed=5, unit="pixel")
    gated = SpaceTimeDiT(model.cfg.replace(copy_gate=True))
    eye = np.eye(4)[:3].reshape(12)
    inp = dict(inp, tgt_time=_times([2, 0, 1]), src_time=_times([0, 1, 2]),
               tgt_cam=jnp.asarray(np.tile(eye, (B, FH, 1)), jnp.float32),
               src_cam=jnp.asarray(np.tile(eye, (B, FH, 1)), jnp.float32))
    new = nn.unbox(gated.init(jax.random.PRNGKey(4), **inp))["params"]
    assert new["copy_gate"]["kernel"].shape == (model.cfg.dim, 4)  # one gate per latent pixel of a token
    params = dict(params, **{k: jax.tree.map(jnp.zeros_like, new[k]) for k in ("copy", "copy_moved", "copy_gate")})
    x = np.asarray(inp["x"])
    frame_mean = x[:, FH:].mean((2, 3))  # [B, FH, C]; q, k silent: uniform weights over the open units
    open_copy = frame_mean.mean(1)[:, None]  # every source frame
    closed_copy = frame_mean[:, [2, 0, 1]]  # only the frame at the requested time (one camera)
    out = np.asarray(gated.apply({"params": params}, **inp))[:, :FH].mean((2, 3))  # [B, FH, C]
    np.testing.assert_allclose(out, 0.5 * open_copy + 0.5 * closed_copy, atol=1e-5)
    params["copy_gate"]["bias"] = jnp.full_like(params["copy_gate"]["bias"], 30.0)
    out = np.asarray(gated.apply({"params": params}, **inp))[:, :FH].mean((2, 3))
    np.testing.assert_allclose(out, np.broadcast_to(open_copy, out.shape), atol=1e-5)


def test_copy_source_adds_to_the_head():
    """The copy is added to the head's output on the target half only (the same weights without the
    copy give the head's output)."""
    model, inp, params = _copy_model_and_params(seed=1, perturb_head=True)
    plain = SpaceTimeDiT(model.cfg.replace(copy_source=False))
    out = np.asarray(model.apply({"params": params}, **inp))
    head = np.asarray(plain.apply({"params": {k: v for k, v in params.items() if k != "copy"}}, **inp))
    np.testing.assert_allclose(out[:, FH:], head[:, FH:], atol=1e-5)
    copy = (out - head)[:, :FH]
    src = np.asarray(inp["x"][:, FH:])
    assert np.abs(copy).max() > 1e-2
    assert copy.min() >= src.min() - 1e-4 and copy.max() <= src.max() + 1e-4


def test_copy_source_config_errors_and_no_export():
    from stp_jax.convert.dit import export_dit

    with pytest.raises(ValueError, match="copy_source needs a source half"):
        preset("tiny", mode="wan", copy_source=True)
    with pytest.raises(ValueError, match="copy_source needs"):
        preset("tiny", out_channels=8, copy_source=True)
    with pytest.raises(ValueError, match="copy_unit 'token' is not one of"):
        preset("tiny", copy_source=True, copy_unit="token")
    with pytest.raises(ValueError, match="copy_geometry 'plane' is not one of"):
        preset("tiny", copy_source=True, copy_geometry="plane")
    with pytest.raises(ValueError, match="copy_geometry 'ray' needs copy_fov > 0"):
        preset("tiny", copy_source=True, copy_geometry="ray")
    with pytest.raises(ValueError, match="copy_fov 50.0 needs copy_source, cam_heads > 0"):
        preset("tiny", copy_source=True, copy_fov=50.0)
    with pytest.raises(ValueError, match="copy_fov 180.0 needs"):
        preset("tiny", copy_source=True, cam_heads=1, rope_frames="time", copy_fov=180.0)
    with pytest.raises(ValueError, match="copy_block_shortcut needs copy_source and cam_heads"):
        preset("tiny", copy_source=True, copy_block_shortcut=True)
    with pytest.raises(ValueError, match="copy_gate needs copy_source and cam_heads"):
        preset("tiny", copy_source=True, copy_gate=True)
    model, _, params = _copy_model_and_params()
    with pytest.raises(ValueError, match="no PyTorch counterpart"):
        export_dit(params, model.cfg)
