#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice and installs bert_jax (Python 3.12, jax[tpu]) on every worker.
#
#   launch/create.sh [--dry-run] NAME ZONE TOPOLOGY [RUNTIME]
#   launch/create.sh bert-v4-32 us-central2-b v4-32            # 4 hosts x 4 chips
#   launch/create.sh bert-v5e-16 us-west4-a v5e-16             # v5litepod-16, image v2-alpha-tpuv5-lite
#
# TOPOLOGY is spelled as for `python -m bert_jax.compile --topology` (v4-32, v5e-16, v5p-16, v6e-8); RUNTIME
# defaults to the generation's image. bert_jax needs Python >= 3.11 and the images ship 3.10 (ubuntu 22.04)
# or 3.12, so every worker installs uv and makes a Python 3.12 venv with it, whatever the image.
# Where the workers get bert_jax must be said, and reachable from them:
#   REPO_URL=https://github.com/YOU/bert_jax.git   a git URL the workers can clone without keys (not a local path,
#                                                 and not an ssh git@ remote: the workers hold no key), or
#   WHEEL=dist/bert_jax-0.1.0-py3-none-any.whl     a wheel built here (pip wheel --no-deps . -w dist), copied to
#                                                 every worker with gcloud scp (for unpublished changes).
# SPOT=1 for a spot VM (bert_jax saves on SIGTERM and resumes from the workdir on the next run). --dry-run prints
# the commands.
set -euo pipefail
. "$(dirname "$0")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
NAME=${1:?usage: create.sh [--dry-run] NAME ZONE TOPOLOGY [RUNTIME]}
ZONE=${2:?zone}
TOPOLOGY=${3:?topology, e.g. v5e-16 or v4-32}
ACCELERATOR=$(accelerator_type "$TOPOLOGY")
RUNTIME=${4:-$(runtime_version "$TOPOLOGY")}
REPO_URL=${REPO_URL:-}
WHEEL=${WHEEL:-}
if [[ -n "$WHEEL" ]]; then
  if [[ ! -f "$WHEEL" || "$WHEEL" != *.whl ]]; then
    echo "error: WHEEL=$WHEEL: no such .whl file (build one: pip wheel --no-deps . -w dist)" >&2; exit 2
  fi
elif [[ ! "$REPO_URL" =~ ^https?:// ]]; then
  echo "error: REPO_URL=${REPO_URL:-(unset)}: set REPO_URL to a git https:// URL the workers can clone, or WHEEL" \
    "to a wheel built with 'pip wheel --no-deps . -w dist' (a local path or ssh remote does not reach them)" >&2
  exit 2
fi
EXTRA=()
if [[ "${SPOT:-0}" == 1 ]]; then EXTRA+=(--spot); fi

run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
  --version="$RUNTIME" "${EXTRA[@]}"

if [[ -n "$WHEEL" ]]; then
  run gcloud compute tpus tpu-vm scp "$WHEEL" "$NAME:" --zone="$ZONE" --worker=all
  FETCH="mkdir -p bert_jax && cd bert_jax"
  INSTALL="uv pip install -q \"\$HOME/$(basename "$WHEEL")[tpu]\""
else
  FETCH="command -v git >/dev/null || (sudo apt-get update -qq && sudo apt-get install -y -qq git)
  test -d bert_jax || git clone $REPO_URL bert_jax
  cd bert_jax && git pull --ff-only"
  INSTALL="uv pip install -q -e '.[tpu]'"
fi

run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="
  set -e
  command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
  export PATH=\$HOME/.local/bin:\$PATH
  $FETCH
  uv venv --python 3.12 .venv && . .venv/bin/activate
  $INSTALL
  python -c 'import sys, jax; assert sys.version_info >= (3, 11); print(jax.process_index(), jax.local_device_count(), jax.device_count())'
"
