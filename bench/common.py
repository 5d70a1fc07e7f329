"""Shared bench plumbing: model choice, a peak-RSS sampler, table printing."""
from __future__ import annotations

import os
import platform
import threading
import time
from contextlib import contextmanager

import torch

from trainable.data import DataSplit

# The HumanEval-only split (train/val/test 64/40/60) bench/README.md's train and eval figures were
# measured on, before trials trained on MBPP: kept so those figures can be re-measured.
OLD_SPLIT = DataSplit(64, 40, 60)

QWEN_05B_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                      num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                      tie_word_embeddings=True, rope_theta=1000000.0)


def load_bench_model(which: str, dtype: torch.dtype, device: str | None = None, tokenizer_dir: str | None = None):
    """`bundled`, `random-0.5b` (Qwen2.5-Coder-0.5B's exact shape, random weights, the bundled
    tokenizer or the one in `tokenizer_dir`), or any model reference trainable.model accepts."""
    from trainable.model import LoadedModel, ModelRef, default_device, load_model

    device = device or str(default_device())
    if which != "random-0.5b":
        return load_model(which, device=device, dtype=dtype)
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from trainable.bundled import bundled_checkpoint_dir

    # A GPU machine without the bundled model's parts gets the tokenizer files alone (11 MB).
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or bundled_checkpoint_dir())
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN_05B_SHAPE)).to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, ModelRef(which, "local", which), {"name": which})


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss():
    """Peak resident memory above the level at entry, sampled every 5 ms (CPU runs)."""
    result = {"peak": 0}
    start, stop = rss_bytes(), threading.Event()

    def sample():
        while not stop.is_set():
            result["peak"] = max(result["peak"], rss_bytes() - start)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["peak"] = max(result["peak"], rss_bytes() - start)
        if torch.cuda.is_available():
            result["cuda_peak"] = torch.cuda.max_memory_allocated()


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, "
            f"torch {torch.__version__}, threads {torch.get_num_threads()}")


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
