#!/usr/bin/env bash
# On a machine without network (a lent GPU machine): unpack the archive that bench/gpu_bundle.sh
# built, drop from it what the image already has at the same version, and run a command with the
# rest importable ahead of the image (only what the image lacks or has at another version).
#
#   bench/gpu_install.sh ARCHIVE [TARGET_DIR] -- COMMAND [ARGS...]    # TARGET_DIR: /tmp/sps-site
#
# In COMMAND's environment: PYTHONPATH=TARGET_DIR/site:<repo>, BUNDLED_TOKENIZER_DIR (the bundled
# model's tokenizer files; tests/test_gpu.py and bench/gpu_check.sh read it). PYTHON names the
# interpreter (default python3, the image's).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
archive=$(realpath "$1")
shift
target=/tmp/sps-site
if [[ $# -gt 0 && $1 != -- ]]; then target=$1 && shift; fi
[[ ${1:-} == -- ]] && shift
python=${PYTHON:-python3}
# Unpack once per archive: a rerun on a warm machine skips the minute of unpacking.
stamp="$target/.from-$(stat -c %s-%Y "$archive")"
if [[ ! -e $stamp ]]; then
  rm -rf "$target" && mkdir -p "$target"
  # The archive is one xz tar per distribution back to back: --ignore-zeros reads past each end.
  tar --ignore-zeros -xJf "$archive" -C "$target"
  # Run before the site is on the path, so the image's own distributions are what it compares.
  env -u PYTHONPATH "$python" "$repo/bench/gpu_bundle.py" keep "$target/site"
  touch "$stamp"
fi
export PYTHONPATH="$target/site:$repo${PYTHONPATH:+:$PYTHONPATH}"
export BUNDLED_TOKENIZER_DIR="$target/tokenizer"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
[[ $# -eq 0 ]] || exec "$@"
