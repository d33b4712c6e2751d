"""One attention entry point for every backend and for context parallelism.

    attention(q, k, v, backend=..., context_parallel=...)   q [B, Lq, N, K], k/v [B, Lk, N, K]

Backends (per-device kernels):
  xla     jax.nn.dot_product_attention(implementation="xla"); runs everywhere.
  cudnn   jax.nn.dot_product_attention(implementation="cudnn"); GPU, bf16/fp16 only.
  splash  the Pallas TPU splash-attention kernel; on other platforms it runs in Pallas
          interpret mode (slow; for tests). Token counts are padded to the block size
          and the padding is masked out with segment ids.
  blockwise  exact flash-style attention in plain JAX: query blocks against all keys as
          2-D matmuls, a custom VJP that recomputes scores from the saved log-sum-exp.
          Memory O(L * block) instead of O(L^2); the fast choice on CPU for long sequences.
          A query block holds as many rows (a power of two, 128 at least) as keep its [rows, Lk]
          float32 scores within 2^20 elements (4 MiB): 1024 rows at 1024 keys, 256 at 4096.
  auto    splash on TPU, cudnn on GPU for 16-bit inputs, blockwise on CPU from 1024
          query tokens, xla otherwise.

Context parallelism over the ``context`` mesh axis (tokens sharded):
  none     the kernel sees the whole sequence (shard_map gathers it if it was sharded).
  ulysses  all-to-all: tokens-sharded -> heads-sharded, local attention, and back.
           Needs the local head count divisible by the context axis size.
  ring     K/V blocks travel around the ring (ppermute) while each device keeps its
           queries; partial results are merged with a running log-sum-exp.

When a mesh with more than one device is active (``jax.set_mesh``) the kernel runs inside
``jax.shard_map`` with batch over (data, fsdp), heads over tensor, tokens over context,
as given by the logical-axis rules in stp_jax.parallel.mesh.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning
from jax.sharding import PartitionSpec as P

from stp_jax.models.kernels import row_max, row_sum, target_platform, transposed
from stp_jax.parallel import mesh as mesh_lib

BACKENDS = ("auto", "xla", "cudnn", "splash", "blockwise")
BLOCKWISE_MIN_TOKENS = 1024
CONTEXT_PARALLEL = ("none", "ulysses", "ring")


def resolve_backend(backend: str, dtype, q_tokens: int = 0) -> str:
    """The concrete kernel for ``backend`` on this platform, dtype and query length."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r} is unknown; expected one of {BACKENDS}")
    if backend != "auto":
        return backend
    platform = target_platform()
    if platform == "tpu":
        return "splash"
    if platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
        return "cudnn"
    if platform == "cpu" and q_tokens >= BLOCKWISE_MIN_TOKENS:
        return "blockwise"
    return "xla"


# ---------------------------------------------------------------- per-device kernels


def _xla(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


def _cudnn(q, k, v):
    if jnp.dtype(q.dtype) not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention backend 'cudnn' needs bf16 or fp16 inputs, got {q.dtype}; "
                         "set model dtype to bfloat16 or use backend 'xla'")
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _splash_kernel(num_heads: int, lq: int, lk: int, block: int, interpret: bool):
    # Built per trace: the kernel holds mask-info arrays, which must not outlive a trace.
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask(tuple(sm.FullMask((lq, lk)) for _ in range(num_heads)))
    bs = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                       block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return sk.make_splash_mha(mask, block_sizes=bs, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash(q, k, v, *, block: int = 512, interpret: bool | None = None):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    if interpret is None:
        interpret = target_platform() != "tpu"
    b, lq, n, kd = q.shape
    lk = k.shape[1]
    blk = min(block, _round_up(max(lq, lk), 128))
    pq, pk = _round_up(lq, blk), _round_up(lk, blk)
    scale = 1.0 / math.sqrt(kd)
    # [B, L, N, K] -> [B, N, L, K], padded; splash does not scale the logits itself.
    qt = jnp.pad((q * scale).transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, pq - lq), (0, 0)))
    kt = jnp.pad(k.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, pk - lk), (0, 0)))
    vt = jnp.pad(v.transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, pk - lk), (0, 0)))
    seg = sk.SegmentIds(q=(jnp.arange(pq) >= lq).astype(jnp.int32), kv=(jnp.arange(pk) >= lk).astype(jnp.int32))
    kernel = _splash_kernel(n, pq, pk, blk, bool(interpret))
    out = jax.vmap(lambda a, b_, c: kernel(a, b_, c, segment_ids=seg))(qt, kt, vt)
    return out[:, :, :lq].transpose(0, 2, 1, 3)


# ---- blockwise (flash-style) attention on [H, nb, bq, K] query blocks, [H, Lk, K] keys


def _blockwise_fwd_head(qb, k, v):
    def blk(qq):  # [bq, K] (pre-scaled); scores and statistics in float32
        s = jnp.matmul(qq, k.T, preferred_element_type=jnp.float32)  # [bq, Lk]
        m = row_max(s)  # [bq, 1]
        p = jnp.exp(s - m)
        l = row_sum(p)
        o = jnp.matmul(p.astype(v.dtype), v, preferred_element_type=jnp.float32) / l
        return o.astype(qq.dtype), (m + jnp.log(l))[:, 0]

    return jax.lax.map(blk, qb)


@jax.custom_vjp
def _blockwise_core(qb, k, v):
    return jax.lax.map(lambda a: _blockwise_fwd_head(*a), (qb, k, v))[0]


def _blockwise_core_fwd(qb, k, v):
    o, lse = jax.lax.map(lambda a: _blockwise_fwd_head(*a), (qb, k, v))
    return o, (qb, k, v, o, lse)


def _blockwise_core_bwd(res, do):
    qb, k, v, o, lse = res
    delta = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), -1)  # [H, nb, bq]
    f32 = dict(preferred_element_type=jnp.float32)

    def head(args):
        qh, kh, vh, doh, lseh, dh = args

        def step(carry, xs):  # dK and dV accumulate transposed, [K, Lk]: P^T dO as (dO^T P), the fast dot form
            dkt, dvt = carry
            qq, dd, ll, de = xs
            p = jnp.exp(jnp.matmul(qq, kh.T, **f32) - ll[:, None])  # [bq, Lk]
            dvt = dvt + jnp.matmul(transposed(dd), p.astype(dd.dtype), **f32)
            ds = p * (jnp.matmul(dd, vh.T, **f32) - de[:, None])  # [bq, Lk]
            dkt = dkt + jnp.matmul(transposed(qq), ds.astype(qq.dtype), **f32)
            return (dkt, dvt), jnp.matmul(ds.astype(kh.dtype), kh, **f32).astype(qq.dtype)

        zeros = jnp.zeros(kh.shape[::-1], jnp.float32)
        (dkt, dvt), dq = jax.lax.scan(step, (zeros, zeros), (qh, doh, lseh, dh))
        dkt, dvt = jax.lax.optimization_barrier((dkt, dvt))  # keep the final transposes out of the dots
        return dq, dkt.T.astype(kh.dtype), dvt.T.astype(vh.dtype)

    return jax.lax.map(head, (qb, k, v, do, lse, delta))


_blockwise_core.defvjp(_blockwise_core_fwd, _blockwise_core_bwd)


BLOCKWISE_SCORES = 1 << 20  # elements of one query block's [rows, Lk] scores (4 MiB in float32)


def query_block(lk: int) -> int:
    """Rows per blockwise query block against ``lk`` keys: the most, a power of two and at least 128, whose
    scores fit BLOCKWISE_SCORES. On this repo's 2-core CPU (docs/BENCHMARKS.md, "Query blocks") fewer,
    larger blocks win until the block leaves the cache: at 1024 keys one block of 1024 beats four of 256 by
    6 %, at 2048 keys 256-1024 are even and 2048 is 6 % slower, at 4096 keys 256-512 lead."""
    rows = 128
    while 2 * rows * lk <= BLOCKWISE_SCORES:
        rows *= 2
    return rows


def _blockwise(q, k, v, *, block: int | None = None):
    b, lq, n, kd = q.shape
    lk = k.shape[1]
    bq = min(block or query_block(lk), lq)
    nb = -(-lq // bq)
    # [B, L, N, K] -> [B*N, nb, bq, K]; padded query rows are computed and dropped
    qt = jnp.pad((q * (1.0 / math.sqrt(kd))).transpose(0, 2, 1, 3), ((0, 0), (0, 0), (0, nb * bq - lq), (0, 0)))
    kt = k.transpose(0, 2, 1, 3).reshape(b * n, lk, kd)
    vt = v.transpose(0, 2, 1, 3).reshape(b * n, lk, kd)
    o = _blockwise_core(qt.reshape(b * n, nb, bq, kd), kt, vt)
    return o.reshape(b, n, nb * bq, kd)[:, :, :lq].transpose(0, 2, 1, 3)


def _local_kernel(backend: str, splash_block: int, interpret):
    if backend == "xla":
        return _xla
    if backend == "cudnn":
        return _cudnn
    if backend == "splash":
        return functools.partial(_splash, block=splash_block, interpret=interpret)
    if backend == "blockwise":
        return _blockwise
    raise ValueError(f"attention backend {backend!r} is unknown")


# ---------------------------------------------------------------- context parallelism


def _ulysses(q, k, v, *, axis: str, kernel):
    # tokens-sharded [B, L/c, N, K] -> heads-sharded [B, L, N/c, K]
    a2a = functools.partial(jax.lax.all_to_all, axis_name=axis, tiled=True)
    q, k, v = (a2a(t, split_axis=2, concat_axis=1) for t in (q, k, v))
    out = kernel(q, k, v)
    return a2a(out, split_axis=1, concat_axis=2)


def _ring(q, k, v, *, axis: str, size: int):
    """Blockwise exact attention; K/V rotate around the ``axis`` ring, q stays put."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    qf = q.astype(jnp.float32) * scale
    b, lq, n, _ = q.shape
    o = jnp.zeros(q.shape, jnp.float32)  # [B, Lq, N, K] un-normalised
    m = jnp.full((b, n, lq), -jnp.inf, jnp.float32)  # running max
    l = jnp.zeros((b, n, lq), jnp.float32)  # running sum
    perm = [(i, (i + 1) % size) for i in range(size)]
    for step in range(size):
        s = jnp.einsum("blnk,bsnk->bnls", qf, k.astype(jnp.float32))
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - m_new[..., None])
        corr = jnp.exp(m - m_new)
        l = l * corr + p.sum(-1)
        o = o * corr.transpose(0, 2, 1)[..., None] + jnp.einsum("bnls,bsnk->blnk", p, v.astype(jnp.float32))
        m = m_new
        if step + 1 < size:
            k, v = jax.lax.ppermute((k, v), axis, perm)
    return (o / l.transpose(0, 2, 1)[..., None]).astype(q.dtype)


# ---------------------------------------------------------------- entry point


def _activation_axes(mesh):
    """Mesh axes for (batch, tokens, heads) from the active logical rules, restricted to mesh."""
    rules = nn_partitioning.get_axis_rules() or mesh_lib.logical_rules()
    names = set(mesh.axis_names)

    def resolve(logical):
        ax = dict(rules).get(logical)
        if ax is None:
            return None
        ax = (ax,) if isinstance(ax, str) else tuple(ax)
        ax = tuple(a for a in ax if a in names)
        return ax if ax else None

    return resolve("activation_batch"), resolve("activation_length"), resolve("activation_heads")


def attention(q, k, v, *, backend: str = "auto", context_parallel: str = "none",
              splash_block: int = 512, interpret: bool | None = None, cross: bool = False):
    """Softmax(q k^T / sqrt(K)) v, no mask. q [B, Lq, N, K]; k, v [B, Lk, N, K] -> [B, Lq, N, K].

    ``cross``: k, v are short (the text) and whole on every device, so queries keep their token
    sharding (no gather of the video tokens, no communication); ``context_parallel`` is unused."""
    if context_parallel not in CONTEXT_PARALLEL:
        raise ValueError(f"context_parallel {context_parallel!r} is unknown; expected one of {CONTEXT_PARALLEL}")
    kernel = _local_kernel(resolve_backend(backend, q.dtype, q.shape[1]), splash_block, interpret)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return kernel(q, k, v)

    batch_ax, len_ax, head_ax = _activation_axes(mesh)
    cp_size = mesh_lib.mesh_axis_size(mesh, len_ax)
    if cross:
        q_spec, kv_spec = P(batch_ax, len_ax, head_ax, None), P(batch_ax, None, head_ax, None)
        if q.shape[1] % cp_size:
            q_spec = kv_spec  # tokens not divisible over the axis: gather them (what the partitioner would do)
        return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec,
                             check_vma=False)(q, k, v)
    if context_parallel == "none" or cp_size == 1:
        spec = P(batch_ax, None, head_ax, None)
        body = kernel
    else:
        if len_ax is None or len(len_ax) != 1:
            raise ValueError(f"context parallelism needs tokens on exactly one mesh axis, got {len_ax}")
        spec = P(batch_ax, len_ax[0], head_ax, None)
        for name, t in (("queries", q), ("keys", k)):
            if t.shape[1] % cp_size:
                raise ValueError(f"context parallelism over {cp_size} devices needs the {name}' token "
                                 f"count ({t.shape[1]}) to be a multiple of {cp_size}")
        if context_parallel == "ulysses":
            local_heads = q.shape[2] // mesh_lib.mesh_axis_size(mesh, head_ax)
            if local_heads % cp_size:
                raise ValueError(f"ulysses context parallelism needs the per-device head count "
                                 f"({local_heads}) divisible by the context axis size ({cp_size}); use 'ring'")
            body = functools.partial(_ulysses, axis=len_ax[0], kernel=kernel)
        else:
            body = functools.partial(_ring, axis=len_ax[0], size=cp_size)
    return jax.shard_map(body, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)
