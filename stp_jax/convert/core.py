"""Generic PyTorch <-> JAX weight conversion machinery.

A model's converter is a *table*: one ``Rule`` per PyTorch tensor naming the JAX
parameter path, the PyTorch shape expected for the config, a transform kind and an
optional layer index (per-layer tensors are stacked along axis 0 for ``nn.scan``).
``apply_table`` checks the whole state dict against the table first and raises one
``ConversionError`` that lists every missing, unexpected, misshaped and non-float key; only
then is anything converted, and every weight read is checked to be finite (one error lists
the keys holding NaN/Inf). ``invert_table`` turns params back into the PyTorch layout exactly.

State dicts are read lazily (``StateDict``): safetensors files (single, sharded via
``*.index.json``) are memory-mapped and a tensor is read only when converted; bf16 stays
bf16 until it is cast once into the target dtype. ``.pth``/``.ckpt``/``.pt`` go through
``torch.load(weights_only=True, mmap=True)``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


class ConversionError(ValueError):
    """A state dict does not match what the model needs; the message lists every problem."""


# ---------------------------------------------------------------- reading


class StateDict(Mapping):
    """Lazy, read-only name -> numpy array mapping over one or more checkpoint files."""

    def __init__(self, entries: dict[str, tuple[Callable[[], np.ndarray], tuple[int, ...], str]], source: str):
        self._entries = entries  # name -> (loader, shape, dtype name)
        self.source = source

    def __getitem__(self, key):
        return self._entries[key][0]()

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def shape(self, key) -> tuple[int, ...]:
        return self._entries[key][1]

    def dtype(self, key) -> str:
        return self._entries[key][2]

    def renamed(self, fn: Callable[[str], str]) -> StateDict:
        out = {}
        for k, v in self._entries.items():
            nk = fn(k)
            if nk in out:
                raise ConversionError(f"{self.source}: keys collide after renaming: {nk!r}")
            out[nk] = v
        return StateDict(out, self.source)

    def merged_over(self, base: StateDict) -> StateDict:
        """This state dict's tensors over ``base``'s (for a fine-tune checkpoint over a base model)."""
        return StateDict({**base._entries, **self._entries}, f"{self.source} over {base.source}")

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], source: str = "<arrays>") -> StateDict:
        return cls({k: ((lambda a=a: a), tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}, source)


_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
              "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16", "float8_e4m3fn", "float8_e5m2")


def nonfinite(key: str, value: np.ndarray) -> str | None:
    """``"key: N of M values are NaN/Inf"`` when ``value`` (a weight as read, or as cast) is not
    finite everywhere, else None."""
    bad = value.size - int(np.count_nonzero(np.isfinite(value)))
    return f"{key}: {bad} of {value.size} values are NaN/Inf" if bad else None


def raise_nonfinite(source: str, bad: list[str]) -> None:
    """One ConversionError listing every weight with NaN/Inf values (``bad`` from ``nonfinite``)."""
    if bad:
        raise ConversionError("\n".join([f"{source}: {len(bad)} weight(s) hold NaN or Inf (in the file, or after the "
                                          "cast to --param-dtype); expected finite weights:"]
                                         + [f"    {x}" for x in bad]))


def _read_safetensors(files: Iterable[Path], source: str) -> StateDict:
    from safetensors import safe_open

    entries = {}
    for f in files:
        try:
            handle = safe_open(str(f), framework="numpy")
        except Exception as e:  # noqa: BLE001 - re-raised with the file named
            raise ConversionError(f"{f}: not a readable safetensors file ({e})") from e
        for name in handle.keys():  # noqa: SIM118 - a safetensors handle, not a dict
            sl = handle.get_slice(name)
            if name in entries:
                raise ConversionError(f"{source}: tensor {name!r} appears in more than one shard")
            entries[name] = ((lambda h=handle, n=name: h.get_tensor(n)), tuple(sl.get_shape()),
                             _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower()))
    return StateDict(entries, source)


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the bits, no float32 detour
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _read_torch(path: Path) -> StateDict:
    try:
        import torch
    except ImportError as e:
        raise ConversionError(f"{path}: reading .pth/.ckpt files needs PyTorch "
                              "(pip install -e '.[torch]'), or convert the file to safetensors") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(f"{path}: not a loadable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    # unwrap {"state_dict": {...}} / {"module": {...}} / {"model": {...}} containers
    while isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "module", "model", "ema"):
        obj = next(iter(obj.values()))
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise ConversionError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    entries = {k: ((lambda t=t: _torch_to_numpy(t)), tuple(t.shape), str(t.dtype).replace("torch.", ""))
               for k, t in obj.items()}
    return StateDict(entries, str(path))


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """Open a checkpoint: a .safetensors file, a sharded ``*.safetensors.index.json``, a
    .pth/.pt/.ckpt/.bin file, or a directory holding exactly one of those."""
    p = Path(path)
    if not p.exists():
        raise ConversionError(f"{p}: no such file or directory")
    if p.is_dir():
        idx = sorted(p.glob(f"*{SAFETENSORS_SUFFIX}.index.json"))
        st = sorted(p.glob(f"*{SAFETENSORS_SUFFIX}"))
        pt = sorted(q for s in TORCH_SUFFIXES for q in p.glob(f"*{s}"))
        if len(idx) == 1:
            return read_state_dict(idx[0])
        if len(st) == 1 and not idx:
            return read_state_dict(st[0])
        if not st and not idx and len(pt) == 1:
            return read_state_dict(pt[0])
        raise ConversionError(f"{p}: expected one checkpoint (a .safetensors file, a *.safetensors.index.json "
                              f"or one .pth/.ckpt), found {[q.name for q in idx + st + pt] or 'none'}")
    if p.name.endswith(f"{SAFETENSORS_SUFFIX}.index.json"):
        try:
            weight_map = json.loads(p.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise ConversionError(f"{p}: not a safetensors index (needs a 'weight_map' object)") from e
        files = sorted({p.parent / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise ConversionError(f"{p}: shard files listed in the index are missing: {missing}")
        sd = _read_safetensors(files, str(p))
        absent = sorted(set(weight_map) - set(sd))
        if absent:
            raise ConversionError(f"{p}: tensors listed in the index are not in the shards: {absent}")
        return sd
    if p.suffix == SAFETENSORS_SUFFIX:
        return _read_safetensors([p], str(p))
    if p.suffix in TORCH_SUFFIXES:
        return _read_torch(p)
    raise ConversionError(f"{p}: unknown checkpoint type; expected .safetensors, *.safetensors.index.json, "
                          f"or one of {TORCH_SUFFIXES}")


def strip_common_prefix(sd: StateDict, prefixes: Iterable[str]) -> StateDict:
    """Drop a wrapper prefix (e.g. ``model.diffusion_model.``) shared by *every* key."""
    for pre in prefixes:
        if len(sd) and all(k.startswith(pre) for k in sd):
            return sd.renamed(lambda k, pre=pre: k[len(pre):])
    return sd


# ---------------------------------------------------------------- tables

# kind -> (torch array, jax shape) -> jax array ; inverse (jax array, torch shape) -> torch array
TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    # torch Linear weight (out, in) -> kernel (in..., out...)
    "linear": (lambda w, s: w.T.reshape(s), lambda a, s: a.reshape(s[::-1]).T),
    "reshape": (lambda w, s: w.reshape(s), lambda a, s: a.reshape(s)),
    # Conv1d weight (out, in, k) -> (k, in, out)
    "conv1d": (lambda w, s: w.transpose(2, 1, 0).reshape(s), lambda a, s: a.transpose(2, 1, 0).reshape(s)),
    # Conv3d patch embedding (D, C, pt, ph, pw) -> (pt*ph*pw*C, D)
    "patch3d": (lambda w, s: w.transpose(2, 3, 4, 1, 0).reshape(s),
                lambda a, s: a.reshape(s[2], s[3], s[4], s[1], s[0]).transpose(4, 3, 0, 1, 2)),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    torch_key: str
    path: tuple[str, ...]  # into the (unboxed) params tree
    torch_shape: tuple[int, ...]
    kind: str = "reshape"
    layer: int | None = None  # index along the stacked (scanned) axis 0


def _tree_get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _tree_set(tree, path, value):
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def check_state_dict(sd: StateDict, rules: list[Rule], what: str) -> None:
    """Raise one ConversionError naming every missing, unexpected and misshaped key."""
    expected = {r.torch_key: r for r in rules}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshaped = sorted(f"{k}: got {tuple(sd.shape(k))}, expected {r.torch_shape}"
                       for k, r in expected.items() if k in sd and tuple(sd.shape(k)) != r.torch_shape)
    non_float = sorted(f"{k}: {sd.dtype(k)}, expected a float dtype ({', '.join(FLOAT_DTYPES[:4])})"
                       for k in expected if k in sd and sd.dtype(k) not in FLOAT_DTYPES)
    if missing or unexpected or misshaped or non_float:
        lines = [f"{sd.source} does not match {what}:"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped),
                             ("non-float", non_float)):
            if items:
                lines.append(f"  {len(items)} {title} key(s):")
                lines += [f"    {x}" for x in items]
        raise ConversionError("\n".join(lines))


def apply_table(sd: StateDict, rules: list[Rule], abstract_params: Mapping, what: str,
                dtype: np.dtype | str | None = None) -> dict:
    """Build the params tree (numpy) from ``sd`` per ``rules``; shapes checked against
    ``abstract_params`` (ShapeDtypeStructs). ``dtype`` None keeps each tensor's dtype."""
    check_state_dict(sd, rules, what)
    out: dict = {}
    stacks: dict[tuple[str, ...], np.ndarray] = {}
    bad = []
    for r in rules:
        target = _tree_get(abstract_params, r.path)
        tdtype = np.dtype(dtype) if dtype is not None else np.dtype(sd.dtype(r.torch_key))
        tshape = tuple(target.shape[1:]) if r.layer is not None else tuple(target.shape)
        value = np.asarray(TRANSFORMS[r.kind][0](sd[r.torch_key], tshape)).astype(tdtype, copy=False)
        if problem := nonfinite(r.torch_key, value):
            bad.append(problem)
        if r.layer is None:
            _tree_set(out, r.path, value)
        else:
            if r.path not in stacks:
                stacks[r.path] = np.empty(target.shape, tdtype)
            stacks[r.path][r.layer] = value
    raise_nonfinite(sd.source, bad)
    for path, arr in stacks.items():
        _tree_set(out, path, arr)
    return out


def invert_table(params: Mapping, rules: list[Rule], dtypes: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """params -> {torch_key: array in the PyTorch layout}, cast to ``dtypes[key]`` when given."""
    out = {}
    for r in rules:
        a = np.asarray(_tree_get(params, r.path))
        if r.layer is not None:
            a = a[r.layer]
        w = np.ascontiguousarray(TRANSFORMS[r.kind][1](a, r.torch_shape))
        if dtypes and r.torch_key in dtypes:
            w = w.astype(np.dtype(dtypes[r.torch_key]), copy=False)
        out[r.torch_key] = w
    return out


def save_safetensors(tensors: Mapping[str, np.ndarray], path: str | os.PathLike, metadata: dict | None = None):
    """Write tensors to one safetensors file atomically (write to a temp name, then rename)."""
    from safetensors.numpy import save_file

    from stp_jax.files import atomic_output

    with atomic_output(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
                  metadata={k: str(v) for k, v in (metadata or {}).items()})


def describe(tree: Any) -> str:
    import jax

    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    return f"{len(jax.tree.leaves(tree))} arrays, {n / 1e6:.2f}M parameters"
