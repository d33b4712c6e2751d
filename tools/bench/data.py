"""Input pipeline throughput: clips/s of each source beside what a train step consumes.

  python tools/bench/data.py            # T=17, 32x32, batch 8; procedural and TFDS, 0 and 2 workers

The consumer is a tiny-config SpaceTimeDiT train step (forward + backward + AdamW) on the
same clip size, with a PatchAutoencoder-like fold (4x time, 4x space) standing in for the
VAE; the pipeline must outpace it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, table, write_json  # noqa: E402


def clips_per_s(cfg, batches: int) -> float:
    from stp_jax.data import pipeline as pl

    it = iter(pl.make_loader(cfg))
    next(it)  # warm-up: compile, start workers
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * cfg.global_batch / (time.perf_counter() - t0)


def train_step_clips_per_s(frames, height, width, batch, steps=5) -> float:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import linen as nn

    from stp_jax.models.dit import SpaceTimeDiT, preset

    cfg = preset("tiny", mode="spacetimepilot", in_channels=48, out_channels=48, num_layers=4, dim=128, ffn_dim=256,
                 time_groups=8)
    fh = 1 + (frames - 1) // 4
    x = jnp.zeros((batch, 2 * fh, height // 4, width // 4, 48))  # latent of a 4x-time, 4x-space fold
    inputs = dict(x=x, timestep=jnp.full((batch,), 500.0), context=jnp.zeros((batch, 8, cfg.text_dim)),
                  tgt_cam=jnp.zeros((batch, fh, 12)), src_cam=jnp.zeros((batch, fh, 12)),
                  tgt_time=jnp.zeros((batch, frames)), src_time=jnp.zeros((batch, frames)))
    model = SpaceTimeDiT(cfg)
    params = jax.jit(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), **inputs))["params"])()
    opt = optax.adamw(1e-4)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, g = jax.value_and_grad(lambda p: jnp.mean(model.apply({"params": p}, **inputs) ** 2))(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    params, state, loss = step(params, state)
    loss.block_until_ready()
    t0 = time.perf_counter()
    for _ in range(steps):
        params, state, loss = step(params, state)
    loss.block_until_ready()
    return steps * batch / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--workers", default="0,2")
    ap.add_argument("--out", default="bench_out/data.json")
    args = ap.parse_args(argv)

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
