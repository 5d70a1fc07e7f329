"""Where a decoding step's time goes: prefill and one step at each batch size, plain and with
oneDNN-packed linears, then torch.profiler's operator table for a step at one batch size.

    python bench/profile_decode.py --model bundled [--batches 1 4 8 16] [--profile-batch 8]

Prompts are the first test problems' (bench.common.OLD_SPLIT); each time is the best of a few
calls. A step reads every weight once, so "GB/s of weights" against the copy ceiling says how
bandwidth-bound it is, and "GFLOP/s" (2N per row) against the GEMM ceiling how compute-bound.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import (  # noqa: E402 - after the sys.path line above
    OLD_SPLIT,
    best_seconds,
    ceilings,
    decode_bytes_per_forward,
    decode_flop_per_token,
    describe_ceilings,
    load_bench_model,
    machine,
    print_table,
)
from trainable.data.splits import problems_for  # noqa: E402 - after the sys.path line above
from trainable.decoding.generate import _prefill, _step  # noqa: E402 - after the sys.path line above
from trainable.decoding.packed_linear import packed_linears  # noqa: E402 - after the sys.path line above


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--profile-batch", type=int, default=8)
    args = p.parse_args()
    ceiling = ceilings("cpu")
    loaded = load_bench_model(args.model, torch.float32, device="cpu")
    read, flop = decode_bytes_per_forward(loaded.model), decode_flop_per_token(loaded.model)
    problems = problems_for("test", OLD_SPLIT)[: max(args.batches)]
    encoded = [loaded.tokenizer(p["prompt"], add_special_tokens=False)["input_ids"] for p in problems]

    rows = []
    for packed in (False, True):
        with packed_linears(loaded.model) if packed else contextlib.nullcontext():
            for batch in args.batches:
                prompts, index = encoded[:batch], list(range(batch))
                prefill_s = best_seconds(lambda: _prefill(loaded, prompts, None, index), 2)
                live = _prefill(loaded, prompts, None, index)
                next_ids = live.logits.argmax(-1)
                step_s = best_seconds(lambda: _step(loaded, live, next_ids), 4)
                real, flops = sum(map(len, prompts)), batch * flop / step_s
                rows.append(
                    [
                        "oneDNN packed" if packed else "plain (MKL)",
                        batch,
                        f"{prefill_s * 1e3:,.0f} ({real / prefill_s:,.0f} tokens/s)",
                        f"{step_s * 1e3:,.0f}",
                        f"{batch / step_s:.1f}",
                        f"{read / step_s / 1e9:.1f} ({100 * read / step_s / ceiling['copy_bytes']:.0f}%)",
                        f"{flops / 1e9:.1f} ({100 * flops / ceiling['fp32_flops']:.0f}%)",
                    ]
                )
    print(f"model {args.model} (float32); {machine()}")
    print(describe_ceilings(ceiling))
    print_table(
        [
            "linears",
            "batch",
            "prefill ms",
            "step ms",
            "tokens/s",
            "GB/s of weights (% of copy)",
            "GFLOP/s (% of fp32 GEMM)",
        ],
        rows,
    )
    from torch.profiler import ProfilerActivity, profile

    prompts = encoded[: args.profile_batch]
    live = _prefill(loaded, prompts, None, list(range(len(prompts))))
    next_ids = live.logits.argmax(-1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            _step(loaded, live, next_ids)
    print(f"\nthree plain steps at batch {len(prompts)}, by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
