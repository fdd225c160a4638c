#!/bin/bash
# One compile check of a bisection step, as run for docs/measurements/v6e-2026-12-06/README.md:
#   [TMO=900] [TOPO=v6e-8] [PROG=phase2] [CONFIG=configs/bert_large.py] [LOGS=/tmp/tpu_bisect/logs] \
#       run.sh PYTHON RESULTS_FILE NAME [--config.overrides...]
# appends "NAME | rc | wall seconds | overrides | per-program status" to RESULTS_FILE; each program's
# compiler log is LOGS/NAME/PROGRAM.log. A run that outlives TMO seconds is killed (rc 124): "no crash within".
PY=$1; RES=$2; NAME=$3; shift 3
HERE=$(cd "$(dirname "$0")" && pwd)
LOGS=${LOGS:-/tmp/tpu_bisect/logs}
mkdir -p "$LOGS"
cd "$HERE/../../.."
export PYTHONPATH=$PWD
start=$(date +%s)
out=$(nice -n 15 timeout "${TMO:-900}" "$PY" -m bert_jax.compile --config="${CONFIG:-configs/bert_large.py}" \
    --topology="${TOPO:-v6e-8}" --programs="${PROG:-phase2}" --json --child_logs="$LOGS/$NAME" "$@" \
    2>"$LOGS/$NAME.parent.err")
rc=$?
echo "$out" > "$LOGS/$NAME.json"
end=$(date +%s)
summary=$(echo "$out" | "$PY" "$HERE/summ.py")
echo "$NAME | rc=$rc | $((end-start)) s | $* | $summary" | tee -a "$RES"
