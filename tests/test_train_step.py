"""The train step: masked flow loss, trainable subsets, EMA, and sharded == one device."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from stp_jax import train_step as ts
from stp_jax.controls.timing import model_times
from stp_jax.diffusion import flow
from stp_jax.models.dit import SpaceTimeDiT, copy_units, preset
from stp_jax.parallel import mesh as mesh_lib


def _batch(cfg, b=4, fh=2, h=4, w=6, seed=0):
    g = np.random.default_rng(seed)
    t = 4 * (fh - 1) + 1
    f32 = lambda *s: jnp.asarray(g.standard_normal(s).astype(np.float32))  # noqa: E731
    return {"target": f32(b, fh, h, w, cfg.in_channels), "source": f32(b, fh, h, w, cfg.in_channels),
            "context": f32(b, 8, cfg.text_dim), "tgt_cam": f32(b, fh, 12), "src_cam": f32(b, fh, 12),
            "tgt_time": jnp.asarray(g.integers(0, t, (b, t)).astype(np.float32)),
            "src_time": jnp.tile(jnp.arange(t, dtype=jnp.float32), (b, 1))}


@pytest.fixture(scope="module")
def setup():
    cfg = preset("tiny", mode="spacetimepilot", attention="xla")
    model = SpaceTimeDiT(cfg)
    batch = _batch(cfg)
    x = jnp.concatenate([batch["target"], batch["source"]], 1)
    cond = {k: batch[k] for k in ("tgt_cam", "src_cam", "tgt_time", "src_time")}

    @jax.jit
    def init():  # fresh heads/encoders start at zero; perturb like pretrained weights would be
        p = nn.unbox(model.init(jax.random.PRNGKey(0), x, jnp.zeros(4), batch["context"], **cond))["params"]
        leaves, tree = jax.tree.flatten(p)
        keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
        return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])

    return cfg, model, init(), batch


def _run(model, params, batch, steps, trainable="all", ema=0.0):
    opt = ts.make_optimizer(params, ts.OptimConfig(lr=1e-3, warmup=1, trainable=trainable), 100)
    state = ts.init_state(params, opt, ema=ema > 0)
    step = jax.jit(functools.partial(ts.train_step, model, opt, ema_decay=ema))
    losses = []
    for _ in range(steps):
        state, m = step(state, batch, jax.random.PRNGKey(1))
        losses.append(float(m["loss"]))
    return state, losses


def test_loss_decreases_on_a_fixed_batch(setup):
    _, model, params, batch = setup
    _, losses = _run(model, params, batch, 8)
    assert losses[-1] < losses[0] and np.isfinite(losses).all()


def test_frozen_subset_stays_frozen(setup):
    _, model, params, batch = setup
    state, _ = _run(model, params, batch, 2, trainable="recammaster", ema=0.5)
    moved = jax.tree_util.tree_map_with_path(
        lambda p, a, b: ("/".join(str(k.key) for k in p), bool(np.any(np.asarray(a) != np.asarray(b)))),
        state.params, params)
    for name, changed in jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple)):
        should = name.startswith(("blocks/cam_encoder", "blocks/projector", "blocks/self_attn"))
        assert changed == should, name
    # EMA moved towards the new params but is not equal to them
    e, p = state.ema["blocks"]["projector"]["kernel"], state.params["blocks"]["projector"]["kernel"]
    assert not np.allclose(e, p)
    with pytest.raises(ValueError, match="matches no parameter"):
        ts.trainable_labels(params, r"nothing/.*")


@pytest.mark.slow
def test_sharded_train_step_matches_one_device(setup):
    _, model, params, batch = setup
    one, l1 = _run(model, params, batch, 3)
    mesh = mesh_lib.make_mesh((2, 2, 2, 1))
    with jax.set_mesh(mesh), nn.logical_axis_rules(mesh_lib.logical_rules()):
        x = jnp.concatenate([batch["target"], batch["source"]], 1)
        cond = {k: batch[k] for k in ("tgt_cam", "src_cam", "tgt_time", "src_time")}
        abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.zeros(4), batch["context"], **cond))
        p_shard = mesh_lib.param_shardings(abstract, mesh)["params"]
        sharded = jax.device_put(params, p_shard)
        sbatch = {k: jax.device_put(v, mesh_lib.data_sharding(mesh, v.ndim)) for k, v in batch.items()}
        many, l8 = _run(model, sharded, sbatch, 3)
    np.testing.assert_allclose(l8, l1, atol=1e-5, rtol=0)
    for a, b in zip(jax.tree.leaves(many.params), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)


def test_frozen_leaves_get_no_weight_gradient(setup):
    import dataclasses

    _, model, params, batch = setup
    opt = ts.make_optimizer(params, ts.OptimConfig(lr=1e-3, warmup=1, trainable="recammaster"), 100)
    blind = dataclasses.replace(opt, labels=None)  # differentiates every leaf, then zeroes the frozen updates
    state = ts.init_state(params, opt)
    steps = {name: jax.jit(functools.partial(ts.train_step, model, o)) for name, o in (("subset", opt), ("all", blind))}
    out = {name: s(state, batch, jax.random.PRNGKey(1)) for name, s in steps.items()}
    for a, b in zip(jax.tree.leaves(out["subset"][0].params), jax.tree.leaves(out["all"][0].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    # the gradient norm is the trainable leaves' (what clipping sees), not every leaf's
    assert float(out["subset"][1]["grad_norm"]) < float(out["all"][1]["grad_norm"])
    flops = {name: s.lower(state, batch, jax.random.PRNGKey(1)).compile().cost_analysis()["flops"]
             for name, s in steps.items()}
    assert flops["subset"] < 0.9 * flops["all"], flops  # the FFN / cross-attention weight matmuls are gone


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])  # below, near and above the threshold
def test_clip_by_global_norm_matches_optax(scale):
    import optax

    g = np.random.default_rng(0)
    grads = {"w": jnp.asarray(g.standard_normal((64, 32)) * scale, jnp.float32),
             "b": jnp.asarray(g.standard_normal((32,)) * scale, jnp.float32)}
    ours, _ = jax.jit(lambda t: ts.clip_by_global_norm(0.5).update(t, ()))(grads)
    want, _ = optax.clip_by_global_norm(0.5).update(grads, ())
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=0)
    if scale > 1:
        np.testing.assert_allclose(float(optax.tree.norm(ours)), 0.5, rtol=1e-5)


def test_update_norm_is_reported_on_request_and_is_the_step_taken(setup):
    import optax

    _, model, params, batch = setup
    out = {}
    for flag in (False, True):
        opt = ts.make_optimizer(params, ts.OptimConfig(lr=1e-3, warmup=1, update_norm=flag), 100)
        state = ts.init_state(params, opt)
        out[flag] = jax.jit(functools.partial(ts.train_step, model, opt))(state, batch, jax.random.PRNGKey(1))
    assert "update_norm" not in out[False][1]
    step = jax.tree.map(lambda a, b: a - b, out[True][0].params, params)
    np.testing.assert_allclose(float(out[True][1]["update_norm"]), float(optax.tree.norm(step)), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(out[True][0].params), jax.tree.leaves(out[False][0].params)):  # same update
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gradient_accumulation_updates_every_k_steps(setup):
    _, model, params, batch = setup
    opt = ts.make_optimizer(params, ts.OptimConfig(lr=1e-3, warmup=1, trainable="recammaster", accumulate=2), 100)
    state = ts.init_state(params, opt)
    step = jax.jit(functools.partial(ts.train_step, model, opt))
    kernel = lambda s: np.asarray(s.params["blocks"]["projector"]["kernel"])  # noqa: E731
    seen = [state]
    for _ in range(4):
        seen.append(step(seen[-1], batch, jax.random.PRNGKey(1))[0])
    # micro-steps 1 and 3 only accumulate; 2 and 4 apply (the warmup's lr is 0 at the first update)
    assert [bool(np.any(kernel(b) != kernel(a))) for a, b in zip(seen, seen[1:])] == [False, False, False, True]
    s2 = seen[-1]
    # accumulators exist for the trainable leaves only
    n_train = sum(x.size for x, lab in zip(jax.tree.leaves(params), jax.tree.leaves(opt.labels)) if lab == "train")
    n_state = sum(x.size for x in jax.tree.leaves(s2.opt_state) if x.ndim > 0)
    assert n_state <= 3 * n_train + 64, (n_state, n_train)  # mu, nu, accumulated gradient


def test_frozen_weights_stored_in_the_compute_dtype_change_no_output(setup):
    """store_frozen keeps the frozen matmul weights in bf16 when the model computes in bf16:
    the forward and the trainable gradients are bit-identical, and nothing the model reads in
    float32 (time embedding, norms, modulation) or trains is narrowed."""
    cfg, _, params, batch = setup
    model = SpaceTimeDiT(cfg.replace(dtype="bfloat16"))
    labels = ts.trainable_labels(params, "spacetimepilot")
    stored = ts.store_frozen(params, labels, "bfloat16")
    narrowed = {ts._path(p) for p, x in jax.tree_util.tree_flatten_with_path(stored)[0] if x.dtype == jnp.bfloat16}
    assert "blocks/ffn/fc1/kernel" in narrowed and "blocks/cross_attn/q/bias" in narrowed
    assert not any(n.startswith(("blocks/self_attn", "blocks/time", "time_", "blocks/modulation", "blocks/norm"))
                   for n in narrowed), narrowed
    x = jnp.concatenate([batch["target"], batch["source"]], 1)
    cond = {k: batch[k] for k in ("tgt_cam", "src_cam", "tgt_time", "src_time")}

    def loss(p):
        out = model.apply({"params": p}, x, jnp.full((4,), 500.0), batch["context"], **cond)
        return jnp.mean(out.astype(jnp.float32) ** 2), out

    (l32, o32), g32 = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    (l16, o16), g16 = jax.jit(jax.value_and_grad(loss, has_aux=True))(stored)
    np.testing.assert_array_equal(np.asarray(o32), np.asarray(o16))
    for a, b in zip(jax.tree.leaves(g32["blocks"]["self_attn"]), jax.tree.leaves(g16["blocks"]["self_attn"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_copy_targets_are_the_nearest_source_units():
    """flow.copy_targets: an exact match gets e times the weight of a unit one temp (mean squared
    difference per value) further, and nothing goes to far units."""
    a = np.zeros(4, np.float32)
    near = a + np.sqrt(0.01)  # mean squared difference 0.01
    far = a + 3.0
    w = np.asarray(flow.copy_targets(jnp.asarray([[a]]), jnp.asarray([[far, a, near]]), 0.01))[0, 0]
    np.testing.assert_allclose(w, [0.0, 1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))], atol=1e-6)
    # ties broken by place in the frame (shift: nats per squared unit) and by animation time (per frame)
    places = jnp.asarray([[0.0, 0.0], [0.0, 2.0]])  # two units a frame (target and source alike)
    times = (jnp.asarray([[3.0, 3.0]]), jnp.asarray([[3.0, 5.0]]))  # target units at time 3; sources at 3 and 5
    both = jnp.asarray([[a, a]])
    w = np.asarray(flow.copy_targets(both, both, 0.01, places, 0.25, times, 0.5))[0]  # [Q, S]
    # target unit 0: source 0 (same place, same time) against source 1 (4 squared units and 2 frames away)
    np.testing.assert_allclose(w[0], [1 / (1 + np.exp(-2.0)), np.exp(-2.0) / (1 + np.exp(-2.0))], atol=1e-6)
    np.testing.assert_allclose(w[1], [0.5, 0.5], atol=1e-6)  # unit 1: source 1's place against source 0's time


def test_copy_loss_trains_the_copy_to_choose_the_matching_source_unit():
    """flow.copy_loss adds copy_loss x the copy's cross-entropy against copy_targets to the flow loss
    (the loss says both terms). Targets that are the source's units reversed in time: a few steps
    on the cross-entropy alone (only the copy's weights train) raise the copy's share on the
    matching unit."""
    cfg = preset("tiny", mode="spacetimepilot", attention="xla", cam_heads=1, copy_source=True, copy_unit="pixel")
    model = SpaceTimeDiT(cfg)
    batch = _batch(cfg, b=2, fh=3)
    batch["target"] = batch["source"][:, ::-1]
    batch["src_time"] = jnp.tile(jnp.asarray(model_times(np.array([0.0, 1.0, 2.0]), 1)), (2, 1))  # [B, T]
    batch["tgt_time"] = jnp.tile(jnp.asarray(model_times(np.array([2.0, 1.0, 0.0]), 1)), (2, 1))
    x = jnp.concatenate([batch["target"], batch["source"]], 1)
    cond = {k: batch[k] for k in ("tgt_cam", "src_cam", "tgt_time", "src_time")}
    params = nn.unbox(model.init(jax.random.PRNGKey(0), x, jnp.zeros(2), batch["context"], **cond))["params"]
    fcfg = flow.FlowConfig(prediction="x0", copy_loss=1.0, copy_loss_temp=0.01)
    loss, aux = ts.loss_fn(model, params, batch, jax.random.PRNGKey(1), fcfg)
    np.testing.assert_allclose(loss, aux["flow_loss"] + aux["copy_ce"], rtol=1e-6)

    @jax.jit
    def share(p):  # the copy's mean weight on the target's own unit (the source unit it equals)
        _, inter = model.apply({"params": p}, x, jnp.zeros(2), batch["context"], **cond, mutable=["intermediates"])
        w = jax.nn.softmax(inter["intermediates"]["copy"]["logits"][0], -1)  # [B, Q, S]
        q = w.shape[1]
        own = (jnp.arange(q) % (q // 3)) + (2 - jnp.arange(q) // (q // 3)) * (q // 3)  # frame i <- frame 2 - i
        return jnp.mean(jnp.take_along_axis(w, jnp.broadcast_to(own[None, :, None], (2, q, 1)), -1))

    opt = ts.make_optimizer(params, ts.OptimConfig(lr=3e-3, warmup=1, trainable=r"copy/.*"), 100)
    state = ts.init_state(params, opt)
    step = jax.jit(functools.partial(ts.train_step, model, opt, flow_cfg=fcfg))
    before = float(share(params))
    for _ in range(20):
        state, m = step(state, batch, jax.random.PRNGKey(1))
    assert float(share(state.params)) > 2 * before, (before, float(share(state.params)))


def test_copy_supervision_leaves_closed_pairs_out():
    """copy_supervision: pairs a copy may not take (logits -1e9, copy_block_shortcut) are dropped from
    the targets, which renormalise over the open pairs; the cross-entropy is then that of the open
    pairs alone, and with every pair of a query closed that query adds nothing."""
    cfg = preset("tiny", mode="spacetimepilot", copy_source=True, copy_unit="pixel")
    g = np.random.default_rng(0)
    target, source = (jnp.asarray(g.standard_normal((1, 1, 2, 2, cfg.in_channels)), jnp.float32) for _ in range(2))
    logits = jnp.asarray(g.standard_normal((1, 4, 4)), jnp.float32)
    closed = jnp.asarray([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0]], bool)[None]
    batch = {"target": target, "source": source}
    fcfg = flow.FlowConfig(copy_loss=1.0, copy_loss_temp=1.0)
    ce = float(ts.copy_supervision(cfg, {"copy": {"logits": (jnp.where(closed, -1e9, logits),)}}, batch, fcfg))
    want = flow.copy_targets(copy_units(cfg, target), copy_units(cfg, source), 1.0)[0]  # [Q, S]
    expect = 0.0
    for q in range(4):
        open_ = ~np.asarray(closed[0, q])
        if open_.any():
            w = np.asarray(want[q])[open_] / np.asarray(want[q])[open_].sum()
            expect -= (w * np.asarray(jax.nn.log_softmax(logits[0, q][open_]))).sum()
    np.testing.assert_allclose(ce, expect / 4, rtol=1e-5)


def test_training_log_averages_the_loss_terms_when_there_are_several():
    """writers.window_metrics: the loss's terms (flow_loss, copy_ce: flow.copy_loss) are averaged over
    the window beside the fixed metrics, and absent without them."""
    from stp_jax.writers import window_metrics

    base = {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(2.0), "sigma_mean": jnp.float32(0.5),
            "finite": jnp.bool_(True)}
    assert set(window_metrics([base])) == {"loss", "grad_norm", "sigma_mean"}
    assert window_metrics([dict(base, update_norm=jnp.float32(3.0))])["update_norm"] == 3.0  # when reported
    terms = [dict(base, flow_loss=jnp.float32(f), copy_ce=jnp.float32(c)) for f, c in ((0.1, 4.0), (0.3, 2.0))]
    out = window_metrics(terms)
    assert out["flow_loss"] == pytest.approx(0.2) and out["copy_ce"] == pytest.approx(3.0) and out["loss"] == 1.0
