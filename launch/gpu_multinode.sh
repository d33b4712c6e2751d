#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per GPU, the coordinator on the first node.
#
#   sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=8 launch/gpu_multinode.sh \
#     stp-train --config stp_14b --workdir /shared/runs/stp14b --set mesh.fsdp=32
#
# Variables: PORT (coordinator port, default 12355), VENV (a prepared virtualenv on the shared
# filesystem with stp_jax and jax[cuda] installed; default .venv of this checkout).
# Each task gets STP_COORDINATOR=<first node>:PORT, STP_NUM_PROCESSES=$SLURM_NTASKS,
# STP_PROCESS_ID=$SLURM_PROCID and sees only its own GPU (CUDA_VISIBLE_DEVICES=local rank).
#SBATCH --job-name=stp_jax
#SBATCH --output=stp_jax_%j.log
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: sbatch launch/gpu_multinode.sh stp-train|stp-sample ARGS..." >&2; exit 2; }
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
source "${VENV:-.venv}/bin/activate"
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
export STP_COORDINATOR="$HEAD:${PORT:-12355}"
srun --kill-on-bad-exit=1 bash -c '
  export STP_NUM_PROCESSES=$SLURM_NTASKS STP_PROCESS_ID=$SLURM_PROCID CUDA_VISIBLE_DEVICES=$SLURM_LOCALID
  exec "$@"' _ "$@"
