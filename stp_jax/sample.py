"""Sampling: re-render a video along a camera trajectory and a time schedule; ``stp-sample``.

  stp-sample --checkpoint DIR --video IN.mp4 --camera PRESET|FILE --time PRESET|FILE --out DIR
  stp-sample --checkpoint DIR --jobs jobs.jsonl --out DIR      # many jobs, batched + sharded

Every input is read and checked before anything is computed; outputs are written to
``OUT.partial`` and renamed to ``OUT`` at the end, so a failed run leaves nothing behind.
Each job writes: ``video.mp4`` (the output), ``side_by_side.mp4`` (source | output),
``contact_sheet.png``, ``camera.png`` (target and source frusta) and ``settings.json``.

Defaults come from the checkpoint's run.json (a converted published checkpoint has the
published pipeline's: 480x832x81 with the published resize and crop, 50 steps (``--preset
demo``: 20), CFG 5 with Wan's negative prompt, shift 5, reference numerics, tiled VAE, 30 fps);
every flag overrides them. ``--cache mag|cfg|mag+cfg`` (``--cache-threshold``) trades some
quality for speed by reusing model outputs between steps (diffusion/sampler.py; the measured
cost in docs/BENCHMARKS.md).

Text: with a converted umT5 (``--text-encoder DIR`` holding the converted encoder and its
tokenizer files), ``--caption`` is encoded (cleaned as Wan cleans prompts) and CFG uses Wan's
default negative prompt (or ``--negative``); ``--text-embedding FILE.npy`` gives precomputed
states, with ``--negative-embedding FILE.npy`` for CFG; models trained with a null text (the
embedded default) use zeros. CFG is never off silently: when it is off, settings.json
(``cfg_off_reason``) and stderr say why.

Long videos (``--segments N``): segment k's source is segment k-1's output (its cameras
and times become the source's), its target camera continues from the last pose reached,
e.g. ``--camera orbit45 --time freeze_mid --segments 4`` orbits 0°->180° with time frozen.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from stp_jax import inference
from stp_jax.config_utils import check_float, check_int
from stp_jax.controls import camera as cam_lib
from stp_jax.controls import timing
from stp_jax.diffusion.sampler import DEFAULT_CACHE_THRESHOLD, SOLVERS, StepCache
from stp_jax.files import atomic_output, check_can_create, inside

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


def _size(text: str | None, label: str = "--size"):
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"{label} {text!r}: expected HEIGHTxWIDTH, e.g. 480x832") from e
    if h < 1 or w < 1:
        raise ValueError(f"{label} {text!r}: height and width must be >= 1")
    return h, w


_TEXT_KEYS = ("name", "video", "camera", "source_camera", "time", "caption", "text_embedding", "solver", "size",
              "preset", "cache")


def check_settings(s: dict, label=lambda key: f"--{key.replace('_', '-')}") -> dict:
    """The numbers and texts of a request (flags or one JSONL job), checked, each error naming
    its input (``label(key)``); None means "the default" and stays None."""
    out = dict(s)
    for key in ("steps", "frames", "segments", "batch"):
        if out.get(key) is not None:
            out[key] = check_int(label(key), out[key])
    if out.get("frames") is not None:
        try:
            timing.check_frames(out["frames"])
        except ValueError as e:
            raise ValueError(f"{label('frames')}: {e}") from None
    if out.get("seed") is not None:
        out["seed"] = check_int(label("seed"), out["seed"], minimum=0)
    if out.get("shift") is not None:
        out["shift"] = check_float(label("shift"), out["shift"], positive=True)
    if out.get("cfg") is not None:
        out["cfg"] = check_float(label("cfg"), out["cfg"])
    if out.get("cache_threshold") is not None:
        out["cache_threshold"] = check_float(label("cache_threshold"), out["cache_threshold"])
    if out.get("fps") is not None:
        out["fps"] = check_float(label("fps"), out["fps"], positive=True)
        if not 1 <= out["fps"] <= 1000:  # the mp4 stream's rate is a whole number
            raise ValueError(f"{label('fps')} must be between 1 and 1000, got {out['fps']}")
    for key in _TEXT_KEYS:
        if out.get(key) is not None and not isinstance(out[key], str):
            raise ValueError(f"{label(key)}: expected a string, got {out[key]!r}")
    _size(out.get("size"), label("size"))
    for key, kw in (("cache", "mode"), ("cache_threshold", "threshold")):
        if out.get(key) is not None:
            try:  # the cache's own rules (diffusion/sampler.StepCache), named by this option
                StepCache(**{kw: out[key]})
            except ValueError as e:
                raise ValueError(f"{label(key)}: {e}") from None
    return out


def make_job(spec: dict, ck: inference.Checkpoint, defaults: dict, text_states) -> Job:
    """Check one request and load its inputs; every problem raises one ValueError naming it."""
    name = str(spec.get("name") or "job")
    s = check_settings({**defaults, **{k: v for k, v in spec.items() if v is not None}},
                       label=lambda key: f"job {name!r}: {key}")
    for key in ("video", "camera", "time"):
        if not s.get(key):
            raise ValueError(f"job {name!r}: missing {key!r}")
    frames, size, resize = inference.video_settings(ck.run, s.get("frames"), _size(s.get("size")))
    video = Path(s["video"])
    if not video.is_file():
        raise ValueError(f"job {name!r}: video {video} does not exist")
    try:
        source = inference.load_video(video, ck.run, frames, size)
    except Exception as e:  # noqa: BLE001 - PyAV raises many types for corrupt files
        raise ValueError(f"job {name!r}: cannot read video {video} as {frames} frames "
                         f"({type(e).__name__}: {e}); expected a readable mp4/webm/mov") from e
    try:
        ck.ae.latent_shape(frames, *source.shape[1:3])  # size divisible by the autoencoder
    except ValueError as e:
        raise ValueError(f"job {name!r}: --size / size: {e}") from None
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
                                      "steps", "cfg", "shift", "seed", "solver", "cache", "cache_threshold",
                                      "segments", "preset", "fps")}
    settings.update(frames=frames, size=list(source.shape[1:3]), resize=resize, numerics=ck.numerics,
                    vae_tiling=ck.ae.tiling, checkpoint=str(ck.path), model_set=ck.model_set)
    settings["prediction"] = ck.run.get("sample", {}).get("prediction", "velocity")
    settings["time_schedule"] = [int(v) for v in times]
    try:
        context = text_states(s)
    except ValueError as e:  # a caption without --text-encoder, a bad embedding file
        raise ValueError(f"job {name!r}: {e}") from None
    return Job(name, source, tgt, src, np.asarray(times), np.arange(frames), context, int(s["seed"]), settings)


def _text_states_fn(ck: inference.Checkpoint, encoder):
    """job spec -> [S, E] states (the caption through umT5, a .npy, or the trained null text).
    ``encoder``: a zero-argument function returning the caption encoder (loaded on first use)."""
    e_dim = ck.model.cfg.text_dim
    cache: dict[str, np.ndarray] = {}

    def states(spec: dict) -> np.ndarray:
        if spec.get("text_embedding"):
            return inference.load_text_embedding(spec["text_embedding"], e_dim)
        caption = spec.get("caption")
        if caption is None:
            return np.asarray(inference.text_context(inference.TextConfig(**ck.run.get("text", {})), 1, e_dim))[0]
        if caption not in cache:
            cache[caption] = encoder()(caption)
        return cache[caption]

    return states


# ---------------------------------------------------------------- running


def run_jobs(ck: inference.Checkpoint, jobs: list[Job], *, steps: int, shift: float, cfg_scale: float, negative=None,
             segments: int = 1, batch_size: int = 8, mesh=None, solver: str = "euler", cache: str = "none",
             cache_threshold: float = DEFAULT_CACHE_THRESHOLD) -> list[np.ndarray]:
    """Generate every job (batched by equal shapes; the batch sharded over ``mesh``'s data
    axes when given). ``negative``: [S, E] unconditional states for CFG (None = no CFG);
    ``cache``/``cache_threshold``: the denoise loop's step and CFG cache (diffusion/sampler.py).
    Returns per job the output frames [segments * T, H, W, 3] uint8."""
    guided = negative is not None and cfg_scale != 1.0
    gen = inference.make_generator(ck.model, ck.ae, steps=steps, shift=shift, cfg_scale=cfg_scale if guided else 1.0,
                                   prediction=ck.run.get("sample", {}).get("prediction", "velocity"), solver=solver,
                                   cache=cache, cache_threshold=cache_threshold)
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
        fpl = ck.ae.time_factor
        rule = ck.model.cfg.source_camera_rule
        # a first_camera model compares target and source poses: after the first segment (whose target
        # starts at the source's camera, the published assumption) the target is relative to the source's
        # first pose, where the previous segment left it
        ref = [None if seg == 0 or rule == "published" or s is None else s[0] for s in src_c2w]
        cond = {"tgt_cam": np.stack([cam_lib.target_condition(c, reference=r, frames_per_latent=fpl)
                                     for c, r in zip(tgt_c2w, ref)]),
                "src_cam": np.stack([cam_lib.source_condition(c, t, frames_per_latent=fpl, rule=rule)
                                     for c in src_c2w]),
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


def write_outputs(out: Path, job: Job, frames: np.ndarray, fps: float = 8.0, crf: int = 18):
    from stp_jax.data.video_io import contact_sheet, write_video

    out.mkdir(parents=True, exist_ok=True)
    write_video(out / "video.mp4", frames, fps=fps, crf=crf)
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
        if not isinstance(d["name"], str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", d["name"]):
            raise ValueError(f"jobs file {p}, line {n}: job name {d['name']!r} must be a plain name (letters, "
                             "digits, '.', '_', '-'), not a path: it names the job's output folder")
        specs.append(d)
    if not specs:
        raise ValueError(f"jobs file {p} holds no jobs")
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"jobs file {p}: job names must be unique")
    return specs


def sample(out, *, checkpoint, video=None, camera=None, source_camera=None, time=None, jobs=None, caption=None,
           text_embedding=None, negative_embedding=None, text_encoder=None, negative=None, vae=None, steps=None,
           cfg=None, shift=None, seed=None, solver=None, frames=None, size=None, segments: int = 1, batch: int = 8,
           numerics=None, preset=None, fps=None, vae_tiling=None, cache=None, cache_threshold=None, model_set=None,
           overwrite: bool = False) -> tuple[Path, int]:
    """Re-render one video (``video``, ``camera``, ``time``) or a JSONL of ``jobs`` (``stp-sample``).
    Unset options take the checkpoint's run.json defaults (``preset`` applies one of its named
    presets, e.g. ``demo``); ``model_set``: KEY=VALUE strings for the model's runtime fields
    (inference.model_overrides). Every input is checked first; outputs go to ``OUT.partial``, renamed
    to ``out`` at the end. Returns (out, number of jobs)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; choose another --out or pass --overwrite")
    if bool(jobs) == bool(video):
        raise ValueError("give either --video (with --camera and --time) or --jobs FILE.jsonl")
    flags = check_settings({"steps": steps, "shift": shift, "cfg": cfg, "seed": seed, "frames": frames, "size": size,
                            "segments": segments, "batch": batch, "fps": fps, "cache": cache,
                            "cache_threshold": cache_threshold})
    steps, shift, frames = flags["steps"], flags["shift"], flags["frames"]
    overrides = inference.model_overrides(model_set)
    specs = _read_jobs(jobs) if jobs else [
        {"name": "job", "video": video, "camera": camera, "time": time, "source_camera": source_camera,
         "caption": caption, "text_embedding": text_embedding}]
    if out.exists():  # --overwrite must never delete what this run reads
        inputs = [checkpoint, vae, text_encoder, jobs, negative_embedding] + [
            sp.get(k) for sp in specs for k in ("video", "source_camera", "camera", "text_embedding")]
        for i in inputs:
            if i and Path(str(i).split(":")[0]).exists() and inside(i, out):
                raise ValueError(f"--out {out} holds the input {i}; --overwrite would delete it. Choose another --out")
    check_can_create(out)  # a blocked or read-only --out fails now, not after generating everything
    ck = inference.load_checkpoint(checkpoint, vae=vae, numerics=numerics, tiling=vae_tiling,
                                   model_set=overrides)
    run_s = inference.sampling_defaults(ck.run, preset)
    defaults = {"steps": run_s.get("steps", 50) if steps is None else steps,
                "shift": run_s.get("shift", 5.0) if shift is None else shift,
                "cfg": run_s.get("cfg_scale", 5.0) if cfg is None else cfg,
                "seed": run_s.get("seed", 0) if seed is None else seed, "solver": solver or run_s.get("solver", "euler"),
                "cache": cache or run_s.get("cache", "none"),
                "cache_threshold": run_s.get("cache_threshold", DEFAULT_CACHE_THRESHOLD) if cache_threshold is None
                else cache_threshold,
                "size": size, "frames": frames, "segments": segments, "preset": preset,
                "fps": float(run_s.get("fps", 8.0) if fps is None else fps), "crf": int(run_s.get("crf", 18))}
    encoder_cache = []

    def encoder():
        if not text_encoder:
            raise ValueError("--caption needs --text-encoder (a converted umT5 folder with its tokenizer) "
                             "or pass --text-embedding FILE.npy")
        if not encoder_cache:
            encoder_cache.append(inference.load_text_encoder(text_encoder, ck.numerics))
        return encoder_cache[0]

    states = _text_states_fn(ck, encoder)
    job_list = [make_job(spec, ck, defaults, states) for spec in specs]
    for key in ("steps", "shift", "cfg", "frames", "solver", "cache", "cache_threshold"):
        if len({j.settings[key] for j in job_list}) > 1:
            raise ValueError(f"jobs differ in {key!r}; run them in separate calls")
    js = job_list[0].settings
    neg, neg_name, off = inference.guidance(float(js["cfg"]), negative_embedding=negative_embedding,
                                            encoder=encoder if text_encoder else None, negative=negative,
                                            text_embeddings=any(j.settings["text_embedding"] for j in job_list),
                                            text_dim=ck.model.cfg.text_dim)
    if off:
        print(f"stp-sample: note: classifier-free guidance is off: {off}", file=sys.stderr)
        if "cfg" in js["cache"]:
            print(f"stp-sample: note: --cache {js['cache']}: the CFG cache has no guidance to cache", file=sys.stderr)
    for j in job_list:
        j.settings["cfg_applied"] = float(js["cfg"]) if neg is not None else None
        j.settings["negative"] = neg_name
        j.settings["cfg_off_reason"] = off
    mesh = None
    if jax.device_count() > 1:
        from stp_jax.parallel.mesh import make_mesh

        mesh = make_mesh({"data": -1})
    outputs = run_jobs(ck, job_list, steps=int(js["steps"]), shift=float(js["shift"]), cfg_scale=float(js["cfg"]),
                       negative=neg, segments=segments, batch_size=batch, mesh=mesh, solver=js["solver"],
                       cache=js["cache"], cache_threshold=float(js["cache_threshold"]))
    with atomic_output(out, folder=True) as tmp:
        for job, frames_out in zip(job_list, outputs):
            write_outputs(tmp / job.name if len(job_list) > 1 else tmp, job, frames_out, fps=float(js["fps"]),
                          crf=int(defaults["crf"]))
    return out, len(job_list)
