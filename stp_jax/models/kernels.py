"""The platform a trace compiles for, and matrix products written in the forms XLA:CPU runs fast.

    compile_for("tpu")       pick kernels for another platform (AOT for a TPU topology on a CPU host)
    target_platform()        "cpu" | "gpu" | "tpu": that platform, else this process's devices'
    matmul_tn(a, b)          a^T b over the leading (row) axis: a [R, I], b [R, O] -> [I, O]
    dense(x, kernel, n_in)   x [..., *in] @ kernel [*in, *out] -> [..., *out], the Dense layers' product
    row_max(s), row_sum(p)   [..., N] -> [..., 1]: a softmax's statistics
    sum_of_squares(x)        sum(x**2) over every element (float32); global_norm(tree): over a pytree

XLA:CPU hands a dot to its fast GEMM (a YNNPACK fusion) only when the left operand is contracted
over its last axis. A product over the rows of two row-major arrays -- a weight gradient x^T dy,
attention's dV = P^T dO and dK = dS^T Q -- is not of that form, and stays a generic dot that runs
1.5-3x slower than the same FLOPs in the fast form (docs/BENCHMARKS.md, "Dots in the form XLA:CPU
runs fast").
``matmul_tn`` materialises one transpose behind an optimization barrier (which keeps XLA from
folding it back into the dot) so that the product takes the fast path; on CPU ``dense`` computes
its weight gradient with it. The forward products, and every product on GPU and TPU (where a
transposed operand costs nothing), are plain einsums.

XLA:CPU also rewrites a long row reduction into a ``reduce-window`` of 32 and a short reduce, which
runs at a fraction of its memory bandwidth; a softmax's row max and row sum over 1024 keys cost more
than the exponentials between them. On CPU ``row_max`` halves the row with elementwise maxima (a
vectorised loop) down to 32 before reducing, and ``row_sum`` is a product with a column of ones (the
fast GEMM); elsewhere both are the plain reductions. The same rewrite makes a whole-array sum of squares
(optax's ``tree.norm``: the squares written out, then a ``reduce-window``) two passes at a fraction of the
bandwidth; on CPU ``sum_of_squares`` halves the squares down to 256 before reducing (``global_norm`` over a pytree).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
import numpy as np

_PLATFORM = contextvars.ContextVar("stp_target_platform", default=None)


@contextlib.contextmanager
def compile_for(platform: str):
    """Pick kernels for ``platform`` (e.g. "tpu" while AOT-compiling for a TPU topology on a
    CPU host) instead of this process's default devices."""
    token = _PLATFORM.set(platform)
    try:
        yield
    finally:
        _PLATFORM.reset(token)


def target_platform() -> str:
    return _PLATFORM.get() or jax.devices()[0].platform


def transposed(a: jax.Array) -> jax.Array:
    """a.T as an array of its own: XLA may not fold this transpose into the dot that reads it."""
    return jax.lax.optimization_barrier(a.T)


def matmul_tn(a: jax.Array, b: jax.Array) -> jax.Array:
    """a^T b for a [R, I], b [R, O] -> [I, O], with the smaller of the two transposes it can take:
    (a^T) b, or (b^T a)^T -- R*I elements against R*O + I*O."""
    r, i = a.shape
    o = b.shape[1]
    if r * i <= r * o + i * o:
        return jnp.matmul(transposed(a), b)
    return jax.lax.optimization_barrier(jnp.matmul(transposed(b), a)).T


def _letters(kernel, n_in: int) -> tuple[str, str]:
    """einsum letters of a Dense kernel's input and output axes."""
    return "abcdefgh"[:n_in], "abcdefgh"[n_in: kernel.ndim]


def _einsum_dense(x, kernel, n_in: int):
    xin, kout = _letters(kernel, n_in)
    return jnp.einsum(f"...{xin},{xin}{kout}->...{kout}", x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_cpu(x, kernel, n_in: int):
    return _einsum_dense(x, kernel, n_in)


def _dense_cpu_fwd(x, kernel, n_in):
    return _einsum_dense(x, kernel, n_in), (x, kernel)


def _dense_cpu_bwd(n_in, res, dy):
    x, kernel = res
    xin, kout = _letters(kernel, n_in)
    dx = jnp.einsum(f"...{kout},{xin}{kout}->...{xin}", dy, kernel)  # [..., *in]
    fan_in = int(np.prod(kernel.shape[:n_in]))
    dk = matmul_tn(x.reshape(-1, fan_in), dy.reshape(-1, kernel.size // fan_in))  # [in, out]
    return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


_dense_cpu.defvjp(_dense_cpu_fwd, _dense_cpu_bwd)


def dense(x: jax.Array, kernel: jax.Array, n_in: int) -> jax.Array:
    """x [..., *in] @ kernel [*in, *out] -> [..., *out] (``n_in`` trailing axes of x contracted).
    The same einsum everywhere; on CPU its weight gradient goes through ``matmul_tn``."""
    if target_platform() == "cpu":
        return _dense_cpu(x, kernel, n_in)
    return _einsum_dense(x, kernel, n_in)


def _halve(x: jax.Array, op, axis: int, stop: int) -> jax.Array:
    """Fold ``axis`` in halves with the elementwise ``op`` (x[:n/2] op x[n/2:]) while it is even and longer
    than ``stop``: the CPU form of a long reduction, one vectorised loop per halving."""
    while x.shape[axis] > stop and x.shape[axis] % 2 == 0:
        lo, hi = jnp.split(x, 2, axis=axis)
        x = op(lo, hi)
    return x


def row_max(s: jax.Array) -> jax.Array:
    """s.max(-1, keepdims=True) [..., N] -> [..., 1]. The halving propagates a NaN (XLA:CPU's own row max
    can drop one)."""
    if target_platform() == "cpu":
        s = _halve(s, jnp.maximum, -1, 32)
    return s.max(-1, keepdims=True)


def row_sum(p: jax.Array) -> jax.Array:
    """p.sum(-1, keepdims=True) [..., N] -> [..., 1] in float32 (summed in another order on CPU)."""
    if target_platform() == "cpu":
        return jnp.matmul(p, jnp.ones((p.shape[-1], 1), p.dtype), preferred_element_type=jnp.float32)
    return p.sum(-1, keepdims=True, dtype=jnp.float32)


def sum_of_squares(x: jax.Array) -> jax.Array:
    """sum(x**2) over every element, float32. On CPU a large array's squares are halved (pairwise sums of its
    halves, rows then columns of a [-1, 1024] view) down to [8, 32] before one small reduction: each halving
    is a vectorised loop, where XLA:CPU's own reduction of the whole array is a chain of reduce-windows."""
    sq = jnp.square(x.reshape(-1).astype(jnp.float32))
    if target_platform() != "cpu" or sq.size < 1 << 15 or sq.size % 1024:
        return jnp.sum(sq)
    return jnp.sum(_halve(_halve(sq.reshape(-1, 1024), jnp.add, 0, 8), jnp.add, 1, 32))


def global_norm(tree) -> jax.Array:
    """sqrt of the sum of squares of every element of every leaf (``sum_of_squares``), float32: the value of
    optax.tree.norm, for the gradient clip and the train metrics."""
    return jnp.sqrt(sum((sum_of_squares(x) for x in jax.tree.leaves(tree)), jnp.zeros((), jnp.float32)))
