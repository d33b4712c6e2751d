"""stp_jax.models.kernels: the products equal their einsums (values and gradients), and on CPU the
weight gradients compile to the dot form XLA:CPU runs fast (no row-contracted left operand)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stp_jax.models import kernels
from stp_jax.models.attention import attention


def _rand(*shapes, seed=0):
    g = np.random.default_rng(seed)
    return [jnp.asarray(g.standard_normal(s), jnp.float32) for s in shapes]


@pytest.mark.parametrize("r,i,o", [(64, 8, 48), (64, 48, 8), (16, 16, 16)])  # both branches (a^T first; (b^T a)^T)
def test_matmul_tn(r, i, o):
    a, b = _rand((r, i), (r, o))
    got = jax.jit(kernels.matmul_tn)(a, b)
    np.testing.assert_allclose(np.asarray(got), np.asarray(a).T @ np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_shape,k_shape,n_in", [((2, 5, 12), (12, 7), 1), ((3, 6, 4, 5), (4, 5, 9), 2),
                                                  ((2, 5, 12), (12, 3, 4), 1), ((7, 40), (40, 6), 1)])
def test_dense_matches_einsum_with_gradients(x_shape, k_shape, n_in):
    x, k, w = _rand(x_shape, k_shape, x_shape[: len(x_shape) - n_in] + k_shape[n_in:], seed=1)

    def loss(fn):
        return lambda x, k: jnp.sum(jnp.sin(fn(x, k, n_in)) * w)

    assert kernels.target_platform() == "cpu"
    y = jax.jit(kernels.dense, static_argnums=2)(x, k, n_in)
    np.testing.assert_allclose(np.asarray(y), np.asarray(kernels._einsum_dense(x, k, n_in)), rtol=1e-6, atol=1e-6)
    got = jax.jit(jax.grad(loss(kernels.dense), argnums=(0, 1)))(x, k)
    want = jax.grad(loss(kernels._einsum_dense), argnums=(0, 1))(x, k)
    for g, wt in zip(got, want):
        assert g.shape == wt.shape and g.dtype == wt.dtype
        np.testing.assert_allclose(np.asarray(g), np.asarray(wt), rtol=1e-5, atol=1e-5)


def _row_contracted_dots(fn, *args) -> list[str]:
    """Dots in the compiled program whose left operand is contracted over its first (row) axis."""
    txt = jax.jit(fn).lower(*args).compile().as_text()
    return [ln.strip() for ln in txt.splitlines()
            if re.search(r" dot\(", ln) and "lhs_batch_dims" not in ln and "lhs_contracting_dims={0}" in ln]


def test_weight_gradient_takes_the_fast_dot_form():
    x, k = _rand((256, 128), (128, 96))

    def grad(fn):
        return jax.grad(lambda x, k: jnp.sum(fn(x, k, 1) ** 2), argnums=(0, 1))

    assert _row_contracted_dots(grad(kernels._einsum_dense), x, k), "premise: XLA keeps x^T dy row-contracted"
    assert not _row_contracted_dots(grad(kernels.dense), x, k)


def test_blockwise_attention_backward_takes_the_fast_dot_form(monkeypatch):
    from stp_jax.models import attention as attn_lib

    q, k, v = _rand((1, 512, 2, 16), (1, 512, 2, 16), (1, 512, 2, 16))
    grad = jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, backend="blockwise") ** 2), argnums=(0, 1, 2))
    assert not _row_contracted_dots(grad, q, k, v)
    monkeypatch.setattr(attn_lib, "transposed", lambda a: a.T)  # a plain transpose, which XLA folds into the dot
    retraced = lambda *a: grad(*a)  # noqa: E731 (a new function: jit's cache holds the first trace)
    assert _row_contracted_dots(retraced, q, k, v), "premise: without the barrier dK / dV are row-contracted dots"


def test_other_platforms_keep_the_plain_einsum():
    x, k = _rand((8, 4), (4, 3))
    jaxpr = lambda: str(jax.make_jaxpr(jax.grad(lambda x, k: jnp.sum(kernels.dense(x, k, 1)), 1))(x, k))  # noqa: E731
    assert "optimization_barrier" in jaxpr()
    with kernels.compile_for("tpu"):
        assert "optimization_barrier" not in jaxpr()


@pytest.mark.parametrize("n", [1024, 96, 195])
def test_softmax_row_statistics(n):
    from stp_jax.parallel import mesh as mesh_lib

    (s,) = _rand((64, n))
    s = s.at[4].set(-jnp.inf).at[6, n - 1].set(1e3)
    np.testing.assert_array_equal(np.asarray(jax.jit(kernels.row_max)(s)), np.asarray(s).max(-1, keepdims=True))
    if n == 1024:  # the halving path propagates a NaN (XLA:CPU's own row max can drop one: n=195 here)
        assert np.isnan(np.asarray(jax.jit(kernels.row_max)(s.at[3, 5].set(jnp.nan)))[3, 0])
    p = jnp.abs(s[7:])
    np.testing.assert_allclose(np.asarray(jax.jit(kernels.row_sum)(p)), np.asarray(p, np.float64).sum(-1, keepdims=True),
                               rtol=1e-6)
    if n != 1024:
        return

    def reduce_windows(fn, x):  # the compiled program's reduce-windows: XLA:CPU's slow form of a long row reduction
        return jax.jit(fn).lower(x).compile(compiler_options=mesh_lib.platform_compiler_options("cpu")).as_text().count(
            " reduce-window(")

    assert reduce_windows(lambda x: x.max(-1, keepdims=True), s), "premise: the plain row max is a reduce-window"
    assert reduce_windows(lambda x: x.sum(-1, keepdims=True), p), "premise: the plain row sum is a reduce-window"
    assert not reduce_windows(kernels.row_max, s) and not reduce_windows(kernels.row_sum, p)
    with kernels.compile_for("gpu"):  # the plain reductions elsewhere (new lambdas: jit's cache holds the CPU traces)
        assert "dot_general" not in str(jax.make_jaxpr(lambda x: kernels.row_sum(x))(p))
        assert str(jax.make_jaxpr(lambda x: kernels.row_max(x))(s)).count("max") == 1


def test_global_norm_matches_optax_and_reads_each_leaf_once():
    import optax

    from stp_jax.parallel import mesh as mesh_lib

    a, b, c, d = _rand((8, 256, 512), (512,), (3, 5), (48, 1024), seed=1)  # d: its halving stops at 3 rows
    tree = {"a": a, "b": {"c": c * 1e3, "s": jnp.float32(-2.0)}, "bias": b, "h": b.astype(jnp.bfloat16), "d": d}
    want = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
    np.testing.assert_allclose(float(jax.jit(kernels.global_norm)(tree)), want, rtol=1e-6)
    np.testing.assert_allclose(float(optax.tree.norm(tree)), want, rtol=1e-5)  # the same quantity as optax's
    with kernels.compile_for("gpu"):
        np.testing.assert_allclose(float(jax.jit(lambda t: kernels.global_norm(t))(tree)), want, rtol=1e-6)

    def largest_reduce_window(fn):  # XLA:CPU's slow form of a large reduction: the most elements one reads
        text = jax.jit(fn).lower(a).compile(compiler_options=mesh_lib.platform_compiler_options("cpu")).as_text()
        out = []
        for shape, window in re.findall(r"= f32\[([\d,]*)\]\S* reduce-window\(.*?window=\{size=([\dx]+)", text):
            out.append(int(np.prod([int(d) for d in shape.split(",") if d])) * int(np.prod([int(w) for w in window.split("x")])))
        return max(out, default=0)

    assert largest_reduce_window(optax.tree.norm) == a.size, "premise: optax's norm reduce-windows the whole leaf"
    assert largest_reduce_window(kernels.global_norm) <= 256


def test_cpu_compiler_options_keep_reductions_out_of_ynnpack(monkeypatch):
    from stp_jax.models.layers import layer_norm
    from stp_jax.parallel import mesh as mesh_lib

    monkeypatch.setenv("XLA_FLAGS", "")
    opts = mesh_lib.platform_compiler_options("cpu")
    assert opts == mesh_lib.CPU_COMPILER_OPTIONS
    assert mesh_lib.platform_compiler_options("gpu") is None
    assert mesh_lib.platform_compiler_options("tpu", {"xla_tpu_x": 1}) == {"xla_tpu_x": 1}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce")
    assert mesh_lib.platform_compiler_options("cpu") is None  # the user's flag wins

    (x,) = _rand((256, 512))
    lowered = jax.jit(jax.grad(lambda x: jnp.sum(layer_norm(x, 1e-6) * x))).lower(x)

    def ynn_reduces(compiled):
        txt = compiled.as_text()
        ynn = set(re.findall(r"kind=kCustom, calls=%([\w.\-]+)", txt))
        return [c for c in re.split(r"\n(?=\S)", txt)
                if re.match(r"%([\w.\-]+)", c) and re.match(r"%([\w.\-]+)", c).group(1) in ynn and " reduce(" in c]

    assert ynn_reduces(lowered.compile()), "premise: XLA's defaults hand this reduction to YNNPACK"
    assert not ynn_reduces(lowered.compile(compiler_options=opts))


def test_gelu_tanh_matches_autodiff_and_keeps_one_residual():
    from stp_jax.models.layers import gelu_tanh

    x = jnp.asarray(np.concatenate([np.linspace(-12, 12, 2001), np.random.default_rng(2).standard_normal(999)]),
                    jnp.float32)
    plain = jax.jit(lambda x: jax.nn.gelu(x, approximate=True))
    np.testing.assert_array_equal(np.asarray(jax.jit(gelu_tanh)(x)), np.asarray(plain(x)))  # the same forward
    w = jnp.linspace(-1.0, 1.0, x.size)
    got = jax.jit(jax.grad(lambda x: jnp.sum(gelu_tanh(x) * w)))(x)
    want = jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=True) * w))(x)
    xd = np.asarray(x, np.float64)  # d gelu / dx in float64: both sides are 3.5e-6 from it where 1 + tanh cancels
    t = np.tanh(np.sqrt(2 / np.pi) * (xd + 0.044715 * xd ** 3))
    exact = np.asarray(w, np.float64) * (0.5 * (1 + t) + 0.5 * xd * (1 - t * t) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * xd ** 2))
    err, err_autodiff = np.abs(np.asarray(got) - exact).max(), np.abs(np.asarray(want) - exact).max()
    assert err <= max(1.1 * err_autodiff, 1e-6), (err, err_autodiff)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=2e-6)
    xb = x.astype(jnp.bfloat16)
    assert jax.grad(lambda x: jnp.sum(gelu_tanh(x)).astype(jnp.float32))(xb).dtype == jnp.bfloat16

    def residuals(f):  # arrays of x's size the forward keeps for the backward
        _, vjp = jax.vjp(f, x)
        return sum(1 for leaf in jax.tree.leaves(vjp) if getattr(leaf, "shape", None) == x.shape)

    assert residuals(lambda x: jax.nn.gelu(x, approximate=True)) > 1, "premise: autodiff keeps several"
    assert residuals(gelu_tanh) == 1


@pytest.mark.parametrize("platform", ["cpu", "gpu"])  # kernels.dense's CPU VJP, and the plain einsum elsewhere
def test_gelu_tanh_dense_matches_autodiff_and_keeps_only_its_input(platform):
    from stp_jax.models.layers import gelu_tanh_dense

    h, kernel, dy = _rand((2, 48, 64), (64, 40), (2, 48, 40), seed=5)
    h = h * 3.0

    def plain(h, kernel):  # the unfused reference: autodiff of the formula and the einsum
        return jnp.einsum("bli,io->blo", jax.nn.gelu(h, approximate=True), kernel)

    with kernels.compile_for(platform):
        y, vjp = jax.vjp(gelu_tanh_dense, h, kernel)
        got = jax.jit(lambda h, k: jax.vjp(gelu_tanh_dense, h, k)[1](dy))(h, kernel)
    yp, vjp_plain = jax.vjp(plain, h, kernel)
    np.testing.assert_allclose(np.asarray(y), np.asarray(yp), rtol=1e-5, atol=1e-5)
    for g, w in zip(got, vjp_plain(dy)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4)
    hb, kb = h.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    with kernels.compile_for(platform):
        gb = jax.vjp(gelu_tanh_dense, hb, kb)[1](dy.astype(jnp.bfloat16))
    assert [g.dtype for g in gb] == [jnp.bfloat16, jnp.bfloat16]

    def kept(vjp):  # arrays of h's size the forward keeps for the backward
        return sum(1 for leaf in jax.tree.leaves(vjp) if getattr(leaf, "shape", None) == h.shape)

    assert kept(vjp_plain) > 1, "premise: autodiff keeps gelu(h) beside h"
    assert kept(vjp) == 1
