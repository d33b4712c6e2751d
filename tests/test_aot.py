"""AOT compilation for TPU topologies on this CPU machine (libtpu + jax.experimental.topologies):
the tiny config's real train step on a v5p-8 slice (splash attention inside), and the 1.3B
config's forward on one v5p chip, with memory figures checked against bounds derived from the
model's sizes."""
import math
from pathlib import Path

import numpy as np
import pytest

from stp_jax import aot
from stp_jax import config as configs

GIB = 1024 ** 3
# conftest's compilation cache stores these TPU executables but cannot load them without a TPU client
# (JAX warns and compiles again)
pytestmark = pytest.mark.filterwarnings("ignore:Error reading persistent compilation cache entry")


@pytest.fixture(autouse=True)
def _default_precision():
    # conftest asks for "highest" matmul precision (CPU parity); Mosaic rejects that for bf16 operands
    import jax

    with jax.default_matmul_precision("default"):
        yield


def _param_count(tr) -> int:
    return sum(math.prod(x.shape) for x in __import__("jax").tree.leaves(tr.abstract_state.params))


def _nbytes(tree) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in __import__("jax").tree.leaves(tree))


def test_topology_names():
    assert aot.parse_topology("v5p-8").shape == (1, 2, 2) and aot.parse_topology("v5p-8").chips == 4
    assert aot.parse_topology("v5p-64").chips == 32 and aot.parse_topology("v6e-16").shape == (4, 4)
    assert aot.parse_topology("v5p-64x2").chips == 64 and aot.parse_topology("v5p:2x2x2").chips == 8
    with pytest.raises(ValueError, match="expected e.g."):
        aot.parse_topology("h100-8")


def test_tiny_train_step_on_v5p8_has_splash_and_fits():
    topo = aot.parse_topology("v5p-8")
    cfg = configs.load("tiny_camxtime", ["model.attention='auto'"])
    compiled, tr, flops = aot.compile_step(cfg, aot.tpu_devices(topo), "train")
    r = aot.analyse(compiled, tr, flops, topo, "train")
    assert r.mosaic_kernel, "the TPU program should call the splash (Mosaic) kernel"
    p = _param_count(tr)
    state_bytes = 3 * 4 * p  # fp32 params + Adam mu + nu
    assert state_bytes / topo.chips * 0.5 <= r.argument_gib * GIB <= state_bytes + 16 * 2 ** 20
    assert r.alias_gib > 0  # the state is donated
    assert r.fits and r.total_gib < 1.0


def test_1_3b_forward_on_one_chip_memory_bounds():
    topo = aot.parse_topology("v5p:1x1x1")
    cfg = configs.load("stp_1_3b", ["data.global_batch=1"])
    compiled, tr, flops = aot.compile_step(cfg, aot.tpu_devices(topo), "sample")
    r = aot.analyse(compiled, tr, flops, topo, "sample")
    p = _param_count(tr)
    assert 1.9e9 < p < 2.1e9  # Wan 1.3B (1.42B) + per-block camera and time modules (SpaceTimePilot mode)
    n, tokens, d, ffn = 2, tr.tokens_per_clip, tr.mcfg.dim, tr.mcfg.ffn_dim  # the CFG pair
    # the train state's weights (fp32; frozen matmul weights in bf16) + small inputs
    wbytes = _nbytes(tr.abstract_state.params)
    assert 2 * p < wbytes < 4 * p
    assert wbytes <= r.argument_gib * GIB <= wbytes * 1.05 + 64 * 2 ** 20
    residual = n * tokens * d * 4
    assert residual <= r.temp_gib * GIB <= 2 * n * tokens * ffn * 4 + 10 * residual  # one layer live at a time
    assert r.mosaic_kernel and r.fits
    assert np.isclose(r.analytic_flops_per_chip, flops)


def test_multichip_gradient_all_reduce_compiles_with_the_configs_tpu_options():
    """libtpu 0.0.42.1 aborts on the data-parallel gradient all-reduce of a model with a wide
    (>= 2048) text projection on a multi-chip slice; the shipped tpu_compiler_options avoid it.
    A subprocess, because the compiler's failure is an abort."""
    import json
    import subprocess
    import sys
    import tempfile

    small = ["model.num_layers=1", "model.dim=256", "model.num_heads=2", "model.ffn_dim=512", "data.height=128",
             "data.width=128", "data.num_frames=9", "data.global_batch=4", "optim.trainable=all"]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "stp_jax.cli", "aot", "--config", "stp_1_3b", "--topology", "v5p-8",
               *[a for s in small for a in ("--set", s)], "--json", f"{tmp}/r.json"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (p.stdout + p.stderr)[-2000:]
        r = json.loads(Path(f"{tmp}/r.json").read_text())
    assert r["fits"] and r["chips"] == 4 and r["mesh"]["fsdp"] == 4



@pytest.mark.slow
def test_14b_720p_memory_plan_on_v5p8_scaled_down():
    """The plan that fits stp_14b:720p on a v5p-8 (docs/SCALING.md: 84 GiB of 95 per chip), on 1 of
    its 40 layers and a 5-frame 128x128 clip (the plan does not depend on either; the compile takes
    22 s where 240x416 took 52 and 2 layers at 9 frames 70): weights and optimizer state sharded over the context
    group, frozen matmul weights stored in bf16, each layer's saved input moved to host memory."""
    topo = aot.parse_topology("v5p-8")
    cfg = configs.load("stp_14b:720p", ["data.global_batch=1", "model.num_layers=1", "data.height=128",
                                        "data.width=128", "data.num_frames=5", "data.num_cameras=5"])
    assert cfg.model.remat == "offload_full"
    compiled, tr, flops = aot.compile_step(cfg, aot.tpu_devices(topo), "train")
    r = aot.analyse(compiled, tr, flops, topo, "train")
    assert dict(tr.mesh.shape)["context"] == 4 and dict(tr.mesh.shape)["fsdp"] == 1
    params = tr.abstract_state.params
    assert params["blocks"]["ffn"]["fc1"]["kernel"].dtype == np.dtype("bfloat16")  # frozen: compute dtype
    assert params["blocks"]["self_attn"]["q"]["kernel"].dtype == np.dtype("float32")  # trained: fp32 master
    state_bytes = _nbytes(tr.abstract_state)
    # a quarter of the state per chip (replicated over the context group it would be all of it)
    assert state_bytes / 4 <= r.argument_gib * GIB <= state_bytes / 4 * 1.05 + 64 * 2 ** 20
    assert "S(5)" in compiled.as_text(), "remat=offload_full should place the saved layer inputs in host memory"
