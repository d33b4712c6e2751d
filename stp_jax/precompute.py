"""``stp-precompute``: encode training pairs once into ArrayRecord latents.

For the published-size configs the frozen Wan VAE costs about as much per clip as the DiT
step; encoding every pair once (and storing the text states once) takes it out of the
training loop. Pairs are drawn by the config's own pipeline (camera pairs, time warps,
stp_jax.data.pipeline), ``--epochs`` passes over the dataset (each pass draws new warps),
encoded with the config's autoencoder on all local devices, and written as records of
float16 latents:

  target_latents, source_latents  float16 [F', h, w, C]
  target_cam, source_cam          float32 [F', 12]
  target_time, source_time        int32 [T]
  seed                            int64

plus ``meta.json`` (latent shape, count, autoencoder, the config it came from). Train on
them with ``--set data.source=latents --set data.latents_dir=DIR``. The output is written
to ``DIR.partial`` and renamed at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np

from stp_jax import inference

LATENT_KEYS = ("target_latents", "source_latents")


def serialize(record: dict[str, np.ndarray]) -> bytes:
    from flax import serialization

    return serialization.msgpack_serialize({k: np.asarray(v) for k, v in record.items()})


def deserialize(data: bytes) -> dict[str, np.ndarray]:
    from flax import serialization

    return serialization.msgpack_restore(data)


def precompute(config, out_dir, *, epochs: int = 1, batch: int = 8, records_per_shard: int = 1000) -> Path:
    from array_record.python.array_record_module import ArrayRecordWriter

    from stp_jax.data import pipeline as pl
    from stp_jax.train import data_config, prepare_data

    if jax.process_count() > 1:
        raise ValueError("stp-precompute runs on one host; split the dataset with --set data.num_scenes / seeds")
    d = prepare_data(data_config(config))
    if d.source == "latents":
        raise ValueError("the config already reads precomputed latents (data.source=latents)")
    d = dataclasses.replace(d, shuffle=False, num_epochs=epochs, global_batch=batch)
    a = config.autoencoder
    ae = inference.build_autoencoder(a.kind, a.spatial, a.path or None)
    encode = jax.jit(lambda f: ae.encode(inference.to_float(f)))
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    count, shard, writer = 0, 0, None
    for b in pl.make_loader(d):
        lat = {"target_latents": np.asarray(encode(b["target_frames"]), np.float16),
               "source_latents": np.asarray(encode(b["source_frames"]), np.float16)}
        for i in range(len(b["seed"])):
            if writer is None:
                writer = ArrayRecordWriter(str(tmp / f"latents-{shard:05d}.array_record"), "group_size:1")
            rec = {**{k: v[i] for k, v in lat.items()},
                   **{k: b[k][i] for k in ("target_cam", "source_cam", "target_time", "source_time", "seed")}}
            writer.write(serialize(rec))
            count += 1
            if count % records_per_shard == 0:
                writer.close()
                writer, shard = None, shard + 1
    if writer is not None:
        writer.close()
    if count == 0:
        shutil.rmtree(tmp)
        raise ValueError(f"the config's dataset yielded no pairs (num_scenes {d.num_scenes}, batch {batch})")
    meta = {"count": count, "latent_shape": list(ae.latent_shape(d.num_frames, d.height, d.width)),
            "num_frames": d.num_frames, "height": d.height, "width": d.width, "epochs": epochs,
            "autoencoder": dict(a), "config": config.name, "dtype": "float16"}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="stp-precompute", description="Encode a config's training pairs once "
                                "(autoencoder latents) into ArrayRecord files for data.source=latents.")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=1, help="passes over the dataset (new time warps each pass)")
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)
    from stp_jax import configs

    try:
        out = precompute(configs.load(args.config, args.set), args.out, epochs=args.epochs, batch=args.batch)
    except ValueError as e:
        print(f"stp-precompute: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {json.loads((out / 'meta.json').read_text())['count']} pairs to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
