"""Linear layers with their weights reordered once for oneDNN, for decoding on a CPU in fp32.

A decoding step multiplies a few rows (one per prompt in the batch) by every weight matrix. On a
CPU, `nn.Linear` calls MKL's sgemm, which packs the weight into its blocked layout on every call:
at 2-64 rows it runs below both the memory bandwidth and the GEMM ceiling (bench/bench_linear.py).
oneDNN can take the weight already in its blocked layout (the pre-packing `torch.compile` does
for frozen CPU models; private torch operators, wrapped and probed in trainable/private_apis.py,
with `nn.Linear` as the fallback); bench/profile_decode.py measures a step both ways. A single row
is left to the plain path, whose matrix-vector kernel is faster at one row.

The reordered copy costs as much memory as the weights and about a second to make (the first in
a process costs more: fresh memory; bench/bench_eval.py prints both), so it exists only while
`packed_linears` is open: one evaluation, not a trial. Figures: bench/README.md, "Evaluation".
It is inference-only: it has no backward.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from trainable.private_apis import pack_linear_weight, packed_linear, packed_linear_works


def packs(model: torch.nn.Module) -> bool:
    """Whether `packed_linears` reorders this model's weights: fp32 on a CPU, where this torch's
    oneDNN operators work."""
    weight = next(model.parameters())
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and packed_linear_works()


def _packed_forward(weight: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor):
    if x.shape[:-1].numel() == 1:
        return torch.nn.functional.linear(x, weight, bias)
    return packed_linear(x, packed, bias)


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module) -> Iterator[None]:
    """Within: every `nn.Linear` of `model` computes with a reordered copy of its weight (when
    `packs(model)`; otherwise nothing changes). Use under `torch.no_grad()`."""
    if not packs(model):
        yield
        return
    patched = []
    try:
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                weight = module.weight.detach()
                bias = None if module.bias is None else module.bias.detach()
                packed = pack_linear_weight(weight)
                # An instance attribute shadows the class's forward; deleting it restores it.
                module.forward = lambda x, w=weight, p=packed, b=bias: _packed_forward(w, p, b, x)
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward
