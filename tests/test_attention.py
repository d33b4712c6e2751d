"""Every attention backend and context-parallel mode against a plain softmax reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from stp_jax.models.attention import attention, resolve_backend
from stp_jax.parallel.mesh import make_mesh


def _ref(q, k, v):
    s = np.einsum("bqnk,bsnk->bnqs", q, k) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnqs,bsnk->bqnk", p, v)


def _qkv(b=2, lq=40, lk=40, n=4, k=16, seed=0):
    g = np.random.default_rng(seed)
    return [g.standard_normal(s).astype(np.float32) for s in ((b, lq, n, k), (b, lk, n, k), (b, lk, n, k))]


@pytest.mark.parametrize("backend", ["xla", "splash", "blockwise"])
def test_single_device_backends(backend):
    q, k, v = _qkv(lq=300, lk=24)  # not multiples of the block sizes: padded + masked/dropped
    out = jax.jit(lambda *a: attention(*a, backend=backend, splash_block=128))(q, k, v)
    np.testing.assert_allclose(np.asarray(out), _ref(q, k, v), atol=2e-5)


@pytest.mark.parametrize("backend", ["splash", "blockwise"])
def test_backend_gradients(backend):
    q, k, v = _qkv(lq=300, lk=260, seed=3)

    def loss(backend):
        return lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, backend=backend, splash_block=128)))

    got = jax.jit(jax.grad(loss(backend), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5)


def test_blockwise_query_blocks():
    from stp_jax.models import attention as attn

    # the rule: the most rows (a power of two, >= 128) whose [rows, Lk] scores fit 2^20 elements
    assert [attn.query_block(lk) for lk in (24, 512, 1024, 2048, 4096, 32760)] == [32768, 2048, 1024, 512, 256, 128]
    # several blocks, the last one padded (300 = 128 + 128 + 44): values and gradients as one block
    q, k, v = _qkv(lq=300, lk=260, seed=4)

    def loss(block):
        return lambda q, k, v: jnp.sum(jnp.sin(attn._blockwise(q, k, v, block=block)))

    np.testing.assert_allclose(np.asarray(jax.jit(lambda *a: attn._blockwise(*a, block=128))(q, k, v)), _ref(q, k, v),
                               atol=2e-5)
    got = jax.jit(jax.grad(loss(128), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(attention(q, k, v, backend="xla"))), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5)


def test_blockwise_bf16_close_to_fp32():
    q, k, v = _qkv(lq=512, lk=512)
    out = attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), backend="blockwise")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), _ref(q, k, v), atol=3e-2)


def test_auto_and_errors():
    assert resolve_backend("auto", jnp.float32) == "xla"  # CPU, short sequences
    assert resolve_backend("auto", jnp.float32, 4096) == "blockwise"  # CPU, long sequences
    with pytest.raises(ValueError, match="unknown"):
        resolve_backend("flash", jnp.float32)
    with pytest.raises(ValueError, match="bf16"):
        attention(*_qkv(), backend="cudnn")
    with pytest.raises(ValueError, match="context_parallel"):
        attention(*_qkv(), context_parallel="tree")


@pytest.mark.parametrize("cp,backend", [("none", "xla"), ("ulysses", "xla"), ("ring", "xla"), ("ulysses", "splash"),
                                        ("none", "splash"), ("ulysses", "blockwise")])
def test_context_parallel_matches(cp, backend):
    mesh = make_mesh({"data": 1, "fsdp": 2, "context": 2, "tensor": 2})
    q, k, v = _qkv(b=2, lq=32, lk=32, n=4)
    spec = NamedSharding(mesh, P(("data", "fsdp"), "context", "tensor", None))

    def f(q, k, v):
        return attention(q, k, v, backend=backend, context_parallel=cp, splash_block=128)

    def loss(q, k, v):
        return jnp.sum(f(q, k, v) ** 2)

    with jax.set_mesh(mesh):
        args = [jax.device_put(a, spec) for a in (q, k, v)]
        out = jax.jit(f)(*args)
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
    np.testing.assert_allclose(np.asarray(out), _ref(q, k, v), atol=2e-5)
    want = jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, backend="xla") ** 2), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5)


def test_ulysses_needs_divisible_heads():
    mesh = make_mesh({"context": 8})
    with jax.set_mesh(mesh), pytest.raises(ValueError, match="ring"):
        jax.jit(lambda *a: attention(*a, context_parallel="ulysses"))(*_qkv(n=4, lq=32, lk=32))


def test_cross_attention_keeps_tokens_sharded():
    """Text cross-attention under a context-sharded mesh: each device attends its own tokens to
    the whole (short) text; no video token is gathered, gradients match."""
    mesh = make_mesh({"data": 1, "fsdp": 2, "context": 2, "tensor": 2})
    q, k, v = _qkv(b=2, lq=32, lk=8, n=4)
    q_sh = NamedSharding(mesh, P(("data", "fsdp"), "context", "tensor", None))
    kv_sh = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))

    def loss(q, k, v):
        return jnp.sum(attention(q, k, v, backend="xla", cross=True) ** 2)

    with jax.set_mesh(mesh):
        args = [jax.device_put(q, q_sh), jax.device_put(k, kv_sh), jax.device_put(v, kv_sh)]
        f = jax.jit(lambda q, k, v: attention(q, k, v, backend="xla", cross=True))
        out = f(*args)
        hlo = f.lower(*args).compile().as_text()
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
    assert out.sharding.spec[1] == "context"
    assert "all-gather" not in hlo and "all-to-all" not in hlo, "cross-attention moved video tokens"
    np.testing.assert_allclose(np.asarray(out), _ref(q, k, v), atol=2e-5)
    want = jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, backend="xla") ** 2), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=5e-5)
