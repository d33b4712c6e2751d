#!/usr/bin/env bash
# The main job on the embedded default, from nothing: set up .venv, train the tiny
# SpaceTimePilot on procedural Cam×Time scenes (no downloads, no weights, CPU, 1400 steps in ~10 min of
# training: fixed-camera pairs, then 70% of them among camera-moving ones, docs/LEARNING.md §7-8, §25),
# evaluate retiming and camera control on held-out scenes beside the trivial baselines (time/camera errors against
# the ground-truth grid), and re-render one held-out video filmed from a still camera with
# bullet time, reverse and slow motion.
# Usage: bash tools/demo.sh [stp-train --set overrides...]     (WORKDIR=runs/demo by default)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/_venv.sh
export JAX_PLATFORMS=${JAX_PLATFORMS-cpu}  # the embedded default runs on the CPU (JAX_PLATFORMS= to use an accelerator)
WORKDIR=${WORKDIR:-runs/demo}
SECONDS=0

echo "== 1/3 train tiny_camxtime -> $WORKDIR"
stp-train --config tiny_camxtime --workdir "$WORKDIR" "$@"

echo "== 2/3 evaluate on 32 held-out scenes (fixed camera, the source's moving camera, camera paths)"
stp-eval --checkpoint "$WORKDIR" --scenes 32 --out "$WORKDIR/eval"

echo "== 3/3 re-render a held-out scene (one still camera): bullet time, reverse, slow motion"
stp-render --seed 1000000099 --frames 17 --cameras 1 --size 24x24 --out "$WORKDIR/held_out" >/dev/null
: > "$WORKDIR/held_out/jobs.jsonl"
for t in freeze_mid reverse slowmo_first_half; do
  echo "{\"name\": \"$t\", \"video\": \"$WORKDIR/held_out/source.mp4\", \"source_camera\": \"$WORKDIR/held_out/source_camera.json\", \"camera\": \"static\", \"time\": \"$t\"}" >> "$WORKDIR/held_out/jobs.jsonl"
done
stp-sample --checkpoint "$WORKDIR" --jobs "$WORKDIR/held_out/jobs.jsonl" --out "$WORKDIR/samples" --overwrite
echo
echo "done in ${SECONDS}s. Table: $WORKDIR/eval/eval.md; videos (source | truth | model): $WORKDIR/eval/*.mp4;"
echo "re-rendered held-out clip: $WORKDIR/samples/{freeze_mid,reverse,slowmo_first_half}/side_by_side.mp4"
