"""DiT forward and forward+backward: stp_jax vs diffusers' WanTransformer3DModel, one run.

Both models get the same config, the same weights (converted through stp_jax.convert) and
the same inputs; the Wan backbone is compared (diffusers has no camera/time modules), and
our SpaceTimePilot mode is timed beside it.

  python tools/bench/dit.py                       # CPU: dim 512, 8 layers, 2048 tokens
  python tools/bench/dit.py --fast-math           # ... with XLA:CPU fast math
  python tools/bench/dit.py --preset 1.3b --frames 21 --height 60 --width 104 --dtype bfloat16   # GPU

MFU is reported against --peak-tflops (H100 bf16 dense measured here: ~790) when given.
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
    ap.add_argument("--preset", default="", help="stp_jax preset (1.3b, 14b) instead of the mid-size CPU config")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--frames", type=int, default=8, help="latent frames of the whole sequence")
    ap.add_argument("--height", type=int, default=32, help="latent height (tokens = /2)")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--text-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--remat", default="none")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None, help="hardware peak for MFU")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--fast-math", action="store_true",
                    help="XLA:CPU fast math (vectorised approximate exp/tanh); parity tests still pass with it")
    ap.add_argument("--out", default="bench_out/dit.json")
    args = parse_args(ap, argv)  # first: --host-malloc acts before JAX starts its backend
    if args.fast_math:  # must be set before JAX initialises its CPU backend
        import os

        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_fast_math=true").strip()

    import jax
    import jax.numpy as jnp
    import torch

    from stp_jax.convert.core import StateDict, apply_table
    from stp_jax.convert.dit import abstract_params, dit_rules, to_original_layout
    from stp_jax.models.dit import DiTConfig, SpaceTimeDiT, forward_flops, preset
    from stp_jax.parallel import mesh as mesh_lib

    copts = mesh_lib.platform_compiler_options(jax.default_backend())  # what stp-train compiles with

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.preset:
        cfg = preset(args.preset, mode="wan", dtype=args.dtype, attention=args.attention, remat=args.remat)
    else:
        cfg = DiTConfig(dim=args.dim, ffn_dim=args.ffn, num_heads=args.heads, num_layers=args.layers, text_dim=512,
                        mode="wan", dtype=args.dtype, attention=args.attention, remat=args.remat)
    b, f, hp, wp, s = args.batch, args.frames, args.height, args.width, args.text_len
    tokens = f * (hp // 2) * (wp // 2)
    flops = forward_flops(cfg, tokens, s) * b
    g = np.random.default_rng(0)
    x = g.standard_normal((b, cfg.in_channels, f, hp, wp)).astype(np.float32)
    t = g.uniform(0, 1000, (b,)).astype(np.float32)
    ctx = g.standard_normal((b, s, cfg.text_dim)).astype(np.float32)
    rows = []

    def row(impl, mode, what, r, mult):
        tf = flops * mult / r["median_s"] / 1e12
        rows.append({"impl": impl, "mode": mode, "pass": what, "ms": r["median_s"] * 1e3, "TFLOP/s": tf,
                     "MFU": tf / args.peak_tflops if args.peak_tflops else None})

    # ---- diffusers (reference weights; also the source of ours)
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    ref = WanTransformer3DModel(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads,
                                attention_head_dim=cfg.head_dim, in_channels=cfg.in_channels,
                                out_channels=cfg.out_channels, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                                ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
                                qk_norm="rms_norm_across_heads", eps=cfg.eps)
    sd = {k: v.detach().float().numpy() for k, v in ref.state_dict().items()}
    pdt = "float32"
    params = apply_table(to_original_layout(StateDict.from_arrays(sd)), dit_rules(cfg), abstract_params(cfg), "bench",
                         dtype=pdt)
    params = jax.device_put(params)
    tdtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.skip_torch:
        ref = ref.to(dev) if tdtype == torch.float32 else ref.to(dev, tdtype)
        tx, tt, tc = (torch.from_numpy(a).to(dev) for a in (x, t, ctx))
        tx, tc = tx.to(tdtype), tc.to(tdtype)
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

        def t_fwd():
            with torch.no_grad():
                ref(tx, tt, tc, return_dict=False)
            sync()

        def t_bwd():
            ref.zero_grad(set_to_none=True)
            ref(tx, tt, tc, return_dict=False)[0].float().square().mean().backward()
            sync()

        row("diffusers", "wan", "fwd", timeit(t_fwd, iters=args.iters), 1)
        row("diffusers", "wan", "fwd+bwd", timeit(t_bwd, iters=args.iters), 3)
        del ref

    # ---- stp_jax
    xj, tj, cj = jnp.asarray(x.transpose(0, 2, 3, 4, 1)), jnp.asarray(t), jnp.asarray(ctx)

    def bench_jax(cfg, params, mode, extra):
        model = SpaceTimeDiT(cfg)
        fwd = jax.jit(lambda p, x, t, c, e: model.apply({"params": p}, x, t, c, **e), compiler_options=copts)
        loss = lambda p, x, t, c, e: jnp.mean(jnp.square(model.apply({"params": p}, x, t, c, **e)))  # noqa: E731
        grad = jax.jit(jax.value_and_grad(loss), compiler_options=copts)
        row("stp_jax", mode, "fwd", timeit(lambda: fwd(params, xj, tj, cj, extra).block_until_ready(),
                                             iters=args.iters), 1)
        row("stp_jax", mode, "fwd+bwd", timeit(lambda: jax.block_until_ready(grad(params, xj, tj, cj, extra)),
                                                 iters=args.iters), 3)
        hlo_flops = fwd.lower(params, xj, tj, cj, extra).compile().cost_analysis()
        return hlo_flops.get("flops") if isinstance(hlo_flops, dict) else None

    xla_flops = bench_jax(cfg, params, "wan", {})
    if f % 2 == 0:  # SpaceTimePilot mode on the same token count (target + source halves)
        scfg = cfg.replace(mode="spacetimepilot")
        sparams = jax.jit(lambda: __import__("flax").linen.unbox(SpaceTimeDiT(scfg).init(
            jax.random.PRNGKey(0), xj, tj, cj, **_stp_inputs(b, f)))["params"])()
        bench_jax(scfg, sparams, "spacetimepilot", _stp_inputs(b, f))

    cols = ["impl", "mode", "pass", "ms", "TFLOP/s"] + (["MFU"] if args.peak_tflops else [])
    print(f"\nDiT dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads, batch {b}, {tokens} tokens, "
          f"text {s}, {args.dtype}; analytic fwd {flops / 1e9:.1f} GFLOP (XLA cost analysis: "
          f"{(xla_flops or 0) / 1e9:.1f} GFLOP); host malloc {machine()['host_malloc']}")
    print(table(rows, cols))
    write_json(args.out, {"machine": machine(), "config": cfg.to_dict(), "tokens": tokens, "batch": b,
                          "fwd_flops": flops, "xla_fwd_flops": xla_flops, "rows": rows, "args": vars(args)})


def _stp_inputs(b, f):
    import jax.numpy as jnp

    fh = f // 2
    tt = 4 * (fh - 1) + 1
    return dict(tgt_cam=jnp.zeros((b, fh, 12)), src_cam=jnp.zeros((b, fh, 12)),
                tgt_time=jnp.tile(jnp.arange(tt, dtype=jnp.float32)[::-1], (b, 1)),
                src_time=jnp.tile(jnp.arange(tt, dtype=jnp.float32), (b, 1)))


if __name__ == "__main__":
    main()
