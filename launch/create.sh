#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice and installs bert_jax on every worker.
#
#   launch/create.sh NAME ZONE ACCELERATOR [RUNTIME]
#   launch/create.sh bert-v4-32 us-central2-b v4-32            # 4 hosts x 4 chips
#   launch/create.sh bert-v5e-8 us-west4-a v5litepod-8 v2-alpha-tpuv5-lite
#
# Set REPO_URL to clone from your fork (default: the directory's origin remote). Set SPOT=1 for a spot VM
# (preemptible: bert_jax saves on SIGTERM and resumes from the workdir on the next run).
set -euo pipefail
NAME=${1:?usage: create.sh NAME ZONE ACCELERATOR [RUNTIME]}
ZONE=${2:?zone}
ACCELERATOR=${3:?accelerator type, e.g. v4-32}
RUNTIME=${4:-tpu-ubuntu2204-base}
REPO_URL=${REPO_URL:-$(git -C "$(dirname "$0")/.." remote get-url origin)}
EXTRA=()
if [[ "${SPOT:-0}" == 1 ]]; then EXTRA+=(--spot); fi

gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
  --version="$RUNTIME" "${EXTRA[@]}"

# The same install on every worker: Python 3.12 venv, bert_jax with JAX for TPU.
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="
  set -e
  sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv git
  test -d bert_jax || git clone $REPO_URL bert_jax
  cd bert_jax && git pull --ff-only
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q --upgrade pip && pip install -q -e '.[tpu]'
  python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'
"
