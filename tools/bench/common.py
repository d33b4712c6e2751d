"""Shared helpers for the benchmarks in tools/bench (timing, tables, JSON, machine info)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path


def timeit(fn, *, warmup: int = 1, iters: int = 5) -> dict:
    """Wall-clock seconds of ``fn()`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times, cpu = [], 0.0
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu += time.process_time() - c0
    # cores: the process's CPU seconds (all threads) per wall second while timed; on a CPU
    # backend it shows how much of the machine the implementation keeps busy
    return {"median_s": statistics.median(times), "min_s": min(times), "iters": iters, "cores": cpu / sum(times)}


def interleave(fns: dict, *, warmup: int = 2, iters: int = 5, clock=time.perf_counter) -> dict:
    """Time several implementations in rounds: each round calls every ``fns[name]()`` once, in
    order, so a slow spell of the machine (this 2-core box drifts by ±20 % over minutes) falls
    on all of them alike. Returns ``{name: timeit's dict + "times": [s per round]}``; pair two of
    them with :func:`paired_ratio`. Two warm-up calls each by default: on XLA:CPU an executable's
    first calls after compiling can run 10-40 % slow (its buffers' first touches)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    cpu = dict.fromkeys(fns, 0.0)
    for _ in range(iters):
        for name, fn in fns.items():
            t0, c0 = clock(), time.process_time()
            fn()
            times[name].append(clock() - t0)
            cpu[name] += time.process_time() - c0
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "iters": iters,
                   "cores": cpu[name] / sum(t) if sum(t) > 0 else 0.0, "times": t} for name, t in times.items()}


def paired_ratio(ref: list[float], other: list[float]) -> dict:
    """Speed of ``other`` relative to ``ref`` (ref's time / other's, > 1: other is faster) per
    round of :func:`interleave`: the median and the quartiles over the rounds."""
    if len(ref) != len(other) or not ref:
        raise ValueError(f"paired_ratio needs the same number of rounds on both sides, got {len(ref)} and {len(other)}")
    r = sorted(a / b for a, b in zip(ref, other))
    q = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else [r[0], r[0], r[0]]
    return {"median": statistics.median(r), "q1": q[0], "q3": q[2]}


_HOST_MALLOC = {"result": "not asked"}


def parse_args(ap, argv=None):
    """``ap.parse_args(argv)`` with the benchmarks' shared ``--host-malloc`` option, applied before JAX starts its
    backend (call this first): reuse (stp_jax.parallel.host.reuse_host_memory, what the console scripts do) or
    default (glibc's own settings: XLA:CPU's per-run buffers are mapped afresh on every run). Recorded in
    machine()."""
    ap.add_argument("--host-malloc", choices=("reuse", "default"), default="reuse",
                    help="reuse: keep XLA:CPU's per-run buffers mapped between runs, as stp-train does "
                         "(stp_jax/parallel/host.py); default: glibc's own malloc settings (the 'before')")
    args = ap.parse_args(argv)
    if args.host_malloc == "reuse":
        from stp_jax.parallel.host import reuse_host_memory

        _HOST_MALLOC["result"] = f"reuse: {reuse_host_memory()}"
    else:
        _HOST_MALLOC["result"] = "default"
    return args


def machine() -> dict:
    import jax

    dev = jax.devices()[0]
    info = {"platform": dev.platform, "device": getattr(dev, "device_kind", str(dev)), "jax": jax.__version__,
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "host_malloc": _HOST_MALLOC["result"]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def table(rows: list[dict], cols: list[str]) -> str:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line([_fmt(r.get(c)) for c in cols]) for r in rows]
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_json(path: str | os.PathLike, payload: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2))
    print(f"wrote {p}")
