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
        description="Convert a PyTorch Wan2.1 / ReCamMaster / SpaceTimePilot DiT checkpoint to stp_jax "
                    "(Orbax params + config.json), or export an stp_jax checkpoint back to PyTorch safetensors.")
    ap.add_argument("src", help="checkpoint file (.safetensors, *.safetensors.index.json, .pth, .ckpt) or folder; "
                                "with --export, a converted stp_jax folder")
    ap.add_argument("--out", required=True, help="output folder (convert) or .safetensors file (--export)")
    ap.add_argument("--format", default="auto", choices=["auto", "diffusers", "wan", "recammaster", "spacetimepilot"],
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
        cfg, params, meta = convert_dit(args.src, args.format, args.base, args.num_heads, args.param_dtype)
        out = save_pretrained(args.out, cfg, params, meta, overwrite=args.overwrite)
    except (ConversionError, FileExistsError, ValueError) as e:
        _die(str(e))
    print(f"converted {meta['layout']}-layout {cfg.mode} checkpoint ({describe(params)}; dim {cfg.dim}, "
          f"{cfg.num_layers} layers, {cfg.num_heads} heads) to {out} in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(convert_main())
