"""One entry for every conversion: detect what a PyTorch checkpoint holds (DiT, umT5, Wan
VAE) and convert it to a stp_jax folder, or export a converted DiT folder back."""
from __future__ import annotations

import json
from pathlib import Path

from stp_jax.convert import umt5, wan_vae
from stp_jax.convert.core import ConversionError, describe, read_state_dict, save_safetensors
from stp_jax.convert.dit import convert_dit, export_dit
from stp_jax.convert.store import load_config, restore_params, save_pretrained

FORMATS = ("auto", "diffusers", "wan", "recammaster", "spacetimepilot", "umt5", "wan_vae")
SAMPLING_DEFAULTS = ("auto", "published", "none")
# The published widths (docs/REFERENCE.md §2): (dim, layers, heads) of Wan2.1 1.3B and 14B.
PUBLISHED_SIZES = {(1536, 30, 12), (5120, 40, 40)}


def published_run() -> dict:
    """run.json of a converted published DiT: the published pipeline's sampling defaults
    (docs/REFERENCE.md §6.2), read by stp-sample / stp-eval (every flag still overrides).

    data    81 frames at 480x832, cover-resized with PIL bilinear and the published rounding,
            centre-cropped (``resize: published``)
    sample  50 steps (preset ``demo``: 20, as the published demo script), CFG 5 with Wan's
            negative prompt, shift 5, Euler, seed 0, reference numerics (bf16 timesteps,
            float64 sinusoids, bf16 weights and compute), the published VAE tiling, 30 fps, H.264
            at crf 25 (imageio's quality 5)."""
    return {"published": True,
            "data": {"num_frames": 81, "height": 480, "width": 832, "resize": "published"},
            "sample": {"steps": 50, "shift": 5.0, "cfg_scale": 5.0, "negative_prompt": "wan", "solver": "euler",
                       "seed": 0, "numerics": "reference", "vae_tiling": "published", "fps": 30.0, "crf": 25,
                       "prediction": "velocity", "presets": {"demo": {"steps": 20}, "eval": {"steps": 50}}}}


def is_published_dit(cfg) -> bool:
    """A DiT of a published size on Wan VAE latents (16 channels, patch 1x2x2)."""
    return ((cfg.dim, cfg.num_layers, cfg.num_heads) in PUBLISHED_SIZES and cfg.in_channels == 16
            and tuple(cfg.patch_size) == (1, 2, 2))


def detect_kind(src, fmt: str = "auto") -> str:
    """``dit``, ``umt5`` or ``wan_vae``: from ``fmt`` when it names one, else from the keys."""
    if fmt not in FORMATS:
        raise ConversionError(f"--format {fmt!r} is unknown; expected one of {FORMATS}")
    if fmt in ("umt5", "wan_vae"):
        return fmt
    if fmt != "auto":
        return "dit"
    keys = read_state_dict(src).keys()
    if wan_vae.is_wan_vae(keys):
        return "wan_vae"
    if umt5.is_umt5(keys):
        return "umt5"
    return "dit"


def convert_checkpoint(src, out, *, fmt: str = "auto", base=None, num_heads: int | None = None,
                       param_dtype: str = "float32", overwrite: bool = False, sampling_defaults: str = "auto") -> str:
    """Convert ``src`` to the folder ``out`` (written atomically); returns a one-line summary.

    ``sampling_defaults`` (DiTs): "auto" writes ``published_run()`` as run.json for a DiT of a
    published size, "published" always, "none" never."""
    if sampling_defaults not in SAMPLING_DEFAULTS:
        raise ConversionError(f"sampling defaults {sampling_defaults!r} are unknown; expected one of {SAMPLING_DEFAULTS}")
    if num_heads is not None and num_heads < 1:
        raise ConversionError(f"--num-heads must be >= 1, got {num_heads}")
    kind = detect_kind(src, fmt)
    extra = {}
    if kind == "wan_vae":
        cfg, params = wan_vae.convert_wan_vae(src, dtype=param_dtype)
        meta = {"source": str(src), "layout": "wan_vae"}
        what = f"Wan VAE (base_dim {cfg.base_dim}, z_dim {cfg.z_dim})"
    elif kind == "umt5":
        p = Path(src)
        hints_f = (p if p.is_dir() else p.parent) / "config.json"
        hints = json.loads(hints_f.read_text()) if hints_f.exists() else {}
        cfg, params, meta = umt5.convert_umt5(src, num_heads, param_dtype, hints)
        meta["layout"] = "umt5"
        what = f"umT5 encoder (d_model {cfg.d_model}, {cfg.num_layers} layers, {cfg.num_heads} heads)"
    else:
        try:
            cfg, params, meta = convert_dit(src, fmt, base, num_heads, param_dtype)
        except ValueError as e:  # e.g. a DiTConfig whose dim the given head count does not divide
            if num_heads is None or isinstance(e, ConversionError):
                raise
            raise ConversionError(f"--num-heads {num_heads}: {e}") from e
        what = f"{meta['layout']}-layout {cfg.mode} DiT (dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads)"
        if sampling_defaults == "published" or (sampling_defaults == "auto" and is_published_dit(cfg)):
            extra["run.json"] = json.dumps(published_run(), indent=2)
            what += " with the published sampling defaults (run.json)"
    written = save_pretrained(out, cfg, params, meta, overwrite=overwrite, extra_files=extra)
    return f"converted {what}: {describe(params)} to {written}"


def export_checkpoint(src, out, layout: str = "original") -> str:
    """A converted DiT folder -> one PyTorch safetensors file (original or diffusers keys), each
    tensor in its original dtype; returns a one-line summary."""
    cfg = load_config(src)
    meta_f = Path(src) / "conversion.json"
    dtypes = json.loads(meta_f.read_text()).get("torch_dtypes") if meta_f.exists() else None
    params = restore_params(src)
    sd = export_dit(params, cfg, layout, dtypes)
    save_safetensors(sd, out, {"format": "pt", "stp_jax_layout": layout})
    return f"exported {len(sd)} tensors ({cfg.mode}, {layout} layout) to {out}"
