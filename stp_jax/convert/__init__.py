"""PyTorch <-> JAX checkpoint conversion (see core.py for the machinery, dit.py for the DiT table)."""
from stp_jax.convert.core import ConversionError, StateDict, read_state_dict  # noqa: F401
from stp_jax.convert.dit import convert_dit, export_dit  # noqa: F401
from stp_jax.convert.store import load_config, load_pretrained, save_pretrained  # noqa: F401
