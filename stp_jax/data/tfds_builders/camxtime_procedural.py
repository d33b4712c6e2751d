"""TFDS ``camxtime_procedural``: pre-rendered procedural Cam×Time grids.

One example per scene seed: ``grid`` uint8 [C, T, H, W, 3] (ZLIB), ``cameras`` float32
[C, 4, 4] (OpenCV c2w), ``seed`` int64. Train seeds are 0..N-1; test seeds start at
stp_jax.data.pipeline.TEST_SEED_OFFSET, so they never overlap. Written as ArrayRecord.

    from stp_jax.data.tfds_builders.camxtime_procedural import build
    build("/data/tfds", num_frames=17, num_cameras=17, height=32, width=32, train=1000, test=50)
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from stp_jax.data import camxtime as cx

TEST_SEED_OFFSET = 1_000_000_000  # == pipeline.TEST_SEED_OFFSET (kept here to avoid an import cycle)


def grid_features(c) -> tfds.features.FeaturesDict:
    """The record of a camera x time grid (shared by camxtime_procedural and camxtime)."""
    return tfds.features.FeaturesDict({
        "seed": tfds.features.Scalar(dtype=np.int64),
        "grid": tfds.features.Tensor(shape=(c.num_cameras, c.num_frames, c.height, c.width, 3),
                                     dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
        "cameras": tfds.features.Tensor(shape=(c.num_cameras, 4, 4), dtype=np.float32),
    })


@dataclasses.dataclass
class CamxtimeConfig(tfds.core.BuilderConfig):
    num_frames: int = 17
    num_cameras: int = 17
    height: int = 32
    width: int = 32
    train_scenes: int = 1000
    test_scenes: int = 50


class CamxtimeProcedural(tfds.core.GeneratorBasedBuilder):
    name = "camxtime_procedural"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [CamxtimeConfig(name="t17_c17_32x32")]

    def _info(self):
        return self.dataset_info_from_configs(
            description="Procedural Cam×Time grids rendered by stp_jax.data.camxtime.",
            features=grid_features(self.builder_config))

    def _split_generators(self, dl_manager):
        c = self.builder_config
        return {"train": self._generate_examples(0, c.train_scenes),
                "test": self._generate_examples(TEST_SEED_OFFSET, c.test_scenes)}

    def _generate_examples(self, offset, count):
        c = self.builder_config
        for i in range(count):
            seed = offset + i
            cams = cx.camera_path(seed, c.num_cameras)
            grid = np.asarray(cx.render_grid_jit(cx.make_scene(seed), cams, c.num_frames, c.height, c.width))
            yield seed, {"seed": np.int64(seed), "grid": grid, "cameras": cams.astype(np.float32)}


def config_name(num_frames, num_cameras, height, width, train, test) -> str:
    return f"t{num_frames}_c{num_cameras}_{height}x{width}_n{train}_{test}"


def build(data_dir, num_frames=17, num_cameras=17, height=32, width=32, train=1000, test=50):
    """Build (or reuse) the dataset for these sizes; returns the builder."""
    name = config_name(num_frames, num_cameras, height, width, train, test)
    config = CamxtimeConfig(name=name, num_frames=num_frames, num_cameras=num_cameras, height=height, width=width,
                            train_scenes=train, test_scenes=test)
    builder = CamxtimeProcedural(data_dir=str(data_dir), config=config, file_format="array_record")
    builder.download_and_prepare()
    return builder
