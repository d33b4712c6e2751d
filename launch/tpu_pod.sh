#!/usr/bin/env bash
# Train or sample on a Cloud TPU VM slice: create (or reuse) it, install stp_jax on every
# worker, run the command on all workers at once, stream the logs, and optionally delete it.
#
#   TPU_NAME=stp-v5p64 ZONE=us-east5-a ACCELERATOR=v5p-64 \
#     bash launch/tpu_pod.sh stp-train --config stp_1_3b --workdir gs://my-bucket/runs/stp13b \
#       --set init_from=gs://my-bucket/ckpt/wan13b --set data.source=latents --set data.latents_dir=gs://...
#
# Variables: TPU_NAME, ZONE, ACCELERATOR (v5p-8, v5p-64, v6e-16...), RUNTIME (TPU software
# version, default v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e, tpu-ubuntu2204-base else),
# PROJECT (gcloud project, default: the configured one), SPOT=1 (preemptible capacity; stp-train
# saves on SIGTERM and resumes when run again), DELETE=1 (delete the slice afterwards),
# SOURCE=copy|pip (copy this checkout to the workers and install the pinned versions of
# requirements.lock minus its CPU torch wheel, which only conversion needs; or pip install PIP_SPEC).
# Check first that the step fits: stp-aot --config ... --topology $ACCELERATOR
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${ACCELERATOR:?set ACCELERATOR, e.g. v5p-64}"
[ $# -gt 0 ] || { echo "usage: launch/tpu_pod.sh stp-train|stp-sample ARGS..." >&2; exit 2; }
cd "$(dirname "$0")/.."
case "$ACCELERATOR" in
  v5p*) RUNTIME=${RUNTIME:-v2-alpha-tpuv5} ;;
  v6e*) RUNTIME=${RUNTIME:-v2-alpha-tpuv6e} ;;
  *) RUNTIME=${RUNTIME:-tpu-ubuntu2204-base} ;;
esac
G=(gcloud compute tpus tpu-vm)
P=(); [ -n "${PROJECT:-}" ] && P=(--project "$PROJECT")
if ! "${G[@]}" describe "$TPU_NAME" --zone "$ZONE" "${P[@]}" >/dev/null 2>&1; then
  echo "[tpu_pod] creating $TPU_NAME ($ACCELERATOR, $RUNTIME) in $ZONE"
  "${G[@]}" create "$TPU_NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR" --version "$RUNTIME" \
    "${P[@]}" ${SPOT:+--spot}
fi
ssh_all() { "${G[@]}" ssh "$TPU_NAME" --zone "$ZONE" "${P[@]}" --worker=all --command "$1"; }
if [ "${SOURCE:-copy}" = copy ]; then
  tar czf /tmp/stp_jax_src.tgz --exclude=.venv --exclude=runs --exclude=.git .
  "${G[@]}" scp /tmp/stp_jax_src.tgz "$TPU_NAME":~/ --zone "$ZONE" "${P[@]}" --worker=all
  ssh_all "mkdir -p ~/stp_jax && tar xzf ~/stp_jax_src.tgz -C ~/stp_jax && cd ~/stp_jax && \
    grep -v '^torch==' requirements.lock > /tmp/stp_req.txt && \
    python3 -m pip install -q -r /tmp/stp_req.txt && python3 -m pip install -q --no-deps -e ."
else
  ssh_all "python3 -m pip install -q '${PIP_SPEC:?set PIP_SPEC, e.g. git+https://.../stp_jax}' 'stp_jax[tpu]'"
fi
# Every worker runs the same command; JAX finds its peers (stp_jax.parallel.distributed).
CMD=$(printf '%q ' "$@")
set +e
ssh_all "cd ~/stp_jax 2>/dev/null || cd ~; export PATH=\$HOME/.local/bin:\$PATH; $CMD" 2>&1 | tee "tpu_pod_${TPU_NAME}.log"
status=${PIPESTATUS[0]}
set -e
if [ "${DELETE:-0}" = 1 ]; then "${G[@]}" delete "$TPU_NAME" --zone "$ZONE" "${P[@]}" --quiet; fi
exit "$status"
