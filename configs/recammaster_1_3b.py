"""ReCamMaster 1.3B (camera control only): the published recipe over converted Wan2.1-1.3B
weights: cam_encoder, projector and self-attention trained, MultiCamVideo clips.
"""
from stp_jax.config import apply_variants, base, published_video


def get_config(variants=None):
    c = published_video(base("recammaster_1_3b", "1.3b", mode="recammaster"))
    c.optim.update(lr=1e-4, warmup=100, trainable="recammaster")
    c.total_steps = 20_000
    return apply_variants(c, variants, {})
