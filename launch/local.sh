#!/usr/bin/env bash
# Run stp-train / stp-sample on this machine, optionally as N local processes (a CPU
# "cluster" over loopback with gloo collectives, or one process per local GPU).
#   NPROC=2 DEVICES_PER_PROC=2 bash launch/local.sh stp-train --config tiny_camxtime:smoke --workdir runs/mp
# Variables: NPROC (processes, default 1), DEVICES_PER_PROC (simulated CPU devices each; CPU only),
#            PORT (coordinator port, default 12355), JAX_PLATFORMS (default: JAX's choice).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/_venv.sh
NPROC=${NPROC:-1}
PORT=${PORT:-12355}
if [ "$NPROC" -eq 1 ]; then exec "$@"; fi
if [ -n "${DEVICES_PER_PROC:-}" ]; then
  export XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES_PER_PROC" JAX_PLATFORMS=cpu STP_CPU_COLLECTIVES=gloo
fi
pids=()
for ((i = 0; i < NPROC; i++)); do
  STP_COORDINATOR=127.0.0.1:$PORT STP_NUM_PROCESSES=$NPROC STP_PROCESS_ID=$i "$@" \
    > >(sed "s/^/[p$i] /") 2>&1 &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
