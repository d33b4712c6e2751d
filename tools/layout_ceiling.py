"""The ceiling of a token layout: the best a DiT of width D could output, before training.

The DiT's head is one linear map from the D-wide stream to a token, so every output token lies
in a D-dimensional subspace. This projects the ground truth of held-out procedural scenes onto
the best such subspace (PCA of tokens from training scenes) and scores it like stp-eval does,
beside the best trivial baseline. A layout whose ceiling is below the baselines cannot win.

    python tools/layout_ceiling.py                     # the old and the new embedded layouts
    python tools/layout_ceiling.py --size 32 --spatial 2 --time-factor 4 --dims 96,128
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from einops import rearrange  # noqa: E402

from stp_jax import evaluate, inference  # noqa: E402
from stp_jax.data import camxtime as cx  # noqa: E402


def ceiling(size: int, spatial: int, time_factor: int, patch: int, dims, frames: int = 17, scenes: int = 8,
            cases=("reverse", "moving:reverse")):
    ae = inference.build_autoencoder(inference.AutoencoderConfig("patch", spatial, time_factor=time_factor))
    tok = lambda lat: rearrange(np.asarray(lat), "b f (h p1) (w p2) c -> (b f h w) (p1 p2 c)", p1=patch, p2=patch)  # noqa: E731
    train = np.concatenate([np.asarray(cx.render_grid_jit(cx.make_scene(s), cx.camera_path(s, frames), frames, size,
                                                          size))[::2] for s in range(40)])
    x = tok(ae.encode(inference.to_float(train)))
    mu = x.mean(0)
    _, _, vt = np.linalg.svd(x[::5] - mu, full_matrices=False)
    _, _, grids, sources = evaluate.held_out_scenes(scenes, frames, frames, size, size)
    rows = []
    for d in dims:
        for case in cases:
            cams, times = evaluate.case_cells(case, frames, frames)
            truth = grids[:, cams, times]
            lat = np.asarray(ae.encode(inference.to_float(truth)))
            rec = (tok(lat) - mu) @ vt[:d].T @ vt[:d] + mu
            n, f, h, w, _ = lat.shape
            back = rearrange(rec, "(b f h w) (p1 p2 c) -> b f (h p1) (w p2) c", b=n, f=f, h=h // patch, w=w // patch,
                             p1=patch, p2=patch)
            img = np.asarray(inference.to_uint8(ae.decode(jnp.asarray(back))))
            s = evaluate.score(img, truth, grids, cams, times, with_lpips=False)
            base = evaluate.baselines(sources, cams, times, frames)
            best = max(evaluate.score(v, truth, grids, cams, times, with_lpips=False)["psnr"] for v in base.values())
            rows.append((f"{size}x{size}, {time_factor} frame(s) x {spatial}x{spatial} px, patch {patch}x{patch}",
                         x.shape[1], d, case, s["psnr"], s["ssim"], s["time_err"], best))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int)
    p.add_argument("--spatial", type=int, default=4)
    p.add_argument("--time-factor", type=int, default=1)
    p.add_argument("--patch", type=int, default=2)
    p.add_argument("--dims", default="128")
    a = p.parse_args()
    layouts = [(a.size, a.spatial, a.time_factor)] if a.size else [(32, 4, 4), (24, 4, 1)]
    print("| layout | token values | D | case | PSNR | SSIM | time err | best baseline PSNR |")
    print("|---|---|---|---|---|---|---|---|")
    for size, spatial, tf in layouts:
        for r in ceiling(size, spatial, tf, a.patch, [int(d) for d in a.dims.split(",")]):
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.3f} | {r[6]:.2f} | {r[7]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
