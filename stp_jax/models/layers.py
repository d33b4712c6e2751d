"""Building blocks shared by the DiT: sinusoids, 3D RoPE, norms, GELU, dense layers, AdaLN.

Shape letters of the whole package (capitals in shape comments, the same letters in lower
case in einsum strings); a file that needs more names them in its docstring:
  B batch        F latent frames     T raw frames (animation times)   H/W rows/cols (tokens or pixels)
  L (query) tokens   S key tokens (text tokens in cross-attention)   D model dim
  N heads        K head dim          C channels       E text-encoder width   M FFN hidden
  P flattened patch vector (pt*ph*pw*C)   Q sinusoid width (freq_dim)   V cameras (views)
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from stp_jax.models import kernels

Dtype = jnp.dtype
Initializer = nn.initializers.Initializer


def sinusoid(positions: jax.Array, dim: int, base: float = 10000.0) -> jax.Array:
    """Wan's sinusoidal embedding: [cos | sin] of ``positions * base**(-i/half)``.

    positions: [...] float (timesteps on the 0..1000 scale, or raw frame indices).
    Returns [..., dim] float32.
    """
    if dim % 2:
        raise ValueError(f"sinusoid width must be even, got {dim}")
    half = dim // 2
    freqs = jnp.exp(-math.log(base) * jnp.arange(half, dtype=jnp.float32) / half)
    args = positions.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _top_bits(x64: np.ndarray, bits: int) -> np.ndarray:
    """float64 values cut to their ``bits`` leading significant bits (exact in float32)."""
    m, e = np.frexp(np.asarray(x64, np.float64))
    return np.ldexp(np.trunc(m * 2.0 ** bits), e - bits).astype(np.float32)


def _split3(x64: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 -> three float32 parts (12, 12 and 24 leading bits) whose sum is x to ~2^-48."""
    a = _top_bits(x64, 12)
    rest = np.asarray(x64, np.float64) - a
    b = _top_bits(rest, 12)
    return a, b, (rest - b).astype(np.float32)


def sinusoid_f64(positions: jax.Array, dim: int, base: float = 10000.0) -> jax.Array:
    """``sinusoid`` as the published pipeline computes it, in float64 (docs/REFERENCE.md §6.2),
    emulated in float32 arithmetic (JAX runs without x64): the frequencies are split on the host
    into exact 12-bit pieces, positions into two 12-bit halves, so every large product is exact,
    and the angle is reduced modulo 2*pi with a three-piece 2*pi before cos/sin. Agrees with
    float64 to ~5e-7 (plain float32: ~6e-5 at positions near 1000) for |positions| < 2.5e4.
    positions [...] -> [..., dim] float32."""
    if dim % 2:
        raise ValueError(f"sinusoid width must be even, got {dim}")
    half = dim // 2
    f1, f2, f3 = (jnp.asarray(v) for v in _split3(base ** (-np.arange(half, dtype=np.float64) / half)))
    c1, c2, c3 = (jnp.asarray(v) for v in _split3(np.array(2.0 * np.pi)))
    p = positions.astype(jnp.float32)[..., None]  # [..., 1]
    hi = jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(p, jnp.uint32) & jnp.uint32(0xFFFFF000),
                                      jnp.float32)  # 12 leading bits (sign, exponent, 11 mantissa bits)
    lo = p - hi  # exact: the remaining 12 bits
    k = jnp.round(p * (f1 + f2) / c1)  # whole turns (< 4096: the products below stay exact)
    big = hi * f1 - k * c1  # two exact products of nearly equal size: an exact difference
    small = (hi * f2 - k * c2) + lo * f1 + (lo * f2 + (p * f3 - k * c3))
    ang = big + small  # the angle modulo 2*pi, within ~3e-7
    return jnp.concatenate([jnp.cos(ang), jnp.sin(ang)], axis=-1)


# ---------------------------------------------------------------- 3D rotary embedding


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Real dims of head_dim given to (frame, height, width): 128 -> (44, 42, 42)."""
    hw = 2 * (head_dim // 6)
    t = head_dim - 2 * hw
    if t <= 0 or t % 2 or head_dim % 2:
        raise ValueError(f"head_dim {head_dim} cannot be split into even 3D RoPE parts")
    return t, hw, hw


def _inv_freq(dim: int, theta: float) -> np.ndarray:
    """[dim/2] RoPE frequencies of one axis (float64)."""
    return 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64)[: dim // 2] / dim)


def _axis_angles(n: int, dim: int, theta: float) -> np.ndarray:
    """[n, dim/2] rotation angles for positions 0..n-1 (float64, host-side)."""
    return np.arange(n, dtype=np.float64)[:, None] * _inv_freq(dim, theta)[None, :]


def rope_tables(grid: Sequence[int], head_dim: int, theta: float = 10000.0,
                frame_pos: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """cos, sin tables [L, K/2] for a (F, H, W) token grid, L = F*H*W in raster order.

    Per-axis angles are computed in float64 on the host (as the reference does) and only
    broadcast on device, so no L-sized constant is embedded in the program. ``frame_pos``
    [B, F] (float) replaces the frame indices 0..F-1 by per-clip positions (DiTConfig.rope_frames
    "time"); its angles are computed on device in float32 and the tables are [B, L, K/2].
    """
    f, h, w = grid
    dt, dh, dw = rope_split(head_dim)
    lead = () if frame_pos is None else (frame_pos.shape[0],)
    parts = []
    for axis, (n, d, shape) in enumerate(((f, dt, (f, 1, 1)), (h, dh, (1, h, 1)), (w, dw, (1, 1, w)))):
        if axis == 0 and frame_pos is not None:
            if frame_pos.shape != (*lead, f):
                raise ValueError(f"frame_pos has shape {tuple(frame_pos.shape)}; expected [B, {f}]")
            ang = frame_pos.astype(jnp.float32)[..., None] * jnp.asarray(_inv_freq(d, theta), jnp.float32)  # [B, F, d/2]
            cos, sin = jnp.cos(ang).reshape(*lead, *shape, d // 2), jnp.sin(ang).reshape(*lead, *shape, d // 2)
        else:
            ang = _axis_angles(n, d, theta)
            cos = jnp.asarray(np.cos(ang), jnp.float32).reshape(*shape, d // 2)
            sin = jnp.asarray(np.sin(ang), jnp.float32).reshape(*shape, d // 2)
        full = (*lead, f, h, w, d // 2)
        parts.append((jnp.broadcast_to(cos, full), jnp.broadcast_to(sin, full)))
    cos = jnp.concatenate([p[0] for p in parts], axis=-1).reshape(*lead, f * h * w, head_dim // 2)
    sin = jnp.concatenate([p[1] for p in parts], axis=-1).reshape(*lead, f * h * w, head_dim // 2)
    return cos, sin


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [B, L, N, K] by [L, K/2] or [B, L, K/2] angles."""
    dtype = x.dtype
    xp = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    x0, x1 = xp[..., 0], xp[..., 1]
    c, s = (cos[None], sin[None]) if cos.ndim == 2 else (cos, sin)
    c, s = c[:, :, None, :], s[:, :, None, :]
    out = jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)
    return out.reshape(x.shape).astype(dtype)


def pose_mats(cam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(inv(P)^T, P) [..., 4, 4] of rigid 3x4 poses given as 12 numbers row-major [..., 12]
    (controls.camera.pack12): what q and k are multiplied by so that q.k sees inv(P_i) @ P_j."""
    rt = cam.reshape(*cam.shape[:-1], 3, 4).astype(jnp.float32)
    rot_t, tr = jnp.swapaxes(rt[..., :3], -1, -2), rt[..., 3:]  # R^T [..., 3, 3], t [..., 3, 1]
    last = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0]), (*rt.shape[:-2], 1, 4))
    pose = jnp.concatenate([rt, last], axis=-2)
    inv = jnp.concatenate([jnp.concatenate([rot_t, -rot_t @ tr], -1), last], axis=-2)  # [[R^T, -R^T t], [0, 1]]
    return jnp.swapaxes(inv, -1, -2), pose


def apply_pose(x: jax.Array, mats: jax.Array, dims: int) -> jax.Array:
    """Multiply each 4-wide block of the first ``dims`` real dims of x [B, L, N, K] by the token's
    4x4 matrix mats [B, L, 4, 4] (camera-relative attention, DiTConfig.cam_heads)."""
    b, l, n, k = x.shape
    blocks = x[..., :dims].astype(jnp.float32).reshape(b, l, n, dims // 4, 4)
    blocks = jnp.einsum("blij,blngj->blngi", mats.astype(jnp.float32), blocks)  # [B, L, N, dims/4, 4]
    return jnp.concatenate([blocks.reshape(b, l, n, dims).astype(x.dtype), x[..., dims:]], axis=-1)


# ---------------------------------------------------------------- norms


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm without affine, computed in float32 (Wan's FP32LayerNorm)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class AffineLayerNorm(nn.Module):
    """LayerNorm with scale and bias (Wan's cross-attention norm), float32 math."""
    eps: float = 1e-6
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (d,), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), (d,), self.param_dtype)
        y = layer_norm(x, self.eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(x.dtype)


class HeadRMSNorm(nn.Module):
    """RMSNorm over the full N*K width (across heads) of x [B, L, N, K]; scale stored [N, K]."""
    eps: float = 1e-6
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, k = x.shape[-2:]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("heads", "kv")), (n, k), self.param_dtype)
        xf = x.astype(jnp.float32)
        ms = jnp.mean(jnp.square(xf), axis=(-2, -1), keepdims=True)
        y = xf * jax.lax.rsqrt(ms + self.eps)
        return (y * scale.astype(jnp.float32)).astype(x.dtype)


# ---------------------------------------------------------------- activations

_GELU_C = np.float32(math.sqrt(2.0 / math.pi))
_GELU_A = np.float32(0.044715)


@jax.custom_vjp
def gelu_tanh(x: jax.Array) -> jax.Array:
    """GELU, tanh approximation: jax.nn.gelu(x, approximate=True), torch's gelu(approximate="tanh").

    The same forward; the backward keeps only x and recomputes the tanh. Autodiff of the formula
    saves four arrays of x's size, which in the layer scan are four stacked [layers, B, L, M]
    buffers to zero-fill, write and copy every step (docs/BENCHMARKS.md, "GELU's residuals")."""
    return jax.nn.gelu(x, approximate=True)


def _gelu_tanh_fwd(x):
    return jax.nn.gelu(x, approximate=True), x


def _gelu_tanh_and_slope(x):
    """gelu_tanh(x) and its derivative, in float32, from one tanh."""
    xf = x.astype(jnp.float32)
    t = jnp.tanh(_GELU_C * (xf + _GELU_A * xf * xf * xf))
    d = 0.5 * (1.0 + t) + 0.5 * xf * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_A * xf * xf)  # d gelu / dx
    return 0.5 * xf * (1.0 + t), d


def _gelu_tanh_bwd(x, g):
    return ((g.astype(jnp.float32) * _gelu_tanh_and_slope(x)[1]).astype(x.dtype),)


gelu_tanh.defvjp(_gelu_tanh_fwd, _gelu_tanh_bwd)


# ---------------------------------------------------------------- dense layers


@jax.custom_vjp
def gelu_tanh_dense(h: jax.Array, kernel: jax.Array) -> jax.Array:
    """kernels.dense(gelu_tanh(h), kernel, 1): h [..., I], kernel [I, O] -> [..., O]; the FFN's second product.

    The same forward; the backward keeps only h (not also gelu(h), the product's input) and recomputes
    gelu(h) and its slope from one tanh: one [layers, B, L, ffn] residual fewer in the layer scan."""
    return kernels.dense(gelu_tanh(h), kernel, 1)


def _gelu_tanh_dense_fwd(h, kernel):
    return gelu_tanh_dense(h, kernel), (h, kernel)


def _gelu_tanh_dense_bwd(res, dy):
    h, kernel = res
    a, slope = _gelu_tanh_and_slope(h)
    da, dk = jax.vjp(lambda a_, k_: kernels.dense(a_, k_, 1), a.astype(h.dtype), kernel)[1](dy)
    return (da.astype(jnp.float32) * slope).astype(h.dtype), dk


gelu_tanh_dense.defvjp(_gelu_tanh_dense_fwd, _gelu_tanh_dense_bwd)


class Dense(nn.Module):
    """y = x @ kernel + bias with a kernel of any shape ``in_shape + out_shape``.

    ``axes`` are the logical names of the kernel axes; the bias takes the output ones.
    Compute in ``dtype`` (inputs and weights cast), parameters kept in ``param_dtype``.
    """
    out_shape: Sequence[int]
    axes: Sequence[str | None]
    n_in: int = 1  # how many trailing input axes are contracted
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    bias_init: Initializer = nn.initializers.zeros
    input_act: str | None = None  # "gelu_tanh": y = gelu_tanh(x) @ kernel + bias (gelu_tanh_dense)

    @nn.compact
    def __call__(self, x):
        in_shape = tuple(x.shape[-self.n_in:])
        out_shape = tuple(self.out_shape)
        if len(self.axes) != len(in_shape) + len(out_shape):
            raise ValueError(f"{self.name}: {len(self.axes)} axis names for a kernel of rank "
                             f"{len(in_shape) + len(out_shape)}")
        kshape = in_shape + out_shape
        fan_in, fan_out = int(np.prod(in_shape)), int(np.prod(out_shape))

        def kinit(key, shape, dtype):  # initialise as the equivalent 2D matrix
            return self.kernel_init(key, (fan_in, fan_out), dtype).reshape(shape)

        kernel = self.param("kernel", nn.with_logical_partitioning(kinit, tuple(self.axes)), kshape, self.param_dtype)
        if self.input_act == "gelu_tanh" and self.n_in == 1:
            y = gelu_tanh_dense(x.astype(self.dtype), kernel.astype(self.dtype))
        elif self.input_act is None:
            y = kernels.dense(x.astype(self.dtype), kernel.astype(self.dtype), self.n_in)
        else:
            raise ValueError(f"{self.name}: input_act {self.input_act!r} (with n_in {self.n_in}) is not supported")
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, tuple(self.axes[self.n_in:])),
                              out_shape, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class MLP(nn.Module):
    """Linear -> activation -> Linear (Wan's FFN, text and time embedders)."""
    hidden: int
    out: int
    act: str  # "gelu_tanh" | "silu"
    axes_in: tuple[str, str]
    axes_out: tuple[str, str]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    out_init: Initializer = nn.initializers.xavier_uniform()
    hidden_constraint: tuple | None = None

    @nn.compact
    def __call__(self, x):
        h = Dense((self.hidden,), self.axes_in, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(x)
        fused = self.act == "gelu_tanh"  # fc2 applies the GELU itself (gelu_tanh_dense: one residual fewer)
        if not fused:
            h = jax.nn.silu(h)
        if self.hidden_constraint is not None:  # the same sharding before or after the activation
            h = nn.with_logical_constraint(h, self.hidden_constraint)
        return Dense((self.out,), self.axes_out, dtype=self.dtype, param_dtype=self.param_dtype,
                     kernel_init=self.out_init, input_act="gelu_tanh" if fused else None, name="fc2")(h)


def modulate(x_norm: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """AdaLN: x * (1 + scale) + shift, float32 math. x [B, L, D]; shift/scale [B, 1, D]."""
    return x_norm.astype(jnp.float32) * (1.0 + scale.astype(jnp.float32)) + shift.astype(jnp.float32)


def identity_init(key, shape, dtype):
    """Identity matrix initialiser for a square [D, D] kernel (ReCamMaster's projector)."""
    del key
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"identity_init needs a square 2D shape, got {shape}")
    return jnp.eye(shape[0], dtype=dtype)
