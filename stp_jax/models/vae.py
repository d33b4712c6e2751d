"""Video autoencoders with Wan's frame mapping: T = 1 + 4k raw frames <-> 1 + k latent frames.

PatchAutoencoder: no weights, exactly invertible. Frame 0 is folded alone (and repeated 4x
so every latent frame has the same width); frames 1..T-1 are folded in groups of 4; each
frame's s x s pixel blocks become channels. It is the embedded default's "VAE": the DiT
learns on an exact, cheap latent space with no download. ``time_factor`` (raw frames per
latent frame) 4 is Wan's mapping; 1 keeps one latent frame per video frame (then retiming is
moving whole tokens instead of permuting frames inside them; stp_jax.controls.timing.model_times
feeds the DiT its times).

Letters: B batch, T raw frames, F latent frames, H/W pixels, C channels, s spatial factor.
Videos are channels-last floats in [-1, 1]: [B, T, H, W, 3].
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from einops import rearrange

from stp_jax.controls.timing import FRAMES_PER_LATENT, TIME_FACTOR, check_frames


@dataclasses.dataclass(frozen=True)
class PatchAutoencoder:
    """Weightless invertible causal space-time fold with WanVAE's frame mapping."""
    spatial: int = 4
    channels: int = 3
    time_factor: int = TIME_FACTOR  # raw frames per latent frame (after the first)

    def __post_init__(self):
        if self.time_factor not in FRAMES_PER_LATENT:
            raise ValueError(f"PatchAutoencoder time_factor must be one of {FRAMES_PER_LATENT}, got {self.time_factor}")

    @property
    def latent_channels(self) -> int:
        return self.time_factor * self.spatial * self.spatial * self.channels

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        s = self.spatial
        if height % s or width % s:
            raise ValueError(f"frame size {height}x{width} is not divisible by the spatial factor {s}")
        return 1 + (check_frames(num_frames) - 1) // self.time_factor, height // s, width // s, self.latent_channels

    def encode(self, video):  # [B, T, H, W, c] -> [B, F, H/s, W/s, f*s*s*c]
        b, t, h, w, c = video.shape
        self.latent_shape(t, h, w)  # checks T = 1 + 4k and the frame size
        s, k = self.spatial, self.time_factor
        groups = jnp.concatenate([jnp.repeat(video[:, :1], k, axis=1), video[:, 1:]], axis=1)  # [B, F*k, H, W, c]
        return rearrange(groups, "b (f k) (h s1) (w s2) c -> b f h w (k s1 s2 c)", k=k, s1=s, s2=s)

    def decode(self, latents):  # [B, F, H/s, W/s, C] -> [B, T, H, W, c]
        b, f, hs, ws, ch = latents.shape
        if ch != self.latent_channels:
            raise ValueError(f"latents have {ch} channels; this PatchAutoencoder makes {self.latent_channels}")
        s, c, k = self.spatial, self.channels, self.time_factor
        g = rearrange(latents, "b f h w (k s1 s2 c) -> b (f k) (h s1) (w s2) c", k=k, s1=s, s2=s, c=c)
        return g[:, k - 1:]  # drop the extra copies of frame 0
