"""Multi-process start-up: ``jax.distributed.initialize`` from the environment.

TPU pods: every worker runs the same command and JAX finds its peers by itself.
GPU/CPU clusters: set ``STP_COORDINATOR=host:port``, ``STP_NUM_PROCESSES`` and
``STP_PROCESS_ID`` (SLURM's ``SLURM_*`` variables are read by JAX itself when
``STP_DISTRIBUTED=slurm``). ``STP_CPU_COLLECTIVES=gloo`` enables CPU collectives
across processes (tests over loopback).
"""
from __future__ import annotations

import os

import jax


def maybe_initialize() -> bool:
    """Initialise multi-process JAX when the environment asks for it; True if it did."""
    env = os.environ
    if env.get("STP_CPU_COLLECTIVES"):
        jax.config.update("jax_cpu_collectives_implementation", env["STP_CPU_COLLECTIVES"])
    if env.get("STP_COORDINATOR"):
        missing = [k for k in ("STP_NUM_PROCESSES", "STP_PROCESS_ID") if k not in env]
        if missing:
            raise ValueError(f"STP_COORDINATOR is set but {', '.join(missing)} is not; set all three "
                             "(coordinator host:port, process count, this process's id)")
        jax.distributed.initialize(env["STP_COORDINATOR"], int(env["STP_NUM_PROCESSES"]), int(env["STP_PROCESS_ID"]))
        return True
    if env.get("STP_DISTRIBUTED") in ("slurm", "tpu", "auto"):
        jax.distributed.initialize()
        return True
    if env.get("TPU_WORKER_HOSTNAMES") and "," in env["TPU_WORKER_HOSTNAMES"]:  # a multi-host TPU slice
        jax.distributed.initialize()
        return True
    return False
