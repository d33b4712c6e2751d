"""The published Cam×Time benchmark (docs/REFERENCE.md §6.4): its evaluation layout, the five
published retiming modes, and the published metric.

  stp-eval --camxtime-eval EVAL_INPUT --checkpoint CK --out PRED_ROOT   # <PRED_ROOT>/<mode>/<stem>_cam_00.mp4
  stp-eval --score PRED_ROOT --gt eval_gt_wan2.1_format                 # PSNR / SSIM / LPIPS, mean ± std per mode

Layout read (``read_eval_set``)::

    EVAL_INPUT/metadata.csv                      columns file_name, text (one row per scene)
    EVAL_INPUT/videos/<file_name>                the source clip
    EVAL_INPUT/src_cam/<stem>/camera_data.json   {"cameras": {"extrinsic": {"camera_000": 4x4 w2c, ...}}} (Blender)
    EVAL_INPUT/cameras/camera_extrinsics.json    must exist (empty: camera id 0, hence ``_cam_00``)

Poses as published: c2w = inv(w2c) of the float32 matrices, c2w_cv = X c2w F with F = diag(1, -1, -1, 1)
(Blender -> OpenCV camera axes) and X = diag(-1, 1, 1, 1) (a world x-flip: every absolute pose has
det -1, accepted as a consistently mirrored world), relative pose c2w_cv,f inv(c2w_cv,0) (det +1),
every 4th frame, not normalised. The benchmark keeps the target camera = the source camera
(``camxtime_identity_set``): the same [F', 12] array conditions both halves; only time changes.

Scoring (``score``): every ``<stem>_cam_00.mp4`` of a mode against ``GT/<stem>/moving_<p>.mp4``:
frames not 480x832 resized with PIL bilinear, uint8 RGB, cut to the shorter clip; per frame PSNR
(data range 255, no floor) and SSIM (scikit-image defaults) from ``stp_jax.metrics``, LPIPS AlexNet
(``metrics.lpips``, called as (truth, prediction)); averaged per video, then mean and population
std over the videos of a mode.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import re
import sys
from pathlib import Path

import jax
import numpy as np

from stp_jax import inference, metrics
from stp_jax.controls import camera as cam_lib
from stp_jax.controls import timing
from stp_jax.files import atomic_output

# output folder -> (published time mode, ground-truth file stem)
MODES = {
    "fixed_10": ("fixed_10", "moving_bullettime"),
    "normal": ("normal", "moving_forward"),
    "reverse": ("reverse", "moving_backward"),
    "slowmo": ("repeat_0to40_double", "moving_slowmo"),
    "zigzag": ("zigzag_0_10_0", "moving_zigzag"),
}
SCORE_SIZE = (480, 832)  # (H, W) every frame is scored at
PRED_SUFFIX = "_cam_00.mp4"
BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # F: flip the camera's Y and Z axes
WORLD_X_FLIP = np.diag([-1.0, 1.0, 1.0, 1.0])  # X: the published conversion's extra world flip


class BenchmarkError(ValueError):
    """The benchmark folder, a prediction or a ground-truth file is not as published; the message says which."""


# ---------------------------------------------------------------- reading the published layout


@dataclasses.dataclass
class Scene:
    stem: str
    video: Path
    caption: str
    c2w: np.ndarray  # [T, 4, 4] OpenCV camera axes in the mirrored world (det -1), as published
    camera: np.ndarray  # [F', 12] relative poses of every 4th frame: the source's and the target's condition


def read_w2c(path: Path, num_frames: int) -> np.ndarray:
    """The first ``num_frames`` world-to-camera matrices of a ``camera_data.json`` as float32, in
    camera order (camera_000, camera_001, ...)."""
    try:
        data = json.loads(Path(path).read_text())
        ext = data["cameras"]["extrinsic"]
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"{path}: not a readable camera_data.json ({e})") from e
    except (KeyError, TypeError) as e:
        raise BenchmarkError(f"{path}: expected {{'cameras': {{'extrinsic': {{'camera_000': 4x4 w2c, ...}}}}}}") from e
    if not isinstance(ext, dict):
        raise BenchmarkError(f"{path}: cameras.extrinsic must map camera_000, camera_001, ... to 4x4 matrices")
    keys = sorted(ext, key=lambda k: int(m[1]) if (m := re.fullmatch(r"camera_(\d+)", k)) else -1)
    bad = [k for k in keys if not re.fullmatch(r"camera_\d+", k)]
    if bad:
        raise BenchmarkError(f"{path}: unexpected key {bad[0]!r} in cameras.extrinsic; expected camera_000, ...")
    if len(keys) < num_frames:
        raise BenchmarkError(f"{path}: has {len(keys)} cameras, the clip needs {num_frames}")
    try:
        w2c = np.asarray([ext[k] for k in keys[:num_frames]], np.float32).reshape(num_frames, 4, 4)
    except ValueError as e:
        raise BenchmarkError(f"{path}: every camera must be a 4x4 matrix (or 16 numbers)") from e
    return w2c


def published_poses(w2c: np.ndarray, name: str = "camera_data.json") -> tuple[np.ndarray, np.ndarray]:
    """(c2w_cv [T, 4, 4], condition [F', 12]) from Blender world-to-camera matrices, as published."""
    c2w = np.linalg.inv(np.asarray(w2c, np.float32).astype(np.float64))
    c2w_cv = WORLD_X_FLIP[None] @ c2w @ BLENDER_TO_OPENCV[None]
    c2w_cv = cam_lib.validate_poses(c2w_cv, name, mirrored_world=True)
    rel = cam_lib.validate_poses(c2w_cv @ np.linalg.inv(c2w_cv[0])[None], f"{name} (relative to frame 0)")
    return c2w_cv, cam_lib.pack12(cam_lib.subsample_latent(rel))


def read_eval_set(root, num_frames: int = 81) -> list[Scene]:
    """Every scene of a published ``eval_input`` folder (layout in the module docstring)."""
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise BenchmarkError(f"{root}: no metadata.csv; expected the published eval_input layout (metadata.csv, "
                             "videos/, src_cam/<stem>/camera_data.json, cameras/camera_extrinsics.json)")
    if not (root / "cameras" / "camera_extrinsics.json").is_file():
        raise BenchmarkError(f"{root}: cameras/camera_extrinsics.json is missing (the published reader requires it)")
    with meta.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file_name", "text"} <= set(rows[0]):
        raise BenchmarkError(f"{meta}: expected a header with file_name and text and one row per scene")
    scenes = []
    for row in rows:
        video = root / "videos" / row["file_name"]
        if not video.is_file():
            raise BenchmarkError(f"{meta}: {row['file_name']}: {video} does not exist")
        stem = Path(row["file_name"]).stem
        cams = root / "src_cam" / stem / "camera_data.json"
        if not cams.is_file():
            raise BenchmarkError(f"{meta}: {row['file_name']}: {cams} does not exist")
        try:
            c2w, cond = published_poses(read_w2c(cams, num_frames), str(cams))
        except cam_lib.CameraError as e:
            raise BenchmarkError(str(e)) from e
        scenes.append(Scene(stem, video, row["text"], c2w, cond))
    stems = [s.stem for s in scenes]
    if len(set(stems)) != len(stems):
        raise BenchmarkError(f"{meta}: two rows name the same video stem")
    return scenes


# ---------------------------------------------------------------- running the five modes


def prediction_path(pred_root, mode: str, stem: str) -> Path:
    return Path(pred_root) / mode / f"{stem}{PRED_SUFFIX}"


def run_benchmark(eval_dir, checkpoint, out, *, modes=tuple(MODES), vae=None, text_encoder=None, steps=None,
                  shift=None, cfg=None, seed=None, numerics=None, frames=None, size=None, fps=None, batch: int = 1,
                  overwrite: bool = False, model_set=None) -> dict:
    """Predict every scene of ``eval_dir`` in each published mode into ``out`` (published naming).

    Unset options take the checkpoint's run.json defaults (a converted published checkpoint: 81
    frames at 480x832, 50 steps, CFG 5 with Wan's negative prompt, reference numerics, tiled VAE,
    30 fps). Captions need ``text_encoder``; without one the model's null text is used and
    guidance is off (said on stderr and in benchmark.json). Existing predictions are kept (a
    rerun resumes) unless ``overwrite``. Returns the run's settings (also in OUT/benchmark.json)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise BenchmarkError(f"benchmark modes {unknown or '(none)'}: expected some of {', '.join(MODES)}")
    if batch < 1:
        raise BenchmarkError(f"--batch must be >= 1, got {batch}")
    ck = inference.load_checkpoint(checkpoint, vae=vae, numerics=numerics, model_set=inference.model_overrides(model_set))
    if ck.model.cfg.cam_heads:
        raise BenchmarkError(f"{checkpoint}: a model with camera-relative heads (cam_heads {ck.model.cfg.cam_heads}) "
                             "reads source poses by the 'first_camera' rule; the published benchmark's camera inputs "
                             "follow the published rule, so its scores would not mean anything")
    run_s = inference.sampling_defaults(ck.run)
    t, size, resize = inference.video_settings(ck.run, frames, size)
    scenes = read_eval_set(eval_dir, t)
    steps, shift = int(steps or run_s.get("steps", 50)), float(shift or run_s.get("shift", 5.0))
    cfg = float(run_s.get("cfg_scale", 5.0) if cfg is None else cfg)
    seed = int(run_s.get("seed", 0) if seed is None else seed)
    fps, crf = float(fps or run_s.get("fps", 8.0)), int(run_s.get("crf", 18))
    encoder = inference.load_text_encoder(text_encoder, ck.numerics) if text_encoder else None
    e_dim = ck.model.cfg.text_dim
    null = np.asarray(inference.text_context(inference.TextConfig(**ck.run.get("text", {})), 1, e_dim))[0]
    neg, neg_name, off = inference.guidance(cfg, encoder=(lambda: encoder) if encoder else None, text_dim=e_dim)
    if off:
        print(f"stp-eval: note: classifier-free guidance is off: {off}", file=sys.stderr)
    gen = inference.make_generator(ck.model, ck.ae, steps=steps, shift=shift, cfg_scale=cfg if neg is not None else 1.0,
                                   prediction=run_s.get("prediction", "velocity"), solver="euler")
    times = {m: timing.preset(MODES[m][0], t) for m in modes}  # unclipped published lists
    settings = {"eval_dir": str(eval_dir), "checkpoint": str(ck.path), "modes": list(modes), "scenes": len(scenes),
                "frames": t, "size": list(size) if size else None, "resize": resize, "steps": steps, "shift": shift,
                "cfg": cfg, "cfg_applied": cfg if neg is not None else None, "negative": neg_name, "cfg_off_reason": off,
                "seed": seed, "numerics": ck.numerics, "model_set": ck.model_set, "vae_tiling": ck.ae.tiling, "fps": fps,
                "crf": crf,
                "text": "umT5 captions" if encoder else "the model's null text",
                "time_modes": {m: MODES[m][0] for m in modes}}
    from stp_jax.data.video_io import write_video

    written = 0
    for sc in scenes:
        todo = [m for m in modes if overwrite or not prediction_path(out, m, sc.stem).exists()]
        if not todo:
            continue
        source = inference.load_video(sc.video, ck.run, t, size)  # [T, H, W, 3]
        ctx = encoder(sc.caption) if encoder else null
        lat = ck.ae.latent_shape(t, *source.shape[1:3])
        for b0 in range(0, len(todo), batch):
            group = todo[b0:b0 + batch]
            n = len(group)
            cond = {"tgt_cam": np.repeat(sc.camera[None], n, 0), "src_cam": np.repeat(sc.camera[None], n, 0),
                    "tgt_time": np.stack([times[m] for m in group]), "src_time": np.tile(np.arange(t), (n, 1))}
            noise = np.repeat(np.asarray(jax.random.normal(jax.random.PRNGKey(seed), lat))[None], n, 0)
            video = np.repeat(source[None], n, 0)
            context = np.repeat(ctx[None], n, 0)
            nulls = None if neg is None else np.broadcast_to(neg, context.shape)
            outs = np.asarray(gen(ck.params, video, cond, context, nulls, noise))
            for m, frames_out in zip(group, outs):
                write_video(prediction_path(out, m, sc.stem), frames_out, fps=fps, crf=crf)
                written += 1
    settings["written"] = written
    with atomic_output(Path(out) / "benchmark.json") as tmp:
        tmp.write_text(json.dumps(settings, indent=2))
    return settings


# ---------------------------------------------------------------- the published metric


def score_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] at the scoring size: resized with PIL bilinear when not 480x832."""
    from PIL import Image

    f = np.asarray(frames)
    if f.shape[1:3] == SCORE_SIZE:
        return f
    h, w = SCORE_SIZE
    return np.stack([np.asarray(Image.fromarray(x).resize((w, h), Image.Resampling.BILINEAR)) for x in f])


def score_pair(truth, prediction, lpips: bool = True) -> dict[str, float]:
    """The published per-video score of two uint8 clips: per-frame PSNR / SSIM / LPIPS at 480x832
    over the first min(len) frames, averaged over the frames."""
    gt, pr = score_frames(truth), score_frames(prediction)
    n = min(len(gt), len(pr))
    gt, pr = gt[:n], pr[:n]
    out = {"psnr": float(np.mean(metrics.psnr(gt, pr, mse_floor=0.0))), "ssim": float(np.mean(metrics.ssim(gt, pr))),
           "frames": n}
    if lpips:
        out["lpips"] = float(np.mean(metrics.lpips(gt, pr)))
    return out


def score(pred_root, gt_dir, *, modes=None, lpips: bool = True) -> dict:
    """Score every prediction under ``pred_root`` (published naming) against ``gt_dir``
    (``<stem>/moving_<p>.mp4``). Returns {mode: {psnr, psnr_std, ssim, ssim_std, lpips, lpips_std,
    videos, per_video}} plus "all" (every video of every mode)."""
    from stp_jax.data.video_io import read_video

    pred_root, gt_dir = Path(pred_root), Path(gt_dir)
    if not pred_root.is_dir():
        raise BenchmarkError(f"predictions folder {pred_root} does not exist")
    if not gt_dir.is_dir():
        raise BenchmarkError(f"ground-truth folder {gt_dir} does not exist")
    unknown = [m for m in (modes or ()) if m not in MODES]
    if unknown:
        raise BenchmarkError(f"benchmark modes {unknown}: expected some of {', '.join(MODES)}")
    modes = [m for m in (modes or MODES) if (pred_root / m).is_dir()]
    if not modes:
        raise BenchmarkError(f"{pred_root}: no prediction folders; expected some of {', '.join(MODES)} "
                             f"holding <stem>{PRED_SUFFIX}")
    keys = ("psnr", "ssim", "lpips") if lpips else ("psnr", "ssim")
    res: dict = {}
    every = []
    for m in modes:
        preds = sorted((pred_root / m).glob(f"*{PRED_SUFFIX}"))
        if not preds:
            raise BenchmarkError(f"{pred_root / m}: no <stem>{PRED_SUFFIX} predictions")
        per = {}
        for p in preds:
            stem = p.name[: -len(PRED_SUFFIX)]
            gt = gt_dir / stem / f"{MODES[m][1]}.mp4"
            if not gt.is_file():
                raise BenchmarkError(f"{p}: its ground truth {gt} does not exist")
            per[stem] = score_pair(read_video(gt), read_video(p), lpips)
        every += per.values()
        res[m] = _summary(list(per.values()), keys) | {"per_video": per}
    res["all"] = _summary(every, keys)
    return res


def _summary(scores: list[dict], keys) -> dict:
    out: dict = {"videos": len(scores)}
    for k in keys:
        v = np.asarray([s[k] for s in scores], np.float64)
        out[k], out[f"{k}_std"] = float(v.mean()), float(v.std())  # population std, as published
    return out


def markdown(res: dict) -> str:
    keys = [k for k in ("psnr", "ssim", "lpips") if k in res["all"]]
    lines = ["| mode | videos | " + " | ".join(k.upper() for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for m, r in res.items():
        lines.append(f"| {m} | {r['videos']} | " + " | ".join(f"{r[k]:.4f} ± {r[k + '_std']:.4f}" for k in keys) + " |")
    return "\n".join(lines)


def write_scores(res: dict, out_dir) -> Path:
    """scores.json (every number, per video too) and scores.md (the table) into ``out_dir``."""
    out = Path(out_dir)
    for name, text in (("scores.json", json.dumps(res, indent=2)), ("scores.md", markdown(res) + "\n")):
        with atomic_output(out / name) as tmp:
            tmp.write_text(text)
    return out
