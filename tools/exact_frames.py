"""Is a checkpoint's PSNR win more than the frames a baseline gets exactly right?

Per-frame PSNR (stp-eval's) caps an exact frame at 58.9 dB (metrics.MSE_FLOOR), and in most cases one or more
target cells are a source frame's own (its camera and its time): there the camera-matched frame is exact, and so is a
model whose composite returns that frame (models/layered.py). Per case this prints, for the model and for the best
baseline on each measure: per-frame PSNR as stp-eval reports it / the same without those own cells / the PSNR of
the clips' pooled squared error (docs/LEARNING.md §29).

    python tools/exact_frames.py runs/demo
    python tools/exact_frames.py runs/demo --cases reverse,moving:reverse --model-set composite_residual=false
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from stp_jax import evaluate, inference, metrics  # noqa: E402


def own_cells(case: str, num_frames: int, num_cameras: int) -> np.ndarray:
    """[T] bool: target frame i's requested (camera, time) cell is source frame times[i]'s own."""
    cams, times = evaluate.case_cells(case, num_frames, num_cameras)
    src_cams = evaluate.source_cameras(case, num_frames, num_cameras)
    return np.asarray(cams) == np.asarray(src_cams)[np.asarray(times)]


def measures(clip, truth, own) -> tuple[float, float, float]:
    """(per-frame PSNR, per-frame PSNR over the frames not in ``own`` [T], PSNR of the pooled squared error) of
    uint8 clips [N, T, H, W, 3] against the truth."""
    per_frame = metrics.psnr(clip, truth)  # [N, T]
    mse = np.mean((np.asarray(clip, np.float64) - np.asarray(truth, np.float64)) ** 2)
    return float(per_frame.mean()), float(per_frame[:, ~own].mean()), float(10 * np.log10(255.0 ** 2 / mse))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--scenes", type=int, default=32)
    ap.add_argument("--cases", default=",".join(c for c in evaluate.DEFAULT_CASES if not c.startswith("still:")))
    ap.add_argument("--model-set", action="append", default=[], help="KEY=VALUE, as stp-eval's")
    a = ap.parse_args(argv)
    ck = inference.load_checkpoint(a.checkpoint, model_set=inference.model_overrides(a.model_set))
    run = evaluate.run_data_config(ck)
    t, n_cam = run.num_frames, run.num_cameras
    scenes = evaluate.held_out_scenes(a.scenes, t, n_cam, run.height, run.width)
    s = evaluate.run_sampling(ck)
    gen = inference.make_generator(ck.model, ck.ae, steps=s["steps"], shift=s["shift"], prediction=s["prediction"])
    print("| case | own cells | model: per frame / without own cells / pooled | best baseline on each |")
    print("|---|---|---|---|")
    for case in evaluate.check_cases(a.cases.split(","), t, n_cam):
        cams, times, truth, sources, out = evaluate.case_outputs(gen, ck.model, ck.params, ck.ae, case, scenes,
                                                                 text=s["text"])
        own = own_cells(case, t, n_cam)
        base = {k: measures(v, truth, own) for k, v in
                evaluate.baselines(sources, cams, times, n_cam, evaluate.source_cameras(case, t, n_cam)).items()}
        m = measures(out, truth, own)
        best = [max(base, key=lambda k, i=i: base[k][i]) for i in range(3)]
        print(f"| {case} | {int(own.sum())} | " + " / ".join(f"{v:.2f}" for v in m) + " | "
              + " / ".join(f"{b} {base[b][i]:.2f}" for i, b in enumerate(best)) + " |")


if __name__ == "__main__":
    main()
