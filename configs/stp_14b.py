"""SpaceTimePilot 14B: fine-tune from converted Wan2.1-T2V-14B weights on a pod.

Parameters and optimizer state fully sharded (fsdp), full remat (check a slice with stp-aot).
Variants: ``720p`` (720x1280 clips, context parallelism over 4 chips).
"""
from stp_jax.config import apply_variants, base, published_video


def _720p(c):
    c.data.update(height=720, width=1280)
    c.mesh.update(context=4)
    c.model.context_parallel = "ulysses"


def get_config(variants=None):
    c = published_video(base("stp_14b", "14b", mode="spacetimepilot"))
    c.model.remat = "full"
    c.optim.update(lr=5e-5, warmup=500, trainable="spacetimepilot")
    c.total_steps = 20_000
    return apply_variants(c, variants, {"res": {"720p": _720p}})
