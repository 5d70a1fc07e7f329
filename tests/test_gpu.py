"""On a CUDA machine: four real trials of the default shape served by one engine on one GPU.

`pytest -m gpu` (skips without CUDA). A random-init model of Qwen2.5-Coder-0.5B's exact shape (a
GPU machine may have no hub access; weights do not change the cost of a step) with the bundled
model's tokenizer (or $BUNDLED_TOKENIZER_DIR's), a real local Ray, `python -m search.run` as a
user runs it. Asserts that all four trials ran at once, that the engine fused their training
steps (fewer fused steps than trial steps), and that its peak GPU memory holds the bf16 model
once: more than its weights, less than two copies of them plus a quarter of the device.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from search_helpers import run_search

pytestmark = pytest.mark.gpu

SPACE = """\
base: default
search:
  method: null
  encoder_hidden_size: null
  num_virtual_tokens: {choice: [8, 16]}
  init: {choice: [random]}
  learning_rate: {loguniform: [1.0e-3, 3.0e-1]}
fixed: {max_new_tokens: 64, eval_batch_size: 8, dtype: auto}
data: {train: {source: humaneval, n: 16}, val: {source: humaneval, n: 8}, test: {source: humaneval, n: 8}}
budget: {num_samples: 4, max_epochs: 1, grace_period: 1, reduction_factor: 2, max_concurrent: 4}
resources: {cpu: 1, gpu: 1}
"""


@pytest.fixture(scope="module")
def random_qwen_05b(tmp_path_factory):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from bench.common import QWEN_05B_SHAPE
    from trainable.model.bundled import bundled_checkpoint_dir

    out = tmp_path_factory.mktemp("random-qwen-0.5b")
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**QWEN_05B_SHAPE)).to(torch.bfloat16).save_pretrained(out)
    # A GPU machine gets the bundled model's tokenizer files alone (bench/gpu_install.sh names them).
    tokenizer_dir = os.environ.get("BUNDLED_TOKENIZER_DIR") or bundled_checkpoint_dir()
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_four_trials_share_one_model_on_one_gpu(tmp_path, random_qwen_05b):
    space = tmp_path / "gpu4.yaml"
    space.write_text(SPACE)
    proc = run_search(tmp_path, space, random_qwen_05b, "gpu4", timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [
        json.loads(path.read_text().splitlines()[-1]) for path in (tmp_path / "runs" / "gpu4").glob("*/result.json")
    ]
    assert len(results) == 4, f"{len(results)} trials reported"
    spans = [(r["timestamp"] - r["time_total_s"], r["timestamp"]) for r in results]
    assert max(start for start, _ in spans) < min(end for _, end in spans), f"not all four ran at once: {spans}"
    for r in results:
        assert r["dtype"] == "bfloat16", r["dtype_reason"]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("engine 0:")]
    steps, fused = (int(w) for w in line.split(":")[1].split()[:7:6])  # "N training steps ... in M fused"
    assert fused < steps, line
    peak = float(line.rsplit("peak memory ", 1)[1].split()[0])
    quarter = torch.cuda.get_device_properties(0).total_memory / 2**30 / 4
    # the bf16 weights alone are ~0.9 GiB: less means the model was not on the GPU
    assert 0.9 < peak < 2 * 0.9 + quarter, (peak, quarter)
