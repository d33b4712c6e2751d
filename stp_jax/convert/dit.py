"""Wan2.1 / ReCamMaster / SpaceTimePilot DiT checkpoints <-> SpaceTimeDiT params.

The canonical PyTorch layout is Wan's original key naming (``blocks.{i}.self_attn.q``...),
which ReCamMaster and SpaceTimePilot extend per block. diffusers' names are mapped onto
it by one rename table (docs/REFERENCE.md §2) and back again for export.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np

from stp_jax.convert.core import (
    ConversionError,
    Rule,
    StateDict,
    apply_table,
    invert_table,
    read_state_dict,
    strip_common_prefix,
)
from stp_jax.models.dit import CAM_DIM, DiTConfig, SpaceTimeDiT, dummy_inputs

FORMATS = ("auto", "diffusers", "wan", "recammaster", "spacetimepilot")
WRAPPER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "module.", "model.", "_orig_mod.")
# Published widths whose head count is known (head_dim 128).
KNOWN_HEADS = {1536: 12, 5120: 40}

# diffusers name (regex) -> original name; every row must be a bijection on its own.
_DIFFUSERS_TO_ORIGINAL = [
    (r"condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"condition_embedder\.time_proj\.", "time_projection.1."),
    (r"proj_out\.", "head.head."),
    (r"scale_shift_table$", "head.modulation"),
    (r"(blocks\.\d+)\.scale_shift_table$", r"\1.modulation"),
    (r"(blocks\.\d+)\.attn1\.to_q\.", r"\1.self_attn.q."),
    (r"(blocks\.\d+)\.attn1\.to_k\.", r"\1.self_attn.k."),
    (r"(blocks\.\d+)\.attn1\.to_v\.", r"\1.self_attn.v."),
    (r"(blocks\.\d+)\.attn1\.to_out\.0\.", r"\1.self_attn.o."),
    (r"(blocks\.\d+)\.attn1\.norm_([qk])\.", r"\1.self_attn.norm_\2."),
    (r"(blocks\.\d+)\.attn2\.to_q\.", r"\1.cross_attn.q."),
    (r"(blocks\.\d+)\.attn2\.to_k\.", r"\1.cross_attn.k."),
    (r"(blocks\.\d+)\.attn2\.to_v\.", r"\1.cross_attn.v."),
    (r"(blocks\.\d+)\.attn2\.to_out\.0\.", r"\1.cross_attn.o."),
    (r"(blocks\.\d+)\.attn2\.norm_([qk])\.", r"\1.cross_attn.norm_\2."),
    (r"(blocks\.\d+)\.norm2\.", r"\1.norm3."),  # diffusers norm2 is the cross-attention norm
    (r"(blocks\.\d+)\.ffn\.net\.0\.proj\.", r"\1.ffn.0."),
    (r"(blocks\.\d+)\.ffn\.net\.2\.", r"\1.ffn.2."),
]
_ORIGINAL_TO_DIFFUSERS = [
    (r"time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"time_projection\.1\.", "condition_embedder.time_proj."),
    (r"head\.head\.", "proj_out."),
    (r"head\.modulation$", "scale_shift_table"),
    (r"(blocks\.\d+)\.modulation$", r"\1.scale_shift_table"),
    (r"(blocks\.\d+)\.self_attn\.([qkv])\.", lambda m: f"{m[1]}.attn1.to_{m[2]}."),
    (r"(blocks\.\d+)\.self_attn\.o\.", r"\1.attn1.to_out.0."),
    (r"(blocks\.\d+)\.self_attn\.norm_([qk])\.", r"\1.attn1.norm_\2."),
    (r"(blocks\.\d+)\.cross_attn\.([qkv])\.", lambda m: f"{m[1]}.attn2.to_{m[2]}."),
    (r"(blocks\.\d+)\.cross_attn\.o\.", r"\1.attn2.to_out.0."),
    (r"(blocks\.\d+)\.cross_attn\.norm_([qk])\.", r"\1.attn2.norm_\2."),
    (r"(blocks\.\d+)\.norm3\.", r"\1.norm2."),
    (r"(blocks\.\d+)\.ffn\.0\.", r"\1.ffn.net.0.proj."),
    (r"(blocks\.\d+)\.ffn\.2\.", r"\1.ffn.net.2."),
]


def _rename(key: str, table) -> str:
    for pat, rep in table:
        new, n = re.subn("^" + pat, rep, key)
        if n:
            return new
    return key


def diffusers_to_original(key: str) -> str:
    return _rename(key, _DIFFUSERS_TO_ORIGINAL)


def original_to_diffusers(key: str) -> str:
    return _rename(key, _ORIGINAL_TO_DIFFUSERS)


def _is_diffusers(keys) -> bool:
    return any(k.startswith("condition_embedder.") or ".attn1." in k or ".attn2." in k for k in keys)


def detect_layout(keys) -> str:
    keys = set(keys)
    if _is_diffusers(keys):
        return "diffusers"
    if any(k.startswith("time_embedding.") or ".self_attn." in k for k in keys):
        return "original"
    raise ConversionError("cannot tell the checkpoint layout: no Wan original keys (time_embedding.*, "
                          "blocks.N.self_attn.*) and no diffusers keys (condition_embedder.*, blocks.N.attn1.*)")


def detect_mode(keys) -> str:
    keys = list(keys)
    if any(".frame_time_embedding." in k or ".temporal_downsampler." in k for k in keys):
        return "spacetimepilot"
    if any(".cam_encoder." in k or ".projector." in k for k in keys):
        return "recammaster"
    return "wan"


def to_original_layout(sd: StateDict) -> StateDict:
    """Strip wrapper prefixes and rename diffusers keys to Wan's original names."""
    sd = strip_common_prefix(sd, WRAPPER_PREFIXES)
    if _is_diffusers(sd.keys()):
        sd = sd.renamed(diffusers_to_original)
    return sd


# ---------------------------------------------------------------- the table


def dit_rules(cfg: DiTConfig) -> list[Rule]:
    d, m = cfg.dim, cfg.ffn_dim
    pt, ph, pw = cfg.patch_size
    rules = [
        Rule("patch_embedding.weight", ("patch_embedding", "kernel"), (d, cfg.in_channels, pt, ph, pw), "patch3d"),
        Rule("patch_embedding.bias", ("patch_embedding", "bias"), (d,)),
        Rule("text_embedding.0.weight", ("text_embedding", "fc1", "kernel"), (d, cfg.text_dim), "linear"),
        Rule("text_embedding.0.bias", ("text_embedding", "fc1", "bias"), (d,)),
        Rule("text_embedding.2.weight", ("text_embedding", "fc2", "kernel"), (d, d), "linear"),
        Rule("text_embedding.2.bias", ("text_embedding", "fc2", "bias"), (d,)),
        Rule("time_embedding.0.weight", ("time_embedding", "fc1", "kernel"), (d, cfg.freq_dim), "linear"),
        Rule("time_embedding.0.bias", ("time_embedding", "fc1", "bias"), (d,)),
        Rule("time_embedding.2.weight", ("time_embedding", "fc2", "kernel"), (d, d), "linear"),
        Rule("time_embedding.2.bias", ("time_embedding", "fc2", "bias"), (d,)),
        Rule("time_projection.1.weight", ("time_projection", "kernel"), (6 * d, d), "linear"),
        Rule("time_projection.1.bias", ("time_projection", "bias"), (6 * d,)),
        Rule("head.modulation", ("head_modulation",), (1, 2, d)),
        Rule("head.head.weight", ("head", "kernel"), (pt * ph * pw * cfg.out_channels, d), "linear"),
        Rule("head.head.bias", ("head", "bias"), (pt * ph * pw * cfg.out_channels,)),
    ]
    for i in range(cfg.num_layers):
        b = f"blocks.{i}."

        def r(key, path, shape, kind="reshape", b=b, i=i):
            rules.append(Rule(b + key, ("blocks",) + path, shape, kind, layer=i))

        r("modulation", ("modulation",), (1, 6, d))
        for t, name in (("self_attn", "self_attn"), ("cross_attn", "cross_attn")):
            for p in "qkv":
                r(f"{t}.{p}.weight", (name, p, "kernel"), (d, d), "linear")
                r(f"{t}.{p}.bias", (name, p, "bias"), (d,))
            r(f"{t}.o.weight", (name, "o", "kernel"), (d, d), "linear")
            r(f"{t}.o.bias", (name, "o", "bias"), (d,))
            r(f"{t}.norm_q.weight", (name, "norm_q", "scale"), (d,))
            r(f"{t}.norm_k.weight", (name, "norm_k", "scale"), (d,))
        r("norm3.weight", ("norm3", "scale"), (d,))
        r("norm3.bias", ("norm3", "bias"), (d,))
        r("ffn.0.weight", ("ffn", "fc1", "kernel"), (m, d), "linear")
        r("ffn.0.bias", ("ffn", "fc1", "bias"), (m,))
        r("ffn.2.weight", ("ffn", "fc2", "kernel"), (d, m), "linear")
        r("ffn.2.bias", ("ffn", "fc2", "bias"), (d,))
        if cfg.mode in ("recammaster", "spacetimepilot"):
            r("cam_encoder.weight", ("cam_encoder", "kernel"), (d, CAM_DIM), "linear")
            r("cam_encoder.bias", ("cam_encoder", "bias"), (d,))
            r("projector.weight", ("projector", "kernel"), (d, d), "linear")
            r("projector.bias", ("projector", "bias"), (d,))
        if cfg.mode == "spacetimepilot":
            fte = ("time", "frame_time_embedding")
            r("frame_time_embedding.0.weight", fte + ("fc1", "kernel"), (d, cfg.freq_dim), "linear")
            r("frame_time_embedding.0.bias", fte + ("fc1", "bias"), (d,))
            r("frame_time_embedding.2.weight", fte + ("fc2", "kernel"), (d, d), "linear")
            r("frame_time_embedding.2.bias", fte + ("fc2", "bias"), (d,))
            td = ("time", "temporal_downsampler")
            for j in (1, 2):
                r(f"temporal_downsampler.temporal_conv{j}.weight", td + (f"conv{j}", "kernel"), (d, d, 3), "conv1d")
                r(f"temporal_downsampler.temporal_conv{j}.bias", td + (f"conv{j}", "bias"), (d,))
                r(f"temporal_downsampler.norm{j}.weight", td + (f"norm{j}", "scale"), (d,))
                r(f"temporal_downsampler.norm{j}.bias", td + (f"norm{j}", "bias"), (d,))
    return rules


# ---------------------------------------------------------------- config inference


def _config_json(path: Path) -> dict:
    """A config.json next to the checkpoint (diffusers or Wan original), if any."""
    d = path if path.is_dir() else path.parent
    f = d / "config.json"
    return json.loads(f.read_text()) if f.exists() else {}


def infer_config(sd: StateDict, mode: str, num_heads: int | None = None, hints: dict | None = None,
                 **overrides) -> DiTConfig:
    """The DiTConfig a (original-layout) state dict describes."""
    hints = hints or {}
    need = ["patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight", "blocks.0.ffn.0.weight",
            "head.head.weight"]
    absent = [k for k in need if k not in sd]
    if absent:
        raise ConversionError(f"{sd.source}: cannot infer the model size; missing {absent}")
    d, cin, *patch = sd.shape("patch_embedding.weight")
    layers = 1 + max(int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    heads = num_heads or hints.get("num_attention_heads") or hints.get("num_heads") or KNOWN_HEADS.get(d)
    if heads is None:
        raise ConversionError(f"{sd.source}: the head count of a dim-{d} model cannot be read from the weights; "
                              "pass --num-heads (or put a config.json with num_heads beside the checkpoint)")
    kw = dict(dim=d, in_channels=cin, patch_size=tuple(patch), num_layers=layers, num_heads=int(heads),
              text_dim=sd.shape("text_embedding.0.weight")[1], freq_dim=sd.shape("time_embedding.0.weight")[1],
              ffn_dim=sd.shape("blocks.0.ffn.0.weight")[0],
              out_channels=sd.shape("head.head.weight")[0] // int(np.prod(patch)), mode=mode)
    if "eps" in hints:
        kw["eps"] = float(hints["eps"])
    kw.update(overrides)
    return DiTConfig(**kw)


def abstract_params(cfg: DiTConfig):
    """ShapeDtypeStructs of the unboxed params tree for ``cfg`` (no memory, no compute)."""
    from flax import linen as nn

    model = SpaceTimeDiT(cfg)
    inputs = dummy_inputs(cfg)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **inputs))
    return nn.unbox(shapes)["params"]


# ---------------------------------------------------------------- entry points


def load_dit_state_dict(src, fmt: str = "auto", base=None) -> tuple[StateDict, str, str]:
    """Read ``src`` (optionally over ``base``) in the original layout; returns (sd, layout, mode)."""
    if fmt not in FORMATS:
        raise ConversionError(f"format {fmt!r} is unknown; expected one of {FORMATS}")
    sd = strip_common_prefix(read_state_dict(src), WRAPPER_PREFIXES)
    try:
        layout = detect_layout(sd.keys())
    except ConversionError:
        if base is None:
            raise
        layout = "original"  # a partial fine-tune checkpoint (e.g. camera modules only) over a base
    if fmt == "diffusers" and layout != "diffusers":
        raise ConversionError(f"{src}: --format diffusers given but the keys are in Wan's original layout")
    if fmt in ("wan", "recammaster", "spacetimepilot") and layout == "diffusers":
        raise ConversionError(f"{src}: --format {fmt} given but the keys are in diffusers' layout; use --format diffusers")
    sd = to_original_layout(sd)
    if base is not None:
        sd = sd.merged_over(to_original_layout(read_state_dict(base)))
    mode = detect_mode(sd.keys())
    if fmt in ("wan", "recammaster", "spacetimepilot"):
        mode = fmt  # an explicit format fixes the expected key set; extra keys then raise
    return sd, layout, mode


def convert_dit(src, fmt: str = "auto", base=None, num_heads: int | None = None,
                param_dtype: str = "float32", **config_overrides):
    """Convert a PyTorch DiT checkpoint. Returns (cfg, params as numpy tree, metadata)."""
    sd, layout, mode = load_dit_state_dict(src, fmt, base)
    hints = _config_json(Path(src))
    if base is not None:
        hints = {**_config_json(Path(base)), **hints}
    cfg = infer_config(sd, mode, num_heads, hints, param_dtype=param_dtype, **config_overrides)
    rules = dit_rules(cfg)
    params = apply_table(sd, rules, abstract_params(cfg), f"a {mode} DiT with {cfg.num_layers} layers, dim {cfg.dim}",
                         dtype=param_dtype)
    meta = {"source": str(src), "base": None if base is None else str(base), "layout": layout, "mode": mode,
            "torch_dtypes": {r.torch_key: sd.dtype(r.torch_key) for r in rules}}
    return cfg, params, meta


def export_dit(params, cfg: DiTConfig, layout: str = "original", dtypes: dict | None = None) -> dict[str, np.ndarray]:
    """params -> PyTorch state dict (numpy) in Wan's original layout or diffusers'."""
    if layout not in ("original", "diffusers"):
        raise ValueError(f"layout {layout!r} is unknown; expected 'original' or 'diffusers'")
    if not cfg.published:
        raise ValueError(f"this model has no PyTorch counterpart to export to: rope_frames {cfg.rope_frames!r}, "
                         f"cam_heads {cfg.cam_heads}, copy_source {cfg.copy_source} are ours (the published model: "
                         f"'index', 0, False); its weights would run a different network there")
    sd = invert_table(jax.device_get(params), dit_rules(cfg), dtypes)
    if layout == "diffusers":
        if cfg.mode != "wan":
            raise ValueError(f"diffusers has no {cfg.mode} model; export it with layout 'original'")
        sd = {original_to_diffusers(k): v for k, v in sd.items()}
    return sd
