"""Shared bench plumbing: model choice, the machine's own ceilings, a peak-RSS sampler, table printing."""

from __future__ import annotations

import os
import platform
import threading
import time
from contextlib import contextmanager

import torch

from trainable.data.splits import DataSplit

# The HumanEval-only split (train/val/test 64/40/60) bench/README.md's train and eval figures were
# measured on, before trials trained on MBPP: kept so those figures can be re-measured.
OLD_SPLIT = DataSplit(64, 40, 60)

QWEN_05B_SHAPE = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
)


def load_bench_model(which: str, dtype: torch.dtype, device: str | None = None, tokenizer_dir: str | None = None):
    """`bundled`, `random-0.5b` (Qwen2.5-Coder-0.5B's exact shape, random weights, the bundled
    tokenizer or the one in `tokenizer_dir`), or any model reference trainable.model.loading accepts."""
    from trainable.model.loading import LoadedModel, ModelRef, default_device, load_model

    device = device or str(default_device())
    if which != "random-0.5b":
        return load_model(which, device=device, dtype=dtype)
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from trainable.model.bundled import bundled_checkpoint_dir

    # A GPU machine without the bundled model's parts gets the tokenizer files alone (11 MB).
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or bundled_checkpoint_dir())
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN_05B_SHAPE)).to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, ModelRef(which, "local", which), {"name": which})


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_seconds(fn, repeat: int, warmup: int = 0, device: str = "cpu") -> float:
    """Seconds per call, best of `repeat` single calls after `warmup` calls (best-of: a ceiling is
    what the machine CAN do; a neighbour's burst only ever slows a call down)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return best


def ceilings(device: str = "cpu") -> dict:
    """The machine's own limits, measured in this process: a large matrix product in fp32 and in
    bf16 (FLOP/s) and a large copy (bytes read + written per second). On a CPU, with the threads
    torch uses (set them before calling); a GEMM is the best case a transformer's matmuls can
    reach, a copy the most bytes a memory-bound step (decoding) can move."""
    cuda = device.startswith("cuda")
    n, copy_numel = (8192, 2**30) if cuda else (2048, 2**27)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
    fp32 = 2 * n**3 / best_seconds(lambda: a @ b, 3, 1, device)
    # (the same size in bf16: a smaller product measured 56 GFLOP/s on a CPU without AMX, below
    # what the model's own bf16 matmuls reached there - not a ceiling)
    a16, b16 = a.bfloat16(), b.bfloat16()
    bf16 = 2 * n**3 / best_seconds(lambda: a16 @ b16, 3, 1, device)
    src = torch.empty(copy_numel, dtype=torch.uint16, device=device).fill_(1)  # 2 GiB GPU, 256 MiB CPU
    dst = torch.empty_like(src)
    copy = 2 * src.numel() * 2 / best_seconds(lambda: dst.copy_(src), 5, 1, device)
    return {"fp32_flops": fp32, "bf16_flops": bf16, "copy_bytes": copy}


def describe_ceilings(c: dict) -> str:
    unit, scale = ("TFLOP/s", 1e12) if c["bf16_flops"] > 1e13 else ("GFLOP/s", 1e9)
    return (
        f"ceilings measured here: fp32 GEMM {c['fp32_flops'] / scale:,.1f} {unit}, bf16 GEMM "
        f"{c['bf16_flops'] / scale:,.1f} {unit}, copy {c['copy_bytes'] / 1e9:,.1f} GB/s"
    )


def matmul_params(model) -> int:
    """Parameters every token passes through as matrix products: the transformer blocks, without
    the input embedding (a table lookup) and the output layer (our training step applies it to
    target positions only). Leaving the output layer out makes every FLOP figure a lower bound."""
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


# The work models behind every "% of ceiling" (N = the frozen model's block parameters, ~358M of
# Qwen2.5-Coder-0.5B's 494M): a training token costs a forward (2N FLOP) and a backward through
# the activations only (~2N; frozen weights get no gradients); a decoded token costs a forward
# (2N); attention's own products are left out (small at these lengths). A decoding step reads
# every weight once for the whole batch.
def train_flop_per_token(model) -> float:
    return 4.0 * matmul_params(model)


def decode_flop_per_token(model) -> float:
    return 2.0 * matmul_params(model)


def decode_bytes_per_forward(model) -> int:
    """Bytes of weights one decoding forward reads: all of them but the input embedding, of which
    it reads a row per token (unless the output layer shares it, and reads it whole)."""
    embedding = model.get_input_embeddings().weight
    tied = embedding is model.get_output_embeddings().weight
    skip = set() if tied else {id(embedding)}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)


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


def cpu_flags() -> str:
    """The CPU features every CPU figure depends on (the dtype probe keys its cache on them too)."""
    from trainable.dtype_probe import MATTERING_FLAGS
    from trainable.model.loading import cpu_flags as flags_of_this_cpu

    flags = flags_of_this_cpu()
    return " ".join(f if f in flags else f"no {f}" for f in MATTERING_FLAGS)


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores ({cpu_flags()}), {gpu}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}"
    )


def print_table(headers: list[str], rows: list[list]) -> None:
    cells = [headers] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
