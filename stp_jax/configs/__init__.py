"""Experiment configs: Python files with ``get_config(variant: str | None) -> ConfigDict``.

``load("tiny_camxtime")`` loads a shipped config by name, ``load("path/to/my.py:fast")``
any file with a variant; ``overrides`` are ``key.sub=value`` strings (Python literals, else
plain strings), applied after the variant, e.g. ``["optim.lr=3e-4", "mesh.fsdp=8"]``.
Unknown keys are errors (a ConfigDict is locked after loading).
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import ml_collections

HERE = Path(__file__).parent
SHIPPED = tuple(sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_")))


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(f"stp_jax_config_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise ValueError(f"config file {path} has no get_config(variant) function")
    return mod


def _literal(text: str):
    low = text.lower()
    if low in ("true", "false"):  # the command-line spelling of booleans (XLA flags, yes/no switches)
        return low == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def load(spec: str, overrides: list[str] | tuple[str, ...] = ()) -> ml_collections.ConfigDict:
    """``NAME_OR_FILE[:variant]`` -> a locked ConfigDict (see module doc)."""
    name, _, variant = spec.partition(":")
    path = Path(name)
    if not path.suffix:
        if name not in SHIPPED:
            raise ValueError(f"config {name!r} is neither a file nor a shipped config; shipped: {', '.join(SHIPPED)}")
        path = HERE / f"{name}.py"
    elif not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    cfg = _import(path).get_config(variant or None)
    cfg.lock()
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"config override {item!r} must look like key.sub=value")
        node, *_ = cfg, None
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if p not in node:
                raise ValueError(f"config override {item!r}: no section {p!r} in {sorted(node.keys())}")
            node = node[p]
        if parts[-1] not in node and parts[:-1] in ([s] for s in OPEN_SECTIONS):
            with cfg.unlocked():
                node[parts[-1]] = _literal(value.strip())
            continue
        if parts[-1] not in node:
            raise ValueError(f"config override {item!r}: no key {parts[-1]!r}; known: {sorted(node.keys())}")
        old, new = node[parts[-1]], _literal(value.strip())
        if isinstance(old, tuple) and isinstance(new, list):
            new = tuple(new)
        with cfg.ignore_type():
            node[parts[-1]] = new
    return cfg


# free-form sections: an override may add keys to them
OPEN_SECTIONS = ("tpu_compiler_options", "logical_rules_overrides")


def unknown_variant(name: str, variant: str | None, known) -> ValueError:
    return ValueError(f"config {name}: unknown variant {variant!r}; known: {', '.join(sorted(known))}")
