"""Grain input pipeline: (source clip, target clip, cameras, times) training pairs.

Sources, one pair sampler:
  procedural  scene seeds; every (camera, time) cell is rendered on the fly by the JAX
              Cam×Time renderer (no files, no downloads).
  tfds        ``camxtime_procedural`` (pre-rendered C x T grids; cells are looked up) or
              ``multicam_video`` (V synchronised views of a scene: an ordered pair of
              views, the target warped in time; its poses are taken at the warped times and
              expressed relative to the source's first camera).

Pair sampling (deterministic per record, from Grain's per-record RNG):
  source  the grid diagonal: camera i at time i (cameras spread evenly when C != T); with
          probability ``fixed_camera_pairs`` source and target are both filmed from the first
          camera instead (only time differs: no copy-by-camera shortcut, a clean time signal);
  target  a camera path (``camera_paths``: static, the source's sweep, a faster sweep that
          then holds, half a sweep, the sweep backwards, one held camera), times from a random
          time warp (stp_jax.data.timewarp, published probabilities by default).
  curriculum  ``fixed_camera_steps``: fixed-camera pairs only before that training step, then
          the mix above (``at_step``; the loop switches loaders with ``continue_loader``, which
          keeps the record order, so a resumed run sees the same pairs).
Target cameras are conditioned relative to the source's first camera (the ReCamMaster
training rule; for paths that start there it is also "relative to its own first frame", the
published inference rule).

Each example (keys as the model's inputs, stp_jax.models.dit.COND_KEYS): src_frames /
tgt_frames uint8 [T, H, W, 3]; src_cam / tgt_cam float32 [F', 12]; src_time / tgt_time
int32 [T]; seed int64.
Batches are numpy dicts per process; ``to_global`` assembles them into sharded jax.Arrays.
The loader's iterator state is a small JSON-able dict (``get_state``/``set_state``),
saved with the model checkpoint.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import grain
import jax
import numpy as np

from stp_jax.controls import camera as cam_lib
from stp_jax.controls.timing import FRAMES_PER_LATENT, check_frames
from stp_jax.data import camxtime as cx
from stp_jax.data import latents, timewarp

TEST_SEED_OFFSET = 1_000_000_000  # held-out scenes use seeds from here on
TARGET_CAMERA_PATHS = ("static", "sweep", "fast_sweep", "half_sweep", "reverse_sweep", "hold")
DEFAULT_CAMERA_PATHS = (("static", 0.25), ("sweep", 0.25), ("fast_sweep", 0.25), ("half_sweep", 0.25))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "procedural"  # procedural | tfds
    split: str = "train"  # train | test (held-out scene seeds)
    num_frames: int = 17  # T, 1 + 4k
    num_cameras: int = 17  # C cameras along each scene's path
    height: int = 32
    width: int = 32
    num_scenes: int = 100_000  # procedural: scene seeds per split
    global_batch: int = 8
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None = repeat forever
    worker_count: int = 0
    warp_probs: tuple[tuple[str, float], ...] | None = None  # None = published probabilities
    # procedural pairs: target camera paths and their probabilities (None = DEFAULT_CAMERA_PATHS),
    # and the probability of a fixed-camera pair (source and target both filmed from the path's first
    # camera: only time differs, so time is all there is to learn from it)
    camera_paths: tuple[tuple[str, float], ...] | None = None
    fixed_camera_pairs: float = 0.0
    # a curriculum: the first ``fixed_camera_steps`` training steps draw fixed-camera pairs only (time
    # control is learned first, docs/LEARNING.md), then ``fixed_camera_pairs`` holds (``at_step``)
    fixed_camera_steps: int = 0
    # also the renderer's depth and moving mask (objects and their shadows) of every source frame:
    # src_depth float32 / src_moving bool [T, H, W] (procedural scenes only; model.copy_composite's losses)
    composite_aux: bool = False
    tfds_name: str = "camxtime_procedural"
    tfds_dir: str = ""  # "" = TFDS's default (or, for camxtime_procedural, DATA_CACHE)
    latents_dir: str = ""  # source "latents": the output of stp-precompute

    # raw frames per latent frame of the autoencoder (the cameras' rate): from the config's autoencoder
    frames_per_latent: int = 4
    # the source poses' rule (controls.camera.source_rule): from the config's model
    source_camera_rule: str = "published"

    RUNTIME = ("split", "seed", "frames_per_latent", "source_camera_rule")  # set by the caller, not by a config's data section

    def __post_init__(self):
        check_frames(self.num_frames)
        if self.source_camera_rule not in cam_lib.SOURCE_RULES:
            raise ValueError(f"source camera rule {self.source_camera_rule!r} is not one of {cam_lib.SOURCE_RULES}")
        if self.source not in ("procedural", "tfds", "latents"):
            raise ValueError(f"data source {self.source!r} is unknown; expected 'procedural', 'tfds' or 'latents'")
        if self.source == "latents" and not self.latents_dir:
            raise ValueError("data source 'latents' needs latents_dir (the output folder of stp-precompute)")
        if self.split not in ("train", "test"):
            raise ValueError(f"split {self.split!r} is unknown; expected 'train' or 'test'")
        for k in ("num_frames", "num_cameras", "height", "width", "num_scenes", "global_batch"):
            if not 1 <= getattr(self, k) < 2**31:
                raise ValueError(f"data.{k} must be between 1 and 2**31 - 1, got {getattr(self, k)}")
        if self.worker_count < 0:
            raise ValueError(f"data.worker_count must be >= 0, got {self.worker_count}")
        if self.global_batch % jax.process_count():
            raise ValueError(f"global_batch {self.global_batch} is not divisible by {jax.process_count()} processes")
        if self.warp_probs is not None:
            object.__setattr__(self, "warp_probs", tuple((str(k), float(v)) for k, v in self.warp_probs))
            timewarp.probabilities(dict(self.warp_probs))  # validates names and values
        if self.camera_paths is not None:
            object.__setattr__(self, "camera_paths", tuple((str(k), float(v)) for k, v in self.camera_paths))
            camera_path_probabilities(self.camera_paths)
        if self.frames_per_latent not in FRAMES_PER_LATENT:
            raise ValueError(f"frames_per_latent must be one of {FRAMES_PER_LATENT}, got {self.frames_per_latent}")
        if not 0 <= self.fixed_camera_pairs <= 1:
            raise ValueError(f"data.fixed_camera_pairs must be a probability in [0, 1], got {self.fixed_camera_pairs}")
        if not 0 <= self.fixed_camera_steps < 2**31:
            raise ValueError(f"data.fixed_camera_steps must be a number of steps >= 0, got {self.fixed_camera_steps}")

    @classmethod
    def section_defaults(cls) -> dict:
        """The fields a config's ``data`` section holds, with their defaults."""
        return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in cls.RUNTIME}

    @classmethod
    def from_config(cls, config, split: str = "train", **overrides) -> DataConfig:
        """From a config (its ``data`` section and ``seed``)."""
        fpl = int(config.autoencoder.get("time_factor", 4))
        rule = cam_lib.source_rule(int(config.model.get("cam_heads", 0)))
        return cls(split=split, seed=int(config.seed), frames_per_latent=fpl, source_camera_rule=rule,
                   **{**dict(config.data), **overrides})


DATA_CACHE = "~/.cache/stp_jax/tfds"  # where the embedded default's procedural dataset is built once


def prepare(d: DataConfig, log=print) -> DataConfig:
    """``tfds`` + bare ``camxtime_procedural``: render ``num_scenes`` grids of this size into an
    ArrayRecord dataset once (process 0; reused afterwards) and point the loader at it."""
    if d.source != "tfds" or d.tfds_name != "camxtime_procedural":
        return d
    import os

    from stp_jax.data.tfds_builders.camxtime_procedural import build, config_name

    data_dir = os.path.expanduser(d.tfds_dir or DATA_CACHE)
    test = 8  # the held-out evaluation renders its own scenes; this split is for TFDS users
    if jax.process_index() == 0:
        log(f"procedural Cam×Time dataset: {d.num_scenes} scenes in {data_dir} (built once)")
        build(data_dir, d.num_frames, d.num_cameras, d.height, d.width, train=d.num_scenes, test=test)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("camxtime_procedural built")
    name = config_name(d.num_frames, d.num_cameras, d.height, d.width, d.num_scenes, test)
    return dataclasses.replace(d, tfds_dir=data_dir, tfds_name=f"camxtime_procedural/{name}")


# ---------------------------------------------------------------- sources


class ProceduralScenes(grain.sources.RandomAccessDataSource):
    """Record i -> {"seed": scene seed}; train and test seeds never overlap."""

    def __init__(self, num_scenes: int, split: str):
        self._n, self._offset = num_scenes, TEST_SEED_OFFSET if split == "test" else 0

    def __len__(self):
        return self._n

    def __getitem__(self, i):
        return {"seed": np.int64(self._offset + int(i))}

    def __repr__(self):  # Grain checks restored iterator state against this
        return f"ProceduralScenes(num_scenes={self._n}, seed_offset={self._offset})"


class NamedSource(grain.sources.RandomAccessDataSource):
    """Wraps a record source so that an unreadable record raises one clear error."""

    def __init__(self, inner, name: str):
        self._inner, self._name = inner, name

    def __len__(self):
        return len(self._inner)

    def __repr__(self):
        return f"NamedSource({self._name}, {len(self._inner)} records)"

    def __getitem__(self, i):
        try:
            return self._inner[i]
        except Exception as e:  # noqa: BLE001 - re-raised with the dataset and record named
            raise ValueError(f"{self._name}: record {i} is unreadable or corrupt ({type(e).__name__}: {e})") from e


def tfds_source(cfg: DataConfig):
    import tensorflow_datasets as tfds

    from stp_jax.data.tfds_builders import camxtime, camxtime_procedural, multicam_video  # noqa: F401  (registers)

    try:
        src = tfds.data_source(cfg.tfds_name, split=cfg.split, data_dir=cfg.tfds_dir or None)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"TFDS dataset {cfg.tfds_name!r} (split {cfg.split!r}) in {cfg.tfds_dir}: cannot be "
                         f"opened ({type(e).__name__}: {e}); build it first") from e
    return NamedSource(src, f"{cfg.tfds_name}[{cfg.split}]")


# ---------------------------------------------------------------- pair sampling


def camera_path_probabilities(paths) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, normalised probabilities) of target camera paths; unknown names or bad values raise."""
    names = tuple(k for k, _ in paths)
    p = np.array([v for _, v in paths], np.float64)
    unknown = set(names) - set(TARGET_CAMERA_PATHS)
    if unknown or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"data.camera_paths {paths}: expected (name, probability >= 0) pairs over "
                         f"{TARGET_CAMERA_PATHS}, not all zero")
    return names, p / p.sum()


def target_camera_indices(kind: str, num_frames: int, num_cameras: int, rng: np.random.Generator) -> np.ndarray:
    """Camera indices [T] of a target path. All but ``reverse_sweep`` and ``hold`` start at the
    source's first camera; conditions are relative to that camera (the ReCamMaster training rule),
    so paths that start elsewhere are expressible too."""
    src, _ = cx.source_indices(num_frames, num_cameras)
    if kind == "reverse_sweep":  # the source's path backwards
        return src[::-1].copy()
    if kind == "hold":  # one random camera of the path, held
        return np.full(num_frames, rng.integers(num_cameras), np.int64)
    if kind == "static":
        return np.zeros(num_frames, np.int64)
    if kind == "sweep":
        return src
    if kind == "fast_sweep":  # reach the end of the path in a random fraction of the clip, then hold
        frac = rng.uniform(0.3, 0.8)
        return np.minimum(np.round(src / frac), num_cameras - 1).astype(np.int64)
    if kind == "half_sweep":
        return np.round(src / 2).astype(np.int64)
    raise ValueError(f"target camera path {kind!r} is unknown; expected one of {TARGET_CAMERA_PATHS}")


def _warp_fn(num_frames: int, probs):
    @jax.jit
    def f(key):
        return timewarp.random_warp(key, num_frames, num_frames, probs)

    return f


class MakePair(grain.transforms.RandomMap):
    """{"seed"} or {"seed", "grid", "cameras"} -> one training pair (see module doc)."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self._warp = None

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        c = self.cfg
        t, n_cam = c.num_frames, c.num_cameras
        if self._warp is None:
            probs = dict(c.warp_probs) if c.warp_probs is not None else None
            self._warp = _warp_fn(t, probs)
        seed = int(element["seed"])
        src_c, src_t = cx.source_indices(t, n_cam)
        names, probs = camera_path_probabilities(c.camera_paths or DEFAULT_CAMERA_PATHS)
        kind = names[rng.choice(len(names), p=probs)]
        tgt_c = target_camera_indices(kind, t, n_cam, rng)
        if c.fixed_camera_pairs > 0 and rng.uniform() < c.fixed_camera_pairs:  # only time differs
            src_c = tgt_c = np.zeros_like(src_c)
        tgt_t, _ = self._warp(jax.random.PRNGKey(rng.integers(2 ** 31)))
        tgt_t = np.asarray(tgt_t, np.int64)
        if "videos" in element:  # multi-view record: an ordered camera pair, target warped in time
            return self._multiview_pair(element, seed, tgt_t, rng)
        if "grid" in element:
            grid, cams = element["grid"], np.asarray(element["cameras"], np.float64)
            if grid.shape[:2] != (n_cam, t) or grid.shape[2:] != (c.height, c.width, 3):
                raise ValueError(f"record for scene {seed}: grid of shape {grid.shape} does not match the config "
                                 f"(cameras {n_cam}, frames {t}, {c.height}x{c.width})")
            src, tgt = grid[src_c, src_t], grid[tgt_c, tgt_t]
        else:
            scene, cams = cx.make_scene(seed), cx.camera_path(seed, n_cam)
            both = cx.render_path_jit(scene, cams, np.concatenate([src_c, tgt_c]), np.concatenate([src_t, tgt_t]),
                                      t, c.height, c.width)
            both = np.asarray(both)
            src, tgt = both[:t], both[t:]
        aux = {}
        if c.composite_aux:
            z, moving = cx.render_aux_path_jit(cx.make_scene(seed), cams, src_c, src_t, t, c.height, c.width)
            aux = {"src_depth": np.asarray(z), "src_moving": np.asarray(moving)}
        return {
            **aux,
            "src_frames": src, "tgt_frames": tgt,
            "src_cam": cam_lib.source_condition(cams[src_c], t, frames_per_latent=c.frames_per_latent,
                                                rule=c.source_camera_rule),
            "tgt_cam": cam_lib.target_condition(cams[tgt_c], reference=cams[src_c[0]],
                                                frames_per_latent=c.frames_per_latent),
            "src_time": src_t.astype(np.int32), "tgt_time": tgt_t.astype(np.int32),
            "seed": np.int64(seed),
        }

    def _multiview_pair(self, element, seed, tgt_t, rng):
        c = self.cfg
        if c.composite_aux:
            raise ValueError(f"data.composite_aux needs procedural scenes (the renderer's depth and masks); record "
                             f"{element.get('scene', seed)} is multi-view video")
        videos, cams = element["videos"], np.asarray(element["cameras"], np.float64)  # [V, T, ...]
        v, t = videos.shape[:2]
        if t != c.num_frames or videos.shape[2:] != (c.height, c.width, 3):
            raise ValueError(f"record {element.get('scene', seed)}: videos of shape {videos.shape} do not match "
                             f"the config ({c.num_frames} frames, {c.height}x{c.width})")
        a = int(rng.integers(v))
        b = int(rng.integers(v - 1)) if v > 1 else 0
        b = b + (b >= a) if v > 1 else 0  # a different view when there is one
        src_t = np.arange(t)
        return {
            "src_frames": videos[a], "tgt_frames": videos[b][tgt_t],
            "src_cam": cam_lib.source_condition(cams[a], t, frames_per_latent=c.frames_per_latent,
                                                rule=c.source_camera_rule),
            "tgt_cam": cam_lib.target_condition(cams[b][tgt_t], reference=cams[a][0],
                                                frames_per_latent=c.frames_per_latent),
            "src_time": src_t.astype(np.int32), "tgt_time": tgt_t.astype(np.int32),
            "seed": np.int64(seed),
        }


class CheckRecord(grain.transforms.Map):
    """Fail with the record named when a stored record is unreadable or malformed."""

    def map(self, element):
        if not isinstance(element, dict) or "seed" not in element:
            raise ValueError(f"dataset record is malformed: expected a dict with 'seed', 'grid', 'cameras'; "
                             f"got {type(element).__name__}")
        for key in ("grid", "videos"):
            if key in element:
                g = np.asarray(element[key])
                if g.dtype != np.uint8 or g.ndim != 5:
                    raise ValueError(f"record for scene {element['seed']}: {key!r} must be uint8 [N, T, H, W, 3], "
                                     f"got {g.dtype} {g.shape}")
        return element


class DecodeLatents(grain.transforms.Map):
    """A stp-precompute record (msgpack bytes) -> its dict of arrays."""

    def map(self, element):
        return latents.deserialize(element)


def latents_source(cfg: DataConfig):
    import glob
    import json
    from pathlib import Path

    d = Path(cfg.latents_dir)
    meta_f = d / "meta.json"
    if not meta_f.exists():
        raise ValueError(f"latents_dir {d}: no meta.json; expected the output folder of stp-precompute")
    meta = json.loads(meta_f.read_text())
    if (meta["num_frames"], meta["height"], meta["width"]) != (cfg.num_frames, cfg.height, cfg.width):
        raise ValueError(f"latents_dir {d} holds {meta['num_frames']} frames of {meta['height']}x{meta['width']}; "
                         f"the config asks for {cfg.num_frames} of {cfg.height}x{cfg.width}")
    rule = meta.get("source_camera_rule", "published")
    if rule != cfg.source_camera_rule:
        raise ValueError(f"latents_dir {d} holds source cameras by the {rule!r} rule; the config's model needs "
                         f"{cfg.source_camera_rule!r} (model.cam_heads): run stp-precompute with this config")
    if cfg.composite_aux and not meta.get("composite_aux", False):
        raise ValueError(f"latents_dir {d} holds no renderer depth and masks, and the config asks for them "
                         "(data.composite_aux, for flow.composite_loss): run stp-precompute with this config")
    files = sorted(glob.glob(str(d / "*.array_record")))
    return NamedSource(grain.sources.ArrayRecordDataSource(files), f"latents[{d}]")


# ---------------------------------------------------------------- loader


class GlobalOrderSampler:
    """Global batches that do not depend on the number of processes.

    One unsharded, shuffled IndexSampler defines the global record order (and each record's
    RNG); process p of P reads rows [p*B/P, (p+1)*B/P) of every global batch of B. So a run
    on 1 host and on 8 hosts sees the same batches, and resuming on a different host count
    keeps the data order. Grain asks for local element i of process p as index i*P + p.
    """

    def __init__(self, inner: grain.samplers.IndexSampler, global_batch: int, process_count: int):
        self._inner, self._gb, self._pc = inner, global_batch, process_count
        self.shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)  # for the DataLoader

    def __len__(self):
        return len(self._inner) // self._gb * self._gb

    def __repr__(self):
        return f"GlobalOrderSampler({self._inner!r}, global_batch={self._gb}, processes={self._pc})"

    def __getitem__(self, index: int):
        i, p = divmod(index, self._pc)
        local = self._gb // self._pc
        g = (i // local) * self._gb + p * local + i % local
        if g >= len(self):
            raise IndexError(f"index {index} is past the last whole global batch")
        m = self._inner[g]
        return grain.RecordMetadata(index=index, record_key=m.record_key, rng=m.rng)


def make_loader(cfg: DataConfig) -> grain.DataLoader:
    """A Grain DataLoader yielding this process's share of each global batch."""
    if cfg.worker_count > 0:  # Grain workers read absl flags; outside an absl app nobody parsed them
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    if cfg.source == "procedural":
        source = ProceduralScenes(cfg.num_scenes, cfg.split)
    elif cfg.source == "latents":
        source = latents_source(cfg)
    else:
        source = tfds_source(cfg)
    per_process = cfg.global_batch // jax.process_count()
    inner = grain.samplers.IndexSampler(num_records=len(source), shuffle=cfg.shuffle, num_epochs=cfg.num_epochs,
                                        seed=cfg.seed)
    sampler = GlobalOrderSampler(inner, cfg.global_batch, jax.process_count())
    pair_ops = [DecodeLatents()] if cfg.source == "latents" else [CheckRecord(), MakePair(cfg)]
    ops = [*pair_ops, grain.transforms.Batch(per_process, drop_remainder=True)]
    return grain.DataLoader(data_source=source, sampler=sampler, operations=ops, worker_count=cfg.worker_count,
                            shard_options=sampler.shard_options)


def at_step(cfg: DataConfig, step: int) -> DataConfig:
    """The pair sampler's settings at training step ``step``: the curriculum's phase."""
    if step < cfg.fixed_camera_steps:
        return dataclasses.replace(cfg, fixed_camera_pairs=1.0)
    return cfg


def continue_loader(cfg: DataConfig, data_iter):
    """A fresh iterator of ``cfg``'s loader that goes on where ``data_iter`` stopped: the same
    record order and per-record RNG, pairs made with ``cfg``'s settings (the curriculum's next phase)."""
    it = iter(make_loader(cfg))
    it.set_state(data_iter.get_state())
    return it


def to_global(batch: dict[str, np.ndarray], mesh, rules=None) -> dict[str, jax.Array]:
    """Process-local numpy batch -> global jax.Arrays sharded on the batch axis."""
    from stp_jax.parallel.mesh import data_sharding

    return {k: jax.make_array_from_process_local_data(data_sharding(mesh, np.ndim(v), rules), np.asarray(v))
            for k, v in batch.items()}
