"""SpaceTimePilot 1.3B: fine-tune from converted Wan2.1-T2V-1.3B (or ReCamMaster) weights.

  stp-convert Wan2.1-T2V-1.3B/ --out ckpt/wan13b
  stp-convert Wan2.1_VAE.pth --out ckpt/wan_vae
  stp-train --config stp_1_3b --workdir runs/stp13b --set init_from=ckpt/wan13b \
      --set autoencoder.path=ckpt/wan_vae --set text.embedding=ckpt/caption.npy --set data.tfds_dir=~/tensorflow_datasets

Trainable: the camera/time modules and self-attention (the ReCamMaster recipe + time).
Variants: ``720p`` (720x1280 clips, context parallelism over 4 chips), ``all`` (every weight);
combinable: ``stp_1_3b:720p,all`` (or ``res=720p,train=all``).
"""
from stp_jax.config import apply_variants, base, published_video


def _720p(c):
    c.data.update(height=720, width=1280)
    c.mesh.update(context=4)
    c.model.context_parallel = "ulysses"


def _all(c):
    c.optim.trainable = "all"


def get_config(variants=None):
    c = published_video(base("stp_1_3b", "1.3b", mode="spacetimepilot"))
    c.optim.update(lr=1e-4, warmup=500, trainable="spacetimepilot")
    c.total_steps = 20_000
    c.ema_decay = 0.999
    c.model.remat = "full"  # 65k tokens per clip: keep only layer inputs (see stp-aot for the others)
    c.data.global_batch = 8  # one clip per chip on an 8-chip slice; set it to your chip count
    return apply_variants(c, variants, {"res": {"720p": _720p}, "train": {"all": _all}})
