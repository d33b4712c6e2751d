"""Two processes on loopback (gloo CPU collectives, 2 devices each) train 2 steps, save, then
restart, restore and train a 3rd: params equal a 1-process, 4-device run with the same global
batch (the data order does not depend on the process count: pipeline.GlobalOrderSampler)."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax_cache import compile_cache_env

ARGS = ["--config", "tiny_camxtime:smoke", "--set", "checkpoint_every=2", "--set", "data.global_batch=4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STP_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", **extra)
    return env


def _run_two(workdir, steps: int):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "stp_jax.cli", "train", *ARGS, "--set", f"total_steps={steps}",
                               "--workdir", str(workdir)],
                              env=_env(2, STP_COORDINATOR=f"127.0.0.1:{port}", STP_NUM_PROCESSES="2",
                                       STP_PROCESS_ID=str(i), STP_CPU_COLLECTIVES="gloo",
                                       **compile_cache_env(Path(workdir).parent / "jax_cache")),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _params(workdir, step):
    import jax
    import orbax.checkpoint as ocp

    path = Path(workdir).absolute() / "checkpoints" / str(step) / "state"
    ckptr = ocp.StandardCheckpointer()
    meta = ckptr.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # saved on another topology: restore onto one device
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), meta)
    r = ckptr.restore(path, target)
    return [np.asarray(x) for x in jax.tree.leaves(r["params"])]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    one = tmp_path / "one"
    r = subprocess.run([sys.executable, "-m", "stp_jax.cli", "train", *ARGS, "--set", "total_steps=3", "--workdir", str(one)],
                       env=_env(4), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    two = tmp_path / "two"
    _run_two(two, 2)
    outs = _run_two(two, 3)
    assert "resumed from" in outs[0] and "4 devices" in outs[0]
    assert not outs[1].strip().count("step 3:")  # only process 0 logs
    for a, b in zip(_params(one, 3), _params(two, 3)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert (two / "model" / "run.json").exists() and (two / "metrics.jsonl").exists()
