"""K trials' training steps: one fused step of the shared frozen model vs each trial's own step.

    python bench/bench_fused.py --model bundled [--trials 1 2 4 8] [--batch 4] [--repeat 2]
    python bench/bench_fused.py --model random-0.5b --device cuda --dtype bfloat16

K trials of mixed methods (prompt tuning, P-tuning, prefix tuning; 8-16 virtual tokens), each
with its own batch of `--batch` training examples. Per K, in one process, on one copy of the
model: "separate" = each trial's own step after the other (what K trial processes do with a
model copy each, without their contention: a lower bound on their time), "fused" = one
`step_together` over all K batches (trainable.engine). Columns: trial-steps per minute,
training tokens/s and % of the dtype's GEMM ceiling (bench.common.ceilings; 4N FLOP per token),
the peak resident memory above the loaded model during the steps, and the model copies each
layout holds (separate trial processes hold one each).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import (  # noqa: E402 - after the sys.path line above
    OLD_SPLIT,
    best_seconds,
    ceilings,
    describe_ceilings,
    load_bench_model,
    machine,
    peak_rss,
    print_table,
    train_flop_per_token,
)
from trainable.config import TrainConfig  # noqa: E402 - after the sys.path line above
from trainable.data.splits import problems_for  # noqa: E402 - after the sys.path line above
from trainable.softprompt import SoftPrompt  # noqa: E402 - after the sys.path line above
from trainable.train import Trainer, build_examples, step_together  # noqa: E402 - after the sys.path line above

METHODS = [
    dict(method="prompt_tuning", num_virtual_tokens=8, init="random"),
    dict(method="p_tuning", num_virtual_tokens=12),
    dict(method="prefix_tuning", num_virtual_tokens=16),
    dict(method="prompt_tuning", num_virtual_tokens=16, init="random"),
]
CEILING_OF = {torch.bfloat16: "bf16_flops", torch.float32: "fp32_flops"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--repeat", type=int, default=2, help="best of N steps per layout")
    parser.add_argument("--rows-per-forward", type=int, help="rows per forward (default: one trial's batch)")
    parser.add_argument("--tokenizer", help="tokenizer dir for --model random-0.5b (default: the bundled model's)")
    args = parser.parse_args()
    if min(args.trials) < 1 or args.batch < 1 or args.repeat < 1:
        parser.error("--trials, --batch and --repeat take integers >= 1")
    dtype = getattr(torch, args.dtype)
    loaded = load_bench_model(args.model, dtype, args.device, args.tokenizer)
    device = str(loaded.device)
    limits = ceilings(device)
    print(machine())
    print(describe_ceilings(limits))
    print(f"model {args.model} ({dtype}, {device}), batch {args.batch} per trial, best of {args.repeat}")
    examples = build_examples(loaded, problems_for("train", OLD_SPLIT), args.max_length)  # canonical solutions
    flop = train_flop_per_token(loaded.model)
    rows = []
    for k in args.trials:
        trainers = []
        for i in range(k):
            config = TrainConfig(**METHODS[i % len(METHODS)], batch_size=args.batch, seed=i)
            trainers.append(Trainer(loaded, SoftPrompt.create(loaded, config), config, len(examples)))
        batches = [examples[(i * args.batch) % (len(examples) - args.batch) :][: args.batch] for i in range(k)]
        tokens = sum(r.tokens for r in step_together(list(zip(trainers, batches))))  # warm-up, and the count

        def separate():
            for trainer, batch in zip(trainers, batches):
                step_together([(trainer, batch)])

        def fused():
            step_together(list(zip(trainers, batches)), args.rows_per_forward)

        for name, fn in (("separate", separate), ("fused", fused)):
            with peak_rss() as memory:
                seconds = best_seconds(fn, args.repeat, device=device)
            rate = tokens / seconds
            peak = memory.get("cuda_peak", memory["peak"])
            rows.append(
                [
                    k,
                    name,
                    f"{60 * k / seconds:.1f}",
                    f"{rate:,.0f}",
                    f"{100 * rate * flop / limits[CEILING_OF[dtype]]:.1f}%",
                    f"{peak / 2**20:,.0f}",
                    k if name == "separate" else 1,
                ]
            )
        rows[-2].append("1.00x")
        rows[-1].append(f"{float(rows[-1][2]) / float(rows[-2][2]):.2f}x")
    headers = ["K", "layout", "trial-steps/min", "train tok/s", "% ceiling", "peak MiB", "model copies", "vs sep"]
    print_table(headers, rows)
    copy = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    print(f"one model copy: {copy / 2**20:,.0f} MiB of weights")


if __name__ == "__main__":
    main()
