"""Attention alone, forward and forward + backward: stp_jax's kernels against PyTorch's
``scaled_dot_product_attention`` in the same run, on the same inputs.

  python tools/bench/attention.py                      # CPU: 8 heads x 64, 1024 tokens (the train bench's layer)
  python tools/bench/attention.py --tokens 4096 --blocks 256,512

Rows: ``xla`` (jax.nn.dot_product_attention, autodiff backward), ``blockwise`` at each query
block size (stp_jax.models.attention: query blocks against all keys, custom VJP recomputing the
scores from the saved log-sum-exp), and torch SDPA (its fused CPU kernel). fwd+bwd is one
jitted call returning dq, dk, dv for a fixed output cotangent; the largest gradient
difference from ``xla`` is reported beside each stp_jax row.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import machine, parse_args, table, timeit, write_json  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--blocks", default="auto,256,512,1024",
                    help="blockwise query block sizes (auto: attention.query_block's, the default)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--out", default="bench_out/attention.json")
    args = parse_args(ap, argv)  # first: --host-malloc acts before JAX starts its backend

    import functools

    import jax
    import jax.numpy as jnp

    from stp_jax.models import attention as attn

    shape = (args.batch, args.tokens, args.heads, args.head_dim)  # [B, L, N, K]
    g = np.random.default_rng(0)
    q, k, v, do = (g.standard_normal(shape).astype(np.float32) for _ in range(4))
    jq, jk, jv, jdo = map(jnp.asarray, (q, k, v, do))

    kernels = {"xla": attn._xla}
    for b in (x for x in args.blocks.split(",") if x):
        block = attn.query_block(args.tokens) if b == "auto" else int(b)
        kernels[f"blockwise {block}" + (" (auto)" if b == "auto" else "")] = functools.partial(attn._blockwise,
                                                                                              block=block)

    rows, ref = [], None
    for name, fn in kernels.items():
        fwd = jax.jit(fn)
        fwd_bwd = jax.jit(lambda a, b_, c, fn=fn: jax.vjp(fn, a, b_, c)[1](jdo))
        grads = jax.block_until_ready(fwd_bwd(jq, jk, jv))
        ref = grads if ref is None else ref
        diff = max(float(jnp.abs(x - y).max()) for x, y in zip(grads, ref))
        tf = timeit(lambda f=fwd: jax.block_until_ready(f(jq, jk, jv)), iters=args.iters)["median_s"]
        tb = timeit(lambda f=fwd_bwd: jax.block_until_ready(f(jq, jk, jv)), iters=args.iters)["median_s"]
        rows.append({"impl": f"stp_jax {name}", "fwd ms": tf * 1e3, "fwd+bwd ms": tb * 1e3,
                     "max |grad - xla|": diff})

    if not args.skip_torch:
        import torch

        # [B, L, N, K] -> torch's [B, N, L, K]
        tq, tk, tv, tdo = (torch.from_numpy(x).transpose(1, 2).contiguous() for x in (q, k, v, do))
        for t in (tq, tk, tv):
            t.requires_grad_(True)
        sdpa = torch.nn.functional.scaled_dot_product_attention

        def t_fwd():
            with torch.no_grad():
                sdpa(tq, tk, tv)

        def t_fwd_bwd():
            torch.autograd.grad(sdpa(tq, tk, tv), (tq, tk, tv), tdo)

        tg = torch.autograd.grad(sdpa(tq, tk, tv), (tq, tk, tv), tdo)
        diff = max(float(np.abs(a.transpose(1, 2).numpy() - np.asarray(b)).max()) for a, b in zip(tg, ref))
        rows.append({"impl": "torch sdpa", "fwd ms": timeit(t_fwd, iters=args.iters)["median_s"] * 1e3,
                     "fwd+bwd ms": timeit(t_fwd_bwd, iters=args.iters)["median_s"] * 1e3,
                     "max |grad - xla|": diff})

    print(f"attention: batch {args.batch} x {args.tokens} tokens, {args.heads} heads x {args.head_dim}, float32")
    print(table(rows, ["impl", "fwd ms", "fwd+bwd ms", "max |grad - xla|"]))
    write_json(args.out, {"machine": machine(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
