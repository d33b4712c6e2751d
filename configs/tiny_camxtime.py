"""The embedded default: a small SpaceTimePilot DiT on procedural Cam×Time scenes.

No downloads, no weights: the PatchAutoencoder (4x space, 4x time, exactly invertible)
stands in for the Wan VAE and the text condition is null. 32x32 clips of 17 frames; the
DiT sees 2 x 5 latent frames of 4x4 tokens (192 latent channels = 4 frames x 4 x 4 px x RGB).
Trains on 2 CPU cores for 7.5 minutes (``time_limit_minutes``; about 1100 steps).

Variants: ``smoke`` (a few steps of a smaller model, for tests), ``long`` (no time limit).
"""
from stp_jax.config import apply_variants, base


def _smoke(c):
    c.total_steps, c.time_limit_minutes, c.log_every, c.checkpoint_every = 4, 0.0, 1, 2
    c.model.update(num_layers=2, dim=64, ffn_dim=128)
    c.data.update(source="procedural", global_batch=4, worker_count=0)
    c.eval.num_scenes, c.sample.steps = 1, 2


def _long(c):
    c.total_steps, c.time_limit_minutes, c.eval_every = 20_000, 0.0, 2000


def get_config(variants=None):
    c = base("tiny_camxtime", "tiny", mode="spacetimepilot", dim=128, ffn_dim=512, num_heads=4, num_layers=4,
             in_channels=192, out_channels=192, text_dim=32, freq_dim=64, time_groups=16, patch_size=(1, 2, 2),
             attention="xla")
    # 500 scenes rendered once into ArrayRecord (about 2 minutes), then read at hundreds of clips/s
    c.data.update(source="tfds", tfds_name="camxtime_procedural", num_scenes=500, worker_count=1)
    c.flow.prediction = "x0"  # 768-value tokens do not fit through a 128-wide stream as noise (flow.py)
    c.total_steps = 3000
    c.time_limit_minutes = 7.5  # of training; the demo's whole run stays under 15 minutes
    c.optim.update(lr=1e-3, warmup=100, b2=0.99)
    c.flow.shift = 3.0
    c.log_every, c.checkpoint_every, c.keep_checkpoints = 50, 500, 2
    c.eval_every = 0
    c.sample.update(steps=20, shift=3.0, cfg_scale=1.0)
    return apply_variants(c, variants, {"smoke": _smoke, "long": _long})
