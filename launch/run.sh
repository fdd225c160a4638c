#!/usr/bin/env bash
# Runs the same bert_jax command on every worker of a TPU VM / pod slice (JAX's distributed runtime finds
# the other workers by itself). Arguments after the zone go to `python -m bert_jax.main`.
#
#   launch/run.sh NAME ZONE --config=configs/bert_base.py --workdir=gs://BUCKET/bert_base \
#       --config.data.input_pattern='gs://BUCKET/wiki/*.txt' --config.data.vocab_file=gs://BUCKET/vocab.txt \
#       --config.dtype=bfloat16
#
# The command runs under nohup, logging to ~/bert_jax.log on each worker, so a dropped ssh session does not
# stop training; `launch/run.sh NAME ZONE --tail` shows worker 0's log. Rerunning the same command resumes
# from the workdir's latest checkpoint.
set -euo pipefail
NAME=${1:?usage: run.sh NAME ZONE ARGS...}
ZONE=${2:?zone}
shift 2
if [[ "${1:-}" == "--tail" ]]; then
  exec gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=0 --command="tail -f ~/bert_jax.log"
fi
ARGS=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="
  cd bert_jax && . .venv/bin/activate
  nohup python -m bert_jax.main $ARGS > ~/bert_jax.log 2>&1 &
  echo \"worker \$(hostname): started (pid \$!)\"
"
