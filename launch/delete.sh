#!/usr/bin/env bash
# Deletes the TPU VM / pod slice (checkpoints and metrics live in the gs:// workdir and survive it).
#
#   launch/delete.sh NAME ZONE
set -euo pipefail
NAME=${1:?usage: delete.sh NAME ZONE}
ZONE=${2:?zone}
gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet
