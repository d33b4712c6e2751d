"""mp4 read/write with PyAV; cover-resize + centre crop (ours, or the published rule); contact sheets.

Frames are uint8 arrays [T, H, W, 3] (RGB). Writes are atomic (temp file, then rename),
so a failed write never leaves a half-written video behind.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from stp_jax.files import atomic_output


class VideoError(ValueError):
    """A video cannot be read or written as asked; the message names the file."""


def _cover_size(h: int, w: int, out_h: int, out_w: int) -> tuple[int, int]:
    s = max(out_h / h, out_w / w)
    return max(out_h, math.ceil(h * s)), max(out_w, math.ceil(w * s))


RESIZE_RULES = ("fast", "published")


def published_resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The published pipeline's frame preprocessing (docs/REFERENCE.md §6.2 Video): PIL BILINEAR
    resize to cover, scale = max(W_out / W, H_out / H), size (round(H * scale), round(W * scale)),
    then torchvision's centre crop (offsets round((size - out) / 2)). uint8 [H, W, 3] -> [H_out, W_out, 3]."""
    from PIL import Image

    out_h, out_w = size
    h, w = img.shape[:2]
    scale = max(out_w / w, out_h / h)
    rh, rw = round(h * scale), round(w * scale)
    if rh < out_h or rw < out_w:
        raise VideoError(f"published resize: {h}x{w} scaled by {scale:.6g} gives {rh}x{rw}, smaller than {out_h}x{out_w}")
    if (rh, rw) != (h, w):
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((rw, rh), Image.Resampling.BILINEAR))
    top, left = int(round((rh - out_h) / 2.0)), int(round((rw - out_w) / 2.0))
    return img[top: top + out_h, left: left + out_w]


def read_video(path, num_frames: int | None = None, size: tuple[int, int] | None = None, start: int = 0,
               stride: int = 1, resize: str = "fast") -> np.ndarray:
    """Decode frames start, start+stride, ... of an mp4 (or any FFmpeg-readable video).

    ``size`` (H, W): resize so the frame covers H x W, then centre-crop; ``resize`` "fast"
    (FFmpeg's scaler, sizes rounded up) or "published" (``published_resize``: PIL bilinear and
    the published rounding, as the published pipeline preprocesses its inputs). If the video has
    fewer than ``num_frames`` frames, the last one is repeated (with a warning).
    """
    if resize not in RESIZE_RULES:
        raise VideoError(f"{path}: resize rule {resize!r} is unknown; expected one of {RESIZE_RULES}")
    import av

    p = Path(path)
    if not p.exists():
        raise VideoError(f"{p}: video file not found")
    if stride < 1 or start < 0:
        raise VideoError(f"{p}: start must be >= 0 and stride >= 1 (got {start}, {stride})")
    frames = []
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise VideoError(f"{p}: contains no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i < start or (i - start) % stride:
                    continue
                if size is not None and resize == "fast":
                    ch, cw = _cover_size(frame.height, frame.width, *size)
                    frame = frame.reformat(width=cw, height=ch)
                img = frame.to_ndarray(format="rgb24")
                if size is not None and resize == "published":
                    img = published_resize(img, size)
                elif size is not None:
                    top, left = (img.shape[0] - size[0]) // 2, (img.shape[1] - size[1]) // 2
                    img = img[top: top + size[0], left: left + size[1]]
                frames.append(img)
                if num_frames is not None and len(frames) == num_frames:
                    break
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{p}: cannot decode the video ({type(e).__name__}: {e})") from e
    if not frames:
        raise VideoError(f"{p}: no decodable frames (from frame {start}, stride {stride})")
    if num_frames is not None and len(frames) < num_frames:
        warnings.warn(f"{p}: has {len(frames)} usable frames, {num_frames} requested; repeating the last frame",
                      stacklevel=2)
        frames += [frames[-1]] * (num_frames - len(frames))
    return np.stack(frames)


def to_uint8(x, value_range=(-1.0, 1.0), rounding: str = "nearest"):
    """Float frames in ``value_range`` -> uint8, clipped (jit-able); the one rule for every float
    -> 8-bit conversion (model outputs in [-1, 1], renders in [0, 1]). ``rounding``: "nearest",
    or "truncate" as the published pipeline writes its outputs ((x + 1) * 127.5, clipped, cast)."""
    import jax.numpy as jnp

    lo, hi = value_range
    y = jnp.clip((x - lo) * (255.0 / (hi - lo)), 0.0, 255.0)
    if rounding == "truncate":
        return y.astype(jnp.uint8)
    if rounding != "nearest":
        raise ValueError(f"rounding {rounding!r} is unknown; expected 'nearest' or 'truncate'")
    return jnp.round(y).astype(jnp.uint8)


def to_float(frames):
    """uint8 frames -> float32 in [-1, 1] (the models' video range; the inverse of to_uint8)."""
    import jax.numpy as jnp

    return jnp.asarray(frames).astype(jnp.float32) / 127.5 - 1.0


def write_video(path, frames: np.ndarray, fps: float = 15.0, crf: int = 18) -> Path:
    """Write uint8 [T, H, W, 3] frames as H.264 mp4 (odd sizes padded by one edge pixel)."""
    import av

    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
        raise VideoError(f"{path}: frames must be uint8 [T, H, W, 3], got {f.dtype} {f.shape}")
    if f.shape[1] % 2 or f.shape[2] % 2:
        f = np.pad(f, ((0, 0), (0, f.shape[1] % 2), (0, f.shape[2] % 2), (0, 0)), mode="edge")
    p = Path(path)
    with atomic_output(p) as tmp, av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = f.shape[2], f.shape[1], "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for img in f:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return p


def contact_sheet(rows: list[np.ndarray], path, every: int = 8, labels: list[str] | None = None) -> Path:
    """PNG grid: one row per clip ([T, H, W, 3] uint8), every ``every``-th frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [np.asarray(r)[::every] for r in rows]
    cols = max(len(s) for s in sel)
    h, w = sel[0].shape[1:3]
    fig, axes = plt.subplots(len(sel), cols, figsize=(cols * 1.6 * w / max(h, w) + 0.8, len(sel) * 1.6),
                             squeeze=False)
    for i, s in enumerate(sel):
        for j in range(cols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(s):
                ax.imshow(s[j])
                if i == 0:
                    ax.set_title(f"t={j * every}", fontsize=7)
        if labels:
            axes[i][0].text(-0.1, 0.5, labels[i], transform=axes[i][0].transAxes, ha="right", va="center", fontsize=8)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return p
