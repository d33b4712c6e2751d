"""Every console script: argument parsing and one library call each.

  stp-train       stp_jax.train.train_and_evaluate
  stp-sample      stp_jax.sample.sample
  stp-eval        stp_jax.evaluate.evaluate_checkpoint; stp_jax.benchmark.run_benchmark / score
  stp-precompute  stp_jax.precompute.precompute
  stp-aot         stp_jax.aot.aot_report
  stp-convert     stp_jax.convert.checkpoint.convert_checkpoint / export_checkpoint
  stp-render      stp_jax.data.camxtime.write_scene

Also ``python -m stp_jax.cli COMMAND ARGS...``. A user's mistake (bad argument, missing or
malformed file, impossible config) ends with one line ``stp-X: error: ...`` and exit code 2;
a run stopped by a signal exits 3.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable


class _UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors take the one error path (one line, exit code 2) of _run."""

    def error(self, message):
        raise _UsageError(message)


def _user_errors() -> tuple[type[BaseException], ...]:
    from stp_jax.checkpointing import CheckpointError
    from stp_jax.convert.core import ConversionError

    return ValueError, FileNotFoundError, FileExistsError, ConversionError, CheckpointError


def _run(prog: str, fn: Callable[[], int]) -> int:
    from stp_jax.parallel.host import reuse_host_memory

    reuse_host_memory()  # before JAX starts its backend: XLA:CPU's per-run buffers stay mapped (parallel/host.py)
    try:
        return fn()
    except _user_errors() as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions...: the system's words, named as such
        print(f"{prog}: error: I/O error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (which saves first): partial outputs are removed
        print(f"{prog}: interrupted", file=sys.stderr)
        return 3


MODEL_SET_HELP = ("run the model with another value of a field that does not change its weights (repeatable), e.g. "
                  "composite_mask_logit=-1 or attention=xla; recorded in the outputs' settings")


def _config_args(p: argparse.ArgumentParser):
    p.add_argument("--config", required=True, help="shipped config name or FILE.py, optionally :variant[,variant]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=3e-4 --set mesh.fsdp=8 (repeatable)")


# ---------------------------------------------------------------- stp-train


def train_main(argv=None) -> int:
    p = _Parser(prog="stp-train", description="Train SpaceTimePilot (resumes from WORKDIR).")
    _config_args(p)
    p.add_argument("--workdir", required=True)
    def go():
        args = p.parse_args(argv)
        from stp_jax import config as config_lib
        from stp_jax.parallel.distributed import maybe_initialize
        from stp_jax.train import NonFiniteError, train_and_evaluate

        maybe_initialize()  # before anything touches the backend (config validation asks for the process count)
        cfg = config_lib.load(args.config, args.set)
        try:
            summary = train_and_evaluate(cfg, args.workdir)
        except NonFiniteError as e:
            print(f"stp-train: error: {e}", file=sys.stderr)
            return 2
        return 0 if summary["stopped"] in ("done", "time limit") else 3

    return _run("stp-train", go)


# ---------------------------------------------------------------- stp-sample


def sample_main(argv=None) -> int:
    from stp_jax.diffusion.sampler import CACHES, DEFAULT_CACHE_THRESHOLD, SOLVERS
    from stp_jax.inference import VAE_TILINGS
    from stp_jax.models.dit import NUMERICS

    p = _Parser(prog="stp-sample", description="Re-render a video along a camera trajectory and an "
                "animation-time schedule.")
    p.add_argument("--checkpoint", required=True, help="training workdir (stp-train) or converted model folder")
    p.add_argument("--video", help="source video (mp4...)")
    p.add_argument("--camera", help="camera preset (cam01..cam10, orbit<deg>[_el<deg>], static), a trajectory file, "
                                    "or FILE.json:camNN (one camera of a ReCamMaster camera_extrinsics.json)")
    p.add_argument("--source-camera", help="the source's own camera poses (file); default: a static camera")
    p.add_argument("--time", help="time mode (forward, reverse, freeze_mid, bounce_late, slowmo_first_half, "
                                  "or the evaluation names normal, fixed_10, zigzag_0_10_0...; zigzag@N...), "
                                  "a comma list or a file")
    p.add_argument("--jobs", help="JSONL of jobs (keys as the flags: video, camera, time, caption, seed...)")
    p.add_argument("--out", required=True)
    p.add_argument("--caption")
    p.add_argument("--text-embedding", help=".npy [tokens, text_dim] text states")
    p.add_argument("--negative-embedding", help=".npy [tokens, text_dim] negative text states for CFG (with "
                                                "--text-embedding; else CFG needs --text-encoder)")
    p.add_argument("--text-encoder", help="converted umT5 folder with tokenizer files (for --caption)")
    p.add_argument("--negative", help="negative prompt for CFG (default: Wan's)")
    p.add_argument("--vae", help="converted Wan VAE folder (for 16-channel models)")
    p.add_argument("--preset", help="a sampling preset of the checkpoint's run.json (published checkpoints: demo = "
                                    "20 steps as the published demo script, eval = 50)")
    p.add_argument("--steps", type=int, help="default: run.json's (published: 50)")
    p.add_argument("--cfg", type=float, help="CFG scale (default: run.json's, else 5)")
    p.add_argument("--shift", type=float)
    p.add_argument("--seed", type=int, help="default: run.json's, else 0")
    p.add_argument("--solver", choices=SOLVERS, help="default: run.json's, else euler")
    p.add_argument("--cache", choices=CACHES,
                   help="reuse model outputs between steps: mag (the last velocity while its estimated change stays "
                        "under --cache-threshold), cfg (the guidance difference on every other step), mag+cfg; "
                        "default: run.json's, else none (docs/BENCHMARKS.md: the speed-up and its quality cost)")
    p.add_argument("--cache-threshold", type=float,
                   help=f"mag: the velocity's relative change allowed before the model is called again "
                        f"(default: run.json's, else {DEFAULT_CACHE_THRESHOLD}; 0 = never skip)")
    p.add_argument("--numerics", choices=NUMERICS,
                   help="reference: sample as the published pipeline (bf16 timesteps, float64 sinusoids, bf16 "
                        "weights and compute, truncated 8-bit output); default: run.json's, else float32")
    p.add_argument("--vae-tiling", choices=VAE_TILINGS, help="the Wan VAE's tiling (default: run.json's, else none)")
    p.add_argument("--model-set", action="append", metavar="KEY=VALUE", help=MODEL_SET_HELP)
    p.add_argument("--fps", type=float, help="output frame rate (default: run.json's: 30 published, else 8)")
    p.add_argument("--frames", type=int)
    p.add_argument("--size", help="HEIGHTxWIDTH (default: the checkpoint's run.json size, else the video's)")
    p.add_argument("--segments", type=int, default=1, help="autoregressive segments (long videos)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--overwrite", action="store_true")
    def go():
        args = p.parse_args(argv)
        from stp_jax.sample import sample

        kw = {k: v for k, v in vars(args).items() if k not in ("out",)}
        out, n = sample(args.out, **kw)
        print(f"wrote {out}/" + ("<job>/" if n > 1 else "") + "video.mp4, side_by_side.mp4, contact_sheet.png, "
              "camera.png, settings.json")
        return 0

    return _run("stp-sample", go)


# ---------------------------------------------------------------- stp-eval


def eval_main(argv=None) -> int:
    from stp_jax.evaluate import DEFAULT_CASES
    from stp_jax.models.dit import NUMERICS

    p = _Parser(prog="stp-eval", description="Evaluate a model. Default: retiming and camera control on held-out "
                "procedural Cam×Time scenes (PSNR/SSIM/LPIPS and time/camera errors beside trivial baselines). "
                "--camxtime-eval DIR: predict the published Cam×Time benchmark (5 modes) into --out; "
                "--score PRED --gt GT: its published metric. --compare EVAL_A EVAL_B: two models on the same "
                "scenes, paired per scene.")
    p.add_argument("--checkpoint", help="a training workdir or a converted model folder (not needed for --score)")
    p.add_argument("--out", help="procedural: where to write eval.md, eval.json, scenes.json and the videos "
                                 "(default CHECKPOINT/eval); --camxtime-eval: the predictions root; --score: where to "
                                 "write scores.json / scores.md (default: PRED); --compare: the table's file")
    p.add_argument("--scenes", type=int, default=32,
                   help="held-out procedural scenes (default 32: with 8, a time error's standard error is near a frame; "
                        "the table gives each margin over the best baseline ± its standard error)")
    p.add_argument("--cases", default=",".join(DEFAULT_CASES),
                   help="comma list: time presets (fixed camera), moving:<preset> (the source's camera), "
                        "cam:reverse_path, cam:last_view")
    p.add_argument("--steps", type=int)
    p.add_argument("--shift", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (AlexNet features; the slowest metric)")
    p.add_argument("--compare", nargs=2, metavar=("EVAL_A", "EVAL_B"),
                   help="two stp-eval output folders (of two models on the same scenes): B against A, paired per "
                        "scene, with standard errors; --out FILE.md writes the table too")
    b = p.add_argument_group("the published Cam×Time benchmark (docs/REFERENCE.md §6.4)")
    b.add_argument("--camxtime-eval", metavar="DIR", help="a published eval_input folder (metadata.csv, videos/, "
                                                          "src_cam/, cameras/): predict its 5 modes into --out")
    b.add_argument("--score", metavar="PRED", help="score predictions <PRED>/<mode>/<stem>_cam_00.mp4 against --gt")
    b.add_argument("--gt", metavar="DIR", help="ground truth <DIR>/<stem>/moving_<p>.mp4 (eval_gt_wan2.1_format)")
    b.add_argument("--modes", help="comma list of benchmark modes (default: fixed_10,normal,reverse,slowmo,zigzag)")
    b.add_argument("--text-encoder", help="converted umT5 folder for the scenes' captions")
    b.add_argument("--vae", help="converted Wan VAE folder (for 16-channel models)")
    b.add_argument("--cfg", type=float, help="CFG scale (default: run.json's, else 5)")
    b.add_argument("--numerics", choices=NUMERICS, help="default: run.json's (published checkpoints: reference)")
    b.add_argument("--model-set", action="append", metavar="KEY=VALUE", help=MODEL_SET_HELP)
    b.add_argument("--frames", type=int, help="default: run.json's (published: 81)")
    b.add_argument("--size", help="HEIGHTxWIDTH model input (default: run.json's, published 480x832)")
    b.add_argument("--fps", type=float)
    b.add_argument("--batch", type=int, default=1, help="modes of one scene generated together")
    b.add_argument("--overwrite", action="store_true", help="redo predictions that exist (default: resume)")

    def go():
        args = p.parse_args(argv)
        if args.camxtime_eval and args.score:
            raise ValueError("give --camxtime-eval (predict) or --score (score predictions), not both")
        if args.compare:
            return _compare(args)
        if args.score:
            return _score(args)
        if not args.checkpoint:
            raise ValueError("--checkpoint is required (except with --score)")
        if args.camxtime_eval:
            return _camxtime_eval(args)
        from stp_jax.evaluate import evaluate_checkpoint, markdown_table

        cases = tuple(c.strip() for c in args.cases.split(",") if c.strip())
        res, out = evaluate_checkpoint(args.checkpoint, args.out, scenes=args.scenes, cases=cases, steps=args.steps,
                                       shift=args.shift, seed=args.seed or 0, lpips=not args.no_lpips,
                                       model_set=args.model_set)
        print(markdown_table(res))
        print(f"\nwritten: {out}/eval.md, eval.json, <case>.mp4 (source | truth | model), <case>.png")
        return 0

    return _run("stp-eval", go)


def _compare(args) -> int:
    from pathlib import Path

    from stp_jax.evaluate import compare, compare_notes, compare_table, load_scenes

    other = [o for o in ("checkpoint", "camxtime_eval", "score", "gt") if getattr(args, o)]
    if other:
        raise ValueError(f"--compare reads two stp-eval output folders and runs nothing: drop "
                         f"{', '.join('--' + o.replace('_', '-') for o in other)}")
    if args.out and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: a folder; with --compare --out is the table's file, e.g. compare.md")
    a, b = (load_scenes(p) for p in args.compare)
    table = compare_table(compare(a, b), *args.compare, notes=compare_notes(a, b))
    if args.out:
        from stp_jax.files import check_can_create

        check_can_create(args.out)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    print(table)
    return 0


def _camxtime_eval(args) -> int:
    from stp_jax.benchmark import MODES, run_benchmark

    if not args.out:
        raise ValueError("--camxtime-eval needs --out PRED_ROOT (where <mode>/<stem>_cam_00.mp4 are written)")
    size = None
    if args.size:
        try:
            size = tuple(int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--size {args.size!r}: expected HEIGHTxWIDTH, e.g. 480x832") from None
    modes = tuple(m.strip() for m in args.modes.split(",")) if args.modes else tuple(MODES)
    s = run_benchmark(args.camxtime_eval, args.checkpoint, args.out, modes=modes, vae=args.vae,
                      text_encoder=args.text_encoder, steps=args.steps, shift=args.shift, cfg=args.cfg, seed=args.seed,
                      numerics=args.numerics, frames=args.frames, size=size, fps=args.fps, batch=args.batch,
                      overwrite=args.overwrite, model_set=args.model_set)
    print(f"{s['written']} predictions written ({s['scenes']} scenes x {len(s['modes'])} modes, existing kept) to "
          f"{args.out}/<mode>/<stem>_cam_00.mp4; settings in {args.out}/benchmark.json")
    return 0


def _score(args) -> int:
    from stp_jax.benchmark import markdown, score, write_scores

    if not args.gt:
        raise ValueError("--score needs --gt DIR (the ground truth: <DIR>/<stem>/moving_<p>.mp4)")
    modes = tuple(m.strip() for m in args.modes.split(",")) if args.modes else None
    res = score(args.score, args.gt, modes=modes, lpips=not args.no_lpips)
    out = write_scores(res, args.out or args.score)
    print(markdown(res))
    print(f"\nwritten: {out}/scores.json (per video too), {out}/scores.md")
    return 0


# ---------------------------------------------------------------- stp-precompute


def precompute_main(argv=None) -> int:
    p = _Parser(prog="stp-precompute", description="Encode a config's training pairs once (autoencoder latents) "
                "into ArrayRecord files for data.source=latents.")
    _config_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=1, help="passes over the dataset (new time warps each pass)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    def go():
        args = p.parse_args(argv)
        import json

        from stp_jax import config as config_lib
        from stp_jax.precompute import precompute

        out = precompute(config_lib.load(args.config, args.set), args.out, epochs=args.epochs, batch=args.batch,
                         overwrite=args.overwrite)
        print(f"wrote {json.loads((out / 'meta.json').read_text())['count']} pairs to {out}")
        return 0

    return _run("stp-precompute", go)


# ---------------------------------------------------------------- stp-aot


def aot_main(argv=None) -> int:
    p = _Parser(prog="stp-aot", description="Compile a config's train/sample step for a TPU topology on this "
                "machine (libtpu) and report per-chip memory and step cost.")
    _config_args(p)
    p.add_argument("--topology", required=True, help="v5p-8, v5p-64, v6e-16, v5e-8, v5p-64x2, v5p:2x2x2 ...")
    p.add_argument("--what", default="train", choices=["train", "sample"])
    p.add_argument("--mesh", help="axis sizes, e.g. data=2,fsdp=8,context=2,tensor=1 (default: the config's)")
    p.add_argument("--json", help="also write the report here")
    def go():
        args = p.parse_args(argv)
        import dataclasses
        import json

        from stp_jax import config as config_lib
        from stp_jax.aot import aot_report

        report, advice = aot_report(config_lib.load(args.config, args.set), args.topology, args.what, args.mesh)
        print("\n".join(report.lines()))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dataclasses.asdict(report), f, indent=2)
        if advice:
            print(f"stp-aot: {args.config} does not fit on {args.topology}; {advice}", file=sys.stderr)
            return 1
        return 0

    return _run("stp-aot", go)


# ---------------------------------------------------------------- stp-convert


def convert_main(argv=None) -> int:
    from stp_jax.convert.checkpoint import FORMATS, SAMPLING_DEFAULTS

    p = _Parser(prog="stp-convert", description="Convert a PyTorch Wan2.1 / ReCamMaster / SpaceTimePilot DiT "
                "checkpoint, a umT5 encoder (Wan .pth or transformers) or the Wan VAE (Wan2.1_VAE.pth or "
                "diffusers) to stp_jax (Orbax params + config.json), or export an stp_jax DiT checkpoint back "
                "to PyTorch safetensors.")
    p.add_argument("src", help="checkpoint file (.safetensors, *.safetensors.index.json, .pth, .ckpt) or folder; "
                               "with --export, a converted stp_jax folder")
    p.add_argument("--out", required=True, help="output folder (convert) or .safetensors file (--export)")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help="expected checkpoint format; auto detects it from the keys")
    p.add_argument("--base", help="Wan base checkpoint that SRC (a fine-tune) is loaded over")
    p.add_argument("--num-heads", type=int, help="attention heads (needed only for unpublished widths "
                                                 "without a config.json)")
    p.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--sampling-defaults", default="auto", choices=SAMPLING_DEFAULTS,
                   help="DiTs: write run.json with the published sampling defaults (480x832x81, 50 steps, CFG 5, "
                        "reference numerics, tiled VAE, 30 fps); auto: for published sizes (1.3B, 14B)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--export", action="store_true", help="reverse: stp_jax folder -> PyTorch safetensors")
    p.add_argument("--layout", default="original", choices=["original", "diffusers"], help="key layout for --export")
    def go():
        args = p.parse_args(argv)
        from pathlib import Path

        from stp_jax.convert.checkpoint import convert_checkpoint, export_checkpoint
        from stp_jax.files import check_can_create

        t0 = time.time()
        if Path(args.out).exists() and not args.overwrite:
            raise FileExistsError(f"{args.out} already exists; choose another --out or pass --overwrite")
        check_can_create(args.out)
        if args.export:
            line = export_checkpoint(args.src, args.out, args.layout)
        else:
            line = convert_checkpoint(args.src, args.out, fmt=args.format, base=args.base, num_heads=args.num_heads,
                                      param_dtype=args.param_dtype, overwrite=args.overwrite,
                                      sampling_defaults=args.sampling_defaults)
        print(f"{line} in {time.time() - t0:.1f}s")
        return 0

    return _run("stp-convert", go)


# ---------------------------------------------------------------- stp-render


def render_main(argv=None) -> int:
    p = _Parser(prog="stp-render", description="Render one procedural Cam×Time scene: the source clip (grid "
                "diagonal), example target clips, and a contact sheet of the grid.")
    p.add_argument("--seed", type=int, default=0, help="scene seed (one seed = one scene)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--frames", type=int, default=81, help="animation times T (= clip length), 1 + 4k")
    p.add_argument("--cameras", type=int, default=81, help="camera poses C along the scene's path")
    p.add_argument("--size", default="64x64", help="HxW pixels")
    p.add_argument("--fps", type=float, default=15.0)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    def go():
        args = p.parse_args(argv)
        from stp_jax.config_utils import check_float, check_int
        from stp_jax.controls import timing
        from stp_jax.data.camxtime import write_scene
        from stp_jax.files import atomic_output, check_can_create

        try:
            h, w = (int(x) for x in args.size.lower().split("x"))
        except ValueError:
            raise ValueError(f"--size {args.size!r}: expected HEIGHTxWIDTH, e.g. 64x64") from None
        if h < 1 or w < 1:
            raise ValueError(f"--size {args.size!r}: height and width must be >= 1")
        check_int("--seed", args.seed, minimum=0)
        check_int("--cameras", args.cameras)
        if not 1 <= check_float("--fps", args.fps) <= 1000:  # mp4 frame rates are whole numbers
            raise ValueError(f"--fps must be between 1 and 1000, got {args.fps}")
        try:
            timing.check_frames(args.frames)
        except ValueError as e:
            raise ValueError(f"--frames: {e}") from None
        check_can_create(args.out)
        t0 = time.time()
        with atomic_output(args.out, folder=True, overwrite=args.overwrite) as tmp:
            files = write_scene(args.seed, tmp, args.frames, args.cameras, h, w, args.fps)
        print(f"rendered scene {args.seed}: {args.cameras} cameras x {args.frames} times at {h}x{w} in "
              f"{time.time() - t0:.1f}s -> {args.out}/ ({', '.join(files)})")
        return 0

    return _run("stp-render", go)


COMMANDS = {"train": train_main, "sample": sample_main, "eval": eval_main, "precompute": precompute_main,
            "aot": aot_main, "convert": convert_main, "render": render_main}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m stp_jax.cli {{{','.join(COMMANDS)}}} ARGS...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
