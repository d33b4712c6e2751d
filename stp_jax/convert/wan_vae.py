"""Wan2.1 VAE checkpoints (diffusers ``AutoencoderKLWan``) <-> stp_jax.models.wan_vae params.

The params are a nested dict mirroring diffusers' module path, so every key maps
mechanically: ``encoder.down_blocks.0.conv1.weight`` -> ``encoder/down_blocks/0/conv1/kernel``.
``vae_key_shapes(cfg)`` spells out every key and shape the config needs, so a checkpoint
that does not match raises one ConversionError listing all differences.
"""
from __future__ import annotations

import re

import numpy as np

from stp_jax.convert.core import (
    ConversionError,
    Rule,
    StateDict,
    check_state_dict,
    nonfinite,
    raise_nonfinite,
    read_state_dict,
)
from stp_jax.models.wan_vae import WanVAEConfig


def _conv3(o, i, k=3):
    return {"weight": (o, i, k, k, k) if k == 3 else (o, i, 1, 1, 1), "bias": (o,)}


def _res(i, o):
    d = {"norm1.gamma": (i, 1, 1, 1), "norm2.gamma": (o, 1, 1, 1)}
    d.update({f"conv1.{k}": v for k, v in _conv3(o, i).items()})
    d.update({f"conv2.{k}": v for k, v in _conv3(o, o).items()})
    if i != o:
        d.update({f"conv_shortcut.{k}": v for k, v in _conv3(o, i, 1).items()})
    return d


def _mid(c):
    d = {f"resnets.{j}.{k}": v for j in (0, 1) for k, v in _res(c, c).items()}
    d.update({"attentions.0.norm.gamma": (c, 1, 1), "attentions.0.to_qkv.weight": (3 * c, c, 1, 1),
              "attentions.0.to_qkv.bias": (3 * c,), "attentions.0.proj.weight": (c, c, 1, 1),
              "attentions.0.proj.bias": (c,)})
    return d


def vae_key_shapes(cfg: WanVAEConfig) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}

    def add(prefix, d):
        out.update({f"{prefix}.{k}": v for k, v in d.items()})

    z = cfg.z_dim
    dims = cfg.encoder_dims
    add("encoder.conv_in", _conv3(dims[0], 3))
    idx = 0
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(cfg.num_res_blocks):
            add(f"encoder.down_blocks.{idx}", _res(a, b))
            a, idx = b, idx + 1
        if i != len(cfg.dim_mult) - 1:
            add(f"encoder.down_blocks.{idx}.resample.1", {"weight": (b, b, 3, 3), "bias": (b,)})
            if cfg.temporal_downsample[i]:
                add(f"encoder.down_blocks.{idx}.time_conv", {"weight": (b, b, 3, 1, 1), "bias": (b,)})
            idx += 1
    add("encoder.mid_block", _mid(dims[-1]))
    out["encoder.norm_out.gamma"] = (dims[-1], 1, 1, 1)
    add("encoder.conv_out", _conv3(2 * z, dims[-1]))
    add("quant_conv", _conv3(2 * z, 2 * z, 1))
    add("post_quant_conv", _conv3(z, z, 1))
    dd = cfg.decoder_dims
    add("decoder.conv_in", _conv3(dd[0], z))
    add("decoder.mid_block", _mid(dd[0]))
    up = tuple(cfg.temporal_downsample[::-1])
    for i, (a, b) in enumerate(zip(dd[:-1], dd[1:])):
        a = a // 2 if i > 0 else a
        for j in range(cfg.num_res_blocks + 1):
            add(f"decoder.up_blocks.{i}.resnets.{j}", _res(a, b))
            a = b
        if i != len(cfg.dim_mult) - 1:
            pre = f"decoder.up_blocks.{i}.upsamplers.0"
            add(f"{pre}.resample.1", {"weight": (b // 2, b, 3, 3), "bias": (b // 2,)})
            if up[i]:
                add(f"{pre}.time_conv", {"weight": (2 * b, b, 3, 1, 1), "bias": (2 * b,)})
    out["decoder.norm_out.gamma"] = (dd[-1], 1, 1, 1)
    add("decoder.conv_out", _conv3(3, dd[-1]))
    return out


def _to_jax(key: str, w: np.ndarray):
    path = key.split(".")
    if path[-1] == "weight":
        path[-1] = "kernel"
        w = w.transpose(2, 3, 4, 1, 0) if w.ndim == 5 else w.transpose(2, 3, 1, 0)
    elif path[-1] == "gamma":
        w = w.reshape(-1)
    return path, w


_RES = [(r"residual\.0\.gamma$", "norm1.gamma"), (r"residual\.2\.", "conv1."), (r"residual\.3\.gamma$", "norm2.gamma"),
        (r"residual\.6\.", "conv2."), (r"shortcut\.", "conv_shortcut.")]


def _rename_block(rest: str) -> str:
    for pat, rep in _RES:
        rest = re.sub(pat, rep, rest)
    return rest


def original_to_diffusers(sd: StateDict) -> StateDict:
    """Wan2.1_VAE.pth names -> diffusers names (docs/REFERENCE.md §3)."""
    ups = sorted({int(m[1]) for k in sd if (m := re.match(r"decoder\.upsamples\.(\d+)\.", k))})
    is_up = {n: any(k.startswith(f"decoder.upsamples.{n}.resample") for k in sd) for n in ups}
    where, stage, j = {}, 0, 0
    for n in ups:  # regroup the flat decoder list into up_blocks.{stage}.{resnets.j | upsamplers.0}
        if is_up[n]:
            where[n], stage, j = f"up_blocks.{stage}.upsamplers.0", stage + 1, 0
        else:
            where[n], j = f"up_blocks.{stage}.resnets.{j}", j + 1

    def ren(k: str) -> str:
        if m := re.match(r"(encoder|decoder)\.(.*)$", k):
            part, rest = m[1], m[2]
            rest = re.sub(r"^conv1\.", "conv_in.", rest)
            rest = re.sub(r"^head\.0\.", "norm_out.", rest)
            rest = re.sub(r"^head\.2\.", "conv_out.", rest)
            rest = re.sub(r"^middle\.0\.", "mid_block.resnets.0.", rest)
            rest = re.sub(r"^middle\.1\.", "mid_block.attentions.0.", rest)
            rest = re.sub(r"^middle\.2\.", "mid_block.resnets.1.", rest)
            rest = re.sub(r"^downsamples\.", "down_blocks.", rest)
            if mm := re.match(r"upsamples\.(\d+)\.(.*)$", rest):
                rest = f"{where[int(mm[1])]}.{mm[2]}"
            return f"{part}.{_rename_block(rest)}"
        return re.sub(r"^conv1\.", "quant_conv.", re.sub(r"^conv2\.", "post_quant_conv.", k))

    return sd.renamed(ren)


def convert_wan_vae(src, cfg: WanVAEConfig | None = None, dtype="float32"):
    """Read a Wan VAE checkpoint (diffusers AutoencoderKLWan, or the original Wan2.1_VAE.pth
    names) -> (cfg, params nested dict of numpy)."""
    sd = read_state_dict(src)
    if "encoder.conv1.weight" in sd:  # original Wan layout
        sd = original_to_diffusers(sd)
    if cfg is None:
        cfg = infer_vae_config(sd)
    expected = vae_key_shapes(cfg)
    check_state_dict(sd, [Rule(k, (), s) for k, s in expected.items()], f"a Wan VAE (base_dim {cfg.base_dim})")
    params: dict = {}
    bad = []
    for k in expected:
        path, w = _to_jax(k, np.asarray(sd[k]))
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = w.astype(dtype)
        if problem := nonfinite(k, node[path[-1]]):
            bad.append(problem)
    raise_nonfinite(sd.source, bad)
    return cfg.replace(param_dtype=str(np.dtype(dtype))), params


def vae_abstract_params(cfg: WanVAEConfig):
    """ShapeDtypeStructs of the params tree for ``cfg`` (from the key table; no compute)."""
    import jax

    tree: dict = {}
    for k, shape in vae_key_shapes(cfg).items():
        path, w = _to_jax(k, np.empty(shape, np.float32))
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = jax.ShapeDtypeStruct(w.shape, np.float32)
    return tree


def is_wan_vae(keys) -> bool:
    keys = set(keys)
    return "encoder.conv_in.weight" in keys and "post_quant_conv.weight" in keys or (
        "encoder.conv1.weight" in keys and "conv2.weight" in keys and any(".downsamples." in k for k in keys))


def infer_vae_config(sd: StateDict) -> WanVAEConfig:
    if "encoder.conv_in.weight" not in sd:
        raise ConversionError(f"{sd.source}: not a diffusers Wan VAE (no encoder.conv_in.weight)")
    base = sd.shape("encoder.conv_in.weight")[0]
    z = sd.shape("post_quant_conv.weight")[0]
    n_down = 1 + max(int(m[1]) for k in sd if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k)))
    temporal = tuple(f"encoder.down_blocks.{i}.time_conv.weight" in sd for i in range(n_down)
                     if f"encoder.down_blocks.{i}.resample.1.weight" in sd)
    res_blocks = (n_down - len(temporal)) // (len(temporal) + 1)
    mult, idx = [], 0
    for _ in range(len(temporal) + 1):
        idx += res_blocks
        mult.append(sd.shape(f"encoder.down_blocks.{idx - 1}.conv2.weight")[0] // base)
        idx += 1
    return WanVAEConfig(base_dim=base, z_dim=z, dim_mult=tuple(mult), num_res_blocks=res_blocks,
                        temporal_downsample=temporal)
