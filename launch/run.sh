#!/usr/bin/env bash
# Checks that the first train step compiles and fits TOPOLOGY (here, no TPU needed), then runs the same bert_jax
# command on every worker of the TPU VM / pod slice (JAX's distributed runtime finds the other workers by itself).
# Arguments after the topology go to `python -m bert_jax.main`; its --config flags also go to the check.
#
#   launch/run.sh [--dry-run] NAME ZONE TOPOLOGY --config=configs/bert_base.py --workdir=gs://BUCKET/bert_base \
#       --config.data.input_pattern='gs://BUCKET/wiki/*.txt' --config.vocab_file=gs://BUCKET/vocab.txt \
#       --config.dtype=bfloat16
#   launch/run.sh NAME ZONE --tail            # follow worker 0's log
#
# The command runs under nohup, logging to ~/bert_jax.log on each worker (its pid in ~/bert_jax.pid, which
# launch/stop.sh signals), so a dropped ssh session does not stop training. Rerunning the same command resumes
# from the workdir's latest checkpoint. The check compiles only the program the run starts with (phase 1's
# train step, one of the three programs); CHECK=all also compiles phase 2 and the eval step (several
# minutes), SKIP_CHECK=1 skips it (e.g. without libtpu on this machine). --dry-run prints the commands.
set -euo pipefail
. "$(dirname "$0")/common.sh"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
NAME=${1:?usage: run.sh [--dry-run] NAME ZONE TOPOLOGY ARGS... | run.sh NAME ZONE --tail}
ZONE=${2:?zone}
if [[ "${3:-}" == "--tail" ]]; then
  run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=0 --command="tail -f ~/bert_jax.log"
  exit
fi
TOPOLOGY=${3:?topology, e.g. v5e-16 or v4-32}
shift 3
CHECK_ARGS=()
for arg in "$@"; do
  case "$arg" in --config=* | --config.*) CHECK_ARGS+=("$arg") ;; esac
done
if [[ "${SKIP_CHECK:-0}" != 1 ]]; then
  # Exit status 1 (does not fit) or 2 (bad input) stops here, before the slice is used.
  if [[ "${CHECK:-first}" == all ]]; then PROGRAMS=phase1,phase2,eval; else PROGRAMS=phase1; fi
  run python -m bert_jax.compile --topology="$TOPOLOGY" --programs="$PROGRAMS" "${CHECK_ARGS[@]}"
fi
ARGS=$(printf '%q ' "$@")
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="
  cd bert_jax && . .venv/bin/activate
  if test -f ~/bert_jax.pid && kill -0 \$(cat ~/bert_jax.pid) 2>/dev/null; then
    echo \"worker \$(hostname): a run is already going (pid \$(cat ~/bert_jax.pid)); launch/stop.sh stops it\"; exit 1
  fi
  nohup python -m bert_jax.main $ARGS > ~/bert_jax.log 2>&1 &
  echo \$! > ~/bert_jax.pid
  echo \"worker \$(hostname): started (pid \$!)\"
"
