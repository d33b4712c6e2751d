"""Sampling: re-render a video along a camera trajectory and a time schedule; ``stp-sample``.

  stp-sample --checkpoint DIR --video IN.mp4 --camera PRESET|FILE --time PRESET|FILE --out DIR
  stp-sample --checkpoint DIR --jobs jobs.jsonl --out DIR      # many jobs, batched + sharded

Every input is read and checked before anything is computed; outputs are written to
``OUT.partial`` and renamed to ``OUT`` at the end, so a failed run leaves nothing behind.
Each job writes: ``video.mp4`` (the output), ``side_by_side.mp4`` (source | output),
``contact_sheet.png``, ``camera.png`` (target and source frusta) and ``settings.json``.

Text: with a converted umT5 (``--text-encoder DIR`` holding the converted encoder and its
tokenizer files), ``--caption`` is encoded and CFG uses Wan's default negative prompt;
``--text-embedding FILE.npy`` gives precomputed states; models trained with a null text
(the embedded default) use zeros and no CFG.

Long videos (``--segments N``): segment k's source is segment k-1's output (its cameras
and times become the source's), its target camera continues from the last pose reached,
e.g. ``--camera orbit45 --time freeze_mid --segments 4`` orbits 0°->180° with time frozen.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stp_jax import inference
from stp_jax.controls import camera as cam_lib
from stp_jax.controls import timing
from stp_jax.diffusion.sampler import SOLVERS



@dataclasses.dataclass
class Checkpoint:
    path: Path
    model: Any
    params: Any
    ae: inference.Autoencoder
    run: dict


def load_checkpoint(path, vae: str | None = None) -> Checkpoint:
    """A training workdir (uses its ``model/``), or a converted model folder (stp-convert)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"checkpoint {p} does not exist")
    if (p / "model" / "config.json").exists():
        p = p / "model"
    if not (p / "config.json").exists():
        raise ValueError(f"checkpoint {p}: neither a training workdir with model/ (stp-train) nor a converted "
                         "model folder with config.json (stp-convert)")
    from stp_jax.convert.store import load_pretrained

    model, params = load_pretrained(p)
    if not hasattr(model, "cfg") or not hasattr(model.cfg, "mode"):
        raise ValueError(f"checkpoint {p} holds a {type(model).__name__}, not a SpaceTimeDiT")
    run = json.loads((p / "run.json").read_text()) if (p / "run.json").exists() else {}
    if vae:
        ae = inference.autoencoder_for(model.cfg.in_channels, vae)
    elif run.get("autoencoder"):
        a = run["autoencoder"]
        ae = inference.build_autoencoder(a["kind"], a.get("spatial", 4), a.get("path"))
    else:
        ae = inference.autoencoder_for(model.cfg.in_channels)
    return Checkpoint(p, model, params, ae, run)


# ---------------------------------------------------------------- jobs


@dataclasses.dataclass
class Job:
    """One fully checked request (numpy inputs ready for the generator)."""
    name: str
    source: np.ndarray  # [T, H, W, 3] uint8
    tgt_c2w: np.ndarray  # [T, 4, 4]
    src_c2w: np.ndarray | None  # [T, 4, 4] or None (static)
    tgt_time: np.ndarray  # [T] int
    src_time: np.ndarray  # [T] int
    context: np.ndarray  # [S, E]
    seed: int
    settings: dict


def _size(text: str | None):
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 480x832") from e
    return h, w


def make_job(spec: dict, ck: Checkpoint, defaults: dict, text_states) -> Job:
    """Check one request and load its inputs; every problem raises one ValueError naming it."""
    from stp_jax.data.video_io import read_video

    s = {**defaults, **{k: v for k, v in spec.items() if v is not None}}
    name = str(s.get("name") or "job")
    for key in ("video", "camera", "time"):
        if not s.get(key):
            raise ValueError(f"job {name!r}: missing {key!r}")
    frames = timing.check_frames(int(s["frames"]))
    data = ck.run.get("data", {})
    size = _size(s.get("size")) or ((data["height"], data["width"]) if data else None)
    video = Path(s["video"])
    if not video.is_file():
        raise ValueError(f"job {name!r}: video {video} does not exist")
    try:
        source = read_video(video, num_frames=frames, size=size)
    except Exception as e:  # noqa: BLE001 - PyAV raises many types for corrupt files
        raise ValueError(f"job {name!r}: cannot read video {video} as {frames} frames "
                         f"({type(e).__name__}: {e}); expected a readable mp4/webm/mov") from e
    ck.ae.latent_shape(frames, *source.shape[1:3])  # size divisible by the autoencoder
    try:
        tgt = cam_lib.camera_from_arg(str(s["camera"]), frames)
        src = cam_lib.load_trajectory(s["source_camera"]) if s.get("source_camera") else None
        if src is not None:
            src = cam_lib.validate_poses(src, f"source camera {s['source_camera']}", frames=frames)
        times = timing.schedule_from_arg(str(s["time"]), frames, source_frames=frames)
    except ValueError as e:  # CameraError / ScheduleError name the input already
        raise ValueError(f"job {name!r}: {e}") from e
    solver = s.get("solver", "euler")
    if solver not in SOLVERS:
        raise ValueError(f"job {name!r}: solver {solver!r} is not available; expected one of {SOLVERS}")
    settings = {k: s.get(k) for k in ("video", "camera", "source_camera", "time", "caption", "text_embedding",
                                      "steps", "cfg", "shift", "seed", "solver", "frames", "size", "segments")}
    settings["checkpoint"] = str(ck.path)
    settings["prediction"] = ck.run.get("sample", {}).get("prediction", "velocity")
    settings["time_schedule"] = [int(v) for v in times]
    return Job(name, source, tgt, src, np.asarray(times), np.arange(frames), text_states(s), int(s["seed"]), settings)


def _text_states_fn(ck: Checkpoint, text_encoder: str | None):
    """job spec -> [S, E] states (the caption through umT5, a .npy, or the trained null text)."""
    e_dim = ck.model.cfg.text_dim
    cache: dict[str, np.ndarray] = {}
    enc = None

    def states(spec: dict) -> np.ndarray:
        nonlocal enc
        if spec.get("text_embedding"):
            return inference.load_text_embedding(spec["text_embedding"], e_dim)
        caption = spec.get("caption")
        if caption is None or not text_encoder:
            if caption and not text_encoder:
                raise ValueError("--caption needs --text-encoder (a converted umT5 folder with its tokenizer) "
                                 "or pass --text-embedding FILE.npy")
            return np.asarray(inference.text_context(ck.run.get("text", {"kind": "null"}), 1, e_dim))[0]
        if caption not in cache:
            enc = enc or _load_text_encoder(text_encoder)
            cache[caption] = enc(caption)
        return cache[caption]

    return states


def _load_text_encoder(path):
    from stp_jax.convert.store import load_pretrained
    from stp_jax.models import text as text_lib

    model, params = load_pretrained(path)
    tok = text_lib.Tokenizer(path)
    fn = jax.jit(lambda p, i, m: text_lib.wan_text_states(model.apply({"params": p}, i, m), m))

    def encode(caption: str) -> np.ndarray:
        ids, mask = tok([caption])
        return np.asarray(fn(params, ids, mask))[0]

    return encode


# ---------------------------------------------------------------- running


def run_jobs(ck: Checkpoint, jobs: list[Job], *, steps: int, shift: float, cfg_scale: float, negative=None,
             segments: int = 1, batch_size: int = 8, mesh=None, solver: str = "euler") -> list[np.ndarray]:
    """Generate every job (batched by equal shapes; the batch sharded over ``mesh``'s data
    axes when given). ``negative``: [S, E] unconditional states for CFG (None = no CFG).
    Returns per job the output frames [segments * T, H, W, 3] uint8."""
    guided = negative is not None and cfg_scale != 1.0
    gen = inference.make_generator(ck.model, ck.ae, steps=steps, shift=shift, cfg_scale=cfg_scale if guided else 1.0,
                                   prediction=ck.run.get("sample", {}).get("prediction", "velocity"), solver=solver)
    outputs: list[np.ndarray | None] = [None] * len(jobs)
    groups: dict[tuple, list[int]] = {}
    for i, j in enumerate(jobs):
        groups.setdefault((j.source.shape, j.context.shape), []).append(i)
    for idx_all in groups.values():
        for b0 in range(0, len(idx_all), batch_size):
            idx = idx_all[b0:b0 + batch_size]
            outs = _run_group(gen, ck, [jobs[i] for i in idx], negative if guided else None, segments, mesh)
            for i, o in zip(idx, outs):
                outputs[i] = o
    return outputs


def _run_group(gen, ck, jobs, negative, segments, mesh):
    t = jobs[0].source.shape[0]
    lat = ck.ae.latent_shape(t, *jobs[0].source.shape[1:3])
    n = len(jobs)
    pad = (-n) % _data_size(mesh) if mesh is not None else 0  # keep the batch divisible by the data axes
    source = np.stack([j.source for j in jobs])
    src_c2w = [j.src_c2w for j in jobs]
    src_time = np.stack([j.src_time for j in jobs])
    tgt_c2w = [j.tgt_c2w for j in jobs]
    context = np.stack([j.context for j in jobs])
    null = None if negative is None else np.broadcast_to(negative, context.shape)
    pieces = []
    for seg in range(segments):
        cond = {"tgt_cam": np.stack([cam_lib.target_condition(c) for c in tgt_c2w]),
                "src_cam": np.stack([cam_lib.source_condition(c, t) for c in src_c2w]),
                "tgt_time": np.stack([j.tgt_time for j in jobs]), "src_time": src_time}
        keys = [jax.random.fold_in(jax.random.PRNGKey(j.seed), seg) for j in jobs]
        noise = jnp.stack([jax.random.normal(k, lat) for k in keys])
        args = [source, cond, context, null, noise]
        if pad:
            args = jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[-1:], pad, 0)]) if a is not None else None,
                                args)
        if mesh is not None:
            from stp_jax.parallel.mesh import data_sharding

            args = jax.tree.map(lambda a: jax.device_put(a, data_sharding(mesh, np.ndim(a))) if a is not None else None,
                                args)
        out = np.asarray(gen(ck.params, *args))[:n]
        pieces.append(out)
        # next segment: this output becomes the source, cameras continue from the last pose reached
        source, src_time = out, np.stack([j.tgt_time for j in jobs])
        src_c2w = tgt_c2w
        tgt_c2w = [c[-1][None] @ np.linalg.inv(c[0])[None] @ c for c in tgt_c2w]
    return list(np.concatenate(pieces, axis=1))


def _data_size(mesh) -> int:
    shape = dict(mesh.shape)
    return shape.get("data", 1) * shape.get("fsdp", 1)


def write_outputs(out: Path, job: Job, frames: np.ndarray, fps: float = 8.0):
    from stp_jax.data.video_io import contact_sheet, write_video

    out.mkdir(parents=True, exist_ok=True)
    write_video(out / "video.mp4", frames, fps=fps)
    src = np.concatenate([job.source] * (len(frames) // len(job.source)))
    write_video(out / "side_by_side.mp4", np.concatenate([src, frames], axis=2), fps=fps)
    every = max(1, len(frames) // 8)
    contact_sheet([src, frames], out / "contact_sheet.png", every=every, labels=["source", "output"])
    cam_lib.plot_trajectories(out / "camera.png", job.tgt_c2w, job.src_c2w)
    (out / "settings.json").write_text(json.dumps(job.settings, indent=2, default=str))


def _read_jobs(path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"jobs file {p} does not exist")
    specs = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"jobs file {p}, line {n}: not JSON ({e})") from e
        if not isinstance(d, dict):
            raise ValueError(f"jobs file {p}, line {n}: expected an object with video/camera/time")
        d.setdefault("name", f"job{len(specs):03d}")
        specs.append(d)
    if not specs:
        raise ValueError(f"jobs file {p} holds no jobs")
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"jobs file {p}: job names must be unique")
    return specs


def main(argv=None):
    p = argparse.ArgumentParser(prog="stp-sample", description="Re-render a video along a camera trajectory and "
                                "an animation-time schedule.")
    p.add_argument("--checkpoint", required=True, help="training workdir (stp-train) or converted model folder")
    p.add_argument("--video", help="source video (mp4...)")
    p.add_argument("--camera", help="camera preset (cam01..cam10, orbit<deg>[_el<deg>], static) or trajectory file")
    p.add_argument("--source-camera", help="the source's own camera poses (file); default: a static camera")
    p.add_argument("--time", help="time preset (forward, reverse, freeze_mid, slowmo_first_half, zigzag@N...), "
                                  "a comma list or a file")
    p.add_argument("--jobs", help="JSONL of jobs (keys as the flags: video, camera, time, caption, seed...)")
    p.add_argument("--out", required=True)
    p.add_argument("--caption")
    p.add_argument("--text-embedding", help=".npy [tokens, text_dim] text states")
    p.add_argument("--text-encoder", help="converted umT5 folder with tokenizer files (for --caption)")
    p.add_argument("--negative", help="negative prompt for CFG (default: Wan's)")
    p.add_argument("--vae", help="converted Wan VAE folder (for 16-channel models)")
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--shift", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--solver", default="euler", help=f"one of {SOLVERS}")
    p.add_argument("--frames", type=int)
    p.add_argument("--size", help="HEIGHTxWIDTH (default: the checkpoint's training size, else the video's)")
    p.add_argument("--segments", type=int, default=1, help="autoregressive segments (long videos)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".partial")
    try:
        if out.exists() and not args.overwrite:
            raise ValueError(f"{out} already exists; choose another --out or pass --overwrite")
        if bool(args.jobs) == bool(args.video):
            raise ValueError("give either --video (with --camera and --time) or --jobs FILE.jsonl")
        if args.segments < 1:
            raise ValueError(f"--segments must be >= 1, got {args.segments}")
        specs = _read_jobs(args.jobs) if args.jobs else [
            {"name": "job", "video": args.video, "camera": args.camera, "time": args.time,
             "source_camera": args.source_camera, "caption": args.caption, "text_embedding": args.text_embedding}]
        ck = load_checkpoint(args.checkpoint, vae=args.vae)
        run_s = ck.run.get("sample", {})
        defaults = {"steps": args.steps or run_s.get("steps", 50), "shift": args.shift or run_s.get("shift", 5.0),
                    "cfg": args.cfg, "seed": args.seed, "solver": args.solver, "size": args.size,
                    "frames": args.frames or ck.run.get("data", {}).get("num_frames", 81), "segments": args.segments}
        states = _text_states_fn(ck, args.text_encoder)
        jobs = [make_job(s, ck, defaults, states) for s in specs]
        for key in ("steps", "shift", "cfg", "frames", "solver"):
            if len({j.settings[key] for j in jobs}) > 1:
                raise ValueError(f"jobs differ in {key!r}; run them in separate calls")
        negative = None
        if args.text_encoder and args.cfg != 1.0:
            from stp_jax.models.text import WAN_NEGATIVE_PROMPT

            negative = _load_text_encoder(args.text_encoder)(args.negative or WAN_NEGATIVE_PROMPT)
        for j in jobs:
            j.settings["cfg_applied"] = float(args.cfg) if negative is not None else None  # None: no CFG (no text encoder)
            if negative is not None:
                j.settings["negative"] = args.negative or "Wan default"
        mesh = None
        if jax.device_count() > 1:
            from stp_jax.parallel.mesh import make_mesh

            mesh = make_mesh({"data": -1})
        js = jobs[0].settings
        outputs = run_jobs(ck, jobs, steps=int(js["steps"]), shift=float(js["shift"]), cfg_scale=float(js["cfg"]),
                           negative=negative, segments=args.segments, batch_size=args.batch, mesh=mesh,
                           solver=js["solver"])
        shutil.rmtree(tmp, ignore_errors=True)
        for job, frames in zip(jobs, outputs):
            write_outputs(tmp / job.name if len(jobs) > 1 else tmp, job, frames)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except ValueError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"stp-sample: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/" + ("<job>/" if len(jobs) > 1 else "") + "video.mp4, side_by_side.mp4, contact_sheet.png, "
          "camera.png, settings.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
