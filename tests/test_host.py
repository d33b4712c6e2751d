"""parallel.host.reuse_host_memory: XLA:CPU's per-run temporaries stop costing page faults.

The fault counts come from fresh Pythons (the setting is process-wide and must come before JAX starts
its backend): the minor page faults of one run of a jitted program whose temporaries (256 MiB,
XLA:CPU allocates them as one block per run) are far above glibc's mmap threshold.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, resource, sys
from stp_jax.parallel.host import reuse_host_memory
mode = sys.argv[1]
result = reuse_host_memory() if mode == "reuse" else "not asked"
import jax, jax.numpy as jnp

@jax.jit
def f(x):  # [2048, 2048] f32 = 16 MiB; eight live intermediates of that size
    ys = [jnp.sin(x * (i + 1)) for i in range(8)]
    return sum(jnp.cos(y) @ ys[(i + 1) % 8] for i, y in enumerate(ys))

x = jnp.ones((2048, 2048), jnp.float32)
exe = f.lower(x).compile()
temp = exe.memory_analysis().temp_size_in_bytes
for _ in range(3):
    exe(x).block_until_ready()
faults = []
for _ in range(3):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    exe(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(json.dumps({"result": result, "temp_pages": temp // 4096, "faults": min(faults)}))
"""


def _run(mode: str, **env) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
    clean.update(JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(REPO), **env)
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=clean, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_reuse_host_memory_keeps_temporaries_mapped():
    before = _run("default")
    # premise: with glibc's own settings the block is mapped afresh on every run
    assert before["temp_pages"] > 16384, before  # > 64 MiB: above any mmap threshold glibc would pick
    assert before["faults"] > before["temp_pages"] // 2, before
    after = _run("reuse")
    assert after["result"] == "set", after
    assert after["faults"] < after["temp_pages"] // 20, (before, after)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_reuse_host_memory_says_when_it_cannot(monkeypatch):
    import jax.numpy as jnp

    from stp_jax.parallel import host

    for name in [k for k in os.environ if k.startswith("MALLOC_")] + ["LD_PRELOAD", "GLIBC_TUNABLES"]:
        monkeypatch.delenv(name, raising=False)
    host.reuse_host_memory.cache_clear()  # this process's answer is not cached from another test
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the user's own setting wins, before anything else is asked
    assert host.reuse_host_memory() == "left to $MALLOC_ARENA_MAX"
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    host.reuse_host_memory.cache_clear()
    jnp.zeros(1).block_until_ready()  # the backend's threads have their arenas: nothing is changed
    assert host.reuse_host_memory().startswith("too late")
