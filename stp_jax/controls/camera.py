"""Camera poses: conventions, file readers, the published normalisation rules, presets.

Convention everywhere in stp_jax: **OpenCV camera-to-world** 4x4 matrices (x right, y down,
z forward), float64 on the host. A trajectory is an array [T, 4, 4], one pose per raw frame.
The model takes per-latent-frame poses (frames 0, 4, 8, ...) as the top 3x4 block
flattened row-major: [F', 12].

Readers: ReCamMaster ``camera_extrinsics.json`` (Unreal, row vectors, centimetres),
Blender camera-to-world, world-to-camera ``.npy`` (SpaceTimePilot source files), and our own
JSON::

    {"convention": "opencv_c2w", "poses": [[16 numbers, row-major 4x4], ...]}

Presets are generated from parameters (angles in degrees, distances in scene units), start
at the identity (or at ``start``, e.g. the last pose of a previous clip) and have T poses.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from stp_jax.controls.timing import TIME_FACTOR, ScheduleError
from stp_jax.controls.timing import latent_frames as _latent_frames


class CameraError(ValueError):
    """A camera trajectory or file is not what was expected; the message says what."""


ORTHO_TOL = 1e-3
BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # flip the camera's Y and Z axes


# ---------------------------------------------------------------- validation


def validate_poses(poses, name: str = "trajectory", frames: int | None = None,
                   mirrored_world: bool = False) -> np.ndarray:
    """Check [T, 4, 4] camera-to-world poses; returns them as float64. Raises CameraError.

    ``mirrored_world``: also accept poses whose rotations all have det -1, i.e. proper camera
    axes in a mirrored (left-handed) world, as the published conversions of Unreal and Cam×Time
    poses give (docs/REFERENCE.md §6.1, §6.4): the mirror cancels in the relative rules. A
    trajectory that mixes det +1 and det -1 is refused either way."""
    p = np.asarray(poses, dtype=np.float64)
    if p.ndim != 3 or p.shape[1:] != (4, 4):
        raise CameraError(f"{name}: expected poses of shape [T, 4, 4], got {tuple(p.shape)}")
    if frames is not None and p.shape[0] != frames:
        raise CameraError(f"{name}: expected {frames} poses (one per frame), got {p.shape[0]}")
    if p.shape[0] == 0:
        raise CameraError(f"{name}: the trajectory is empty")
    bad = np.where(~np.isfinite(p).all(axis=(1, 2)))[0]
    if bad.size:
        raise CameraError(f"{name}: pose {bad[0]} contains NaN or Inf")
    if not np.allclose(p[:, 3], [0, 0, 0, 1], atol=1e-6):
        i = int(np.where(~np.isclose(p[:, 3], [0, 0, 0, 1], atol=1e-6).all(-1))[0][0])
        raise CameraError(f"{name}: pose {i} has bottom row {p[i, 3].tolist()}, expected [0, 0, 0, 1]")
    r = p[:, :3, :3]
    err = np.abs(np.einsum("tji,tjk->tik", r, r) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(r)
    if mirrored_world and (det < 0).all():
        det = -det
    elif mirrored_world and (det < 0).any():
        i = int(np.where((det < 0) != (det[0] < 0))[0][0])
        raise CameraError(f"{name}: pose {i} has det {det[i]:.3g} but pose 0 has det {det[0]:.3g}; a trajectory in a "
                          "mirrored world must be mirrored in every pose")
    bad = np.where((err > ORTHO_TOL) | (det < 0))[0]
    if bad.size:
        i = int(bad[0])
        raise CameraError(f"{name}: pose {i} has a rotation that is not orthonormal with det +1 "
                          f"(|R^T R - I| = {err[i]:.2g}, det = {det[i]:.3g}); scaled or mirrored poses are not allowed")
    return p


# ---------------------------------------------------------------- the published rules


def relative_to_first(c2w: np.ndarray) -> np.ndarray:
    """Target rule: every pose relative to the trajectory's own first frame, inv(c2w_0) @ c2w_i."""
    c2w = np.asarray(c2w, np.float64)
    return np.linalg.inv(c2w[0])[None] @ c2w


def normalise_source(c2w: np.ndarray, eps: float = 1e-2) -> np.ndarray:
    """Source rule as published: c2w_i @ inv(c2w_0) (right-multiplied, sic), then translations
    divided by the largest absolute translation component when that exceeds ``eps``."""
    c2w = np.asarray(c2w, np.float64)
    rel = c2w @ np.linalg.inv(c2w[0])[None]
    scale = np.abs(rel[:, :3, 3]).max()
    if scale > eps:
        rel = rel.copy()
        rel[:, :3, 3] /= scale
    return rel


def subsample_latent(poses: np.ndarray, frames_per_latent: int = TIME_FACTOR) -> np.ndarray:
    """Poses of raw frames 0, 4, 8, ... (one per latent frame) from [T, 4, 4], T = 1 + 4k (every
    ``frames_per_latent``-th frame for autoencoders with another frame mapping)."""
    latent_frames(len(poses))
    return np.asarray(poses)[::frames_per_latent]


def latent_frames(num_frames: int) -> int:
    """timing.latent_frames, failing as a CameraError (a trajectory of the wrong length)."""
    try:
        return _latent_frames(num_frames)
    except ScheduleError as e:
        raise CameraError(f"camera trajectory: {e}") from e


def pack12(poses: np.ndarray) -> np.ndarray:
    """[F, 4, 4] -> [F, 12]: the top 3x4 rows flattened row-major (float32)."""
    return np.asarray(poses)[:, :3, :4].reshape(len(poses), 12).astype(np.float32)


def target_condition(c2w: np.ndarray, name: str = "target trajectory", reference: np.ndarray | None = None,
                     frames_per_latent: int = TIME_FACTOR) -> np.ndarray:
    """[T, 4, 4] target poses -> [F', 12] model input, relative to the target's first frame
    (published rule) or to ``reference`` (e.g. the source's first camera, for training pairs)."""
    p = validate_poses(c2w, name)
    rel = relative_to_first(p) if reference is None else np.linalg.inv(np.asarray(reference, np.float64))[None] @ p
    return pack12(subsample_latent(rel, frames_per_latent))


SOURCE_RULES = ("published", "first_camera")


def source_rule(cam_heads: int) -> str:
    """The source rule a DiT needs: camera-relative attention heads (DiTConfig.cam_heads) compare
    target and source poses, so both must be relative to the source's first camera, unscaled."""
    return "first_camera" if cam_heads else "published"


def source_condition(c2w: np.ndarray | None, num_frames: int, name: str = "source trajectory",
                     frames_per_latent: int = TIME_FACTOR, rule: str = "published") -> np.ndarray:
    """[T, 4, 4] source poses (or None = static identity camera) -> [F', 12] model input.

    rule ``published``: ``normalise_source``. ``first_camera``: inv(c2w_0) @ c2w_i, unscaled -- the
    target's rule, so both halves are in one frame (models with camera-relative attention,
    DiTConfig.source_camera_rule)."""
    if rule not in SOURCE_RULES:
        raise ValueError(f"source camera rule {rule!r} is not one of {SOURCE_RULES}")
    if c2w is None:
        c2w = np.tile(np.eye(4), (num_frames, 1, 1))
    p = validate_poses(c2w, name, frames=num_frames)
    return pack12(subsample_latent(normalise_source(p) if rule == "published" else relative_to_first(p),
                                   frames_per_latent))


# ---------------------------------------------------------------- readers


def _numbers(s: str, path, where) -> np.ndarray:
    if not isinstance(s, str):
        raise CameraError(f"{path}: {where}: expected a string of 16 numbers '[a b c 0] [d e f 0] [g h i 0] "
                          f"[tx ty tz 1]', got {s!r}")
    try:
        vals = [float(x) for x in re.findall(r"[-+0-9.eE]+", s)]
    except ValueError as e:
        raise CameraError(f"{path}: {where}: cannot parse numbers from {s!r}") from e
    if len(vals) != 16:
        raise CameraError(f"{path}: {where}: expected 16 numbers '[a b c 0] [d e f 0] [g h i 0] [tx ty tz 1]', "
                          f"got {len(vals)}")
    return np.array(vals).reshape(4, 4)


def unreal_to_opencv(m: np.ndarray) -> np.ndarray:
    """One ReCamMaster/Unreal row-vector pose (cm) -> OpenCV camera axes, as published
    (docs/REFERENCE.md §1): transpose, columns [1, 2, 0, 3], negate column 1, translation / 100.

    This converts the *camera* axes only: the world stays Unreal's left-handed one, so the
    rotation has det -1. Relative poses (all the model sees) are unaffected by that;
    ``read_recammaster_json`` also flips the world's up axis to give proper rotations.
    """
    c2w = np.asarray(m, np.float64).T.copy()
    c2w = c2w[:, [1, 2, 0, 3]]
    c2w[:3, 1] *= -1
    c2w[:3, 3] /= 100.0
    return c2w


# Unreal world (x forward, y right, z up; left-handed) -> right-handed (z down). A flip applied
# on the left cancels in inv(c2w_0) @ c2w_i, so relative poses equal the published rule's.
UNREAL_WORLD_FLIP = np.diag([1.0, 1.0, -1.0, 1.0])


def opencv_to_unreal(c2w: np.ndarray) -> np.ndarray:
    """Inverse of ``UNREAL_WORLD_FLIP @ unreal_to_opencv``: OpenCV c2w -> Unreal row-vector pose (cm)."""
    a = UNREAL_WORLD_FLIP @ np.asarray(c2w, np.float64)
    a[:3, 3] *= 100.0
    a[:3, 1] *= -1
    b = np.empty_like(a)
    b[:, [1, 2, 0, 3]] = a
    return b.T


def write_recammaster_json(path, trajectories: dict[str, np.ndarray]) -> None:
    """{"cam01": [T, 4, 4] OpenCV c2w, ...} -> a ReCamMaster ``camera_extrinsics.json``."""
    frames = len(next(iter(trajectories.values())))
    fmt = lambda m: " ".join("[" + " ".join(f"{v:.9g}" for v in row) + "]" for row in m)  # noqa: E731
    data = {f"frame{t}": {name: fmt(opencv_to_unreal(p[t])) for name, p in trajectories.items()} for t in range(frames)}
    Path(path).write_text(json.dumps(data))


def read_recammaster_json(path, camera: str = "cam01") -> np.ndarray:
    """``camera_extrinsics.json`` -> [T, 4, 4] OpenCV c2w for one camera, frames in order."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CameraError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(data, dict) or not data:
        raise CameraError(f"{path}: expected {{'frame0': {{'cam01': '[...] [...] [...] [...]'}}, ...}}")
    frames = []
    for key in data:
        m = re.fullmatch(r"frame(\d+)", key)
        if not m:
            raise CameraError(f"{path}: unexpected top-level key {key!r}; expected 'frame<N>'")
        frames.append((int(m[1]), key))
    poses = []
    for _, key in sorted(frames):
        cams = data[key]
        if not isinstance(cams, dict) or camera not in cams:
            raise CameraError(f"{path}: {key} has no camera {camera!r} (has {sorted(cams) if isinstance(cams, dict) else cams})")
        poses.append(UNREAL_WORLD_FLIP @ unreal_to_opencv(_numbers(cams[camera], path, f"{key}/{camera}")))
    return validate_poses(np.stack(poses), f"{path} ({camera})")


def recammaster_cameras(path) -> list[str]:
    data = json.loads(Path(path).read_text())
    first = data[min(data, key=lambda k: int(k[5:]))]
    return sorted(first)


def blender_to_opencv(c2w_blender: np.ndarray) -> np.ndarray:
    """Blender camera-to-world (camera looks down -Z, Y up) -> OpenCV c2w."""
    return np.asarray(c2w_blender, np.float64) @ BLENDER_TO_OPENCV


def read_w2c_npy(path) -> np.ndarray:
    """A (T, 4, 4) world-to-camera .npy (SpaceTimePilot source poses) -> c2w."""
    try:
        w2c = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CameraError(f"{path}: not a readable .npy array ({e})") from e
    w2c = np.asarray(w2c, np.float64)
    if w2c.ndim != 3 or w2c.shape[1:] != (4, 4):
        raise CameraError(f"{path}: expected world-to-camera poses of shape (T, 4, 4), got {w2c.shape}")
    return validate_poses(_invert_w2c(w2c, path), str(path))


def _invert_w2c(w2c: np.ndarray, path) -> np.ndarray:
    """World-to-camera poses [T, 4, 4] -> camera-to-world; a singular one is named."""
    finite = np.isfinite(w2c).all(axis=(1, 2))
    det = np.where(finite, np.linalg.det(np.where(finite[:, None, None], w2c, 0.0)), np.nan)
    bad = np.where(~(np.abs(det) > 1e-12))[0]
    if bad.size:
        raise CameraError(f"{path}: world-to-camera pose {int(bad[0])} is not invertible (determinant "
                          f"{det[bad[0]]:.3g}); expected rigid 4x4 poses with bottom row [0, 0, 0, 1]")
    return np.linalg.inv(w2c)


def read_trajectory_json(path) -> np.ndarray:
    """Our documented JSON: {"convention": "opencv_c2w" | "blender_c2w" | "opencv_w2c", "poses": [...]}."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CameraError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(data, dict) or "poses" not in data:
        raise CameraError(f"{path}: expected an object with 'poses' (a list of 4x4 or 16-number poses) and "
                          f"'convention' (opencv_c2w, blender_c2w or opencv_w2c)")
    conv = data.get("convention", "opencv_c2w")
    try:
        p = np.asarray(data["poses"], np.float64).reshape(-1, 4, 4)
    except (ValueError, TypeError) as e:
        raise CameraError(f"{path}: 'poses' must be a list of 4x4 matrices or 16-number rows") from e
    if conv == "opencv_c2w":
        pass
    elif conv == "blender_c2w":
        p = blender_to_opencv(p)
    elif conv == "opencv_w2c":
        p = _invert_w2c(p, path)
    else:
        raise CameraError(f"{path}: convention {conv!r} is unknown; expected opencv_c2w, blender_c2w or opencv_w2c")
    return validate_poses(p, str(path))


def write_trajectory_json(path, c2w: np.ndarray) -> None:
    p = validate_poses(c2w)
    Path(path).write_text(json.dumps({"convention": "opencv_c2w", "poses": p.reshape(len(p), 16).tolist()}))


def load_trajectory(path, camera: str = "cam01") -> np.ndarray:
    """Any supported trajectory file -> [T, 4, 4] OpenCV c2w."""
    path = Path(path)
    if not path.exists():
        raise CameraError(f"{path}: camera file not found")
    if path.suffix == ".npy":
        return read_w2c_npy(path)
    if path.suffix == ".json":
        try:
            head = path.read_text()[:4096]
        except (OSError, ValueError) as e:
            raise CameraError(f"{path}: not a readable JSON file ({e})") from e
        if re.search(r'"frame\d+"', head):
            return read_recammaster_json(path, camera)
        if camera != "cam01":
            raise CameraError(f"{path}: ':{camera}' selects a camera of a ReCamMaster camera_extrinsics.json, "
                              "but this is a single-trajectory file")
        return read_trajectory_json(path)
    raise CameraError(f"{path}: unknown camera file type; expected .json (ours or ReCamMaster) or .npy (world-to-camera)")


# ---------------------------------------------------------------- presets


def _rot(axis: str, deg) -> np.ndarray:
    """Rotations about the camera's own axes, batched over ``deg``: [..., 4, 4]."""
    a = np.deg2rad(np.asarray(deg, np.float64))
    c, s = np.cos(a), np.sin(a)
    m = np.zeros(a.shape + (4, 4))
    m[..., 3, 3] = 1
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    k = 3 - i - j
    m[..., k, k] = 1
    m[..., i, i], m[..., i, j], m[..., j, i], m[..., j, j] = c, -s, s, c
    return m


def _trans(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    m = np.tile(np.eye(4), v.shape[:-1] + (1, 1))
    m[..., :3, 3] = v
    return m


def pinhole_rays(height: int, width: int, fov_deg: float):
    """Rays through the pixel centres of a pinhole camera in its own frame (OpenCV: x right, y down,
    z forward), scaled to z = 1: [H, W, 3] float32 (a jax array: the procedural renderer's pixels
    depend on these exact float32 operations). ``fov_deg`` spans the width; square pixels."""
    import jax.numpy as jnp

    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    v, u = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    return jnp.stack([(u + 0.5 - width / 2) / focal, (v + 0.5 - height / 2) / focal, jnp.ones_like(u)], -1)


def look_at(eye, target, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """OpenCV c2w at ``eye`` looking at ``target`` (y down, so 'up' is -y)."""
    eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(-up, z)  # right = down x forward (OpenCV is right-handed with y down)
    if np.linalg.norm(x) < 1e-9:
        raise CameraError("look_at: the view direction is parallel to 'up'")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def orbit(num_frames: int, degrees: float = 90.0, distance: float = 1.0, elevation: float = 0.0) -> np.ndarray:
    """Orbit around the point ``distance`` in front of the first camera, keeping it centred.

    ``degrees`` > 0 moves the camera to its right (arc right), < 0 to its left; ``elevation``
    (degrees) raises the camera gradually to that height angle over the clip.
    """
    centre = np.array([0.0, 0.0, distance])
    frac = np.linspace(0.0, 1.0, num_frames)
    poses = []
    for f in frac:
        r, e = np.deg2rad(degrees * f), np.deg2rad(elevation * f)
        # position on a sphere around the centre (y is down, so rising is -y); f=0 -> origin
        off = np.array([np.sin(r) * np.cos(e), -np.sin(e), -np.cos(r) * np.cos(e)]) * distance
        poses.append(look_at(centre + off, centre))
    return relative_to_first(np.stack(poses))


# ReCamMaster's ten presets as published (docs/REFERENCE.md §6.1): relative poses
# P_f = [R | t] of frame f, linear in u = f / 80.5 for the published 81 frames (not f / 80: the
# last frame reaches u = 80/80.5); cams 07-10 rotate to keep looking at (0, 0, 4), and 09/10 move
# along the chord to the 30-degree point of the radius-4 circle around it.
PUBLISHED_FRAMES = 81
U_END = 80.0 / 80.5  # u at the last frame of the published 81
ARC_K = 4.0 - 2.0 * math.sqrt(3.0)  # forward motion per unit u of the arcs (chord to the 30-degree point)
LOOK_AT_DEPTH = 4.0  # cams 07-10 look at (0, 0, 4)


def _published(cam: int, u: np.ndarray) -> np.ndarray:
    """Relative poses [T, 4, 4] of ReCamMaster camera ``cam`` (1..10) at path parameters u [T]."""
    zero = np.zeros_like(u)
    if cam in (1, 2):  # pan right / left: yaw 20 degrees per unit u
        return _rot("y", (20.0 if cam == 1 else -20.0) * u)
    if cam in (3, 4):  # tilt up / down: pitch 10 degrees per unit u
        return _rot("x", (10.0 if cam == 3 else -10.0) * u)
    if cam in (5, 6):  # zoom in / out: 2 units forward / back per unit u
        return _trans(np.stack([zero, zero, (2.0 if cam == 5 else -2.0) * u], -1))
    if cam in (7, 8):  # translate up / down 1 unit per unit u, pitching to keep (0, 0, 4) centred
        sign = 1.0 if cam == 7 else -1.0
        pitch = np.rad2deg(np.arctan(u / LOOK_AT_DEPTH))
        return _trans(np.stack([zero, -sign * u, zero], -1)) @ _rot("x", -sign * pitch)
    if cam in (9, 10):  # arc left / right along the chord, yawing to keep (0, 0, 4) centred
        sign = 1.0 if cam == 9 else -1.0
        yaw = np.rad2deg(np.arctan2(2.0 * u, LOOK_AT_DEPTH - ARC_K * u))
        return _trans(np.stack([-sign * 2.0 * u, zero, ARC_K * u], -1)) @ _rot("y", sign * yaw)
    raise CameraError(f"camera preset cam{cam:02d}: ReCamMaster presets are cam01..cam10")


def published_u(num_frames: int, scale: float = 1.0) -> np.ndarray:
    """Path parameter u [T] of the published presets: f / 80.5 for T = 81; for any other T the
    same path sampled at T frames (u from 0 to 80/80.5), times ``scale``."""
    if num_frames < 1:
        raise CameraError(f"camera preset: the number of frames must be >= 1, got {num_frames}")
    if num_frames == 1:
        return np.zeros(1)
    return np.arange(num_frames, dtype=np.float64) * (U_END * scale / (num_frames - 1))


# name: (cam number, motion and magnitude at the last frame of the published path)
PRESETS = {
    "pan_right": (1, "pan right: yaw +19.88 deg (20 deg per unit u)"),
    "pan_left": (2, "pan left: yaw -19.88 deg"),
    "tilt_up": (3, "tilt up: pitch +9.94 deg (10 deg per unit u)"),
    "tilt_down": (4, "tilt down: pitch -9.94 deg"),
    "zoom_in": (5, "dolly forward 1.99 units (2 per unit u)"),
    "zoom_out": (6, "dolly back 1.99 units"),
    "translate_up": (7, "rise 0.99 units, pitching down 13.95 deg = atan(u/4) to keep (0, 0, 4) centred"),
    "translate_down": (8, "sink 0.99 units, pitching up 13.95 deg"),
    "arc_left": (9, "arc left around (0, 0, 4): 1.99 units left, 0.53 forward (|t| 2.06), yaw +29.82 deg"),
    "arc_right": (10, "arc right around (0, 0, 4): 1.99 units right, 0.53 forward, yaw -29.82 deg"),
}
# ReCamMaster's cam01..cam10, in its order (docs/REFERENCE.md §6.1)
RECAMMASTER_ORDER = tuple(PRESETS)


def preset(name: str, num_frames: int = PUBLISHED_FRAMES, start: np.ndarray | None = None,
           scale: float = 1.0) -> np.ndarray:
    """A named trajectory as [T, 4, 4] c2w. ``start``: continue from this pose (chained clips).

    Names: the ReCamMaster ten as published (cam01..cam10 or pan_right, ...; ``scale`` multiplies
    their motion), ``static``, and ``orbit<deg>`` / ``orbit<deg>_el<deg>`` (e.g. orbit90,
    orbit-45_el20) for bullet-time orbits.
    """
    if m := re.fullmatch(r"cam(\d\d)", name):
        i = int(m[1])
        if not 1 <= i <= 10:
            raise CameraError(f"camera preset {name!r}: ReCamMaster presets are cam01..cam10")
        name = RECAMMASTER_ORDER[i - 1]
    if name == "static":
        rel = np.tile(np.eye(4), (num_frames, 1, 1))
    elif m := re.fullmatch(r"orbit(-?\d+(?:\.\d+)?)(?:_el(-?\d+(?:\.\d+)?))?", name):
        rel = orbit(num_frames, float(m[1]), elevation=float(m[2] or 0.0))
    elif name in PRESETS:
        rel = _published(PRESETS[name][0], published_u(num_frames, scale))
    else:
        raise CameraError(f"unknown camera preset {name!r}; known: static, orbit<deg>[_el<deg>], cam01..cam10, "
                          f"{', '.join(PRESETS)}")
    out = rel if start is None else validate_poses(np.asarray(start)[None], "start pose")[0][None] @ rel
    return validate_poses(out, f"preset {name}")


def camera_from_arg(arg: str, num_frames: int) -> np.ndarray:
    """A CLI --camera value: a preset name, a trajectory file path, or ``FILE.json:camNN`` (one
    camera of a ReCamMaster ``camera_extrinsics.json``; a bare ReCamMaster file means cam01)."""
    path, camera = arg, "cam01"
    if m := re.fullmatch(r"(.+\.json):(cam\d+)", arg):
        path, camera = m[1], m[2]
    if os.path.sep in path or path.endswith((".json", ".npy")):
        p = load_trajectory(path, camera)
        if len(p) != num_frames:
            raise CameraError(f"{arg}: has {len(p)} poses but the clip has {num_frames} frames")
        return p
    return preset(arg, num_frames)


# ---------------------------------------------------------------- plot


def plotted_poses(target: np.ndarray, source: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The target and source trajectories [T, 4, 4] as the model relates them: each relative to its own first pose, so
    both start at the source's first camera (the target's first camera is the source's, whatever world frame a source
    camera file is written in; models with camera-relative heads read exactly these poses, the published source rule
    rescales the source's translations). Validated; the source may be None (a still camera)."""
    tgt = relative_to_first(validate_poses(target, "target"))
    return tgt, None if source is None else relative_to_first(validate_poses(source, "source"))


def plot_trajectories(path, target: np.ndarray, source: np.ndarray | None = None, every: int = 8,
                      scale: float = 0.15, title: str = "") -> None:
    """Camera frusta of the target (and source) trajectory, saved as a PNG, in the model's frame
    (``plotted_poses``: the source's first camera at the origin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(projection="3d")
    corners = np.array([[-1, -1, 2], [1, -1, 2], [1, 1, 2], [-1, 1, 2]], np.float64) * scale / 2
    target, source = plotted_poses(target, source)
    for poses, color, label in ((source, "tab:blue", "source"), (target, "tab:red", "target")):
        if poses is None:
            continue
        c = poses[:, :3, 3]
        ax.plot(c[:, 0], c[:, 2], -c[:, 1], color=color, label=label)
        for p in poses[::every]:
            w = corners @ p[:3, :3].T + p[:3, 3]
            for a in w:
                ax.plot([p[0, 3], a[0]], [p[2, 3], a[2]], [-p[1, 3], -a[1]], color=color, lw=0.6)
            loop = np.vstack([w, w[:1]])
            ax.plot(loop[:, 0], loop[:, 2], -loop[:, 1], color=color, lw=0.8)
    ax.set_xlabel("x (right)")
    ax.set_ylabel("z (forward)")
    ax.set_zlabel("up (-y)")
    ax.legend()
    if title:
        ax.set_title(title)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
