"""Procedural Cam×Time: a dense camera × animation-time grid per scene, rendered in JAX.

One integer seed -> one scene, deterministically: a checkered ground, a sky gradient, a
sun with shadows and ambient light, and up to 6 animated primitives (3 spheres, 2 boxes,
1 capsule; each slot active at random) that translate, bounce, spin and change colour,
with textures so rotation is visible. Each scene also has a camera path of C poses
(an orbit, an arc with changing radius, or a dolly) around the scene centre.

``render(scene, c2w, time)`` ray-casts one image analytically; ``render_path`` renders
any list of (camera, time) cells in fixed-size chunks (``vmap`` inside ``lax.map``: bounded
memory, and bit-identical pixels however a cell is requested); ``render_grid`` is all
V × T cells. A *source* clip is the grid diagonal (camera i at time i); a *target* is any path
of (camera, time) cells, so its ground truth is exact.

World: y up, metres-ish; cameras are OpenCV camera-to-world (x right, y down, z forward).
Letters as in stp_jax/models/layers.py: V cameras, T times, H/W pixels; and O object slots.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stp_jax.controls.camera import look_at, pinhole_rays
from stp_jax.data.video_io import to_uint8

N_SPHERES, N_BOXES, N_CAPSULES = 3, 2, 1
FOV_DEG = 50.0
PATH_KINDS = ("orbit", "arc", "dolly")
BIG = 1e9


class Scene(NamedTuple):
    """All arrays; a pytree, so scenes can be stacked and vmapped."""
    pos: jax.Array  # [O, 3] base centre (y = resting height)
    size: jax.Array  # [O, 3] sphere: (r, r, r); box: half extents; capsule: (r, half-height, r)
    color: jax.Array  # [O, 3]
    color2: jax.Array  # [O, 3] texture colour
    move: jax.Array  # [O, 4] amplitude, direction angle, cycles per clip, phase
    bounce: jax.Array  # [O, 2] height, cycles per clip
    spin: jax.Array  # [O] radians over the clip
    recolor: jax.Array  # [O] hue-shift amount over the clip
    active: jax.Array  # [O] 1.0 / 0.0
    sun: jax.Array  # [3] unit direction towards the sun
    ground: jax.Array  # [2, 3] checker colours
    sky: jax.Array  # [2, 3] horizon, zenith


def make_scene(seed: int) -> Scene:
    """Deterministic random scene for ``seed`` (numpy RNG, so it is the same everywhere)."""
    g = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC4A7]))
    k = N_SPHERES + N_BOXES + N_CAPSULES
    kinds = np.array([0] * N_SPHERES + [1] * N_BOXES + [2] * N_CAPSULES)
    size = np.zeros((k, 3))
    r = g.uniform(0.25, 0.55, k)
    size[kinds == 0] = r[kinds == 0, None]
    size[kinds == 1] = g.uniform(0.2, 0.5, (N_BOXES, 3))
    size[kinds == 2] = np.stack([r[kinds == 2] * 0.7, g.uniform(0.2, 0.5, N_CAPSULES), r[kinds == 2] * 0.7], -1)
    ang = g.uniform(0, 2 * np.pi, k)
    rad = g.uniform(0.0, 1.8, k)
    height = np.where(kinds == 0, size[:, 0], np.where(kinds == 1, size[:, 1], size[:, 0] + size[:, 1]))
    pos = np.stack([rad * np.cos(ang), height, rad * np.sin(ang)], -1)
    active = (g.uniform(size=k) < 0.8).astype(np.float64)
    active[g.integers(k)] = 1.0  # never an empty scene
    elev, azim = np.deg2rad(g.uniform(30, 60)), g.uniform(0, 2 * np.pi)
    sun = np.array([np.cos(elev) * np.cos(azim), np.sin(elev), np.cos(elev) * np.sin(azim)])
    return Scene(
        pos=pos, size=size, color=g.uniform(0.15, 0.95, (k, 3)), color2=g.uniform(0.05, 0.9, (k, 3)),
        move=np.stack([g.uniform(0, 0.9, k), g.uniform(0, 2 * np.pi, k), g.uniform(0.5, 1.5, k),
                       g.uniform(0, 2 * np.pi, k)], -1),
        bounce=np.stack([g.uniform(0, 0.7, k) * (g.uniform(size=k) < 0.5), g.uniform(1, 3, k)], -1),
        spin=g.uniform(-2 * np.pi, 2 * np.pi, k), recolor=g.uniform(0, 1, k) * (g.uniform(size=k) < 0.4),
        active=active, sun=sun, ground=np.stack([g.uniform(0.35, 0.75, 3), g.uniform(0.1, 0.35, 3)]),
        sky=np.stack([g.uniform(0.6, 0.9, 3), g.uniform(0.2, 0.6, 3) * np.array([0.6, 0.8, 1.0])]),
    )


def camera_path(seed: int, num_cameras: int, kind: str | None = None) -> np.ndarray:
    """[V, 4, 4] OpenCV c2w poses around the scene centre (deterministic for ``seed``)."""
    g = np.random.default_rng(np.random.SeedSequence([int(seed), 0xCA3E]))
    kind = kind or PATH_KINDS[g.integers(len(PATH_KINDS))]
    if kind not in PATH_KINDS:
        raise ValueError(f"camera path kind {kind!r} is unknown; expected one of {PATH_KINDS}")
    radius, elev = g.uniform(4.5, 6.0), np.deg2rad(g.uniform(10, 35))
    az0 = g.uniform(0, 2 * np.pi)
    f = np.linspace(0, 1, num_cameras)
    if kind == "orbit":
        az = az0 + np.deg2rad(g.choice([-1, 1]) * g.uniform(60, 120)) * f
        rad, el = np.full_like(f, radius), np.full_like(f, elev)
    elif kind == "arc":
        az = az0 + np.deg2rad(g.choice([-1, 1]) * g.uniform(30, 60)) * f
        rad, el = radius * (1 - 0.25 * f), elev + np.deg2rad(15) * f
    else:
        az = az0 + np.deg2rad(g.uniform(-10, 10)) * f
        rad, el = radius * (1 - 0.4 * f), np.full_like(f, elev)
    centre = np.array([0.0, 0.4, 0.0])
    eyes = centre + np.stack([rad * np.cos(el) * np.cos(az), rad * np.sin(el), rad * np.cos(el) * np.sin(az)], -1)
    return np.stack([look_at(e, centre, up=(0.0, 1.0, 0.0)) for e in eyes])


# ---------------------------------------------------------------- animation


def _rot_y(a):
    c, s = jnp.cos(a), jnp.sin(a)
    return jnp.stack([jnp.stack([c, 0 * c, s], -1), jnp.stack([0 * c, 1 + 0 * c, 0 * c], -1),
                      jnp.stack([-s, 0 * c, c], -1)], -2)  # [..., 3, 3]


def animate(scene: Scene, tau):
    """Object centres [O, 3], spin angles [O], colours [O, 3] at normalised time tau in [0, 1]."""
    amp, ang, cyc, ph = (scene.move[:, i] for i in range(4))
    d = jnp.sin(2 * jnp.pi * cyc * tau + ph) * amp
    hop = scene.bounce[:, 0] * jnp.abs(jnp.sin(jnp.pi * scene.bounce[:, 1] * tau))
    centre = scene.pos + jnp.stack([d * jnp.cos(ang), hop, d * jnp.sin(ang)], -1)
    shift = scene.recolor * tau
    color = scene.color * (1 - shift[:, None]) + shift[:, None] * scene.color[:, ::-1]
    return centre, scene.spin * tau, color


# ---------------------------------------------------------------- intersections (rays [..., 3])
# Small vector algebra is written elementwise (no dot/matmul): XLA then computes every pixel
# the same way whatever the batch shape, so a cell renders bit-identically in any program.


def _mv(m, v):
    """m [..., 3, 3] applied to v [..., 3] (m @ v), elementwise."""
    return jnp.sum(m * v[..., None, :], -1)


def _vm(v, m):
    """v [..., 3] times m [..., 3, 3] (v @ m), elementwise."""
    return jnp.sum(v[..., :, None] * m, -2)


def _hit_sphere(o, d, c, r):
    oc = o - c
    b = jnp.sum(oc * d, -1)
    h = b * b - (jnp.sum(oc * oc, -1) - r * r)
    t = -b - jnp.sqrt(jnp.maximum(h, 0.0))
    return jnp.where((h > 0) & (t > 1e-4), t, BIG)


def _hit_box(o, d, c, half, rot):
    """Box centred at c, rotated about y by ``rot`` (3x3), half extents ``half``."""
    lo = _vm(o - c, rot)  # world -> local (rot is local->world, orthonormal)
    ld = _vm(d, rot)
    inv = 1.0 / jnp.where(jnp.abs(ld) < 1e-9, 1e-9, ld)
    t1, t2 = (-half - lo) * inv, (half - lo) * inv
    tn = jnp.max(jnp.minimum(t1, t2), -1)
    tf = jnp.min(jnp.maximum(t1, t2), -1)
    return jnp.where((tn < tf) & (tn > 1e-4), tn, BIG)


def _hit_capsule(o, d, a, b, r):
    """Capsule = points within r of segment a-b (the quadratic for the swept sphere)."""
    ba, oa = b - a, o - a
    baba = jnp.sum(ba * ba)
    bard, baoa = jnp.sum(d * ba, -1), jnp.sum(oa * ba, -1)
    rdoa, oaoa = jnp.sum(d * oa, -1), jnp.sum(oa * oa, -1)
    qa = baba - bard * bard
    qb = baba * rdoa - baoa * bard
    qc = baba * oaoa - baoa * baoa - r * r * baba
    h = qb * qb - qa * qc
    t_body = (-qb - jnp.sqrt(jnp.maximum(h, 0.0))) / jnp.where(jnp.abs(qa) < 1e-12, 1e-12, qa)
    y = baoa + t_body * bard
    body = (h >= 0) & (y > 0) & (y < baba) & (t_body > 1e-4)
    t_caps = jnp.minimum(_hit_sphere(o, d, a, r), _hit_sphere(o, d, b, r))
    return jnp.where(body, t_body, t_caps)


def _hits(scene: Scene, centre, rots, o, d):
    """[O, ... distances along rays to every object slot (BIG where missed/inactive)."""
    ts = []
    for i in range(N_SPHERES):
        ts.append(_hit_sphere(o, d, centre[i], scene.size[i, 0]))
    for i in range(N_SPHERES, N_SPHERES + N_BOXES):
        ts.append(_hit_box(o, d, centre[i], scene.size[i], rots[i]))
    for i in range(N_SPHERES + N_BOXES, len(scene.active)):
        up = jnp.array([0.0, 1.0, 0.0]) * scene.size[i, 1]
        ts.append(_hit_capsule(o, d, centre[i] - up, centre[i] + up, scene.size[i, 0]))
    t = jnp.stack(ts)
    return jnp.where(scene.active.reshape((-1,) + (1,) * (t.ndim - 1)) > 0, t, BIG)


def _normal_and_uv(scene: Scene, centre, rots, idx, p):
    """Surface normal and a texture coordinate at hit points p [..., 3] of object ``idx``."""
    kinds = jnp.array([0] * N_SPHERES + [1] * N_BOXES + [2] * N_CAPSULES)
    c, rot, size = centre[idx], rots[idx], scene.size[idx]
    local = _vm(p - c, rot)  # object frame (spins with the object)
    # sphere
    n_s = local / jnp.maximum(jnp.linalg.norm(local, axis=-1, keepdims=True), 1e-9)
    # box: the face whose normalised coordinate is largest
    q = local / size
    face = jnp.argmax(jnp.abs(q), -1)
    n_b = jax.nn.one_hot(face, 3) * jnp.sign(jnp.take_along_axis(q, face[..., None], -1))
    # capsule: away from the axis segment
    yc = jnp.clip(local[..., 1], -size[..., 1], size[..., 1])
    n_c = local - jnp.stack([0 * yc, yc, 0 * yc], -1)
    n_c = n_c / jnp.maximum(jnp.linalg.norm(n_c, axis=-1, keepdims=True), 1e-9)
    kind = kinds[idx][..., None]
    n_local = jnp.where(kind == 0, n_s, jnp.where(kind == 1, n_b, n_c))
    n = _mv(rot, n_local)
    # texture: stripes by longitude (spheres, capsules), checker (boxes)
    lon = jnp.arctan2(local[..., 2], local[..., 0])
    stripes = jnp.floor(lon / (np.pi / 4)) % 2
    checker = (jnp.floor(q[..., 0] * 2 + 8) + jnp.floor(q[..., 1] * 2 + 8) + jnp.floor(q[..., 2] * 2 + 8)) % 2
    tex = jnp.where(kinds[idx] == 1, checker, stripes)
    return n, tex


def render(scene: Scene, c2w, time, num_times: int, height: int, width: int, with_aux: bool = False):
    """One image [H, W, 3] float32 in [0, 1] for camera ``c2w`` [4, 4] at animation frame
    ``time`` (0..num_times-1). ``with_aux`` also returns the per-pixel object id (-1 for
    background), shadow flag and depth (z in the camera's frame; BIG for the sky), for tests and
    probes."""
    scene = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), scene)
    c2w = jnp.asarray(c2w, jnp.float32)
    tau = jnp.asarray(time, jnp.float32) / max(num_times - 1, 1)
    centre, spin, color = animate(scene, tau)
    rots = _rot_y(spin)  # [O, 3, 3]
    d = _mv(c2w[:3, :3], pinhole_rays(height, width, FOV_DEG))
    d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)  # [H, W, 3]
    o = jnp.broadcast_to(c2w[:3, 3], d.shape)

    t_obj = _hits(scene, centre, rots, o, d)  # [O, H, W]
    obj = jnp.argmin(t_obj, 0)
    t_o = jnp.min(t_obj, 0)
    t_g = jnp.where(d[..., 1] < -1e-6, -o[..., 1] / jnp.where(d[..., 1] < -1e-6, d[..., 1], -1.0), BIG)
    hit_obj = t_o < t_g
    t = jnp.minimum(t_o, t_g)
    p = o + d * t[..., None]
    n_o, tex = _normal_and_uv(scene, centre, rots, obj, p)
    n = jnp.where(hit_obj[..., None], n_o, jnp.array([0.0, 1.0, 0.0]))
    tiles = (jnp.floor(p[..., 0] * 1.5) + jnp.floor(p[..., 2] * 1.5)) % 2
    ground_col = jnp.where(tiles[..., None] > 0, scene.ground[0], scene.ground[1])
    obj_col = jnp.where(tex[..., None] > 0, color[obj], scene.color2[obj])
    base = jnp.where(hit_obj[..., None], obj_col, ground_col)
    # shadow ray towards the sun
    shadow_t = _hits(scene, centre, rots, p + n * 1e-3, jnp.broadcast_to(scene.sun, p.shape))
    shadow = jnp.min(shadow_t, 0) < BIG / 2
    diffuse = jnp.clip(jnp.sum(n * scene.sun, -1), 0.0, 1.0) * (1.0 - shadow)
    shaded = base * (0.35 + 0.75 * diffuse[..., None])
    fog = jnp.exp(-t / 25.0)[..., None]
    sky = scene.sky[0] + (scene.sky[1] - scene.sky[0]) * jnp.clip(d[..., 1:2], 0.0, 1.0)
    surface = t < BIG / 2
    img = jnp.where(surface[..., None], shaded * fog + sky * (1 - fog), sky)
    img = jnp.clip(img, 0.0, 1.0)
    if with_aux:
        depth = jnp.where(surface, t * jnp.sum(d * c2w[:3, 2], -1), BIG)  # ray distance -> z along the axis
        return img, jnp.where(hit_obj & surface, obj, -1), shadow & surface, depth
    return img


CELL_CHUNK = 8  # cells per compiled render body


def render_path(scene: Scene, cams, cam_idx, time_idx, num_times: int, height: int, width: int):
    """A clip [N, H, W, 3] uint8 of the (camera, time) cells ``cams[cam_idx[i]]`` at
    ``time_idx[i]``.

    Every request runs the same compiled body: cells are padded to a multiple of
    CELL_CHUNK and rendered chunk by chunk (lax.map over chunks, vmap inside), so a cell's
    pixels are bit-identical however it was asked for (alone, in a clip, in the grid).
    """
    cams = jnp.asarray(cams, jnp.float32)
    ci, ti = jnp.asarray(cam_idx, jnp.int32).reshape(-1), jnp.asarray(time_idx, jnp.int32).reshape(-1)
    n = ci.shape[0]
    pad = (-n) % CELL_CHUNK
    ci, ti = jnp.pad(ci, (0, pad)), jnp.pad(ti, (0, pad))
    one = lambda c, t: to_uint8(render(scene, cams[c], t, num_times, height, width), (0.0, 1.0))  # noqa: E731
    chunks = jax.lax.map(lambda a: jax.vmap(one)(*a), (ci.reshape(-1, CELL_CHUNK), ti.reshape(-1, CELL_CHUNK)))
    return chunks.reshape(-1, height, width, 3)[:n]


def render_labels_path(scene: Scene, cams, cam_idx, time_idx, num_times: int, height: int, width: int):
    """What render(..., with_aux=True) knows of the cells ``cams[cam_idx[i]]`` at ``time_idx[i]``:
    (object id [N, H, W] int32 (-1: ground or sky), shadow [N, H, W] bool (on the ground or on an object),
    z depth [N, H, W] float32 (BIG for the sky)). For probes that split pixels by what they show."""
    cams = jnp.asarray(cams, jnp.float32)

    def one(c, t):
        return render(scene, cams[c], t, num_times, height, width, with_aux=True)[1:]

    return jax.vmap(one)(jnp.asarray(cam_idx, jnp.int32), jnp.asarray(time_idx, jnp.int32))


def render_aux_path(scene: Scene, cams, cam_idx, time_idx, num_times: int, height: int, width: int):
    """The cells' (z depth [N, H, W] float32 (BIG for the sky), moving [N, H, W] bool: an object or a
    shadow, what changes with animation time), from render_labels_path. For supervising a model's
    depth and mask (data.composite_aux)."""
    obj, shadow, z = render_labels_path(scene, cams, cam_idx, time_idx, num_times, height, width)
    return z, (obj >= 0) | shadow


def bouncing(scene: Scene, obj_id) -> np.ndarray:
    """Where an object id map (render_labels_path's, -1: no object) shows an object whose slot bounces
    (leaves the ground during the clip): bool, obj_id's shape."""
    return np.isin(np.asarray(obj_id), np.flatnonzero(np.asarray(scene.bounce)[:, 0] > 0))


def render_grid(scene: Scene, cams, num_times: int, height: int, width: int):
    """Every (camera, time) cell: [V, T, H, W, 3] uint8."""
    c = jnp.asarray(cams).shape[0]
    ci, ti = jnp.meshgrid(jnp.arange(c), jnp.arange(num_times), indexing="ij")
    return render_path(scene, cams, ci, ti, num_times, height, width).reshape(c, num_times, height, width, 3)


render_grid_jit = jax.jit(render_grid, static_argnums=(2, 3, 4))
render_path_jit = jax.jit(render_path, static_argnums=(4, 5, 6))
render_aux_path_jit = jax.jit(render_aux_path, static_argnums=(4, 5, 6))
render_labels_path_jit = jax.jit(render_labels_path, static_argnums=(4, 5, 6))


def source_indices(num_frames: int, num_cameras: int):
    """The grid diagonal used as the source clip: camera i at time i (cameras subsampled
    evenly when C != T)."""
    t = np.arange(num_frames)
    return np.round(t * (num_cameras - 1) / max(num_frames - 1, 1)).astype(np.int64), t


def write_scene(seed: int, out, num_frames: int = 81, num_cameras: int = 81, height: int = 64, width: int = 64,
                fps: float = 15.0) -> list[str]:
    """Render one scene's grid and write its source clip (the grid diagonal), example targets
    along the source's camera sweep (reverse, bullet time, slow motion, pingpong) and at a fixed
    camera (reverse), the source's poses (``source_camera.json``) and a contact sheet of the
    grid (``grid.png``) into ``out``. Returns the file names written."""
    from pathlib import Path

    from stp_jax.controls import timing
    from stp_jax.controls.camera import write_trajectory_json
    from stp_jax.data.video_io import contact_sheet, write_video

    cams = camera_path(seed, num_cameras)
    grid = np.asarray(render_grid_jit(make_scene(seed), cams, num_frames, height, width))  # [V, T, H, W, 3]
    out = Path(out)
    ci, ti = source_indices(num_frames, num_cameras)
    clips = {"source": grid[ci, ti]}
    for name in ("reverse", "freeze_mid", "slowmo_first_half", "pingpong"):
        clips[f"target_{name}"] = grid[ci, timing.preset(name, num_frames)]
    clips["target_fixed_camera_reverse"] = grid[np.zeros_like(ci), timing.preset("reverse", num_frames)]
    for name, clip in clips.items():
        write_video(out / f"{name}.mp4", clip, fps=fps)
    write_trajectory_json(out / "source_camera.json", cams[ci])  # the source clip's own poses (--source-camera)
    rows = np.linspace(0, num_cameras - 1, 4).round().astype(int)
    contact_sheet([grid[i] for i in rows] + [clips["source"]], out / "grid.png", every=max(1, num_frames // 8),
                  labels=[f"cam {i}" for i in rows] + ["source"])
    return [f"{n}.mp4" for n in sorted(clips)] + ["grid.png", "source_camera.json"]
