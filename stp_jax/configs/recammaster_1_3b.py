"""ReCamMaster 1.3B (camera control only): the published recipe over converted Wan2.1-1.3B
weights: cam_encoder, projector and self-attention trained, lr 1e-4, MultiCamVideo clips.
"""
from stp_jax.configs import unknown_variant
from stp_jax.configs._base import base, published_video


def get_config(variant=None):
    c = published_video(base("recammaster_1_3b", "1.3b", mode="recammaster"), vae="")
    c.optim.update(lr=1e-4, warmup=100, trainable="recammaster")
    c.total_steps = 20_000
    if variant is not None:
        raise unknown_variant(c.name, variant, ())
    return c
