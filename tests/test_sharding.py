"""Sharded SpaceTimeDiT == one device; the published sizes initialise abstractly with specs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec

from stp_jax.models.dit import SpaceTimeDiT, dummy_inputs, preset
from stp_jax.parallel import mesh as mesh_lib


def _setup(cfg, batch=4):
    inputs = dummy_inputs(cfg, batch=batch, latent_frames=2, height=4, width=6, text_len=8)
    g = np.random.default_rng(0)
    inputs = {k: jnp.asarray(g.standard_normal(v.shape).astype(np.float32)) for k, v in inputs.items()}
    inputs["timestep"] = jnp.asarray(g.uniform(0, 1000, (batch,)).astype(np.float32))
    model = SpaceTimeDiT(cfg)

    @jax.jit
    def init():
        params = nn.unbox(model.init(jax.random.PRNGKey(1), **inputs))["params"]
        # give the zero-initialised head and camera/time branches weight so gradients flow everywhere
        return jax.tree.map(lambda p, k: p + 0.05 * jax.random.normal(k, p.shape),
                            params, _keys_like(params, jax.random.PRNGKey(2)))

    return model, init(), inputs


def _keys_like(tree, key):
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, list(jax.random.split(key, len(leaves))))


def _loss_fn(model):
    def loss(params, inputs):
        out = model.apply({"params": params}, **inputs)
        return jnp.mean(out ** 2), out
    return jax.value_and_grad(loss, has_aux=True)


@pytest.fixture(scope="module")
def reference():
    cfg = preset("tiny", mode="spacetimepilot", attention="xla")
    model, params, inputs = _setup(cfg)
    (loss, out), grads = jax.jit(_loss_fn(model))(params, inputs)
    return cfg, params, inputs, np.asarray(out), grads


@pytest.mark.parametrize("shape,attn,cp", [
    ((2, 2, 2, 1), "xla", "none"),
    ((2, 2, 2, 1), "xla", "ring"),
    ((2, 2, 2, 1), "xla", "ulysses"),
    ((2, 2, 2, 1), "splash", "ulysses"),
    ((1, 2, 1, 4), "xla", "none"),
    ((1, 2, 1, 4), "splash", "none"),
])
def test_sharded_forward_and_grad_match_one_device(reference, shape, attn, cp):
    cfg, params, inputs, want_out, want_grads = reference
    cfg = cfg.replace(attention=attn, context_parallel=cp, splash_block=128)
    model = SpaceTimeDiT(cfg)
    mesh = mesh_lib.make_mesh(shape)
    rules = mesh_lib.logical_rules()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **inputs))
        p_shard = mesh_lib.param_shardings(abstract, mesh)["params"]
        sharded = jax.device_put(params, p_shard)
        x_shard = {k: mesh_lib.data_sharding(mesh, v.ndim) for k, v in inputs.items()}
        sharded_inputs = jax.device_put(inputs, x_shard)
        step = jax.jit(_loss_fn(model), in_shardings=(p_shard, x_shard))
        (loss, out), grads = step(sharded, sharded_inputs)
    # parameters really are distributed (fsdp/tensor), not replicated
    qk = grads["blocks"]["self_attn"]["q"]["kernel"]
    assert len({str(s.index) for s in sharded["blocks"]["self_attn"]["q"]["kernel"].addressable_shards}) > 1
    np.testing.assert_allclose(np.asarray(out), want_out, atol=1e-5, rtol=0)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        w = want_grads
        for p in path:
            w = w[p.key]
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))
    assert qk.shape == params["blocks"]["self_attn"]["q"]["kernel"].shape


@pytest.mark.parametrize("name,mesh_shape", [("1.3b", (1, 16, 1, 4)), ("14b", (1, 32, 1, 8))])
def test_published_sizes_init_abstractly_with_full_specs(name, mesh_shape):
    from stp_jax.convert.dit import dit_rules

    cfg = preset(name)
    model = SpaceTimeDiT(cfg)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **dummy_inputs(cfg)))
    specs = nn.get_partition_spec(abstract)["params"]
    shapes = nn.unbox(abstract)["params"]
    sizes = dict(zip(mesh_lib.MESH_AXES, mesh_shape))
    rules = mesh_lib.logical_rules()
    n_params = 0
    for (path, spec), leaf in zip(jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, PartitionSpec)),
                                  jax.tree.leaves(shapes)):
        assert isinstance(spec, PartitionSpec) and len(spec) == leaf.ndim, jax.tree_util.keystr(path)
        mesh_axes = nn.logical_to_mesh_axes(tuple(spec), rules)
        for dim, ax in zip(leaf.shape, mesh_axes):  # every sharded dim divides evenly
            assert dim % mesh_lib.mesh_axis_size(type("M", (), {"shape": sizes})(), ax) == 0, (path, leaf.shape)
        n_params += int(np.prod(leaf.shape))
    wan = preset(name, mode="wan")
    wan_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
        jax.eval_shape(lambda: SpaceTimeDiT(wan).init(jax.random.PRNGKey(0), **dummy_inputs(wan)))))
    if name == "1.3b":
        assert round(wan_params / 1e9, 3) == 1.419  # docs/REFERENCE.md §2
        assert len(dit_rules(wan)) == 825
        assert 0.4e9 < n_params - wan_params < 0.6e9  # SpaceTimePilot adds ~0.5e9
    assert n_params > wan_params


@pytest.mark.parametrize("remat", ["full", "offload_full", "dots", "dots_no_batch"])
def test_remat_policies_give_identical_gradients(reference, remat):
    cfg, params, inputs, want_out, want_grads = reference
    model = SpaceTimeDiT(cfg.replace(remat=remat))
    (loss, out), grads = jax.jit(_loss_fn(model))(params, inputs)
    np.testing.assert_allclose(np.asarray(out), want_out, atol=1e-6, rtol=0)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-6, rtol=0)


def test_bf16_compute_tracks_fp32(reference):
    cfg, params, inputs, want_out, _ = reference
    out = jax.jit(lambda p, i: SpaceTimeDiT(cfg.replace(dtype="bfloat16")).apply({"params": p}, **i))(params, inputs)
    rel = np.abs(np.asarray(out) - want_out).max() / np.abs(want_out).max()
    assert out.dtype == jnp.float32 and 0 < rel < 5e-2, rel


def test_relative_attention_sharded_matches_one_device():
    """The embedded default's attention (RoPE over animation time, camera-relative heads: per-clip
    RoPE tables and per-token poses) sharded over heads (tensor 2: the camera head is a slice of
    them), over the sequence (ring context parallelism) and over fsdp at once equals one device."""
    cfg = preset("tiny", mode="spacetimepilot", attention="xla", rope_frames="time", cam_heads=1)
    model, params, inputs = _setup(cfg)
    (_, want_out), want_grads = jax.jit(_loss_fn(model))(params, inputs)
    model = SpaceTimeDiT(cfg.replace(context_parallel="ring"))
    mesh = mesh_lib.make_mesh((1, 2, 2, 2))
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.logical_rules()):
        abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), **inputs)
        p_shard = mesh_lib.param_shardings(abstract, mesh)["params"]
        x_shard = {k: mesh_lib.data_sharding(mesh, v.ndim) for k, v in inputs.items()}
        step = jax.jit(_loss_fn(model), in_shardings=(p_shard, x_shard))
        (_, out), grads = step(jax.device_put(params, p_shard), jax.device_put(inputs, x_shard))
    np.testing.assert_allclose(np.asarray(out), np.asarray(want_out), atol=1e-5, rtol=0)
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=0, err_msg=jax.tree_util.keystr(path))
