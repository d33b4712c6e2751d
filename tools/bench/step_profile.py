"""Where a config's train step goes: ``stp-train``'s own jitted step (``Trainer.step``) on a batch from the
config's own loader, timed, then traced with ``jax.profiler`` and its device ops summed by name.

  python tools/bench/step_profile.py --config tiny_camxtime                     # the embedded default
  python tools/bench/step_profile.py --config tiny_camxtime --set model.copy_composite=4 \\
      --set data.composite_aux=true --set flow.composite_loss=0.1 --set model.composite_gate=moved

Reports the median step (``--iters`` timed steps after ``--warmup``), then the ops of ``--trace`` traced steps:
per op name (XLA's instruction names with their ``.N`` suffix dropped, so a fusion kind or an op type; with
``--scopes DEPTH``, per place in the model's code instead, from the compiled step's HLO metadata), the
milliseconds per step summed over the CPU's threads (so up to cores x the step), the share of all op time
and the count per step; ``--top`` rows. The batch is the loader's at ``--at-step`` (the curriculum's phase
there). ``--loader N`` also times N batches of the loader alone, in this process (``worker_count=0``): its CPU cost
per batch, which ``stp-train``'s loader worker takes from the same cores. Figures for docs/BENCHMARKS.md; no peer
here (the op breakdown explains a step; tools/bench/train.py compares one with PyTorch).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, parse_args, table, timeit, write_json  # noqa: E402

_TRANSFORMS = re.compile(r"(jvp|transpose|remat|checkpoint|vmap|pjit|jit|closed_call)\(([^()]*)\)")


def op_scopes(hlo_text: str, depth: int) -> dict:
    """Each instruction of a compiled module's text -> where in the code it comes from: its metadata op_name
    with the outer jit dropped, transform wrappers (jvp, vmap, ...) unwrapped, cut to ``depth`` path parts, and
    prefixed ``bwd`` when under a transpose (the backward pass) else ``fwd`` (so the optimizer's update counts as
    ``fwd``): {instruction name: scope}."""
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]+)\"", line)
        if not m:
            continue
        op = m.group(2)
        plain = op
        for _ in range(4):  # nested wrappers
            plain = _TRANSFORMS.sub(r"\2", plain)
        parts = plain.split("/")
        if op.startswith("jit("):  # the step's own jit: not a place in the model
            parts = parts[1:]
        parts = [p for p in parts if p and p not in ("while", "body", "closed_call", "checkpoint", "remat")]
        out[m.group(1)] = ("bwd " if "transpose(" in op else "fwd ") + "/".join(parts[:depth])
    return out


def op_times(trace_dir: Path, scopes: dict | None = None) -> tuple[dict, int]:
    """Sum the complete events of the perfetto trace under trace_dir by name (``.N`` dropped), over the threads
    of the host's XLA ops: {name: (total us, count)}, and the number of events. With ``scopes`` (op_scopes'),
    by scope instead (``?`` where an instruction has no metadata)."""
    files = sorted(trace_dir.rglob("*.trace.json.gz"))
    if not files:
        raise SystemExit(f"step_profile: no *.trace.json.gz under {trace_dir} (jax.profiler wrote nothing)")
    events = json.loads(gzip.decompress(files[-1].read_bytes()))
    events = events["traceEvents"] if isinstance(events, dict) else events
    names = {}  # (pid, tid) -> thread name
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            names[(e["pid"], e["tid"])] = e["args"]["name"]
    sums, n = collections.defaultdict(lambda: [0.0, 0]), 0
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        thread = names.get((e["pid"], e["tid"]), "")
        # host-side python / runtime bookkeeping is not the step's compute
        if "python" in thread.lower() or e["name"].startswith(("$", "PjRt", "Thunk")):
            continue
        args = e.get("args", {})
        if "hlo_op" not in args and "hlo_module" not in args and "long_name" not in args:
            continue
        if scopes is not None:
            name = scopes.get(args.get("hlo_op", ""), "?")
        else:
            name = re.sub(r"\.\d+$", "", args.get("hlo_op", e["name"]))
        sums[name][0] += e["dur"]
        sums[name][1] += 1
        n += 1
    return dict(sums), n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny_camxtime")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--at-step", type=int, default=400, help="the data curriculum's phase of this step")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--trace", type=int, default=5, help="steps traced")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--loader", type=int, default=0, help="also time this many loader batches (worker_count=0)")
    ap.add_argument("--scopes", type=int, default=0, metavar="DEPTH",
                    help="sum the ops by where in the code they come from (HLO metadata, DEPTH module-path parts, "
                         "forward and backward apart) instead of by op name")
    ap.add_argument("--json", default=None)
    args = parse_args(ap, argv)  # first: --host-malloc acts before JAX starts its backend

    import jax

    from stp_jax import config as config_lib
    from stp_jax.data import pipeline as pl
    from stp_jax.trainer import Trainer

    cfg = config_lib.load(args.config, args.set)
    tr = Trainer(cfg)
    tr.data_cfg = pl.prepare(tr.data_cfg, log=lambda *_: None)
    phase = pl.at_step(tr.data_cfg, args.at_step)
    batch = next(iter(pl.make_loader(dataclasses.replace(phase, worker_count=0))))  # no worker left prefetching
    loader_ms = None
    if args.loader:
        it = iter(pl.make_loader(dataclasses.replace(phase, worker_count=0)))
        next(it)  # compiles the renderer where the loader renders
        t0 = time.perf_counter()
        for _ in range(args.loader):
            next(it)
        loader_ms = 1e3 * (time.perf_counter() - t0) / args.loader
    rng = jax.random.PRNGKey(0)
    held = {"state": tr.init_state()}  # the step donates its state: each call replaces it

    def step():
        held["state"], m = tr.step(held["state"], batch, rng)
        jax.block_until_ready(m["loss"])

    t0 = time.perf_counter()
    step()
    compile_s = time.perf_counter() - t0
    timed = timeit(step, warmup=args.warmup, iters=args.iters)
    median_ms = 1e3 * timed["median_s"]
    scopes = None
    if args.scopes:  # the same program as the timed step: its instructions' metadata name their code
        with tr.mesh_context():
            hlo = tr.step_fn.lower(held["state"], tr.global_batch(batch), rng, tr.context).compile().as_text()
        scopes = op_scopes(hlo, args.scopes)
    sums, n = {}, 0
    if args.trace:  # --trace 0: the timing alone
        with tempfile.TemporaryDirectory() as d:
            with jax.profiler.trace(d, create_perfetto_trace=True):
                for _ in range(args.trace):
                    step()
            sums, n = op_times(Path(d), scopes)
    total = sum(v[0] for v in sums.values())
    cols = ["scope" if args.scopes else "op", "ms/step", "% of op time", "count/step"]
    rows = [dict(zip(cols, [name, f"{us / 1e3 / args.trace:.1f}", f"{100 * us / total:.1f}", f"{cnt / args.trace:.0f}"]))
            for name, (us, cnt) in sorted(sums.items(), key=lambda kv: -kv[1][0])[: args.top]]
    loader = f"; loader alone {loader_ms:.1f} ms/batch" if loader_ms is not None else ""
    traced = (f"; traced ops {total / 1e3 / args.trace:.1f} ms/step summed over threads ({n // args.trace} events/step)"
              if args.trace else "")
    print(f"{args.config} {' '.join(args.set)}: step median {median_ms:.1f} ms (min {1e3 * timed['min_s']:.1f}) over "
          f"{args.iters} on {timed['cores']:.2f} cores, first step (compile) {compile_s:.1f} s{traced}{loader}; "
          f"host malloc {machine()['host_malloc']}")
    if rows:
        print(table(rows, cols))
    if args.json:
        write_json(args.json, {"machine": machine(), "config": args.config, "overrides": args.set,
                               "median_ms": median_ms, "cores": timed["cores"], "compile_s": compile_s,
                               "loader_ms": loader_ms,
                               "op_ms_per_step": {k: v[0] / 1e3 / max(args.trace, 1) for k, v in sums.items()}})


if __name__ == "__main__":
    main()
