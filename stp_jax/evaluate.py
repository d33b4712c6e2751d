"""Evaluation on held-out procedural Cam×Time scenes, where every (camera, time) cell of
the ground truth is exact; ``stp-eval``.

Cases (``--cases``, comma-separated):
  <time preset>          retiming at a fixed camera (the paper's protocol): the target
                         camera is the source's first pose, the animation time follows the
                         preset (``reverse``, ``freeze_mid``, ``slowmo_first_half``,
                         ``zigzag`` = 0→mid→0, ``forward``, or any stp_jax.controls.timing name).
  moving:<time preset>   retiming along the source's own moving camera (the released
                         benchmark's protocol, docs/REFERENCE.md §6.4): frame j keeps the source's
                         camera j, only time changes. ``moving:freeze_mid`` is an orbit at
                         frozen time.
  still:<time preset>    pure retiming: the source is filmed from one still camera (the
                         path's first) and the target keeps it, so the truth is the source
                         reordered by the schedule (``preshuffled`` is exact). The simplest
                         thing a model must learn: copying source frames by their time.
  cam:reverse_path       the source's camera path backwards, normal time.
  cam:last_view          the source's last camera held, normal time.

Every output is scored per frame against the truth (PSNR, SSIM, LPIPS; stp_jax.metrics)
and for control accuracy against the scene's whole grid: the observed time (camera) of a
frame is the grid time (camera) whose frame is nearest to it at the requested camera
(time); errors are mean |observed − requested| in frames (camera indices) and the share
within ±1. Beside the model, in every case: the truth (errors 0 by construction) and the
trivial baselines ``source`` (the input as is), ``preshuffled`` (source frames reordered by
the schedule: right time, the source's camera at that time), ``camera_matched`` (the source
frame that shows the requested camera: right camera, wrong time), ``first_frame`` (the
source's first frame repeated: the fixed camera at time 0) and ``temporal_mean``. The
model *beats* a case when it is better than every baseline on PSNR, SSIM and LPIPS.

Every metric is first a mean over each scene's frames; the table reports its mean over the scenes
± the standard error over the scenes, and the model's *margin* over the best baseline of each metric
paired per scene (model − baseline, signed so that positive is better, ± its standard error): the
scenes' difficulty, which moves the model and the baselines together, drops out of a paired
difference. The model beats a case *clearly* when each of its PSNR, SSIM and LPIPS margins is above
twice its standard error. Eight scenes leave a time error's standard error near a frame (a frozen
time's output is one picture, nearest one grid time or another), so claims want 32 (docs/LEARNING.md §30).

Two models on the same scenes (``stp-eval --compare EVAL_A EVAL_B``; compare): the per-scene scores
(SCENES_FILE) of B minus A's, paired per scene, ± the standard error of the difference. The scenes' difficulty
drops out, and with one sampler seed the two share the noise draws, so their outputs move together; a second
training seed of the same recipe says how much a change of seed alone moves them (docs/LEARNING.md §31).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from stp_jax import inference, metrics
from stp_jax.controls import camera as cam_lib
from stp_jax.controls import timing
from stp_jax.data import camxtime as cx
from stp_jax.data import pipeline as pl

RETIMING = ("reverse", "freeze_mid", "slowmo_first_half", "zigzag", "forward")
CAMERA_CASES = ("cam:reverse_path", "cam:last_view")
DEFAULT_CASES = (RETIMING + tuple(f"still:{c}" for c in RETIMING[:2]) + tuple(f"moving:{c}" for c in RETIMING[:4])
                 + CAMERA_CASES)
BASELINES = ("source", "preshuffled", "camera_matched", "first_frame", "temporal_mean")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The periodic evaluation during training (a config's ``eval`` section)."""
    num_scenes: int = 4  # held-out scenes
    cases: tuple[str, ...] = ("reverse", "freeze_mid", "still:reverse", "moving:reverse")
    lpips: bool = False  # LPIPS too (AlexNet features: the slowest metric)

    def __post_init__(self):
        object.__setattr__(self, "cases", tuple(self.cases))
        if self.num_scenes < 1:
            raise ValueError(f"eval.num_scenes must be >= 1, got {self.num_scenes}")
QUALITY = ("psnr", "ssim", "lpips")  # higher, higher, lower is better
CONTROL = ("time_err", "time_within1", "cam_err", "cam_within1", "own_truth")
LOWER_IS_BETTER = ("lpips", "time_err", "cam_err")
MARGIN_METRICS = ("psnr", "ssim", "lpips", "time_err", "cam_err")  # summarise's paired margins over the best baseline
CLEAR_SE = 2.0  # a paired difference is clear beyond this many standard errors (beats_clearly, compare_table)


# ---------------------------------------------------------------- cases


def case_cells(case: str, num_frames: int, num_cameras: int) -> tuple[np.ndarray, np.ndarray]:
    """(target camera indices [T], target times [T]) of one case (see the module doc)."""
    t = num_frames
    src_c, _ = cx.source_indices(t, num_cameras)
    if case.startswith("cam:"):
        if case == "cam:reverse_path":
            return src_c[::-1].copy(), np.arange(t)
        if case == "cam:last_view":
            return np.full(t, num_cameras - 1), np.arange(t)
        raise ValueError(f"evaluation case {case!r} is unknown; camera cases: {', '.join(CAMERA_CASES)}")
    protocol, _, name = case.rpartition(":")
    if protocol not in ("", "fixed", "moving", "still"):
        raise ValueError(f"evaluation case {case!r}: unknown protocol {protocol!r}; expected a time preset, "
                         f"moving:<preset>, still:<preset> or one of {', '.join(CAMERA_CASES)}")
    if name == "zigzag":  # the paper's zigzag: 0 -> mid -> 0
        name = f"zigzag@{(t - 1) // 2}"
    try:
        times = timing.preset(name, t)
    except timing.ScheduleError as e:
        raise ValueError(f"evaluation case {case!r}: {e}") from e
    cams = src_c.copy() if protocol == "moving" else np.zeros(t, np.int64)
    return cams, times


def source_cameras(case: str, num_frames: int, num_cameras: int) -> np.ndarray:
    """The camera index of each source frame [T] in one case: the grid diagonal (a moving
    camera), or camera 0 throughout for ``still:`` cases."""
    if case.startswith("still:"):
        return np.zeros(num_frames, np.int64)
    return cx.source_indices(num_frames, num_cameras)[0]


def check_cases(cases, num_frames: int, num_cameras: int) -> tuple[str, ...]:
    for c in cases:
        case_cells(c, num_frames, num_cameras)
    return tuple(cases)


def held_out_scenes(num_scenes: int, num_frames: int, num_cameras: int, height: int, width: int):
    """Held-out scenes: (seeds, camera paths [N, C, 4, 4], grids uint8 [N, C, T, H, W, 3],
    source clips uint8 [N, T, H, W, 3] = the grid diagonal)."""
    seeds = [pl.TEST_SEED_OFFSET + i for i in range(num_scenes)]
    paths = np.stack([cx.camera_path(s, num_cameras) for s in seeds])
    grids = np.stack([np.asarray(cx.render_grid_jit(cx.make_scene(s), p, num_frames, height, width))
                      for s, p in zip(seeds, paths)])
    src_c, src_t = cx.source_indices(num_frames, num_cameras)
    return seeds, paths, grids, grids[:, src_c, src_t]


def camera_matched_frames(src_cams, cams) -> np.ndarray:
    """For each target camera index (cams [T]), the source frame filmed from the nearest camera
    (src_cams [T]: each source frame's camera index) [T]."""
    return np.argmin(np.abs(np.asarray(src_cams)[None, :] - np.asarray(cams)[:, None]), axis=1)


def baselines(sources, cams, times, num_cameras: int, src_cams=None) -> dict[str, np.ndarray]:
    """The trivial answers to one case, each [N, T, H, W, 3] uint8 (see the module doc);
    ``src_cams`` [T]: the camera of each source frame (default: the grid diagonal)."""
    t = sources.shape[1]
    src_c = cx.source_indices(t, num_cameras)[0] if src_cams is None else np.asarray(src_cams)
    shows_cam = camera_matched_frames(src_c, cams)
    mean = np.round(sources.astype(np.float64).mean(axis=1, keepdims=True)).astype(np.uint8)
    return {"source": sources, "preshuffled": sources[:, times], "camera_matched": sources[:, shows_cam],
            "first_frame": np.repeat(sources[:, :1], t, axis=1), "temporal_mean": np.repeat(mean, t, axis=1)}


def scene_scores(clips, truth, grids, cams, times, with_lpips: bool = True) -> dict[str, np.ndarray]:
    """Quality and control metrics of clips [N, T, H, W, 3] for one case, per clip (scene): {metric: [N]}, each the
    mean over the clip's frames. LPIPS of a clip equal to the truth is 0 without running the network."""
    out = {"psnr": metrics.psnr(clips, truth).mean(-1), "ssim": metrics.ssim(clips, truth).mean(-1)}
    if with_lpips:
        out["lpips"] = (np.zeros(len(clips)) if np.array_equal(clips, truth)
                        else metrics.lpips(truth, clips).mean(-1))
    obs_t = np.stack([metrics.observed_times(c, g, cams) for c, g in zip(clips, grids)])  # [N, T]
    obs_c = np.stack([metrics.observed_cameras(c, g, times) for c, g in zip(clips, grids)])
    out["time_err"], out["time_within1"] = metrics.index_errors(obs_t, np.broadcast_to(times, obs_t.shape), axis=-1)
    out["cam_err"], out["cam_within1"] = metrics.index_errors(obs_c, np.broadcast_to(cams, obs_c.shape), axis=-1)
    return out


def score(clips, truth, grids, cams, times, with_lpips: bool = True) -> dict[str, float]:
    """Quality and control metrics of clips [N, T, H, W, 3] for one case, averaged per frame,
    then over clips."""
    return {k: float(v.mean()) for k, v in scene_scores(clips, truth, grids, cams, times, with_lpips).items()}


def standard_error(values) -> float:
    """The standard error of the mean of per-scene values [N] (sample standard deviation / sqrt(N)); N >= 2."""
    v = np.asarray(values, np.float64)
    return float(v.std(ddof=1) / np.sqrt(len(v)))


def gain(new, ref, metric: str) -> np.ndarray:
    """Per-scene values of ``new`` minus ``ref`` [N], signed so that positive means ``new`` is better on ``metric``."""
    d = np.asarray(new, np.float64) - np.asarray(ref, np.float64)
    return -d if metric in LOWER_IS_BETTER else d


def is_clear(diff: float, se: float) -> bool:
    """A paired difference beyond CLEAR_SE standard errors (either way; never with one scene's nan)."""
    return bool(np.isfinite(se) and abs(diff) > CLEAR_SE * se)


def summarise(per_scene: dict) -> dict:
    """{case: {row: {metric: [N]}}} -> {case: {row: {metric: mean, metric_se: its standard error (N >= 2)}}}, and
    in the model's row, against the best baseline of each metric (by mean; MARGIN_METRICS), the paired per-scene
    margin ``metric_margin`` (positive: the model is better) and its standard error ``metric_margin_se``: the
    scenes' difficulty, shared by the model and the baseline, drops out of a paired difference."""
    results = {}
    for case, rows in per_scene.items():
        results[case] = {row: {k: float(np.mean(v)) for k, v in m.items()} for row, m in rows.items()}
        n = len(next(iter(rows["model"].values())))
        if n < 2:
            continue
        for row, m in rows.items():
            results[case][row].update({f"{k}_se": standard_error(v) for k, v in m.items()})
        for metric in MARGIN_METRICS:
            if metric not in rows["model"]:
                continue
            b, _ = best_baseline(results, case, metric)
            d = gain(rows["model"][metric], rows[b][metric], metric)
            results[case]["model"].update({f"{metric}_margin": float(d.mean()), f"{metric}_margin_se": standard_error(d)})
    return results


def retiming_eval(model, params, ae, *, data_cfg, num_scenes: int = 32, cases=DEFAULT_CASES,
                  steps: int = 20, shift: float = 3.0, prediction: str = "velocity",
                  text: inference.TextConfig | None = None,
                  seed: int = 0, out_dir: Path | None = None, batch_size: int = 8, with_lpips: bool = True) -> dict:
    """{case: {row: {metric: value}}} over ``num_scenes`` held-out scenes (rows: the model, the truth and BASELINES;
    metrics: QUALITY + CONTROL, with 2 scenes or more each's ``_se`` and the model's ``_margin`` / ``_margin_se``:
    summarise); per case a video and a contact sheet (source | truth | model) of the first scene under ``out_dir``,
    with eval.json."""
    t, n_cam, h, w = data_cfg.num_frames, data_cfg.num_cameras, data_cfg.height, data_cfg.width
    cases = check_cases(cases, t, n_cam)
    scenes = held_out_scenes(num_scenes, t, n_cam, h, w)
    grids = scenes[2]
    gen = inference.make_generator(model, ae, steps=steps, shift=shift, prediction=prediction)
    per_scene, clips = {}, {}
    for case in cases:
        cams, times, truth, sources, output = case_outputs(gen, model, params, ae, case, scenes, text=text, seed=seed,
                                                           batch_size=batch_size)
        base = baselines(sources, cams, times, n_cam, source_cameras(case, t, n_cam))
        rows = {"model": output, "truth": truth, **base}  # every row
        per_scene[case] = {}
        for name, clip in rows.items():  # a row equal to an earlier one (the first frame is often the camera-matched
            same = next((r for r in per_scene[case] if np.array_equal(clip, rows[r])), None)  # one) scores the same
            per_scene[case][name] = (dict(per_scene[case][same]) if same is not None
                                     else scene_scores(clip, truth, grids, cams, times, with_lpips))
        clips[case] = (cams, times, rows)
        if out_dir is not None:
            _write_case(Path(out_dir), case, sources[0], truth[0], rows["model"][0])
    _nearest_own_truth(per_scene, clips)
    results = summarise(per_scene)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "eval.json").write_text(json.dumps(results, indent=2))
        (Path(out_dir) / SCENES_FILE).write_text(json.dumps(
            {"scenes": [int(s) for s in scenes[0]], "seed": seed,
             "data": {"num_frames": t, "num_cameras": n_cam, "height": h, "width": w},
             "sampler": {"steps": steps, "shift": shift, "prediction": prediction},
             "per_scene": {c: {r: {k: np.asarray(v, np.float64).tolist() for k, v in m.items()} for r, m in rows.items()}
                           for c, rows in per_scene.items()}}))
    return results


def case_outputs(gen, model, params, ae, case: str, scenes, *, text: inference.TextConfig | None = None, seed: int = 0,
                 batch_size: int = 8):
    """One case on held-out ``scenes`` (held_out_scenes' tuple) with the generator ``gen``
    (inference.make_generator): (cams [T], times [T], truth, sources, model outputs), the clips
    uint8 [N, T, H, W, 3]."""
    _, paths, grids, _ = scenes
    num_scenes, n_cam, t = grids.shape[:3]
    cams, times = case_cells(case, t, n_cam)
    src_c, src_t = source_cameras(case, t, n_cam), np.arange(t)
    truth, sources = grids[:, cams, times], grids[:, src_c, src_t]  # [N, T, H, W, 3]
    lat = ae.latent_shape(t, *grids.shape[3:5])
    outs = []
    for i0 in range(0, num_scenes, batch_size):
        idx = list(range(i0, min(i0 + batch_size, num_scenes)))
        b = len(idx)
        fpl = ae.time_factor
        cond = {"tgt_cam": np.stack([cam_lib.target_condition(paths[i][cams], reference=paths[i][src_c[0]],
                                                              frames_per_latent=fpl) for i in idx]),
                "src_cam": np.stack([cam_lib.source_condition(paths[i][src_c], t, frames_per_latent=fpl,
                                                              rule=model.cfg.source_camera_rule)
                                     for i in idx]),
                "tgt_time": np.tile(times, (b, 1)), "src_time": np.tile(src_t, (b, 1))}
        ctx = inference.text_context(text or inference.TextConfig(), b, model.cfg.text_dim)
        noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), i0), (b,) + lat)
        outs.append(np.asarray(gen(params, sources[idx], cond, ctx, None, noise)))
    return cams, times, truth, sources, np.concatenate(outs)


def _nearest_own_truth(per_scene: dict, clips: dict) -> None:
    """Add ``own_truth`` per scene: whether the output for a case is nearer (MSE) to that
    case's truth than to the truth of every other case with the same cameras and other
    times (its mean: the share of scenes). A model that ignores the schedule, or a blur of all times,
    scores ~1/(cases)."""
    for case, (cams, times, rows) in clips.items():
        rivals = [c for c, (cm, tm, _) in clips.items()
                  if c != case and np.array_equal(cm, cams) and not np.array_equal(tm, times)]
        for name, clip in rows.items():
            if not rivals:
                continue
            own = _mse(clip, rows["truth"])
            other = np.min(np.stack([_mse(clip, clips[c][2]["truth"]) for c in rivals]), axis=0)
            per_scene[case][name]["own_truth"] = (own < other).astype(np.float64)


def _mse(a, b) -> np.ndarray:
    """Per-clip mean squared error of uint8 clips [B, T, H, W, 3] -> [B]."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.mean(d * d, axis=(1, 2, 3, 4))


def _write_case(out_dir: Path, case: str, source, truth, output):
    from stp_jax.data.video_io import contact_sheet, write_video

    name = case.replace(":", "_").replace("@", "_")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_video(out_dir / f"{name}.mp4", np.concatenate([source, truth, output], axis=2), fps=8)
    contact_sheet([source, truth, output], out_dir / f"{name}.png", every=max(1, len(source) // 8),
                  labels=["source", "truth", "model"])


def flat_scalars(results: dict) -> dict:
    return {f"eval/{case}/{row}_{k}": v for case, rows in results.items() for row, m in rows.items()
            for k, v in m.items()}


def _better(metric: str, a: float, b: float) -> bool:
    return a < b if metric in LOWER_IS_BETTER else a > b


def beats_baselines(results: dict, case: str, metrics_=("psnr", "ssim", "lpips")) -> bool:
    """The model is better than every baseline on each of ``metrics_`` (those computed)."""
    r = results[case]
    return all(_better(m, r["model"][m], r[b][m]) for m in metrics_ if m in r["model"] for b in BASELINES)


def beats_clearly(results: dict, case: str, metrics_=("psnr", "ssim", "lpips")) -> bool | None:
    """The model's paired margin over the best baseline (by mean) of each of ``metrics_`` (those computed) is more than
    twice its standard error (summarise); None without margins (fewer than 2 scenes). Two standard errors are the
    95% interval's half-width from ~30 scenes; with a handful (training's periodic evaluation) the cut is loose."""
    m = results[case]["model"]
    if not any(f"{k}_margin" in m for k in metrics_):
        return None
    return all(m[f"{k}_margin"] > 0 and is_clear(m[f"{k}_margin"], m[f"{k}_margin_se"]) for k in metrics_ if k in m)


def best_baseline(results: dict, case: str, metric: str) -> tuple[str, float]:
    r = results[case]
    name = max(BASELINES, key=lambda b: -r[b][metric] if metric in LOWER_IS_BETTER else r[b][metric])
    return name, r[name][metric]


MARGIN_NOTE = ("In brackets: the model's margin over that baseline, paired per scene (positive: the model is better), "
               "± its standard error over the scenes; *clearly*: a margin over the best baseline above twice its "
               "standard error on {metrics} (a loose cut below ~10 scenes).")


def markdown_table(results: dict) -> str:
    """One row per case: the model beside the best baseline of each metric (named), the
    time/camera errors of the model and of the best baseline, whether it beats all, and (with 2 scenes or more) its
    paired margin over each best baseline ± the standard error (MARGIN_NOTE)."""
    lpips_on = all("lpips" in r["model"] for r in results.values())
    cols = ["psnr", "ssim"] + (["lpips"] if lpips_on else []) + ["time_err", "cam_err"]
    head = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "time_err": "time err", "cam_err": "cam err"}
    margins = any(beats_clearly(results, case) is not None for case in results)
    lines = ["| case | " + " | ".join(f"{head[c]} model | best baseline" for c in cols) + " | beats all |"
             + (" clearly |" if margins else ""),
             "|---|" + "---|---|" * len(cols) + "---|" + ("---|" if margins else "")]
    fmt = {"psnr": "{:.2f}", "ssim": "{:.3f}", "lpips": "{:.3f}", "time_err": "{:.2f}", "cam_err": "{:.2f}"}
    signed = {k: v.replace("{:", "{:+") for k, v in fmt.items()}
    for case in results:
        cells, m = [], results[case]["model"]
        for c in cols:
            b, v = best_baseline(results, case, c)
            margin = (f" [{signed[c].format(m[c + '_margin'])} ± {fmt[c].format(m[c + '_margin_se'])}]"
                      if c + "_margin" in m else "")
            cells += [fmt[c].format(m[c]) + margin, f"{fmt[c].format(v)} ({b})"]
        clearly = beats_clearly(results, case)
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {'yes' if beats_baselines(results, case) else 'no'} |"
                     + ("" if not margins else f" {'-' if clearly is None else 'yes' if clearly else 'no'} |"))
    judged = [head[k] for k in QUALITY if k in cols]
    note = MARGIN_NOTE.format(metrics=", ".join(judged[:-1]) + " and " + judged[-1])
    return "\n".join(([note, ""] if margins else []) + lines)


def full_table(results: dict) -> str:
    """Every row (model, truth, each baseline) of every case and every metric (± its standard error over the scenes,
    with 2 scenes or more)."""
    keys = [k for k in QUALITY + CONTROL if any(k in r["model"] for r in results.values())]
    lines = ["| case | row | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    cell = lambda m, k: "-" if k not in m else f"{m[k]:.3f}" + (f" ± {m[k + '_se']:.3f}" if k + "_se" in m else "")  # noqa: E731
    for case, rows in results.items():
        for row, m in rows.items():
            lines.append(f"| {case} | {row} | " + " | ".join(cell(m, k) for k in keys) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- two models on the same scenes

SCENES_FILE = "scenes.json"  # retiming_eval's per-scene scores: {"scenes": ids, "seed", "data", "sampler", "per_scene"}
COMPARED = ("psnr", "ssim", "lpips", "time_err", "cam_err", "own_truth")  # compare's metrics (those both have)


def load_scenes(path) -> dict:
    """An evaluation's per-scene scores (SCENES_FILE in the folder ``path``, or that file), checked: unique integer
    scene ids, and per case a ``model`` row whose every metric is one number per scene."""
    p = Path(path)
    f = p / SCENES_FILE if p.is_dir() else p
    if not f.is_file():
        raise ValueError(f"{path}: no {SCENES_FILE}; expected a folder written by stp-eval (it writes the per-scene "
                         f"scores there; evaluations from before it do not have them: run stp-eval again)")
    shape = ("{'scenes': [int, ...], 'seed': int, 'per_scene': {case: {'model': {metric: [one number per scene]}, "
             "...}}} as stp-eval writes")
    try:
        d = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f}: not JSON ({e}); expected {shape}") from None
    ids = d.get("scenes") if isinstance(d, dict) else None
    if (not isinstance(ids, list) or not ids or not all(type(i) is int for i in ids) or len(set(ids)) != len(ids)
            or not isinstance(d.get("per_scene"), dict) or not d["per_scene"]):
        raise ValueError(f"{f}: expected {shape}, with unique scene ids")
    for case, rows in d["per_scene"].items():
        if not isinstance(rows, dict) or not isinstance(rows.get("model"), dict):
            raise ValueError(f"{f}: case {case!r} has no 'model' row; expected {shape}")
        for k, v in rows["model"].items():
            if (not isinstance(v, list) or len(v) != len(ids)
                    or not all(type(x) in (int, float) for x in v)):
                raise ValueError(f"{f}: case {case!r}, metric {k!r}: expected {len(ids)} numbers (one per scene), "
                                 f"got {str(v)[:60]}")
    return d


def compare_notes(a: dict, b: dict) -> list[str]:
    """What compare(a, b) pairs and what it leaves out, as sentences; ValueError where the two were not scored on
    the same kind of clip (the scene ids alone would pair clips of other shapes)."""
    if a.get("data") and b.get("data") and a["data"] != b["data"]:
        raise ValueError(f"the two evaluations scored other clips ({a['data']} and {b['data']}): scene ids "
                         "pair only clips of the same frames, cameras and size")
    recorded = all(d.get("data") and d.get("sampler") for d in (a, b))
    notes = [] if recorded else ["one evaluation does not record its clips' shape and sampler (an earlier "
                                 "stp-eval): make sure both scored clips of the same frames, cameras and size."]
    if a.get("seed") != b.get("seed"):
        notes.append(f"sampled with seeds {a.get('seed')} and {b.get('seed')}: paired by scene, not by noise.")
    elif recorded and a["sampler"] != b["sampler"]:
        notes.append(f"sampled with other settings ({a['sampler']}; {b['sampler']}).")
    for what, xa, xb in (("scenes", a["scenes"], b["scenes"]), ("cases", list(a["per_scene"]), list(b["per_scene"]))):
        only = [x for x in xa if x not in xb], [x for x in xb if x not in xa]
        if only[0] or only[1]:
            notes.append(f"left out, {what} only A has: {len(only[0])}, only B has: {len(only[1])}.")
    for case in (c for c in a["per_scene"] if c in b["per_scene"]):
        ka, kb = set(a["per_scene"][case]["model"]), set(b["per_scene"][case]["model"])
        gone = sorted(k for k in COMPARED if (k in ka) != (k in kb))
        if gone:
            notes.append(f"{case}: {', '.join(gone)} left out (scored in one evaluation only).")
    return notes


def compare(a: dict, b: dict, row: str = "model") -> dict:
    """Model B against model A (load_scenes' dicts), paired per scene on the scenes and cases both scored:
    {case: {metric: {"diff": mean of B - A signed so that positive means B is better, "se": its standard error
    over the scenes, "a": A's mean, "b": B's mean, "n": scenes}}} for COMPARED. Both models face the same scenes, whose
    difficulty drops out (and, with the same sampler seed, the same noise draws, so their outputs move together); the
    training seed's own spread does not, which a difference between two seeds of one recipe measures."""
    ids = [s for s in a["scenes"] if s in set(b["scenes"])]
    cases = [c for c in a["per_scene"] if c in b["per_scene"]]
    if not ids or not cases:
        raise ValueError(f"the two evaluations share no {'scene' if not ids else 'case'}: scenes {a['scenes'][:4]}... "
                         f"and {b['scenes'][:4]}..., cases {sorted(a['per_scene'])} and {sorted(b['per_scene'])}")
    ia = [a["scenes"].index(s) for s in ids]
    ib = [b["scenes"].index(s) for s in ids]
    out = {}
    for case in cases:
        ma, mb = a["per_scene"][case][row], b["per_scene"][case][row]
        m = {}
        for k in COMPARED:
            if k not in ma or k not in mb:
                continue
            va, vb = np.asarray(ma[k], np.float64)[ia], np.asarray(mb[k], np.float64)[ib]
            d = gain(vb, va, k)
            m[k] = {"diff": float(d.mean()), "se": standard_error(d) if len(d) > 1 else float("nan"),
                    "a": float(va.mean()), "b": float(vb.mean()), "n": len(d)}
        if m:
            out[case] = m
    if not out:
        raise ValueError(f"the two evaluations share no metric of {', '.join(COMPARED)} in any case")
    return out


def compare_table(cmp: dict, name_a: str = "A", name_b: str = "B", notes=()) -> str:
    """compare's result as markdown: per case and metric B's mean [B - A ± SE], bold where the difference is beyond
    twice its standard error, and a verdict on the quality metrics (better / worse: at least one beyond two standard
    errors in that direction and none the other way; mixed; level), after ``notes`` (compare_notes)."""
    fmt = {"psnr": ".2f", "ssim": ".3f", "lpips": ".3f", "time_err": ".2f", "cam_err": ".2f", "own_truth": ".2f"}
    keys = [k for k in COMPARED if any(k in m for m in cmp.values())]
    judged = [k.upper() for k in QUALITY if k in keys]
    n = next(iter(next(iter(cmp.values())).values()))["n"]
    lines = [f"B = {name_b} against A = {name_a} on the same {n} scene{'s' * (n != 1)}: B's mean [B − A paired per "
             f"scene, positive: B is better, ± its standard error]; bold: beyond twice the standard error. Verdict, "
             f"on {', '.join(judged)}: better (worse) when at least one is bold in B's favour (against B) and none "
             "the other way. Between two equally good models a bold entry comes by chance about once in twenty, "
             "a verdict other than level up to once in seven; and a paired difference leaves out the training "
             "seed's own spread: set a change beside the difference between two seeds of one recipe.",
             *[f"Note: {x}" for x in notes], "",
             "| case | " + " | ".join(keys) + " | verdict |", "|---|" + "---|" * (len(keys) + 1)]
    for case, m in cmp.items():
        cells = []
        for k in keys:
            if k not in m:
                cells.append("-")
                continue
            v = m[k]
            txt = f"[{v['diff']:+{fmt[k]}} ± {v['se']:{fmt[k]}}]"
            cells.append(f"{v['b']:{fmt[k]}} " + (f"**{txt}**" if is_clear(v["diff"], v["se"]) else txt))
        signs = {np.sign(m[k]["diff"]) for k in QUALITY if k in m and is_clear(m[k]["diff"], m[k]["se"])}
        verdict = "mixed" if len(signs) > 1 else "better" if signs == {1.0} else "worse" if signs == {-1.0} else "level"
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- a trained checkpoint


def run_data_config(ck: inference.Checkpoint) -> pl.DataConfig:
    """The clips (frames, cameras, size) a model folder was trained on, from its run.json."""
    d = ck.run.get("data")
    if d is None:
        raise ValueError(f"{ck.path}: no run.json with the training data shape; stp-eval scores models "
                         "trained by stp-train on procedural Cam×Time scenes")
    return pl.DataConfig(num_frames=d["num_frames"], num_cameras=d["num_cameras"], height=d["height"],
                         width=d["width"])


def run_sampling(ck: inference.Checkpoint, steps: int | None = None, shift: float | None = None) -> dict:
    """How stp-eval samples a model folder: run.json's sampler and text condition, ``steps`` and
    ``shift`` overriding (keyword arguments of retiming_eval: steps, shift, prediction, text)."""
    s = ck.run.get("sample", {})
    return dict(steps=steps or s.get("steps", 20), shift=shift or s.get("shift", 3.0),
                prediction=s.get("prediction", "velocity"),
                text=inference.TextConfig(**ck.run["text"]) if ck.run.get("text") else None)


def evaluate_checkpoint(checkpoint, out=None, *, scenes: int = 32, cases=DEFAULT_CASES, steps: int | None = None,
                        shift: float | None = None, seed: int = 0, lpips: bool = True,
                        model_set=None) -> tuple[dict, Path]:
    """Score a model trained by stp-train on procedural Cam×Time scenes (``stp-eval``); writes
    eval.md (the summary table and every row), eval.json, and per case a video and a contact
    sheet (source | truth | model) into ``out`` (default CHECKPOINT/eval); ``model_set``: KEY=VALUE strings for the
    model's runtime fields (inference.model_overrides). Returns (results, out)."""
    from stp_jax.config_utils import check_float, check_int
    from stp_jax.files import check_can_create

    scenes = check_int("--scenes", scenes)
    steps = None if steps is None else check_int("--steps", steps)
    shift = None if shift is None else check_float("--shift", shift, positive=True)
    seed = check_int("--seed", seed, minimum=0)
    if not cases:
        raise ValueError("--cases is empty; expected a comma list of cases, e.g. reverse,moving:freeze_mid")
    overrides = inference.model_overrides(model_set)
    if out is not None:
        check_can_create(out)
    ck = inference.load_checkpoint(checkpoint, model_set=overrides)
    data_cfg = run_data_config(ck)
    try:
        cases = check_cases(cases, data_cfg.num_frames, data_cfg.num_cameras)
    except ValueError as e:
        raise ValueError(f"--cases: {e}") from e
    out = Path(out) if out is not None else Path(ck.path) / "eval"
    res = retiming_eval(ck.model, ck.params, ck.ae, data_cfg=data_cfg, num_scenes=scenes, cases=cases,
                        **run_sampling(ck, steps, shift), seed=seed, with_lpips=lpips, out_dir=out)
    run_with = "".join(f"; {k}={v}" for k, v in ck.model_set.items())
    (out / "eval.md").write_text(f"Held-out procedural scenes: {scenes}; checkpoint {checkpoint}{run_with}\n\n"
                                 f"{markdown_table(res)}\n\nEvery row and metric:\n\n{full_table(res)}\n")
    return res, out
