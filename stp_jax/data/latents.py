"""Records of precomputed latents (written by stp-precompute, read by the pipeline's
``latents`` source): one msgpack record per training pair.

  tgt_latents, src_latents  float16 [F', h, w, C]
  tgt_cam, src_cam          float32 [F', 12]
  tgt_time, src_time        int32 [T]
  seed                      int64
"""
from __future__ import annotations

import numpy as np

LATENT_KEYS = ("tgt_latents", "src_latents")
PAIR_KEYS = ("tgt_cam", "src_cam", "tgt_time", "src_time", "seed")  # carried over from the pixel pair


def serialize(record: dict[str, np.ndarray]) -> bytes:
    from flax import serialization

    return serialization.msgpack_serialize({k: np.asarray(v) for k, v in record.items()})


def deserialize(data: bytes) -> dict[str, np.ndarray]:
    from flax import serialization

    return serialization.msgpack_restore(data)
