"""models/layered.py, the two-layer 2.5D composite of DiTConfig.copy_composite, and its losses."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from stp_jax.data import camxtime as cx
from stp_jax.models import dit, layered
from stp_jax.models.dit import DiTConfig, SpaceTimeDiT, composite_pixels, dummy_inputs
from stp_jax.train_step import composite_supervision

FOV = cx.FOV_DEG


def _focal(size):
    return 0.5 * size / np.tan(np.deg2rad(FOV) / 2)


def _run(src, depth, moving, src_c2w, tgt_c2w, src_times, tgt_times, margin=layered.SHADOW_MARGIN):
    pix, changed = layered.composite(jnp.asarray(src, jnp.float32)[None], jnp.asarray(depth, jnp.float32)[None],
                                     jnp.asarray(moving)[None], jnp.asarray(src_c2w[:, :3], jnp.float32)[None],
                                     jnp.asarray(tgt_c2w[:, :3], jnp.float32)[None],
                                     jnp.asarray(src_times, jnp.float32)[None],
                                     jnp.asarray(tgt_times, jnp.float32)[None], FOV, margin=margin)
    return np.asarray(pix[0]).round().astype(np.uint8), np.asarray(changed[0])


def test_splat_identity_shift_and_z_buffer():
    """A still camera's splat is the identity; a camera moved one pixel footprint sideways shifts the
    pixels by one; the nearer point wins wherever it lands, whatever the order."""
    rng = np.random.default_rng(4)
    size, z = 8, 5.0
    img = jnp.asarray(rng.integers(0, 256, (size * size, 3)), jnp.float32)
    rays = layered.pinhole_rays(size, size, FOV).reshape(-1, 3)
    eye = jnp.eye(4)[:3]
    pts = rays * z
    idx, depth = layered._project(pts, eye, size, size, FOV)
    out, out_z = layered._splat(idx, depth, img, size * size)
    np.testing.assert_array_equal(out, img)
    np.testing.assert_allclose(out_z, z, rtol=1e-6)
    moved = eye.at[0, 3].set(z / _focal(size))  # one pixel's footprint to the right
    idx, depth = layered._project(pts, moved, size, size, FOV)
    out, _ = layered._splat(idx, depth, img, size * size)
    np.testing.assert_array_equal(out.reshape(size, size, 3)[:, :-1], img.reshape(size, size, 3)[:, 1:])
    near = jnp.full_like(img, 7.0)
    for order in ((img, near), (near, img)):  # the same points, once nearer
        both = jnp.concatenate(order)
        keys = jnp.concatenate([depth, depth - 1] if order[0] is img else [depth - 1, depth])
        out, _ = layered._splat(jnp.concatenate([idx, idx]), keys, both, size * size)
        assert (out.reshape(size, size, 3)[:, :-1] == 7).all()


def test_static_layer_prefers_the_camera_matched_frame():
    """The static layer takes frame k_i's own point wherever one lands, even where another frame's is nearer;
    a pixel k_i leaves empty takes the nearest other frame's. Two frames from one still camera, the second
    nearer (depth 2 against 5) and with a hole: target times 0.4 and 0.6 pick k = 0 and k = 1 (neither a source
    frame's own cell, which would be that frame as it is)."""
    rng = np.random.default_rng(2)
    size = 8
    src = rng.integers(0, 256, (2, size, size, 3)).astype(np.float32)
    depth = np.stack([np.full((size, size), 5.0), np.full((size, size), 2.0)])
    depth[0, 3, 4] = layered.SKY_DEPTH  # frame 0 has no still point here: the nearer frame fills it
    cams = np.broadcast_to(np.eye(4), (2, 4, 4))
    pix, changed = _run(src, depth, np.zeros((2, size, size), bool), cams, cams, [0, 1], [0.4, 0.6])
    want = src.astype(np.uint8).copy()
    want[0, 3, 4] = src[1, 3, 4]
    np.testing.assert_array_equal(pix, want)
    assert changed[0, 3, 4] and changed.sum() == 1


def test_composite_margin():
    """The moving layer wins over the static layer where its depth is below margin times the static one's: a moving
    pixel of frame 1 whose depth reads 6 over a ground at 5 (seen by frame 0, the camera-matched frame: frame 1's
    camera is 0.01 to the side) shows the ground at the default margin 1.05 and the moving pixel at 1.5; a margin
    must be a positive ratio."""
    rng = np.random.default_rng(5)
    size = 8
    src = rng.integers(0, 256, (2, size, size, 3)).astype(np.float32)
    depth = np.full((2, size, size), 5.0)
    depth[1, 3, 4] = 6.0
    moving = np.zeros((2, size, size), bool)
    moving[1, 3, 4] = True
    cams = np.stack([np.eye(4), np.eye(4)])
    cams[1, 0, 3] = 0.01  # a few hundredths of a pixel at these depths
    for margin, frame in ((layered.SHADOW_MARGIN, 0), (1.5, 1)):
        pix, changed = _run(src, depth, moving, cams, cams[:1], [0, 1], [1], margin)
        np.testing.assert_array_equal(pix[0, 3, 4], src[frame, 3, 4].astype(np.uint8))
        assert changed[0, 3, 4] == (frame == 1)
    assert _tiny(copy_composite=4).composite_margin == layered.SHADOW_MARGIN
    with pytest.raises(ValueError, match="composite_margin 0.0 must be a finite depth ratio > 0"):
        _tiny(copy_composite=4, composite_margin=0.0)


def test_a_source_frames_own_cell_is_that_frame():
    """A target cell that is a source frame's own (its camera and its time) is that frame exactly, even where a masked
    pixel's depth reads far behind another frame's still point (which the two layers would show there: a 10 deep
    moving pixel loses to a 5 deep fill), and nothing counts as moved. 0.1 frames off that time, or from another
    camera, the two layers apply as before."""
    rng = np.random.default_rng(6)
    size = 8
    src = rng.integers(0, 256, (2, size, size, 3)).astype(np.float32)
    depth = np.full((2, size, size), 5.0)
    depth[0, 3:5, 3:5] = 10.0  # frame 0's object, masked, its depth read far too far
    moving = np.zeros((2, size, size), bool)
    moving[0, 3:5, 3:5] = True
    eye = np.eye(4)
    cams = np.stack([eye, eye])
    pix, changed = _run(src, depth, moving, cams, eye[None], [0, 1], [0])  # frame 0's own cell
    np.testing.assert_array_equal(pix[0], src[0].astype(np.uint8))
    assert not changed.any()
    pix, changed = _run(src, depth, moving, cams, eye[None], [0, 1], [0.1])  # near time 0: two layers, the object
    np.testing.assert_array_equal(pix[0, 3:5, 3:5], src[1, 3:5, 3:5].astype(np.uint8))  # cut out and filled
    assert changed[0, 3:5, 3:5].all() and changed.sum() == 4
    shifted = eye.copy()
    shifted[0, 3] = 5.0 * 2 * np.tan(np.radians(FOV) / 2) / size  # one pixel footprint at depth 5 to the right
    far = np.stack([shifted, shifted])  # both source frames from the shifted camera; the target at the origin
    depth[0, 3:5, 3:5] = 5.0
    pix, changed = _run(src, depth, moving, far, eye[None], [0, 1], [0])  # time 0 from another camera: two layers
    np.testing.assert_array_equal(pix[0, 3:5, 4:6], src[0, 3:5, 3:5].astype(np.uint8))  # the object, one pixel over
    assert changed[0, 3:5, 4:6].all()  # moved by the moving layer
    pix2, changed2 = _run(src, depth, moving, far, eye[None], [0, 1], [0.01])
    np.testing.assert_array_equal(pix, pix2)
    np.testing.assert_array_equal(changed, changed2)


def test_moving_layer_splat_fills_magnified_objects():
    """An object seen nearer than in its source frame (5 -> 3 units: 5/3 larger) lands with holes when
    each source pixel is one point (splat 1: its 4 rows and columns land on 1, 3, 4, 6 of 8), and whole with 2x2
    points per pixel (splat 2): every target pixel whose centre sees the object, a pixel's footprint in
    from its edge, is the object's."""
    size = 8
    src = np.full((1, size, size, 3), 40.0)
    src[0, 2:6, 2:6] = 200.0  # the object, the moving layer; the rest is sky (not warped)
    depth = np.full((1, size, size), 1e4)
    depth[0, 2:6, 2:6] = 5.0
    eye = np.eye(4)[None]
    nearer = eye.copy()
    nearer[0, 2, 3] = 2.0  # the target camera 2 units forward
    covered = {}
    for splat in (1, 2):
        pix, changed = layered.composite(jnp.asarray(src, jnp.float32)[None], jnp.asarray(depth, jnp.float32)[None],
                                         jnp.asarray(depth < 10)[None], jnp.asarray(eye[:, :3], jnp.float32)[None],
                                         jnp.asarray(nearer[:, :3], jnp.float32)[None], jnp.zeros((1, 1)),
                                         jnp.full((1, 1), 0.5), FOV, splat)  # not the frame's own time: two layers
        inner = np.asarray(changed[0, 0, 2:6, 2:6])
        covered[splat] = inner.sum()
        assert (np.asarray(pix[0, 0])[np.asarray(changed[0, 0])] == 200).all()  # only the object is moved
    assert covered[1] == 4 and covered[2] == 16, covered


def test_frame_choices():
    """The camera-matched frame is the nearest pose, ties broken by the requested time; the time
    frame is the source frame nearest the requested time."""
    t = 4
    still = jnp.broadcast_to(jnp.eye(4)[:3], (1, t, 3, 4))
    moving = still.at[:, :, 0, 3].set(jnp.arange(t, dtype=jnp.float32))
    times = jnp.arange(t, dtype=jnp.float32)[None]
    k, j = layered.frame_choices(still, still, times[:, ::-1], times)
    np.testing.assert_array_equal(k[0], [3, 2, 1, 0])  # all poses tie: the frame of the requested time
    np.testing.assert_array_equal(j[0], [3, 2, 1, 0])
    k, j = layered.frame_choices(moving[:, :1].repeat(t, 1), moving, times[:, ::-1], times)
    np.testing.assert_array_equal(k[0], [0, 0, 0, 0])
    np.testing.assert_array_equal(j[0], [3, 2, 1, 0])


def test_composite_retimes_a_still_and_a_moving_camera():
    """At a still camera the composite is the frame of the requested time. With a camera moving one
    pixel footprint per frame over a textured plane, each frame's object a recoloured patch of the
    plane: seen from frame 0's camera in reverse, every target frame shows the requested time's
    object in its place, and frame 0's own object is cut out and filled from the other frames (but in the
    last, frame 0's own cell: frame 0 as it is). At the still camera, also 0.1 frames after each frame's time."""
    rng = np.random.default_rng(4)
    t, size, z = 3, 8, 5.0
    eye = np.eye(4)
    background = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    src, moving = np.repeat(background[None], t, 0), np.zeros((t, size, size), bool)
    depth = np.full((t, size, size), z)
    for f in range(t):  # one object per frame, somewhere else each time, nearer than the background
        src[f, 2 * f:2 * f + 2, 1:3] = 40 * (f + 1)
        moving[f, 2 * f:2 * f + 2, 1:3], depth[f, 2 * f:2 * f + 2, 1:3] = True, z - 1
    still = np.tile(eye, (t, 1, 1))
    for times in (np.arange(t)[::-1], np.arange(t)[::-1] + 0.1):  # each source frame's own cell; the two layers
        comp, _ = _run(src, depth, moving, still, still, np.arange(t), times)
        np.testing.assert_array_equal(comp, src[::-1])

    world = rng.integers(0, 256, (size, size + t, 3), dtype=np.uint8)
    objects = [(1, 2), (4, 6), (6, 3)]  # (row, world column) of frame f's 2x1 object
    cams = np.tile(eye, (t, 1, 1))
    cams[:, 0, 3] = np.arange(t) * z / _focal(size)
    src, moving = np.stack([world[:, f:f + size] for f in range(t)]), np.zeros((t, size, size), bool)
    want = np.repeat(world[None, :, :size], t, 0)
    for f, (r, c) in enumerate(objects):
        src[f, r:r + 2, c - f], moving[f, r:r + 2, c - f] = 50 * (f + 1), True
        want[t - 1 - f, r:r + 2, c] = 50 * (f + 1)  # target frame t-1-f shows frame f's object, seen from camera 0
    comp, changed = _run(src, np.full((t, size, size), z), moving, cams, cams[:1].repeat(t, 0), np.arange(t),
                         np.arange(t)[::-1])
    np.testing.assert_array_equal(comp, want)
    for i in range(t - 1):  # changed: where the requested time's object landed and where frame 0's was filled
        f = t - 1 - i
        r, c = objects[f]
        assert changed[i, r:r + 2, c].all()
        r0, c0 = objects[0]
        assert changed[i, r0:r0 + 2, c0].all()
    assert not changed[t - 1].any()  # time 0 from camera 0: frame 0's own cell, frame 0 itself
    assert changed.sum() <= (t - 1) * 2 * 2 * 2


def test_composite_matches_the_renderer():
    """With the renderer's depth and masks of a procedural scene, a moving source re-timed at its own
    cameras: every target frame is nearer its requested time's truth than the source frame is."""
    f, size, seed = 9, 24, 3
    scene, cams = cx.make_scene(seed), cx.camera_path(seed, f)
    src_c, times = np.arange(f), np.arange(f)[::-1]
    both = np.asarray(cx.render_path_jit(scene, cams, np.concatenate([src_c, src_c]), np.concatenate([src_c, times]),
                                         f, size, size))
    src, truth = both[:f], both[f:]
    depth, moving = (np.asarray(a) for a in cx.render_aux_path_jit(scene, cams, src_c, src_c, f, size, size))
    comp, _ = _run(src, np.minimum(depth, 1e4), moving, cams, cams, src_c, times)
    err = lambda a: np.abs(a.astype(float) - truth).mean((1, 2, 3))  # noqa: E731
    moved = times != src_c
    assert (err(comp)[moved] < err(src)[moved]).all(), (err(comp), err(src))


def _tiny(**kw):
    return DiTConfig(**{**dict(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_channels=48, out_channels=48,
                               text_dim=16, freq_dim=32, time_groups=8, patch_size=(1, 2, 2), attention="xla",
                               rope_frames="time", cam_heads=1, rope_theta=100.0, copy_source=True), **kw})


def _still_camera_inputs(c, seed: int):
    """dummy_inputs for one clip of 2 latent frames per half, random pixels (seed), every camera the identity, target
    times 0.9 / 0.1 between the source's 0 / 1 (so no source frame is at a requested time: the composite's two layers)."""
    inp = dummy_inputs(c, batch=1, latent_frames=2, height=2, width=2)
    eye = jnp.broadcast_to(jnp.eye(4)[:3].reshape(12), inp["tgt_cam"].shape)
    inp.update(x=jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, inp["x"].shape), jnp.float32), tgt_cam=eye,
               src_cam=eye, tgt_time=jnp.asarray([[0.9, 0.1, 0.1, 0.1, 0.1]]), src_time=jnp.asarray([[0.0, 1, 1, 1, 1]]))
    return inp


def test_copy_composite_model_and_losses():
    """The model's composite at init: nothing moving, every depth copy_depth; at a still camera it is
    the frame nearest the requested time (0.1 off it: not a source frame's own cell), and the output is
    the composite (the gate's hard choice at 1/2).
    The losses: the gate's target is the nearer candidate, pixel by pixel; the depth
    and mask terms compare with the renderer's."""
    c = _tiny(copy_composite=4)
    model = SpaceTimeDiT(c)
    inp = _still_camera_inputs(c, 0)  # latent times: target 0.9, 0.1 / source 0, 1
    x = inp["x"]
    params = model.init(jax.random.PRNGKey(0), **inp)
    out, inter = model.apply(params, **inp, mutable=["intermediates"])
    inter = inter["intermediates"]
    copy, comp = inter["composite_candidates"][0]
    src_pix = composite_pixels(c, x[:, 2:])  # [1, L/2, npx, 3]: the source frames' pixels
    per = comp.shape[1] // 2  # tokens per latent frame
    np.testing.assert_allclose(comp[:, :per], src_pix[:, per:], atol=1e-6)  # target frame 0 <- the last source frame
    np.testing.assert_allclose(comp[:, per:], src_pix[:, :per], atol=1e-6)
    np.testing.assert_allclose(jax.nn.sigmoid(inter["composite_gate_logits"][0]), 0.5)
    # the gate's hard choice at 1/2 is the composite, and the head starts at zero: the output is the composite
    np.testing.assert_allclose(composite_pixels(c, out[:, :2]), comp, atol=1e-6)

    batch = {"target": x[:, :2], "src_depth": jnp.full((1, 2, 8, 8), 5.0), "src_moving": jnp.zeros((1, 2, 8, 8), bool)}
    terms = composite_supervision(c, inter, batch)
    assert float(terms["depth_mse"]) < 1e-10 and abs(float(terms["moving_ce"]) - np.log(2)) < 1e-6
    assert abs(float(terms["gate_ce"]) - np.log(2)) < 1e-6  # gate at 1/2: log 2 whatever the targets
    # half the pixels e^2 times nearer than predicted: squared log error 4 on half (mean 2), absolute 2 on half (1)
    nearer = dict(batch, src_depth=jnp.where(jnp.arange(8)[:, None] < 4, 5.0, 5.0 / np.e ** 2) * jnp.ones((1, 2, 8, 8)))
    terms = composite_supervision(c, inter, nearer)
    np.testing.assert_allclose([float(terms["depth_mse"]), float(terms["depth_mae"])], [2.0, 1.0], rtol=1e-5)
    inter2 = dict(inter, composite_gate_logits=(jnp.where(  # sure of the composite where it is nearer
        jnp.sum((comp - composite_pixels(c, x[:, :2])) ** 2, -1) < jnp.sum((copy - composite_pixels(c, x[:, :2])) ** 2, -1),
        20.0, -20.0),))
    assert float(composite_supervision(c, inter2, batch)["gate_ce"]) < 1e-6
    with pytest.raises(ValueError, match="composite_aux"):
        composite_supervision(c, inter, {"target": x[:, :2]})


def test_composite_depth_loss_trains_the_chosen_norm():
    """flow.composite_depth_loss picks which depth term enters the loss: l1's total minus l2's is
    composite_loss x (depth_mae - depth_mse), everything else the same."""
    from stp_jax.diffusion.flow import FlowConfig
    from stp_jax.train_step import loss_fn

    c = _tiny(copy_composite=4, mode="spacetimepilot")
    model = SpaceTimeDiT(c)
    inp = dummy_inputs(c, batch=1, latent_frames=2, height=2, width=2)
    rng = np.random.default_rng(3)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), **inp))["params"]
    x = jnp.asarray(rng.uniform(-1, 1, inp["x"].shape), jnp.float32)
    batch = {"target": x[:, :2], "source": x[:, 2:], "context": inp["context"],
             **{k: inp[k] for k in ("tgt_cam", "src_cam", "tgt_time", "src_time")},
             "src_depth": jnp.asarray(rng.choice([0.5, 25.0], (1, 2, 8, 8)), jnp.float32),  # log errors -2.3, 1.6
             "src_moving": jnp.asarray(rng.uniform(size=(1, 2, 8, 8)) < 0.3)}
    w = 0.5
    out = {kind: loss_fn(model, params, batch, jax.random.PRNGKey(1),
                         FlowConfig(prediction="x0", composite_loss=w, composite_depth_loss=kind))
           for kind in ("l2", "l1")}
    (l2, aux), (l1, _) = out["l2"], out["l1"]
    assert abs(float(aux["depth_mae"]) - float(aux["depth_mse"])) > 1.0
    np.testing.assert_allclose(float(l1) - float(l2), w * (float(aux["depth_mae"]) - float(aux["depth_mse"])),
                               rtol=1e-4, atol=1e-6)


def test_copy_composite_config_errors():
    with pytest.raises(ValueError, match="copy_composite 4 needs"):
        _tiny(copy_composite=4, cam_heads=0)
    with pytest.raises(ValueError, match="in_channels == 3"):
        DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_channels=16, out_channels=16, text_dim=16,
                  freq_dim=32, time_groups=8, patch_size=(1, 2, 2), rope_frames="time", cam_heads=1,
                  copy_source=True, copy_composite=4)
    with pytest.raises(ValueError, match="composite_mask_logit nan must be a finite logit"):
        _tiny(copy_composite=4, composite_mask_logit=float("nan"))


def test_composite_loss_config_errors():
    """The composite's losses need the composite, and the renderer's depth and masks in the batch."""
    from stp_jax import config

    config.validate(config.load("tiny_camxtime"))  # the default trains the composite with its losses
    with pytest.raises(ValueError, match="set model.copy_composite"):
        config.validate(config.load("tiny_camxtime", ["model.copy_composite=0"]))
    with pytest.raises(ValueError, match="data.composite_aux=true"):
        config.validate(config.load("tiny_camxtime", ["data.composite_aux=false"]))
    config.validate(config.load("tiny_camxtime", ["model.copy_composite=0", "flow.composite_loss=0",
                                                  "flow.composite_gate_loss=0", "data.composite_aux=false"]))
    with pytest.raises(ValueError, match="composite_depth_loss 'l3' is unknown"):
        config.load("tiny_camxtime", ["flow.composite_depth_loss=l3"])


def test_composite_mask_logit():
    """model.composite_mask_logit: a pixel joins the moving layer where its mask logit is above it (every
    logit -1 here: nothing moves at the default 0, everything at -2)."""
    moved = {}
    for threshold in (0.0, -2.0):
        c = _tiny(copy_composite=4, composite_mask_logit=threshold)
        model = SpaceTimeDiT(c)
        inp = _still_camera_inputs(c, 1)
        params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), **inp))["params"]
        params["composite_heads"]["bias"] = jnp.asarray([0.0, -1.0])
        _, inter = model.apply({"params": params}, **inp, mutable=["intermediates"])
        moved[threshold] = np.asarray(inter["intermediates"]["composite_moved"][0])
    assert not moved[0.0].any() and moved[-2.0].all()


def test_composite_gate_moved():
    """composite_gate="moved": wherever the composite moved a pixel the output is the composite, whatever
    the learned gate says (here sure of the copy), and the gate's loss leaves those pixels out; where it
    moved nothing, the learned gate decides. "learned" follows the gate everywhere."""
    inp = None
    for gate_kind in ("learned", "moved"):
        c = _tiny(copy_composite=4, composite_gate=gate_kind)
        model = SpaceTimeDiT(c)
        if inp is None:
            inp = _still_camera_inputs(c, 1)
            x = inp["x"]
        params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), **inp))["params"]
        params["composite_gate"]["bias"] = jnp.full_like(params["composite_gate"]["bias"], -20.0)  # the copy
        for moving in (-20.0, 20.0):  # nothing moves (the composite moves no pixel) / everything moves
            params["composite_heads"]["bias"] = jnp.asarray([0.0, moving])
            out, inter = model.apply({"params": params}, **inp, mutable=["intermediates"])
            inter = inter["intermediates"]
            copy, comp = inter["composite_candidates"][0]
            moved = np.asarray(inter["composite_moved"][0])
            assert np.all(moved == (moving > 0))  # still camera: only the moving layer moves pixels here
            assert float(jnp.max(jnp.abs(copy - comp))) > 0.1
            want = comp if (gate_kind == "moved" and moving > 0) else copy
            np.testing.assert_allclose(composite_pixels(c, out[:, :2]), want, atol=1e-5)
            batch = {"target": x[:, :2], "src_depth": jnp.full((1, 2, 8, 8), 5.0),
                     "src_moving": jnp.zeros((1, 2, 8, 8), bool)}
            gate_ce = float(composite_supervision(c, inter, batch)["gate_ce"])
            assert (gate_ce == 0.0) == (gate_kind == "moved" and moving > 0)
    with pytest.raises(ValueError, match="composite_gate 'always'"):
        _tiny(copy_composite=4, composite_gate="always")


def test_composite_residual():
    """composite_residual=False: where the output takes the composite it is the composite's pixels exactly, the
    head's output (made nonzero here) left out; where it takes the copy, the copy plus the head's output, as with
    the default (True), which adds the head's output everywhere. Pixel by pixel, with a mask that moves some pixels
    and not others. The head gets no gradient from pixels it is left out of."""
    c = _tiny(copy_composite=4, composite_gate="moved")
    model = SpaceTimeDiT(c)
    inp = _still_camera_inputs(c, 2)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), **inp))["params"]
    rng = np.random.default_rng(3)
    params["head"]["bias"] = jnp.asarray(rng.normal(0, 0.3, params["head"]["bias"].shape),
                                         jnp.float32)  # the head's output: its bias (the kernel starts at zero)
    params["composite_gate"]["bias"] = jnp.full_like(params["composite_gate"]["bias"], -20.0)  # the copy, unless moved
    kernel = params["composite_heads"]["kernel"]  # mask logits that differ from pixel to pixel of a token ...
    params["composite_heads"]["kernel"] = kernel.at[:, 1].set(jnp.asarray(rng.normal(0, 30.0, kernel.shape[0]),
                                                                          kernel.dtype))
    params["composite_place"] = jnp.asarray(rng.normal(0, 3.0, params["composite_place"].shape), jnp.float32)
    _, inter = model.apply({"params": params}, **inp, mutable=["intermediates"])
    median = float(np.median(np.asarray(inter["intermediates"]["composite_moving"][0])))
    params["composite_heads"]["bias"] = jnp.asarray([0.0, -median])  # ... centred: about half the pixels move
    head = np.asarray(params["head"]["bias"]).reshape(-1, 3)  # per pixel of a token, in patch-vector order [npx, 3]
    for residual in (True, False):
        m = SpaceTimeDiT(dataclasses.replace(c, composite_residual=residual))
        out, inter = m.apply({"params": params}, **inp, mutable=["intermediates"])
        inter = inter["intermediates"]
        copy, comp = (np.asarray(v) for v in inter["composite_candidates"][0])
        moved = np.asarray(inter["composite_moved"][0])[..., None] > 0  # [B, L/2, npx, 1]
        assert 0.2 < moved.mean() < 0.8 and (moved.mean(2) > 0).all() and (moved.mean(2) < 1).all(), moved.mean(2)
        want = np.where(moved, comp + (head if residual else 0.0), copy + head)
        np.testing.assert_allclose(np.asarray(composite_pixels(c, out[:, :2])), want, atol=1e-5)

        def moved_sq(p, m=m, moved=moved):  # the squared output over the moved pixels only
            return jnp.sum(composite_pixels(c, m.apply({"params": p}, **inp)[:, :2]) ** 2 * moved)
        g_head = jax.grad(moved_sq)(params)["head"]["bias"]
        assert (float(jnp.max(jnp.abs(g_head))) > 0) == residual


def _depth_response(model, params, inp, x):
    """How much each source pixel's predicted log depth [B, Fh, H, W] moves when source frame 1's corner pixel (red)
    of x changes by 1, with every parameter nudged off its initial value and the token state's path cut (so only
    the head's pixel path carries it)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    params["composite_token"]["kernel"] = jnp.zeros_like(params["composite_token"]["kernel"])

    def depth(xx):
        _, inter = model.apply({"params": params}, **dict(inp, x=xx), mutable=["intermediates"])
        return np.asarray(inter["intermediates"]["composite_log_depth"][0])

    return np.abs(depth(x.at[:, 3, 0, 0, 0].add(1.0)) - depth(x))


def test_composite_attend():
    """composite_attend: with "" the head's parameters are the convolutions' alone (as before the option); with
    attention, the pixels' places are inputs, the new layers start as identities (the output projections zero), and
    a source pixel reaches the depth of the other source frame's pixels only through the clip's layer (the token
    state's path cut here), the far corner of its own frame through either."""
    inp = None
    for attend in ("", "frame", "frame+clip"):
        c = _tiny(copy_composite=4, composite_attend=attend)
        model = SpaceTimeDiT(c)
        if inp is None:
            inp = dummy_inputs(c, batch=1, latent_frames=2, height=4, width=4)  # 16x16-pixel frames
            x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, inp["x"].shape), jnp.float32)
            inp["x"] = x
        params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), **inp))["params"]
        names = {k for k in params if k.startswith("composite_")}
        attn_names = {f"composite_{w}_attn_{p}" for w in ("frame", "clip") if w in attend for p in "qkvo"}
        assert attn_names <= names and not {n for n in names if "attn" in n} - attn_names
        assert params["composite_conv0"]["kernel"].shape[2] == (6 if attend else 3)  # + (row, column, frame)
        if attend:
            assert all(not np.any(params[n]["kernel"]) for n in attn_names if n.endswith("_o"))
        moved = _depth_response(model, params, inp, x)
        assert moved[0, 1, 0, 0] > 1e-4
        assert (moved[0, 1, -1, -1] > 1e-4) == bool(attend)  # its frame's far corner (beyond the convolutions' 17-pixel field)
        assert (moved[0, 0].max() > 1e-4) == (attend == "frame+clip")  # the other source frame
    with pytest.raises(ValueError, match="composite_attend 'pixels' is not one of"):
        _tiny(copy_composite=4, composite_attend="pixels")
    with pytest.raises(ValueError, match="needs copy_composite"):
        _tiny(composite_attend="frame")
    odd = dict(copy_composite=3, in_channels=27, out_channels=27, patch_size=(1, 1, 1))  # 3 pixels per token side
    _tiny(**odd, composite_attend="frame")  # the frame's layer needs no cells
    with pytest.raises(ValueError, match="pools 2x2 pixel cells"):
        _tiny(**odd, composite_attend="frame+clip")


def test_composite_temporal():
    """composite_temporal: the head's first convolution sees each pixel with its change to the frames 1, 2 and 4
    away (clamped at the clip's ends) and to the clip's temporal median (24 channels instead of 3), so a source
    pixel's depth reaches the other source frames' pixels at the same place only with it (the token state's path
    cut here)."""
    pix = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (1, 5, 4, 4, 3)), jnp.float32)
    got = np.asarray(dit.composite_temporal_inputs(pix))
    assert got.shape == (1, 5, 4, 4, 3 * (len(dit.COMPOSITE_TEMPORAL_OFFSETS) + 2))
    p = np.asarray(pix)
    np.testing.assert_array_equal(got[..., :3], p)
    for n, o in enumerate(dit.COMPOSITE_TEMPORAL_OFFSETS):
        other = p[:, np.clip(np.arange(5) + o, 0, 4)]
        np.testing.assert_allclose(got[..., 3 * (n + 1):3 * (n + 2)], other - p, atol=1e-7)
    np.testing.assert_allclose(got[..., -3:], np.median(p, axis=1, keepdims=True) - p, atol=1e-7)
    for temporal in (False, True):
        c = _tiny(copy_composite=4, composite_temporal=temporal)
        model = SpaceTimeDiT(c)
        inp = dummy_inputs(c, batch=1, latent_frames=2, height=4, width=4)
        x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, inp["x"].shape), jnp.float32)
        params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), **dict(inp, x=x)))["params"]
        assert params["composite_conv0"]["kernel"].shape[2] == (24 if temporal else 3)
        moved = _depth_response(model, params, inp, x)
        assert moved[0, 1, 0, 0] > 1e-4
        assert (moved[0, 0, 0, 0] > 1e-4) == temporal  # the same place in the other source frame


def test_composite_width():
    """composite_width sets the head's and the gate's hidden width (64 by default, as before the option; the
    convolutions' cost goes with its square); with attention it must split over the attention heads."""
    for width in (dit.COMPOSITE_HEAD_WIDTH, 16):
        c = _tiny(copy_composite=4, composite_width=width, composite_attend="frame+clip")
        inp = dummy_inputs(c, batch=1, latent_frames=2, height=4, width=4)
        params = nn.meta.unbox(SpaceTimeDiT(c).init(jax.random.PRNGKey(0), **inp))["params"]
        assert params["composite_conv1"]["kernel"].shape == (3, 3, width, width)
        assert params["composite_place"].shape[-1] == width
        assert params["composite_gate"]["kernel"].shape == (width, 1)
        assert params["composite_clip_attn_o"]["kernel"].shape[-1] == width
    with pytest.raises(ValueError, match="composite_width 6 with composite_attend 'frame' must be a multiple of its 4"):
        _tiny(copy_composite=4, composite_width=6, composite_attend="frame")
    with pytest.raises(ValueError, match="composite_width 0 must be >= 1"):
        _tiny(copy_composite=4, composite_width=0)
    assert _tiny(copy_composite=4, composite_width=6).composite_width == 6  # no attention: any width


def test_composite_state():
    """composite_state=False: the depth and mask head has no composite_token and reads the source pixels alone, so its
    outputs and the composite do not move with the noisy target half or the timestep; with the default (True) the
    source token's state, which attends to the target half, moves them. Every parameter nudged off its initial value."""
    for state in (True, False):
        c = _tiny(copy_composite=4, composite_state=state)
        model = SpaceTimeDiT(c)
        inp = _still_camera_inputs(c, 4)
        params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), **inp))["params"]
        assert ("composite_token" in params) == state
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
        params = jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])

        def heads(model=model, params=params, inp=inp, **kw):
            _, inter = model.apply({"params": params}, **dict(inp, **kw), mutable=["intermediates"])
            inter = inter["intermediates"]
            return [np.asarray(inter[k][0]) for k in ("composite_log_depth", "composite_moving")] + [
                np.asarray(inter["composite_candidates"][0][1])]
        base = heads()
        noisier = inp["x"].at[:, :2].set(jax.random.normal(jax.random.PRNGKey(5), inp["x"][:, :2].shape))
        for other in (heads(x=noisier), heads(timestep=inp["timestep"] * 0.3 + 100.0)):
            moved = max(float(np.max(np.abs(a - b))) for a, b in zip(base[:2], other[:2]))
            assert (moved > 1e-4) == state, moved
            if not state:
                np.testing.assert_array_equal(base[2], other[2])  # the composite's pixels: the same


def test_depth_head_probe_labels_and_heads():
    """tools/depth_head_probe.py: its labels are the renderer's (bouncing objects are objects whose slot
    bounces, shadows lie off the objects, what moves is nearer than the sky), its scores split errors by those labels, its
    rays start at the first camera looking down its axis, only the time3 head sees the neighbouring frames
    through its convolutions, and the attn head sees the whole clip (attn_frame its
    frame)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "depth_head_probe.py"
    spec = importlib.util.spec_from_file_location("depth_head_probe", path)
    tool = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tool  # flax modules' dataclasses look their module up
    spec.loader.exec_module(tool)
    seed = next(s for s in range(50) if (cx.make_scene(s).bounce[:, 0] > 0).any())
    img, obj, shadow, z, bouncing, rt = tool.source_clip(seed, 5, 16)
    bounce = cx.make_scene(seed).bounce[:, 0] > 0
    np.testing.assert_array_equal(bouncing, (obj >= 0) & bounce[np.maximum(obj, 0)])
    assert not (shadow & (obj >= 0)).any() and (obj >= 0).any()
    assert (z[(obj >= 0) | shadow] < layered.SKY_DEPTH).all() and (z > layered.SKY_DEPTH).any()  # the sky
    data = tuple(v[None] for v in (img, obj, shadow, z, bouncing, rt))
    want, moving = tool._targets(data)
    exact = tool.score(want[0:1], moving[0:1] > 0, data, 0)  # the renderer's own answer scores perfectly
    assert exact["iou"] == 1.0 and all(exact[k] == 0.0 for k in ("all", "moving", "bouncing", "shadows", "still"))
    off = tool.score(want[0:1] + bouncing * 0.5, moving[0:1] > 0, data, 0)  # half a unit off on bouncing objects only
    assert off["bouncing"] == pytest.approx(0.5) and off["bouncing_mean"] == pytest.approx(0.5) and off["grounded"] == 0.0
    rays = tool.ray_inputs(rt[None], 16)[0]  # [T, H, W, 6]
    np.testing.assert_allclose(np.linalg.norm(rays[..., :3], axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(rays[0, ..., 3:], 0.0, atol=1e-6)  # the first camera is the origin
    np.testing.assert_allclose(rays[0, 7:9, 7:9, :3].mean((0, 1)), [0, 0, 1], atol=2e-3)  # its axis: z
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 3, 8, 8, 3)), jnp.float32)
    nudged = x.at[:, 2].add(1.0)  # the last frame only
    for variant, kernel in (("base", 1), ("time3", 3)):
        head = tool.PixelHead(tool.VARIANTS[variant], kernel)
        params = head.init(jax.random.PRNGKey(0), x)
        params = jax.tree.map(lambda a: a + 0.1, params)  # the output layer starts at zero
        moved = np.abs(np.asarray(head.apply(params, nudged) - head.apply(params, x)))  # [1, T, H, W, 2]
        assert moved[:, 2].max() > 1e-3
        assert (moved[:, 1].max() > 1e-3) == (kernel == 3) and moved[:, 0].max() == 0
    # attn: a pixel in one frame's corner reaches the far corner of another frame (the clip's attention)
    place = dit.pixel_places((1, 3, 8, 8))
    assert place.shape == (1, 3, 8, 8, 3) and place.min() == -1.0 and place.max() == 1.0
    np.testing.assert_array_equal(place[0, :, 0, -1], [[-1, 1, -1], [-1, 1, 0], [-1, 1, 1]])  # row, column, frame
    for attend in ("frame+clip", "frame"):
        head = tool.PixelHead(tool.VARIANTS["attn"], attend=attend)
        params = head.init(jax.random.PRNGKey(0), x)
        leaves, tree = jax.tree.flatten(params)  # random, not +0.1: outputs stay small enough to see the change
        keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
        params = jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
        moved = np.abs(np.asarray(head.apply(params, x.at[:, 2, 0, 0, 0].add(1.0)) - head.apply(params, x)))
        assert moved[:, 2, 7, 7].max() > 1e-4  # the frame's far corner: both
        assert (moved[:, 0].max() > 1e-4) == (attend == "frame+clip")  # another frame: only through the clip's layer
