"""SpaceTimePilot 14B: fine-tune from converted Wan2.1-T2V-14B weights on a pod.

Parameters and optimizer state fully sharded (fsdp), heads over ``tensor`` when the
per-chip memory asks for it (check with stp-aot first), full remat.
Variants: ``720p``.
"""
from stp_jax.configs import unknown_variant
from stp_jax.configs._base import base, published_video


def get_config(variant=None):
    c = published_video(base("stp_14b", "14b", mode="spacetimepilot"), vae="")
    c.model.remat = "full"
    c.optim.update(lr=5e-5, warmup=500, trainable="spacetimepilot")
    c.total_steps = 20_000
    c.mesh = dict(data=1, fsdp=-1, context=1, tensor=1)
    if variant == "720p":
        c.data.update(height=720, width=1280)
        c.mesh = dict(data=1, fsdp=-1, context=4, tensor=1)
        c.model.context_parallel = "ulysses"
    elif variant is not None:
        raise unknown_variant(c.name, variant, ("720p",))
    return c
