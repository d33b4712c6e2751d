"""SpaceTimePilot 14B: fine-tune from converted Wan2.1-T2V-14B weights on a pod.

Parameters and optimizer state fully sharded (over fsdp and context), each layer's input kept
in host memory between the forward and the backward (remat=offload_full); check a slice with
stp-aot. Variants: ``720p`` (720x1280 clips, tokens sharded over 4 chips: ulysses context
parallelism). One 720p clip trains on a v5p-8 (84 GiB of 95 per chip); 480p on a v6e-16 with
``--mesh fsdp=4,context=4`` (26 of 32 GiB) (docs/SCALING.md).
"""
from stp_jax.config import apply_variants, base, published_video


def _720p(c):
    c.data.update(height=720, width=1280)
    c.mesh.update(context=4)


def get_config(variants=None):
    c = published_video(base("stp_14b", "14b", mode="spacetimepilot"))
    c.model.update(remat="offload_full", context_parallel="ulysses")  # ulysses only acts when mesh.context > 1
    c.optim.update(lr=5e-5, warmup=500, trainable="spacetimepilot")
    c.total_steps = 20_000
    return apply_variants(c, variants, {"res": {"720p": _720p}})
