"""Test setup: 8 simulated CPU devices (set before JAX starts), fp32 everywhere."""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (each a minute or more on 2 cores) run first, so that under
    ``-n 2 --dist load`` (tools/test.sh) they are dealt one per worker at the start instead of
    leaving one worker alone with them at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable
