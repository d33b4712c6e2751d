"""Probe a model.copy_composite checkpoint: how good its depths, masks, composite and gate are.

One model pass at noise level --sigma (1: the sampler's first step) on held-out scenes, per case:
the predicted moving mask against the renderer's (IoU, recall, precision), the predicted log depth's
RMS error (over all pixels, then apart: the moving and the still ones; objects that stay on the ground,
objects that bounce, shadows), and, scored like stp-eval
(PSNR / SSIM / time and camera errors): the model's clean-sample estimate, its two candidates (the
copy, the composite), and the composite rebuilt with the renderer's depth and/or mask in place of the
predicted ones (and with the renderer's depth on the moving pixels only, on the objects only, on the
bouncing objects only), beside the baselines (docs/LEARNING.md §19-21), and how far a log-depth error of
DEPTH_STEP moves the moving pixels in the target cameras (depth_sensitivity: the depth a warp within one
pixel needs, §27).
--picture DIR writes one scene's contact sheet per case: sources, true mask, predicted mask, true
depth, predicted depth, truth, model, composite candidate (every second frame).

    python tools/composite_probe.py runs/cmp5 --cases reverse,moving:reverse --picture runs/cmp5/probe
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from stp_jax import evaluate, inference  # noqa: E402
from stp_jax.controls import camera as cam_lib  # noqa: E402
from stp_jax.controls.timing import latent_times  # noqa: E402
from stp_jax.data import camxtime as cx  # noqa: E402
from stp_jax.inference import model_times, to_float  # noqa: E402
from stp_jax.models import layered  # noqa: E402


def _u8(v) -> np.ndarray:
    return np.asarray(((np.asarray(v) + 1) * 127.5).round().clip(0, 255), np.uint8)

def _labels(seed: int, path, cam_idx, time_idx, frames: int, size: int):
    """What the renderer knows of the source cells: z depth, object, shadow (not on an object), and
    bouncing object (one that leaves the ground) [T, H, W] each."""
    scene = cx.make_scene(seed)
    obj_id, shadow, z = (np.asarray(v) for v in cx.render_labels_path_jit(scene, path, cam_idx, time_idx, frames,
                                                                          size, size))
    return z, obj_id >= 0, shadow & (obj_id < 0), cx.bouncing(scene, obj_id)


DEPTH_STEP = 0.1  # depth_sensitivity's log-depth error


def depth_sensitivity(src_rt, tgt_rt, j, z, moving, fov: float, step: float = DEPTH_STEP) -> np.ndarray:
    """How far a log-depth error of ``step`` moves the composite's moving pixels: for each target frame i, the
    moving pixels (mask ``moving`` [N, S, H, W], true depth z) of the source frame j[:, i] at the requested time,
    projected into target camera i from their depth and from their depth times e^step; the mean distance in
    pixels [N, T] (nan where that frame has no moving pixel in front of the camera). Poses [N, S|T, 3, 4]."""
    n, _, h, w = z.shape
    rays = np.asarray(cam_lib.pinhole_rays(h, w, fov), np.float64).reshape(h * w, 3)
    focal = 0.5 * w / np.tan(np.radians(fov) / 2)
    out = np.full(j.shape, np.nan)
    for b in range(n):
        for i, f in enumerate(j[b]):
            sel = moving[b, f].reshape(-1) & (z[b, f].reshape(-1) < layered.SKY_DEPTH)
            if not sel.any():
                continue
            cams = []
            for d in (z[b, f].reshape(-1)[sel], z[b, f].reshape(-1)[sel] * np.exp(step)):
                world = rays[sel] @ src_rt[b, f, :, :3].T * d[:, None] + src_rt[b, f, :, 3]
                cams.append((world - tgt_rt[b, i, :, 3]) @ tgt_rt[b, i, :, :3])  # R^T (X - t)
            front = (cams[0][:, 2] > 1e-3) & (cams[1][:, 2] > 1e-3)  # in front of the target camera at both depths
            if front.any():
                uv = [c[front, :2] / c[front, 2:] * focal for c in cams]
                out[b, i] = np.mean(np.linalg.norm(uv[1] - uv[0], axis=-1))
    return out


def probe_case(a, ck, run, scenes, ctx, case: str) -> None:
    """Print (and draw) one case (module doc)."""
    model, params, ae, c = ck.model, ck.params, ck.ae, ck.model.cfg
    t, size = run.num_frames, run.height
    seeds, paths, grids, _ = scenes
    b = len(seeds)
    cams, times = evaluate.case_cells(case, t, run.num_cameras)
    src_c, src_t = evaluate.source_cameras(case, t, run.num_cameras), np.arange(t)
    truth, sources = grids[:, cams, times], grids[:, src_c, src_t]
    cond = {"tgt_cam": np.stack([cam_lib.target_condition(p[cams], reference=p[src_c[0]], frames_per_latent=1)
                                 for p in paths]),
            "src_cam": np.stack([cam_lib.source_condition(p[src_c], t, frames_per_latent=1,
                                                          rule=c.source_camera_rule) for p in paths]),
            "tgt_time": np.tile(times, (b, 1)), "src_time": np.tile(src_t, (b, 1))}
    kw = {k: jnp.asarray(v, jnp.float32) for k, v in cond.items()}
    kw = {k: model_times(v, 1) if k.endswith("_time") else v for k, v in kw.items()}
    src, tgt = ae.encode(to_float(sources)), ae.encode(to_float(truth))
    noise = jax.random.normal(jax.random.PRNGKey(0), tgt.shape)
    x = jnp.concatenate([(1 - a.sigma) * tgt + a.sigma * noise, src], axis=1)
    out, inter = model.apply({"params": params}, x, jnp.full((b,), 1000 * a.sigma), ctx, **kw,
                             mutable=["intermediates"])
    inter = inter["intermediates"]
    labels = [_labels(int(s), p, src_c, src_t, t, size) for s, p in zip(seeds, paths)]
    true_z, obj, shadow, bouncing = (np.stack(v) for v in zip(*labels))  # [N, T, H, W] each
    true_m = obj | shadow
    pred_m = np.asarray(inter["composite_moving"][0]) > c.composite_mask_logit
    pred_z = c.copy_depth * np.exp(np.clip(np.asarray(inter["composite_log_depth"][0]), -3, 3))
    err = np.log(pred_z) - np.log(np.clip(true_z, 0.05, layered.SKY_DEPTH))  # [N, T, H, W]
    rmse = np.sqrt(np.mean(err ** 2))
    both = (pred_m & true_m).sum()
    print(f"{case}, sigma {a.sigma}: moving share {true_m.mean():.3f} (predicted {pred_m.mean():.3f}), IoU "
          f"{both / max((pred_m | true_m).sum(), 1):.3f}, recall {both / max(true_m.sum(), 1):.3f}, precision "
          f"{both / max(pred_m.sum(), 1):.3f}; log depth RMS error {rmse:.3f}; the gate picks the composite at "
          f"{float((np.asarray(inter['composite_gate_logits'][0]) >= 0).mean()):.2f} of the pixels")
    for name, sel in (("moving", true_m), ("still", ~true_m), ("object", obj), ("grounded object", obj & ~bouncing),
                      ("bouncing object", bouncing), ("shadow", shadow)):  # the warp moves the moving pixels far
        print(f"  log depth on {name} pixels: RMS error {np.sqrt(np.mean(err[sel] ** 2)):.3f}, mean error "
              f"{np.mean(err[sel]):+.3f}")
    rt_s, rt_t = kw["src_cam"].reshape(b, t, 3, 4), kw["tgt_cam"].reshape(b, t, 3, 4)
    _, j = layered.frame_choices(rt_t, rt_s, latent_times(kw["tgt_time"]), latent_times(kw["src_time"]))
    shift = depth_sensitivity(np.asarray(rt_s), np.asarray(rt_t), np.asarray(j), true_z, true_m, c.composite_fov)
    ends = np.concatenate([shift[:, :t // 4], shift[:, -(t // 4):]], 1)
    print(f"  a +{DEPTH_STEP:.2f} log-depth error moves a moving pixel by {np.nanmean(shift):.2f} px in the target "
          f"camera on average (the clip's first and last quarter: {np.nanmean(ends):.2f}, the worst frame "
          f"{np.nanmax(np.nanmean(shift, 0)):.2f}): a warp within 1 px needs the depth within "
          f"{100 * (np.exp(DEPTH_STEP / np.nanmean(ends)) - 1):.0f}% there")

    def comp(depth, moving):
        pix, _ = layered.composite(jnp.asarray(sources, jnp.float32), jnp.asarray(np.minimum(depth, 1e4)),
                                   jnp.asarray(moving), rt_s, rt_t, latent_times(kw["src_time"]),
                                   latent_times(kw["tgt_time"]), c.composite_fov, c.composite_splat,
                                   c.composite_margin)
        return np.asarray(pix).round().clip(0, 255).astype(np.uint8)

    copy, composite = (np.asarray(v) for v in inter["composite_candidates"][0])  # [B, L/2, npx, 3] each
    _, ph, pw = c.patch_size
    s, hh, ww = c.copy_composite, size // (c.copy_composite * ph), run.width // (c.copy_composite * pw)
    to_img = lambda v: np.asarray(v).reshape(b, t, hh, ww, ph, pw, s, s, 3).transpose(  # noqa: E731
        0, 1, 2, 4, 6, 3, 5, 7, 8).reshape(b, t, size, run.width, 3)
    rows = {"model (clean-sample estimate)": _u8(ae.decode(out[:, :t])), "copy candidate": _u8(to_img(copy)),
            "composite candidate": _u8(to_img(composite)),
            "composite, true depth, predicted mask": comp(true_z, pred_m),
            "composite, predicted depth, true mask": comp(pred_z, true_m),
            "composite, true depth and mask": comp(true_z, true_m),
            "composite, true mask, true depth on moving pixels only": comp(np.where(true_m, true_z, pred_z), true_m),
            "composite, true depth on objects only": comp(np.where(obj, true_z, pred_z), pred_m),
            "composite, true depth on bouncing objects only": comp(np.where(bouncing, true_z, pred_z), pred_m)}
    rows.update(evaluate.baselines(sources, cams, times, run.num_cameras, src_c))
    for name, clip in rows.items():
        m = evaluate.score(clip, truth, grids, cams, times, with_lpips=False)
        print(f"| {case} | {name} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['time_err']:.2f} | {m['cam_err']:.2f} |")
    if a.picture:
        grey = lambda v: np.repeat(np.asarray(v, np.uint8)[..., None], 3, -1)  # noqa: E731
        depth_img = lambda z: grey(np.clip(np.log(np.clip(z, 0.05, layered.SKY_DEPTH)) * 60, 0, 255))  # noqa: E731
        strips = [sources[0], grey(true_m[0] * 255), grey(pred_m[0] * 255), depth_img(true_z[0]),
                  depth_img(pred_z[0]), truth[0], rows["model (clean-sample estimate)"][0],
                  rows["composite candidate"][0]]
        sheet = np.concatenate([np.concatenate(list(v[::2]), 1) for v in strips], 0)
        Path(a.picture).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.repeat(np.repeat(sheet, 3, 0), 3, 1)).save(Path(a.picture) / f"{case.replace(':', '_')}.png")



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--cases", default="reverse,moving:reverse,moving:freeze_mid")
    ap.add_argument("--picture", default="", help="a folder for one scene's contact sheet per case")
    a = ap.parse_args(argv)
    ck = inference.load_checkpoint(a.checkpoint)
    ae, c = ck.ae, ck.model.cfg
    if not c.copy_composite or ae.time_factor != 1:
        ap.error(f"{a.checkpoint}: not a model.copy_composite model on one frame per latent frame")
    run = evaluate.run_data_config(ck)
    scenes = evaluate.held_out_scenes(a.scenes, run.num_frames, run.num_cameras, run.height, run.width)
    ctx = inference.text_context(inference.TextConfig(), a.scenes, c.text_dim)
    for case in evaluate.check_cases(a.cases.split(","), run.num_frames, run.num_cameras):
        probe_case(a, ck, run, scenes, ctx, case)


if __name__ == "__main__":
    main()
