"""SpaceTimePilot 1.3B: fine-tune from converted Wan2.1-T2V-1.3B (or ReCamMaster) weights.

  stp-convert Wan2.1-T2V-1.3B/ --out ckpt/wan13b
  stp-convert Wan2.1_VAE.pth --out ckpt/wan_vae
  stp-train --config stp_1_3b --workdir runs/stp13b --set init_from=ckpt/wan13b \
      --set autoencoder.path=ckpt/wan_vae --set text.embedding=ckpt/caption.npy --set data.tfds_dir=~/tensorflow_datasets

Trainable: the camera/time modules and self-attention (the ReCamMaster recipe + time).
Variants: ``720p`` (720x1280 clips, context parallelism over 4 chips), ``all`` (every weight).
"""
from stp_jax.configs import unknown_variant
from stp_jax.configs._base import base, published_video


def get_config(variant=None):
    c = published_video(base("stp_1_3b", "1.3b", mode="spacetimepilot"), vae="")
    c.optim.update(lr=1e-4, warmup=500, trainable="spacetimepilot")
    c.total_steps = 20_000
    c.ema_decay = 0.999
    c.model.remat = "full"  # 65k tokens per clip: keep only layer inputs (see stp-aot for the others)
    c.data.global_batch = 8  # one clip per chip on an 8-chip slice; set it to your chip count
    c.mesh = dict(data=1, fsdp=-1, context=1, tensor=1)
    if variant == "720p":
        c.data.update(height=720, width=1280)
        c.mesh = dict(data=1, fsdp=-1, context=4, tensor=1)
        c.model.context_parallel = "ulysses"
    elif variant == "all":
        c.optim.trainable = "all"
    elif variant is not None:
        raise unknown_variant(c.name, variant, ("720p", "all"))
    return c
