"""The README / docs/SCALING.md tables: ``stp-aot`` over the shipped pod configs and topologies.

Every row is its own ``python -m stp_jax.cli aot ... --json`` process (a compiler abort in one row
cannot take the others down; it is reported as such). One clip per data-parallel group:
global batch = chips / context.

  python tools/aot_table.py                 # the config x topology table (train step)
  python tools/aot_table.py --remat         # stp_1_3b on v5p-8 under each remat policy
  python tools/aot_table.py --only stp_1_3b --topologies v5p-8
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = [("stp_1_3b", "480×832×81"), ("stp_1_3b:720p", "720×1280×81"), ("stp_14b", "480×832×81"),
           ("stp_14b:720p", "720×1280×81")]
TOPOLOGIES = ["v5p-8", "v5p-64", "v6e-16"]
REMATS = ["none", "dots_no_batch", "dots", "offload_dots", "full"]


def run_row(config: str, topology: str, sets: list[str], what: str = "train", timeout: int = 1800) -> dict:
    from stp_jax import aot
    from stp_jax import config as configs

    context = configs.load(config).mesh.get("context", 1)
    batch = max(aot.parse_topology(topology).chips // context, 1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "stp_jax.cli", "aot", "--config", config, "--topology", topology, "--what", what,
               "--set", f"data.global_batch={batch}", *[a for s in sets for a in ("--set", s)], "--json", str(out)]
        t0 = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        row = {"config": config, "topology": topology, "what": what, "sets": sets, "global_batch": batch,
               "rc": p.returncode, "compile_s": round(time.time() - t0, 1),
               "command": "stp-aot " + " ".join(cmd[3:-2])}
        if out.exists():
            row.update(json.loads(out.read_text()))
        else:
            tail = [line for line in (p.stderr + p.stdout).splitlines() if "Check failed" in line or "error" in line]
            row["error"] = (tail[-1] if tail else (p.stderr or p.stdout).strip().splitlines()[-1])[-240:]
    return row


def markdown(rows: list[dict], label: str) -> str:
    out = [f"| {label} | clip | topology (chips) | global batch | per-chip memory (args + temp + out − donated) "
           "| fits | step at 40% MFU | compile |", "|---|---|---|---|---|---|---|---|"]
    clips = dict(CONFIGS)
    for r in rows:
        what = r["config"] if label == "config" else ", ".join(r["sets"])
        clip = clips.get(r["config"], "")
        chips = r.get("chips", "?")
        if "error" in r:
            mem, fits, step = f"compiler error: `{r['error']}`", "?", ""
        elif r["argument_gib"] != r["argument_gib"]:  # NaN: refused for lack of HBM
            mem, fits, step = f"refused: temporaries alone {r['temp_gib']:.0f} GiB of {r['hbm_gib']:.0f}", "no", ""
        else:
            mem = (f"{r['total_gib']:.1f} GiB of {r['hbm_gib']:.0f} ({r['argument_gib']:.1f} + {r['temp_gib']:.1f} + "
                   f"{r['output_gib']:.1f} − {r['alias_gib']:.1f})")
            fits, step = ("yes" if r["fits"] else "no"), f"{r['step_s_at_40']:.1f} s"
        out.append(f"| {what} | {clip} | {r['topology']} ({chips}) | {r['global_batch']} | {mem} | {fits} | {step} "
                   f"| {r['compile_s']:.0f} s |")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--remat", action="store_true", help="the remat comparison instead of the config table")
    p.add_argument("--only", help="configs, comma separated (default: all four)")
    p.add_argument("--topologies", default=",".join(TOPOLOGIES))
    p.add_argument("--what", default="train", choices=["train", "sample"])
    p.add_argument("--json", help="append every row (JSON lines) here")
    args = p.parse_args(argv)
    if args.remat:
        jobs = [("stp_1_3b", t, [f"model.remat={r}"]) for t in args.topologies.split(",") for r in REMATS]
    else:
        names = args.only.split(",") if args.only else [c for c, _ in CONFIGS]
        jobs = [(c, t, []) for c in names for t in args.topologies.split(",")]
    rows = []
    for config, topo, sets in jobs:
        row = run_row(config, topo, sets, args.what)
        rows.append(row)
        print(f"{config} {topo} {sets}: rc {row['rc']}, {row.get('total_gib', row.get('error'))}", file=sys.stderr,
              flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    print(markdown(rows, "remat" if args.remat else "config"))


if __name__ == "__main__":
    main()
