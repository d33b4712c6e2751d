"""Cameras, time schedules and time warps."""
import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stp_jax.controls import camera as cam
from stp_jax.controls import timing
from stp_jax.data import timewarp as tw

# ---------------------------------------------------------------- camera


def test_recammaster_json_rule_hand_computed(tmp_path):
    # Unreal row-vector pose: rotation = 90 deg yaw, translation (100, 200, 300) cm
    s = "[0 1 0 0] [-1 0 0 0] [0 0 1 0] [100 200 300 1]"
    m = np.array([[0, 1, 0, 0], [-1, 0, 0, 0], [0, 0, 1, 0], [100, 200, 300, 1]], np.float64)
    # by hand: M^T = [[0,-1,0,100],[1,0,0,200],[0,0,1,300],[0,0,0,1]]
    # columns [1,2,0,3] -> [[-1,0,0,100],[0,0,1,200],[0,1,0,300],[0,0,0,1]]; negate column 1 rows 0..2;
    # translation / 100
    want = np.array([[-1, 0, 0, 1], [0, 0, 1, 2], [0, -1, 0, 3], [0, 0, 0, 1]], np.float64)
    np.testing.assert_allclose(cam.unreal_to_opencv(m), want, atol=1e-12)
    # a second frame: 30 deg more yaw, moved 50 cm forward
    c, sn = np.cos(np.pi / 6), np.sin(np.pi / 6)
    yaw = np.array([[c, sn, 0, 0], [-sn, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    m2 = yaw @ m
    m2[3, :3] += [50, 0, 0]
    s2 = " ".join("[" + " ".join(f"{v:.12g}" for v in row) + "]" for row in m2)
    (tmp_path / "cams.json").write_text(json.dumps({"frame1": {"cam01": s2}, "frame0": {"cam01": s}}))
    got = cam.read_recammaster_json(tmp_path / "cams.json", "cam01")  # frames sorted numerically
    assert got.shape == (2, 4, 4) and np.linalg.det(got[:, :3, :3]).min() > 0  # proper rotations
    raw = np.stack([cam.unreal_to_opencv(m), cam.unreal_to_opencv(m2)])
    np.testing.assert_allclose(cam.relative_to_first(got), cam.relative_to_first(raw), atol=1e-9)
    np.testing.assert_allclose(got[0, :3, 3], [1, 2, -3], atol=1e-12)  # world up flipped to down
    assert cam.recammaster_cameras(tmp_path / "cams.json") == ["cam01"]


def test_recammaster_json_errors(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"frame0": {"cam01": "[1 0 0] [0 1 0]"}}))
    with pytest.raises(cam.CameraError, match="16 numbers"):
        cam.read_recammaster_json(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"frame0": {"cam02": "[1 0 0 0] [0 1 0 0] [0 0 1 0] [0 0 0 1]"}}))
    with pytest.raises(cam.CameraError, match="no camera 'cam01'"):
        cam.read_recammaster_json(tmp_path / "b.json")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(cam.CameraError, match="c.json"):
        cam.load_trajectory(tmp_path / "c.json")


@pytest.mark.parametrize("name", list(cam.PRESETS) + ["static", "orbit90", "orbit-45_el20", "cam07"])
def test_presets_start_at_identity_and_are_valid(name):
    p = cam.preset(name, 81)
    assert p.shape == (81, 4, 4)
    np.testing.assert_allclose(p[0], np.eye(4), atol=1e-9)
    cond = cam.target_condition(p)
    assert cond.shape == (21, 12) and cond.dtype == np.float32
    np.testing.assert_allclose(cond[0], np.eye(4)[:3].reshape(12), atol=1e-6)


def test_preset_directions():
    assert cam.preset("pan_right", 5)[-1][0, 2] > 0.1  # forward axis turns to +x
    assert cam.preset("tilt_up", 5)[-1][1, 2] < -0.1  # forward axis turns up (-y)
    assert cam.preset("zoom_in", 5)[-1][2, 3] > 0  # moves forward
    assert cam.preset("arc_right", 5)[-1][0, 3] > 0  # moves right
    assert cam.preset("arc_left", 5)[-1][0, 3] < 0


@pytest.mark.parametrize("deg,el", [(90, 0), (-180, 0), (45, 30), (360, -20)])
def test_orbit_keeps_look_at_point_centred(deg, el):
    d = 2.0
    poses = cam.orbit(17, deg, distance=d, elevation=el)
    centre = np.array([0, 0, d, 1.0])
    fx = 500.0
    for p in poses:
        xc = np.linalg.inv(p) @ centre  # world -> camera
        assert xc[2] > 0  # in front
        u, v = fx * xc[0] / xc[2], fx * xc[1] / xc[2]  # pixel offset from the principal point
        assert abs(u) < 1e-6 and abs(v) < 1e-6
        np.testing.assert_allclose(np.linalg.norm(p[:3, 3] - centre[:3]), d, rtol=1e-9)


def test_chained_start_continues_from_last_pose():
    a = cam.preset("orbit45", 9)
    b = cam.preset("orbit45", 9, start=a[-1])
    np.testing.assert_allclose(b[0], a[-1], atol=1e-12)
    np.testing.assert_allclose(cam.relative_to_first(b), a, atol=1e-9)


def test_source_rule_matches_reference_formula():
    c2w = cam.preset("orbit60_el10", 81)
    c2w[:, :3, 3] *= 7.0
    w2c = np.linalg.inv(c2w)
    got = cam.source_condition(np.linalg.inv(w2c), 81)
    # written out: c2w_i @ inv(c2w_0), translation / max|t| (> 1e-2), every 4th frame, 3x4 row-major
    rel = np.stack([c @ np.linalg.inv(c2w[0]) for c in c2w])
    rel[:, :3, 3] /= np.abs(rel[:, :3, 3]).max()
    want = rel[::4, :3, :].reshape(21, 12)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(cam.source_condition(None, 81), np.tile(np.eye(4)[:3].reshape(12), (21, 1)))


def test_w2c_npy_and_our_json_round_trip(tmp_path):
    c2w = cam.preset("arc_left", 9)
    np.save(tmp_path / "src.npy", np.linalg.inv(c2w))
    np.testing.assert_allclose(cam.load_trajectory(tmp_path / "src.npy"), c2w, atol=1e-9)
    cam.write_trajectory_json(tmp_path / "t.json", c2w)
    np.testing.assert_allclose(cam.load_trajectory(tmp_path / "t.json"), c2w, atol=1e-12)
    blender = c2w @ np.diag([1.0, -1, -1, 1])
    (tmp_path / "b.json").write_text(json.dumps({"convention": "blender_c2w", "poses": blender.tolist()}))
    np.testing.assert_allclose(cam.load_trajectory(tmp_path / "b.json"), c2w, atol=1e-12)


def test_plot_writes_png(tmp_path):
    cam.plot_trajectories(tmp_path / "cams.png", cam.preset("orbit90", 81), cam.preset("static", 81))
    assert (tmp_path / "cams.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_draws_both_trajectories_from_the_source_s_first_camera():
    # a source camera file in its own world frame (turned and moved away from the origin) and a still target: the model
    # reads the target's first camera as the source's, so the plot must start both at one pose
    turn = np.eye(4)
    turn[:3, :3] = cam.preset("orbit90", 9)[4, :3, :3]
    turn[:3, 3] = [5.0, -1.0, 3.0]
    source = turn[None] @ cam.preset("arc_left", 9)
    tgt, src = cam.plotted_poses(cam.preset("static", 9), source)
    np.testing.assert_allclose(tgt, np.tile(np.eye(4), (9, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(src[0], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(src, cam.relative_to_first(cam.preset("arc_left", 9)), atol=1e-9)  # the path's shape kept
    assert cam.plotted_poses(cam.preset("orbit90", 9))[1] is None


# ---- ReCamMaster presets vs the published parametrisation (docs/REFERENCE.md §6.1), written out here


def _formula_pose(cam: int, f: int) -> np.ndarray:
    u = f / 80.5
    k = 4 - 2 * np.sqrt(3)

    def rx(a):
        c, s = np.cos(a), np.sin(a)
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])

    def ry(a):
        c, s = np.cos(a), np.sin(a)
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

    d = np.deg2rad
    r, t = {
        1: (ry(d(20 * u)), (0, 0, 0)), 2: (ry(d(-20 * u)), (0, 0, 0)),
        3: (rx(d(10 * u)), (0, 0, 0)), 4: (rx(d(-10 * u)), (0, 0, 0)),
        5: (np.eye(3), (0, 0, 2 * u)), 6: (np.eye(3), (0, 0, -2 * u)),
        7: (rx(-np.arctan(u / 4)), (0, -u, 0)), 8: (rx(np.arctan(u / 4)), (0, u, 0)),
        9: (ry(np.arctan2(2 * u, 4 - k * u)), (-2 * u, 0, k * u)),
        10: (ry(-np.arctan2(2 * u, 4 - k * u)), (2 * u, 0, k * u)),
    }[cam]
    p = np.eye(4)
    p[:3, :3], p[:3, 3] = r, t
    return p


def _published_json(path):
    """A camera_extrinsics.json in the published format, made from the formulas: Unreal row-vector
    poses in cm, 6 significant digits, frame 0 at R = I, t = (3390, 1380, 240) cm for every camera."""
    def to_cv(m):  # the published conversion, step by step
        c = m.T[:, [1, 2, 0, 3]].copy()
        c[:3, 1] *= -1
        c[:3, 3] /= 100
        return c

    def from_cv(c):
        a = c.copy()
        a[:3, 3] *= 100
        a[:3, 1] *= -1
        b = np.empty_like(a)
        b[:, [1, 2, 0, 3]] = a
        return b.T

    m0 = np.eye(4)
    m0[3, :3] = (3390, 1380, 240)
    c0 = to_cv(m0)
    assert np.linalg.det(c0[:3, :3]) < 0  # OpenCV axes in Unreal's left-handed world
    fmt = lambda m: "".join("[" + " ".join(f"{v:.6g}" for v in row) + "] " for row in m)  # noqa: E731
    data = {f"frame{f}": {f"cam{i:02d}": fmt(from_cv(c0 @ _formula_pose(i, f))) for i in range(1, 11)}
            for f in range(81)}
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("i", range(1, 11))
def test_recammaster_presets_equal_the_published_formulas(i, tmp_path):
    want = np.stack([_formula_pose(i, f) for f in range(81)])
    got = cam.preset(f"cam{i:02d}", 81)
    assert np.abs(got - want).max() <= 1e-3  # measured: ~1e-15
    np.testing.assert_allclose(got, cam.preset(cam.RECAMMASTER_ORDER[i - 1], 81), atol=0)
    np.testing.assert_allclose(cam.target_condition(got), want[::4, :3, :].reshape(21, 12), atol=1e-6)
    # any T: the same path, sampled at T frames (same end pose)
    np.testing.assert_allclose(cam.preset(f"cam{i:02d}", 5)[[0, -1]], want[[0, -1]], atol=1e-12)


def test_any_camera_of_a_published_json(tmp_path):
    f = _published_json(tmp_path / "camera_extrinsics.json")
    assert cam.recammaster_cameras(f) == [f"cam{i:02d}" for i in range(1, 11)]
    for i in range(1, 11):
        c2w = cam.camera_from_arg(f"{f}:cam{i:02d}", 81)
        want = np.stack([_formula_pose(i, t) for t in range(81)])
        assert np.abs(cam.relative_to_first(c2w) - want).max() <= 1e-3  # JSON rounding: ~5e-5
    np.testing.assert_allclose(cam.camera_from_arg(str(f), 81), cam.camera_from_arg(f"{f}:cam01", 81))
    with pytest.raises(cam.CameraError, match="no camera 'cam11'"):
        cam.camera_from_arg(f"{f}:cam11", 81)
    cam.write_trajectory_json(tmp_path / "ours.json", cam.preset("cam01", 5))
    with pytest.raises(cam.CameraError, match="single-trajectory"):
        cam.camera_from_arg(f"{tmp_path / 'ours.json'}:cam02", 5)


def test_mirrored_world_poses_accepted_only_when_asked_and_consistent():
    p = cam.preset("cam09", 9) @ np.diag([1.0, -1, 1, 1])  # det -1 everywhere (a mirrored world)
    with pytest.raises(cam.CameraError, match="det"):
        cam.validate_poses(p)
    assert cam.validate_poses(p, mirrored_world=True).shape == (9, 4, 4)
    mixed = p.copy()
    mixed[3] = np.eye(4)
    with pytest.raises(cam.CameraError, match="pose 3"):
        cam.validate_poses(mixed, mirrored_world=True)


_rot_angles = st.floats(-180, 180, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(_rot_angles, _rot_angles, _rot_angles, st.lists(st.floats(-50, 50, allow_nan=False), min_size=3, max_size=3))
def test_valid_random_poses_accepted(a, b, c, t):
    r = (cam._rot("x", a) @ cam._rot("y", b) @ cam._rot("z", c))
    r[:3, 3] = t
    p = np.stack([np.eye(4), r])
    assert cam.validate_poses(p).shape == (2, 4, 4)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["scale", "mirror", "nan", "inf", "bottom", "shape", "frames"]),
       st.floats(1.05, 3.0), st.integers(0, 4))
def test_invalid_poses_rejected_with_reason(kind, s, i):
    p = np.tile(np.eye(4), (5, 1, 1))
    frames = None
    if kind == "scale":
        p[i, :3, :3] *= s
    elif kind == "mirror":
        p[i, 0, 0] = -1
    elif kind == "nan":
        p[i, 1, 3] = np.nan
    elif kind == "inf":
        p[i, 2, 2] = np.inf
    elif kind == "bottom":
        p[i, 3, 0] = s
    elif kind == "shape":
        p = p[:, :3]
    else:
        frames = 9
    with pytest.raises(cam.CameraError) as e:
        cam.validate_poses(p, "my_traj.json", frames=frames)
    assert "my_traj.json" in str(e.value)


# ---------------------------------------------------------------- timing


def _r(a, b):
    return list(range(a, b + 1)) if b >= a else list(range(a, b - 1, -1))


# docs/REFERENCE.md §6.3, both naming families (demo / evaluation), written out
PUBLISHED_81 = {
    ("forward", "normal"): _r(0, 80),
    ("reverse",): _r(80, 0),
    ("pingpong", "bounce_40"): _r(40, 80) + _r(80, 41),
    ("bounce_late", "zigzag_15_21_5"): _r(60, 84) + _r(84, 29),  # 81..84 unclipped, as published
    ("bounce_early", "zigzag_5_21_15"): _r(20, 84) + _r(84, 69),
    ("slowmo_first_half", "repeat_0to40_double"): [0] + [x for i in range(1, 41) for x in (i, i)],
    ("slowmo_second_half", "start40_repeat_next"): [40] + [x for i in range(41, 81) for x in (i, i)],
    ("ramp_then_freeze", "go_and_freeze"): _r(0, 40) + [40] * 40,
    ("zigzag_0_10_0",): _r(0, 40) + _r(39, 0),
    ("freeze_start", "fixed_0"): [0] * 81, ("freeze_early", "fixed_5"): [20] * 81,
    ("freeze_mid", "fixed_10"): [40] * 81, ("freeze_late", "fixed_15"): [60] * 81,
    ("freeze_end", "fixed_20"): [80] * 81,
}
PUBLISHED_NAMES = [n for names in PUBLISHED_81 for n in names]


@pytest.mark.parametrize("names", list(PUBLISHED_81))
def test_published_time_modes_equal_index_lists(names):
    want = PUBLISHED_81[names]
    assert len(want) == 81
    for name in names:
        assert timing.preset(name, 81).tolist() == want, name
        assert timing.schedule_from_arg(name, 81).tolist() == want, name  # what --time NAME gives
    clipped = timing.preset(names[0], 81, clip=True).tolist()
    assert clipped == [min(x, 80) for x in want]


def test_overshoot_only_where_published():
    assert timing.preset("bounce_late", 81).max() == 84 and timing.overshoot(81) == 4
    with pytest.raises(timing.ScheduleError, match="index 81"):
        timing.schedule_from_arg("0-79,81", 81)  # a user list may not overshoot
    with pytest.raises(timing.ScheduleError, match="index 84"):
        timing.preset("bounce_late", 81, source_frames=80)  # 84 > 79 + 4


@pytest.mark.parametrize("t", [1, 5, 17, 33, 121])
@pytest.mark.parametrize("name", PUBLISHED_NAMES + ["freeze@3", "ramp@2", "zigzag@3", "slowmo2", "slowmo3@0-2",
                                                       "speed0.5", "bullet_time"])
def test_presets_any_length_in_range(name, t):
    s = timing.preset(name, t, source_frames=max(t, 5), clip=True)
    assert s.shape == (t,) and s.min() >= 0 and s.max() < max(t, 5)


def test_parametric_and_user_schedules(tmp_path):
    assert timing.preset("slowmo2", 9).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert timing.preset("zigzag@3", 9).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    assert timing.preset("freeze@7", 9).tolist() == [7] * 9
    assert timing.schedule_from_arg("0-4,4*4", 9).tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 4]
    np.save(tmp_path / "s.npy", np.arange(9)[::-1])
    assert timing.schedule_from_arg(str(tmp_path / "s.npy"), 9).tolist() == list(range(8, -1, -1))
    (tmp_path / "s.json").write_text(json.dumps({"schedule": [1] * 9}))
    assert timing.schedule_from_arg(str(tmp_path / "s.json"), 9).tolist() == [1] * 9


def test_schedule_errors():
    with pytest.raises(timing.ScheduleError, match="index 12 at position 0"):
        timing.schedule_from_arg("12,0,0,0,0", 5)
    assert timing.schedule_from_arg("12,0,0,0,0", 5, clip=True).tolist() == [4, 0, 0, 0, 0]
    with pytest.raises(timing.ScheduleError, match="1 \\+ 4k"):
        timing.preset("forward", 80)
    with pytest.raises(timing.ScheduleError, match="has 3 entries"):
        timing.schedule_from_arg("0,1,2", 5)
    with pytest.raises(timing.ScheduleError, match="unknown time preset"):
        timing.preset("sideways", 5)
    with pytest.raises(timing.ScheduleError, match="'x'"):
        timing.parse_list("0,x")
    with pytest.raises(timing.ScheduleError, match="freeze@99"):
        timing.preset("freeze@99", 9)


# ---------------------------------------------------------------- time warps


@pytest.mark.parametrize("mode", tw.MODES)
@pytest.mark.parametrize("t,n", [(81, 81), (21, 81), (81, 30), (5, 1), (17, 200)])
def test_warps_in_range_and_jit_equals_eager(mode, t, n):
    keys = jax.random.split(jax.random.PRNGKey(0), 16)
    f = jax.jit(jax.vmap(lambda k: tw.warp(k, tw.mode_id(mode), t, n)))
    got = np.asarray(f(keys))
    with jax.disable_jit():
        eager = np.stack([np.asarray(tw.warp(k, tw.mode_id(mode), t, n)) for k in keys[:3]])
    np.testing.assert_array_equal(got[:3], eager)
    assert got.shape == (16, t) and got.min() >= 0 and got.max() < n


def test_warp_shapes_of_modes():
    k = jax.random.PRNGKey(3)
    fwd = np.asarray(tw.warp(k, tw.mode_id("forward"), 21, 81))
    assert (np.diff(fwd) == 1).all()
    back = np.asarray(tw.warp(k, tw.mode_id("backward"), 21, 81))
    assert (np.diff(back) == -1).all()
    slow = np.asarray(tw.warp(k, tw.mode_id("slow_global"), 20, 81))
    assert (np.bincount(slow)[slow.min() + 1: slow.max()] == 2).all()
    fixed = np.asarray(tw.warp(k, tw.mode_id("fixed_frame"), 21, 81))
    assert len(set(fixed.tolist())) == 1


def test_boomerang_is_the_published_sequence():
    seq = tw.virtual_sequence("boomerang", 81)
    assert seq.tolist() == list(range(81)) + list(range(80, -1, -1))  # length 162, frame 80 twice
    keys = jax.random.split(jax.random.PRNGKey(1), 64)
    outs = np.asarray(jax.jit(jax.vmap(lambda k: tw.warp(k, tw.mode_id("boomerang"), 81, 81)))(keys))
    windows = {tuple(seq[s:s + 81].tolist()): s for s in range(162 - 81 + 1)}
    starts = [windows[tuple(o.tolist())] for o in outs]  # every output is 81 consecutive entries
    assert len(set(starts)) > 20  # from random starts in [0, 81]
    zig = tw.virtual_sequence("zigzag", 81, jax.random.PRNGKey(5))
    p = int(zig.max())
    assert 41 <= p <= 80 and zig.tolist() == list(range(p + 1)) + list(range(p - 1, -1, -1))


def test_random_mode_frequencies_match_probabilities():
    n = 20000
    keys = jax.random.split(jax.random.PRNGKey(42), n)
    _, modes = jax.jit(jax.vmap(lambda k: tw.random_warp(k, 81, 81)))(keys)
    freq = np.bincount(np.asarray(modes), minlength=len(tw.MODES)) / n
    p = tw.probabilities()
    sigma = np.sqrt(p * (1 - p) / n)
    assert (np.abs(freq - p) <= 5 * sigma + 1e-12).all(), (freq, p)
    with pytest.raises(ValueError, match="unknown modes"):
        tw.probabilities({"sideways": 1.0})
