"""The published Cam×Time benchmark end to end on a tiny fake benchmark in the published layout
(docs/REFERENCE.md §6.4): the reader's poses against the published conversion written out here,
stp-eval --camxtime-eval with a tiny converted SpaceTimePilot model, and stp-eval --score against
scikit-image on frames resized here with PIL."""
import json

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from stp_jax import benchmark as bm
from stp_jax.cli import convert_main, eval_main
from stp_jax.controls import camera as cam
from stp_jax.data.video_io import read_video, write_video

T, H, W = 5, 16, 16
GT_FRAMES = 2  # scored: min(len(truth), len(prediction)) frames at 480x832
STEMS = ("scene_a", "scene_b")


def _blender_w2c(seed, n=T + 2):
    """World-to-camera Blender poses of a camera orbiting and rising (more cameras than frames)."""
    c2w_cv = cam.orbit(n, 40.0 + 10 * seed, distance=3.0, elevation=15.0)
    c2w_cv[:, :3, 3] += [0.5 * seed, -1.0, 2.0]
    return np.linalg.inv(c2w_cv @ np.diag([1.0, -1, -1, 1]))  # OpenCV c2w -> Blender c2w -> w2c


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from torch_ref import TorchSpaceTimeDiT

    d = tmp_path_factory.mktemp("bench")
    # a tiny SpaceTimePilot DiT on 48-channel latents (the PatchAutoencoder with 2x2 pixels)
    sd = TorchSpaceTimeDiT("spacetimepilot", groups=8, seed=3, in_channels=48, out_channels=48).original_state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, d / "stp.safetensors")
    assert convert_main([str(d / "stp.safetensors"), "--out", str(d / "ck"), "--num-heads", "4"]) == 0
    root, gt = d / "eval_input", d / "eval_gt_wan2.1_format"
    (root / "videos").mkdir(parents=True)
    (root / "cameras").mkdir()
    (root / "cameras" / "camera_extrinsics.json").write_text("{}")
    g = np.random.default_rng(0)
    rows = ["file_name,text"]
    for i, stem in enumerate(STEMS):
        base = g.integers(0, 256, (1, H, W, 3))
        write_video(root / "videos" / f"{stem}.mp4", ((base + 20 * np.arange(T + 2)[:, None, None, None]) % 256)
                    .astype(np.uint8))
        rows.append(f'{stem}.mp4,"a scene, number {i}"')
        w2c = _blender_w2c(i)
        (root / "src_cam" / stem).mkdir(parents=True)
        (root / "src_cam" / stem / "camera_data.json").write_text(json.dumps(
            {"cameras": {"extrinsic": {f"camera_{k:03d}": m.tolist() for k, m in enumerate(w2c)}}}))
        for _, name in bm.MODES.values():  # truth: 832x480 as published, shorter than the predictions (fast)
            (gt / stem).mkdir(parents=True, exist_ok=True)
            write_video(gt / stem / f"{name}.mp4", g.integers(0, 256, (GT_FRAMES, 8, 8, 3)).astype(np.uint8)
                        .repeat(60, 1).repeat(104, 2))
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return d


def test_reader_converts_poses_as_published(bench):
    scenes = bm.read_eval_set(bench / "eval_input", T)
    assert [s.stem for s in scenes] == list(STEMS) and scenes[1].caption == "a scene, number 1"
    for i, s in enumerate(scenes):
        w2c = _blender_w2c(i)[:T].astype(np.float32).astype(np.float64)
        x = np.diag([-1.0, 1, 1, 1])
        rel = np.stack([x @ np.linalg.inv(w2c[f]) @ w2c[0] @ x for f in range(T)])  # X (c2w_f w2c_0) X
        np.testing.assert_allclose(s.camera, rel[::4, :3, :].reshape(-1, 12), atol=1e-6)
        assert np.allclose(np.linalg.det(s.c2w[:, :3, :3]), -1)  # a mirrored world, accepted as published
        assert np.allclose(np.linalg.det(rel[:, :3, :3]), 1)


def test_camxtime_eval_and_score_end_to_end(bench, tmp_path, capsys):
    pred = tmp_path / "pred"
    args = ["--camxtime-eval", str(bench / "eval_input"), "--checkpoint", str(bench / "ck"), "--out", str(pred),
            "--steps", "2", "--frames", str(T), "--size", f"{H}x{W}", "--batch", "5"]
    assert eval_main(args) == 0
    for mode in bm.MODES:
        for stem in STEMS:
            assert read_video(pred / mode / f"{stem}_cam_00.mp4").shape == (T, H, W, 3)
    s = json.loads((pred / "benchmark.json").read_text())
    assert s["written"] == 10 and s["time_modes"]["slowmo"] == "repeat_0to40_double"
    assert s["cfg_applied"] is None and "null text" in s["cfg_off_reason"]  # no text encoder: said, not silent
    assert "guidance is off" in capsys.readouterr().err
    assert eval_main(args) == 0 and json.loads((pred / "benchmark.json").read_text())["written"] == 0  # resumes

    assert eval_main(["--score", str(pred), "--gt", str(bench / "eval_gt_wan2.1_format")]) == 0
    res = json.loads((pred / "scores.json").read_text())
    assert set(res) == set(bm.MODES) | {"all"} and res["all"]["videos"] == 10
    # one video recomputed here: PIL bilinear to 480x832, T = min(len), skimage per frame, mean
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    big = lambda v: np.stack([np.asarray(Image.fromarray(f).resize((832, 480), Image.BILINEAR)) for f in v])  # noqa: E731
    gt = read_video(bench / "eval_gt_wan2.1_format" / "scene_b" / "moving_slowmo.mp4")
    pr = big(read_video(pred / "slowmo" / "scene_b_cam_00.mp4"))[:GT_FRAMES]
    v = res["slowmo"]["per_video"]["scene_b"]
    assert v["frames"] == GT_FRAMES and gt.shape == (GT_FRAMES, 480, 832, 3)
    assert abs(v["psnr"] - np.mean([peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(gt, pr)])) < 1e-9
    assert abs(v["ssim"] - np.mean([structural_similarity(a, b, data_range=255, channel_axis=-1)
                                    for a, b in zip(gt, pr)])) < 1e-9
    assert 0 < v["lpips"] < 1
    vals = [res["slowmo"]["per_video"][k]["psnr"] for k in STEMS]
    assert abs(res["slowmo"]["psnr"] - np.mean(vals)) < 1e-12 and abs(res["slowmo"]["psnr_std"] - np.std(vals)) < 1e-12
    assert "| slowmo | 2 |" in (pred / "scores.md").read_text()


def test_benchmark_errors_are_one_line(bench, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata.csv").write_text("file_name,text\nx.mp4,hi\n")
    assert eval_main(["--camxtime-eval", str(bad), "--checkpoint", str(bench / "ck"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "camera_extrinsics.json" in err
    assert eval_main(["--score", str(tmp_path / "nothing"), "--gt", str(bench)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert eval_main(["--score", str(tmp_path)]) == 2 and "--gt" in capsys.readouterr().err
    assert eval_main(["--scenes", "2"]) == 2 and "--checkpoint is required" in capsys.readouterr().err
