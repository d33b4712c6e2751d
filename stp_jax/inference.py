"""What training, sampling and evaluation share: the autoencoder, the text condition,
model batches from pixel batches, and the jitted source-conditioned generator.

Letters: B batch, T raw frames, F' latent frames per half, H/W pixels, h/w latent
pixels, C latent channels, S text tokens, E text width.
Videos are uint8 [B, T, H, W, 3] at the edges and floats in [-1, 1] inside.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stp_jax.controls.timing import FRAMES_PER_LATENT, TIME_FACTOR, check_frames, model_times
from stp_jax.data.video_io import to_float, to_uint8  # noqa: F401 (part of this module's interface)
from stp_jax.diffusion import flow
from stp_jax.diffusion.sampler import DEFAULT_CACHE_THRESHOLD, StepCache, denoise
from stp_jax.models.dit import COND_KEYS
from stp_jax.models.vae import PatchAutoencoder
from stp_jax.parallel import mesh as mesh_lib

WAN_SPATIAL = 8  # the Wan VAE's spatial downsampling
WAN_Z_DIM = 16  # and its latent channels


# ---------------------------------------------------------------- autoencoders


VAE_TILINGS = ("none", "published")


@dataclasses.dataclass(frozen=True)
class Autoencoder:
    """encode/decode between videos in [-1, 1] and latents, with the weights bound in.
    ``tiling`` "published": the Wan VAE runs over the published pipeline's overlapping spatial
    tiles (stp_jax.models.wan_vae.decode_tiles / encode_tiles); the weightless PatchAutoencoder
    has nothing to tile and ignores it."""
    kind: str  # patch | wan
    latent_channels: int
    spatial: int
    impl: Any
    params: Any = None
    time_factor: int = TIME_FACTOR  # raw frames per latent frame
    tiling: str = "none"

    def __post_init__(self):
        if self.tiling not in VAE_TILINGS:
            raise ValueError(f"VAE tiling {self.tiling!r} is unknown; expected one of {VAE_TILINGS}")

    def encode(self, video):  # [B, T, H, W, 3] -> [B, F', h, w, C]
        if self.params is None:
            return self.impl.encode(video)
        if self.tiling == "published":
            return self.impl.encode_tiles(self.params, video)
        return self.impl.encode(self.params, video)

    def decode(self, latents):  # [B, F', h, w, C] -> [B, T, H, W, 3]
        if self.params is None:
            out = self.impl.decode(latents)
        elif self.tiling == "published":
            out = self.impl.decode_tiles(self.params, latents)
        else:
            out = self.impl.decode(self.params, latents)
        return jnp.clip(out, -1.0, 1.0)

    def with_tiling(self, tiling: str) -> Autoencoder:
        return dataclasses.replace(self, tiling=tiling)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return _latent_shape(self.kind, self.spatial, self.latent_channels, self.time_factor, num_frames, height,
                             width)


def _latent_shape(kind, spatial, channels, time_factor, num_frames, height, width) -> tuple[int, int, int, int]:
    if height % spatial or width % spatial:
        raise ValueError(f"frame size {height}x{width} is not divisible by the {kind} autoencoder's "
                         f"spatial factor {spatial}")
    return 1 + (check_frames(num_frames) - 1) // time_factor, height // spatial, width // spatial, channels


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """Which autoencoder makes the latents (a config's ``autoencoder`` section)."""
    kind: str = "patch"  # patch (weightless PatchAutoencoder) | wan (a converted Wan VAE)
    spatial: int = 4  # patch: pixels per side folded into channels (the Wan VAE's is 8)
    path: str = ""  # wan: the converted Wan VAE folder (stp-convert)
    time_factor: int = TIME_FACTOR  # patch: raw frames per latent frame, 4 (Wan's mapping) or 1 (the Wan VAE's is 4)

    def __post_init__(self):
        if self.kind not in ("patch", "wan"):
            raise ValueError(f"autoencoder.kind {self.kind!r} is unknown; expected 'patch' or 'wan'")
        if self.spatial < 1:
            raise ValueError(f"autoencoder.spatial must be >= 1, got {self.spatial}")
        if self.time_factor not in FRAMES_PER_LATENT or (self.kind == "wan" and self.time_factor != TIME_FACTOR):
            raise ValueError(f"autoencoder.time_factor must be one of {FRAMES_PER_LATENT} (4 for the Wan VAE), "
                             f"got {self.time_factor}")

    @property
    def latent_channels(self) -> int:
        if self.kind == "wan":
            return WAN_Z_DIM
        return PatchAutoencoder(spatial=self.spatial, time_factor=self.time_factor).latent_channels

    @property
    def spatial_factor(self) -> int:
        return self.spatial if self.kind == "patch" else WAN_SPATIAL

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(F', h, w, C) of one clip's latents, known without loading any weights."""
        return _latent_shape(self.kind, self.spatial_factor, self.latent_channels, self.time_factor, num_frames,
                             height, width)


def build_autoencoder(cfg: AutoencoderConfig = AutoencoderConfig(), dtype: str | None = None) -> Autoencoder:
    """``patch``: the weightless PatchAutoencoder; ``wan``: a converted Wan VAE folder
    (``dtype``: its weights and compute in this dtype, e.g. bfloat16 as published; default as stored)."""
    if cfg.kind == "patch":
        ae = PatchAutoencoder(spatial=cfg.spatial, time_factor=cfg.time_factor)
        return Autoencoder("patch", ae.latent_channels, ae.spatial, ae, time_factor=cfg.time_factor)
    if not cfg.path:
        raise ValueError("autoencoder kind 'wan' needs the path of a converted Wan VAE (stp-convert --format wan_vae)")
    from stp_jax.convert.store import load_pretrained

    vae, params = load_pretrained(cfg.path, dtype=dtype)
    if dtype is not None:
        vae = type(vae)(vae.cfg.replace(dtype=dtype))
    return Autoencoder("wan", vae.cfg.z_dim, WAN_SPATIAL, vae, params)


def autoencoder_for(in_channels: int, vae_path: str | None = None, dtype: str | None = None) -> Autoencoder:
    """The autoencoder a DiT with ``in_channels`` latent channels expects: a converted Wan VAE
    for 16 channels (``vae_path`` required), else the PatchAutoencoder with 4*s*s*3 channels."""
    if vae_path:
        ae = build_autoencoder(AutoencoderConfig("wan", path=vae_path), dtype)
        if ae.latent_channels != in_channels:
            raise ValueError(f"the VAE at {vae_path} makes {ae.latent_channels}-channel latents but the model takes "
                             f"{in_channels}")
        return ae
    s = math.isqrt(in_channels // 12) if in_channels % 12 == 0 else 0
    if s < 1 or 12 * s * s != in_channels:
        raise ValueError(f"the model takes {in_channels}-channel latents: pass --vae with a converted Wan VAE "
                         f"(16 channels) or use a model trained on PatchAutoencoder latents (4*s*s*3 channels)")
    return build_autoencoder(AutoencoderConfig("patch", spatial=s))


# ---------------------------------------------------------------- text


def load_text_embedding(path, text_dim: int) -> np.ndarray:
    """[S, E] text states from a .npy file (e.g. one entry of stp_jax.models.text's cache)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"text embedding file {p} does not exist")
    try:
        e = np.load(p)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"text embedding file {p}: not a readable .npy array ({err})") from err
    if e.ndim != 2 or e.shape[1] != text_dim or e.shape[0] < 1:
        raise ValueError(f"text embedding file {p}: expected [tokens, {text_dim}] float states, got shape {e.shape}")
    if not np.issubdtype(e.dtype, np.floating):
        raise ValueError(f"text embedding file {p}: expected float states, got dtype {e.dtype}")
    bad = int(np.size(e) - np.count_nonzero(np.isfinite(e)))
    if bad:
        raise ValueError(f"text embedding file {p}: {bad} of its {e.size} values are NaN or Inf; expected finite "
                         "text states")
    return e.astype(np.float32)


def load_text_encoder(path, numerics: str = "default"):
    """A converted umT5 folder with its tokenizer -> ``encode(caption) -> [512, E]`` text states
    as Wan makes them (prompt cleaned, umT5, true tokens kept, zero-padded to 512). Under
    reference numerics the encoder runs in bf16, as published."""
    from stp_jax.convert.store import load_pretrained
    from stp_jax.models import text as text_lib

    dtype = NUMERICS_DTYPE.get(numerics)
    model, params = load_pretrained(path, dtype=dtype)
    if dtype:
        model = type(model)(model.cfg.replace(dtype=dtype))
    tok = text_lib.Tokenizer(path)
    fn = jax.jit(lambda p, i, m: text_lib.wan_text_states(model.apply({"params": p}, i, m), m))

    def encode(caption: str) -> np.ndarray:
        ids, mask = tok([caption])
        return np.asarray(fn(params, ids, mask), np.float32)[0]

    return encode


def guidance(cfg: float, *, negative_embedding=None, encoder=None, negative: str | None = None,
             text_embeddings: bool = False, text_dim: int = 0) -> tuple[np.ndarray | None, str | None, str | None]:
    """(negative states [S, E] or None, what they are, why guidance is off or None).

    CFG runs when cfg != 1 and negative states exist: ``negative_embedding`` (a .npy), else the
    negative prompt (``negative`` or Wan's) through the text encoder (``encoder``: a zero-argument
    function returning it, or None). Otherwise the reason names what is missing."""
    from stp_jax.models.text import WAN_NEGATIVE_PROMPT

    if cfg == 1.0:
        return None, None, "the CFG scale is 1"
    if negative_embedding:
        return load_text_embedding(negative_embedding, text_dim), str(negative_embedding), None
    if encoder is not None:
        return encoder()(negative or WAN_NEGATIVE_PROMPT), ("Wan default" if negative is None else negative), None
    if text_embeddings:
        return None, None, ("--text-embedding was given without --negative-embedding FILE.npy (or --text-encoder "
                            "to encode the negative prompt): there are no negative states")
    return None, None, ("the model is conditioned on its trained null text (no --caption or --text-embedding): "
                        "there is no negative prompt to guide against")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The text condition of every clip (a config's ``text`` section)."""
    kind: str = "null"  # null (zeros: Wan's states of an empty prompt) | file (one stored embedding)
    length: int = 8  # tokens S
    embedding: str = ""  # file: a .npy [S, E] of text states

    def __post_init__(self):
        if self.kind not in ("null", "file"):
            raise ValueError(f"text.kind {self.kind!r} is unknown; expected 'null' or 'file'")
        if self.length < 1:
            raise ValueError(f"text.length must be >= 1, got {self.length}")


def text_context(cfg: TextConfig, batch: int, text_dim: int):
    """[B, S, E] text states for every clip of a batch."""
    if cfg.kind == "null":
        return jnp.zeros((batch, cfg.length, text_dim), jnp.float32)
    if not cfg.embedding:
        raise ValueError("text.kind 'file' needs text.embedding (a .npy of [tokens, text_dim] states)")
    e = load_text_embedding(cfg.embedding, text_dim)
    return jnp.broadcast_to(jnp.asarray(e)[None], (batch,) + e.shape)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Sampling defaults (a config's ``sample`` section; stored in run.json with the model)."""
    steps: int = 50
    shift: float = 5.0
    cfg_scale: float = 5.0
    cache: str = "none"  # step / CFG cache of the denoise loop (diffusion/sampler.py): none | mag | cfg | mag+cfg
    cache_threshold: float = DEFAULT_CACHE_THRESHOLD  # mag: the velocity's estimated relative change allowed

    def __post_init__(self):
        try:
            StepCache(self.cache, self.cache_threshold)
        except ValueError as e:
            raise ValueError(f"sample.{e}") from None
        if self.steps < 1:
            raise ValueError(f"sample.steps must be >= 1, got {self.steps}")
        if not self.shift > 0:
            raise ValueError(f"sample.shift must be > 0, got {self.shift}")
        if not np.isfinite(self.cfg_scale):
            raise ValueError(f"sample.cfg_scale must be finite, got {self.cfg_scale}")


# ---------------------------------------------------------------- source videos


def video_settings(run: dict, frames: int | None = None, size: tuple[int, int] | None = None
                   ) -> tuple[int, tuple[int, int] | None, str]:
    """(frames, (H, W) or None = the video's own, resize rule) for sampling a checkpoint: the
    arguments when given, else its run.json ``data`` (num_frames, height/width, resize), else 81
    frames at the video's size. A published checkpoint's run.json (stp-convert) gives 81 frames
    at 480x832 with the published cover-resize and centre crop."""
    data = run.get("data", {})
    frames = check_frames(int(data.get("num_frames", 81) if frames is None else frames))
    if size is None and "height" in data:
        size = (int(data["height"]), int(data["width"]))
    return frames, size, data.get("resize", "fast")


def load_video(path, run: dict, frames: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """A source video as the checkpoint expects it (``video_settings``): uint8 [T, H, W, 3]; a
    shorter video repeats its last frame, as published."""
    from stp_jax.data.video_io import read_video

    frames, size, resize = video_settings(run, frames, size)
    return read_video(path, num_frames=frames, size=size, resize=resize)


def sampling_defaults(run: dict, preset: str | None = None) -> dict:
    """run.json's ``sample`` section (steps, shift, cfg_scale, solver, cache, fps, numerics, vae_tiling...)
    with a named preset of it applied (a published checkpoint has ``demo``: 20 steps as the
    published demo script; ``eval``: 50)."""
    s = dict(run.get("sample", {}))
    presets = s.pop("presets", {})
    if preset is not None:
        if preset not in presets:
            raise ValueError(f"--preset: sampling preset {preset!r} is not defined by this checkpoint's run.json "
                             f"(it defines: {', '.join(presets) or 'none'})")
        s.update(presets[preset])
    return s


# ---------------------------------------------------------------- model batches


def model_batch(mode: str, ae: Autoencoder | None, batch: dict, context, frames_per_latent: int = TIME_FACTOR) -> dict:
    """A pipeline batch (uint8 frames, or stp-precompute latents; cameras at the latent frame
    rate, times per raw frame) -> the train step's latent batch (times as the DiT reads them,
    stp_jax.controls.timing.model_times)."""
    if "tgt_latents" in batch:
        out = {"target": batch["tgt_latents"].astype(jnp.float32),
               "source": batch["src_latents"].astype(jnp.float32), "context": context}
    else:
        out = {"target": ae.encode(to_float(batch["tgt_frames"])),
               "source": ae.encode(to_float(batch["src_frames"])), "context": context}
    for k in COND_KEYS[mode]:
        v = jnp.asarray(batch[k], jnp.float32)
        out[k] = model_times(v, frames_per_latent) if k.endswith("_time") else v
    for k in ("src_depth", "src_moving"):  # the renderer's, per source pixel (data.composite_aux)
        if k in batch:
            out[k] = batch[k]
    return out


def make_generator(model, ae: Autoencoder, *, steps: int, shift: float, cfg_scale: float = 1.0,
                   prediction: str = "velocity", solver: str = "euler", numerics: str | None = None,
                   cache: str = "none", cache_threshold: float = DEFAULT_CACHE_THRESHOLD, with_stats: bool = False):
    """A jitted ``gen(params, source uint8 [B,T,H,W,3], cond, context, null_context, noise) ->
    uint8 [B, T, H, W, 3]``; ``cond`` holds tgt_cam/src_cam [B, F', 12] and tgt_time/src_time
    [B, T] (what the model's mode uses); noise [B, F', h, w, C]. ``numerics`` (default: the
    model's): "reference" samples as the published pipeline (diffusion/sampler.py) and writes
    8-bit frames by truncation as it does. ``cache``/``cache_threshold``: the denoise loop's
    step and CFG cache (diffusion/sampler.StepCache); ``with_stats``: gen also returns the
    loop's {"passes": [steps]} (model passes of batch B per step)."""
    step_cache = StepCache(cache, cache_threshold)
    mode = model.cfg.mode
    numerics = numerics or model.cfg.numerics
    rounding = "truncate" if numerics == "reference" else "nearest"

    @functools.partial(jax.jit, compiler_options=mesh_lib.platform_compiler_options(jax.devices()[0].platform))
    def gen(params, source, cond, context, null_context, noise):
        src = ae.encode(to_float(source))
        kw = {k: jnp.asarray(cond[k], jnp.float32) for k in COND_KEYS[mode]}
        kw = {k: model_times(v, ae.time_factor) if k.endswith("_time") else v for k, v in kw.items()}

        def velocity(x, t, ctx):
            n = x.shape[0] // src.shape[0]  # 2 when the CFG pair is on the batch axis
            out = model.apply({"params": params}, x, t, ctx,
                              **{k: jnp.concatenate([v] * n) if n > 1 else v for k, v in kw.items()})
            return out if prediction == "velocity" else flow.velocity_from_x0(x, out, t / flow.NUM_TRAIN_TIMESTEPS)

        lat, stats = denoise(velocity, src, noise, context, steps=steps, shift=shift, cfg_scale=cfg_scale,
                             null_context=null_context, solver=solver, numerics=numerics, cache=step_cache,
                             return_stats=True)
        video = to_uint8(ae.decode(lat), rounding=rounding)
        return (video, stats) if with_stats else video

    return gen


# ---------------------------------------------------------------- checkpoints


@dataclasses.dataclass
class Checkpoint:
    path: Path
    model: Any
    params: Any
    ae: Autoencoder
    run: dict
    numerics: str = "default"
    model_set: dict = dataclasses.field(default_factory=dict)  # the fields load_checkpoint's model_set changed, as run


NUMERICS_DTYPE = {"reference": "bfloat16"}  # everything in bf16, as the published pipeline runs


# runtime fields that --model-set leaves to their own flags or to the checkpoint
NOT_MODEL_SET = {"numerics": "use --numerics", "dtype": "set by --numerics", "param_dtype": "set by --numerics",
                 "mode": "the checkpoint's mode decides which inputs it takes"}


def model_overrides(pairs) -> dict:
    """``--model-set KEY=VALUE`` pairs -> {field: value} for load_checkpoint: only dit.RUNTIME_FIELDS (how the model
    runs, not its weights) less NOT_MODEL_SET; each value converted to its DiTConfig annotation (config_utils.convert,
    as stp-train's --set)."""
    import typing

    from stp_jax.config_utils import convert
    from stp_jax.models.dit import RUNTIME_FIELDS, DiTConfig

    settable = [f for f in RUNTIME_FIELDS if f not in NOT_MODEL_SET]
    hints = typing.get_type_hints(DiTConfig)
    out = {}
    for pair in pairs or ():
        key, sep, value = str(pair).partition("=")
        key = key.strip().removeprefix("model.")
        if not sep or not key:
            raise ValueError(f"--model-set {pair!r}: expected KEY=VALUE, e.g. composite_mask_logit=-1")
        if key in NOT_MODEL_SET:
            raise ValueError(f"--model-set {pair!r}: {NOT_MODEL_SET[key]}")
        if key not in settable:
            raise ValueError(f"--model-set {pair!r}: {key!r} is not a field a trained model can run with another "
                             f"value of (its weights depend on it); these can: {', '.join(settable)}")
        out[key] = convert(value.strip(), hints[key], None, key, what="--model-set")
    return out


def load_checkpoint(path, vae: str | None = None, numerics: str | None = None, tiling: str | None = None,
                    model_set: dict | None = None) -> Checkpoint:
    """A training workdir (uses its ``model/``), or a converted model folder (stp-convert).
    ``model_set`` (model_overrides'): runtime fields of the model config to run with other values.

    ``numerics`` (default: run.json's ``sample.numerics``, else "default"): "reference" loads the
    DiT and the VAE with bf16 weights and bf16 compute and the DiT's reference numerics.
    ``tiling`` (default: run.json's ``sample.vae_tiling``, else "none"): the VAE's tiling."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"checkpoint {p} does not exist")
    if (p / "model" / "config.json").exists():
        p = p / "model"
    elif (p / "checkpoints").is_dir():
        raise ValueError(f"checkpoint {p}: a training workdir without an exported model/ (the run stopped before its "
                         f"end); finish it with stp-train --workdir {p} (e.g. --set total_steps=<the step it reached>)")
    if not (p / "config.json").exists():
        raise ValueError(f"checkpoint {p}: neither a training workdir with model/ (stp-train) nor a converted "
                         "model folder with config.json (stp-convert)")
    from stp_jax.convert.store import load_config, load_pretrained
    from stp_jax.models.dit import NUMERICS

    run = json.loads((p / "run.json").read_text()) if (p / "run.json").exists() else {}
    numerics = numerics or run.get("sample", {}).get("numerics", "default")
    if numerics not in NUMERICS:
        raise ValueError(f"numerics {numerics!r} is unknown; expected one of {NUMERICS}")
    dtype = NUMERICS_DTYPE.get(numerics)
    if not hasattr(load_config(p), "mode"):
        raise ValueError(f"checkpoint {p} holds a {type(load_config(p)).__name__}, not a SpaceTimeDiT")
    model, params = load_pretrained(p, dtype=dtype)
    runtime = {"numerics": numerics} | ({"dtype": dtype} if dtype else {})
    runtime.update(model_set or {})
    try:
        model = type(model)(model.cfg.replace(**runtime))
    except ValueError as e:  # a value the model does not accept (an unknown attention backend, a splat of 0...)
        if not model_set:
            raise
        raise ValueError(f"--model-set {', '.join(f'{k}={v}' for k, v in model_set.items())}: {e}") from None
    if vae:
        ae = autoencoder_for(model.cfg.in_channels, vae, dtype)
    elif run.get("autoencoder"):
        ae = build_autoencoder(AutoencoderConfig(**run["autoencoder"]), dtype)
    else:
        ae = autoencoder_for(model.cfg.in_channels)
    ae = ae.with_tiling(tiling or run.get("sample", {}).get("vae_tiling", "none"))
    return Checkpoint(p, model, params, ae, run, numerics, {k: getattr(model.cfg, k) for k in model_set or {}})
