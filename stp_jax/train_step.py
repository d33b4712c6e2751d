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

from stp_jax.diffusion import flow

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
        lambda path, _: "train" if rx.fullmatch("/".join(str(getattr(k, "key", k)) for k in path)) else "freeze",
        params)
    if "train" not in jax.tree.leaves(labels):
        raise ValueError(f"trainable subset {subset!r} matches no parameter")
    return labels


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (labels is a dict)
class Optimizer:
    """An optax transformation plus the 'train'/'freeze' label of every parameter leaf, so
    the train step differentiates the trainable leaves only."""
    tx: Any
    labels: Any

    def init(self, params):
        return self.tx.init(params)

    def update(self, grads, state, params=None):
        return self.tx.update(grads, state, params)


def make_optimizer(params, *, lr: float = 1e-4, warmup: int = 100, total_steps: int = 10_000,
                   weight_decay: float = 0.01, clip: float = 1.0, b1: float = 0.9, b2: float = 0.999,
                   trainable: str = "all", accumulate: int = 1) -> Optimizer:
    """AdamW with linear warmup + cosine decay and global-norm clipping on the trainable
    subset; frozen leaves get zero updates and keep no Adam moments (nor accumulators)."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(total_steps, warmup + 1), lr * 0.01)
    train = optax.chain(optax.clip_by_global_norm(clip), optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay))
    if accumulate > 1:
        train = optax.MultiSteps(train, accumulate).gradient_transformation()
    labels = trainable_labels(params, trainable)
    return Optimizer(optax.multi_transform({"train": train, "freeze": optax.set_to_zero()}, labels), labels)


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


def model_inputs(batch: dict, noisy_x):
    cond = {k: batch[k] for k in ("tgt_cam", "src_cam", "tgt_time", "src_time") if k in batch}
    return dict(x=noisy_x, context=batch["context"], **cond)


def loss_fn(model, params, batch, rng, *, shift: float = 5.0, timestep_mode: str = "uniform",
            prediction: str = "velocity"):
    """Masked flow-matching loss of one batch; returns (loss, aux metrics)."""
    target, source = batch["target"], batch["source"]
    k_sigma, k_noise = jax.random.split(rng)
    sigma, t, weight = flow.sample_sigma(k_sigma, target.shape[0], mode=timestep_mode, shift=shift)
    noise = jax.random.normal(k_noise, target.shape, jnp.float32)
    x = flow.noise_target_half(target, source, noise, sigma)
    pred = model.apply({"params": params}, timestep=t, **model_inputs(batch, x))
    loss = flow.flow_loss(pred, target, noise, weight, prediction)
    return loss, {"sigma_mean": jnp.mean(sigma)}


def train_step(model, optimizer, state: TrainState, batch: dict, rng, *, shift: float = 5.0,
               timestep_mode: str = "uniform", ema_decay: float = 0.0, prediction: str = "velocity"):
    """One update. Returns (new state, metrics: loss, grad_norm (of the trainable leaves), update norm...)."""
    rng = jax.random.fold_in(rng, state.step)
    (loss, aux), grads = _value_and_trainable_grad(
        lambda p: loss_fn(model, p, batch, rng, shift=shift, timestep_mode=timestep_mode, prediction=prediction),
        state.params, getattr(optimizer, "labels", None))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None and ema_decay > 0:
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema, params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "update_norm": optax.tree.norm(updates), **aux}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics
