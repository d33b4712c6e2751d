"""The ceiling of a token layout: the best a DiT of width D could output, before training.

The DiT's head is one linear map from the D-wide stream to a token, so every output token lies
in a D-dimensional subspace. This projects the ground truth of held-out procedural scenes onto
the best such subspace (PCA of tokens from training scenes) and scores it like stp-eval does,
beside the best trivial baseline. A layout whose ceiling is below the baselines cannot win.

    python tools/layout_ceiling.py                     # the old and the new embedded layouts
    python tools/layout_ceiling.py --size 32 --spatial 2 --time-factor 4 --dims 96,128

With --checkpoint RUN (a model trained by stp-train on procedural scenes), what that model
reproduces instead: per band of 16 principal components of the tokens, the share of the truth's
variance in the band and the share the model's output (and two trivial baselines) get right,
1 - error / variance, on one case; beside it the singular values of the model's head (its
learned output rank). A blurry model shows as bands near 0 (docs/LEARNING.md §11).

    python tools/layout_ceiling.py --checkpoint runs/demo --case still:reverse
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


def token_basis(ae, patch: int, frames: int, height: int, width: int):
    """(tokens, mean, vt): the map from latents [B, F, h, w, C] to DiT tokens [B*F*(h/p)*(w/p), p*p*C],
    their mean and principal axes vt [P, P] (rows, by falling variance), fitted on 40 training scenes."""
    tok = lambda lat: rearrange(np.asarray(lat), "b f (h p1) (w p2) c -> (b f h w) (p1 p2 c)", p1=patch, p2=patch)  # noqa: E731
    train = np.concatenate([np.asarray(cx.render_grid_jit(cx.make_scene(s), cx.camera_path(s, frames), frames, height,
                                                          width))[::2] for s in range(40)])
    x = tok(ae.encode(inference.to_float(train)))
    mu = x.mean(0)
    _, _, vt = np.linalg.svd(x[::5] - mu, full_matrices=False)
    return tok, mu, vt


def ceiling(size: int, spatial: int, time_factor: int, patch: int, dims, frames: int = 17, scenes: int = 8,
            cases=("reverse", "moving:reverse")):
    ae = inference.build_autoencoder(inference.AutoencoderConfig("patch", spatial, time_factor=time_factor))
    tok, mu, vt = token_basis(ae, patch, frames, size, size)
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
                         vt.shape[1], d, case, s["psnr"], s["ssim"], s["time_err"], best))
    return rows


def spectrum(checkpoint, case: str, scenes: int = 8, band: int = 16, steps: int | None = None):
    """Rows (first component, truth variance share, model, temporal mean, first frame, head singular
    value / largest, last component) per band of ``band`` principal components of the tokens, on ``case``, sampled as
    stp-eval samples (run.json's steps unless ``steps``). The head column is a rough guide: singular
    value k is not tied to principal axis k, and the head's input is modulated per channel."""
    ck = inference.load_checkpoint(checkpoint)
    ae_kind = ck.run.get("autoencoder", {}).get("kind")
    if "data" not in ck.run or ck.model.cfg.mode != "spacetimepilot" or ae_kind != "patch":
        raise SystemExit(f"{checkpoint}: expected a SpaceTimePilot model trained by stp-train on procedural scenes "
                         f"with the PatchAutoencoder (its run.json names the clips' size); autoencoder: {ae_kind}")
    d = evaluate.run_data_config(ck)
    t, n_cam, h, w = d.num_frames, d.num_cameras, d.height, d.width
    _, ph, pw = ck.model.cfg.patch_size
    if ph != pw:
        raise SystemExit(f"{checkpoint}: patch {ck.model.cfg.patch_size}: the token basis needs square patches")
    tok, mu, vt = token_basis(ck.ae, ph, t, h, w)
    held = evaluate.held_out_scenes(scenes, t, n_cam, h, w)
    sampling = evaluate.run_sampling(ck, steps)
    text = sampling.pop("text")
    gen = inference.make_generator(ck.model, ck.ae, **sampling)
    cams, times, truth, sources, out = evaluate.case_outputs(gen, ck.model, ck.params, ck.ae, case, held, text=text)
    base = evaluate.baselines(sources, cams, times, n_cam, evaluate.source_cameras(case, t, n_cam))
    coef = lambda clip: (tok(ck.ae.encode(inference.to_float(clip))) - mu) @ vt.T  # noqa: E731  [tokens, P]
    ct = coef(truth)
    rows = {"model": coef(out), "temporal_mean": coef(base["temporal_mean"]), "first_frame": coef(base["first_frame"])}
    head = np.linalg.svd(np.asarray(ck.params["head"]["kernel"]).reshape(ck.model.cfg.dim, -1), compute_uv=False)
    total = np.sum(ct ** 2)
    out_rows = []
    for b0 in range(0, ct.shape[1], band):
        sl = slice(b0, b0 + band)
        var = max(float(np.sum(ct[:, sl] ** 2)), 1e-12)
        got = [1 - np.sum((c[:, sl] - ct[:, sl]) ** 2) / var for c in rows.values()]
        out_rows.append((b0, var / total, *got, head[b0] / head[0] if b0 < len(head) else None,  # rank <= dim
                         min(b0 + band, ct.shape[1]) - 1))
    return out_rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int)
    p.add_argument("--spatial", type=int, default=4)
    p.add_argument("--time-factor", type=int, default=1)
    p.add_argument("--patch", type=int, default=2)
    p.add_argument("--dims", default="128")
    p.add_argument("--checkpoint", help="a model trained on procedural scenes: what it reproduces, per band")
    p.add_argument("--case", default="still:reverse")
    p.add_argument("--steps", type=int, help="with --checkpoint: sampling steps (default: run.json's)")
    a = p.parse_args()
    if a.checkpoint:
        print(f"{a.checkpoint}, {a.case}: share of each band of token principal components reproduced "
              "(1 - error / variance)")
        print("| components | truth variance share | model | temporal mean | first frame | head singular value |")
        print("|---|---|---|---|---|---|")
        for r in spectrum(a.checkpoint, a.case, steps=a.steps):
            head = "–" if r[5] is None else f"{r[5]:.3f}"
            print(f"| {r[0]}-{r[6]} | {r[1]:.3f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {head} |")
        return
    layouts = [(a.size, a.spatial, a.time_factor)] if a.size else [(32, 4, 4), (24, 4, 1)]
    print("| layout | token values | D | case | PSNR | SSIM | time err | best baseline PSNR |")
    print("|---|---|---|---|---|---|---|---|")
    for size, spatial, tf in layouts:
        for r in ceiling(size, spatial, tf, a.patch, [int(d) for d in a.dims.split(",")]):
            print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.2f} | {r[5]:.3f} | {r[6]:.2f} | {r[7]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
