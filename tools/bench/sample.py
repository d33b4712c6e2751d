"""Sampling with and without the denoise loop's step / CFG cache (stp_jax.diffusion.sampler.StepCache).

For each model, every setting samples the same inputs from the same noise; the uncached run is
the peer. Reported: wall time and steps/s of the whole jitted generator (encode, denoise,
decode; median after a compile-and-warm-up call), the speed-up over uncached, the model calls
(steps that called the model) and passes (model evaluations of batch B: a CFG pair is 2), and
the cached video's distance to the uncached one (PSNR in dB, LPIPS AlexNet); with a
checkpoint also both videos' PSNR against the held-out ground truth.

  python tools/bench/sample.py                                    # a random tiny Wan, CFG 5, 50 steps
  python tools/bench/sample.py --checkpoint /work/runs/still3k    # ... and a trained stp-train workdir

(a) ``tiny-wan``: a Wan-mode DiT of the converted tiny Wan's shape (tests/torch_ref.TINY: dim 64,
4 heads, 2 layers, text_dim 32, freq_dim 32) on PatchAutoencoder latents (48 channels), every
weight fixed random noise (scale 0.2, norm scales around 1, seed 0: no trivial weight), a
procedural Cam×Time clip as the source, random text states and CFG against zero states.
(b) ``--checkpoint``: its run.json's sampling settings (steps, shift, CFG, prediction, text) on
held-out procedural scenes (stp_jax.evaluate's, one retiming case); a model trained with its null
text has no negative states, so its CFG rows are left out (nothing to cache).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import machine, parse_args, table, timeit, write_json  # noqa: E402

TINY = dict(dim=64, ffn_dim=128, num_heads=4, num_layers=2, text_dim=32, freq_dim=32)  # tests/torch_ref.TINY


def tiny_wan(seed: int = 0, scale: float = 0.2):
    """(model, params, autoencoder): the random-but-fixed tiny Wan of the module doc."""
    import jax

    from stp_jax import inference
    from stp_jax.convert.dit import abstract_params
    from stp_jax.models.dit import DiTConfig, SpaceTimeDiT

    ae = inference.build_autoencoder(inference.AutoencoderConfig("patch", spatial=2))
    cfg = DiTConfig(mode="wan", in_channels=ae.latent_channels, out_channels=ae.latent_channels, **TINY)
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        noise = (scale * rng.standard_normal(a.shape)).astype(np.float32)
        norm = any(getattr(k, "key", None) in ("norm_q", "norm_k", "norm3") for k in path) and path[-1].key == "scale"
        return 1.0 + noise if norm else noise

    params = jax.tree_util.tree_map_with_path(leaf, abstract_params(cfg))
    return SpaceTimeDiT(cfg), params, ae


def tiny_inputs(frames: int, size: int, batch: int, seed: int):
    """(source uint8 [B, T, H, W, 3], cond {}, context [B, 8, 32], null [B, 8, 32])."""
    from stp_jax.data import camxtime as cx

    src = []
    for i in range(batch):
        scene, cams = cx.make_scene(7 + i), cx.camera_path(7 + i, frames)
        ci, ti = cx.source_indices(frames, frames)
        src.append(np.asarray(cx.render_path_jit(scene, cams, ci, ti, frames, size, size)))
    g = np.random.default_rng(seed)
    ctx = g.standard_normal((batch, 8, TINY["text_dim"])).astype(np.float32)
    return np.stack(src), {}, ctx, np.zeros_like(ctx)


def checkpoint_inputs(ck, scenes: int, case: str):
    """(source, cond, context, null or None, truth) for ``scenes`` held-out scenes in one case,
    built as stp_jax.evaluate.retiming_eval builds them."""
    from stp_jax import evaluate, inference
    from stp_jax.controls import camera as cam_lib

    d = ck.run.get("data")
    if d is None:
        raise SystemExit(f"{ck.path}: no run.json data section (a model trained by stp-train is expected)")
    t, n_cam, h, w = d["num_frames"], d["num_cameras"], d["height"], d["width"]
    _, paths, grids, _ = evaluate.held_out_scenes(scenes, t, n_cam, h, w)
    cams, times = evaluate.case_cells(case, t, n_cam)
    src_c, src_t = evaluate.source_cameras(case, t, n_cam), np.arange(t)
    fpl = ck.ae.time_factor
    cond = {"tgt_cam": np.stack([cam_lib.target_condition(p[cams], reference=p[src_c[0]], frames_per_latent=fpl)
                                 for p in paths]),
            "src_cam": np.stack([cam_lib.source_condition(p[src_c], t, frames_per_latent=fpl,
                                                          rule=ck.model.cfg.source_camera_rule) for p in paths]),
            "tgt_time": np.tile(times, (scenes, 1)), "src_time": np.tile(src_t, (scenes, 1))}
    text = inference.TextConfig(**ck.run["text"]) if ck.run.get("text") else inference.TextConfig()
    ctx = np.asarray(inference.text_context(text, scenes, ck.model.cfg.text_dim))
    return grids[:, src_c, src_t], cond, ctx, None, grids[:, cams, times]


def settings(caches, thresholds, guided: bool):
    """(cache, threshold) pairs to run; the uncached peer first."""
    out = [("none", 0.0)]
    for c in caches:
        if c == "none" or "cfg" in c and not guided:
            continue
        out += [(c, t) for t in thresholds] if "mag" in c else [(c, 0.0)]
    return out


def bench_model(name, model, params, ae, inputs, *, steps, shift, cfg_scale, prediction, caches, thresholds, seed,
                iters, with_lpips, truth=None):
    import jax

    from stp_jax import inference, metrics

    source, cond, ctx, null = inputs
    guided = null is not None and cfg_scale != 1.0
    lat = ae.latent_shape(source.shape[1], *source.shape[2:4])
    noise = jax.random.normal(jax.random.PRNGKey(seed), (source.shape[0],) + lat)
    rows, peer = [], None
    for cache, thr in settings(caches, thresholds, guided):
        gen = inference.make_generator(model, ae, steps=steps, shift=shift, cfg_scale=cfg_scale if guided else 1.0,
                                       prediction=prediction, cache=cache, cache_threshold=thr, with_stats=True)
        call = lambda gen=gen: jax.block_until_ready(gen(params, source, cond, ctx, null if guided else None,  # noqa: E731
                                                          noise))
        r = timeit(call, warmup=1, iters=iters)
        video, stats = call()
        video, passes = np.asarray(video), np.asarray(stats["passes"])
        row = {"model": name, "cache": cache, "threshold": thr if "mag" in cache else None, "steps": steps,
               "calls": int((passes > 0).sum()), "passes": int(passes.sum()), "wall_s": r["median_s"],
               "steps/s": steps / r["median_s"], "schedule": "".join(".12"[p] for p in passes)}
        if peer is None:
            peer = (video, r["median_s"])
        row["speedup"] = peer[1] / r["median_s"]
        row["psnr_vs_uncached"] = float(metrics.psnr(video, peer[0]).mean())
        if with_lpips:
            row["lpips_vs_uncached"] = float(metrics.lpips(peer[0], video).mean())
        if truth is not None:
            row["psnr_truth"] = float(metrics.psnr(video, truth).mean())
        rows.append(row)
        print(table([row], list(row)), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="also a trained stp-train workdir or converted model folder")
    ap.add_argument("--skip-tiny", action="store_true", help="only the checkpoint")
    ap.add_argument("--caches", default="mag,cfg,mag+cfg", help="comma list of caches beside none")
    ap.add_argument("--thresholds", default="0.05,0.1,0.2", help="comma list of thresholds for the mag caches")
    ap.add_argument("--steps", type=int, default=50, help="tiny Wan: denoise steps")
    ap.add_argument("--ckpt-steps", type=int, help="checkpoint: steps (default: its run.json's)")
    ap.add_argument("--cfg", type=float, default=5.0, help="tiny Wan: CFG scale")
    ap.add_argument("--frames", type=int, default=17, help="tiny Wan: source frames (1 + 4k)")
    ap.add_argument("--size", type=int, default=48, help="tiny Wan: square frame size in pixels")
    ap.add_argument("--batch", type=int, default=1, help="tiny Wan: clips per batch")
    ap.add_argument("--scenes", type=int, default=4, help="checkpoint: held-out scenes (one batch)")
    ap.add_argument("--case", default="reverse", help="checkpoint: the retiming case (stp-eval's names)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--no-lpips", action="store_true")
    ap.add_argument("--out", default="bench_out/sample.json")
    args = parse_args(ap, argv)  # first: --host-malloc acts before JAX starts its backend

    from stp_jax import inference
    from stp_jax.diffusion.sampler import CACHES

    caches = [c.strip() for c in args.caches.split(",") if c.strip()]
    bad = [c for c in caches if c not in CACHES]
    if bad:
        raise SystemExit(f"--caches: {bad} unknown; expected some of {', '.join(CACHES)}")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    common = dict(caches=caches, thresholds=thresholds, seed=args.seed, iters=args.iters, with_lpips=not args.no_lpips)
    rows = []
    if not args.skip_tiny:
        model, params, ae = tiny_wan(args.seed)
        rows += bench_model("tiny-wan", model, params, ae, tiny_inputs(args.frames, args.size, args.batch, args.seed),
                            steps=args.steps, shift=5.0, cfg_scale=args.cfg, prediction="velocity", **common)
    if args.checkpoint:
        ck = inference.load_checkpoint(args.checkpoint)
        s = ck.run.get("sample", {})
        *inputs, truth = checkpoint_inputs(ck, args.scenes, args.case)
        rows += bench_model(Path(args.checkpoint).name, ck.model, ck.params, ck.ae, inputs,
                            steps=args.ckpt_steps or s.get("steps", 20), shift=s.get("shift", 3.0),
                            cfg_scale=s.get("cfg_scale", 1.0), prediction=s.get("prediction", "velocity"),
                            truth=truth, **common)
    cols = ["model", "cache", "threshold", "steps", "calls", "passes", "wall_s", "steps/s", "speedup",
            "psnr_vs_uncached"] + ([] if args.no_lpips else ["lpips_vs_uncached"]) + (
        ["psnr_truth"] if args.checkpoint else []) + ["schedule"]
    print("\nschedule: per step . skipped, 1 one pass (unguided, or the conditional half), 2 the CFG pair")
    print(table(rows, cols))
    write_json(args.out, {"machine": machine(), "rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
