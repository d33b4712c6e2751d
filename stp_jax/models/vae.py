"""Video autoencoders with Wan's frame mapping: T = 1 + 4k raw frames <-> 1 + k latent frames.

PatchAutoencoder: no weights, exactly invertible. Frame 0 is folded alone (and repeated 4x
so every latent frame has the same width); frames 1..T-1 are folded in groups of 4; each
frame's s x s pixel blocks become channels. It is the embedded default's "VAE": the DiT
learns on an exact, cheap latent space with no download.

Letters: B batch, T raw frames, F latent frames, H/W pixels, C channels, s spatial factor.
Videos are channels-last floats in [-1, 1]: [B, T, H, W, 3].
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from stp_jax.controls.timing import TIME_FACTOR, latent_frames


@dataclasses.dataclass(frozen=True)
class PatchAutoencoder:
    """Weightless invertible causal space-time fold with WanVAE's frame mapping."""
    spatial: int = 4
    channels: int = 3

    @property
    def latent_channels(self) -> int:
        return TIME_FACTOR * self.spatial * self.spatial * self.channels

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        s = self.spatial
        if height % s or width % s:
            raise ValueError(f"frame size {height}x{width} is not divisible by the spatial factor {s}")
        return latent_frames(num_frames), height // s, width // s, self.latent_channels

    def encode(self, video):  # [B, T, H, W, c] -> [B, F, H/s, W/s, 4*s*s*c]
        b, t, h, w, c = video.shape
        f, hs, ws, _ = self.latent_shape(t, h, w)
        s = self.spatial
        groups = jnp.concatenate([jnp.repeat(video[:, :1], TIME_FACTOR, axis=1), video[:, 1:]], axis=1)
        g = groups.reshape(b, f, TIME_FACTOR, hs, s, ws, s, c)  # [B, F, 4, H/s, s, W/s, s, c]
        g = g.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # [B, F, H/s, W/s, 4, s, s, c]
        return g.reshape(b, f, hs, ws, self.latent_channels)

    def decode(self, latents):  # [B, F, H/s, W/s, C] -> [B, T, H, W, c]
        b, f, hs, ws, ch = latents.shape
        if ch != self.latent_channels:
            raise ValueError(f"latents have {ch} channels; this PatchAutoencoder makes {self.latent_channels}")
        s, c = self.spatial, self.channels
        g = latents.reshape(b, f, hs, ws, TIME_FACTOR, s, s, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        g = g.reshape(b, f * TIME_FACTOR, hs * s, ws * s, c)
        return g[:, TIME_FACTOR - 1:]  # drop the 3 extra copies of frame 0
