"""The ceiling of the source copy: the best output that only moves source blocks, before training.

DiTConfig.copy_source makes each target unit (a whole token, or one latent pixel of it with
copy_unit "pixel") a mixture of source units. Its best case is an oracle that replaces every
target block by the nearest (L2) source block of the same size, taken from any source frame: at
the units' grid (what the copy can choose from), or at any pixel offset (what no token grid
limits). This scores that oracle like stp-eval does (PSNR, SSIM, time and camera errors against
the held-out scenes' grids), beside the trivial baselines. If the oracle cannot retime a case, no
copy at that unit size can.

    python tools/copy_ceiling.py                                  # 8x8 (tokens) and 4x4 (latent pixels)
    python tools/copy_ceiling.py --blocks 8,4,2 --scenes 8 --cases reverse,moving:reverse
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
from einops import rearrange  # noqa: E402

from stp_jax import evaluate  # noqa: E402

CASES = "still:reverse,reverse,moving:reverse,moving:freeze_mid,cam:reverse_path,cam:last_view"


def oracle_copy(sources: np.ndarray, truth: np.ndarray, block: int, any_offset: bool = False) -> np.ndarray:
    """Every block x block tile of each truth clip [T, H, W, 3] replaced by its nearest source tile
    (any source frame; at the tile grid, or at any pixel offset). uint8 [T, H, W, 3]."""
    t, h, w, _ = truth.shape
    src = sources.astype(np.float32)
    if any_offset:  # every placement of the tile in every source frame
        win = np.lib.stride_tricks.sliding_window_view(src, (block, block), axis=(1, 2))  # [T, h', w', 3, b, b]
        cand = rearrange(win, "t y x c a e -> (t y x) (a e c)")
    else:
        cand = rearrange(src, "t (y a) (x e) c -> (t y x) (a e c)", a=block, e=block)
    want = rearrange(truth.astype(np.float32), "t (y a) (x e) c -> (t y x) (a e c)", a=block, e=block)
    d2 = (want ** 2).sum(1)[:, None] + (cand ** 2).sum(1)[None] - 2 * want @ cand.T  # [tiles, candidates]
    best = cand[np.argmin(d2, axis=1)]
    return rearrange(best, "(t y x) (a e c) -> t (y a) (x e) c", t=t, y=h // block, x=w // block, a=block,
                     e=block).round().clip(0, 255).astype(np.uint8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--size", type=int, default=24)
    ap.add_argument("--blocks", default="8,4", help="tile sizes in pixels (8: the embedded default's token, "
                                                     "4: its latent pixel)")
    ap.add_argument("--cases", default=CASES)
    a = ap.parse_args(argv)
    blocks = [int(b) for b in a.blocks.split(",")]
    if any(a.size % b for b in blocks):
        ap.error(f"--size {a.size} must be divisible by every block in --blocks {a.blocks}")
    cases = evaluate.check_cases(a.cases.split(","), a.frames, a.frames)
    scenes = evaluate.held_out_scenes(a.scenes, a.frames, a.frames, a.size, a.size)
    grids = scenes[2]
    print(f"{a.scenes} held-out scenes, {a.frames} frames x {a.frames} cameras, {a.size}x{a.size}; "
          "PSNR / SSIM, time error, camera error (frames, camera indices)")
    print("| case | row | PSNR | SSIM | time err | cam err |\n|---|---|---|---|---|---|")
    for case in cases:
        cams, times = evaluate.case_cells(case, a.frames, a.frames)
        src_c = evaluate.source_cameras(case, a.frames, a.frames)
        truth, sources = grids[:, cams, times], grids[:, src_c, np.arange(a.frames)]
        rows = {}
        for b in blocks:
            rows[f"oracle copy {b}x{b}"] = np.stack([oracle_copy(s, t, b) for s, t in zip(sources, truth)])
            rows[f"oracle copy {b}x{b}, any offset"] = np.stack([oracle_copy(s, t, b, True)
                                                                  for s, t in zip(sources, truth)])
        rows.update(evaluate.baselines(sources, cams, times, a.frames, src_c))
        for name, clip in rows.items():
            m = evaluate.score(clip, truth, grids, cams, times, with_lpips=False)
            print(f"| {case} | {name} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['time_err']:.2f} | {m['cam_err']:.2f} |")


if __name__ == "__main__":
    main()
