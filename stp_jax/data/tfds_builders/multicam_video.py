"""TFDS ``multicam_video``: a local ReCamMaster MultiCamVideo folder as ArrayRecord.

Expected layout (as released)::

    ROOT/<lens>/scene<N>/videos/cam01.mp4 ... cam10.mp4
    ROOT/<lens>/scene<N>/cameras/camera_extrinsics.json

One example per scene: ``videos`` uint8 [V, T, H, W, 3] (ZLIB; resized and centre-cropped
to the config's size, first T frames), ``cameras`` float32 [V, T, 4, 4] (OpenCV c2w via the
published rule), ``seed`` int64 (the scene's index), ``scene`` (its relative path).
The pipeline samples every ordered camera pair of a scene and warps the target in time.
Scenes are split train/test by a stable hash of their path (``test_fraction``).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from stp_jax.controls.camera import read_recammaster_json
from stp_jax.data.video_io import read_video


@dataclasses.dataclass
class MultiCamConfig(tfds.core.BuilderConfig):
    root: str = ""
    num_frames: int = 81
    height: int = 64
    width: int = 64
    num_views: int = 10
    test_fraction: float = 0.05


def find_scenes(root) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: MultiCamVideo folder not found")
    scenes = sorted(p.parent.parent for p in root.glob("**/cameras/camera_extrinsics.json"))
    if not scenes:
        raise ValueError(f"{root}: no scenes found; expected <lens>/scene<N>/videos/camXX.mp4 and "
                         f"<lens>/scene<N>/cameras/camera_extrinsics.json")
    return scenes


def _is_test(rel: str, fraction: float) -> bool:
    h = int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < fraction


class MultiCamVideo(tfds.core.GeneratorBasedBuilder):
    name = "multicam_video"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [MultiCamConfig(name="default")]

    def _info(self):
        c = self.builder_config
        return self.dataset_info_from_configs(
            description="ReCamMaster MultiCamVideo (synchronised multi-camera clips).",
            features=tfds.features.FeaturesDict({
                "seed": tfds.features.Scalar(dtype=np.int64),
                "scene": tfds.features.Text(),
                "videos": tfds.features.Tensor(shape=(c.num_views, c.num_frames, c.height, c.width, 3),
                                               dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB),
                "cameras": tfds.features.Tensor(shape=(c.num_views, c.num_frames, 4, 4), dtype=np.float32),
            }),
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        root = Path(c.root)
        scenes = find_scenes(root)
        rel = [str(s.relative_to(root)) for s in scenes]
        train = [(i, s) for i, (s, r) in enumerate(zip(scenes, rel)) if not _is_test(r, c.test_fraction)]
        test = [(i, s) for i, (s, r) in enumerate(zip(scenes, rel)) if _is_test(r, c.test_fraction)]
        if not train:
            raise ValueError(f"{root}: every scene fell into the test split (test_fraction {c.test_fraction})")
        splits = {"train": self._generate_examples(train)}
        if test:  # TFDS refuses empty splits
            splits["test"] = self._generate_examples(test)
        return splits

    def _generate_examples(self, scenes):
        c = self.builder_config
        root = Path(c.root)
        for idx, scene in scenes:
            cams_json = scene / "cameras" / "camera_extrinsics.json"
            names = [f"cam{v:02d}" for v in range(1, c.num_views + 1)]
            videos, cams = [], []
            for name in names:
                video = scene / "videos" / f"{name}.mp4"
                if not video.exists():
                    raise ValueError(f"{scene}: missing {video.name} (expected {c.num_views} views)")
                videos.append(read_video(video, c.num_frames, (c.height, c.width)))
                poses = read_recammaster_json(cams_json, name)
                if len(poses) < c.num_frames:
                    raise ValueError(f"{cams_json}: {name} has {len(poses)} poses, {c.num_frames} needed")
                cams.append(poses[: c.num_frames])
            rel = str(scene.relative_to(root))
            yield rel, {"seed": np.int64(idx), "scene": rel, "videos": np.stack(videos),
                        "cameras": np.stack(cams).astype(np.float32)}


def build(data_dir, root, num_frames=81, height=64, width=64, num_views=10, test_fraction=0.05):
    name = f"t{num_frames}_{height}x{width}_v{num_views}"
    config = MultiCamConfig(name=name, root=str(root), num_frames=num_frames, height=height, width=width,
                            num_views=num_views, test_fraction=test_fraction)
    builder = MultiCamVideo(data_dir=str(data_dir), config=config, file_format="array_record")
    builder.download_and_prepare()
    return builder
