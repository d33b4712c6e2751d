"""Device meshes, the logical-axis table and sharding helpers.

Every parameter and key activation in stp_jax carries *logical* axis names. This file
holds the one table that maps them onto the four mesh axes:

  data     pure data parallelism (parameters replicated)
  fsdp     data parallelism with parameters/optimizer state sharded (ZeRO-3 style)
  context  sequence (token) sharding of activations; attention uses ring or all-to-all;
           parameters/optimizer state are sharded over it as over fsdp
  tensor   Megatron-style sharding of heads and MLP hidden units

Configs can override single rules (``logical_rules_overrides``), as MaxText does.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "context", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated).
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    # ---- parameters
    ("layers", None),
    # model dim D, on the input side of weights. Sharded over `context` too: the chips of a context
    # group hold the same clips, so they split the weights and optimizer state as fsdp does (ZeRO-3
    # over every chip that is not a data-parallel replica; MaxText does the same).
    ("embed", ("fsdp", "context")),
    ("mlp", "tensor"),  # FFN hidden / square-matrix output side
    ("heads", "tensor"),  # attention heads N
    ("kv", None),  # head dim K
    ("modulation", None),  # the 6 (or 2) AdaLN chunks
    ("patch", None),  # flattened patch vectors (pt*ph*pw*C)
    ("text_embed", None),  # text-encoder width E
    ("freq", None),  # sinusoid width
    ("cam", None),  # 12 camera numbers
    ("conv_k", None),  # temporal conv taps
    ("vocab", None),  # text-encoder vocabulary
    # ---- activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", "context"),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_frames", None),
    ("activation_text", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes (a config's ``mesh`` section); one may be -1 = the remaining devices."""
    data: int = 1
    fsdp: int = -1
    context: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = dataclasses.asdict(self)
        if any(v == 0 or v < -1 for v in sizes.values()) or list(sizes.values()).count(-1) > 1:
            raise ValueError(f"mesh {sizes}: sizes must be >= 1, with at most one -1 (= the remaining devices)")


def logical_rules(overrides: Mapping[str, Any] | None = None) -> tuple[tuple[str, Any], ...]:
    """The default rule table with ``overrides`` (logical name -> mesh axes) applied."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - {k for k, _ in LOGICAL_RULES}
    if unknown:
        raise ValueError(f"logical_rules_overrides names unknown logical axes {sorted(unknown)}; "
                         f"known: {[k for k, _ in LOGICAL_RULES]}")
    return tuple((k, overrides.get(k, v)) for k, v in LOGICAL_RULES)


def make_mesh(shape: Mapping[str, int] | Sequence[int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 4-axis (data, fsdp, context, tensor) mesh with Auto axis types.

    ``shape`` is a mapping (missing axes = 1, one axis may be -1 = "the rest") or a
    4-sequence. ``None`` puts every device on ``fsdp``.
    """
    devices = list(devices) if devices is not None else jax.devices()
    auto = (jax.sharding.AxisType.Auto,) * 4
    return jax.make_mesh(mesh_sizes(shape, len(devices)), MESH_AXES, axis_types=auto, devices=devices)


def mesh_sizes(shape, n: int) -> tuple[int, ...]:
    """The (data, fsdp, context, tensor) sizes of ``shape`` (as make_mesh takes it) on ``n``
    devices, with a -1 resolved; every inconsistency is a ValueError."""
    if shape is None:
        shape = {"fsdp": -1}
    if not isinstance(shape, Mapping):
        if len(shape) != 4:
            raise ValueError(f"mesh shape {tuple(shape)} must have 4 entries {MESH_AXES}")
        shape = dict(zip(MESH_AXES, shape))
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes {sorted(unknown)} are unknown; expected a subset of {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))}: axis sizes must be >= 1 (or -1 = the rest)")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    if -1 in sizes:
        rest = int(np.prod([s for s in sizes if s != -1]))
        if n % rest:
            raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))} does not divide {n} devices")
        sizes[sizes.index(-1)] = n // rest
    if int(np.prod(sizes)) != n:
        raise ValueError(f"mesh shape {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} "
                         f"devices but {n} are available")
    return tuple(sizes)


def logical_sharding(tree, mesh: Mesh, rules=None):
    """NamedShardings for a pytree of logical PartitionSpecs (e.g. from nn.get_partition_spec)."""
    rules = rules if rules is not None else logical_rules()
    return nn.logical_to_mesh_sharding(tree, mesh, rules)


def param_shardings(abstract_variables, mesh: Mesh, rules=None):
    """Shardings for (boxed) abstract variables as returned by ``jax.eval_shape(model.init, ...)``."""
    return logical_sharding(nn.get_partition_spec(abstract_variables), mesh, rules)


def data_sharding(mesh: Mesh, ndim: int, rules=None) -> NamedSharding:
    """Batch-sharded NamedSharding for an array whose axis 0 is the batch."""
    rules = rules if rules is not None else logical_rules()
    axes = nn.logical_to_mesh_axes(("activation_batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, P(*axes))


# XLA:CPU's defaults hand dots and reductions to YNNPACK; its reductions run a LayerNorm or RMSNorm
# forward + backward ~3.5x slower than XLA's own ([1024, 512]: 6.4 vs 1.7 ms, torch 1.75), so on CPU only
# the dots go to it (docs/BENCHMARKS.md, "YNNPACK for dots only"). An XLA_FLAGS setting of the flag wins.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def platform_compiler_options(platform: str, tpu_options: Mapping[str, Any] | None = None) -> dict | None:
    """XLA compile options for programs on ``platform``: ``tpu_options`` (a config's
    ``tpu_compiler_options``) on TPU, CPU_COMPILER_OPTIONS on CPU (unless XLA_FLAGS sets that
    flag itself), none elsewhere (each backend rejects the others' flags)."""
    if platform == "tpu":
        return dict(tpu_options) if tpu_options else None
    if platform == "cpu" and not any(k in os.environ.get("XLA_FLAGS", "") for k in CPU_COMPILER_OPTIONS):
        return dict(CPU_COMPILER_OPTIONS)
    return None


def compiler_options(mesh: Mesh, tpu_options: Mapping[str, Any] | None) -> dict | None:
    """platform_compiler_options for the devices of ``mesh``."""
    return platform_compiler_options(mesh.devices.flat[0].platform, tpu_options)


def mesh_axis_size(mesh, axis) -> int:
    """Size of a mesh axis name, a tuple of names, or None (=1)."""
    if axis is None:
        return 1
    if isinstance(axis, str):
        axis = (axis,)
    return int(np.prod([dict(mesh.shape)[a] for a in axis]))


def state_shardings(abstract_state, param_sh, mesh: Mesh):
    """Shardings for every leaf of a training state: optimizer moments and EMA follow the
    parameter at the same path (matched by path suffix, when the rank allows); scalars and
    anything else are replicated."""
    def key(k):
        return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))

    flat = {tuple(key(k) for k in path): s for path, s in jax.tree_util.tree_flatten_with_path(param_sh)[0]}
    rep = NamedSharding(mesh, P())

    def pick(path, leaf):
        keys = tuple(key(k) for k in path)
        for i in range(len(keys)):
            s = flat.get(keys[i:])
            if s is not None and len(s.spec) <= len(leaf.shape):
                return s
        return rep

    return jax.tree_util.tree_map_with_path(pick, abstract_state)
