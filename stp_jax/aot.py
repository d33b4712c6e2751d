"""``stp-aot``: compile a config's real train step (or sampling step) for a TPU topology on
any machine, and say whether it fits.

  stp-aot --config stp_1_3b --topology v5p-64
  stp-aot --config stp_14b:720p --topology v6e-16 --what sample --mesh fsdp=4,context=4

With ``libtpu`` installed, ``jax.experimental.topologies`` describes a TPU slice without
one; the step is lowered with the config's shardings and compiled by the TPU compiler.
Reported per chip: arguments, temporaries, outputs (minus donated buffers), total vs the
chip's HBM; FLOPs per step from XLA's cost analysis; the step time implied at 40% and 60%
MFU; whether the Mosaic (splash attention) kernel is in the program. Exits 1 when it does
not fit, with what to change.

Topology names: ``v5p-N``/``v4-N`` (N TensorCores, 2 per chip), ``v5e-N``/``v6e-N``
(N chips), optionally ``xS`` for S slices (``v5p-64x2``), or a raw ``v5p:2x4x4``.
The train step takes precomputed latents (the VAE is not in it: see stp-precompute).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

from stp_jax.parallel.hardware import TPU_CHIPS as CHIPS


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given
    generation: str  # v4 | v5p | v5e | v6e
    shape: tuple[int, ...]  # chips per axis
    slices: int = 1

    @property
    def chips(self) -> int:
        return math.prod(self.shape) * self.slices

    @property
    def topology_name(self) -> str:
        return f"{self.generation}:{'x'.join(map(str, self.shape))}"

    @property
    def host_bounds(self) -> tuple[int, int, int]:
        host = CHIPS[self.generation]["host"]
        shape3 = tuple(self.shape) + (1,) * (3 - len(self.shape))
        return tuple(min(h, s) for h, s in zip(host, shape3))


def _grid(chips: int, dims: int) -> tuple[int, ...]:
    """The slice shape TPU slices use for ``chips`` chips (as square/cubic as possible)."""
    if chips & (chips - 1):
        raise ValueError(f"{chips} chips: TPU slices of this generation come in powers of two")
    shape = [1] * dims
    i = 0
    while math.prod(shape) < chips:
        shape[i % dims] *= 2
        i += 1
    return tuple(sorted(shape))


def parse_topology(name: str) -> Topology:
    m = re.fullmatch(r"(v4|v5p|v5e|v6e):(\d+(?:x\d+)*)", name)
    if m:
        shape = tuple(int(v) for v in m[2].split("x"))
        if min(shape) < 1 or len(shape) > 3:
            raise ValueError(f"topology {name!r}: expected 1 to 3 chip counts >= 1, e.g. v5p:2x2x2")
        return Topology(name, m[1], shape)
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)(?:x(\d+))?", name)
    if not m:
        raise ValueError(f"topology {name!r}: expected e.g. v5p-8, v5p-64, v6e-16, v5e-8, v5p-64x2 (slices) or "
                         f"v5p:2x2x2; generations {sorted(CHIPS)}")
    gen, n, slices = m[1], int(m[2]), int(m[3] or 1)
    if n < 1 or slices < 1:
        raise ValueError(f"topology {name!r}: the TensorCore count and the slice count (v5p-8x2: 2 slices) must be >= 1")
    info = CHIPS[gen]
    if n % info["cores_per_chip"]:
        raise ValueError(f"topology {name!r}: {gen}-N counts TensorCores ({info['cores_per_chip']} per chip)")
    try:
        shape = _grid(n // info["cores_per_chip"], info["dims"])
    except ValueError as e:
        raise ValueError(f"topology {name!r}: {e}") from None
    return Topology(name, gen, shape, slices)


def tpu_devices(topo: Topology):
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # a topology description needs no TPU lock
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover
        raise ValueError(f"jax.experimental.topologies is unavailable ({e})") from e
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topo.topology_name,
                                            chip_config_name="default", chips_per_host_bounds=topo.host_bounds,
                                            num_slices=topo.slices)
    except Exception as e:  # noqa: BLE001
        hint = " (pip install libtpu, the version jax[tpu] pins)" if "libtpu" in str(e).lower() or "tpu" not in str(
            e).lower() else ""
        raise ValueError(f"cannot describe TPU topology {topo.name} ({topo.topology_name}): {e}{hint}") from e
    return desc.devices


def parse_mesh(text: str | None, n: int) -> dict | None:
    if not text:
        return None
    from stp_jax.parallel.mesh import mesh_sizes

    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        try:
            out[k.strip()] = int(v)
        except ValueError:
            raise ValueError(f"--mesh {text!r}: expected axis=size pairs with integer sizes, e.g. "
                             "fsdp=8,context=2") from None
    try:
        mesh_sizes(out, n)  # the one home of the mesh rules
    except ValueError as e:
        raise ValueError(f"--mesh {text!r}: {e} (the topology has {n} devices)") from None
    return out


# ---------------------------------------------------------------- compile


def compile_step(config, devices, what: str = "train"):
    """Lower (Trainer.lower: the program training runs) and compile the train step (latent
    batches) or one CFG-batched sampling forward of ``config`` for ``devices``; returns
    (compiled or NoFit, trainer, model FLOPs of one call)."""
    from stp_jax.models import kernels
    from stp_jax.trainer import Trainer

    if what not in ("train", "sample"):
        raise ValueError(f"--what {what!r}: expected 'train' or 'sample'")
    tr = Trainer(config, devices=devices)
    with kernels.compile_for(devices[0].platform):
        lowered, flops = tr.lower(what)
        try:
            compiled = lowered.compile()
        except Exception as e:  # noqa: BLE001 - the TPU compiler refuses programs that cannot fit
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            compiled = NoFit(str(e))
    return compiled, tr, flops


class NoFit:
    """Stands for a program the TPU compiler refused for lack of HBM (its message kept)."""

    def __init__(self, message: str):
        self.message = message
        m = re.search(r"required for HLO temporaries \(([\d.]+)([GMK])\)", message)
        scale = {"G": 1.0, "M": 1 / 1024, "K": 1 / 1024 ** 2}
        self.temp_gib = float(m[1]) * scale[m[2]] if m else float("nan")


@dataclasses.dataclass
class Report:
    topology: str
    chips: int
    what: str
    mesh: dict
    argument_gib: float
    temp_gib: float
    output_gib: float
    alias_gib: float
    total_gib: float
    hbm_gib: float
    fits: bool
    flops_per_chip: float  # XLA cost analysis (per device program)
    analytic_flops_per_chip: float
    step_s_at_40: float
    step_s_at_60: float
    mosaic_kernel: bool
    tokens_per_clip: int
    global_batch: int

    def lines(self) -> list[str]:
        if math.isnan(self.argument_gib):
            return [f"{self.what} step on {self.topology} ({self.chips} chips), mesh {self.mesh}, global batch "
                    f"{self.global_batch} x {self.tokens_per_clip} tokens",
                    f"  the TPU compiler refused it: temporaries alone need {self.temp_gib:.1f} GiB per chip of "
                    f"{self.hbm_gib:.0f} GiB HBM -> DOES NOT FIT"]
        return [
            f"{self.what} step on {self.topology} ({self.chips} chips), mesh {self.mesh}, global batch "
            f"{self.global_batch} x {self.tokens_per_clip} tokens",
            f"  per chip: arguments {self.argument_gib:.2f} GiB + temporaries {self.temp_gib:.2f} GiB + outputs "
            f"{self.output_gib:.2f} GiB - donated {self.alias_gib:.2f} GiB = {self.total_gib:.2f} GiB of "
            f"{self.hbm_gib:.0f} GiB HBM -> {'fits' if self.fits else 'DOES NOT FIT'}",
            f"  FLOPs per chip per step: {self.flops_per_chip / 1e9:.4g} GFLOP (XLA cost analysis), "
            f"{self.analytic_flops_per_chip / 1e9:.4g} GFLOP (model count)",
            f"  step time at 40% MFU {self.step_s_at_40 * 1e3:.4g} ms, at 60% MFU {self.step_s_at_60 * 1e3:.4g} ms",
            f"  splash attention (Mosaic kernel) in the program: {'yes' if self.mosaic_kernel else 'no'}",
        ]


def analyse(compiled, tr, flops: float, topo: Topology, what: str) -> Report:
    gib = 1024 ** 3
    info = CHIPS[topo.generation]
    per_chip = flops / topo.chips
    if isinstance(compiled, NoFit):
        return Report(topo.name, topo.chips, what, dict(tr.mesh.shape), float("nan"), compiled.temp_gib, float("nan"),
                      float("nan"), compiled.temp_gib, info["hbm_gib"], False, float("nan"), per_chip,
                      per_chip / (0.4 * info["peak"]), per_chip / (0.6 * info["peak"]), False, tr.tokens_per_clip,
                      tr.data_cfg.global_batch)
    mem = compiled.memory_analysis()
    arg, tmp = mem.argument_size_in_bytes / gib, mem.temp_size_in_bytes / gib
    out, alias = mem.output_size_in_bytes / gib, mem.alias_size_in_bytes / gib
    total = arg + tmp + out - alias
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
    hlo = compiled.as_text()
    mosaic = "tpu_custom_call" in hlo or "mosaic" in hlo.lower()
    return Report(topo.name, topo.chips, what, dict(tr.mesh.shape), arg, tmp, out, alias, total, info["hbm_gib"],
                  total <= 0.95 * info["hbm_gib"], xla_flops, per_chip, per_chip / (0.4 * info["peak"]),
                  per_chip / (0.6 * info["peak"]), mosaic, tr.tokens_per_clip, tr.data_cfg.global_batch)


def advice(config, report: Report) -> str:
    tips = []
    if config.model.remat != "full":
        tips.append(f"model.remat=full (now {config.model.remat!r}; dots keeps matmul outputs)")
    if config.mesh.get("fsdp", 1) != -1:
        tips.append("mesh.fsdp=-1 (shard parameters and optimizer state over every chip)")
    if config.mesh.get("context", 1) == 1:
        tips.append("mesh.context=2..8 with model.context_parallel=ulysses (shard the tokens of long videos)")
    if config.data.global_batch > report.chips // max(config.mesh.get("context", 1), 1):
        tips.append("a smaller data.global_batch with optim.accumulate")
    tips.append("a bigger slice")
    return "try: " + "; ".join(tips)


def aot_report(config, topology: str, what: str = "train", mesh: str | None = None) -> tuple[Report, str]:
    """Compile ``config``'s step for ``topology`` (``stp-aot``); returns (report, advice when it
    does not fit, else "")."""
    topo = parse_topology(topology)
    devices = tpu_devices(topo)
    mesh_shape = parse_mesh(mesh, len(devices))
    if mesh_shape is not None:
        with config.unlocked():
            config.mesh = mesh_shape
    compiled, tr, flops = compile_step(config, devices, what)
    report = analyse(compiled, tr, flops, topo, what)
    return report, "" if report.fits else advice(config, report)
