"""Evaluation: the paper's retiming protocol on held-out procedural Cam×Time scenes, and
camera accuracy where the ground truth is exact; ``stp-eval``.

PSNR is per frame (data range 255, MSE floored at the 8-bit rounding variance 1/12, i.e.
at most 58.9 dB), averaged over frames then scenes; ``clip PSNR`` is from each clip's mean
MSE. SSIM is per frame with a Gaussian window (7, sigma 1.5).

Retiming (REFERENCE.md §1, Evaluation): the camera is fixed at the source's first pose and
the animation time follows a schedule (normal, reverse, bullet time at mid, slow motion of
the first half, zigzag). The renderer gives the exact target: camera 0 at the scheduled
times. Each output is scored per frame (PSNR, SSIM; averaged over frames, then scenes)
beside two baselines: ``source`` (the input clip as is) and ``preshuffled`` (the source
frames reordered by the schedule: right times, wrong cameras).

Camera accuracy (``cam:`` cases): the target follows the scene's camera path backwards
(``cam:reverse_path``) or holds its last camera (``cam:last_view``) with normal time; the
ground truth is rendered with the requested cameras. LPIPS is not computed (its weights
are a download).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

from stp_jax import inference
from stp_jax.controls import camera as cam_lib
from stp_jax.controls import timing
from stp_jax.data import camxtime as cx
from stp_jax.data import pipeline as pl

RETIMING = ("forward", "reverse", "freeze_mid", "slowmo_first_half", "zigzag")
CAMERA_CASES = ("cam:reverse_path", "cam:last_view")
BASELINES = ("source", "preshuffled")


# ---------------------------------------------------------------- metrics


MSE_FLOOR = 1.0 / 12.0  # the variance of 8-bit rounding: identical frames score 58.9 dB, not infinity


def psnr(a, b) -> np.ndarray:
    """Per-frame PSNR (dB) of uint8 clips [..., T, H, W, 3] -> [..., T], the MSE floored at
    MSE_FLOOR. (Without a floor one identical frame, e.g. the source's first frame where the
    target's camera and time equal it, scores ~170 dB and swamps the clip's average.)"""
    return _psnr_over(a, b, axes=(-3, -2, -1))


def clip_psnr(a, b) -> np.ndarray:
    """PSNR of the whole clip's MSE [..., T, H, W, 3] -> [...] (a second view, less sensitive
    to single near-identical frames)."""
    return _psnr_over(a, b, axes=(-4, -3, -2, -1))


def _psnr_over(a, b, axes) -> np.ndarray:
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    mse = np.maximum(np.mean(d * d, axis=axes), MSE_FLOOR)
    return 10.0 * np.log10(255.0 ** 2 / mse)


def _gauss(size=7, sigma=1.5):
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a, b) -> np.ndarray:
    """Per-frame SSIM of uint8 clips [..., T, H, W, 3] -> [..., T]: Gaussian window (7, 1.5),
    valid region, per channel then averaged (Wang et al. 2004 constants)."""
    from scipy.ndimage import convolve1d

    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    g = _gauss()
    h_ax, w_ax = x.ndim - 3, x.ndim - 2

    def blur(z):
        z = convolve1d(z, g, axis=h_ax, mode="constant")
        return convolve1d(z, g, axis=w_ax, mode="constant")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    r = len(g) // 2
    s = s[..., r:-r, r:-r, :] if s.shape[-3] > 2 * r and s.shape[-2] > 2 * r else s
    return s.mean(axis=(-3, -2, -1))


# ---------------------------------------------------------------- cases


def case_cells(case: str, num_frames: int, num_cameras: int):
    """(target camera indices [T], target times [T]) of one evaluation case."""
    t = num_frames
    if case == "cam:reverse_path":
        src_c, _ = cx.source_indices(t, num_cameras)
        return src_c[::-1].copy(), np.arange(t)
    if case == "cam:last_view":
        return np.full(t, num_cameras - 1), np.arange(t)
    return np.zeros(t, np.int64), timing.preset(case, t)


def held_out_scenes(num_scenes: int, num_frames: int, num_cameras: int, height: int, width: int):
    """Sources of held-out scenes: (seeds, scenes, camera paths, source clips uint8 [N, T, H, W, 3])."""
    seeds = [pl.TEST_SEED_OFFSET + i for i in range(num_scenes)]
    scenes = [cx.make_scene(s) for s in seeds]
    paths = [cx.camera_path(s, num_cameras) for s in seeds]
    src_c, src_t = cx.source_indices(num_frames, num_cameras)
    clips = np.stack([np.asarray(cx.render_path_jit(sc, p, src_c, src_t, num_frames, height, width))
                      for sc, p in zip(scenes, paths)])
    return seeds, scenes, paths, clips


def retiming_eval(model, params, ae, *, data_cfg, num_scenes: int = 8, schedules=RETIMING + CAMERA_CASES,
                  steps: int = 20, shift: float = 3.0, prediction: str = "velocity", text: dict | None = None,
                  seed: int = 0,
                  out_dir: Path | None = None, batch_size: int = 8) -> dict:
    """{case: {"model_psnr", "model_ssim", "source_psnr", ..., "preshuffled_ssim"}} averaged
    over ``num_scenes`` held-out scenes; videos + contact sheets under ``out_dir``."""
    t, n_cam, h, w = data_cfg.num_frames, data_cfg.num_cameras, data_cfg.height, data_cfg.width
    seeds, scenes, paths, sources = held_out_scenes(num_scenes, t, n_cam, h, w)
    src_c, src_t = cx.source_indices(t, n_cam)
    gen = inference.make_generator(model, ae, steps=steps, shift=shift, prediction=prediction)
    lat = ae.latent_shape(t, h, w)
    results = {}
    for case in schedules:
        tgt_c, tgt_t = case_cells(case, t, n_cam)
        truth = np.stack([np.asarray(cx.render_path_jit(sc, p, tgt_c, tgt_t, t, h, w)) for sc, p in zip(scenes, paths)])
        outs = []
        for i0 in range(0, num_scenes, batch_size):
            idx = range(i0, min(i0 + batch_size, num_scenes))
            b = len(idx)
            cond = {"tgt_cam": np.stack([cam_lib.target_condition(paths[i][tgt_c]) for i in idx]),
                    "src_cam": np.stack([cam_lib.source_condition(paths[i][src_c], t) for i in idx]),
                    "tgt_time": np.tile(tgt_t, (b, 1)), "src_time": np.tile(src_t, (b, 1))}
            ctx = inference.text_context(text or {"kind": "null"}, b, model.cfg.text_dim)
            noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), i0), (b,) + lat)
            outs.append(np.asarray(gen(params, sources[list(idx)], cond, ctx, None, noise)))
        out = np.concatenate(outs)
        rows = {"model": out, "source": sources, "preshuffled": sources[:, tgt_t]}
        results[case] = {}
        for name, clip in rows.items():
            results[case][f"{name}_psnr"] = float(psnr(clip, truth).mean())
            results[case][f"{name}_clip_psnr"] = float(clip_psnr(clip, truth).mean())
            results[case][f"{name}_ssim"] = float(ssim(clip, truth).mean())
        if out_dir is not None:
            _write_case(Path(out_dir), case, sources[0], truth[0], out[0], seeds[0])
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "eval.json").write_text(json.dumps(results, indent=2))
    return results


def _write_case(out_dir: Path, case: str, source, truth, output, seed):
    from stp_jax.data.video_io import contact_sheet, write_video

    name = case.replace(":", "_")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_video(out_dir / f"{name}.mp4", np.concatenate([source, truth, output], axis=2), fps=8)
    contact_sheet([source, truth, output], out_dir / f"{name}.png", every=max(1, len(source) // 8),
                  labels=["source", "truth", "model"])


def flat_scalars(results: dict) -> dict:
    return {f"eval/{case}/{k}": v for case, r in results.items() for k, v in r.items()}


def beats_baselines(results: dict, case: str, metric: str = "psnr") -> bool:
    r = results[case]
    return all(r[f"model_{metric}"] > r[f"{b}_{metric}"] for b in BASELINES)


def markdown_table(results: dict) -> str:
    lines = ["| case | PSNR model | source | preshuffled | clip PSNR model | source | preshuffled "
             "| SSIM model | source | preshuffled | beats both (PSNR) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, r in results.items():
        lines.append(f"| {case} | {r['model_psnr']:.2f} | {r['source_psnr']:.2f} | {r['preshuffled_psnr']:.2f} | "
                     f"{r['model_clip_psnr']:.2f} | {r['source_clip_psnr']:.2f} | {r['preshuffled_clip_psnr']:.2f} | "
                     f"{r['model_ssim']:.3f} | {r['source_ssim']:.3f} | {r['preshuffled_ssim']:.3f} | "
                     f"{'yes' if beats_baselines(results, case) else 'no'} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def main(argv=None):
    p = argparse.ArgumentParser(prog="stp-eval", description="Retiming + camera evaluation on held-out "
                                "procedural Cam×Time scenes (PSNR/SSIM beside the source and preshuffled baselines).")
    p.add_argument("--checkpoint", required=True, help="a training workdir or its model/ folder (stp-train)")
    p.add_argument("--out", help="where to write eval.md, eval.json and the videos (default CHECKPOINT/eval)")
    p.add_argument("--scenes", type=int, default=8)
    p.add_argument("--cases", default=",".join(RETIMING + CAMERA_CASES),
                   help="comma list of time presets and cam:reverse_path / cam:last_view")
    p.add_argument("--steps", type=int)
    p.add_argument("--shift", type=float)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from stp_jax.sample import load_checkpoint

    try:
        ck = load_checkpoint(args.checkpoint)
        d = ck.run.get("data")
        if d is None:
            raise ValueError(f"{args.checkpoint}: no run.json with the training data shape; stp-eval scores models "
                             "trained by stp-train on procedural Cam×Time scenes")
        data_cfg = pl.DataConfig(num_frames=d["num_frames"], num_cameras=d["num_cameras"], height=d["height"],
                                 width=d["width"])
        cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())
        for c in cases:
            if c not in CAMERA_CASES:
                timing.preset(c, data_cfg.num_frames)  # validates the name
        s = ck.run.get("sample", {})
        res = retiming_eval(ck.model, ck.params, ck.ae, data_cfg=data_cfg, num_scenes=args.scenes, schedules=cases,
                            steps=args.steps or s.get("steps", 20), shift=args.shift or s.get("shift", 3.0),
                            prediction=s.get("prediction", "velocity"),
                            text=ck.run.get("text"), seed=args.seed,
                            out_dir=Path(args.out or Path(ck.path) / "eval"))
    except (ValueError, FileNotFoundError) as e:
        print(f"stp-eval: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or Path(ck.path) / "eval")
    table = markdown_table(res)
    (out / "eval.md").write_text(f"Held-out procedural scenes: {args.scenes}; checkpoint {args.checkpoint}\n\n{table}\n")
    print(table)
    print(f"\nwritten: {out}/eval.md, eval.json, <case>.mp4 (source | truth | model), <case>.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
