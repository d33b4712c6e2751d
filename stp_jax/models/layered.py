"""A two-layer 2.5D composite of a source clip in new cameras at new times (ours; no parameters).

What DiTConfig.copy_composite adds to the source copy (docs/LEARNING.md §18-19): given every source
pixel's depth and a mask of what changes with time (objects and their shadows), each target frame i,
filmed by camera i at animation time tau_i, is built from the source pixels alone:

  static layer  the camera-matched source frame k_i (the nearest pose; ties: the nearest in time)
                with its masked pixels left out, forward-warped into camera i; where it leaves a hole,
                the other source frames' unmasked pixels, warped the same way (the nearest point wins,
                frames nearer k_i in time on near-ties);
  moving layer  the masked pixels of the source frame at tau_i, warped into camera i, over the static
                layer where they are nearer (or about as near: a shadow lies on the ground).
  A target cell that is a source frame's own (camera i is frame k_i's, within SAME_POSE, and tau_i its
  time, within SAME_TIME) is that frame, exactly, whatever the depths and masks (the layers would let a
  mask or depth error show another frame's fill there).

Warps are forward splats with a z-buffer: each point lands on the target pixel its projection falls
in. The moving layer can be splatted from splat x splat points per pixel (sub-pixel rays carrying
the pixel's colour and depth), so an object seen larger than in its source frame lands without holes.
A target pixel that nothing reaches keeps frame k_i's own pixel. Sky (depth >= SKY_DEPTH) is not
warped. Pinhole of ``fov`` degrees across the width, OpenCV camera axes, poses camera-to-world [3, 4]
in one world frame.

Letters: B batch, T target frames, S source frames, H, W pixels, P = S*H*W source points.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from stp_jax.controls.camera import pinhole_rays

SKY_DEPTH = 30.0  # points this far or farther are sky: not warped (the procedural scenes' sky is at 1e9)
SHADOW_MARGIN = 1.05  # composite's default margin: the moving layer wins where it is nearer than this times the static
# layer's depth (a shadow lies on the ground); larger forgives a moving pixel's depth read too far (LEARNING §27)
SAME_TIME = 1e-3  # animation times this close (in frames) are one time,
SAME_POSE = 1e-3  # and camera-to-world poses this close (every entry) one camera: a target cell that is a source frame's own
NEAR_TIE = 0.02  # static-layer fill: a frame d frames from k_i counts its depth (1 + NEAR_TIE * d) times


def frame_choices(tgt_rt, src_rt, tgt_times, src_times):
    """For each target frame: the camera-matched source frame (the nearest pose, [3, 4] as 12 numbers;
    ties broken by time to the requested one) and the source frame nearest the requested time.
    tgt_rt [B, T, 3, 4], src_rt [B, S, 3, 4], tgt_times [B, T], src_times [B, S] -> (k, j) [B, T] int."""
    pose = jnp.sum(jnp.square(tgt_rt.reshape(*tgt_rt.shape[:2], 1, 12)
                              - src_rt.reshape(src_rt.shape[0], 1, -1, 12)), -1)  # [B, T, S]
    dt = jnp.abs(tgt_times[:, :, None] - src_times[:, None, :])  # [B, T, S]
    k = jnp.argmin(pose + 1e-6 * dt, axis=-1)
    j = jnp.argmin(dt, axis=-1)
    return k, j


def _project(pts, rt, height: int, width: int, fov: float):
    """World points [P, 3] into camera rt [3, 4]: (flat pixel index [P] (H*W when off-image or behind),
    z [P])."""
    d = pts - rt[:, 3]  # [P, 3]
    # R^T (X - t) as three broadcast products: XLA:CPU ran the 3-long einsum as a slow dot (21 of the 44 ms)
    cam = d[:, 0:1] * rt[0, :3] + d[:, 1:2] * rt[1, :3] + d[:, 2:3] * rt[2, :3]  # [P, 3]
    focal = 0.5 * width / math.tan(math.radians(fov) / 2)
    z = cam[:, 2]
    safe = jnp.where(z > 1e-3, z, 1.0)
    u = jnp.floor(cam[:, 0] / safe * focal + width / 2).astype(jnp.int32)
    v = jnp.floor(cam[:, 1] / safe * focal + height / 2).astype(jnp.int32)
    ok = (z > 1e-3) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return jnp.where(ok, v * width + u, height * width), z


def _splat(idx, key, colour, n: int):
    """Z-buffered scatter: per pixel of n, the colour of the smallest key landing there (key inf: not
    splatted). idx [P], key [P], colour [P, 3] -> (colour [n, 3], key [n] (inf: empty))."""
    idx = jnp.where(jnp.isfinite(key), idx, n)
    zbuf = jnp.full((n + 1,), jnp.inf).at[idx].min(key)
    win = jnp.isfinite(key) & (key <= zbuf[idx])
    out = jnp.zeros((n + 1, colour.shape[-1]), colour.dtype).at[jnp.where(win, idx, n)].set(colour)
    return out[:n], zbuf[:n]


def composite(src, depth, moving, src_rt, tgt_rt, src_times, tgt_times, fov: float, splat: int = 1,
              margin: float = SHADOW_MARGIN):
    """The two-layer composite (module doc). src [B, S, H, W, 3] source pixels (any scale), depth
    [B, S, H, W] z in each source camera, moving [B, S, H, W] bool, src_rt [B, S, 3, 4], tgt_rt [B, T, 3, 4]
    camera-to-world, src_times [B, S], tgt_times [B, T] animation times. ``splat``: the moving layer is
    splatted from splat x splat points per source pixel (its colour and depth at sub-pixel rays), so that
    an object seen larger or more obliquely than in its source frame lands whole instead of with holes
    the static layer shows through (1: one point per pixel, as the static layer). ``margin``: the moving layer wins
    where its depth is below this times the static layer's. Returns (pixels
    [B, T, H, W, 3], changed [B, T, H, W] bool: the pixel comes from another frame than k_i, or from the
    moving layer)."""
    _, s, h, w, _ = src.shape
    n = h * w
    rays = pinhole_rays(h, w, fov).reshape(n, 3)  # [H*W, 3], z = 1
    k, j = frame_choices(tgt_rt, src_rt, tgt_times, src_times)  # [B, T]
    ns = n * splat * splat
    sub_rays = pinhole_rays(h * splat, w * splat, fov).reshape(ns, 3)  # [H*W*splat^2, 3]: sub-pixel rays
    up = lambda a: jnp.repeat(jnp.repeat(a, splat, axis=1), splat, axis=2)  # noqa: E731  [S, H, W, ...] -> sub-pixels

    def one_clip(src, depth, moving, src_rt, tgt_rt, k, j, own_cell):
        pts = jnp.einsum("sij,pj->spi", src_rt[:, :, :3], rays) * depth.reshape(s, n, 1) + src_rt[:, None, :, 3]
        pts = pts.reshape(s * n, 3)  # [P, 3] world points
        colour = src.reshape(s * n, 3)
        still = (~moving & (depth < SKY_DEPTH)).reshape(s * n)  # [P]
        frame = jnp.repeat(jnp.arange(s), n)  # [P]
        # the moving layer's points, per source frame: [S, Ns, 3] world points, [S, Ns, 3] colours, [S, Ns] mask
        sub_pts = (jnp.einsum("sij,pj->spi", src_rt[:, :, :3], sub_rays) * up(depth).reshape(s, ns, 1)
                   + src_rt[:, None, :, 3])
        sub_colour = up(src).reshape(s, ns, 3)
        sub_moves = (up(moving) & (up(depth) < SKY_DEPTH)).reshape(s, ns)

        def one_frame(rt, k, j, own_cell):
            idx, z = _project(pts, rt, h, w, fov)
            # one z-buffer for both static candidates: frame k's points keyed -1/z < 0 (any of them beats
            # every other frame's; among them the nearest wins), the others keyed by their tie-broken depth > 0
            near = z * (1 + NEAR_TIE * jnp.abs(frame - k))
            key = jnp.where(frame == k, -1.0 / jnp.where(z > 1e-3, z, 1.0), near)
            # the winner's colour and its depth (z, or the tie-broken depth for the other frames), exactly
            img, key_z = _splat(idx, jnp.where(still, key, jnp.inf), jnp.concatenate([colour, near[:, None]], -1), n)
            img, won_z = img[:, :3], img[:, 3]
            has_own = key_z < 0
            has_fill = jnp.isfinite(key_z) & ~has_own
            img_z = jnp.where(jnp.isfinite(key_z), won_z, jnp.inf)  # depth (inf: empty)
            m_idx, m_z = _project(sub_pts[j], rt, h, w, fov)  # frame j's moving points only
            mov, mov_z = _splat(m_idx, jnp.where(sub_moves[j], m_z, jnp.inf), sub_colour[j], n)
            on_top = jnp.isfinite(mov_z) & (mov_z < margin * img_z)  # inf static depth: always
            img = jnp.where(on_top[:, None], mov, img)
            empty = ~jnp.isfinite(key_z) & ~on_top
            img = jnp.where((empty | own_cell)[:, None], src[k].reshape(n, 3), img)  # a source frame's own cell: itself
            return img.reshape(h, w, 3), ((on_top | has_fill) & ~own_cell).reshape(h, w)

        return jax.vmap(one_frame)(tgt_rt, k, j, own_cell)

    # [B, T]: the target cell is frame k's own (its camera within SAME_POSE, its time within SAME_TIME)
    k_rt = jnp.take_along_axis(src_rt, k[:, :, None, None], axis=1)  # [B, T, 3, 4]
    own_cell = ((jnp.max(jnp.abs(k_rt - tgt_rt), axis=(-2, -1)) < SAME_POSE)
                & (jnp.abs(jnp.take_along_axis(src_times, k, axis=1) - tgt_times) < SAME_TIME))
    return jax.vmap(one_clip)(src, depth, moving, src_rt, tgt_rt, k, j, own_cell)
