"""``stp-precompute``: encode training pairs once into ArrayRecord latents.

For the published-size configs the frozen Wan VAE costs about as much per clip as the DiT
step; encoding every pair once (and storing the text states once) takes it out of the
training loop. Pairs are drawn by the config's own pipeline (camera pairs, time warps,
stp_jax.data.pipeline), ``--epochs`` passes over the dataset (each pass draws new warps),
encoded with the config's autoencoder on all local devices, and written as records of
float16 latents:

  tgt_latents, src_latents  float16 [F', h, w, C]
  tgt_cam, src_cam          float32 [F', 12]
  tgt_time, src_time        int32 [T]
  seed                            int64
  src_depth, src_moving     float32 / bool [T, H, W]  (configs with data.composite_aux)

plus ``meta.json`` (latent shape, count, autoencoder, the config it came from, whether the
renderer's depth and masks are there: ``composite_aux``). Train on
them with ``--set data.source=latents --set data.latents_dir=DIR``. The output is written
to ``DIR.partial`` and renamed at the end.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from stp_jax import inference
from stp_jax.data import latents
from stp_jax.data import pipeline as pl
from stp_jax.files import atomic_output, check_can_create


def precompute(config, out_dir, *, epochs: int = 1, batch: int = 8, records_per_shard: int = 1000,
               overwrite: bool = False) -> Path:
    """Encode the config's training pairs into ``out_dir`` (see the module doc); returns it."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ValueError(f"--out {out} already exists; choose another folder or pass --overwrite")
    if out.exists() and not (out / "meta.json").exists():
        raise ValueError(f"--out {out} exists and is not a stp-precompute output (no meta.json); "
                         "--overwrite replaces only such folders")
    if epochs < 1 or batch < 1:
        raise ValueError(f"--epochs and --batch must be >= 1, got {epochs} and {batch}")
    check_can_create(out)
    if jax.process_count() > 1:
        raise ValueError("stp-precompute runs on one host; split the dataset with --set data.num_scenes / seeds")
    d = pl.prepare(pl.DataConfig.from_config(config))
    if d.source == "latents":
        raise ValueError("the config already reads precomputed latents (data.source=latents)")
    d = dataclasses.replace(d, shuffle=False, num_epochs=epochs, global_batch=batch)
    a = inference.AutoencoderConfig(**config.autoencoder)
    ae = inference.build_autoencoder(a)
    encode = jax.jit(lambda f: ae.encode(inference.to_float(f)))
    with atomic_output(out, folder=True) as tmp:
        count = _write_records(tmp, d, encode, records_per_shard)
        if count == 0:
            raise ValueError(f"the config's dataset yielded no pairs (num_scenes {d.num_scenes}, batch {batch})")
        meta = {"count": count, "latent_shape": list(ae.latent_shape(d.num_frames, d.height, d.width)),
                "num_frames": d.num_frames, "height": d.height, "width": d.width, "epochs": epochs,
                "autoencoder": dataclasses.asdict(a), "config": config.name, "dtype": "float16",
                "source_camera_rule": d.source_camera_rule, "composite_aux": d.composite_aux}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return out


def _write_records(tmp: Path, d, encode, records_per_shard: int) -> int:
    from array_record.python.array_record_module import ArrayRecordWriter

    count, shard, writer = 0, 0, None
    for b in pl.make_loader(d):
        lat = {key: np.asarray(encode(b[frames]), np.float16)
               for key, frames in zip(latents.LATENT_KEYS, ("tgt_frames", "src_frames"))}
        for i in range(len(b["seed"])):
            if writer is None:
                writer = ArrayRecordWriter(str(tmp / f"latents-{shard:05d}.array_record"), "group_size:1")
            aux = {k: b[k][i] for k in latents.AUX_KEYS if k in b}
            if "src_depth" in aux:
                aux["src_depth"] = np.minimum(aux["src_depth"], latents.AUX_DEPTH_CAP).astype(np.float32)
            writer.write(latents.serialize({**{k: v[i] for k, v in lat.items()},
                                            **{k: b[k][i] for k in latents.PAIR_KEYS}, **aux}))
            count += 1
            if count % records_per_shard == 0:
                writer.close()
                writer, shard = None, shard + 1
    if writer is not None:
        writer.close()
    return count
