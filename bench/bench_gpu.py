"""GPU figures against the arithmetic floor (needs CUDA; prints why and exits 0 without it).

    python bench/bench_gpu.py [--batch 8] [--seq 196] [--new-tokens 512] [--problems 164]

A random-init model of Qwen2.5-Coder-0.5B's exact shape in bf16 (the GPU machine cannot
download weights; with random weights no sequence stops early, so decoding always runs
`--new-tokens` steps: we report tokens/s). Training: our step (soft prompt, output layer on
target positions) -> tokens/s and achieved TFLOP/s, counting ~2 GFLOP per token (forward +
backward through activations only, ~2 x 2 x 0.5e9). Decoding: greedy with KV cache over 164
prompts -> tokens/s and achieved bandwidth (weights read once per step per batch).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import load_bench_model, machine, print_table  # noqa: E402
from trainable.data import load_problems  # noqa: E402
from trainable.generate import GenerationStats, generate  # noqa: E402
from trainable.train import TrainExample, completion_loss  # noqa: E402

FLOP_PER_TOKEN = 2e9  # forward (2 x params) + backward through activations (~2 x params)


def train_figures(loaded, batch: int, seq: int, steps: int = 20) -> list:
    hidden = loaded.model.config.hidden_size
    soft = torch.nn.Parameter(torch.randn(16, hidden, device=loaded.device) * 0.02)
    optimizer = torch.optim.AdamW([soft], lr=1e-2)
    vocab = loaded.model.config.vocab_size
    examples = [TrainExample(torch.randint(0, vocab, (seq,)).tolist(), seq // 2) for _ in range(batch)]
    for i in range(steps + 3):
        if i == 3:  # after warm-up
            torch.cuda.synchronize()
            started = time.perf_counter()
        loss, tokens = completion_loss(loaded, soft, examples)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    tok_s = tokens / seconds
    epoch_100 = 100 * (seq + 16) / tok_s
    return ["train step", f"{tok_s:,.0f} tok/s", f"{tok_s * FLOP_PER_TOKEN / 1e12:.1f} TFLOP/s",
            f"{epoch_100:.3f} s per 100-problem epoch (floor ~0.06 s)"]


def decode_figures(loaded, problems: int, new_tokens: int, batch: int) -> list:
    prompts = [p["prompt"] for p in list(load_problems().values())[:problems]]
    loaded.model.generation_config.eos_token_id = None  # random weights: never stop early
    stats = GenerationStats()
    torch.cuda.synchronize()
    generate(loaded, prompts, None, max_new_tokens=new_tokens, batch_size=batch, stats=stats)
    torch.cuda.synchronize()
    weight_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    steps = stats.new_tokens / batch
    bandwidth = weight_bytes * steps / stats.seconds
    return ["decode", f"{stats.tokens_per_s:,.0f} tok/s", f"{bandwidth / 1e12:.2f} TB/s weights",
            f"{stats.seconds:.2f} s for {problems} x {new_tokens} tokens (floor ~0.3 s)"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=196)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--problems", type=int, default=164)
    p.add_argument("--decode-batch", type=int, default=64)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (run on a GPU machine)")
        return
    loaded = load_bench_model("random-0.5b", torch.bfloat16, device="cuda")
    rows = [train_figures(loaded, args.batch, args.seq),
            decode_figures(loaded, args.problems, args.new_tokens, args.decode_batch)]
    print(machine())
    print_table(["what", "throughput", "achieved", "vs floor"], rows)


if __name__ == "__main__":
    main()
