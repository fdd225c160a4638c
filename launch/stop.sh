#!/usr/bin/env bash
# Stops training on every worker with SIGTERM: bert_jax saves a checkpoint at a step all hosts agree on and
# exits 0 (the same path as a TPU preemption). Rerun launch/run.sh with the same arguments to resume.
#
#   launch/stop.sh [--dry-run] NAME ZONE   (--dry-run prints the command)
set -euo pipefail
. "$(dirname "$0")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
NAME=${1:?usage: stop.sh [--dry-run] NAME ZONE}
ZONE=${2:?zone}
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all \
  --command="pkill -TERM -f 'python -m bert_jax.main' || true"
