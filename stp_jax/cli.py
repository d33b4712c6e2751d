"""Thin command-line entry points. The work happens in the library modules."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _die(msg: str) -> "None":
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def convert_main(argv=None):
    ap = argparse.ArgumentParser(
        prog="stp-convert",
        description="Convert a PyTorch Wan2.1 / ReCamMaster / SpaceTimePilot DiT checkpoint, a umT5 encoder "
                    "(Wan .pth or transformers) or the Wan VAE (Wan2.1_VAE.pth or diffusers) to stp_jax (Orbax params + config.json), or export an stp_jax DiT "
                    "checkpoint back to PyTorch safetensors.")
    ap.add_argument("src", help="checkpoint file (.safetensors, *.safetensors.index.json, .pth, .ckpt) or folder; "
                                "with --export, a converted stp_jax folder")
    ap.add_argument("--out", required=True, help="output folder (convert) or .safetensors file (--export)")
    ap.add_argument("--format", default="auto",
                    choices=["auto", "diffusers", "wan", "recammaster", "spacetimepilot", "umt5", "wan_vae"],
                    help="expected checkpoint format; auto detects it from the keys")
    ap.add_argument("--base", help="Wan base checkpoint that SRC (a fine-tune) is loaded over")
    ap.add_argument("--num-heads", type=int, help="attention heads (needed only for unpublished widths "
                                                  "without a config.json)")
    ap.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ap.add_argument("--export", action="store_true", help="reverse: stp_jax folder -> PyTorch safetensors")
    ap.add_argument("--layout", default="original", choices=["original", "diffusers"],
                    help="key layout for --export")
    args = ap.parse_args(argv)

    from stp_jax.convert import ConversionError, convert_dit, export_dit, load_config, save_pretrained
    from stp_jax.convert.core import describe, save_safetensors

    t0 = time.time()
    if Path(args.out).exists() and not args.overwrite:
        _die(f"{args.out} already exists; choose another --out or pass --overwrite")
    try:
        if args.export:
            import orbax.checkpoint as ocp

            cfg = load_config(args.src)
            meta_f = Path(args.src) / "conversion.json"
            dtypes = json.loads(meta_f.read_text()).get("torch_dtypes") if meta_f.exists() else None
            params = ocp.StandardCheckpointer().restore(Path(args.src).absolute() / "params")
            sd = export_dit(params, cfg, args.layout, dtypes)
            save_safetensors(sd, args.out, {"format": "pt", "stp_jax_layout": args.layout})
            print(f"exported {len(sd)} tensors ({cfg.mode}, {args.layout} layout) to {args.out} "
                  f"in {time.time() - t0:.1f}s")
            return 0
        from stp_jax.convert import umt5
        from stp_jax.convert.core import read_state_dict

        from stp_jax.convert import wan_vae

        keys = read_state_dict(args.src).keys() if args.format == "auto" else ()
        if args.format == "wan_vae" or wan_vae.is_wan_vae(keys):
            cfg, params = wan_vae.convert_wan_vae(args.src, dtype=args.param_dtype)
            meta = {"source": str(args.src), "layout": "wan_vae"}
        elif args.format == "umt5" or umt5.is_umt5(keys):
            src = Path(args.src)
            hints_f = (src if src.is_dir() else src.parent) / "config.json"
            hints = json.loads(hints_f.read_text()) if hints_f.exists() else {}
            cfg, params, meta = umt5.convert_umt5(args.src, args.num_heads, args.param_dtype, hints)
            meta["layout"] = "umt5"
        else:
            cfg, params, meta = convert_dit(args.src, args.format, args.base, args.num_heads, args.param_dtype)
        out = save_pretrained(args.out, cfg, params, meta, overwrite=args.overwrite)
    except (ConversionError, FileExistsError, ValueError) as e:
        _die(str(e))
    if meta["layout"] == "umt5":
        what = f"umT5 encoder (d_model {cfg.d_model}, {cfg.num_layers} layers, {cfg.num_heads} heads)"
    elif meta["layout"] == "wan_vae":
        what = f"Wan VAE (base_dim {cfg.base_dim}, z_dim {cfg.z_dim})"
    else:
        what = f"{meta['layout']}-layout {cfg.mode} DiT (dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads)"
    print(f"converted {what}: {describe(params)} to {out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(convert_main())


def render_main(argv=None):
    ap = argparse.ArgumentParser(prog="stp-render", description="Render one procedural Cam×Time scene: the source "
                                 "clip (grid diagonal), example target clips, and a contact sheet of the grid.")
    ap.add_argument("--seed", type=int, default=0, help="scene seed (one seed = one scene)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--frames", type=int, default=81, help="animation times T (= clip length), 1 + 4k")
    ap.add_argument("--cameras", type=int, default=81, help="camera poses C along the scene's path")
    ap.add_argument("--size", default="64x64", help="HxW pixels")
    ap.add_argument("--fps", type=float, default=15.0)
    args = ap.parse_args(argv)

    import numpy as np

    from stp_jax.controls import timing
    from stp_jax.data import camxtime as cx
    from stp_jax.data.video_io import contact_sheet, write_video

    try:
        h, w = (int(x) for x in args.size.lower().split("x"))
        timing.check_frames(args.frames)
    except ValueError as e:
        _die(f"--size must be HxW and --frames 1 + 4k ({e})")
    t0 = time.time()
    scene, cams = cx.make_scene(args.seed), cx.camera_path(args.seed, args.cameras)
    grid = np.asarray(cx.render_grid_jit(scene, cams, args.frames, h, w))  # [C, T, H, W, 3]
    out = Path(args.out)
    ci, ti = cx.source_indices(args.frames, args.cameras)
    clips = {"source": grid[ci, ti]}
    for name in ("reverse", "freeze_mid", "slowmo_first_half", "pingpong"):  # the source's camera sweep
        clips[f"target_{name}"] = grid[ci, timing.preset(name, args.frames)]
    clips["target_fixed_camera_reverse"] = grid[np.zeros_like(ci), timing.preset("reverse", args.frames)]
    for name, clip in clips.items():
        write_video(out / f"{name}.mp4", clip, fps=args.fps)
    from stp_jax.controls.camera import write_trajectory_json

    write_trajectory_json(out / "source_camera.json", cams[ci])  # the source clip's own poses (--source-camera)
    rows = [grid[i] for i in np.linspace(0, args.cameras - 1, 4).round().astype(int)]
    contact_sheet(rows + [clips["source"]], out / "grid.png", every=max(1, args.frames // 8),
                  labels=[f"cam {i}" for i in np.linspace(0, args.cameras - 1, 4).round().astype(int)] + ["source"])
    print(f"rendered scene {args.seed}: {args.cameras} cameras x {args.frames} times at {h}x{w} in "
          f"{time.time() - t0:.1f}s -> {out}/ ({', '.join(sorted(clips))}.mp4, grid.png, source_camera.json)")
    return 0
