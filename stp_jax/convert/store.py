"""Converted-checkpoint folders: Orbax params + the model config as JSON.

Layout of a folder written by ``stp-convert`` (or ``save_pretrained``)::

    DIR/config.json       the model config (to_dict), with "model": "SpaceTimeDiT" | "UMT5Encoder" | "WanVAE"
    DIR/conversion.json   where the weights came from (source, layout, mode, torch dtypes)
    DIR/params/           Orbax StandardCheckpointer tree of the unboxed params
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from stp_jax.convert.core import ConversionError
from stp_jax.models.dit import DiTConfig, SpaceTimeDiT
from stp_jax.models.text import UMT5Config, UMT5Encoder


def _models():
    from stp_jax.convert.dit import abstract_params
    from stp_jax.convert.umt5 import umt5_abstract_params
    from stp_jax.convert.wan_vae import vae_abstract_params
    from stp_jax.models.wan_vae import WanVAE, WanVAEConfig

    # name -> (config class, model class, abstract params of a config)
    return {"SpaceTimeDiT": (DiTConfig, SpaceTimeDiT, abstract_params),
            "UMT5Encoder": (UMT5Config, UMT5Encoder, umt5_abstract_params),
            "WanVAE": (WanVAEConfig, WanVAE, vae_abstract_params)}


def _name_of(cfg) -> str:
    for name, (cls, _, _) in _models().items():
        if isinstance(cfg, cls):
            return name
    raise TypeError(f"no stored model for config type {type(cfg).__name__}")


def _barrier(name: str):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def save_pretrained(out_dir, cfg: DiTConfig, params, meta: dict | None = None, overwrite: bool = False,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write params + config atomically: into DIR.partial, then renamed to DIR.

    Multi-process: every process calls it (params may be sharded across hosts); process 0
    does the file operations and Orbax writes each host's shards."""
    out = Path(out_dir).absolute()
    tmp = out.with_name(out.name + ".partial")
    main = jax.process_index() == 0
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    try:
        _barrier("save_pretrained: start")
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(tmp / "params", params)
        ckptr.wait_until_finished()
        _barrier("save_pretrained: params written")
        if main:
            (tmp / "config.json").write_text(json.dumps({"model": _name_of(cfg), **cfg.to_dict()}, indent=2))
            if meta is not None:
                (tmp / "conversion.json").write_text(json.dumps(meta, indent=2))
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
    finally:  # a failed write leaves no DIR.partial behind
        if main and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _barrier("save_pretrained: done")
    return out


def load_config(path):
    """The config stored in a converted folder (DiTConfig, UMT5Config or WanVAEConfig)."""
    f = Path(path) / "config.json"
    if not f.exists():
        raise ConversionError(f"{path}: not a converted stp_jax checkpoint (no config.json); "
                              "convert PyTorch weights first with stp-convert")
    try:
        d = json.loads(f.read_text())
    except ValueError as e:
        raise ConversionError(f"{f}: not readable JSON ({e}); the folder is damaged, convert the weights again") from e
    if not isinstance(d, dict):
        raise ConversionError(f"{f}: expected a JSON object with the model config, got {type(d).__name__}")
    name = d.pop("model", None)
    models = _models()
    if not isinstance(name, str) or name not in models:
        raise ConversionError(f"{f}: unknown model {name!r}; expected one of {sorted(models)}")
    try:
        return models[name][0].from_dict(d)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{f}: not a valid {name} config ({e})") from e


def restore_params(path, target=None):
    """The Orbax params tree of a converted folder (as ``target``'s ShapeDtypeStructs when
    given); a missing or damaged ``params/`` is a ConversionError naming the folder."""
    d = Path(path).absolute() / "params"
    if not d.is_dir():
        raise ConversionError(f"{path}: no params/ folder; the converted checkpoint is incomplete, convert it again")
    try:
        return ocp.StandardCheckpointer().restore(d, target)
    except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types for damaged files
        first = (str(e).splitlines() or [""])[0][:300]
        raise ConversionError(f"{path}: the weights in params/ cannot be restored ({type(e).__name__}: {first}); "
                              "the folder is damaged or from another model, convert the weights again") from e


def load_pretrained(path, *, shardings=None, dtype: str | None = None, **runtime):
    """(model, params) from a converted folder.

    ``shardings``: optional pytree of NamedShardings to restore straight onto a mesh.
    ``dtype``: restore params in this dtype (default: as saved). ``runtime``: config fields
    that do not change the weights (attention, remat, dtype of compute...).
    """
    cfg = load_config(path)
    if runtime:
        cfg = cfg.replace(**runtime)
    if dtype is not None:
        cfg = cfg.replace(param_dtype=dtype)
    _, module_cls, abstract_fn = _models()[_name_of(cfg)]
    abstract = abstract_fn(cfg)
    if shardings is None:
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, np.dtype(cfg.param_dtype)), abstract)
    else:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, np.dtype(cfg.param_dtype), sharding=s),
                              abstract, shardings)
    return module_cls(cfg), restore_params(path, target)


def load_for_mode(path, mcfg: DiTConfig, shardings):
    """Params of a converted checkpoint for a model of config ``mcfg`` (sharded as
    ``shardings``). A Wan checkpoint loaded into a conditioned mode (or ReCamMaster into
    SpaceTimePilot) gets fresh camera/time modules: zero camera encoder, identity projector,
    zero time output, so the model starts as the checkpoint's."""
    from flax import linen as nn

    from stp_jax.models.dit import dummy_inputs

    stored = load_config(path)
    if stored.mode == mcfg.mode:
        return load_pretrained(path, shardings=shardings, dtype=mcfg.param_dtype)[1]
    if stored.mode != "wan" and not (stored.mode == "recammaster" and mcfg.mode == "spacetimepilot"):
        raise ValueError(f"init_from {path}: a {stored.mode} checkpoint cannot initialise a {mcfg.mode} model")
    fresh = jax.jit(lambda: nn.unbox(SpaceTimeDiT(mcfg).init(jax.random.PRNGKey(0), **dummy_inputs(mcfg)))["params"],
                    out_shardings=shardings)()
    base_cfg = stored.replace(param_dtype=mcfg.param_dtype)
    abstract = jax.eval_shape(lambda: nn.unbox(SpaceTimeDiT(base_cfg).init(
        jax.random.PRNGKey(0), **dummy_inputs(stored)))["params"])
    base = load_pretrained(path, shardings=_pick(shardings, abstract), dtype=mcfg.param_dtype)[1]
    return _merge(fresh, base)


def _pick(full, like):
    """The subtree of ``full`` with the keys of ``like``."""
    if isinstance(like, dict):
        return {k: _pick(full[k], v) for k, v in like.items()}
    return full


def _merge(fresh, base):
    """``fresh`` with every leaf that ``base`` also has taken from ``base``."""
    if isinstance(fresh, dict):
        return {k: _merge(v, base[k]) if k in base else v for k, v in fresh.items()}
    return base
