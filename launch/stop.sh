#!/usr/bin/env bash
# Stops training on every worker with SIGTERM: bert_jax saves a checkpoint at a step all hosts agree on and
# exits 0 (the same path as a TPU preemption). Rerun launch/run.sh with the same arguments to resume.
#
#   launch/stop.sh NAME ZONE
set -euo pipefail
NAME=${1:?usage: stop.sh NAME ZONE}
ZONE=${2:?zone}
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all \
  --command="pkill -TERM -f 'python -m bert_jax.main' || true"
