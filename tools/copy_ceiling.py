"""The ceiling of the source copy: the best output that only moves source blocks, before training.

DiTConfig.copy_source makes each target unit (a whole token, or one latent pixel of it with
copy_unit "pixel") a mixture of source units. Its best case is an oracle that replaces every
target block by the nearest (L2) source block of the same size, taken from any source frame: at
the units' grid (what the copy can choose from), or at any pixel offset (what no token grid
limits), and the soft version that flow.FlowConfig.copy_loss teaches the copy (flow.copy_targets,
``--temp``). This scores that oracle like stp-eval does (PSNR, SSIM, time and camera errors against
the held-out scenes' grids), beside the trivial baselines. If the oracle cannot retime a case, no
copy at that unit size can.

Beside it, the copy by geometry alone (what DiTConfig.copy_fov's distance term does with nothing
learned): every target tile takes the source tile whose centre's world point is nearest to its
own, each point the tile centre's ray at a depth, placed by its camera: the renderer's true depth
(the tile's median z), or one depth for every tile (copy_fov's initial 5); and with the true depth
from the source frame of the requested time only (what the time heads would add: a reprojection
of that frame). No truth pixels are looked at: if this retimes a case, a copy with the right
depths can. And the copy along target rays (DiTConfig.copy_geometry "ray") with the source
frames' true depth: each target tile takes the source tile at the smallest angle from its ray, plus
a preference per frame for the requested time (``--time-prefs``; 0 gives the camera-matched frame).
And (``--composite``) the two-layer 2.5D composite a model with perfect depth and a perfect mask of
what changes with time could build (models/layered.py, DiTConfig.copy_composite's): the
camera-matched frame with the masked pixels cut out and filled from the other frames, under the
masked pixels of the frame of the requested time, each pixel forward-warped by its true depth; the
mask is the objects, or the objects and their shadows; and the same two layers at the copy's units
(whole tiles along target rays, gated where either layer shows something that moves).

    python tools/copy_ceiling.py                                  # 8x8 (tokens) and 4x4 (latent pixels)
    python tools/copy_ceiling.py --blocks 8,4,2 --scenes 8 --cases reverse,moving:reverse
    python tools/copy_ceiling.py --blocks 4 --time-prefs "" --composite --cases reverse,moving:reverse
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from einops import rearrange  # noqa: E402

from stp_jax import evaluate  # noqa: E402
from stp_jax.controls.camera import pinhole_rays  # noqa: E402
from stp_jax.data import camxtime as cx  # noqa: E402
from stp_jax.diffusion import flow  # noqa: E402
from stp_jax.models import layered  # noqa: E402
from stp_jax.models.dit import copy_distance2  # noqa: E402

CASES = "still:reverse,reverse,moving:reverse,moving:freeze_mid,cam:reverse_path,cam:last_view"


def oracle_copy(sources: np.ndarray, truth: np.ndarray, block: int, any_offset: bool = False) -> np.ndarray:
    """Every block x block tile of each truth clip [T, H, W, 3] replaced by its nearest source tile
    (any source frame; at the tile grid, or at any pixel offset). uint8 [T, H, W, 3]."""
    t, h, w, _ = truth.shape
    src = sources.astype(np.float32)
    if any_offset:  # every placement of the tile in every source frame
        win = np.lib.stride_tricks.sliding_window_view(src, (block, block), axis=(1, 2))  # [T, h', w', 3, b, b]
        cand = rearrange(win, "t y x c a e -> (t y x) (a e c)")
    else:
        cand = rearrange(src, "t (y a) (x e) c -> (t y x) (a e c)", a=block, e=block)
    want = rearrange(truth.astype(np.float32), "t (y a) (x e) c -> (t y x) (a e c)", a=block, e=block)
    d2 = (want ** 2).sum(1)[:, None] + (cand ** 2).sum(1)[None] - 2 * want @ cand.T  # [tiles, candidates]
    best = cand[np.argmin(d2, axis=1)]
    return rearrange(best, "(t y x) (a e c) -> t (y a) (x e) c", t=t, y=h // block, x=w // block, a=block,
                     e=block).round().clip(0, 255).astype(np.uint8)


def target_copy(sources: np.ndarray, truth: np.ndarray, block: int, temp: float) -> np.ndarray:
    """Every tile of the truth replaced by the mixture of source tiles that flow.copy_targets gives it
    (what flow.FlowConfig.copy_loss teaches the copy; values in [-1, 1] as the latents hold them)."""
    t, h, w, _ = truth.shape
    tiles = lambda v: rearrange(v.astype(np.float32) / 127.5 - 1.0, "t (y a) (x e) c -> (t y x) (a e c)",  # noqa: E731
                                a=block, e=block)
    src = jnp.asarray(tiles(sources))[None]
    mix = jnp.einsum("qs,sv->qv", flow.copy_targets(jnp.asarray(tiles(truth))[None], src, temp)[0], src[0])
    out = (np.asarray(mix) + 1.0) * 127.5
    return rearrange(out, "(t y x) (a e c) -> t (y a) (x e) c", t=t, y=h // block, x=w // block, a=block,
                     e=block).round().clip(0, 255).astype(np.uint8)


FLAT_DEPTH = 5.0  # DiTConfig.copy_depth's default: the cameras' distance to the scene centre
SKY_DEPTH = layered.SKY_DEPTH  # the sky's points: far, so nearby directions stay near each other


def tile_points(c2w: np.ndarray, depth: np.ndarray, block: int) -> np.ndarray:
    """World points of every block x block tile's centre [T*Y*X, 3] for frames filmed by c2w [T, 4, 4]
    with per-pixel z depth [T, H, W] (the tile's median; the sky at SKY_DEPTH)."""
    _, h, w = depth.shape
    z = np.median(rearrange(np.minimum(depth, SKY_DEPTH), "t (y a) (x e) -> t y x (a e)", a=block, e=block), -1)
    rays = np.asarray(pinhole_rays(h // block, w // block, cx.FOV_DEG))  # [Y, X, 3]: a tile's centre, as a pixel of a coarser grid
    pts = np.einsum("tij,tyxj->tyxi", c2w[:, :3, :3], rays[None] * z[..., None]) + c2w[:, None, None, :3, 3]
    return pts.reshape(-1, 3)


def geometric_copy(sources: np.ndarray, src_pts: np.ndarray, tgt_pts: np.ndarray, block: int,
                   allowed: np.ndarray | None = None) -> np.ndarray:
    """Each target tile <- the source tile whose centre point is nearest (tile_points' order), among
    the source frames ``allowed`` [T target, T source] for its frame (default: all)."""
    t, h, w, _ = sources.shape
    tiles = rearrange(sources, "t (y a) (x e) c -> (t y x) a e c", a=block, e=block)
    d2 = (tgt_pts ** 2).sum(1)[:, None] + (src_pts ** 2).sum(1)[None] - 2 * tgt_pts @ src_pts.T
    if allowed is not None:
        per = len(tgt_pts) // t  # tiles per frame
        d2 = np.where(np.repeat(np.repeat(allowed, per, 0), per, 1), d2, np.inf)
    return rearrange(tiles[np.argmin(d2, axis=1)], "(t y x) a e c -> t (y a) (x e) c", t=t, y=h // block)


def tile_rays(c2w: np.ndarray, size: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Every block x block tile's centre ray for frames filmed by c2w [T, 4, 4]: origins and
    world directions [T*Y*X, 3] each (tile_points' order)."""
    rays = np.asarray(pinhole_rays(size // block, size // block, cx.FOV_DEG)).reshape(-1, 3)  # [Y*X, 3]
    dirs = np.einsum("tij,uj->tui", c2w[:, :3, :3], rays)
    return np.broadcast_to(c2w[:, None, :3, 3], dirs.shape).reshape(-1, 3), dirs.reshape(-1, 3)


def ray_copy(sources: np.ndarray, src_pts: np.ndarray, origins: np.ndarray, dirs: np.ndarray, tgt_times: np.ndarray,
             block: int, per_frame: float) -> np.ndarray:
    """Each target tile <- the source tile whose point (src_pts) is at the smallest angle from the
    target tile's ray (origins, dirs: tile_rays; the squared sine, by DiTConfig.copy_geometry "ray"'s
    distance over the squared distance along the ray), plus ``per_frame`` per frame of animation time
    between the source frame and the target frame's requested time (tgt_times [T])."""
    t, h, w, _ = sources.shape
    per = (h // block) * (w // block)
    d2 = np.asarray(copy_distance2("ray", None, jnp.asarray(src_pts)[None], jnp.asarray(origins)[None],
                                   jnp.asarray(dirs)[None]))[0]  # [Q, S]
    unit = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    along = np.einsum("sx,qx->qs", src_pts, unit) - (origins * unit).sum(-1)[:, None]
    cost = d2 / np.maximum(along, 0.1) ** 2 + per_frame * np.abs(np.repeat(tgt_times, per)[:, None]
                                                               - np.repeat(np.arange(t), per)[None])
    tiles = rearrange(sources, "t (y a) (x e) c -> (t y x) a e c", a=block, e=block)
    return rearrange(tiles[np.argmin(cost, axis=1)], "(t y x) a e c -> t (y a) (x e) c", t=t, y=h // block)


def gated_units(sources: np.ndarray, moving: np.ndarray, src_pts: np.ndarray, origins: np.ndarray, dirs: np.ndarray,
                shows_cam: np.ndarray, times: np.ndarray, block: int) -> np.ndarray:
    """The two-layer copy at the copy's own units (block x block tiles), as a model with true source
    depths and a perfect gate could do it without the truth: every target tile is the camera-matched
    frame's tile (shows_cam) unless that tile, or the tile of the frame of the requested time (times)
    whose point is at the smallest angle from the target tile's ray (DiTConfig.copy_geometry "ray",
    that one frame only), shows something of ``moving`` [T, H, W]; then it is the latter."""
    t, h, w, _ = sources.shape
    per = (h // block) * (w // block)
    tiles = rearrange(sources, "t (y a) (x e) c -> (t y x) a e c", a=block, e=block)
    busy = rearrange(moving, "t (y a) (x e) -> (t y x) (a e)", a=block, e=block).any(-1)  # [T*per]
    d2 = np.asarray(copy_distance2("ray", None, jnp.asarray(src_pts)[None], jnp.asarray(origins)[None],
                                   jnp.asarray(dirs)[None]))[0]  # [Q, S]
    unit = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    along = np.einsum("sx,qx->qs", src_pts, unit) - (origins * unit).sum(-1)[:, None]
    frame_q, frame_s = np.repeat(np.arange(t), per), np.repeat(np.arange(t), per)
    cost = np.where(frame_s[None] == times[frame_q][:, None], d2 / np.maximum(along, 0.1) ** 2, np.inf)
    moved = np.argmin(cost, axis=1)  # [Q]
    static = shows_cam[frame_q] * per + np.arange(len(frame_q)) % per
    pick = np.where(busy[static] | busy[moved], moved, static)
    return rearrange(tiles[pick], "(t y x) a e c -> t (y a) (x e) c", t=t, y=h // block)


def cell_aux(seed: int, c2w: np.ndarray, times: np.ndarray, num_times: int, size: int):
    """The renderer's object id (-1: none), shadow flag and z depth [T, H, W] each of the cells
    (c2w [T, 4, 4], times [T]) of scene ``seed``."""
    scene = cx.make_scene(seed)
    one = jax.jit(jax.vmap(lambda c, t: cx.render(scene, c, t, num_times, size, size, with_aux=True)))
    _, obj, shadow, z = one(jnp.asarray(c2w, jnp.float32), jnp.asarray(times))
    return np.asarray(obj), np.asarray(shadow), np.asarray(z)


def composite(sources: np.ndarray, moving: np.ndarray, s_z: np.ndarray, s_c2w: np.ndarray, t_c2w: np.ndarray,
              times: np.ndarray, splat: int = 1) -> np.ndarray:
    """What a 2.5D model with perfect depth and a perfect mask of what changes with time (``moving``
    [T, H, W]: the objects, and their shadows or not) could output without seeing the truth:
    models/layered.composite (DiTConfig.copy_composite's) with the renderer's depths s_z [T, H, W] of
    the source frames (filmed by s_c2w), for the target cameras t_c2w at the requested times, the
    moving layer splatted from splat x splat points per pixel. uint8 [T, H, W, 3]."""
    f32 = lambda a: jnp.asarray(a, jnp.float32)[None]  # noqa: E731
    pix, _ = layered.composite(f32(sources), f32(np.minimum(s_z, 1e4)), jnp.asarray(moving)[None], f32(s_c2w[:, :3]),
                               f32(t_c2w[:, :3]), f32(np.arange(len(times))), f32(times), cx.FOV_DEG, splat)
    return np.asarray(pix[0]).round().clip(0, 255).astype(np.uint8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--size", type=int, default=24)
    ap.add_argument("--blocks", default="8,4", help="tile sizes in pixels (8: the embedded default's token, "
                                                     "4: its latent pixel)")
    ap.add_argument("--cases", default=CASES)
    ap.add_argument("--temp", type=float, default=flow.FlowConfig.copy_loss_temp,
                    help="temperature of the copy targets row (flow.FlowConfig.copy_loss_temp)")
    ap.add_argument("--time-prefs", default="0.0003,0.001",
                    help="per-frame preferences for the requested time of the ray copy with the true source depth")
    ap.add_argument("--composite", action="store_true",
                    help="also the 2.5D composite with the renderer's depth and object masks (composite())")
    ap.add_argument("--splat", default="1",
                    help="with --composite: points per source pixel side of the moving layer's splat (comma list: a row "
                         "each; models/layered.composite's splat, DiTConfig.composite_splat)")
    a = ap.parse_args(argv)
    blocks = [int(b) for b in a.blocks.split(",")]
    prefs = [float(x) for x in a.time_prefs.split(",") if x.strip()]
    if any(a.size % b for b in blocks):
        ap.error(f"--size {a.size} must be divisible by every block in --blocks {a.blocks}")
    cases = evaluate.check_cases(a.cases.split(","), a.frames, a.frames)
    scenes = evaluate.held_out_scenes(a.scenes, a.frames, a.frames, a.size, a.size)
    grids = scenes[2]
    print(f"{a.scenes} held-out scenes, {a.frames} frames x {a.frames} cameras, {a.size}x{a.size}; "
          "PSNR / SSIM, time error, camera error (frames, camera indices)")
    print("| case | row | PSNR | SSIM | time err | cam err |\n|---|---|---|---|---|---|")
    for case in cases:
        cams, times = evaluate.case_cells(case, a.frames, a.frames)
        src_c = evaluate.source_cameras(case, a.frames, a.frames)
        truth, sources = grids[:, cams, times], grids[:, src_c, np.arange(a.frames)]
        # the renderer's object ids, shadows and depths of every scene's source frames, rendered once
        src_aux = [cell_aux(seed, path[src_c], np.arange(a.frames), a.frames, a.size)
                   for seed, path in zip(scenes[0], scenes[1])]
        rows = {}
        for b in blocks:
            rows[f"oracle copy {b}x{b}"] = np.stack([oracle_copy(s, t, b) for s, t in zip(sources, truth)])
            rows[f"oracle copy {b}x{b}, any offset"] = np.stack([oracle_copy(s, t, b, True)
                                                                  for s, t in zip(sources, truth)])
            rows[f"copy targets {b}x{b}, temp {a.temp:g}"] = np.stack([target_copy(s, t, b, a.temp)
                                                                       for s, t in zip(sources, truth)])
        for b in blocks:
            true, flat, timed = [], [], []
            rays = {pref: [] for pref in prefs}
            at_time = times[:, None] == np.arange(a.frames)[None]  # the source frame of the requested time
            for seed, path, src, (_, _, s_z) in zip(scenes[0], scenes[1], sources, src_aux):
                s_c2w, t_c2w = path[src_c], path[cams]
                t_z = cell_aux(seed, t_c2w, times, a.frames, a.size)[2]
                s_pts, t_pts = tile_points(s_c2w, s_z, b), tile_points(t_c2w, t_z, b)
                true.append(geometric_copy(src, s_pts, t_pts, b))
                timed.append(geometric_copy(src, s_pts, t_pts, b, at_time))
                s_5, t_5 = np.full_like(s_z, FLAT_DEPTH), np.full_like(t_z, FLAT_DEPTH)
                flat.append(geometric_copy(src, tile_points(s_c2w, s_5, b), tile_points(t_c2w, t_5, b), b))
                for pref in prefs:  # the same source points, against the target tiles' rays
                    rays[pref].append(ray_copy(src, s_pts, *tile_rays(t_c2w, a.size, b), times, b, pref))
            rows[f"geometry {b}x{b}, true depth"] = np.stack(true)
            rows[f"geometry {b}x{b}, depth {FLAT_DEPTH:g}"] = np.stack(flat)
            rows[f"geometry {b}x{b}, true depth, frame of the requested time"] = np.stack(timed)
            for pref, clips in rays.items():
                rows[f"ray {b}x{b}, true source depth, {pref:g} per frame for the requested time"] = np.stack(clips)
        if a.composite:
            shows_cam = evaluate.camera_matched_frames(src_c, cams)
            objects, shadows = [], []
            for path, src, (s_obj, s_shadow, s_z) in zip(scenes[1], sources, src_aux):
                args = (s_z, path[src_c], path[cams], times)
                objects.append(composite(src, s_obj >= 0, *args))
                shadows.append(composite(src, (s_obj >= 0) | s_shadow, *args))
            rows["2.5D composite, true depth: the requested time's objects on the camera-matched frame"] = \
                np.stack(objects)
            rows["2.5D composite, true depth: the requested time's objects and shadows"] = np.stack(shadows)
            for sp in (int(x) for x in a.splat.split(",") if int(x) != 1):
                rows[f"2.5D composite, true depth: objects and shadows, moving layer splatted {sp}x{sp} per pixel"] = \
                    np.stack([composite(src, (s_obj >= 0) | s_shadow, s_z, path[src_c], path[cams], times, sp)
                              for path, src, (s_obj, s_shadow, s_z) in zip(scenes[1], sources, src_aux)])
            for b in blocks:
                gated = []
                for path, src, (s_obj, s_shadow, s_z) in zip(scenes[1], sources, src_aux):
                    s_pts = tile_points(path[src_c], s_z, b)
                    gated.append(gated_units(src, (s_obj >= 0) | s_shadow, s_pts, *tile_rays(path[cams], a.size, b),
                                             shows_cam, times, b))
                rows[f"gated units {b}x{b}, true source depth: the requested time's objects and shadows"] = \
                    np.stack(gated)
        rows.update(evaluate.baselines(sources, cams, times, a.frames, src_c))
        for name, clip in rows.items():
            m = evaluate.score(clip, truth, grids, cams, times, with_lpips=False)
            print(f"| {case} | {name} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['time_err']:.2f} | {m['cam_err']:.2f} |")


if __name__ == "__main__":
    main()
