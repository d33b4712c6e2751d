"""SpaceTimePilot's per-block conditioning: animation time and camera.

Letters as in layers.py: B batch, T raw frames, F latent frames (F = 1 + (T-1)/4),
D model dim, Q sinusoid width, G GroupNorm groups, X chunks of 4 raw frames.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from stp_jax.controls.timing import TIME_FACTOR
from stp_jax.models.layers import MLP, Dense, Dtype

CHUNK = TIME_FACTOR  # raw frames per latent frame after the first


def temporal_chunks(num_raw_frames: int) -> int:
    """Latent frames produced from T raw frames: 1 + ceil((T-1)/4)."""
    return 1 + -(-(num_raw_frames - 1) // CHUNK)


class GroupNorm1D(nn.Module):
    """torch.nn.GroupNorm on [N, L, D]: statistics over (D/G channels x L) per group."""
    groups: int
    eps: float = 1e-5
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [N, L, D]
        n, l, d = x.shape
        if d % self.groups:
            raise ValueError(f"GroupNorm: {d} channels not divisible by {self.groups} groups")
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (d,), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,), self.param_dtype)
        xf = x.astype(jnp.float32).reshape(n, l, self.groups, d // self.groups)
        mean = xf.mean(axis=(1, 3), keepdims=True)
        var = jnp.square(xf - mean).mean(axis=(1, 3), keepdims=True)
        y = ((xf - mean) * jax.lax.rsqrt(var + self.eps)).reshape(n, l, d)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


class CausalConv1D(nn.Module):
    """Conv1d(k=3, stride=2) with the whole padding (2 zeros) in front, on [N, L, D]."""
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [N, L, D] -> [N, floor((L-1)/2)+1, D]
        d = x.shape[-1]
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("conv_k", "embed", "mlp")),
                            (3, d, self.features), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)), (self.features,), self.param_dtype)
        # the three taps as one matmul: XLA:CPU runs the strided conv's weight gradient ~10x slower than a dot
        lo = (x.shape[1] - 1) // 2 + 1
        xp = jnp.pad(x.astype(self.dtype), ((0, 0), (2, 0), (0, 0)))  # [N, L+2, D]
        taps = jnp.stack([xp[:, k: k + 2 * lo - 1: 2] for k in range(3)], axis=2)  # [N, Lo, 3, D]
        y = jnp.einsum("nokd,kdf->nof", taps, kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


class TemporalDownsampler(nn.Module):
    """[B, T, D] per-raw-frame features -> [B, F, D] per-latent-frame features.

    Frame 0 passes through. Frames 1..T-1 are cut into independent chunks of 4 (the last
    replicate-padded); each chunk: conv(4->2), GroupNorm, SiLU, conv(2->1), GroupNorm, SiLU.
    """
    groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):  # [B, T, D]
        b, t, d = x.shape
        first, rest = x[:, :1], x[:, 1:]
        if t == 1:
            return first
        x_chunks = temporal_chunks(t) - 1
        pad = x_chunks * CHUNK - (t - 1)
        if pad:
            rest = jnp.concatenate([rest, jnp.repeat(rest[:, -1:], pad, axis=1)], axis=1)
        h = rest.reshape(b * x_chunks, CHUNK, d)  # [B*X, 4, D]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = CausalConv1D(d, name="conv1", **kw)(h)  # [B*X, 2, D]
        h = jax.nn.silu(GroupNorm1D(self.groups, param_dtype=self.param_dtype, name="norm1")(h))
        h = CausalConv1D(d, name="conv2", **kw)(h)  # [B*X, 1, D]
        h = jax.nn.silu(GroupNorm1D(self.groups, param_dtype=self.param_dtype, name="norm2")(h))
        return jnp.concatenate([first.astype(h.dtype), h.reshape(b, x_chunks, d)], axis=1)  # [B, F, D]


class AnimationTimeEmbedding(nn.Module):
    """Raw frame-index sinusoids [B, T, Q] -> [B, F, D]: MLP (Linear, SiLU, Linear) + downsampler.

    The MLP's last layer starts at zero, so a fresh time branch adds nothing to a
    pretrained Wan/ReCamMaster model until it is trained.
    """
    dim: int
    groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t_sin):  # [B, T, Q]
        h = MLP(self.dim, self.dim, "silu", ("freq", "mlp"), ("mlp", "embed"), dtype=self.dtype,
                param_dtype=self.param_dtype, out_init=nn.initializers.zeros, name="frame_time_embedding")(t_sin)
        return TemporalDownsampler(self.groups, self.dtype, self.param_dtype, name="temporal_downsampler")(h)


def camera_encoder(dim: int, dtype, param_dtype, name: str = "cam_encoder") -> Dense:
    """Linear 12 -> D, zero-initialised (ReCamMaster): a fresh encoder adds nothing."""
    return Dense((dim,), ("cam", "embed"), dtype=dtype, param_dtype=param_dtype,
                 kernel_init=nn.initializers.zeros, name=name)
