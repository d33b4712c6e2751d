"""Test setup: 8 simulated CPU devices (set before JAX starts), fp32 everywhere."""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One JAX compilation cache for the run, shared by the xdist workers and the tests' subprocesses:
# a program that several tests compile (the tiny model's train step under another test's name, the
# same forward in two parity tests) is compiled once. Kept between local runs (LRU, 2 GiB).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache",
                                   "jax-compile"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2 * 2 ** 30))
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (each a minute or more on 2 cores) run first, so that under
    ``-n 2 --dist load`` (tools/test.sh) they are dealt one per worker at the start instead of
    leaving one worker alone with them at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable
