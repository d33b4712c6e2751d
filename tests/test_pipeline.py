"""Grain pipeline: determinism, checkpointed iterator state, TFDS source, clear errors."""
import numpy as np
import pytest

from stp_jax.data import pipeline as pl
from stp_jax.parallel.mesh import make_mesh

CFG = pl.DataConfig(num_frames=9, num_cameras=9, height=16, width=16, num_scenes=64, global_batch=4, seed=3)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _eq(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_contents():
    b = next(iter(pl.make_loader(CFG)))
    assert b["src_frames"].shape == (4, 9, 16, 16, 3) and b["src_frames"].dtype == np.uint8
    assert b["tgt_frames"].shape == (4, 9, 16, 16, 3)
    assert b["src_cam"].shape == (4, 3, 12) and b["tgt_cam"].dtype == np.float32
    assert b["tgt_time"].shape == (4, 9) and (b["tgt_time"] >= 0).all() and (b["tgt_time"] < 9).all()
    np.testing.assert_array_equal(b["src_time"], np.tile(np.arange(9), (4, 1)))
    np.testing.assert_allclose(b["tgt_cam"][:, 0], np.tile(np.eye(4)[:3].reshape(12), (4, 1)), atol=1e-6)
    assert len(set(b["seed"].tolist())) == 4


def test_same_seed_same_batches_and_other_seed_differs():
    a = _take(iter(pl.make_loader(CFG)), 3)
    b = _take(iter(pl.make_loader(CFG)), 3)
    for x, y in zip(a, b):
        _eq(x, y)
    c = next(iter(pl.make_loader(pl.DataConfig(**{**CFG.__dict__, "seed": 4}))))
    assert not np.array_equal(c["seed"], a[0]["seed"])


def test_restore_mid_epoch_continues_exactly():
    it = iter(pl.make_loader(CFG))
    _take(it, 2)
    state = it.get_state()
    want = _take(it, 2)
    it2 = iter(pl.make_loader(CFG))
    it2.set_state(state)
    for x, y in zip(_take(it2, 2), want):
        _eq(x, y)


def test_fixed_camera_curriculum_switches_pairs_not_record_order():
    """data.fixed_camera_steps: fixed-camera pairs (source at one camera over time) until that
    step, then the configured mix; the switch keeps the record order (the same scenes follow)."""
    cfg = pl.DataConfig(**{**CFG.__dict__, "fixed_camera_steps": 2})
    assert pl.at_step(cfg, 0).fixed_camera_pairs == 1.0 and pl.at_step(cfg, 1).fixed_camera_pairs == 1.0
    assert pl.at_step(cfg, 2) == cfg and cfg.fixed_camera_pairs == 0.0
    plain = _take(iter(pl.make_loader(cfg)), 4)
    it = iter(pl.make_loader(pl.at_step(cfg, 0)))
    first = _take(it, 2)
    then = _take(pl.continue_loader(pl.at_step(cfg, 2), it), 2)
    for b in first:  # still pairs: every source frame from one camera, so the camera condition is constant
        assert np.allclose(b["src_cam"], b["src_cam"][:, :1]) and np.allclose(b["tgt_cam"], b["src_cam"])
    for b, want in zip(then, plain[2:]):
        _eq(b, want)  # after the switch: exactly the batches of a run without the curriculum
    assert [b["seed"].tolist() for b in first] == [b["seed"].tolist() for b in plain[:2]]
    with pytest.raises(ValueError, match="fixed_camera_steps"):
        pl.DataConfig(**{**CFG.__dict__, "fixed_camera_steps": -1})


def test_target_is_exact_ground_truth():
    """The target frames are the grid cells named by the target camera path and times."""
    from stp_jax.data import camxtime as cx

    b = next(iter(pl.make_loader(CFG)))
    seed = int(b["seed"][0])
    grid = np.asarray(cx.render_grid_jit(cx.make_scene(seed), cx.camera_path(seed, 9), 9, 16, 16))
    ci, ti = cx.source_indices(9, 9)
    np.testing.assert_array_equal(b["src_frames"][0], grid[ci, ti])
    # find the camera path: each target frame equals grid[c, target_time] for some c
    for j, t in enumerate(b["tgt_time"][0]):
        assert any(np.array_equal(b["tgt_frames"][0, j], grid[c, t]) for c in range(9))


def test_camera_paths_and_fixed_camera_pairs_are_exact_and_conditioned_on_the_source_camera():
    """Every target path kind, and fixed-camera pairs: frames are the named grid cells, and
    the target condition is relative to the source's first camera (the ReCamMaster rule), so a
    path that starts elsewhere (reverse_sweep, hold) is expressible."""
    from stp_jax.controls import camera as cam_lib
    from stp_jax.data import camxtime as cx

    seed, t = 5, 9
    cams = cx.camera_path(seed, t)
    grid = np.asarray(cx.render_grid_jit(cx.make_scene(seed), cams, t, 16, 16))
    rng = np.random.default_rng(0)
    fixed = pl.MakePair(pl.DataConfig(**{**CFG.__dict__, "fixed_camera_pairs": 1.0})).random_map(
        {"seed": np.int64(seed), "grid": grid, "cameras": cams}, rng)
    np.testing.assert_array_equal(fixed["src_frames"], grid[np.zeros(t, int), np.arange(t)])  # the first camera
    np.testing.assert_array_equal(fixed["tgt_frames"], grid[np.zeros(t, int), fixed["tgt_time"]])
    np.testing.assert_allclose(fixed["src_cam"], cam_lib.source_condition(None, t), atol=1e-6)
    np.testing.assert_allclose(fixed["tgt_cam"], cam_lib.source_condition(None, t), atol=1e-6)
    for kind in pl.TARGET_CAMERA_PATHS:
        cfg = pl.DataConfig(**{**CFG.__dict__, "camera_paths": ((kind, 1.0),)})
        pair = pl.MakePair(cfg).random_map({"seed": np.int64(seed), "grid": grid, "cameras": cams}, rng)
        np.testing.assert_array_equal(pair["src_frames"], grid[np.arange(t), np.arange(t)])  # the diagonal
        tgt_c = pl.target_camera_indices(kind, t, t, np.random.default_rng(1))
        if kind == "reverse_sweep":
            assert tgt_c[0] == t - 1
            want = cam_lib.target_condition(cams[tgt_c], reference=cams[0])
            np.testing.assert_allclose(pair["tgt_cam"], want, atol=1e-5)
            assert not np.allclose(pair["tgt_cam"][:, :12][0], np.eye(4)[:3].reshape(12), atol=1e-3)
        for j, tt in enumerate(pair["tgt_time"]):
            assert any(np.array_equal(pair["tgt_frames"][j], grid[c, tt]) for c in range(t))
    with pytest.raises(ValueError, match="camera_paths"):
        pl.DataConfig(**{**CFG.__dict__, "camera_paths": (("sideways", 1.0),)})
    with pytest.raises(ValueError, match="fixed_camera_pairs"):
        pl.DataConfig(**{**CFG.__dict__, "fixed_camera_pairs": 1.5})


def test_test_split_is_held_out():
    test = next(iter(pl.make_loader(pl.DataConfig(**{**CFG.__dict__, "split": "test"}))))
    assert (test["seed"] >= pl.TEST_SEED_OFFSET).all()


def test_global_arrays_on_mesh():
    mesh = make_mesh({"data": 2, "fsdp": 2, "context": 2})
    g = pl.to_global(next(iter(pl.make_loader(CFG))), mesh)
    assert g["tgt_frames"].shape == (4, 9, 16, 16, 3)
    assert len(g["tgt_frames"].addressable_shards) == 8
    assert g["tgt_frames"].sharding.spec[0] == ("data", "fsdp")


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    from stp_jax.data.tfds_builders.camxtime_procedural import build

    d = tmp_path_factory.mktemp("tfds")
    b = build(d, num_frames=9, num_cameras=9, height=16, width=16, train=6, test=2)
    return d, f"camxtime_procedural/{b.builder_config.name}"


def test_tfds_source_matches_procedural(tfds_dir):
    d, name = tfds_dir
    cfg = pl.DataConfig(**{**CFG.__dict__, "source": "tfds", "tfds_dir": str(d), "tfds_name": name, "num_scenes": 6})
    b = next(iter(pl.make_loader(cfg)))
    from stp_jax.data import camxtime as cx

    seed = int(b["seed"][0])
    grid = np.asarray(cx.render_grid_jit(cx.make_scene(seed), cx.camera_path(seed, 9), 9, 16, 16))
    ci, ti = cx.source_indices(9, 9)
    np.testing.assert_array_equal(b["src_frames"][0], grid[ci, ti])
    a2 = next(iter(pl.make_loader(cfg)))
    _eq(b, a2)


def test_corrupt_record_is_clear(tfds_dir, tmp_path):
    import shutil

    d, name = tfds_dir
    bad = tmp_path / "tfds"
    shutil.copytree(d, bad)
    f = sorted(bad.rglob("*train.array_record*"))[0]
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 4096] = b"\xff" * 4096
    f.write_bytes(bytes(raw))
    cfg = pl.DataConfig(**{**CFG.__dict__, "source": "tfds", "tfds_dir": str(bad), "tfds_name": name,
                           "shuffle": False, "num_epochs": 1, "global_batch": 2})
    with pytest.raises(ValueError) as e:
        for _ in pl.make_loader(cfg):  # one epoch over every record
            pass
    assert "record" in str(e.value) and "corrupt" in str(e.value)


def test_missing_dataset_is_clear(tmp_path):
    cfg = pl.DataConfig(**{**CFG.__dict__, "source": "tfds", "tfds_dir": str(tmp_path), "tfds_name": "camxtime_procedural/nope"})
    with pytest.raises(ValueError, match="build it first"):
        pl.make_loader(cfg)


def test_multicam_video_builder_and_pairs(tmp_path):
    """A MultiCamVideo folder (made here from procedural renders) -> TFDS -> warped pairs."""
    from stp_jax.controls import camera as cam_lib
    from stp_jax.data import camxtime as cx
    from stp_jax.data.tfds_builders.multicam_video import build
    from stp_jax.data.video_io import read_video, write_video

    root = tmp_path / "MultiCamVideo" / "f18_aperture10"
    views = 3
    for s in range(2):
        scene_dir = root / f"scene{s + 1}"
        (scene_dir / "videos").mkdir(parents=True)
        (scene_dir / "cameras").mkdir()
        scene, path = cx.make_scene(100 + s), cx.camera_path(100 + s, views)
        trajs = {}
        for v in range(views):
            frames = np.asarray(cx.render_path_jit(scene, path, np.full(9, v), np.arange(9), 9, 24, 32))
            write_video(scene_dir / "videos" / f"cam{v + 1:02d}.mp4", frames)
            trajs[f"cam{v + 1:02d}"] = np.tile(path[v], (9, 1, 1))
        cam_lib.write_recammaster_json(scene_dir / "cameras" / "camera_extrinsics.json", trajs)
    # the Unreal writer inverts the published reader exactly
    np.testing.assert_allclose(cam_lib.read_recammaster_json(root / "scene1/cameras/camera_extrinsics.json", "cam02"),
                               np.tile(cx.camera_path(100, views)[1], (9, 1, 1)), atol=1e-6)
    b = build(tmp_path / "tfds", tmp_path / "MultiCamVideo", num_frames=9, height=16, width=16, num_views=views,
              test_fraction=0.0)
    cfg = pl.DataConfig(num_frames=9, num_cameras=9, height=16, width=16, global_batch=2, seed=0, source="tfds",
                        tfds_dir=str(tmp_path / "tfds"), tfds_name=f"multicam_video/{b.builder_config.name}")
    batch = next(iter(pl.make_loader(cfg)))
    assert batch["src_frames"].shape == (2, 9, 16, 16, 3)
    # the target is another stored view at the warped times; the source is a stored view in order
    import tensorflow_datasets as tfds

    src = tfds.data_source(cfg.tfds_name, split="train", data_dir=cfg.tfds_dir)
    rec = next(r for r in (src[i] for i in range(len(src))) if int(r["seed"]) == int(batch["seed"][0]))
    vids = rec["videos"]
    a = [v for v in range(views) if np.array_equal(vids[v], batch["src_frames"][0])]
    b = [v for v in range(views) if np.array_equal(vids[v][batch["tgt_time"][0]], batch["tgt_frames"][0])]
    assert len(a) == 1 and b and a[0] not in b
    assert vids.shape == (views, 9, 16, 16, 3) and read_video(
        tmp_path / "MultiCamVideo" / rec["scene"].decode() / "videos" / "cam01.mp4", size=(16, 16)).shape == (9, 16, 16, 3)
    np.testing.assert_allclose(batch["src_cam"][:, 0], np.tile(np.eye(4)[:3].reshape(12), (2, 1)), atol=1e-6)


def test_camxtime_blender_folder_builder(tmp_path):
    """A Blender-style Cam×Time folder (rendered here) builds into grids equal to the renders."""
    import json

    from stp_jax.controls.camera import BLENDER_TO_OPENCV
    from stp_jax.data import camxtime as cx
    from stp_jax.data.tfds_builders.camxtime import build
    from stp_jax.data.video_io import read_video, write_video

    scene_dir = tmp_path / "CamXTime" / "scene_a"
    (scene_dir / "videos").mkdir(parents=True)
    scene, path = cx.make_scene(7), cx.camera_path(7, 3)
    for c in range(3):
        write_video(scene_dir / "videos" / f"cam{c:03d}.mp4",
                    np.asarray(cx.render_path_jit(scene, path, np.full(5, c), np.arange(5), 5, 16, 16)))
    blender = {f"cam{c:03d}": (path[c] @ BLENDER_TO_OPENCV).tolist() for c in range(3)}
    (scene_dir / "cameras.json").write_text(json.dumps({"convention": "blender_c2w", "cameras": blender}))
    b = build(tmp_path / "tfds", tmp_path / "CamXTime", num_frames=5, num_cameras=3, height=16, width=16,
              test_fraction=0.0)
    cfg = pl.DataConfig(num_frames=5, num_cameras=3, height=16, width=16, global_batch=1, seed=0, source="tfds",
                        tfds_dir=str(tmp_path / "tfds"), tfds_name=f"camxtime/{b.builder_config.name}")
    batch = next(iter(pl.make_loader(cfg)))
    cam0 = read_video(scene_dir / "videos" / "cam000.mp4", size=(16, 16))
    np.testing.assert_array_equal(batch["src_frames"][0, 0], cam0[0])  # diagonal starts at camera 0, time 0
    np.testing.assert_allclose(batch["src_cam"][0, 0], np.eye(4)[:3].reshape(12), atol=1e-6)


def test_iterator_state_through_orbax(tmp_path):
    import grain
    import orbax.checkpoint as ocp

    it = iter(pl.make_loader(CFG))
    _take(it, 1)
    mgr = ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",))
    mgr.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
    want = next(it)
    it2 = iter(pl.make_loader(CFG))
    mgr.restore(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
    _eq(next(it2), want)
