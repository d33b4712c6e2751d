"""What limits the composite's depth of moving objects: its per-pixel head trained alone, in minutes.

DiTConfig.copy_composite predicts each source pixel's log depth and moving mask with a small head
(dit.py::_composite_mix: the source token's last hidden state, the pixel's place in its token, 3x3
convolutions over the source frame's pixels). docs/LEARNING.md §20 found the moving pixels' depth to
be what keeps the composite from retiming a moving source; §21 splits that error: the objects that
bounce (in the air, their shadows detached) carry most of it. This trains the head's pixel path alone
(no DiT, no token state) on rendered source clips (the grid diagonal of procedural scenes, with the
renderer's depth and masks), with the model's loss (train_step.composite_supervision's depth_mse +
moving_ce), and scores it on the held-out scenes beside a trivial baseline (each pixel the training
clips' mean log depth at its place in the frame, moving where most are). Variants:

  base   the model's convolutions: dilations dit.COMPOSITE_CONV_DILATIONS, width COMPOSITE_HEAD_WIDTH
  wide   dilations (1, 2, 4, 8, 4, 2, 1): a 45-pixel field, the whole frame at 24x24
  time3  the first convolution 3x3x3 over the source frames: the frames before and after
  rays   + each pixel's unit ray and its camera's centre (poses relative to the first camera, as the
         model's composite gets them): the geometry a ground plane needs
  attn   + each pixel's (row, column, frame), then after the convolutions two residual attention layers:
         every pixel over its frame's pixels (an object can find its detached shadow), and every 2x2
         cell over the whole clip's cells (an object can find where its track touches the ground)
  attn_frame  attn without the clip's layer: the frame's pixels only
  (attn and attn_frame are the model's composite_attend="frame+clip" / "frame" layers; docs/LEARNING.md §22 was
  measured with an earlier copy of them in this tool: flax's attention with biases and affine norms, output not
  zero at init)

    python tools/depth_head_probe.py --variants base,wide --steps 1500       # ~13 / 21 min on 2 cores
    python tools/depth_head_probe.py --variants attn --steps 1500            # ~55 min on 2 cores
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from stp_jax.controls import camera as cam_lib  # noqa: E402
from stp_jax.data import camxtime as cx  # noqa: E402
from stp_jax.data import pipeline as pl  # noqa: E402
from stp_jax.models import dit, layered  # noqa: E402
from stp_jax.train_step import MOVING_DEPTH_WEIGHT  # noqa: E402

VARIANTS = {"base": dit.COMPOSITE_CONV_DILATIONS, "wide": (1, 2, 4, 8, 4, 2, 1),
            "time3": dit.COMPOSITE_CONV_DILATIONS, "rays": dit.COMPOSITE_CONV_DILATIONS,
            "attn": dit.COMPOSITE_CONV_DILATIONS, "attn_frame": dit.COMPOSITE_CONV_DILATIONS}
COPY_DEPTH = dit.DiTConfig.copy_depth  # the head predicts log(depth / copy_depth), as in the model


def source_clip(seed: int, frames: int, size: int):
    """One scene's source clip (camera i at time i) and what the renderer knows of it: pixels [T, H, W, 3]
    uint8, object id [T, H, W] (-1: none), shadow [T, H, W], z depth [T, H, W], bouncing [T, H, W] (an
    object that leaves the ground), poses [T, 3, 4] relative to the first camera."""
    scene, path = cx.make_scene(seed), cx.camera_path(seed, frames)
    idx = np.arange(frames)
    img = np.asarray(cx.render_path_jit(scene, path, idx, idx, frames, size, size))
    obj, shadow, z = (np.asarray(v) for v in cx.render_labels_path_jit(scene, path, idx, idx, frames, size, size))
    rt = cam_lib.source_condition(path, frames, frames_per_latent=1, rule="first_camera").reshape(frames, 3, 4)
    return img, obj, shadow & (obj < 0), z, cx.bouncing(scene, obj), rt


def ray_inputs(rt, size: int) -> np.ndarray:
    """Unit rays in the first camera's frame and the camera's centre (/ COPY_DEPTH): [N, T, H, W, 6]."""
    d = np.einsum("ntij,hwj->nthwi", rt[..., :3], np.asarray(cam_lib.pinhole_rays(size, size, cx.FOV_DEG)))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return np.concatenate([d, np.broadcast_to(rt[:, :, None, None, :, 3], d.shape) / COPY_DEPTH], -1)


class PixelHead(nn.Module):
    """The composite head's pixel path (dit.composite_pixel_features), then per pixel a hidden layer and (log depth,
    mask logit)."""
    dilations: tuple
    time_kernel: int = 1
    attend: str = ""  # dit.COMPOSITE_ATTENDS: "frame" or "frame+clip" for the attn variants (module doc)

    @nn.compact
    def __call__(self, x):  # [B, T, H, W, C] -> [B, T, H, W, 2]
        width, dil = dit.COMPOSITE_HEAD_WIDTH, self.dilations
        if self.time_kernel > 1:  # over (frame, row, column): the neighbouring frames' pixels
            x = jax.nn.gelu(nn.Conv(width, (self.time_kernel, 3, 3), padding="SAME")(x))
            dil = dil[1:]
        h = dit.composite_pixel_features(x, dil, self.attend)  # [B, T, H, W, width]
        return nn.Dense(2, kernel_init=nn.initializers.zeros)(jax.nn.gelu(nn.Dense(width)(h)))


def train_and_score(variant: str, data, n_train: int, steps: int, batch: int, seed: int) -> dict:
    img, rt = data[0], data[5]
    x = img.astype(np.float32) / 127.5 - 1
    if variant == "rays":
        x = np.concatenate([x, ray_inputs(rt, img.shape[2])], -1).astype(np.float32)
    want, moving = _targets(data)
    head = PixelHead(VARIANTS[variant], 3 if variant == "time3" else 1,
                     attend={"attn": "frame+clip", "attn_frame": "frame"}.get(variant, ""))
    params = head.init(jax.random.PRNGKey(seed), jnp.asarray(x[:1]))
    opt = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
    opt_state = opt.init(params)

    def loss_fn(p, xb, wb, mb):  # train_step.composite_supervision's depth_mse + moving_ce
        out = head.apply(p, xb)
        w = 1.0 + (MOVING_DEPTH_WEIGHT - 1.0) * mb
        return (jnp.sum(w * jnp.square(out[..., 0] - wb)) / jnp.sum(w)
                + jnp.mean(optax.sigmoid_binary_cross_entropy(out[..., 1], mb)))

    @jax.jit
    def step(p, s, xb, wb, mb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, wb, mb)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    rng, t0 = np.random.default_rng(seed), time.time()
    for _ in range(steps):
        i = rng.integers(0, n_train, batch)
        params, opt_state, _ = step(params, opt_state, jnp.asarray(x[i]), jnp.asarray(want[i]), jnp.asarray(moving[i]))
    out = np.concatenate([np.asarray(head.apply(params, jnp.asarray(x[k:k + 2]))) for k in range(n_train, len(x), 2)])
    return {"seconds": time.time() - t0, **score(out[..., 0], out[..., 1] > 0, data, n_train)}


def _targets(data):
    """The head's targets: log(depth / COPY_DEPTH) (the sky at layered.SKY_DEPTH), moving (objects and shadows)."""
    _, obj, shadow, z, _, _ = data
    return (np.log(np.clip(z, 0.05, layered.SKY_DEPTH) / COPY_DEPTH).astype(np.float32),
            ((obj >= 0) | shadow).astype(np.float32))


def score(log_depth, mask, data, n_train: int) -> dict:
    """Predictions for the held-out clips (data[n_train:]): mask IoU and log-depth RMS errors by kind of pixel."""
    _, obj, shadow, _, bouncing, _ = (v[n_train:] for v in data)
    want, moving = (v[n_train:] for v in _targets(data))
    err, mv, ob = log_depth - want, moving > 0, obj >= 0
    rms = lambda sel: float(np.sqrt(np.mean(err[sel] ** 2)))  # noqa: E731
    return {"iou": float((mask & mv).sum() / max((mask | mv).sum(), 1)), "all": rms(np.ones_like(mv)),
            "moving": rms(mv), "objects": rms(ob), "grounded": rms(ob & ~bouncing), "bouncing": rms(bouncing),
            "bouncing_mean": float(err[bouncing].mean()), "shadows": rms(shadow), "still": rms(~mv)}


def pixel_mean(data, n_train: int) -> dict:
    """The trivial baseline: every held-out pixel gets the training clips' mean log depth at its place in
    the frame, and is moving where most training pixels there are."""
    want, moving = (v[:n_train] for v in _targets(data))
    shape = data[0][n_train:].shape[:4]
    return {"seconds": 0.0, **score(np.broadcast_to(want.mean((0, 1)), shape),
                                    np.broadcast_to(moving.mean((0, 1)) > 0.5, shape), data, n_train)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="base,wide,time3,rays")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=4, help="clips per step (tiny_camxtime's global batch)")
    ap.add_argument("--train-scenes", type=int, default=240)
    ap.add_argument("--scenes", type=int, default=8, help="held-out scenes scored (stp-eval's first N)")
    ap.add_argument("--size", type=int, default=24)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    variants = a.variants.split(",")
    if unknown := [v for v in variants if v not in VARIANTS]:
        ap.error(f"unknown variants {unknown}; expected some of {sorted(VARIANTS)}")
    t0 = time.time()
    seeds = list(range(a.train_scenes)) + [pl.TEST_SEED_OFFSET + i for i in range(a.scenes)]
    clips = [source_clip(s, a.frames, a.size) for s in seeds]
    data = tuple(np.stack([c[k] for c in clips]) for k in range(6))
    print(f"rendered {len(seeds)} source clips of {a.frames} frames at {a.size}x{a.size} in {time.time() - t0:.0f} s; "
          f"held out: {(data[1][a.train_scenes:] >= 0).mean():.3f} object pixels (bouncing "
          f"{data[4][a.train_scenes:].mean():.3f}), {data[2][a.train_scenes:].mean():.3f} shadow pixels", flush=True)
    print("| variant | steps | s | mask IoU | log-depth RMS: all | moving | objects | grounded | bouncing (mean) "
          "| shadows | still |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for v in ["pixel mean (baseline)", *variants]:
        baseline = v.startswith("pixel mean")
        r = (pixel_mean(data, a.train_scenes) if baseline
             else train_and_score(v, data, a.train_scenes, a.steps, a.batch, a.seed))
        print(f"| {v} | {0 if baseline else a.steps} | {r['seconds']:.0f} | {r['iou']:.3f} | {r['all']:.3f} | {r['moving']:.3f} | "
              f"{r['objects']:.3f} | {r['grounded']:.3f} | {r['bouncing']:.3f} ({r['bouncing_mean']:+.3f}) | "
              f"{r['shadows']:.3f} | {r['still']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
