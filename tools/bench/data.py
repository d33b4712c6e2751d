"""Input pipeline throughput: clips/s of each source beside what a train step consumes.

  python tools/bench/data.py            # T=17, 32x32, batch 8; procedural and TFDS, 0 and 2 workers

The consumer is stp_jax.train_step (forward + backward + AdamW) of a small SpaceTimeDiT
on the PatchAutoencoder (4x time, 4x space) latents of such clips; the pipeline must outpace it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, parse_args, table, write_json  # noqa: E402


def clips_per_s(cfg, batches: int) -> float:
    from stp_jax.data import pipeline as pl

    it = iter(pl.make_loader(cfg))
    next(it)  # warm-up: compile, start workers
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * cfg.global_batch / (time.perf_counter() - t0)


def train_step_clips_per_s(frames, height, width, batch, steps=5) -> float:
    """Clips/s of stp_jax.train_step on PatchAutoencoder latents of such clips."""
    import functools

    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from stp_jax import train_step as ts
    from stp_jax.models.dit import SpaceTimeDiT, preset
    from stp_jax.models.vae import PatchAutoencoder

    ae = PatchAutoencoder(spatial=4)
    fh, h, w, c = ae.latent_shape(frames, height, width)
    cfg = preset("tiny", mode="spacetimepilot", in_channels=c, out_channels=c, num_layers=4, dim=128, ffn_dim=256,
                 time_groups=8)
    z = jnp.zeros((batch, fh, h, w, c))
    b = {"target": z, "source": z, "context": jnp.zeros((batch, 8, cfg.text_dim)),
         "tgt_cam": jnp.zeros((batch, fh, 12)), "src_cam": jnp.zeros((batch, fh, 12)),
         "tgt_time": jnp.zeros((batch, frames)), "src_time": jnp.zeros((batch, frames))}
    model = SpaceTimeDiT(cfg)
    cond = {k: b[k] for k in ("tgt_cam", "src_cam", "tgt_time", "src_time")}
    params = jax.jit(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), jnp.concatenate([z, z], axis=1),
                                                 jnp.zeros(batch), b["context"], **cond))["params"])()
    opt = ts.make_optimizer(params, ts.OptimConfig(lr=1e-4, warmup=1), 100)
    state = ts.init_state(params, opt)
    step = jax.jit(functools.partial(ts.train_step, model, opt))
    state, m = step(state, b, jax.random.PRNGKey(0))
    m["loss"].block_until_ready()
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, b, jax.random.PRNGKey(0))
    m["loss"].block_until_ready()
    return steps * batch / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--out", default="bench_out/data.json")
    args = parse_args(ap, argv)  # first: --host-malloc acts before JAX starts its backend

    from stp_jax.data import pipeline as pl
    from stp_jax.data.tfds_builders.camxtime_procedural import build

    rows = []
    base = dict(num_frames=args.frames, num_cameras=args.frames, height=args.size, width=args.size,
                global_batch=args.batch, seed=0)
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        b = build(d, args.frames, args.frames, args.size, args.size, train=64, test=4)
        build_s = time.perf_counter() - t0
        for w in workers:
            rows.append({"source": "procedural (render on the fly)", "workers": w,
                         "clips/s": clips_per_s(pl.DataConfig(**base, worker_count=w), args.batches)})
            rows.append({"source": "tfds camxtime_procedural (ArrayRecord)", "workers": w,
                         "clips/s": clips_per_s(pl.DataConfig(**base, worker_count=w, source="tfds", tfds_dir=d,
                                                              tfds_name=f"camxtime_procedural/{b.builder_config.name}",
                                                              num_scenes=64), args.batches)})
    rows.append({"source": "consumer: tiny train step (fwd+bwd+AdamW)", "workers": None,
                 "clips/s": train_step_clips_per_s(args.frames, args.size, args.size, args.batch)})
    print(f"\nclips of {args.frames} frames at {args.size}x{args.size} (source + target), batch {args.batch}; "
          f"TFDS build of 68 scene grids took {build_s:.1f}s")
    print(table(rows, ["source", "workers", "clips/s"]))
    write_json(args.out, {"machine": machine(), "rows": rows, "args": vars(args), "tfds_build_s": build_s})


if __name__ == "__main__":
    main()
