"""TFDS ``camxtime``: a Blender-rendered Cam×Time folder (dense camera x time grids).

SpaceTimePilot's Cam×Time data is not released yet, so its exact folder layout is not
known. This builder reads the layout below, which follows MultiCamVideo's conventions;
when the official layout is published, only ``_read_scene`` needs to change::

    ROOT/<scene>/videos/cam000.mp4 ...   one video per camera: that fixed camera at animation
                                         times 0..T-1
    ROOT/<scene>/cameras.json            {"convention": "blender_c2w", "cameras": {"cam000": 4x4, ...}}

Each scene becomes a record identical to ``camxtime_procedural``'s: ``grid`` uint8
[C, T, H, W, 3], ``cameras`` float32 [C, 4, 4] (OpenCV c2w; Blender poses get the camera's
Y and Z axes flipped), ``seed`` (scene index); so the pipeline treats both alike.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from stp_jax.controls.camera import blender_to_opencv, validate_poses
from stp_jax.data.tfds_builders.camxtime_procedural import grid_features
from stp_jax.data.tfds_builders.multicam_video import _is_test
from stp_jax.data.video_io import read_video


@dataclasses.dataclass
class CamxtimeFolderConfig(tfds.core.BuilderConfig):
    root: str = ""
    num_frames: int = 81
    num_cameras: int = 81
    height: int = 64
    width: int = 64
    test_fraction: float = 0.05


def _read_scene(scene: Path, c: CamxtimeFolderConfig):
    meta_f = scene / "cameras.json"
    try:
        meta = json.loads(meta_f.read_text())
        conv, cams = meta.get("convention", "blender_c2w"), meta["cameras"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{meta_f}: expected {{'convention': 'blender_c2w', 'cameras': {{'cam000': 4x4, ...}}}} "
                         f"({e})") from e
    names = sorted(cams)
    if len(names) != c.num_cameras:
        raise ValueError(f"{meta_f}: has {len(names)} cameras, the config expects {c.num_cameras}")
    poses = np.asarray([cams[n] for n in names], np.float64).reshape(-1, 4, 4)
    if conv == "blender_c2w":
        poses = blender_to_opencv(poses)
    elif conv != "opencv_c2w":
        raise ValueError(f"{meta_f}: convention {conv!r} is unknown; expected blender_c2w or opencv_c2w")
    poses = validate_poses(poses, str(meta_f))
    grid = np.stack([read_video(scene / "videos" / f"{n}.mp4", c.num_frames, (c.height, c.width)) for n in names])
    return grid, poses


class Camxtime(tfds.core.GeneratorBasedBuilder):
    name = "camxtime"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [CamxtimeFolderConfig(name="default")]

    def _info(self):
        return self.dataset_info_from_configs(
            description="Blender-rendered Cam×Time grids (assumed folder layout; see module doc).",
            features=grid_features(self.builder_config))

    def _split_generators(self, dl_manager):
        c = self.builder_config
        root = Path(c.root)
        scenes = sorted(p.parent for p in root.glob("*/cameras.json"))
        if not scenes:
            raise ValueError(f"{root}: no scenes found; expected <scene>/cameras.json and <scene>/videos/camNNN.mp4")
        tagged = [(i, s, _is_test(s.name, c.test_fraction)) for i, s in enumerate(scenes)]
        splits = {"train": self._generate_examples([(i, s) for i, s, t in tagged if not t])}
        if any(t for *_, t in tagged):
            splits["test"] = self._generate_examples([(i, s) for i, s, t in tagged if t])
        return splits

    def _generate_examples(self, scenes):
        for idx, scene in scenes:
            grid, poses = _read_scene(scene, self.builder_config)
            yield scene.name, {"seed": np.int64(idx), "grid": grid, "cameras": poses.astype(np.float32)}


def build(data_dir, root, num_frames=81, num_cameras=81, height=64, width=64, test_fraction=0.05):
    name = f"t{num_frames}_c{num_cameras}_{height}x{width}"
    config = CamxtimeFolderConfig(name=name, root=str(root), num_frames=num_frames, num_cameras=num_cameras,
                                  height=height, width=width, test_fraction=test_fraction)
    builder = Camxtime(data_dir=str(data_dir), config=config, file_format="array_record")
    builder.download_and_prepare()
    return builder
