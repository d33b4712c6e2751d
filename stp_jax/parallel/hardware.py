"""Accelerator facts used for MFU and for fitting programs: the one table (vendor figures).

TPU generations (per chip): HBM, dense bf16 peak, TensorCores, slice dimensionality and the
chips of one host along each axis; GPUs by device_kind prefix.
"""
from __future__ import annotations

TPU_CHIPS = {
    "v4": {"device_kind": "TPU v4", "hbm_gib": 32, "peak": 275e12, "cores_per_chip": 2, "dims": 3, "host": (2, 2, 1)},
    "v5p": {"device_kind": "TPU v5p", "hbm_gib": 95, "peak": 459e12, "cores_per_chip": 2, "dims": 3, "host": (2, 2, 1)},
    "v5e": {"device_kind": "TPU v5e", "hbm_gib": 16, "peak": 197e12, "cores_per_chip": 1, "dims": 2, "host": (2, 4, 1)},
    "v6e": {"device_kind": "TPU v6e", "hbm_gib": 32, "peak": 918e12, "cores_per_chip": 1, "dims": 2, "host": (2, 4, 1)},
}

# Dense bf16 peak FLOP/s per device, by device_kind prefix.
PEAK_FLOPS = {
    **{v["device_kind"]: v["peak"] for v in TPU_CHIPS.values()},
    "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU7x": 2307e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA B200": 2250e12, "NVIDIA A100": 312e12,
}


def peak_flops(device, override: float = 0.0) -> float | None:
    """The device's dense bf16 peak (``override`` when > 0); None when unknown (e.g. CPU)."""
    if override:
        return float(override)
    kind = getattr(device, "device_kind", "")
    for prefix, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if kind.startswith(prefix):
            return flops
    return None
