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


def machine() -> dict:
    import jax

    dev = jax.devices()[0]
    info = {"platform": dev.platform, "device": getattr(dev, "device_kind", str(dev)), "jax": jax.__version__,
            "cpu_count": os.cpu_count(), "python": platform.python_version()}
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
