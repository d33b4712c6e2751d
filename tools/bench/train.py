"""Train step throughput: stp_jax's jitted train step vs the same step in PyTorch (diffusers'
WanTransformer3DModel), in one run, on the same weights and inputs.

One step on both sides: a Gaussian-weighted timestep per clip on the shifted schedule,
noise on the target half only, the velocity MSE on the target half, backward, global-norm
clipping at 1.0, AdamW. stp_jax: ``stp_jax.train_step.train_step`` under ``jax.jit`` with
the state donated. PyTorch: the same recipe written with torch.optim.AdamW.

  python tools/bench/train.py                 # CPU: dim 512, 8 layers, 1024 tokens, fp32
  python tools/bench/train.py --preset 1.3b --frames 21 --height 60 --width 104 \
      --dtype bfloat16 --remat full --text-len 512 --peak-tflops 989   # GPU: 480x832x81 (2 x 21 latent frames)

Reports steps/s, tokens/s (both halves), model TFLOP/s (6 x forward FLOPs per token
count, i.e. fwd + bwd) and MFU against --peak-tflops. A last row trains SpaceTimePilot's
published subset only (the rest frozen: no weight gradients), on the same FLOP count.
``--variant remat=full`` (repeatable) adds a wan row with DiTConfig fields changed; ``xla=defaults``
in a variant compiles that row with XLA's default options instead of the ones stp-train uses
(stp_jax.parallel.mesh.platform_compiler_options: on CPU, YNNPACK for dots only).

On CPU every implementation is compiled and warmed first, then timed in interleaved rounds
(each round steps torch, then each stp_jax row, once), and *x torch* is the median over the
rounds of torch's time over the row's, with its quartiles: a slow spell of the machine falls
on both sides of the ratio. On GPU (or with ``--sequential``) each side is timed in one block
and torch is freed before jax starts, so that they do not share the device's memory.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import interleave, machine, paired_ratio, parse_args, table, timeit, write_json  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="", help="stp_jax preset (1.3b, 14b) instead of the mid-size CPU config")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--frames", type=int, default=2, help="latent frames per half (target and source)")
    ap.add_argument("--height", type=int, default=32, help="latent height (tokens = /2)")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--text-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--remat", default="none")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="one more stp_jax wan row with these DiTConfig fields changed (e.g. remat=full, "
                         "attention=xla; xla=defaults: XLA's default compile options); repeatable, timed in the "
                         "same rounds as the others")
    ap.add_argument("--sequential", action="store_true",
                    help="time each implementation's iterations in one block (the default on GPU, where torch and "
                         "jax would share the memory) instead of in interleaved rounds (the default on CPU)")
    ap.add_argument("--out", default="bench_out/train.json")
    args = parse_args(ap, argv)  # first: --host-malloc acts before JAX starts its backend

    import functools

    import jax
    import jax.numpy as jnp
    import torch
    from flax import linen as nn

    from stp_jax import train_step as ts
    from stp_jax.convert.core import StateDict, apply_table
    from stp_jax.convert.dit import abstract_params, dit_rules, to_original_layout
    from stp_jax.diffusion import flow
    from stp_jax.models.dit import DiTConfig, SpaceTimeDiT, dummy_inputs, forward_flops, preset
    from stp_jax.parallel import mesh as mesh_lib

    if args.preset:
        cfg = preset(args.preset, mode="wan", dtype=args.dtype, attention=args.attention, remat=args.remat)
    else:
        cfg = DiTConfig(dim=args.dim, ffn_dim=args.ffn, num_heads=args.heads, num_layers=args.layers, text_dim=512,
                        mode="wan", dtype=args.dtype, attention=args.attention, remat=args.remat)
    b, fh, hp, wp, s = args.batch, args.frames, args.height, args.width, args.text_len
    tokens = 2 * fh * (hp // 2) * (wp // 2)
    flops = 3 * forward_flops(cfg, tokens, s) * b  # fwd + bwd
    g = np.random.default_rng(0)
    target = g.standard_normal((b, fh, hp, wp, cfg.in_channels)).astype(np.float32)
    source = g.standard_normal((b, fh, hp, wp, cfg.in_channels)).astype(np.float32)
    ctx = g.standard_normal((b, s, cfg.text_dim)).astype(np.float32)
    variants = []
    for spec in args.variant:
        try:
            kv = dict(item.split("=", 1) for item in spec.split(","))
            xla = kv.pop("xla", "stp_jax")
            if xla not in ("stp_jax", "defaults"):
                raise ValueError(f"xla={xla}: expected stp_jax or defaults")
            variants.append((spec, cfg.replace(**{k: _literal(v) for k, v in kv.items()}), xla))
        except (ValueError, TypeError) as e:
            ap.error(f"--variant {spec!r}: expected KEY=VALUE[,KEY=VALUE] with DiTConfig fields ({e})")
    # interleaved rounds (common.interleave) on CPU: this box drifts by ±20 % over minutes, and
    # the ratio to torch is only trustworthy when both sides are timed in the same rounds
    interleaved = not args.sequential and jax.default_backend() == "cpu" and not torch.cuda.is_available()
    runners, results = {}, {}

    def measure(impl, mode, fn):
        if interleaved:
            runners[(impl, mode)] = fn
        else:
            results[(impl, mode)] = timeit(fn, iters=args.iters)

    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    ref = WanTransformer3DModel(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads,
                                attention_head_dim=cfg.head_dim, in_channels=cfg.in_channels,
                                out_channels=cfg.out_channels, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                                ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
                                qk_norm="rms_norm_across_heads", eps=cfg.eps)
    sd = {k: v.detach().float().numpy() for k, v in ref.state_dict().items()}
    params = apply_table(to_original_layout(StateDict.from_arrays(sd)), dit_rules(cfg), abstract_params(cfg), "bench",
                         dtype="float32")

    if not args.skip_torch:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        ref = ref.to(dev).train()
        if args.remat != "none":
            ref.enable_gradient_checkpointing()
        opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, weight_decay=0.01)
        sig_grid, t_grid, w_grid = (torch.from_numpy(a).to(dev) for a in flow.training_schedule(5.0))
        tt = torch.from_numpy(target.transpose(0, 4, 1, 2, 3)).to(dev)  # [B, C, F', H, W]
        st = torch.from_numpy(source.transpose(0, 4, 1, 2, 3)).to(dev)
        tc = torch.from_numpy(ctx).to(dev)
        autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

        def torch_step():
            i = torch.randint(0, sig_grid.shape[0], (b,), device=dev)
            sig, t, w = sig_grid[i], t_grid[i], w_grid[i]
            noise = torch.randn_like(tt)
            x = torch.cat([(1 - sig.view(-1, 1, 1, 1, 1)) * tt + sig.view(-1, 1, 1, 1, 1) * noise, st], dim=2)
            with autocast:
                pred = ref(x, t, tc, return_dict=False)[0]
            loss = ((pred[:, :, :fh].float() - (noise - tt)) ** 2).mean(dim=(1, 2, 3, 4)).mul(w).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
            opt.step()
            sync()

        measure(TORCH, "wan", torch_step)
        if not interleaved:
            del ref, opt

    def bench_jax(cfg, params, mode, trainable="all", xla="stp_jax"):
        model = SpaceTimeDiT(cfg)
        batch = {"target": jnp.asarray(target), "source": jnp.asarray(source), "context": jnp.asarray(ctx)}
        extra = {k: v for k, v in dummy_inputs(cfg, b, fh, hp, wp, s).items() if k in ("tgt_cam", "src_cam",
                                                                                      "tgt_time", "src_time")}
        batch.update(extra)
        params = jax.tree.map(jnp.copy, params)  # the step donates the state; callers reuse params
        opt = ts.make_optimizer(params, ts.OptimConfig(lr=1e-4, warmup=1, trainable=trainable), 1000)
        state = ts.init_state(params, opt)
        # the compile options stp-train uses (parallel.mesh), or XLA's defaults (--variant xla=defaults)
        copts = mesh_lib.platform_compiler_options(jax.default_backend()) if xla == "stp_jax" else None
        step = jax.jit(functools.partial(ts.train_step, model, opt), donate_argnums=0, compiler_options=copts)
        holder = {"state": state}

        def run():
            holder["state"], m = step(holder["state"], batch, jax.random.PRNGKey(0))
            m["loss"].block_until_ready()

        measure("stp_jax" if trainable == "all" else f"stp_jax, trainable={trainable}", mode, run)

    bench_jax(cfg, jax.device_put(params), "wan")
    for spec, vcfg, xla in variants:
        bench_jax(vcfg, jax.device_put(params), f"wan, {spec}", xla=xla)
    scfg = cfg.replace(mode="spacetimepilot")
    sparams = jax.jit(lambda: nn.unbox(SpaceTimeDiT(scfg).init(jax.random.PRNGKey(0),
                                                               **dummy_inputs(scfg, b, fh, hp, wp, s)))["params"])()
    bench_jax(scfg, sparams, "spacetimepilot")
    # the published fine-tuning recipe: camera/time modules + self-attention trained, the rest
    # frozen (no weight gradients for it). Same model FLOP count in the MFU column.
    bench_jax(scfg, sparams, "spacetimepilot", trainable="spacetimepilot")

    if interleaved:
        results = interleave(runners, iters=args.iters)
    rows = []
    ref_times = results.get((TORCH, "wan"), {}).get("times")
    for (impl, mode), r in results.items():
        tf = flops / r["median_s"] / 1e12
        row = {"impl": impl, "mode": mode, "ms/step": r["median_s"] * 1e3, "steps/s": 1 / r["median_s"],
               "tokens/s": b * tokens / r["median_s"], "TFLOP/s": tf, "cores": r["cores"],
               "MFU": tf / args.peak_tflops if args.peak_tflops else None, "times_s": r.get("times")}
        if (TORCH, "wan") in results:
            if ref_times is not None:  # per round: torch's time / ours, > 1 is faster than torch
                pr = paired_ratio(ref_times, r["times"])
                row["x torch"] = f"{pr['median']:.3f} ({pr['q1']:.3f}-{pr['q3']:.3f})"
            else:
                row["x torch"] = f"{results[(TORCH, 'wan')]['median_s'] / r['median_s']:.3f}"
        rows.append(row)
    cols = (["impl", "mode", "ms/step", "steps/s", "tokens/s", "TFLOP/s", "cores"] + (["MFU"] if args.peak_tflops else [])
            + (["x torch"] if (TORCH, "wan") in results else []))
    print(f"\n{'interleaved' if interleaved else 'sequential'} timing, {args.iters} rounds; x torch: torch's time / "
          "this row's" + (", median (quartiles) over the rounds" if interleaved else ", of the medians"))
    print(f"train step: DiT dim {cfg.dim}, {cfg.num_layers} layers, batch {b} x {tokens} tokens (target + source), "
          f"text {s}, {args.dtype}, remat {args.remat}; {flops / 1e9:.1f} GFLOP/step (fwd+bwd); "
          f"host malloc {machine()['host_malloc']}")
    print(table(rows, cols))
    write_json(args.out, {"machine": machine(), "config": cfg.to_dict(), "tokens": tokens, "batch": b,
                          "step_flops": flops, "rows": rows, "args": vars(args)})


TORCH = "diffusers + torch AdamW"


def _literal(v: str):
    import ast

    try:
        return ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v


if __name__ == "__main__":
    main()
