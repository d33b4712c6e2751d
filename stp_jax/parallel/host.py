"""Host memory: keep XLA:CPU's per-run temporaries mapped between runs instead of faulting them in anew.

XLA:CPU allocates each run's temporaries as one block (the train step of tools/bench/train.py's CPU
config: 851 MiB; the embedded demo's: 261 MiB) with ``malloc``. glibc serves a block that big by
``mmap`` (above its mmap threshold, at most 32 MiB; from a thread's own arena, always) and ``free``
unmaps it, so every run starts on fresh pages: 218k page faults and 0.4 s of kernel time per step
there (the kernel zeroing each page) where PyTorch, whose tensors are reused from the heap, takes
none. :func:`reuse_host_memory` tells glibc (``mallopt``) never to ``mmap`` and to keep up to 2 GiB
of freed memory, and has JAX run CPU programs on the calling thread (``jax_cpu_enable_async_dispatch``
off: the block then comes from the main heap, not from a worker thread's arena, which can only
``mmap`` it), so the block is faulted in once and reused by every later run. Setting one arena for
all threads (``M_ARENA_MAX=1``) does the same without giving up async dispatch, but its lock slowed
compiles by a third (LLVM allocates from many threads).

The costs: the process keeps its peak host memory (and up to 2 GiB free) instead of returning it
between runs, as a training process does anyway; single-device CPU programs are dispatched
synchronously (a step of hundreds of milliseconds hides nothing behind its dispatch; programs over
several CPU devices stay asynchronous, and keep their faults).

It must run before JAX starts its CPU backend (which reads the dispatch setting once): the console
scripts (cli.py) and the benchmarks call it first; a script of yours can too. It does nothing where
the C library is not glibc, after the backend has started, or where the environment already chooses
the allocator or its settings (``LD_PRELOAD``, ``MALLOC_*``, ``GLIBC_TUNABLES``): that is the way to
opt out.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
KEEP_FREE = 2 ** 31 - 1  # M_TRIM_THRESHOLD is an int: the most freed memory glibc can be told to keep


def _user_chose() -> str:
    """The environment variable by which the user already chose the allocator or its settings, if any."""
    for name, value in os.environ.items():
        if name == "LD_PRELOAD" and value.strip():
            return name
        if name.startswith("MALLOC_") or (name == "GLIBC_TUNABLES" and "malloc" in value):
            return name
    return ""


@functools.cache  # once per process: a second call returns the first one's answer
def reuse_host_memory() -> str:
    """Keep XLA:CPU's per-run temporaries mapped between runs (module docstring). Returns what
    happened, one of ``"set"``, ``"not glibc"``, ``"too late: ..."``, ``"left to $NAME"`` or ``"mallopt refused"``."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        result = "not glibc"
    elif chose := _user_chose():
        result = f"left to ${chose}"
    elif _backend_started():
        result = "too late: JAX's backend has started"
    else:
        libc = ctypes.CDLL(None)  # the process's own C library
        ok = all(libc.mallopt(p, v) == 1 for p, v in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_FREE)))
        if ok:  # the runs (and their allocations) on the calling thread, whose arena is the main one
            import jax

            jax.config.update("jax_cpu_enable_async_dispatch", False)
        result = "set" if ok else "mallopt refused"  # mallopt returns 1 on success
    return result


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # the only way to ask without starting it

    return xla_bridge.backends_are_initialized()
