"""Flow matching as Wan / ReCamMaster / SpaceTimePilot use it (docs/REFERENCE.md §1).

Path: x_sigma = (1 - sigma) * x0 + sigma * noise, sigma in [0, 1]; the model predicts the
velocity v = noise - x0 from the timestep t = 1000 * sigma. Schedules are shifted:
sigma' = s * sigma / (1 + (s - 1) * sigma).

Only the *target* half of the latent sequence is noised, predicted and scored; the source
half stays clean (it conditions the model through self-attention).

Letters: B batch, F latent frames (whole sequence; target first), H/W latent rows/cols,
C channels.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
COMPOSITE_DEPTH_LOSSES = ("l2", "l1")
TIMESTEP_MODES = ("uniform", "uniform_sigma", "logit_normal")
PREDICTIONS = ("velocity", "x0")


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """How training draws noise levels, what the model predicts and what the loss adds (a config's
    ``flow`` section)."""
    shift: float = 5.0  # sigma' = s * sigma / (1 + (s - 1) * sigma)
    timestep_mode: str = "uniform"  # see sample_sigma
    prediction: str = "velocity"  # velocity (published) | x0 (see flow_loss)
    bf16_timesteps: bool = False  # round t to bf16 before noising, the DiT and the loss weight (as published)
    # > 0 (ours; model.copy_source only): + this weight x the cross-entropy of the copy's choice against
    # the source units nearest the clean target (copy_targets; train_step.copy_supervision)
    copy_loss: float = 0.0
    copy_loss_temp: float = 0.003  # the targets' temperature, in mean squared latent difference per value
    copy_loss_shift: float = 0.0  # + this many nats per squared latent pixel a source unit sits from the target's place
    copy_loss_time: float = 0.0  # + this many nats per frame of animation time between a source unit and the target
    # > 0 (ours; model.copy_composite only): + this weight x (the squared error of the predicted log depth of
    # every source pixel + the binary cross-entropy of its moving mask) against the renderer's
    # (data.composite_aux; train_step.composite_supervision)
    composite_loss: float = 0.0
    # the depth term of composite_loss: "l2" (squared log-depth error, its mean: an edge pixel between an object
    # and the ground lands between them) | "l1" (absolute, its median: the edge pixel takes one of the two)
    composite_depth_loss: str = "l2"
    # > 0 (model.copy_composite): + this weight x the binary cross-entropy of the composite's gate against
    # which candidate (copy or composite) is nearer the clean target at each pixel, weighted by how much nearer
    composite_gate_loss: float = 0.0

    def __post_init__(self):
        if not self.shift > 0:
            raise ValueError(f"flow.shift must be > 0, got {self.shift}")
        if not (self.copy_loss >= 0 and self.copy_loss_temp > 0 and self.copy_loss_shift >= 0 and self.copy_loss_time >= 0):
            raise ValueError(f"flow.copy_loss, copy_loss_shift and copy_loss_time must be >= 0 and flow.copy_loss_temp "
                             f"> 0, got {self.copy_loss}, {self.copy_loss_shift}, {self.copy_loss_time} and "
                             f"{self.copy_loss_temp}")
        if not (self.composite_loss >= 0 and self.composite_gate_loss >= 0):
            raise ValueError(f"flow.composite_loss and composite_gate_loss must be >= 0, got {self.composite_loss} and "
                             f"{self.composite_gate_loss}")
        if self.composite_depth_loss not in COMPOSITE_DEPTH_LOSSES:
            raise ValueError(f"flow.composite_depth_loss {self.composite_depth_loss!r} is unknown; expected one of "
                             f"{COMPOSITE_DEPTH_LOSSES}")
        if self.timestep_mode not in TIMESTEP_MODES:
            raise ValueError(f"flow.timestep_mode {self.timestep_mode!r} is unknown; expected one of {TIMESTEP_MODES}")
        check_prediction(self.prediction)


def round_bf16(x):
    """Values rounded to bfloat16 (and back to float32): what the published pipeline feeds its DiT
    as the timestep (docs/REFERENCE.md §6.2, §6.5)."""
    return jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)


def shift_sigma(sigma, shift: float):
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sampling_sigmas(num_steps: int, shift: float = 5.0) -> np.ndarray:
    """[N + 1] sigmas for N Euler steps: linspace(1, 0, N+1)[:-1] shifted, then a final 0."""
    if num_steps < 1:
        raise ValueError(f"the number of sampling steps must be >= 1, got {num_steps}")
    s = np.linspace(1.0, 0.0, num_steps + 1)[:-1]
    return np.concatenate([shift_sigma(s, shift), [0.0]]).astype(np.float32)


def sampling_timesteps(num_steps: int, shift: float = 5.0, bf16: bool = False) -> np.ndarray:
    """[N] timesteps the DiT is given at each step: 1000 * sigma (float32), rounded to bf16 when
    ``bf16`` (the published pipeline: 50 steps give 1000, 996, 992, ...; 20 steps 1000, 988, 980,
    964, ...)."""
    t = sampling_sigmas(num_steps, shift)[:-1] * np.float32(NUM_TRAIN_TIMESTEPS)
    return np.asarray(round_bf16(t)) if bf16 else t


def euler_step(x, v, sigma, sigma_next):
    """x_{next} = x + v * (sigma_next - sigma)."""
    return x + v * (sigma_next - sigma)


# ---------------------------------------------------------------- training


def training_schedule(shift: float = 5.0, num: int = NUM_TRAIN_TIMESTEPS):
    """(sigmas [num], timesteps [num], loss weights [num]) of the training grid.

    Weights are a Gaussian in the timestep, exp(-2 ((t - 500) / 1000)^2), minus its minimum,
    rescaled to mean 1 (the ReCamMaster/DiffSynth recipe).
    """
    sig = shift_sigma(np.linspace(1.0, 0.0, num + 1)[:-1], shift)
    t = sig * NUM_TRAIN_TIMESTEPS
    y = np.exp(-2.0 * ((t - num / 2) / num) ** 2)
    y = y - y.min()
    w = y * (num / y.sum())
    return sig.astype(np.float32), t.astype(np.float32), w.astype(np.float32)


def sample_sigma(key, batch: int, *, mode: str = "uniform", shift: float = 5.0, logit_mean: float = 0.0,
                 logit_std: float = 1.0, bf16_timesteps: bool = False):
    """(sigma [B], timestep [B], weight [B]) for one training step.

    uniform        a uniform index into the shifted training grid, with its Gaussian weight
                   (the published recipe: the ends of the schedule get almost no weight).
    uniform_sigma  sigma = shift(u), u ~ U(0, 1), weight 1: every noise level is trained,
                   the nearly clean end too (what an x0 predictor's last sampling step needs).
    logit_normal   sigma = shift(sigmoid(N(mean, std))), weight 1.

    ``bf16_timesteps`` (the published training, docs/REFERENCE.md §6.5): the timestep is rounded
    to bf16 before it is used; on the grid (``uniform``) sigma and weight are then those of the
    grid timestep nearest to the rounded one, as the published scheduler looks them up (294
    distinct timesteps of the 1000); otherwise sigma = t / 1000.
    """
    if mode == "uniform":
        sig, t, w = (jnp.asarray(a) for a in training_schedule(shift))
        i = jax.random.randint(key, (batch,), 0, sig.shape[0])
        if not bf16_timesteps:
            return sig[i], t[i], w[i]
        tb = round_bf16(t[i])
        j = jnp.argmin(jnp.abs(t[None, :] - tb[:, None]), axis=1)
        return sig[j], tb, w[j]
    if mode == "uniform_sigma":
        s = shift_sigma(jax.random.uniform(key, (batch,), minval=1e-3, maxval=1.0), shift)
    elif mode == "logit_normal":
        s = shift_sigma(jax.nn.sigmoid(logit_mean + logit_std * jax.random.normal(key, (batch,))), shift)
    else:
        raise ValueError(f"timestep sampling {mode!r} is unknown; expected one of {TIMESTEP_MODES}")
    t = s * NUM_TRAIN_TIMESTEPS
    if bf16_timesteps:
        t = round_bf16(t)
        s = t / NUM_TRAIN_TIMESTEPS
    return s, t, jnp.ones((batch,))


def noise_target_half(target, source, noise, sigma):
    """Model input [B, 2F', H, W, C]: noised target frames then the clean source frames.
    target/source/noise [B, F', H, W, C]; sigma [B]."""
    s = sigma.reshape(-1, 1, 1, 1, 1).astype(target.dtype)
    noisy = (1.0 - s) * target + s * noise
    return jnp.concatenate([noisy, source], axis=1)


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction {prediction!r} is unknown; expected one of {PREDICTIONS}")
    return prediction


def velocity_from_x0(x, x0, sigma):
    """The velocity implied by a clean-sample prediction: v = (x_sigma - x0) / sigma.
    x, x0 [B, ...]; sigma [B] (> 0)."""
    s = sigma.reshape((-1,) + (1,) * (x.ndim - 1)).astype(jnp.float32)
    return (x.astype(jnp.float32) - x0.astype(jnp.float32)) / s


def flow_loss(pred, target, noise, weight, prediction: str = "velocity"):
    """Weighted MSE on the target half.

    ``velocity`` (published): pred vs noise - x0. ``x0``: pred vs x0 (a small model whose
    width is below its token size cannot carry the noise through its residual stream, but
    can carry a clean, smooth sample; its velocity is recovered by velocity_from_x0).
    pred [B, 2F', H, W, C] (the model's output on [target | source]); target/noise
    [B, F', H, W, C]; weight [B]. The source half of ``pred`` is ignored.
    """
    f = target.shape[1]
    want = noise - target if check_prediction(prediction) == "velocity" else target
    err = jnp.square(pred[:, :f].astype(jnp.float32) - want.astype(jnp.float32))
    per_sample = jnp.mean(err, axis=(1, 2, 3, 4))
    return jnp.mean(per_sample * weight)


def copy_targets(target_units, source_units, temp: float, places=None, shift: float = 0.0, times=None,
                 per_frame: float = 0.0):
    """What the source copy should choose for each target unit: a softmax over source units of
    -(mean squared difference to the clean target unit) / temp -- the nearest source units, ties
    shared (an exact match gets weight 1 against e^-1 for one ``temp`` further) -- minus ``shift``
    times the squared distance between the units' places in their frames (places [Q, 2], the same
    grid for both halves) and ``per_frame`` times the units' distance in animation time (times: the
    target's and the source's per unit, [B, Q] each): of equally near units, those nearest in the
    image and in time. target_units [B, Q, V], source_units [B, S, V] (models.dit.copy_units) -> [B, Q, S]."""
    t, s = target_units.astype(jnp.float32), source_units.astype(jnp.float32)
    d2 = (jnp.sum(t ** 2, -1)[:, :, None] + jnp.sum(s ** 2, -1)[:, None, :]
          - 2 * jnp.einsum("bqv,bsv->bqs", t, s)) / t.shape[-1]  # [B, Q, S]
    cost = jnp.maximum(d2, 0.0) / temp
    if shift:
        cost = cost + shift * jnp.sum(jnp.square(places[:, None] - places[None]), -1)[None]  # + [1, Q, S]
    if per_frame:
        cost = cost + per_frame * jnp.abs(times[0][:, :, None] - times[1][:, None, :])  # + [B, Q, S]
    return jax.nn.softmax(-cost, axis=-1)
