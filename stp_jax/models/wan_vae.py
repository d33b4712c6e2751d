"""Wan2.1 causal 3D VAE in JAX, with the causal cache carried through ``lax.scan``.

Per docs/REFERENCE.md §3 / diffusers ``AutoencoderKLWan`` (Wan 2.1 variant): causal 3D convs
(all time padding in front), RMS norm as L2-normalise over channels x sqrt(C) x gamma,
residual blocks, one single-head spatial attention per frame in the middle blocks, 2D/3D
down- and upsampling whose time convs are skipped on the first chunk.

Chunking and cache: the encoder sees frame 0 alone, then chunks of 4 frames; the decoder
one latent frame at a time. Every causal conv keeps the last 2 frames of its input as
cache. Starting from an all-zero cache is exactly the reference's zero front padding (and
its "Rep" state of the time upsampler), so the first chunk is one static call and the rest
is a ``lax.scan`` whose carry is the list of caches: compile time and activation memory do
not grow with the number of frames.

Params are a nested dict mirroring diffusers' module names (``encoder/down_blocks/0/conv1``);
``stp_jax.convert.wan_vae`` builds it from diffusers or original Wan checkpoints.
Tensors are channels-last: video [B, T, H, W, 3] in [-1, 1]; latents [B, F, H/8, W/8, z].
Letters as in stp_jax/models/layers.py (T frames, H/W pixels).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from stp_jax.config_utils import JsonConfig
from stp_jax.controls.timing import latent_frames, raw_frames

LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
               -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
              1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig(JsonConfig):
    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dtype: str = "float32"  # compute dtype (bfloat16 halves activation memory)
    param_dtype: str = "float32"

    @property
    def encoder_dims(self):
        return [self.base_dim * m for m in (1,) + tuple(self.dim_mult)]

    @property
    def decoder_dims(self):
        return [self.base_dim * m for m in (self.dim_mult[-1],) + tuple(self.dim_mult[::-1])]


class _Cache:
    """The list of per-conv caches, in call order. ``prev`` None = first chunk (zeros)."""

    def __init__(self, prev):
        self.prev, self.new, self.i = prev, [], 0

    def take(self, like, frames):
        if self.prev is None:
            c = jnp.zeros((like.shape[0], frames) + like.shape[2:], like.dtype)
        else:
            c = self.prev[self.i]
        self.i += 1
        return c

    def put(self, c):
        self.new.append(c)


# ---------------------------------------------------------------- primitives (x [B, T, H, W, C])


def _conv3d(x, p, stride=(1, 1, 1), spatial_pad=(0, 0)):
    k = p["kernel"].astype(x.dtype)  # [kt, kh, kw, I, O]
    y = jax.lax.conv_general_dilated(
        x, k, window_strides=stride,
        padding=((0, 0), (spatial_pad[0], spatial_pad[0]), (spatial_pad[1], spatial_pad[1])),
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision=jax.lax.Precision.HIGHEST)
    return y + p["bias"].astype(x.dtype)


def causal_conv(x, p, cache: _Cache):
    """CausalConv3d with kernel (3, k, k): 2 cached frames in front, spatial padding k//2."""
    kt, kh = p["kernel"].shape[:2]
    if kt == 1:
        return _conv3d(x, p, spatial_pad=(kh // 2, kh // 2))
    prev = cache.take(x, kt - 1)
    xx = jnp.concatenate([prev.astype(x.dtype), x], axis=1)
    cache.put(xx[:, -(kt - 1):])
    return _conv3d(xx, p, spatial_pad=(kh // 2, kh // 2))


def _conv2d_frames(x, p, stride=1, pad=((1, 1), (1, 1))):
    b, t = x.shape[:2]
    y = jax.lax.conv_general_dilated(
        x.reshape((b * t,) + x.shape[2:]), p["kernel"].astype(x.dtype), window_strides=(stride, stride), padding=pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    y = y + p["bias"].astype(x.dtype)
    return y.reshape((b, t) + y.shape[1:])


def rms_norm(x, gamma):
    xf = x.astype(jnp.float32)
    n = jnp.sqrt(jnp.sum(jnp.square(xf), -1, keepdims=True))
    y = xf / jnp.maximum(n, 1e-12) * math.sqrt(x.shape[-1]) * gamma.astype(jnp.float32)
    return y.astype(x.dtype)


def resblock(x, p, cache):
    h = causal_conv(x, p["conv_shortcut"], cache) if "conv_shortcut" in p else x
    y = causal_conv(jax.nn.silu(rms_norm(x, p["norm1"]["gamma"])), p["conv1"], cache)
    y = causal_conv(jax.nn.silu(rms_norm(y, p["norm2"]["gamma"])), p["conv2"], cache)
    return y + h


def attention(x, p):
    """Single-head spatial self-attention within each frame."""
    b, t, hh, ww, c = x.shape
    y = rms_norm(x, p["norm"]["gamma"])
    qkv = _conv2d_frames(y, p["to_qkv"], pad=((0, 0), (0, 0))).reshape(b * t, hh * ww, 3 * c)
    q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
    s = jnp.einsum("blc,bsc->bls", q, k, precision=jax.lax.Precision.HIGHEST) / math.sqrt(c)  # B = batch x frames
    a = jnp.einsum("bls,bsc->blc", jax.nn.softmax(s.astype(jnp.float32), -1).astype(v.dtype), v,
                   precision=jax.lax.Precision.HIGHEST)
    o = _conv2d_frames(a.reshape(b, t, hh, ww, c), p["proj"], pad=((0, 0), (0, 0)))
    return x + o


def midblock(x, p, cache):
    x = resblock(x, p["resnets"]["0"], cache)
    x = attention(x, p["attentions"]["0"])
    return resblock(x, p["resnets"]["1"], cache)


def downsample(x, p, temporal: bool, first: bool, cache):
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))  # ZeroPad2d((0, 1, 0, 1))
    x = _conv2d_frames(x, p["resample"]["1"], stride=2, pad=((0, 0), (0, 0)))
    if not temporal:
        return x
    prev = cache.take(x, 1)
    cache.put(x[:, -1:])
    if first:  # the first chunk passes through the time conv untouched
        return x
    return _conv3d(jnp.concatenate([prev, x], axis=1), p["time_conv"], stride=(2, 1, 1))


def upsample(x, p, temporal: bool, first: bool, cache):
    if temporal:
        if first:  # frame 0 is not upsampled in time; the time conv then starts from zeros
            cache.take(x, 2)
            cache.put(jnp.zeros((x.shape[0], 2) + x.shape[2:], x.dtype))
        else:
            y = causal_conv(x, p["time_conv"], cache)  # [B, t, H, W, 2C]
            b, t, hh, ww, c2 = y.shape
            x = y.reshape(b, t, hh, ww, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, hh, ww, c2 // 2)
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest-exact 2x
    return _conv2d_frames(x, p["resample"]["1"])


# ---------------------------------------------------------------- encoder / decoder chunks


def encoder_chunk(cfg: WanVAEConfig, p, x, cache: _Cache, first: bool):
    """One chunk (1 or 4 frames) -> [B, 1, H/8, W/8, 2z] (before quant_conv)."""
    x = causal_conv(x, p["conv_in"], cache)
    idx = 0
    for i in range(len(cfg.dim_mult)):
        for _ in range(cfg.num_res_blocks):
            x = resblock(x, p["down_blocks"][str(idx)], cache)
            idx += 1
        if i != len(cfg.dim_mult) - 1:
            x = downsample(x, p["down_blocks"][str(idx)], cfg.temporal_downsample[i], first, cache)
            idx += 1
    x = midblock(x, p["mid_block"], cache)
    x = jax.nn.silu(rms_norm(x, p["norm_out"]["gamma"]))
    return causal_conv(x, p["conv_out"], cache)


def decoder_chunk(cfg: WanVAEConfig, p, z, cache: _Cache, first: bool):
    """One latent frame [B, 1, h, w, z] -> 1 (first) or 4 frames [B, t, 8h, 8w, 3]."""
    x = causal_conv(z, p["conv_in"], cache)
    x = midblock(x, p["mid_block"], cache)
    temporal_up = tuple(cfg.temporal_downsample[::-1])
    for i in range(len(cfg.dim_mult)):
        blk = p["up_blocks"][str(i)]
        for j in range(cfg.num_res_blocks + 1):
            x = resblock(x, blk["resnets"][str(j)], cache)
        if i != len(cfg.dim_mult) - 1:
            x = upsample(x, blk["upsamplers"]["0"], temporal_up[i], first, cache)
    x = jax.nn.silu(rms_norm(x, p["norm_out"]["gamma"]))
    return causal_conv(x, p["conv_out"], cache)


def _run_chunks(step, first_in, rest_in):
    """step(x, cache_prev | None, first) -> (y, cache). First chunk alone, then lax.scan."""
    y0, cache = step(first_in, None, True)
    if rest_in is None:
        return y0
    def body(c, x):  # noqa: E306
        y, c2 = step(x, c, False)
        return c2, y
    _, ys = jax.lax.scan(body, cache, rest_in)  # ys [n, B, t, ...]
    n, b, t = ys.shape[:3]
    ys = jnp.moveaxis(ys, 0, 1).reshape((b, n * t) + ys.shape[3:])
    return jnp.concatenate([y0, ys], axis=1)


def encode(cfg: WanVAEConfig, params, video, normalize: bool = True):
    """video [B, T, H, W, 3] in [-1, 1], T = 1 + 4k -> latent mean [B, 1 + k, H/8, W/8, z]
    (normalised with the published mean/std unless ``normalize=False``, which gives the
    raw mean that diffusers' ``encode`` returns)."""
    b, t, h, w, _ = video.shape
    latent_frames(t)  # 1 + 4k, or an error naming it
    if h % 8 or w % 8:
        raise ValueError(f"frame size {h}x{w} must be divisible by 8")
    x = video.astype(jnp.dtype(cfg.dtype))

    def step(chunk, prev, first):
        c = _Cache(prev)
        y = encoder_chunk(cfg, params["encoder"], chunk, c, first)
        return y, c.new

    rest = None
    if t > 1:
        rest = jnp.moveaxis(x[:, 1:].reshape(b, (t - 1) // 4, 4, h, w, 3), 1, 0)  # [k, B, 4, H, W, 3]
    enc = _run_chunks(step, x[:, :1], rest)
    enc = _conv3d(enc, params["quant_conv"])
    mu = enc[..., : cfg.z_dim].astype(jnp.float32)
    if normalize:
        mu = (mu - jnp.asarray(LATENT_MEAN)) / jnp.asarray(LATENT_STD)
    return mu


def decode(cfg: WanVAEConfig, params, latents, normalized: bool = True):
    """latents [B, F, h, w, z] -> video [B, 1 + 4(F-1), 8h, 8w, 3] clamped to [-1, 1]."""
    z = latents.astype(jnp.float32)
    if normalized:
        z = z * jnp.asarray(LATENT_STD) + jnp.asarray(LATENT_MEAN)
    z = _conv3d(z.astype(jnp.dtype(cfg.dtype)), params["post_quant_conv"])

    def step(chunk, prev, first):
        c = _Cache(prev)
        y = decoder_chunk(cfg, params["decoder"], chunk, c, first)
        return y, c.new

    f = z.shape[1]
    rest = jnp.moveaxis(z[:, 1:, None], 1, 0) if f > 1 else None  # [F-1, B, 1, h, w, z]
    out = _run_chunks(step, z[:, :1], rest)
    return jnp.clip(out.astype(jnp.float32), -1.0, 1.0)


# ---------------------------------------------------------------- spatial tiling


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if tile >= size:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap {overlap} must be in [0, tile={tile})")
    starts = list(range(0, size - tile, tile - overlap)) + [size - tile]  # the last tile ends at the edge
    return sorted(set(starts))


def _ramp(tile: int, overlap: int, start: int, size: int) -> np.ndarray:
    """1-D blend weights of one tile: linear ramps over the overlap where a neighbour exists."""
    w = np.ones(tile, np.float32)
    if overlap > 0:
        r = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        if start > 0:
            w[:overlap] = r
        if start + tile < size:
            w[-overlap:] = r[::-1]
    return w


def _tiled(fn, x, tile: int, overlap: int, in_scale: int, out_scale: int, out_frames: int, out_channels: int):
    """Apply ``fn`` to overlapping spatial tiles of x [B, T, H, W, C] and blend the outputs
    with linear ramps. Tiles live on a grid of x's size / ``in_scale`` (the latent grid);
    ``tile``/``overlap`` are in grid cells; ``fn``'s output is ``out_scale`` x the grid."""
    b, _, h, w, _ = x.shape
    gh, gw = h // in_scale, w // in_scale
    th, tw = min(tile, gh), min(tile, gw)
    out = jnp.zeros((b, out_frames, gh * out_scale, gw * out_scale, out_channels), jnp.float32)
    norm = jnp.zeros((1, 1, gh * out_scale, gw * out_scale, 1), jnp.float32)
    for y0 in _tile_starts(gh, th, overlap):
        for x0 in _tile_starts(gw, tw, overlap):
            y = fn(x[:, :, y0 * in_scale:(y0 + th) * in_scale, x0 * in_scale:(x0 + tw) * in_scale])
            wy = np.repeat(_ramp(th, overlap, y0, gh), out_scale)
            wx = np.repeat(_ramp(tw, overlap, x0, gw), out_scale)
            wt = jnp.asarray(wy[:, None] * wx[None, :])[None, None, :, :, None]
            sl = (slice(None), slice(None), slice(y0 * out_scale, (y0 + th) * out_scale),
                  slice(x0 * out_scale, (x0 + tw) * out_scale))
            out = out.at[sl].add(y.astype(jnp.float32) * wt)
            norm = norm.at[sl].add(wt)
    return out / norm


def decode_tiled(cfg: WanVAEConfig, params, latents, tile: int = 32, overlap: int = 8, normalized: bool = True):
    """decode() over overlapping latent tiles (tile/overlap in latent pixels; x8 in output):
    memory bounded by the tile for very large frames; seams blended linearly."""
    dec = jax.jit(lambda z: decode(cfg, params, z, normalized))
    out = _tiled(dec, latents, tile, overlap, 1, 8, raw_frames(latents.shape[1]), 3)
    return jnp.clip(out, -1.0, 1.0)


def encode_tiled(cfg: WanVAEConfig, params, video, tile: int = 256, overlap: int = 64, normalize: bool = True):
    """encode() over overlapping pixel tiles (multiples of 8), blended in latent space."""
    if tile % 8 or overlap % 8:
        raise ValueError(f"encode tile ({tile}) and overlap ({overlap}) must be multiples of 8")
    enc = jax.jit(lambda v: encode(cfg, params, v, normalize))
    return _tiled(enc, video, tile // 8, overlap // 8, 8, 1, latent_frames(video.shape[1]), cfg.z_dim)


# The published pipeline's tiling (docs/REFERENCE.md §6.2): decode tiles of 30 x 52 latent pixels
# at a stride of 15 x 26 (3 x 3 tiles for 480 x 832), encode tiles of 8x that in pixels; a tile
# overlapping a neighbour fades in/out over (tile - stride) output pixels with the ramp
# (i + 1) / width, the two axes combined by min, and the blend is normalised by the summed weights.
PUBLISHED_TILE = (30, 52)
PUBLISHED_STRIDE = (15, 26)


def published_tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis as published: every ``stride`` from 0, skipping a start whose
    previous tile already reached the end (the last tile may overhang the edge)."""
    return [s for s in range(0, size, stride) if not (s - stride >= 0 and s - stride + tile >= size)]


def published_ramp(length: int, first: bool, last: bool, width: int) -> np.ndarray:
    """[length] blend weights of one tile: 1, with linear ramps (i + 1) / width at the sides that
    have a neighbour (``first``/``last``: the tile touches that edge of the frame)."""
    w = np.ones(length, np.float32)
    r = (np.arange(width, dtype=np.float32) + 1) / width
    if width > 0 and not first:
        w[:width] = r[:length]
    if width > 0 and not last:
        w[-width:] = r[::-1][-length:]
    return w


def published_tiled(fn, x, tile, stride, num: int, den: int, dtype):
    """fn over the published tiles of x [B, T, H, W, C] (tile/stride in x's pixels), outputs
    (spatially num/den x the input) blended as published, accumulated in ``dtype``. Equal-shaped
    tiles go through one ``lax.map`` (one copy of fn in the program)."""
    h, w = x.shape[2:4]
    (th, tw), (sh, sw) = tile, stride
    tiles = [(y0, x0) for y0 in published_tile_starts(h, th, sh) for x0 in published_tile_starts(w, tw, sw)]
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for y0, x0 in tiles:
        groups.setdefault((min(y0 + th, h) - y0, min(x0 + tw, w) - x0), []).append((y0, x0))
    out = weight = None
    for (gh, gw), starts in groups.items():
        stack = jnp.stack([x[:, :, y0:y0 + gh, x0:x0 + gw] for y0, x0 in starts])
        ys = jax.lax.map(fn, stack)  # [N, B, T', gh*num/den, gw*num/den, C']
        if out is None:
            b, t_out, _, _, c_out = ys.shape[1:]
            out = jnp.zeros((b, t_out, h * num // den, w * num // den, c_out), dtype)
            weight = jnp.zeros((1, 1, h * num // den, w * num // den, 1), dtype)
        for y, (y0, x0) in zip(ys, starts):
            wy = published_ramp(gh * num // den, y0 == 0, y0 + th >= h, (th - sh) * num // den)
            wx = published_ramp(gw * num // den, x0 == 0, x0 + tw >= w, (tw - sw) * num // den)
            m = jnp.asarray(np.minimum(wy[:, None], wx[None, :]), dtype)[None, None, :, :, None]
            sl = (slice(None), slice(None), slice(y0 * num // den, y0 * num // den + y.shape[2]),
                  slice(x0 * num // den, x0 * num // den + y.shape[3]))
            out = out.at[sl].add((y.astype(dtype) * m).astype(dtype))
            weight = weight.at[sl].add(m)
    return out / weight


def decode_tiles(cfg: WanVAEConfig, params, latents, tile=PUBLISHED_TILE, stride=PUBLISHED_STRIDE,
                 normalized: bool = True):
    """decode() over the published tiles (latent pixels), blended as published in the compute
    dtype (bf16 buffers when the VAE runs in bf16, as published); clamped to [-1, 1]."""
    out = published_tiled(lambda z: decode(cfg, params, z, normalized), latents, tile, stride, 8, 1,
                           jnp.dtype(cfg.dtype))
    return jnp.clip(out.astype(jnp.float32), -1.0, 1.0)


def encode_tiles(cfg: WanVAEConfig, params, video, tile=PUBLISHED_TILE, stride=PUBLISHED_STRIDE,
                 normalize: bool = True):
    """encode() over the published tiles (given in latent pixels, x8 in the video), blended as published."""
    out = published_tiled(lambda v: encode(cfg, params, v, normalize), video, (tile[0] * 8, tile[1] * 8),
                           (stride[0] * 8, stride[1] * 8), 1, 8, jnp.dtype(cfg.dtype))
    return out.astype(jnp.float32)


def latent_stats() -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(LATENT_MEAN, np.float32), np.asarray(LATENT_STD, np.float32)


@dataclasses.dataclass(frozen=True)
class WanVAE:
    """The model object ``load_pretrained`` returns for a converted VAE folder."""
    cfg: WanVAEConfig

    def encode(self, params, video, normalize: bool = True):
        return encode(self.cfg, params, video, normalize)

    def decode(self, params, latents, normalized: bool = True):
        return decode(self.cfg, params, latents, normalized)

    def decode_tiles(self, params, latents):
        return decode_tiles(self.cfg, params, latents)

    def encode_tiles(self, params, video):
        return encode_tiles(self.cfg, params, video)
