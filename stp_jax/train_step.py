"""The training step: state, optimizer, trainable subsets, EMA and one sharded update.

Batch (latents already encoded; channels-last):
  target, source      [B, F', h, w, C]   clean latents of the target and source clips
  context             [B, S, E]          text states (zeros = unconditioned)
  tgt_cam, src_cam    [B, F', 12]
  tgt_time, src_time  [B, T]             raw animation-frame indices (spacetimepilot)

One step: sample sigma per clip, noise the target half only, concatenate [noisy target |
clean source], predict the velocity, weighted MSE on the target half (diffusion/flow.py),
AdamW on the trainable subset (others get zero updates and keep no moments), EMA.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from stp_jax.controls.timing import latent_times
from stp_jax.diffusion import flow
from stp_jax.models import kernels, layered
from stp_jax.models.dit import COMPUTE_DTYPE_PARAMS, COND_KEYS, composite_pixels, copy_unit_places, copy_units

# Trainable subsets, as regexes over "/"-joined param paths.
TRAINABLE = {
    "all": r".*",
    "recammaster": r"blocks/(cam_encoder|projector|self_attn)/.*",  # ReCamMaster's recipe
    "spacetimepilot": r"blocks/(cam_encoder|projector|self_attn|time)/.*",
}


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    ema: Any  # EMA of params, or None when no EMA is kept


def trainable_labels(params, subset: str):
    """'train' / 'freeze' per leaf for ``subset`` (a TRAINABLE name or a regex)."""
    pattern = TRAINABLE.get(subset, subset)
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"trainable subset {subset!r} is neither a known name {sorted(TRAINABLE)} "
                         f"nor a valid regex ({e})") from e
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if rx.fullmatch(_path(path)) else "freeze",
        params)
    if "train" not in jax.tree.leaves(labels):
        raise ValueError(f"trainable subset {subset!r} matches no parameter")
    return labels


def _path(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def store_frozen(params, labels, dtype):
    """``params`` with the frozen leaves that the model reads only in ``dtype`` (its compute
    dtype; COMPUTE_DTYPE_PARAMS) stored in ``dtype``: the same values reach every matmul, in
    half the bytes for bf16 compute (the 14B's frozen FFN and cross-attention, 9.8 B
    parameters: 39 -> 20 GB). Trainable leaves keep their (master) dtype."""
    rx, dtype = re.compile(COMPUTE_DTYPE_PARAMS), jnp.dtype(dtype)

    def one(path, x, label):
        narrower = jnp.dtype(x.dtype).itemsize > dtype.itemsize
        return x.astype(dtype) if label == "freeze" and narrower and rx.fullmatch(_path(path)) else x

    return jax.tree_util.tree_map_with_path(one, params, labels)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (labels is a dict)
class Optimizer:
    """An optax transformation plus the 'train'/'freeze' label of every parameter leaf, so
    the train step differentiates the trainable leaves only; ``update_norm``: the step also
    reports the norm of each update (OptimConfig.update_norm)."""
    tx: Any
    labels: Any
    update_norm: bool = False

    def init(self, params):
        return self.tx.init(params)

    def update(self, grads, state, params=None):
        return self.tx.update(grads, state, params)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup + cosine decay to 1% and global-norm clipping (a config's
    ``optim`` section)."""
    lr: float = 1e-4
    warmup: int = 100  # optimizer updates of linear warmup
    weight_decay: float = 0.01
    clip: float = 1.0  # global-norm clipping of the trainable gradients
    b1: float = 0.9
    b2: float = 0.999
    accumulate: int = 1  # micro-steps per update (optax.MultiSteps)
    trainable: str = "all"  # all | recammaster | spacetimepilot | a regex over param paths
    # report update_norm, the norm of each update, beside grad_norm: off by default because on XLA:CPU it
    # costs 3-4 % of a step (the update is written out and the donated params copied; docs/BENCHMARKS.md)
    update_norm: bool = False

    def __post_init__(self):
        problems = [f"optim.{k} must be > 0, got {getattr(self, k)}" for k in ("lr", "clip", "accumulate")
                    if not getattr(self, k) > 0]
        problems += [f"optim.{k} must be >= 0, got {getattr(self, k)}" for k in ("warmup", "weight_decay")
                     if not getattr(self, k) >= 0]
        problems += [f"optim.{k} must be in [0, 1), got {getattr(self, k)}" for k in ("b1", "b2")
                     if not 0 <= getattr(self, k) < 1]
        if problems:
            raise ValueError("; ".join(problems))


def lr_schedule(optim: OptimConfig, total_steps: int):
    """Learning rate per optimizer update (micro-steps / accumulate): the one schedule."""
    updates = max(total_steps // optim.accumulate, 1)
    return optax.warmup_cosine_decay_schedule(0.0, optim.lr, max(optim.warmup, 1), max(updates, optim.warmup + 1),
                                              optim.lr * 0.01)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm with the norm from ``kernels.global_norm`` (on CPU halving sums instead of the
    squares written out and reduce-windowed: docs/BENCHMARKS.md, "The optimizer's norms"). Same rule: updates
    whose global norm is below ``max_norm`` pass unchanged, others are scaled to ``max_norm``."""

    def update(updates, state, params=None):
        del params
        norm = kernels.global_norm(updates)
        keep = norm < max_norm
        return jax.tree.map(lambda t: jax.lax.select(keep, t, (t / norm.astype(t.dtype)) * max_norm), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def make_optimizer(params, optim: OptimConfig = OptimConfig(), total_steps: int = 10_000) -> Optimizer:
    """AdamW (``optim``) on the trainable subset; frozen leaves get zero updates and keep no
    Adam moments (nor accumulators)."""
    train = optax.chain(clip_by_global_norm(optim.clip),
                        optax.adamw(lr_schedule(optim, total_steps), b1=optim.b1, b2=optim.b2,
                                    weight_decay=optim.weight_decay))
    if optim.accumulate > 1:
        train = optax.MultiSteps(train, optim.accumulate).gradient_transformation()
    labels = trainable_labels(params, optim.trainable)
    return Optimizer(optax.multi_transform({"train": train, "freeze": optax.set_to_zero()}, labels), labels,
                     optim.update_norm)


def _value_and_trainable_grad(f, params, labels):
    """``jax.value_and_grad(f, has_aux=True)(params)``, differentiating only the leaves
    labelled 'train': frozen weights get no weight gradient (no matmul, no all-reduce); their
    entries in the returned gradient are zeros, which the optimizer ignores."""
    if labels is None:
        return jax.value_and_grad(f, has_aux=True)(params)
    leaves, treedef = jax.tree.flatten(params)
    mask = [lab == "train" for lab in jax.tree.leaves(labels)]
    if all(mask):
        return jax.value_and_grad(f, has_aux=True)(params)

    def of_trainable(tl):
        it = iter(tl)
        return f(jax.tree.unflatten(treedef, [next(it) if m else jax.lax.stop_gradient(x)
                                              for x, m in zip(leaves, mask)]))

    out, gt = jax.value_and_grad(of_trainable, has_aux=True)([x for x, m in zip(leaves, mask) if m])
    it = iter(gt)
    return out, jax.tree.unflatten(treedef, [next(it) if m else jnp.zeros_like(x) for x, m in zip(leaves, mask)])


def init_state(params, optimizer, ema: bool = False) -> TrainState:
    """Step 0; with ``ema`` the EMA starts as a copy of params (its own buffers, so the
    state can be donated)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      ema=jax.tree.map(jnp.copy, params) if ema else None)


def loss_fn(model, params, batch, rng, flow_cfg: flow.FlowConfig = flow.FlowConfig()):
    """Masked flow-matching loss of one batch; returns (loss, aux metrics)."""
    target, source = batch["target"], batch["source"]
    k_sigma, k_noise = jax.random.split(rng)
    sigma, t, weight = flow.sample_sigma(k_sigma, target.shape[0], mode=flow_cfg.timestep_mode, shift=flow_cfg.shift,
                                         bf16_timesteps=flow_cfg.bf16_timesteps)
    noise = jax.random.normal(k_noise, target.shape, jnp.float32)
    x = flow.noise_target_half(target, source, noise, sigma)
    cond = {k: batch[k] for k in COND_KEYS[model.cfg.mode]}
    composite = flow_cfg.composite_loss or flow_cfg.composite_gate_loss
    if not (flow_cfg.copy_loss or composite):
        pred = model.apply({"params": params}, x, t, batch["context"], **cond)
        return flow.flow_loss(pred, target, noise, weight, flow_cfg.prediction), {"sigma_mean": jnp.mean(sigma)}
    pred, inter = model.apply({"params": params}, x, t, batch["context"], **cond, mutable=["intermediates"])
    loss = flow.flow_loss(pred, target, noise, weight, flow_cfg.prediction)
    total, aux = loss, {"sigma_mean": jnp.mean(sigma), "flow_loss": loss}
    if flow_cfg.copy_loss:
        aux["copy_ce"] = copy_supervision(model.cfg, inter["intermediates"], batch, flow_cfg)
        total = total + flow_cfg.copy_loss * aux["copy_ce"]
    if composite:
        terms = composite_supervision(model.cfg, inter["intermediates"], batch)
        aux.update(terms)
        depth = terms["depth_mse"] if flow_cfg.composite_depth_loss == "l2" else terms["depth_mae"]
        total = (total + flow_cfg.composite_loss * (depth + terms["moving_ce"])
                 + flow_cfg.composite_gate_loss * terms["gate_ce"])
    return total, aux


MOVING_DEPTH_WEIGHT = 5.0  # composite_supervision: the weight of a moving pixel's depth error (others: 1)


def composite_supervision(cfg, intermediates, batch):
    """The losses of DiTConfig.copy_composite's predictions (its sown intermediates): depth_mse, the
    squared error of the log depth of every source pixel against the renderer's (batch src_depth
    [B, T, H, W], the sky at layered.SKY_DEPTH; moving pixels weighted MOVING_DEPTH_WEIGHT), depth_mae the same
    with the absolute error (flow.composite_depth_loss picks which one trains); moving_ce,
    the binary cross-entropy of its moving mask against src_moving; gate_ce, the gate's binary
    cross-entropy against which candidate is nearer the clean target at each pixel, weighted by the
    difference of their squared errors."""
    if not cfg.copy_composite or "composite_gate_logits" not in intermediates:
        raise ValueError("flow.composite_loss / composite_gate_loss need model.copy_composite > 0")
    if "src_depth" not in batch or "src_moving" not in batch:
        raise ValueError("flow.composite_loss needs the renderer's depth and masks in the batch: set "
                         "data.composite_aux=true (procedural scenes)")
    log_d = intermediates["composite_log_depth"][0]  # [B, Fh, H, W]
    want = jnp.log(jnp.clip(batch["src_depth"].astype(jnp.float32), 0.05, layered.SKY_DEPTH) / cfg.copy_depth)
    moving = batch["src_moving"].astype(jnp.float32)
    # the moving layer is what the composite moves by its depth: its pixels count MOVING_DEPTH_WEIGHT times
    w = 1.0 + (MOVING_DEPTH_WEIGHT - 1.0) * moving
    depth_mse = jnp.sum(w * jnp.square(log_d - want)) / jnp.sum(w)
    depth_mae = jnp.sum(w * jnp.abs(log_d - want)) / jnp.sum(w)
    moving_ce = jnp.mean(optax.sigmoid_binary_cross_entropy(intermediates["composite_moving"][0], moving))
    copy, comp = jax.lax.stop_gradient(intermediates["composite_candidates"][0])  # [B, L/2, npx, 3] each
    y = composite_pixels(cfg, batch["target"])  # [B, L/2, npx, 3]
    err_copy, err_comp = jnp.sum(jnp.square(copy - y), -1), jnp.sum(jnp.square(comp - y), -1)  # [B, L/2, npx]
    w = jnp.abs(err_copy - err_comp)
    if cfg.composite_gate == "moved":  # the gate chooses only where the composite moved nothing
        w = w * (1.0 - intermediates["composite_moved"][0])
    ce = optax.sigmoid_binary_cross_entropy(intermediates["composite_gate_logits"][0],
                                            (err_comp < err_copy).astype(jnp.float32))
    gate_ce = jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1e-6)
    return {"depth_mse": depth_mse, "depth_mae": depth_mae, "moving_ce": moving_ce, "gate_ce": gate_ce}


def copy_supervision(cfg, intermediates, batch, flow_cfg: flow.FlowConfig):
    """Cross-entropy of every source copy's choice (the sown logits [B, Q, S] of "copy", and of
    "copy_moved" with copy_gate) against flow.copy_targets of the batch's clean target and source
    halves [B, F', H, W, C] (with flow_cfg's temperature and tie-breaks: place in the frame, animation
    time); pairs a copy may not take (copy_block_shortcut's -1e9) are left out of the targets too.
    Mean over copies, batch and target units."""
    target, source = batch["target"], batch["source"]
    f, h, w = target.shape[1:4]
    places = copy_unit_places(cfg, f, h, w)  # [Q, 2]
    per_frame = places.shape[0] // f  # units per latent frame (frame-major)
    times = None
    if flow_cfg.copy_loss_time:  # [B, Q] each: every unit at its frame's animation time
        times = tuple(jnp.repeat(latent_times(batch[k]), per_frame, axis=1) for k in ("tgt_time", "src_time"))
    want = flow.copy_targets(copy_units(cfg, target), copy_units(cfg, source), flow_cfg.copy_loss_temp, places,
                             flow_cfg.copy_loss_shift, times, flow_cfg.copy_loss_time)  # [B, Q, S]
    ces = []
    for name in ("copy", "copy_moved"):
        if name not in intermediates:
            continue
        logits = intermediates[name]["logits"][0]  # [B, Q, S]
        open_ = logits > -1e8
        w = jnp.where(open_, want, 0.0)
        w = w / jnp.maximum(jnp.sum(w, -1, keepdims=True), 1e-12)
        logp = jax.nn.log_softmax(logits, axis=-1)
        ces.append(-jnp.mean(jnp.sum(jnp.where(open_, w * logp, 0.0), -1)))
    if not ces:
        raise ValueError("flow.copy_loss needs model.copy_source: the model has no source copy to supervise")
    return sum(ces) / len(ces)


def train_step(model, optimizer, state: TrainState, batch: dict, rng, *,
               flow_cfg: flow.FlowConfig = flow.FlowConfig(), ema_decay: float = 0.0):
    """One update. Returns (new state, metrics: loss, grad_norm (of the trainable leaves), update_norm when the
    optimizer asks for it (OptimConfig.update_norm), the loss's terms...)."""
    rng = jax.random.fold_in(rng, state.step)
    (loss, aux), grads = _value_and_trainable_grad(lambda p: loss_fn(model, p, batch, rng, flow_cfg),
                                                   state.params, getattr(optimizer, "labels", None))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None and ema_decay > 0:
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema, params)
    metrics = {"loss": loss, "grad_norm": kernels.global_norm(grads), **aux}
    if getattr(optimizer, "update_norm", False):
        metrics["update_norm"] = kernels.global_norm(updates)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics
