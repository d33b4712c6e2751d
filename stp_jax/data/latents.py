"""Records of precomputed latents (written by stp-precompute, read by the pipeline's
``latents`` source): one msgpack record per training pair.

  tgt_latents, src_latents  float16 [F', h, w, C]
  tgt_cam, src_cam          float32 [F', 12]
  tgt_time, src_time        int32 [T]
  seed                      int64
  src_depth                 float32 [T, H, W]  (configs with data.composite_aux: the renderer's depth of
  src_moving                bool [T, H, W]      each source pixel, capped at AUX_DEPTH_CAP, and its moving mask)
"""
from __future__ import annotations

import numpy as np

LATENT_KEYS = ("tgt_latents", "src_latents")
PAIR_KEYS = ("tgt_cam", "src_cam", "tgt_time", "src_time", "seed")  # carried over from the pixel pair
AUX_KEYS = ("src_depth", "src_moving")  # carried over too when the pipeline makes them (data.composite_aux)
AUX_DEPTH_CAP = 1e4  # the sky's depth (1e9 in the renderer) stored as this; the composite treats both as sky


def serialize(record: dict[str, np.ndarray]) -> bytes:
    from flax import serialization

    return serialization.msgpack_serialize({k: np.asarray(v) for k, v in record.items()})


def deserialize(data: bytes) -> dict[str, np.ndarray]:
    from flax import serialization

    return serialization.msgpack_restore(data)
