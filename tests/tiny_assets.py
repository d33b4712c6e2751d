"""Small real inputs for the bad-input tests (no PyTorch needed): a converted tiny Wan DiT
folder (random weights, PatchAutoencoder latents, a run.json as stp-train writes), a 9-frame
source video, and the same weights exported to PyTorch safetensors."""
import json
from pathlib import Path

import numpy as np

T, H = 9, 16  # frames and pixels of the source video
TEXT_DIM = 32


def make(d: Path) -> Path:
    import jax

    from stp_jax.convert.checkpoint import export_checkpoint
    from stp_jax.convert.dit import abstract_params
    from stp_jax.convert.store import save_pretrained
    from stp_jax.data.video_io import write_video
    from stp_jax.models.dit import DiTConfig

    d = Path(d)
    cfg = DiTConfig(mode="wan", dim=32, ffn_dim=64, num_heads=2, num_layers=1, in_channels=48, out_channels=48,
                    text_dim=TEXT_DIM, freq_dim=32)
    rng = np.random.default_rng(0)  # random weights of the right shapes (an eager init takes ~20 s)
    params = jax.tree.map(lambda a: (0.02 * rng.standard_normal(a.shape)).astype(np.float32), abstract_params(cfg))
    run = {"autoencoder": {"kind": "patch", "spatial": 2, "path": "", "time_factor": 4},
           "data": {"num_frames": T, "height": H, "width": H, "num_cameras": T}, "sample": {"steps": 2}}
    save_pretrained(d / "model", cfg, params, meta={"source": "tests"}, extra_files={"run.json": json.dumps(run)})
    export_checkpoint(d / "model", d / "model.safetensors")
    write_video(d / "src.mp4", np.random.default_rng(0).integers(0, 256, (T, H, H, 3), dtype=np.uint8))
    return d


def snapshot(root: Path) -> dict[str, int]:
    """Every path under ``root`` (with file sizes): equal before and after = nothing new, nothing lost."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in Path(root).rglob("*")}
