"""GPU figures against the GPU's own measured ceilings (needs CUDA; prints why and exits 0 without it).

    python bench/bench_gpu.py [--batch 8] [--seq 196] [--new-tokens 512] [--problems 164]
                              [--decode-batch 64] [--share 4] [--tokenizer DIR]

A random-init model of Qwen2.5-Coder-0.5B's exact shape in bf16 (a GPU machine may have no
weights; with random weights no sequence stops early, so decoding always runs `--new-tokens`
steps: we report tokens/s). Ceilings, measured in this process first: an 8192^3 bf16 matrix
product (TFLOP/s) and a 2 GiB device-to-device copy (bytes read + written per second), by
`bench.common.ceilings`, the same code the CPU benches use.

The models behind "% of ceiling":
- training, frozen model, soft prompt only: forward 2 x N FLOP per token (N = 494M parameters)
  + backward through the activations only (no weight gradients) ~2 x N -> ~2 GFLOP per token,
  against the bf16 GEMM ceiling.
- decoding: every step reads all weights once for the whole batch (+ the KV cache, small at
  these lengths): bytes per step ~ 2 x N, against the copy bandwidth.

`--share 4`: four processes, each one trial's work (train steps + decoding) on the same GPU, as
four Ray trials at 0.25 GPU would be: each one's peak CUDA memory and its start/end, so overlap
(all four running at once) is shown.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import (
    ceilings,
    decode_bytes_per_forward,
    load_bench_model,
    machine,
    print_table,
    train_flop_per_token,
)  # noqa: E402 - after the sys.path line above
from trainable.data.splits import load_problems  # noqa: E402 - after the sys.path line above
from trainable.decoding.generate import _Rows, generate, truncate_at_stop  # noqa: E402 - after the sys.path line above
from trainable.train import TrainExample, completion_loss  # noqa: E402 - after the sys.path line above


def _timed(fn, repeat: int = 10, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeat


def train_rate(loaded, batch: int, seq: int, steps: int = 20) -> float:
    """Tokens/s of our training step (soft prompt only, output layer on target positions)."""
    hidden = loaded.model.config.hidden_size
    soft = torch.nn.Parameter(torch.randn(16, hidden, device=loaded.device) * 0.02)
    optimizer = torch.optim.AdamW([soft], lr=1e-2)
    vocab = loaded.model.config.vocab_size
    examples = [TrainExample(torch.randint(0, vocab, (seq,)).tolist(), seq // 2) for _ in range(batch)]
    tokens = 0

    def step():
        nonlocal tokens
        loss, tokens = completion_loss(loaded, soft, examples)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds = _timed(step, repeat=steps)  # before reading `tokens`: the steps set it
    return tokens / seconds


def decode_rate(loaded, problems: int, new_tokens: int, batch: int) -> tuple[float, float]:
    """Tokens/s and weight bytes read per second of greedy decoding over HumanEval prompts."""
    prompts = [p["prompt"] for p in list(load_problems().values())[:problems]]
    loaded.model.generation_config.eos_token_id = None  # random weights: never stop early
    torch.cuda.synchronize()
    stats = generate(loaded, prompts, None, max_new_tokens=new_tokens, batch_size=batch).stats
    torch.cuda.synchronize()
    return stats.tokens_per_s, decode_bytes_per_forward(loaded.model) * stats.forwards / stats.seconds


@contextlib.contextmanager
def whole_row_stop_check():
    """The stop check before 2026-11-30, as the baseline: decode each row whole at every token."""

    def stopped(self, row: int) -> bool:
        return truncate_at_stop(self.text(row), self.stops[row]) != self.text(row)

    ours, _Rows.stopped = _Rows.stopped, stopped
    try:
        yield
    finally:
        _Rows.stopped = ours


def one_trial(args, tokenizer_dir: str | None, queue) -> None:
    """One trial's work in its own process (a Ray trial at a GPU fraction is one process)."""
    started = time.time()
    loaded = load_bench_model("random-0.5b", torch.bfloat16, device="cuda", tokenizer_dir=tokenizer_dir)
    train = train_rate(loaded, args.batch, args.seq, steps=10)
    decode, _ = decode_rate(loaded, min(args.problems, 64), min(args.new_tokens, 128), args.decode_batch)
    queue.put(
        {
            "pid": os.getpid(),
            "start": started,
            "end": time.time(),
            "train": train,
            "decode": decode,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
    )


def shared_gpu_rows(args) -> list[list]:
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=one_trial, args=(args, args.tokenizer, queue)) for _ in range(args.share)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    origin = min(r["start"] for r in results)
    overlap = min(r["end"] for r in results) - max(r["start"] for r in results)
    rows = [
        [
            f"trial {i} (pid {r['pid']})",
            f"{r['start'] - origin:.1f}-{r['end'] - origin:.1f} s",
            f"{r['train']:,.0f} tok/s",
            f"{r['decode']:,.0f} tok/s",
            f"{r['peak_gib']:.2f} GiB",
        ]
        for i, r in enumerate(sorted(results, key=lambda r: r["start"]))
    ]
    rows.append(
        [
            "all running at once",
            f"{max(overlap, 0):.1f} s" + (" (yes)" if overlap > 0 else " (NO)"),
            "",
            "",
            f"max {max(r['peak_gib'] for r in results):.2f} GiB",
        ]
    )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=196)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--problems", type=int, default=164)
    p.add_argument("--decode-batch", type=int, default=64)
    p.add_argument("--share", type=int, default=4, help="processes sharing the GPU (0: skip)")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (default: the bundled model's)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (run on a GPU machine)")
        return
    print(machine(), torch.cuda.get_device_properties(0).total_memory // 2**30, "GiB", flush=True)
    ceiling = ceilings("cuda")
    torch.cuda.empty_cache()  # the ceilings' 2-3 GiB of operands, freed when ceilings() returned
    print(
        f"ceilings: bf16 GEMM {ceiling['bf16_flops'] / 1e12:.0f} TFLOP/s, fp32 GEMM "
        f"{ceiling['fp32_flops'] / 1e12:.1f} TFLOP/s, copy {ceiling['copy_bytes'] / 1e12:.2f} TB/s",
        flush=True,
    )
    loaded = load_bench_model("random-0.5b", torch.bfloat16, device="cuda", tokenizer_dir=args.tokenizer)
    train = train_rate(loaded, args.batch, args.seq)
    flop_per_token = train_flop_per_token(loaded.model)
    rows = [
        [
            "train step (bf16, batch %d x %d)" % (args.batch, args.seq),
            f"{train:,.0f} tok/s",
            f"{train * flop_per_token / 1e12:.1f} TFLOP/s",
            f"{100 * train * flop_per_token / ceiling['bf16_flops']:.1f}% of bf16 GEMM",
        ]
    ]
    rows[0].append("")
    for batch in sorted({8, args.decode_batch, min(args.problems, 164)}):
        with whole_row_stop_check():
            base, _ = decode_rate(loaded, args.problems, args.new_tokens, batch)
        tok_s, bandwidth = decode_rate(loaded, args.problems, args.new_tokens, batch)
        rows.append(
            [
                f"decode (bf16, batch {batch}, {args.new_tokens} tokens)",
                f"{tok_s:,.0f} tok/s",
                f"{bandwidth / 1e12:.2f} TB/s weights",
                f"{100 * bandwidth / ceiling['copy_bytes']:.1f}% of copy bandwidth",
                f"{tok_s / base:.2f}x ({base:,.0f} tok/s)",
            ]
        )
    print_table(["what", "throughput", "achieved", "% of ceiling", "vs whole-row stop check"], rows)
    if args.share:
        del loaded
        torch.cuda.empty_cache()
        print(
            f"\n{args.share} processes sharing the GPU, each one trial's work "
            f"(10 train steps + 64 prompts x 128 tokens):",
            flush=True,
        )
        print_table(["trial", "span", "train", "decode", "peak CUDA memory"], shared_gpu_rows(args))


if __name__ == "__main__":
    main()
