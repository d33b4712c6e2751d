"""Experiment configs: typed sections, config files with variants, typed overrides.

A config is an ``ml_collections.ConfigDict`` (locked: unknown keys are errors) whose sections
are generated from the dataclasses that consume them, so every default has one home:

  model        stp_jax.models.dit.DiTConfig          optim  stp_jax.train_step.OptimConfig
  data         stp_jax.data.pipeline.DataConfig      flow   stp_jax.diffusion.flow.FlowConfig
  autoencoder  stp_jax.inference.AutoencoderConfig   mesh   stp_jax.parallel.mesh.MeshConfig
  text         stp_jax.inference.TextConfig          eval   stp_jax.evaluate.EvalConfig
  sample       stp_jax.inference.SampleConfig        debug  DebugConfig (below)
  top level    RunConfig (below): name, seed, total_steps, checkpointing, logging...
  free-form    tpu_compiler_options, logical_rules_overrides (overrides may add keys)

Config files (``configs/`` at the repository root, installed as ``stp_jax.configs``) define
``get_config(variants: str | None)``; ``load("stp_1_3b:720p,all")`` applies the variants
``720p`` and ``all`` (also written ``res=720p,train=all`` when a file groups them).
Overrides are ``key.sub=value`` strings converted to the type of the key's default: an
override that does not convert fails here, naming the key and the type.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ml_collections

from stp_jax import inference
from stp_jax.config_utils import convert, literal
from stp_jax.data.pipeline import DataConfig
from stp_jax.diffusion.flow import FlowConfig
from stp_jax.evaluate import EvalConfig
from stp_jax.models.dit import DiTConfig, preset
from stp_jax.parallel.mesh import MeshConfig
from stp_jax.train_step import OptimConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The top-level keys of a config: the run itself."""
    name: str = "unnamed"
    seed: int = 0
    init_from: str = ""  # a converted checkpoint folder (stp-convert) to fine-tune from; "" = fresh init
    total_steps: int = 10_000
    time_limit_minutes: float = 0.0  # > 0: stop, save, evaluate and export after this much training time
    ema_decay: float = 0.0  # > 0 keeps an EMA of the params (exported instead of the raw params)
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 0  # > 0: evaluation on held-out procedural scenes every N steps and at the end
    peak_flops_per_device: float = 0.0  # 0 = look the device up (stp_jax.writers.PEAK_FLOPS), for MFU

    def __post_init__(self):
        for k in ("total_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("time_limit_minutes", "eval_every", "peak_flops_per_device"):
            if not getattr(self, k) >= 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclasses.dataclass(frozen=True)
class DebugConfig:
    nan_at_step: int = -1  # tests: poison the latents of this step


SECTIONS: dict[str, type] = {
    "model": DiTConfig, "data": DataConfig, "autoencoder": inference.AutoencoderConfig, "text": inference.TextConfig,
    "optim": OptimConfig, "flow": FlowConfig, "mesh": MeshConfig, "eval": EvalConfig,
    "sample": inference.SampleConfig, "debug": DebugConfig,
}
OPEN_SECTIONS = ("tpu_compiler_options", "logical_rules_overrides")  # free-form: overrides may add keys


def _defaults(cls) -> dict:
    if cls is DataConfig:
        return DataConfig.section_defaults()
    return {f.name: f.default for f in dataclasses.fields(cls)}


def base(name: str, model: str = "tiny", **model_overrides) -> ml_collections.ConfigDict:
    """A config with every section at its defaults; ``model`` is a DiT preset name."""
    c = ml_collections.ConfigDict(_defaults(RunConfig))
    c.name = name
    for section, cls in SECTIONS.items():
        c[section] = _defaults(cls)
    c.model = dataclasses.asdict(preset(model, **model_overrides))
    # XLA options for TPU compiles of the train step and of stp-aot (parallel.mesh.compiler_options).
    # libtpu 0.0.42.1 aborts ("rotated_pincer_emitter_base.cc:1524 Check failed: get_loop_bound(color)")
    # compiling the data-parallel gradient all-reduce of a model with a >=2048-wide text projection
    # on multi-chip slices; single-colour all-reduces avoid it (docs/SCALING.md).
    c.tpu_compiler_options = {"xla_jf_use_multi_colors_in_all_reduce_if_supported": False}
    c.logical_rules_overrides = {}
    return c


def published_video(c: ml_collections.ConfigDict, height: int = 480, width: int = 832,
                    frames: int = 81) -> ml_collections.ConfigDict:
    """The published recipe's data side: Wan VAE latents of 81 x 480 x 832 clips from a TFDS
    multi-view dataset, bf16 compute, fp32 master weights, dots remat, umT5 text states."""
    c.autoencoder.update(kind="wan")
    c.data.update(source="tfds", tfds_name="multicam_video", num_frames=frames, num_cameras=frames, height=height,
                  width=width, global_batch=8, worker_count=4)
    c.model.update(dtype="bfloat16", param_dtype="float32", remat="dots", attention="auto")
    c.text.update(kind="file", length=512)
    c.sample.update(steps=50, shift=5.0, cfg_scale=5.0)
    return c


# ---------------------------------------------------------------- variants


Variant = Callable[[ml_collections.ConfigDict], Any]


def apply_variants(c: ml_collections.ConfigDict, arg: str | None,
                   variants: Mapping[str, Variant | Mapping[str, Variant]]) -> ml_collections.ConfigDict:
    """Apply ``arg`` = comma-separated variant names (``720p,all``) or ``group=name`` pairs
    (``res=720p,train=all``), in order. ``variants`` maps names to functions, or group names
    to {name: function}; at most one variant per group."""
    flat: dict[str, tuple[str | None, Variant]] = {}
    for key, v in variants.items():
        if callable(v):
            flat[key] = (None, v)
        else:
            flat.update({name: (key, fn) for name, fn in v.items()})
    used: dict[str, str] = {}
    for item in (x.strip() for x in (arg or "").split(",") if x.strip()):
        group, _, name = item.rpartition("=")
        if name not in flat or (group and flat[name][0] != group):
            raise ValueError(f"config {c.name}: unknown variant {item!r}; known: {_describe(variants)}")
        g = flat[name][0]
        if g is not None:
            if g in used:
                raise ValueError(f"config {c.name}: variants {used[g]!r} and {name!r} are both {g}=...; pick one")
            used[g] = name
        flat[name][1](c)
    return c


def _describe(variants) -> str:
    parts = []
    for key, v in variants.items():
        parts.append(key if callable(v) else f"{key}={'|'.join(v)}")
    return ", ".join(parts) or "(none)"


# ---------------------------------------------------------------- loading


def shipped_dir() -> Path:
    """configs/ of the repository (installed as the package ``stp_jax.configs``)."""
    import stp_jax.configs

    return Path(next(iter(stp_jax.configs.__path__)))


def shipped() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in shipped_dir().glob("*.py") if not p.stem.startswith("_")))


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"stp_jax_config_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except (OSError, SyntaxError) as e:
        raise ValueError(f"config file {path} cannot be loaded ({type(e).__name__}: {e})") from e
    if not hasattr(mod, "get_config"):
        raise ValueError(f"config file {path} has no get_config(variant) function")
    return mod


def load(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """``NAME_OR_FILE[:variants]`` + ``key.sub=value`` overrides -> a locked, validated ConfigDict."""
    name, _, variant = spec.partition(":")
    path = Path(name)
    if not path.suffix:
        if name not in shipped():
            raise ValueError(f"config {name!r} is neither a file nor a shipped config; shipped: {', '.join(shipped())}")
        path = shipped_dir() / f"{name}.py"
    elif not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    cfg = _import(path).get_config(variant or None)
    cfg.lock()
    for item in overrides:
        set_override(cfg, item)
    validate(cfg)
    return cfg


def set_override(cfg: ml_collections.ConfigDict, item: str) -> None:
    """Apply one ``key.sub=value`` override, converting the value to the key's type."""
    key, eq, text = item.partition("=")
    key, text = key.strip(), text.strip()
    if not eq or not key:
        raise ValueError(f"config override {item!r} must look like key.sub=value")
    parts = key.split(".")
    node = cfg
    for i, p in enumerate(parts[:-1]):
        if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
            raise ValueError(f"config override {item!r}: no section {'.'.join(parts[:i + 1])!r}; "
                             f"sections: {sorted(k for k, v in node.items() if isinstance(v, ml_collections.ConfigDict))}")
        node = node[p]
    leaf = parts[-1]
    if len(parts) == 2 and parts[0] in OPEN_SECTIONS:
        with cfg.unlocked():
            node[leaf] = literal(text)
        return
    if len(parts) == 1 and leaf in OPEN_SECTIONS:
        value = literal(text)
        if not isinstance(value, dict):
            raise ValueError(f"config override {item!r}: {leaf} takes a dict, e.g. {leaf}={{'name': value}}")
        with cfg.unlocked():
            cfg[leaf] = value
        return
    if leaf not in node:
        raise ValueError(f"config override {item!r}: no key {leaf!r} in "
                         f"{'.'.join(parts[:-1]) or 'the top level'}; known: {sorted(node.keys())}")
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ValueError(f"config override {item!r}: {key} is a section; set one of its keys, e.g. "
                         f"{key}.{sorted(node[leaf].keys())[0]}=...")
    want = _field_type(parts)
    with cfg.ignore_type():
        node[leaf] = convert(text, want, node[leaf], key)


def _field_type(parts: list[str]):
    """The annotated type of a config key (None when it has no dataclass behind it)."""
    cls = RunConfig if len(parts) == 1 else SECTIONS.get(parts[0]) if len(parts) == 2 else None
    if cls is None:
        return None
    hints = typing.get_type_hints(cls)
    return hints.get(parts[-1])


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Build every section's dataclass (each checks its own values); one ValueError naming the
    first bad section."""
    for section in SECTIONS:
        try:
            section_of(cfg, section)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config {cfg.name}, section {section!r}: {e}") from e
    run(cfg)
    if cfg.flow.copy_loss and not cfg.model.copy_source:
        raise ValueError(f"config {cfg.name}: flow.copy_loss {cfg.flow.copy_loss} supervises the source copy; "
                         "set model.copy_source=true or flow.copy_loss=0")
    if cfg.flow.copy_loss and cfg.flow.copy_loss_time and cfg.model.mode != "spacetimepilot":
        raise ValueError(f"config {cfg.name}: flow.copy_loss_time needs animation times (model.mode "
                         f"'spacetimepilot', got {cfg.model.mode!r})")
    if (cfg.flow.composite_loss or cfg.flow.composite_gate_loss) and not cfg.model.copy_composite:
        raise ValueError(f"config {cfg.name}: flow.composite_loss / composite_gate_loss supervise the 2.5D composite; "
                         "set model.copy_composite or set both to 0")
    if cfg.flow.composite_loss and not (cfg.data.composite_aux and cfg.data.source in ("procedural", "tfds", "latents")):
        raise ValueError(f"config {cfg.name}: flow.composite_loss needs the renderer's depth and masks: set "
                         f"data.composite_aux=true with procedural scenes (data.source 'procedural' or 'tfds', or "
                         f"'latents' that stp-precompute wrote from them; got {cfg.data.source!r})")
    from stp_jax.evaluate import check_cases

    try:
        check_cases(cfg.eval.cases, cfg.data.num_frames, cfg.data.num_cameras)
    except ValueError as e:
        raise ValueError(f"config {cfg.name}, eval.cases: {e}") from e


def section_of(cfg: ml_collections.ConfigDict, section: str):
    """The typed view of one section (e.g. ``section_of(cfg, "optim") -> OptimConfig``)."""
    cls = SECTIONS[section]
    d = dict(cfg[section])
    if cls is DataConfig:
        return DataConfig.from_config(cfg)
    if cls is DiTConfig:
        return DiTConfig.from_dict(d)
    return cls(**d)


def run(cfg: ml_collections.ConfigDict) -> RunConfig:
    return RunConfig(**{f.name: cfg[f.name] for f in dataclasses.fields(RunConfig)})
