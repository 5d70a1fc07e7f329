"""Decoding steps with the whole model under `torch.compile` (inductor, frozen weights, dynamic
shapes) against eager steps with packed linears, at one batch size, on a CPU in fp32.

    python bench/compile_decode.py --model bundled [--batch 16] [--steps 12]

Each side prefills the first test problems' prompts and times `--steps` decoding steps on one
batch. The compiled side's first steps include compiling (and recompiling as the cache grows):
they are printed apart from the median of the rest. Slow: minutes of compiling on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import OLD_SPLIT, ceilings, describe_ceilings, load_bench_model, machine  # noqa: E402 - after the sys.path line above
from bench.decoding_variants import decoding_without  # noqa: E402 - after the sys.path line above
from trainable.data.splits import problems_for  # noqa: E402 - after the sys.path line above
from trainable.decoding.generate import _prefill, _step  # noqa: E402 - after the sys.path line above
from trainable.decoding.packed_linear import packed_linears  # noqa: E402 - after the sys.path line above


def _steps(loaded, encoded: list[list[int]], n: int, in_place: bool) -> tuple[list[float], torch.Tensor]:
    live = _prefill(loaded, encoded, None, list(range(len(encoded))))
    next_ids = live.logits.argmax(-1)
    seconds = []
    with contextlib.nullcontext() if in_place else decoding_without("cache_in_place"):
        for _ in range(n):
            started = time.perf_counter()
            _step(loaded, live, next_ids)
            seconds.append(time.perf_counter() - started)
    return seconds, live.logits


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args()
    import torch._inductor.config as inductor_config

    print(f"fp32; {machine()}")
    print(describe_ceilings(ceilings("cpu")))
    loaded = load_bench_model(args.model, torch.float32, device="cpu")
    problems = problems_for("test", OLD_SPLIT)[: args.batch]
    encoded = [loaded.tokenizer(p["prompt"], add_special_tokens=False)["input_ids"] for p in problems]
    with packed_linears(loaded.model):
        in_place, _ = _steps(loaded, encoded, args.steps, in_place=True)
        plain, reference = _steps(loaded, encoded, args.steps, in_place=False)
    print(f"eager, packed linears, cache written in place: median step {statistics.median(in_place[1:]) * 1e3:.0f} ms")
    print(f"eager, packed linears, plain cache:            median step {statistics.median(plain[1:]) * 1e3:.0f} ms")
    # The compiled model traces transformers' own cache (the in-place layer is ours, eager only).
    inductor_config.freezing = True
    loaded.model.forward = torch.compile(loaded.model.forward, dynamic=True)
    started = time.perf_counter()
    compiled, logits = _steps(loaded, encoded, args.steps, in_place=False)
    print(
        f"compiled (inductor, freezing, dynamic), plain cache: first step {compiled[0]:.1f} s, second "
        f"{compiled[1]:.1f} s (compiling), median of the rest {statistics.median(compiled[2:]) * 1e3:.0f} ms; "
        f"{time.perf_counter() - started:.0f} s in all; max |logit difference| from eager "
        f"{(logits - reference).abs().max().item():.1e}"
    )


if __name__ == "__main__":
    main()
