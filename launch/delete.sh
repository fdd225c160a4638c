#!/usr/bin/env bash
# Deletes the TPU VM / pod slice (checkpoints and metrics live in the gs:// workdir and survive it).
#
#   launch/delete.sh [--dry-run] NAME ZONE   (--dry-run prints the command)
set -euo pipefail
. "$(dirname "$0")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
NAME=${1:?usage: delete.sh [--dry-run] NAME ZONE}
ZONE=${2:?zone}
run gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet
