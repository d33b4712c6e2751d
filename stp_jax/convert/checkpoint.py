"""One entry for every conversion: detect what a PyTorch checkpoint holds (DiT, umT5, Wan
VAE) and convert it to a stp_jax folder, or export a converted DiT folder back."""
from __future__ import annotations

import json
from pathlib import Path

from stp_jax.convert import umt5, wan_vae
from stp_jax.convert.core import ConversionError, describe, read_state_dict, save_safetensors
from stp_jax.convert.dit import convert_dit, export_dit
from stp_jax.convert.store import load_config, save_pretrained

FORMATS = ("auto", "diffusers", "wan", "recammaster", "spacetimepilot", "umt5", "wan_vae")


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
                       param_dtype: str = "float32", overwrite: bool = False) -> str:
    """Convert ``src`` to the folder ``out`` (written atomically); returns a one-line summary."""
    kind = detect_kind(src, fmt)
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
        cfg, params, meta = convert_dit(src, fmt, base, num_heads, param_dtype)
        what = f"{meta['layout']}-layout {cfg.mode} DiT (dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads)"
    written = save_pretrained(out, cfg, params, meta, overwrite=overwrite)
    return f"converted {what}: {describe(params)} to {written}"


def export_checkpoint(src, out, layout: str = "original") -> str:
    """A converted DiT folder -> one PyTorch safetensors file (original or diffusers keys), each
    tensor in its original dtype; returns a one-line summary."""
    import orbax.checkpoint as ocp

    cfg = load_config(src)
    meta_f = Path(src) / "conversion.json"
    dtypes = json.loads(meta_f.read_text()).get("torch_dtypes") if meta_f.exists() else None
    params = ocp.StandardCheckpointer().restore(Path(src).absolute() / "params")
    sd = export_dit(params, cfg, layout, dtypes)
    save_safetensors(sd, out, {"format": "pt", "stp_jax_layout": layout})
    return f"exported {len(sd)} tensors ({cfg.mode}, {layout} layout) to {out}"
