# Shared by the launch scripts: dry-run handling and the Cloud TPU names of a topology.
# Sourced, not run. `DRY_RUN=1` (the scripts' --dry-run) prints every command instead of running it.

# Runs "$@", or under --dry-run prints it as "+ " and its shell-quoted words (a word may span lines).
run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    local line="+" word
    for word in "$@"; do
      if [[ "$word" =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then
        line+=" $word"
      else
        line+=" '${word//\'/\'\\\'\'}'"
      fi
    done
    printf '%s\n' "$line"
  else
    "$@"
  fi
}

# The gcloud --accelerator-type of a topology as bert_jax.compile spells it (v5e-16 -> v5litepod-16).
accelerator_type() {
  case "$1" in
    v5e-*) echo "v5litepod-${1#v5e-}" ;;
    v4-* | v5p-* | v5litepod-* | v6e-*) echo "$1" ;;
    *) echo "error: topology $1: use the v4-32 / v5e-16 / v5p-16 / v6e-8 form here" >&2; return 1 ;;
  esac
}

# The TPU VM software image for a topology's generation (each has Python >= 3.10; create.sh adds 3.12 anyway).
runtime_version() {
  case "$1" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5e-* | v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
  esac
}
