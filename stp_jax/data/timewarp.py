"""Time-warp augmentation in pure JAX (jit- and vmap-able under a PRNG key).

A warp maps T output frames to indices into a source clip of N frames. Each mode defines
a *virtual* index sequence seq(u) of length Lw in closed form; as in the released
SpaceTimePilot data code (docs/REFERENCE.md §6.5) the sequence is doubled until it is at least
T long (length D = Lw * 2^k) and T consecutive entries are kept from a start uniform in
[0, D - T]: the output is seq((start + j) mod Lw) for j < T. Boomerang is 0..N-1 then N-1..0
(length 2N, the last frame shown twice: 162 for N = 81). Everything has static shapes, so it
traces once.

Modes and the published default probabilities (docs/REFERENCE.md §1):
  forward 0.45 · backward 0.10 · boomerang 0.10 · zigzag 0.10 · slow_global 0.10 ·
  slow_segment 0.10 · fixed_frame 0.05 · acceleration 0 · freeze 0
(the paper also names acceleration and freezing; they are off by default).
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("forward", "backward", "boomerang", "zigzag", "slow_global", "slow_segment", "fixed_frame",
         "acceleration", "freeze")
DEFAULT_PROBS = {"forward": 0.45, "backward": 0.10, "boomerang": 0.10, "zigzag": 0.10, "slow_global": 0.10,
                 "slow_segment": 0.10, "fixed_frame": 0.05, "acceleration": 0.0, "freeze": 0.0}
SEGMENT_MIN, SEGMENT_MAX = 20, 25  # slow_segment length range (frames)


def probabilities(probs: Mapping[str, float] | None = None) -> np.ndarray:
    """Normalised probability vector over MODES; unknown names or negatives raise."""
    p = dict(DEFAULT_PROBS if probs is None else probs)
    unknown = set(p) - set(MODES)
    if unknown:
        raise ValueError(f"time-warp probabilities name unknown modes {sorted(unknown)}; known: {MODES}")
    v = np.array([float(p.get(m, 0.0)) for m in MODES])
    if (v < 0).any() or v.sum() <= 0:
        raise ValueError(f"time-warp probabilities must be >= 0 and not all zero, got {p}")
    return v / v.sum()


def _seq(mode_id, u, n, params):
    """Virtual index at position u (int array) and the sequence length, for each mode."""
    pivot, seg_start, seg_len, frame, accel, hold = params

    def forward():
        return u, n

    def backward():
        return n - 1 - u, n

    def boomerang():  # 0..n-1, n-1..0 (frame n-1 twice, as published)
        return jnp.where(u < n, u, 2 * n - 1 - u), 2 * n

    def zigzag():  # 0..pivot, pivot-1..0
        return jnp.where(u <= pivot, u, 2 * pivot - u), 2 * pivot + 1

    def slow_global():  # every frame twice
        return u // 2, 2 * n

    def slow_segment():  # frames in [s, s+len) shown twice
        s, ln = seg_start, seg_len
        v = jnp.where(u < s, u, jnp.where(u < s + 2 * ln, s + (u - s) // 2, u - ln))
        return v, n + ln

    def fixed_frame():
        return jnp.full_like(u, frame), n

    def acceleration():  # skip frames: every accel-th frame
        return u * accel, (n + accel - 1) // accel

    def freeze():  # forward, holding one frame for `hold` frames
        v = jnp.where(u < frame, u, jnp.where(u < frame + hold, frame, u - hold))
        return v, n + hold

    branches = [forward, backward, boomerang, zigzag, slow_global, slow_segment, fixed_frame, acceleration, freeze]
    return jax.lax.switch(mode_id, branches)


def _params(key, n):
    """The random parameters of every mode (drawn together so a mode's draw does not depend on
    which mode was chosen): pivot, seg_start, seg_len, frame, accel, hold."""
    k = jax.random.split(key, 6)
    pivot = jax.random.randint(k[0], (), n // 2 + 1, jnp.maximum(n, n // 2 + 2))  # U[N/2+1, N-1]
    pivot = jnp.minimum(pivot, n - 1)
    seg_len = jnp.minimum(jax.random.randint(k[1], (), SEGMENT_MIN, SEGMENT_MAX + 1), n)
    seg_start = jax.random.randint(k[2], (), 0, jnp.maximum(n - seg_len, 0) + 1)
    frame = jax.random.randint(k[3], (), 0, n)
    accel = jax.random.randint(k[4], (), 2, 4)  # 2x or 3x
    hold = jax.random.randint(k[5], (), 1, jnp.maximum(n // 2, 1) + 1)
    return pivot, seg_start, seg_len, frame, accel, hold


def warp(key: jax.Array, mode_id, num_frames: int, source_frames) -> jax.Array:
    """[T] int32 source indices for mode ``MODES[mode_id]`` (mode_id may be traced).

    ``num_frames`` (T) is static; ``source_frames`` (N >= 1) may be traced.
    """
    n = jnp.asarray(source_frames, jnp.int32)
    k_params, k_start = jax.random.split(key)
    params = _params(k_params, n)
    u = jnp.arange(num_frames, dtype=jnp.int32)
    _, length = _seq(mode_id, u, n, params)
    length = jnp.maximum(length, 1)
    doubled = length
    for _ in range(max(1, int(num_frames).bit_length())):  # double until >= T (static trip count)
        doubled = jnp.where(doubled < num_frames, 2 * doubled, doubled)
    start = jax.random.randint(k_start, (), 0, doubled - num_frames + 1)
    pos = (start + u) % length
    idx, _ = _seq(mode_id, pos, n, params)
    return jnp.clip(idx, 0, n - 1).astype(jnp.int32)


def virtual_sequence(name: str, source_frames: int, key: jax.Array | None = None) -> np.ndarray:
    """The whole virtual index sequence of mode ``name`` before the crop (host-side, for
    inspection and tests), its random parameters drawn from ``key`` as ``warp`` draws them."""
    key = jax.random.PRNGKey(0) if key is None else key
    n = jnp.asarray(source_frames, jnp.int32)
    params = _params(jax.random.split(key)[0], n)
    _, length = _seq(mode_id(name), jnp.zeros((1,), jnp.int32), n, params)
    idx, _ = _seq(mode_id(name), jnp.arange(int(length), dtype=jnp.int32), n, params)
    return np.asarray(idx)


def random_warp(key: jax.Array, num_frames: int, source_frames, probs=None) -> tuple[jax.Array, jax.Array]:
    """Sample a mode with ``probs`` (default: published) and warp. Returns (indices [T], mode_id)."""
    p = jnp.asarray(probabilities(probs))
    k_mode, k_warp = jax.random.split(key)
    mode_id = jax.random.choice(k_mode, len(MODES), p=p)
    return warp(k_warp, mode_id, num_frames, source_frames), mode_id


def mode_id(name: str) -> int:
    if name not in MODES:
        raise ValueError(f"time-warp mode {name!r} is unknown; known: {MODES}")
    return MODES.index(name)
