"""The whole training path learns time control: a short overfit on one procedural scene.

Data labels (pipeline pairs), conditioning (per-frame times through the time embedding),
the loss (x0 prediction, uniform noise levels), the optimizer and the sampler all have to be
right for the model's re-rendered clips to land on the requested animation times, measured
against the scene's own ground truth (stp_jax.metrics.observed_times). No parity test
covers this path end to end.

Setting (fast on 2 CPU cores): one scene, fixed-camera pairs (only time differs), 16x16
frames, one latent frame per video frame, a 4-layer 128-wide DiT with the embedded default's
attention types and output (RoPE over animation time, camera-relative heads, the source copy:
configs/tiny_camxtime.py) and its learning rate, 200 steps (about 1.5 minutes, most of it
compiling). RoPE theta stays at the published 10 000. Calibrated on 2026-12-02 (this module's
_train_and_sample with STEPS and SHIPPED.copy_source set by hand): time errors 0.00 on reverse,
bullet time and forward, 40 dB against the truth; the same 200 steps without the source copy give
23.4 dB and time error 3.9 on reverse (the test fails then, as it should: the copy is what makes
the pictures sharp, docs/LEARNING.md §13).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from configs.tiny_camxtime import get_config
from stp_jax import inference, metrics
from stp_jax import train_step as ts
from stp_jax.controls import camera as cam_lib
from stp_jax.controls import timing
from stp_jax.data import camxtime as cx
from stp_jax.data import pipeline as pl
from stp_jax.diffusion.flow import FlowConfig
from stp_jax.models.dit import SpaceTimeDiT, dummy_inputs, preset

T, SIZE, SEED, STEPS, BATCH, DIM, LAYERS, LR = 17, 16, 3, 200, 4, 128, 4, 2e-3
SHIPPED = get_config().model  # the embedded default's attention types
WARPS = (("forward", 0.1), ("backward", 0.3), ("zigzag", 0.2), ("fixed_frame", 0.2), ("slow_global", 0.1),
         ("boomerang", 0.1))


def _train_and_sample():
    ae = inference.build_autoencoder(inference.AutoencoderConfig("patch", spatial=4, time_factor=1))
    lat = ae.latent_shape(T, SIZE, SIZE)
    cfg = preset("tiny", mode="spacetimepilot", dim=DIM, ffn_dim=4 * DIM, num_heads=4, num_layers=LAYERS,
                 in_channels=lat[-1], out_channels=lat[-1], text_dim=16, freq_dim=32, time_groups=8, attention="xla",
                 rope_frames=SHIPPED.rope_frames, cam_heads=SHIPPED.cam_heads, copy_source=SHIPPED.copy_source)
    model = SpaceTimeDiT(cfg)
    cams = cx.camera_path(SEED, T)
    grid = np.asarray(cx.render_grid_jit(cx.make_scene(SEED), cams, T, SIZE, SIZE))  # [V, T, H, W, 3]
    data = pl.DataConfig(num_frames=T, num_cameras=T, height=SIZE, width=SIZE, warp_probs=WARPS,
                         fixed_camera_pairs=1.0, frames_per_latent=1, source_camera_rule=cfg.source_camera_rule)
    make_pair, rng = pl.MakePair(data), np.random.default_rng(0)
    ctx = jnp.zeros((BATCH, 4, cfg.text_dim))
    params = nn.unbox(model.init(jax.random.PRNGKey(0), **dummy_inputs(cfg, 1, lat[0], lat[1], lat[2], 4)))["params"]
    opt = ts.make_optimizer(params, ts.OptimConfig(lr=LR, warmup=20, b2=0.99), STEPS)
    flow = FlowConfig(shift=1.0, timestep_mode="uniform_sigma", prediction="x0")

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, batch, key):
        mb = inference.model_batch(cfg.mode, ae, batch, ctx, frames_per_latent=1)
        return ts.train_step(model, opt, state, mb, key, flow_cfg=flow)

    state = ts.init_state(params, opt)
    for i in range(STEPS):
        pairs = [make_pair.random_map({"seed": np.int64(SEED), "grid": grid, "cameras": cams}, rng) for _ in range(BATCH)]
        state, _ = step(state, {k: np.stack([p[k] for p in pairs]) for k in pairs[0]}, jax.random.PRNGKey(i))

    gen = inference.make_generator(model, ae, steps=4, shift=1.0, prediction="x0")
    fixed = np.zeros(T, np.int64)
    source = grid[fixed, np.arange(T)][None]  # the first camera, times 0..T-1
    outs = {}
    for name in ("reverse", "freeze_mid", "forward"):
        times = timing.preset(name, T)
        cond = {"tgt_cam": cam_lib.target_condition(cams[fixed], frames_per_latent=1)[None],
                "src_cam": cam_lib.source_condition(cams[fixed], T, frames_per_latent=1,
                                                    rule=cfg.source_camera_rule)[None],
                "tgt_time": times[None], "src_time": np.arange(T)[None]}
        noise = jax.random.normal(jax.random.PRNGKey(1), (1,) + lat)
        outs[name] = (times, np.asarray(gen(state.params, source, cond, jnp.zeros((1, 4, cfg.text_dim)), None, noise))[0])
    return grid, fixed, outs


@pytest.mark.slow
def test_overfit_follows_the_time_schedule():
    grid, fixed, outs = _train_and_sample()
    for name in ("reverse", "freeze_mid"):
        times, clip = outs[name]
        observed = metrics.observed_times(clip, grid, fixed)
        err, _ = metrics.index_errors(observed, times)
        assert err <= 1.0, f"{name}: requested {times.tolist()}, observed {observed.tolist()} (mean error {err:.2f})"
        truth = grid[fixed, times]
        assert metrics.psnr(clip, truth).mean() > 32.0, name  # the copy's sharp frames (40 dB calibrated)
    # different schedules give different videos, each nearest its own truth
    rev, fwd = outs["reverse"][1], outs["forward"][1]
    assert np.abs(rev.astype(int) - fwd.astype(int)).mean() > 3.0
    for name, (times, clip) in outs.items():
        own = metrics.psnr(clip, grid[fixed, times]).mean()
        for other, (t2, _) in outs.items():
            if other != name:
                assert own > metrics.psnr(clip, grid[fixed, t2]).mean(), (name, other)
