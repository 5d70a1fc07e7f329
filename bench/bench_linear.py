"""One linear layer at few rows: plain `nn.functional.linear` (MKL sgemm on a CPU), MKL's packed
sgemm, and oneDNN's reordered weight (what trainable/decoding/packed_linear.py uses), on two of
Qwen2.5-Coder-0.5B's weight shapes (an MLP matrix and the output layer), fp32.

    python bench/bench_linear.py [--rows 1 2 4 8 16 32 64] [--compile]

Best of repeated calls. "GB/s" is the weight's bytes over the call's time: a decoding step at a
few rows should read each weight once, near the copy ceiling. The MLP matrix (17 MB) stays partly
in cache between repeated calls, so it can read above the copy ceiling; the output layer (545 MB)
cannot, and is the figure to compare with a step. MKL's packed copy serves only the
row count it was packed for (any other falls back to the plain path), so it is packed per row.
`--compile` adds `torch.compile(mode="max-autotune")` of the layer with inductor's freezing (one
compile per row count; autotuning prints its candidates), what inductor would make of it.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import best_seconds, ceilings, describe_ceilings, machine, print_table  # noqa: E402 - after the sys.path line above
from trainable.private_apis import pack_linear_weight, packed_linear  # noqa: E402 - after the sys.path line above

SHAPES = ((4864, 896), (151936, 896))  # [out, in]: MLP gate/up, output layer


def _compiled(weight: torch.Tensor, rows: int):
    """The layer as inductor builds it for `rows` rows, frozen weights (packed at compile time)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False).eval()
    layer.weight.data = weight
    torch._dynamo.reset()
    compiled = torch.compile(layer, mode="max-autotune", dynamic=False)
    x = torch.randn(rows, weight.shape[1])
    torch.testing.assert_close(compiled(x), layer(x), rtol=1e-4, atol=1e-4)
    return lambda: compiled(x)


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--compile", action="store_true", help="add inductor's max-autotune linear (slow to build)")
    args = p.parse_args()
    ceiling = ceilings("cpu")
    torch.manual_seed(0)
    table = []
    for out, inn in SHAPES:
        weight = torch.randn(out, inn)
        onednn = pack_linear_weight(weight)
        gb = weight.numel() * weight.element_size() / 1e9
        repeat = 10 if out > 10_000 else 50
        for rows in args.rows:
            x = torch.randn(rows, inn)
            mkl = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
            times = [
                best_seconds(lambda: torch.nn.functional.linear(x, weight), repeat, warmup=1),
                best_seconds(lambda: torch.ops.mkl._mkl_linear(x, mkl, weight, None, rows), repeat, warmup=1),
                best_seconds(lambda: packed_linear(x, onednn, None), repeat, warmup=1),
            ]
            if args.compile:
                times.append(best_seconds(_compiled(weight, rows), repeat, warmup=1))
            table.append([f"{out}x{inn}", rows, *(f"{t * 1e3:.2f} ({gb / t:.1f})" for t in times)])
    print(f"fp32; {machine()}")
    print(describe_ceilings(ceiling))
    columns = ["weight", "rows", "plain ms (GB/s)", "MKL packed ms (GB/s)", "oneDNN packed ms (GB/s)"]
    print_table(columns + (["inductor max-autotune ms (GB/s)"] if args.compile else []), table)


if __name__ == "__main__":
    main()
