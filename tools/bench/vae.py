"""Wan VAE encode/decode: memory and time vs the number of frames, ours beside diffusers.

  python tools/bench/vae.py                      # CPU: base_dim 32, 64x64, T = 17, 33, 65, 129
  python tools/bench/vae.py --base-dim 96 --size 480x832 --frames 81      # the published size (GPU)

Each (implementation, T) runs in its own process so its peak RSS is its own. For stp_jax the
compiled program's memory_analysis() (temporaries) is reported too: with the causal cache in a
lax.scan it must not grow with T. Weights are random (same for both), converted through
stp_jax.convert.wan_vae.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, parse_args, table, write_json  # noqa: E402


def _make_ref(base_dim: int, path: str):
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    m = AutoencoderKLWan(base_dim=base_dim, z_dim=16).eval()
    m.save_pretrained(path, safe_serialization=True)


def worker(impl: str, frames: int, h: int, w: int, ckpt: str, iters: int) -> dict:
    import numpy as np

    x = np.random.default_rng(0).uniform(-1, 1, (1, frames, h, w, 3)).astype(np.float32)
    out = {"impl": impl, "T": frames}
    if impl == "diffusers":
        import torch
        from diffusers import AutoencoderKLWan

        torch.set_num_threads(os.cpu_count())
        m = AutoencoderKLWan.from_pretrained(ckpt).eval()
        xt = torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy())
        with torch.no_grad():
            m.encode(xt[:, :, :5])  # warm-up
            t0 = time.perf_counter()
            for _ in range(iters):
                z = m.encode(xt).latent_dist.mean
            out["encode_s"] = (time.perf_counter() - t0) / iters
            t0 = time.perf_counter()
            for _ in range(iters):
                m.decode(z)
            out["decode_s"] = (time.perf_counter() - t0) / iters
    else:
        import jax

        from stp_jax.convert.wan_vae import convert_wan_vae
        from stp_jax.models import wan_vae

        cfg, params = convert_wan_vae(ckpt)
        params = jax.device_put(params)
        enc = jax.jit(lambda p, v: wan_vae.encode(cfg, p, v, normalize=False))
        dec = jax.jit(lambda p, z: wan_vae.decode(cfg, p, z, normalized=False))
        ce = enc.lower(params, x).compile()
        z = ce(params, x).block_until_ready()
        cd = dec.lower(params, z).compile()
        cd(params, z).block_until_ready()
        out["encode_temp_mb"] = ce.memory_analysis().temp_size_in_bytes / 2 ** 20
        out["decode_temp_mb"] = cd.memory_analysis().temp_size_in_bytes / 2 ** 20
        t0 = time.perf_counter()
        for _ in range(iters):
            z = ce(params, x).block_until_ready()
        out["encode_s"] = (time.perf_counter() - t0) / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            cd(params, z).block_until_ready()
        out["decode_s"] = (time.perf_counter() - t0) / iters
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["encode_ms_per_frame"] = out["encode_s"] / frames * 1e3
    out["decode_ms_per_frame"] = out["decode_s"] / frames * 1e3
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-dim", type=int, default=32)
    ap.add_argument("--size", default="64x64")
    ap.add_argument("--frames", default="17,33,65,129")
    ap.add_argument("--iters", type=int, default=1)
    ap.add_argument("--impls", default="stp_jax,diffusers")
    ap.add_argument("--out", default="bench_out/vae.json")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "T"), help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = parse_args(ap, argv)  # first: --host-malloc acts before JAX starts its backend
    h, w = (int(v) for v in args.size.split("x"))
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), h, w, args.ckpt, args.iters)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as d:
        _make_ref(args.base_dim, d)
        for t in (int(v) for v in args.frames.split(",")):
            for impl in args.impls.split(","):
                cmd = [sys.executable, __file__, "--worker", impl, str(t), "--ckpt", d, "--size", args.size,
                       "--iters", str(args.iters)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode:
                    print(res.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"worker {impl} T={t} failed")
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    cols = ["impl", "T", "peak_rss_mb", "encode_temp_mb", "decode_temp_mb", "encode_ms_per_frame",
            "decode_ms_per_frame"]
    print(f"\nWan VAE base_dim {args.base_dim} at {args.size}, batch 1, float32")
    print(table(rows, cols))
    write_json(args.out, {"machine": machine(), "rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
