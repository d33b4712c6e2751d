"""SpaceTimeDiT: the Wan2.1 video DiT with ReCamMaster / SpaceTimePilot conditioning.

Letters (see layers.py): B batch, F latent frames (whole sequence; target+source halves
in the conditioned modes), Fh = F/2 frames per half, T raw frames per half,
H/W token rows/cols, L = F*H*W tokens, D model dim, N heads, K head dim, S text tokens,
E text width, M FFN hidden, C latent channels, P flattened patch (pt*ph*pw*C), Q freq_dim.

Latents are channels-last: x [B, F, H*ph, W*pw, C].

Modes:
  wan             plain text-to-video DiT.
  recammaster     + per-block camera encoder and projector; the target camera [B, Fh, 12]
                  conditions both halves (as ReCamMaster does).
  spacetimepilot  + per-block animation-time embedding; target and source cameras and
                  target and source raw frame indices, concatenated target first.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from stp_jax.config_utils import JsonConfig
from stp_jax.controls.camera import pinhole_rays, source_rule
from stp_jax.controls.timing import latent_times, raw_frames
from stp_jax.models import attention as attn_lib
from stp_jax.models import layered
from stp_jax.models.conditioning import AnimationTimeEmbedding, camera_encoder, temporal_chunks
from stp_jax.models.layers import (
    MLP,
    AffineLayerNorm,
    Dense,
    HeadRMSNorm,
    apply_pose,
    apply_rope,
    gelu_tanh,
    identity_init,
    layer_norm,
    modulate,
    pose_mats,
    rope_split,
    rope_tables,
    sinusoid,
    sinusoid_f64,
)

MODES = ("wan", "recammaster", "spacetimepilot")
# default: float32 timestep and sinusoids. reference: as the published pipeline runs the model
# (docs/REFERENCE.md §6.2): the timestep rounded to bf16, every sinusoid computed to float64
# accuracy and cast to the compute dtype, the time embedding in the compute dtype.
NUMERICS = ("default", "reference")
# The frame coordinate of self-attention's 3D RoPE. index: the frame's place in the sequence
# (target frames 0..Fh-1, then source frames Fh..2Fh-1), as published. time: the frame's
# animation time in raw frames (controls.timing.latent_times), target and source alike, so a
# target token and the source token at the same animation time and place share their RoPE
# angles -- ours, for small models (docs/LEARNING.md §7); needs mode spacetimepilot.
ROPE_FRAMES = ("index", "time")
# cam_heads > 0 (ours, for small models; docs/LEARNING.md §8): in that many heads the frame part of
# the RoPE dims carries the frame's camera pose instead: q and k are multiplied block-wise by the
# inverse-transposed and the plain 4x4 pose (camera-relative attention, as in GTA / PRoPE), so a
# target token and a source token filmed from the same camera meet as if unrotated, whatever the
# times. Needs target and source poses in one frame: the source's relative to its first camera,
# unscaled (controls.camera.source_condition rule "first_camera", see source_camera_rule).
# copy_source (ours, for small models; docs/LEARNING.md §13): the target half's clean-sample
# prediction is the head's output plus a mixture of the source half's input tokens (the clean source
# latents, patch vectors), weighted by one attention from the last hidden states (q from target
# tokens, k from source tokens, positioned as in self-attention: the RoPE and camera-pose tables,
# logits summed over the heads). A copied token keeps every component of the source's pixels,
# which a 128-wide stream cannot carry (docs/LEARNING.md §11); the head adds what no source token
# has. Needs a target and a source half and in_channels == out_channels; meant for x0 prediction.
# copy_unit: what one copy choice moves. patch: a whole token (its ph*pw latent pixels together, as
# the transformer sees them). pixel: each latent pixel of a target token by its own query (the token's
# hidden state projected once per pixel of its patch) over every latent pixel of the source, positioned
# at the latent-pixel grid; an object's pixels then need not arrive in the block they left
# (docs/LEARNING.md §14, tools/copy_ceiling.py: with 8x8-pixel tokens even an oracle choice of source
# tokens leaves retiming along a moving camera 4.4 frames off, with 4x4-pixel units 0.3).
# copy_fov > 0 (geometry in the copy): the copy's logits also get -w * |X_t - X_s|^2, the squared
# distance between the world points of a target and a source unit: each unit's ray through its
# centre (a pinhole of copy_fov degrees across the frame's width, square pixels) at a depth predicted
# from its hidden state (copy_depth at init), placed by its frame's camera (the poses relative to
# the source's first camera: needs cam_heads). w is learned. A target unit then finds the source unit
# that saw the same point, wherever the camera change moved it; the time heads pick the frame.
# copy_geometry (with copy_fov): "point" compares the two units' points (each at its predicted depth);
# "ray" compares a source unit's point with the target unit's ray (the squared distance from the
# point to the half-line from the target camera through the unit's centre): only source depths are
# used (predicted from the clean source), so a target unit need not know its own depth, which for
# an object at a new time is what the copy is there to find (docs/LEARNING.md §16).
# copy_block_shortcut: the copy may not take a target frame's pixels from a source frame filmed from
# the same camera at another time (the camera-matched frame, which matches every static pixel at any
# depth and so wins over the frame at the requested time, docs/LEARNING.md §14); frames at the
# requested time, and frames from other cameras, stay open. Cameras equal within 1e-3, times within
# 1e-3 frames; needs cam_heads (poses in one frame).
# copy_gate: two copies mixed per unit by a learned gate (sigmoid of the hidden state; one half each at
# init): the first as configured, the second closed to that shortcut (copy_block_shortcut's rule) so
# it must take from the frame of the requested time or other cameras -- the oracle's mix of the
# requested camera's frame and the requested time's frame (docs/LEARNING.md §14).
# copy_composite > 0: the copy is mixed per pixel, by a learned gate, with a two-layer 2.5D composite
# of the source in each target frame's camera at its requested time (models/layered.py;
# docs/LEARNING.md §19; a pinhole of composite_fov degrees across the width, the poses relative to
# the source's first camera: needs cam_heads). Each source pixel's depth and whether it changes with
# time (objects and their shadows) come from a per-pixel head (the source token's last hidden state,
# the pixel's place in its token, len(COMPOSITE_CONV_DILATIONS) 3x3 convolutions over the source frame's
# pixels; zero-initialised output: depth copy_depth, nothing moving, at init); then the
# camera-matched frame's still pixels and the requested time's moving pixels are forward-warped into
# the target camera. The warp has no gradient: the depths and masks learn from their own losses
# (flow.FlowConfig.composite_loss, the renderer's depth and masks). The gate sees the token's state,
# both candidates and where the composite moved pixels, makes a hard choice per pixel (straight
# through: the gradient is the sigmoid's), and learns from the flow loss and its own
# (composite_gate_loss). The value is this many pixels per latent pixel side (the PatchAutoencoder's
# spatial fold, one frame per latent frame): in_channels == copy_composite**2 * 3. Sown: the
# predicted log depths and mask logits per source pixel, the gate's logits, both candidates and where the
# composite moved pixels. composite_gate="moved" takes the composite wherever it moved a pixel (§20);
# composite_attend adds attention over each frame's pixels and the clip's cells to the depth head (§23).
# composite_residual=False: where the output takes the composite, it is the composite's pixels alone, without the
# head's output added (which there barely moves the mean squared error but adds a grey level or two of noise to
# every pixel the composite has exactly: 0.2-0.55 dB of per-frame PSNR, docs/LEARNING.md §29); the copy's
# pixels keep it.
# composite_state=False: the depth and mask head reads the source pixels alone, not the source token's DiT state, which
# sees the noisy target half and the timestep; then the composite is a function of the source clip alone, the same
# at every sampler step and for every noise draw (docs/LEARNING.md §30).
# The copy's logits are sown as intermediates ("copy"/"logits", and "copy_moved"/"logits"), so a
# training loss can supervise the choice itself (flow.FlowConfig.copy_loss; copy_units gives the
# units in the same order).
COPY_UNITS = ("patch", "pixel")
COPY_GEOMETRIES = ("point", "ray")
# copy_composite's gate: "learned" everywhere, or "moved": the composite wherever it moved the pixel (another
# frame's pixel or the moving layer; a learned gate hedges there, keeping the copy's object at the wrong time:
# docs/LEARNING.md §19), learned elsewhere
COMPOSITE_GATES = ("learned", "moved")
# hidden width of copy_composite's per-pixel depth and mask head, and of its gate: DiTConfig.composite_width's
# default. The head's 3x3 convolutions cost width**2 per pixel: at 64 they are most of the composite model's
# step on CPU (docs/BENCHMARKS.md, tools/bench/step_profile.py)
COMPOSITE_HEAD_WIDTH = 64
# 3x3 convolutions over each source frame's pixels before that head, their dilations: a 17-pixel field (three
# undilated layers, a 7-pixel field, left the moving pixels' log depth 0.37 off; this, 0.29: docs/LEARNING.md §20)
COMPOSITE_CONV_DILATIONS = (1, 2, 4, 1)
# copy_composite's head beyond the pixel's field (docs/LEARNING.md §22-23): "" none; "frame": each pixel's
# (row, column, frame) as inputs and, after the convolutions, a residual attention layer over its frame's pixels
# (where a bouncing object's detached shadow is); "frame+clip": + one over the whole source clip's 2x2 cells
# (where its track touches the ground)
COMPOSITE_ATTENDS = ("", "frame", "frame+clip")
# composite_temporal: the head's convolutions also see, at each pixel, its change to the source frames this many
# frames away (clamped at the clip's ends) and to the clip's temporal median (what moves, from the pixels;
# docs/LEARNING.md §27)
COMPOSITE_TEMPORAL_OFFSETS = (-4, -2, -1, 1, 2, 4)
COMPOSITE_ATTN_HEADS = 4
# The camera/time inputs each mode takes (keyword arguments of SpaceTimeDiT.__call__, and the
# batch keys of the pipeline, the train step and the sampler).
COND_KEYS = {"wan": (), "recammaster": ("tgt_cam",), "spacetimepilot": ("tgt_cam", "src_cam", "tgt_time", "src_time")}
# The DiTConfig fields that say how a model runs, not what its weights are: a checkpoint may be loaded with other
# values (stp-train's init_from, stp-eval / stp-sample --model-set).
RUNTIME_FIELDS = ("dtype", "param_dtype", "attention", "context_parallel", "remat", "splash_block", "mode", "numerics",
                  "composite_splat", "composite_mask_logit", "composite_margin", "composite_residual")
REMAT_POLICIES = ("none", "full", "offload_full", "dots", "dots_no_batch", "offload_dots")
# Parameters the model reads only through a compute-dtype Dense (kernel and bias cast to
# DiTConfig.dtype before use, layers.Dense): stored in that dtype they give the same values to
# every matmul. The train state keeps the frozen ones so (train_step.store_frozen).
COMPUTE_DTYPE_PARAMS = r"(blocks/(self_attn|cross_attn)/[qkvo]|blocks/ffn/fc[12]|text_embedding/fc[12])/(kernel|bias)"
CAM_DIM = 12


FLOAT_DTYPES = ("float32", "bfloat16", "float16", "float64")  # DiTConfig.dtype / param_dtype


def _dtype_name(value) -> str | None:
    if value is None:  # (jnp.dtype(None) is the default float)
        return None
    try:
        return jnp.dtype(value).name
    except (TypeError, ValueError):
        return None


@dataclasses.dataclass(frozen=True)
class DiTConfig(JsonConfig):
    """Everything that defines the network (and how it runs). JSON round-trippable."""
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_frames: str = "index"  # ROPE_FRAMES
    cam_heads: int = 0  # heads whose RoPE frame dims carry the camera pose (0: as published)
    copy_source: bool = False  # x0 += attention-weighted source tokens (ours; False: as published)
    copy_unit: str = "patch"  # COPY_UNITS: what one copy choice moves (copy_source only)
    copy_fov: float = 0.0  # > 0: the copy compares world points of units, a pinhole of this FOV (degrees)
    copy_depth: float = 5.0  # the initial depth of every unit's point (copy_fov > 0), in pose units
    copy_geometry: str = "point"  # COPY_GEOMETRIES: target point or target ray against source points (copy_fov > 0)
    copy_block_shortcut: bool = False  # no copy from the target camera's source frame at another time
    copy_gate: bool = False  # + a second copy closed to that shortcut, the two mixed by a learned gate
    copy_composite: int = 0  # > 0: + a 2.5D composite (models/layered.py), this many pixels per latent pixel side
    composite_fov: float = 50.0  # the composite's pinhole, degrees across the width (the procedural scenes')
    composite_gate: str = "learned"  # COMPOSITE_GATES: where the composite moved a pixel, a learned choice or the composite
    composite_attend: str = ""  # COMPOSITE_ATTENDS: attention in the composite's depth and mask head
    composite_width: int = COMPOSITE_HEAD_WIDTH  # hidden width of the composite's depth and mask head and its gate
    composite_splat: int = 1  # the composite's moving layer splatted from this many points per pixel side (layered.py)
    composite_mask_logit: float = 0.0  # a pixel is in the moving layer where its mask logit is above this
    composite_temporal: bool = False  # the composite head sees each pixel's change over time (unused without copy_composite)
    composite_margin: float = layered.SHADOW_MARGIN  # the moving layer wins where nearer than this times the static one
    composite_residual: bool = True  # the head's output is added where the output takes the composite too (False: not;
    # like the other composite_ fields, unused without copy_composite)
    composite_state: bool = True  # the depth and mask head sees the source token's DiT state (False: the pixels alone)
    mode: str = "spacetimepilot"
    time_groups: int = 32  # GroupNorm groups in the TemporalDownsampler
    # ---- how it runs (not part of the weights)
    dtype: str = "float32"  # activation/compute dtype
    param_dtype: str = "float32"
    attention: str = "auto"  # auto | xla | cudnn | splash
    context_parallel: str = "none"  # none | ulysses | ring
    splash_block: int = 512
    remat: str = "none"  # none | full | offload_full | dots | dots_no_batch | offload_dots
    numerics: str = "default"  # default | reference (NUMERICS)

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        sizes = ("dim", "ffn_dim", "num_heads", "num_layers", "in_channels", "out_channels", "text_dim", "freq_dim",
                 "time_groups", "splash_block")
        small = [f"{k} {getattr(self, k)}" for k in sizes if getattr(self, k) < 1]
        small += [f"patch_size {self.patch_size}"] if min(self.patch_size, default=0) < 1 else []
        small += [] if self.eps > 0 else [f"eps {self.eps}"]
        if small:
            raise ValueError(f"invalid DiTConfig: sizes must be >= 1 and eps > 0, got {', '.join(small)}")
        choices = {"mode": MODES, "remat": REMAT_POLICIES, "attention": attn_lib.BACKENDS, "numerics": NUMERICS,
                   "context_parallel": attn_lib.CONTEXT_PARALLEL, "rope_frames": ROPE_FRAMES, "copy_unit": COPY_UNITS,
                   "copy_geometry": COPY_GEOMETRIES, "composite_gate": COMPOSITE_GATES,
                   "composite_attend": COMPOSITE_ATTENDS}
        problems = [f"{k} {getattr(self, k)!r} is not one of {allowed}" for k, allowed in choices.items()
                    if getattr(self, k) not in allowed]
        for k in ("dtype", "param_dtype"):
            if _dtype_name(getattr(self, k)) not in FLOAT_DTYPES:
                problems.append(f"{k} {getattr(self, k)!r} is not one of {FLOAT_DTYPES}")
        if self.dim % self.num_heads:
            problems.append(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.rope_frames == "time" and self.mode != "spacetimepilot":
            problems.append(f"rope_frames 'time' needs animation times: mode 'spacetimepilot', got {self.mode!r}")
        if self.cam_heads:
            if self.mode != "spacetimepilot" or not 0 < self.cam_heads <= self.num_heads:
                problems.append(f"cam_heads {self.cam_heads} needs mode 'spacetimepilot' and 0 < cam_heads <= "
                                f"num_heads {self.num_heads}")
            elif self.dim % self.num_heads == 0:
                try:
                    frame_dims = rope_split(self.head_dim)[0]
                except ValueError as e:
                    problems.append(str(e))
                else:
                    if frame_dims % 4:
                        problems.append(f"cam_heads needs the RoPE frame dims of head_dim {self.head_dim} "
                                        f"({frame_dims}) to be a multiple of 4")
        if self.copy_source and (self.mode == "wan" or self.in_channels != self.out_channels):
            problems.append(f"copy_source needs a source half (mode 'recammaster' or 'spacetimepilot', got "
                            f"{self.mode!r}) and in_channels == out_channels (got {self.in_channels}, "
                            f"{self.out_channels})")
        if self.copy_geometry in COPY_GEOMETRIES[1:] and not self.copy_fov:
            problems.append(f"copy_geometry {self.copy_geometry!r} needs copy_fov > 0 (the copy's geometry term)")
        if self.copy_fov and not (self.copy_source and self.cam_heads and 0 < self.copy_fov < 180
                                  and self.copy_depth > 0):
            problems.append(f"copy_fov {self.copy_fov} needs copy_source, cam_heads > 0 (target and source poses "
                            f"in one frame), 0 < copy_fov < 180 and copy_depth > 0 (got {self.copy_depth})")
        for name in ("copy_block_shortcut", "copy_gate"):
            if getattr(self, name) and not (self.copy_source and self.cam_heads):
                problems.append(f"{name} needs copy_source and cam_heads > 0 (target and source poses in one frame)")
        if self.copy_composite and not (self.copy_source and self.cam_heads and self.mode == "spacetimepilot"
                                        and 0 < self.composite_fov < 180
                                        and self.in_channels == 3 * self.copy_composite ** 2):
            problems.append(f"copy_composite {self.copy_composite} needs copy_source, cam_heads > 0 (target and "
                            f"source poses in one frame), mode 'spacetimepilot' (the requested times), 0 < "
                            f"composite_fov < 180 (got {self.composite_fov}) and in_channels == 3 * "
                            f"copy_composite**2 (one frame's pixels per latent pixel; got {self.in_channels})")
        if not (math.isfinite(self.composite_margin) and self.composite_margin > 0):
            problems.append(f"composite_margin {self.composite_margin} must be a finite depth ratio > 0")
        if not math.isfinite(self.composite_mask_logit):
            problems.append(f"composite_mask_logit {self.composite_mask_logit} must be a finite logit")
        if self.composite_splat < 1:
            problems.append(f"composite_splat {self.composite_splat} must be >= 1 (points per pixel side)")
        if self.copy_composite and self.composite_width < 1:
            problems.append(f"composite_width {self.composite_width} must be >= 1")
        elif self.composite_attend and self.composite_width % COMPOSITE_ATTN_HEADS:
            problems.append(f"composite_width {self.composite_width} with composite_attend {self.composite_attend!r} must "
                            f"be a multiple of its {COMPOSITE_ATTN_HEADS} attention heads")
        if self.composite_attend in COMPOSITE_ATTENDS[1:] and not self.copy_composite:
            problems.append(f"composite_attend {self.composite_attend!r} needs copy_composite > 0 (it is that head's)")
        elif self.composite_attend == "frame+clip" and (self.patch_size[1] * self.copy_composite % 2
                                                        or self.patch_size[2] * self.copy_composite % 2):
            problems.append(f"composite_attend {self.composite_attend!r} pools 2x2 pixel cells: needs an even number "
                            f"of pixels per token side (patch_size {self.patch_size}, copy_composite {self.copy_composite})")
        if self.mode == "spacetimepilot" and self.dim % self.time_groups:
            problems.append(f"dim {self.dim} is not divisible by time_groups {self.time_groups}")
        if self.mode != "wan" and self.patch_size[0] != 1:
            problems.append(f"camera/time conditioning needs temporal patch 1, got patch_size {self.patch_size}")
        if len(self.patch_size) != 3:
            problems.append(f"patch_size {self.patch_size} must have 3 entries (t, h, w)")
        if problems:
            raise ValueError("invalid DiTConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def published(self) -> bool:
        """Whether the published PyTorch model has this architecture (no attention or head of ours)."""
        return self.rope_frames == "index" and not self.cam_heads and not self.copy_source

    @property
    def source_camera_rule(self) -> str:
        """How the source's poses must be turned into its camera input (controls.camera.source_condition)."""
        return source_rule(self.cam_heads)


PRESETS: dict[str, DiTConfig] = {
    # Published sizes (docs/REFERENCE.md §2).
    "1.3b": DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "14b": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # Tests: every code path, seconds on CPU. head_dim 16 -> RoPE split (8, 4, 4).
    "tiny": DiTConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, in_channels=4, out_channels=4,
                      text_dim=32, freq_dim=32, time_groups=8),
}


def preset(name: str, **overrides) -> DiTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown DiT preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def _remat_policy(name: str):
    cp = jax.checkpoint_policies
    return {
        "full": cp.nothing_saveable,
        "dots": cp.checkpoint_dots,
        "dots_no_batch": cp.dots_with_no_batch_dims_saveable,
        "offload_dots": cp.offload_dot_with_no_batch_dims("device", "pinned_host"),
        # full, with each layer's input (the one tensor full keeps per layer) in pinned host memory
        "offload_full": cp.save_and_offload_only_these_names(
            names_which_can_be_saved=[], names_which_can_be_offloaded=["block_input"],
            offload_src="device", offload_dst="pinned_host"),
    }[name]


def _act(x, *names):
    return nn.with_logical_constraint(x, names)


def _position(x, rope, c: DiTConfig, which: int):
    """RoPE on x [B, L, N, K]; in the first ``cam_heads`` heads the frame dims take the pose matrix
    rope[which] [B, L, 4, 4] instead of a frame angle (rope = (cos, sin[, cos0, sin0, q_mats, k_mats]),
    cos0/sin0 the tables without frame angles)."""
    if len(rope) == 2:
        return apply_rope(x, *rope)
    n = c.cam_heads
    posed = apply_pose(apply_rope(x[:, :, :n], *rope[2:4]), rope[which], rope_split(c.head_dim)[0])
    return jnp.concatenate([posed, apply_rope(x[:, :, n:], *rope[:2])], axis=2)


def _rope_inputs(c: DiTConfig, grid, frame_pos, cam, patch=None):
    """The positions attention applies (_position's ``rope``) for a (F, H, W) grid: cos, sin
    [L, K/2] (rope_frames time: [B, L, K/2]) and with camera heads also the tables without frame
    angles and the per-token pose matrices [B, L, 4, 4]. ``patch`` (ph, pw): the grid is of latent
    pixels, returned in token-major order (tokens of (ph, pw) pixels, as SourceCopy's pixel units)."""
    f, hh, ww = grid
    rope = rope_tables(grid, c.head_dim, c.rope_theta, frame_pos)  # 2 x [L, K/2] (time: [B, L, K/2])
    if patch is not None:
        rope = tuple(rearrange(t, "... (f h a w e) k -> ... (f h w a e) k", f=f, h=hh // patch[0], a=patch[0],
                               w=ww // patch[1], e=patch[1]) for t in rope)
    if c.cam_heads:  # camera heads: no frame angle; per-token poses, q by inv(P)^T, k by P
        dt = rope_split(c.head_dim)[0]
        cos0, sin0 = rope[0].at[..., : dt // 2].set(1.0), rope[1].at[..., : dt // 2].set(0.0)
        tok = jnp.arange(f * hh * ww) // (hh * ww)  # the frame of each token (of each pixel: frames stay whole)
        rope = (*rope, cos0, sin0, *(jnp.take(m, tok, axis=1) for m in pose_mats(cam)))  # + 2 x [B, L, 4, 4]
    return rope


def _unit_rays(c: DiTConfig, grid, patch=None):
    """The copy's geometry inputs for a (F, H, W) grid of units: each unit's ray through its centre in
    camera coordinates (OpenCV: x right, y down, z forward; z = 1) [U, 3] and its frame [U]; a pinhole
    of c.copy_fov degrees across W. ``patch`` (ph, pw): latent pixels in token-major order, as
    _rope_inputs."""
    f, hh, ww = grid
    rays = jnp.broadcast_to(pinhole_rays(hh, ww, c.copy_fov), (f, hh, ww, 3))
    frames = jnp.broadcast_to(jnp.arange(f)[:, None, None], (f, hh, ww))
    order = "f h w" if patch is None else "f (h a) (w e)"
    to = "(f h w)" if patch is None else "(f h w a e)"
    kw = {} if patch is None else dict(a=patch[0], e=patch[1])
    return rearrange(rays, f"{order} x -> {to} x", **kw), rearrange(frames, f"{order} -> {to}", **kw)


def composite_pixels(c: DiTConfig, latents):
    """Latents [B, F, H*ph, W*pw, C] (one half; C = s*s*3 for s = c.copy_composite) as the pixels of
    each token, in patch-vector order: [B, F*H*W, ph*pw*s*s, 3]."""
    _, ph, pw = c.patch_size
    s = c.copy_composite
    return rearrange(latents, "b f (h ph) (w pw) (s1 s2 c) -> b (f h w) (ph pw s1 s2) c", ph=ph, pw=pw, s1=s, s2=s)


def pixel_places(shape) -> jax.Array:
    """Each pixel's (row, column, frame) of a clip [..., T, H, W], each in [-1, 1]: [*shape, 3]."""
    *lead, t, h, w = shape
    grid = jnp.meshgrid(*(jnp.linspace(-1.0, 1.0, k, dtype=jnp.float32) for k in (t, h, w)), indexing="ij")
    return jnp.broadcast_to(jnp.stack([grid[1], grid[2], grid[0]], -1), (*lead, t, h, w, 3))


def _pixel_self_attention(x, name: str, pdtype):
    """A residual attention layer over the tokens of x [B, L, width] (pre-norm, COMPOSITE_ATTN_HEADS heads, the
    output projection zero at init), made inside the calling compact module: [B, L, width]."""
    width = x.shape[-1]
    xn = layer_norm(x, 1e-6)
    q, k, v = (Dense((COMPOSITE_ATTN_HEADS, width // COMPOSITE_ATTN_HEADS), (None, None, None), name=f"{name}_{w}",
                     param_dtype=pdtype)(xn) for w in "qkv")  # [B, L, N, K]
    o = jax.nn.dot_product_attention(q, k, v)  # [B, L, N, K]
    return x + Dense((width,), (None, None, None), n_in=2, kernel_init=nn.initializers.zeros, name=f"{name}_o",
                     param_dtype=pdtype)(o)


def composite_temporal_inputs(pix):
    """Each source pixel of pix [B, T, H, W, 3] with its change to the frames COMPOSITE_TEMPORAL_OFFSETS away
    (clamped at the ends) and to the clip's temporal median: [B, T, H, W, 3 * (len(offsets) + 2)]."""
    t = pix.shape[1]
    near = [pix[:, jnp.clip(jnp.arange(t) + o, 0, t - 1)] - pix for o in COMPOSITE_TEMPORAL_OFFSETS]
    median = jnp.broadcast_to(jnp.median(pix, axis=1, keepdims=True), pix.shape) - pix
    return jnp.concatenate([pix, *near, median], -1)


def composite_pixel_features(pix, dilations=COMPOSITE_CONV_DILATIONS, attend: str = "", pdtype=jnp.float32,
                             width: int = COMPOSITE_HEAD_WIDTH):
    """copy_composite's head on each source frame's pixels pix [B, T, H, W, C] -> [B, T, H, W, width]:
    3x3 convolutions of these dilations over each frame, then (attend, COMPOSITE_ATTENDS; the pixels' places are
    inputs too) attention over each frame's pixels, and over the clip's 2x2 cells. Made inside the calling compact
    module (parameters composite_conv{i}, composite_{frame,clip}_attn_{q,k,v,o})."""
    b, t, hh, ww, _ = pix.shape
    if attend:
        pix = jnp.concatenate([pix, pixel_places((b, t, hh, ww))], -1)
    h = pix.reshape(b * t, hh, ww, pix.shape[-1])  # [B*T, H, W, C]: each frame's pixels
    for i, dil in enumerate(dilations):  # the pixel's neighbourhood (object edges, shadows, base)
        h = gelu_tanh(nn.Conv(width, (3, 3), padding="SAME", kernel_dilation=dil, name=f"composite_conv{i}",
                                param_dtype=pdtype,
                                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                                         (None, None, None, None)),
                                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(h))
    if attend:
        h = _pixel_self_attention(h.reshape(b * t, hh * ww, width), "composite_frame_attn", pdtype)  # [B*T, H*W, width]
    if "clip" in attend:
        h = h.reshape(b, t, hh // 2, 2, ww // 2, 2, width)
        cells = h.mean((3, 5)).reshape(b, t * (hh // 2) * (ww // 2), width)  # [B, T*H/2*W/2, width]: the clip's cells
        cells = _pixel_self_attention(cells, "composite_clip_attn", pdtype) - cells
        h = h + cells.reshape(b, t, hh // 2, 1, ww // 2, 1, width)  # each cell's news to its 2x2 pixels
    return h.reshape(b, t, hh, ww, width)


def _composite_mix(mod: nn.Module, c: DiTConfig, h, x, copied, cam, tgt_time, src_time, grid):
    """DiTConfig.copy_composite: the copy [B, L, P] (target tokens first) mixed per pixel with the 2.5D
    composite of the source half of x [B, F, Hp, Wp, C] (models/layered.py), from depths and masks
    predicted from the source tokens' hidden states h [B, L, D]; parameters and intermediates are
    ``mod``'s (called inside its compact __call__). Returns the mix [B, L, P] (zeros for source tokens, as the
    copy) and where it took the composite [B, L, P] (1 there, 0 elsewhere and for source tokens; no gradient)."""
    f, hh, ww = grid
    _, ph, pw = c.patch_size
    s, fh = c.copy_composite, f // 2
    b, l, _ = h.shape
    npx = ph * pw * s * s  # pixels per token
    pdtype = jnp.dtype(c.param_dtype)
    hf = h.astype(jnp.float32)
    src_pix = composite_pixels(c, x[:, fh:]).astype(jnp.float32)  # [B, L/2, npx, 3]
    to_img = lambda a: rearrange(a, "b (f h w) (ph pw s1 s2) ... -> b f (h ph s1) (w pw s2) ...",  # noqa: E731
                                 f=fh, h=hh, w=ww, ph=ph, pw=pw, s1=s, s2=s)
    to_tok = lambda a: rearrange(a, "b f (h ph s1) (w pw s2) ... -> b (f h w) (ph pw s1 s2) ...",  # noqa: E731
                                 h=hh, w=ww, ph=ph, pw=pw, s1=s, s2=s)
    # per source pixel: its token's state, its place in the token and its neighbourhood -> log depth / copy_depth
    # and mask logit (a 128-wide state alone does not carry a mask of 64 pixels: docs/LEARNING.md §19)
    width = c.composite_width
    place = mod.param("composite_place", nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, None)),
                      (npx, width), pdtype)  # [npx, width]
    img = to_img(src_pix)  # [B, Fh, H, W, 3]
    if c.composite_temporal:
        img = composite_temporal_inputs(img)  # [B, Fh, H, W, 24]
    local = composite_pixel_features(img, attend=c.composite_attend, pdtype=pdtype, width=width)  # [B, Fh, H, W, width]
    feat = place.astype(jnp.float32)  # [npx, width]
    if c.composite_state:  # the source token's state
        feat = Dense((width,), ("embed", None), name="composite_token", param_dtype=pdtype)(hf[:, l // 2:])[:, :, None] + feat
    feat = feat + to_tok(local)  # [B, L/2, npx, width]
    heads = Dense((2,), (None, None), kernel_init=nn.initializers.zeros, name="composite_heads",
                  param_dtype=pdtype)(gelu_tanh(feat))  # [B, L/2, npx, 2]
    log_d, mask_logit = heads[..., 0], heads[..., 1]
    mod.sow("intermediates", "composite_log_depth", to_img(log_d))  # [B, Fh, H, W] per source pixel
    mod.sow("intermediates", "composite_moving", to_img(mask_logit))  # [B, Fh, H, W] logits
    depth = c.copy_depth * jnp.exp(jnp.clip(jax.lax.stop_gradient(log_d), -3.0, 3.0))
    rt = cam.reshape(b, f, 3, 4).astype(jnp.float32)
    moves = jax.lax.stop_gradient(mask_logit) > c.composite_mask_logit  # [B, L/2, npx]
    pix, changed = layered.composite(to_img(src_pix), to_img(depth), to_img(moves),
                                     rt[:, fh:], rt[:, :fh], latent_times(src_time), latent_times(tgt_time),
                                     c.composite_fov, c.composite_splat, c.composite_margin)  # [B, Fh, H, W, 3], [B, Fh, H, W]
    comp = to_tok(pix)  # [B, L/2, npx, 3]
    cp = copied[:, : l // 2].astype(jnp.float32).reshape(b, l // 2, npx, 3)
    # the gate sees, at each pixel, both candidates and whether the composite moved it, beside the token's state
    moved = to_tok(changed.astype(jnp.float32))  # [B, L/2, npx]
    seen = jax.lax.stop_gradient(jnp.concatenate([cp, comp, moved[..., None]], -1))
    gfeat = (Dense((width,), ("embed", None), name="composite_gate_token", param_dtype=pdtype)(hf[:, : l // 2])[:, :, None]
             + Dense((width,), (None, None), name="composite_gate_pixel", param_dtype=pdtype)(seen))  # [B, L/2, npx, width]
    gate = Dense((1,), (None, None), kernel_init=nn.initializers.zeros, name="composite_gate",
                 param_dtype=pdtype)(gelu_tanh(gfeat))[..., 0]  # [B, L/2, npx] logits
    mod.sow("intermediates", "composite_gate_logits", gate)
    mod.sow("intermediates", "composite_candidates", jnp.stack([cp, comp]))  # [2, B, L/2, npx, 3]
    # a hard choice per pixel (a blend of two sharp candidates is a ghost of two times), trained straight
    # through: the gradient is the soft gate's
    soft = jax.nn.sigmoid(gate)
    g = soft + jax.lax.stop_gradient((soft >= 0.5).astype(jnp.float32) - soft)  # [B, L/2, npx]
    if c.composite_gate == "moved":
        g = jnp.where(moved > 0, 1.0, g)
    mod.sow("intermediates", "composite_moved", moved)  # [B, L/2, npx]: 1 where the composite moved the pixel
    took = jax.lax.stop_gradient(jnp.repeat((g >= 0.5).astype(jnp.float32), 3, axis=-1))  # [B, L/2, P]
    g = g[..., None]
    mixed = ((1 - g) * cp + g * comp).reshape(b, l // 2, -1)  # [B, L/2, P]
    zeros = jnp.zeros_like(mixed)
    return (jnp.concatenate([mixed, zeros], axis=1).astype(copied.dtype),
            jnp.concatenate([took, zeros], axis=1))  # [B, L, P] each


def copy_units(c: DiTConfig, latents):
    """The copy's units of latents [B, F, H, W, C] (one half), in SourceCopy's order: [B, U, V] --
    patch: tokens (f, h, w), each its patch vector (pt, ph, pw, C); pixel: latent pixels token-major
    (f, h, w, ph, pw), each its C values (patch_size[0] == 1)."""
    pt, ph, pw = c.patch_size
    if c.copy_unit == "patch":
        return rearrange(latents, "b (f pt) (h ph) (w pw) c -> b (f h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw)
    return rearrange(latents, "b f (h ph) (w pw) c -> b (f h w ph pw) c", ph=ph, pw=pw)


def copy_unit_places(c: DiTConfig, frames: int, height: int, width: int):
    """Where copy_units' units sit in their frame, in latent pixels (a patch unit at its centre):
    [U, 2] (row, column) for a half of ``frames`` latent frames of height x width latent pixels."""
    _, ph, pw = c.patch_size
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")
    grid = jnp.broadcast_to(jnp.stack([rows, cols], -1), (frames, height, width, 2))
    if c.copy_unit == "patch":
        return rearrange(grid, "f (h ph) (w pw) x -> (f h w) (ph pw) x", ph=ph, pw=pw).mean(1)
    return rearrange(grid, "f (h ph) (w pw) x -> (f h w ph pw) x", ph=ph, pw=pw)


def _head_proj(c: DiTConfig, name: str) -> Dense:
    """One per-head projection D -> [N, K] (q, k or v) of an attention."""
    return Dense((c.num_heads, c.head_dim), ("embed", "heads", "kv"), name=name, dtype=jnp.dtype(c.dtype),
                 param_dtype=jnp.dtype(c.param_dtype))


def _query_key(c: DiTConfig, x, ctx, rope=None):
    """Wan's queries and keys, made inside the calling compact module (parameters q, k, norm_q,
    norm_k): projected, RMS-normed across heads, then positioned when ``rope`` is given (_position).
    x [B, L, D], ctx [B, S, D] -> q [B, L, N, K], k [B, S, N, K]."""
    pdtype = jnp.dtype(c.param_dtype)
    q = HeadRMSNorm(c.eps, pdtype, name="norm_q")(_head_proj(c, "q")(x))
    kk = HeadRMSNorm(c.eps, pdtype, name="norm_k")(_head_proj(c, "k")(ctx))
    if rope is not None:
        q, kk = _position(q, rope, c, 4), _position(kk, rope, c, 5)
    return q, kk


class Attention(nn.Module):
    """Wan attention: q/k/v projections, RMSNorm across heads on q and k, optional RoPE."""
    cfg: DiTConfig
    self_attention: bool = True

    @nn.compact
    def __call__(self, x, ctx, rope=None):  # x [B, L, D], ctx [B, S, D] -> [B, L, D]
        c = self.cfg
        q, kk = _query_key(c, x, ctx, rope)  # [B, L, N, K], [B, S, N, K]
        v = _head_proj(c, "v")(ctx)
        q = _act(q, "activation_batch", "activation_length", "activation_heads", "activation_kv")
        if self.self_attention:
            out = attn_lib.attention(q, kk, v, backend=c.attention, context_parallel=c.context_parallel,
                                     splash_block=c.splash_block)
        else:  # text keys are short: plain XLA attention on each device's tokens (they stay sharded)
            backend = "cudnn" if attn_lib.resolve_backend(c.attention, q.dtype) == "cudnn" else "xla"
            out = attn_lib.attention(q, kk, v, backend=backend, cross=True)
        out = _act(out, "activation_batch", "activation_length", "activation_heads", "activation_kv")
        return Dense((c.dim,), ("heads", "kv", "embed"), n_in=2, name="o", dtype=jnp.dtype(c.dtype),
                     param_dtype=jnp.dtype(c.param_dtype))(out)  # [B, L, D]


def copy_distance2(geometry: str, pt_q, pt_s, origin_q, dir_q):
    """Squared distances [B, Q, S] between target units (points pt_q, or the half-lines from their
    cameras' centres origin_q along dir_q, [B, Q, 3] each) and source points pt_s [B, S, 3]
    (DiTConfig.copy_geometry): "point" |X_q - X_s|^2; "ray" the squared distance from X_s to the
    half-line (to its origin for a point behind the camera)."""
    if geometry == "point":
        return (jnp.sum(pt_q ** 2, -1)[:, :, None] + jnp.sum(pt_s ** 2, -1)[:, None, :]
                - 2 * jnp.einsum("bqx,bsx->bqs", pt_q, pt_s))
    d = dir_q / jnp.linalg.norm(dir_q, axis=-1, keepdims=True)  # [B, Q, 3]
    along = jnp.einsum("bsx,bqx->bqs", pt_s, d) - jnp.sum(origin_q * d, -1)[:, :, None]  # (X_s - o) . d
    to_o = (jnp.sum(pt_s ** 2, -1)[:, None, :] + jnp.sum(origin_q ** 2, -1)[:, :, None]
            - 2 * jnp.einsum("bsx,bqx->bqs", pt_s, origin_q))  # |X_s - o|^2
    return jnp.where(along > 0, to_o - jnp.square(along), to_o)


class SourceCopy(nn.Module):
    """What a target token copies from the source (DiTConfig.copy_source): one attention from the
    target half's hidden states to the source half's, whose values are the source's input
    latents, unchanged. copy_unit patch: one query per token, the values the source's patch
    vectors; pixel: one query per latent pixel of a token's patch (the hidden state projected
    ph*pw times), the values the source's latent pixels, ``rope`` then the tables of the
    latent-pixel grid in token-major order (_rope_inputs). Returns [B, L, P]: the copy for target
    tokens, zeros for source tokens."""
    cfg: DiTConfig

    @nn.compact
    def __call__(self, h, v, rope, geo=None, blocked=None):
        # h [B, L, D] (the head's input), v [B, U, V] (the units of the whole sequence, copy_units);
        # blocked [B, Fh, Fh]: target frame i may not copy from source frame j (copy_block_shortcut)
        c = self.cfg
        n, k = c.num_heads, c.head_dim
        b, l, _ = h.shape
        s = 1 if c.copy_unit == "patch" else c.patch_size[1] * c.patch_size[2]  # units per token
        if c.copy_unit == "patch":
            q, kk = _query_key(c, h, h, rope)  # [B, L, N, K] each
        else:  # one unit per latent pixel: U = L * s units, token-major
            pdtype = jnp.dtype(c.param_dtype)

            def proj(name):
                y = Dense((s, n, k), ("embed", None, "heads", "kv"), name=name, dtype=jnp.dtype(c.dtype),
                          param_dtype=pdtype)(h)  # [B, L, s, N, K]
                y = HeadRMSNorm(c.eps, pdtype, name=f"norm_{name}")(y.reshape(b, l * s, n, k))
                return _position(y, rope, c, 4 if name == "q" else 5)  # [B, U, N, K]

            q, kk = proj("q"), proj("k")
        lh = q.shape[1] // 2  # target units first
        logits = jnp.einsum("bqnk,bsnk->bqs", q[:, :lh], kk[:, lh:],
                            preferred_element_type=jnp.float32) / (n * k) ** 0.5  # [B, U/2, U/2]
        if c.copy_fov:  # world points: each unit's ray at its predicted depth, placed by its frame's camera
            rays, frames, cam = geo  # [U, 3], [U], [B, F, 12]
            log_d = Dense((s,), ("embed", None), kernel_init=nn.initializers.zeros, name="depth",
                          param_dtype=jnp.dtype(c.param_dtype))(h.astype(jnp.float32))  # [B, L, s]
            depth = c.copy_depth * jnp.exp(jnp.clip(log_d.reshape(b, l * s), -3.0, 3.0))  # [B, U]
            rt = jnp.take(cam.reshape(b, -1, 3, 4).astype(jnp.float32), frames, axis=1)  # [B, U, 3, 4]
            dirs = jnp.einsum("buij,uj->bui", rt[..., :3], rays)  # [B, U, 3]: world rays, unit z in camera
            pts = dirs * depth[..., None] + rt[..., 3]  # [B, U, 3]
            pt_q, pt_s = pts[:, :lh], pts[:, lh:]
            dist2 = copy_distance2(c.copy_geometry, pt_q, pt_s, rt[:, :lh, :, 3], dirs[:, :lh])  # [B, U/2, U/2]
            log_w = self.param("log_weight", nn.with_logical_partitioning(nn.initializers.zeros, (None,)), (1,),
                               jnp.dtype(c.param_dtype))  # [1]
            logits = logits - jnp.exp(log_w[0].astype(jnp.float32)) * jnp.maximum(dist2, 0.0)
        if blocked is not None:  # per frame pair -> per unit pair (units are frame-major)
            fh = blocked.shape[1]
            per = lh // fh  # units per frame
            logits = jnp.where(blocked[:, :, None, :, None], -1e9,
                               logits.reshape(b, fh, per, fh, per)).reshape(b, lh, lh)
        self.sow("intermediates", "logits", logits)  # [B, U/2, U/2]: for flow.FlowConfig.copy_loss
        weights = jax.nn.softmax(logits, axis=-1)
        copied = jnp.einsum("bqs,bsv->bqv", weights, v[:, lh:].astype(jnp.float32))  # [B, U/2, V]
        copied = copied.reshape(b, l // 2, -1)  # [B, L/2, P]: a token's units are contiguous
        return jnp.concatenate([copied, jnp.zeros_like(copied)], axis=1).astype(v.dtype)  # [B, L, P]


class Block(nn.Module):
    """One Wan block plus the mode's conditioning (docs/REFERENCE.md §1, forward of one block)."""
    cfg: DiTConfig
    grid: tuple[int, int, int]  # (F, H, W) token grid of the whole sequence

    @nn.compact
    def __call__(self, x, ctx, e0, rope, t_sin, cam):
        # x [B, L, D]; ctx [B, S, D]; e0 [B, 6, D]; t_sin [2, B, T, Q] | None; cam [B, F, 12] | None
        c = self.cfg
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        x = checkpoint_name(x, "block_input")  # what remat=offload_full moves to the host
        b, l, d = x.shape
        _, hh, ww = self.grid
        mod = self.param("modulation", nn.with_logical_partitioning(
            lambda key, s, dt: jax.random.normal(key, s, dt) / d ** 0.5, ("modulation", "embed")), (6, d), pdtype)
        e = mod.astype(jnp.float32)[None] + e0.astype(jnp.float32)  # [B, 6, D]
        sh_msa, sc_msa, g_msa, sh_mlp, sc_mlp, g_mlp = (e[:, i:i + 1] for i in range(6))

        h = modulate(layer_norm(x, c.eps), sh_msa, sc_msa)  # [B, L, D] f32
        if c.mode != "wan":
            cond = camera_encoder(d, dtype, pdtype)(cam)  # [B, F, D]
            if c.mode == "spacetimepilot":
                te = AnimationTimeEmbedding(d, c.time_groups, dtype, pdtype, name="time")
                tt = te(t_sin.reshape(-1, *t_sin.shape[2:]))  # [2B, Fh, D]
                tt = tt.reshape(2, b, *tt.shape[1:])
                cond = cond + jnp.concatenate([tt[0], tt[1]], axis=1)  # target first: [B, F, D]
            cond = _act(cond, "activation_batch", "activation_frames", "activation_embed")
            # per token by indexing (token i is in frame i // (H*W)), not by reshaping h to [B, F, H*W, D]:
            # the reshape does not follow a token sharding that splits a frame, and made XLA gather
            # the whole sequence on every chip of a context group.
            cond = jnp.take(cond, jnp.arange(l) // (hh * ww), axis=1)  # [B, L, D]
            cond = _act(cond, "activation_batch", "activation_length", "activation_embed")
            h = h + cond.astype(jnp.float32)
        h = _act(h.astype(dtype), "activation_batch", "activation_length", "activation_embed")
        y = Attention(c, True, name="self_attn")(h, h, rope)
        if c.mode != "wan":
            y = Dense((d,), ("embed", "mlp"), dtype=dtype, param_dtype=pdtype, kernel_init=identity_init,
                      name="projector")(y)
        x = (x.astype(jnp.float32) + y.astype(jnp.float32) * g_msa).astype(dtype)
        x = _act(x, "activation_batch", "activation_length", "activation_embed")

        hn = AffineLayerNorm(c.eps, pdtype, name="norm3")(x)
        x = x + Attention(c, False, name="cross_attn")(hn, ctx).astype(dtype)

        h = modulate(layer_norm(x, c.eps), sh_mlp, sc_mlp).astype(dtype)
        y = MLP(c.ffn_dim, d, "gelu_tanh", ("embed", "mlp"), ("mlp", "embed"), dtype=dtype, param_dtype=pdtype,
                hidden_constraint=("activation_batch", "activation_length", "activation_mlp"), name="ffn")(h)
        x = (x.astype(jnp.float32) + y.astype(jnp.float32) * g_mlp).astype(dtype)
        x = _act(x, "activation_batch", "activation_length", "activation_embed")
        return x, None


class SpaceTimeDiT(nn.Module):
    cfg: DiTConfig

    @nn.compact
    def __call__(self, x, timestep, context, *, tgt_cam=None, src_cam=None, tgt_time=None, src_time=None):
        """Predict the flow velocity.

        x         [B, F, H*ph, W*pw, C] latents; in conditioned modes F = 2*Fh, target first.
        timestep  [B] diffusion time on the 0..1000 scale.
        context   [B, S, E] text-encoder states.
        tgt_cam, src_cam    [B, Fh, 12] per-latent-frame camera-to-world (recammaster: tgt only).
        tgt_time, src_time  [B, T] raw animation-frame indices, T = 1 + 4*(Fh-1) (spacetimepilot).
        Returns [B, F, H*ph, W*pw, C_out].
        """
        c = self.cfg
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        b, ft, hp, wp, ch = x.shape
        pt, ph, pw = c.patch_size
        if ch != c.in_channels or ft % pt or hp % ph or wp % pw:
            raise ValueError(f"latents of shape {x.shape} do not fit the model: expected [B, F, H, W, "
                             f"{c.in_channels}] with F, H, W divisible by patch {c.patch_size}")
        f, hh, ww = ft // pt, hp // ph, wp // pw
        t_sin, cam = self._conditioning_inputs(b, f, tgt_cam, src_cam, tgt_time, src_time)

        # patchify: tokens in raster order (f, h, w), each patch vector ordered (pt, ph, pw, C)
        p = rearrange(x, "b (f pt) (h ph) (w pw) c -> b (f h w) (pt ph pw c)", pt=pt, ph=ph, pw=pw)  # [B, L, P]
        h = Dense((c.dim,), ("patch", "embed"), name="patch_embedding", **kw)(p)  # [B, L, D]
        h = _act(h, "activation_batch", "activation_length", "activation_embed")

        if c.numerics == "reference":  # bf16 timestep, float64 sinusoid cast to the compute dtype
            t_emb = sinusoid_f64(timestep.astype(jnp.bfloat16), c.freq_dim).astype(dtype)  # [B, Q]
            t_dtype = dtype
        else:
            t_emb, t_dtype = sinusoid(timestep.astype(jnp.float32), c.freq_dim), jnp.float32  # [B, Q]
        e = MLP(c.dim, c.dim, "silu", ("freq", "mlp"), ("mlp", "embed"), dtype=t_dtype, param_dtype=pdtype,
                name="time_embedding")(t_emb).astype(jnp.float32)  # [B, D]
        e0 = Dense((6, c.dim), ("embed", "modulation", "mlp"), dtype=t_dtype, param_dtype=pdtype,
                   name="time_projection")(jax.nn.silu(e).astype(t_dtype)).astype(jnp.float32)  # [B, 6, D]
        ctx = MLP(c.dim, c.dim, "gelu_tanh", ("text_embed", "mlp"), ("mlp", "embed"), name="text_embedding",
                  **kw)(context)
        ctx = _act(ctx, "activation_batch", "activation_text", "activation_embed")  # [B, S, D]
        frame_pos = None
        if c.rope_frames == "time":  # target then source, as the sequence: [B, F]
            frame_pos = jnp.concatenate([latent_times(tgt_time), latent_times(src_time)], axis=1)
        rope = _rope_inputs(c, (f, hh, ww), frame_pos, cam)

        block = Block
        if c.remat != "none":
            block = nn.remat(Block, policy=_remat_policy(c.remat), prevent_cse=False)
        blocks = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(nn.broadcast,) * 5, length=c.num_layers,
                         metadata_params={nn.PARTITION_NAME: "layers"})
        h, _ = blocks(c, (f, hh, ww), name="blocks")(h, ctx, e0, rope, t_sin, cam)

        # head
        hm = self.param("head_modulation", nn.with_logical_partitioning(
            lambda key, s, dt: jax.random.normal(key, s, dt) / c.dim ** 0.5, ("modulation", "embed")), (2, c.dim), pdtype)
        mod = hm.astype(jnp.float32)[None] + e[:, None, :]  # [B, 2, D]
        h = modulate(layer_norm(h, c.eps), mod[:, 0:1], mod[:, 1:2]).astype(dtype)
        out = Dense((pt * ph * pw * c.out_channels,), ("embed", "patch"), kernel_init=nn.initializers.zeros,
                    name="head", **kw)(h)  # [B, L, P]
        if c.copy_source:
            unit_grid, unit_patch = ((f, hh, ww), None) if c.copy_unit == "patch" else ((f, hp, wp), (ph, pw))
            units = 1 if unit_patch is None else ph * pw  # per token
            copy_rope = rope if unit_patch is None else _rope_inputs(c, unit_grid, frame_pos, cam, unit_patch)
            geo = (*_unit_rays(c, unit_grid, unit_patch), cam) if c.copy_fov else None
            blocked = None
            if c.copy_block_shortcut or c.copy_gate:  # same camera, other time: [B, Fh, Fh]
                same_cam = jnp.max(jnp.abs(tgt_cam[:, :, None] - src_cam[:, None]), axis=-1) < 1e-3
                other_time = jnp.abs(latent_times(tgt_time)[:, :, None] - latent_times(src_time)[:, None]) > 1e-3
                blocked = same_cam & other_time
            v = copy_units(c, x)  # [B, U, V]
            copied = SourceCopy(c, name="copy")(h, v, copy_rope, geo, blocked if c.copy_block_shortcut else None)
            if c.copy_gate:  # [B, L, P]: per unit, the first copy's share
                moved = SourceCopy(c, name="copy_moved")(h, v, copy_rope, geo, blocked)  # [B, L, P]
                gate = jax.nn.sigmoid(Dense((units,), ("embed", None), kernel_init=nn.initializers.zeros,
                                            name="copy_gate", param_dtype=pdtype)(h.astype(jnp.float32)))  # [B, L, units]
                gate = jnp.repeat(gate, p.shape[-1] // units, axis=-1)  # each unit's C values: [B, L, P]
                copied = (gate * copied + (1 - gate) * moved).astype(copied.dtype)
            if c.copy_composite:
                copied, took = _composite_mix(self, c, h, x, copied, cam, tgt_time, src_time, (f, hh, ww))
                if not c.composite_residual:
                    out = out * (1 - took).astype(out.dtype)  # the composite's pixels as they are
            out = out + copied  # [B, L, P]
        out = rearrange(out, "b (f h w) (pt ph pw c) -> b (f pt) (h ph) (w pw) c", f=f, h=hh, w=ww, pt=pt, ph=ph, pw=pw)
        return out.astype(jnp.float32)  # [B, F, H*ph, W*pw, C_out]

    def _conditioning_inputs(self, b, f, tgt_cam, src_cam, tgt_time, src_time):
        """Validate the mode's inputs; return (t_sin [2, B, T, Q] | None, cam [B, F, 12] | None)."""
        c = self.cfg
        if c.mode == "wan":
            given = [n for n, v in (("tgt_cam", tgt_cam), ("src_cam", src_cam), ("tgt_time", tgt_time),
                                    ("src_time", src_time)) if v is not None]
            if given:
                raise ValueError(f"mode 'wan' takes no camera/time inputs, got {given}")
            return None, None
        if f % 2:
            raise ValueError(f"mode {c.mode!r} needs target and source halves: an even number of latent "
                             f"frames, got {f}")
        fh = f // 2

        def check_cam(name, v):
            if v is None:
                raise ValueError(f"mode {c.mode!r} needs {name} of shape [B, {fh}, {CAM_DIM}]")
            if tuple(v.shape) != (b, fh, CAM_DIM):
                raise ValueError(f"{name} has shape {tuple(v.shape)}; expected [B, Fh, 12] = {(b, fh, CAM_DIM)}")
            return v

        check_cam("tgt_cam", tgt_cam)
        if c.mode == "recammaster":
            if src_cam is not None or tgt_time is not None or src_time is not None:
                raise ValueError("mode 'recammaster' takes only tgt_cam (it conditions both halves)")
            return None, jnp.concatenate([tgt_cam, tgt_cam], axis=1)
        check_cam("src_cam", src_cam)
        for name, v in (("tgt_time", tgt_time), ("src_time", src_time)):
            if v is None or v.ndim != 2 or v.shape[0] != b or temporal_chunks(v.shape[1]) != fh:
                raise ValueError(f"{name} must be [B, T] raw frame indices with T = {raw_frames(fh)} "
                                 f"for {fh} latent frames per half; got "
                                 f"{None if v is None else tuple(v.shape)}")
        times = jnp.stack([tgt_time, src_time]).astype(jnp.float32)
        if c.numerics == "reference":
            t_sin = sinusoid_f64(times, c.freq_dim).astype(jnp.dtype(c.dtype))  # [2, B, T, Q]
        else:
            t_sin = sinusoid(times, c.freq_dim)  # [2, B, T, Q]
        return t_sin, jnp.concatenate([tgt_cam, src_cam], axis=1)


def dummy_inputs(cfg: DiTConfig, batch: int = 1, latent_frames: int = 2, height: int = 4, width: int = 4,
                 text_len: int = 8) -> dict[str, jax.Array]:
    """Zero inputs of the right shapes for ``init``/``eval_shape``. latent_frames is per half
    in the conditioned modes; height/width are latent pixels."""
    fh = latent_frames
    f = fh if cfg.mode == "wan" else 2 * fh
    t = raw_frames(fh)
    inputs = dict(x=jnp.zeros((batch, f, height, width, cfg.in_channels)), timestep=jnp.zeros((batch,)),
                  context=jnp.zeros((batch, text_len, cfg.text_dim)))
    if cfg.mode != "wan":
        inputs["tgt_cam"] = jnp.zeros((batch, fh, CAM_DIM))
    if cfg.mode == "spacetimepilot":
        inputs["src_cam"] = jnp.zeros((batch, fh, CAM_DIM))
        inputs["tgt_time"] = jnp.zeros((batch, t))
        inputs["src_time"] = jnp.zeros((batch, t))
    return inputs


def forward_flops(cfg: DiTConfig, tokens: int, text_len: int) -> float:
    """Matmul FLOPs of one forward pass per sample (2 per multiply-add); backward ~ 2x this.

    Counts the transformer blocks, patch embedding, head, and text/time embedders; the
    camera/time conditioning adds O(frames * D^2) per block, included for completeness.
    """
    d, m, layers = cfg.dim, cfg.ffn_dim, cfg.num_layers
    pt, ph, pw = cfg.patch_size
    per_block = (
        2 * tokens * d * d * 4  # self-attn q, k, v, o
        + 2 * 2 * tokens * tokens * d  # self-attn scores + weighted sum
        + 2 * tokens * d * d * 2 + 2 * text_len * d * d * 2  # cross-attn q, o ; k, v
        + 2 * 2 * tokens * text_len * d  # cross-attn scores + sum
        + 2 * tokens * d * m * 2  # FFN
    )
    if cfg.mode != "wan":
        per_block += 2 * tokens * d * d  # projector
    total = layers * per_block
    if cfg.copy_source:  # q, k on every token; target x source scores and the weighted sum of patch vectors
        units = ph * pw if cfg.copy_unit == "pixel" else 1  # copy choices per token
        copies = 2 if cfg.copy_gate else 1
        total += copies * (2 * tokens * d * d * 2 * units
                           + 2 * (tokens * units // 2) ** 2 * (d + pt * ph * pw * cfg.in_channels // units))
    total += 2 * tokens * d * pt * ph * pw * (cfg.in_channels + cfg.out_channels)  # patch embed + head
    total += 2 * text_len * (cfg.text_dim * d + d * d)  # text embedding
    return float(total)
