"""Video I/O and the procedural Cam×Time renderer."""
import jax
import numpy as np
import pytest

from stp_jax.data import camxtime as cx
from stp_jax.data import video_io as vio

# ---------------------------------------------------------------- video I/O


def _frames(t=9, h=48, w=64, seed=0):
    g = np.random.default_rng(seed)
    base = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):  # smooth content with a moving bar, so H.264 keeps it
        base[i] = (g.uniform(40, 200, 3)).astype(np.uint8)
        base[i, :, (i * 5) % w: (i * 5) % w + 8] = 255
    return base


def test_write_read_round_trip(tmp_path):
    f = _frames()
    vio.write_video(tmp_path / "a.mp4", f, fps=15)
    back = vio.read_video(tmp_path / "a.mp4")
    assert back.shape == f.shape
    assert np.abs(back.astype(int) - f.astype(int)).mean() < 6
    assert not list(tmp_path.glob(".*tmp*"))


def test_resize_crop_and_padding(tmp_path):
    vio.write_video(tmp_path / "a.mp4", _frames(t=5, h=48, w=96))
    out = vio.read_video(tmp_path / "a.mp4", size=(32, 32))
    assert out.shape == (5, 32, 32, 3)
    with pytest.warns(UserWarning, match="repeating the last frame"):
        out = vio.read_video(tmp_path / "a.mp4", num_frames=9)
    assert out.shape[0] == 9 and (out[5:] == out[4]).all()
    sub = vio.read_video(tmp_path / "a.mp4", num_frames=2, start=1, stride=2)
    full = vio.read_video(tmp_path / "a.mp4")
    np.testing.assert_array_equal(sub, full[[1, 3]])


def test_corrupt_and_missing_video_errors(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with pytest.raises(vio.VideoError, match="bad.mp4"):
        vio.read_video(tmp_path / "bad.mp4")
    with pytest.raises(vio.VideoError, match="not found"):
        vio.read_video(tmp_path / "nope.mp4")
    with pytest.raises(vio.VideoError, match="uint8"):
        vio.write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))
    assert not (tmp_path / "x.mp4").exists()


def test_mp4_round_trip(tmp_path):
    f = _frames(t=5)
    back = vio.read_video(vio.write_video(tmp_path / "v.mp4", f))
    assert back.shape == f.shape and np.abs(back.astype(int) - f.astype(int)).mean() < 6


# ---------------------------------------------------------------- renderer


@pytest.fixture(scope="module")
def scene():
    return cx.make_scene(11), cx.camera_path(11, 9)


def test_scene_is_deterministic_per_seed():
    a, b, c = cx.make_scene(5), cx.make_scene(5), cx.make_scene(6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))
    np.testing.assert_array_equal(cx.camera_path(5, 9), cx.camera_path(5, 9))


def test_same_cell_rendered_twice_is_identical(scene):
    s, cams = scene
    a = np.asarray(cx.render_path_jit(s, cams, np.array([3, 3]), np.array([4, 4]), 9, 32, 48))
    b = np.asarray(cx.render_path_jit(s, cams, np.array([3]), np.array([4]), 9, 32, 48))
    np.testing.assert_array_equal(a[0], a[1])
    np.testing.assert_array_equal(a[0], b[0])
    assert a.std() > 10  # a real image, not a flat colour


def test_grid_diagonal_equals_source_clip(scene):
    s, cams = scene
    grid = np.asarray(cx.render_grid_jit(s, cams, 9, 32, 48))
    ci, ti = cx.source_indices(9, 9)
    src = np.asarray(cx.render_path_jit(s, cams, ci, ti, 9, 32, 48))
    assert grid.shape == (9, 9, 32, 48, 3)
    np.testing.assert_array_equal(grid[ci, ti], src)
    # bullet time with camera motion: one time, all cameras == the grid column
    bt = np.asarray(cx.render_path_jit(s, cams, np.arange(9), np.full(9, 4), 9, 32, 48))
    np.testing.assert_array_equal(bt, grid[:, 4])


def test_time_changes_only_animated_pixels(scene):
    s, cams = scene
    render = jax.jit(lambda t: cx.render(s, cams[2], t, 9, 48, 64, with_aux=True))
    (a, obj_a, sh_a, _), (b, obj_b, sh_b, _) = render(0), render(8)
    a, b = np.asarray(a), np.asarray(b)
    static = (np.asarray(obj_a) < 0) & (np.asarray(obj_b) < 0) & ~np.asarray(sh_a) & ~np.asarray(sh_b)
    assert static.mean() > 0.3
    np.testing.assert_array_equal(a[static], b[static])  # background untouched by time
    assert np.abs(a - b).max() > 0.1  # and the objects did move
    # moving the camera at a fixed time changes the background
    c = np.asarray(cx.render(s, cams[8], 0, 9, 48, 64))
    assert np.abs(a - c)[static].mean() > 0.01


def test_depth_places_ground_pixels_on_the_ground(scene):
    """with_aux's depth is z in the camera's frame: a ground pixel's ray (the renderer's pinhole) at
    that depth lands on the plane y = 0; object pixels stand above it; the sky is BIG."""
    s, cams = scene
    h, w = 48, 64
    _, obj, _, z = (np.asarray(a) for a in cx.render(s, cams[2], 3, 9, h, w, with_aux=True))
    f = 0.5 * w / np.tan(np.deg2rad(cx.FOV_DEG) / 2)
    v, u = np.mgrid[0:h, 0:w] + 0.5
    rays = np.stack([(u - w / 2) / f, (v - h / 2) / f, np.ones_like(u)], -1)  # z = 1
    sky = z >= cx.BIG
    world = np.einsum("ij,hwj->hwi", cams[2][:3, :3], rays * np.where(sky, 0, z)[..., None]) + cams[2][:3, 3]
    ground = (obj < 0) & ~sky
    assert ground.mean() > 0.2 and sky.mean() > 0.05 and (obj >= 0).mean() > 0.02
    np.testing.assert_allclose(world[ground][:, 1], 0.0, atol=1e-3)
    assert world[obj >= 0][:, 1].min() > -1e-3


@pytest.mark.parametrize("kind", cx.PATH_KINDS)
def test_camera_paths_look_at_scene_centre(kind):
    poses = cx.camera_path(3, 5, kind)
    centre = np.array([0.0, 0.4, 0.0, 1.0])
    for p in poses:
        xc = np.linalg.inv(p) @ centre
        assert xc[2] > 0 and abs(xc[0] / xc[2]) < 1e-9 and abs(xc[1] / xc[2]) < 1e-9
