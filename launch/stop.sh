#!/usr/bin/env bash
# Stops the run launch/run.sh started on every worker (the pid in ~/bert_jax.pid; no other process) with
# SIGTERM: bert_jax saves a checkpoint at a step all hosts agree on and exits 75 (the same path as a TPU
# preemption). Rerun launch/run.sh with the same arguments to resume.
#
#   launch/stop.sh [--dry-run] NAME ZONE   (--dry-run prints the command)
set -euo pipefail
. "$(dirname "$0")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
NAME=${1:?usage: stop.sh [--dry-run] NAME ZONE}
ZONE=${2:?zone}
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all \
  --command='if test -f ~/bert_jax.pid && kill -TERM "$(cat ~/bert_jax.pid)" 2>/dev/null; then echo "$(hostname): stopping pid $(cat ~/bert_jax.pid)"; else echo "$(hostname): no run started by launch/run.sh is running"; fi'
