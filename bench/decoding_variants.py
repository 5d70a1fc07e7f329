"""Decoding without one or more of its speed-ups, for benchmarks that measure each against its
absence in one process (bench/bench_eval.py) and for tests that check none changes a token.

    with decoding_without("refill", "cache_in_place"):
        evaluate_problems(...)      # batch by batch, the cache appended with torch.cat

`trainable.decoding.generate` always uses all four; this module swaps its internals while the context is
open, and restores them on exit:
- `refill`: continuous batching. Without it a batch runs until its last row stops, and only then
  is the next batch prefilled (`_decode_batch_by_batch`).
- `pack_weights`: oneDNN-packed linears on a CPU in fp32. Without it, the plain `nn.Linear`s.
- `soft_prompt_once`: virtual tokens' key/values computed once per distinct soft prompt. Without
  it the soft prompt stays in every row's inputs, [pad][soft prompt][prompt], and every prefill
  computes it again (the layout of `trainable.inputs.left_padded`).
- `cache_in_place`: a step writes its key/values into room in the cache. Without it the plain
  `DynamicLayer` appends them with `torch.cat`, copying the cache every step.
Not thread-safe: it patches module attributes, for one benchmark or test at a time.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

import trainable.decoding.generate as generate_module

FEATURES = ("refill", "pack_weights", "soft_prompt_once", "cache_in_place")


@torch.no_grad()
def _decode_batch_by_batch(call, order: list[int], batch_size: int) -> None:
    """`trainable.decoding.generate._decode` without refilling: a batch is filled only when none runs."""
    pending = list(reversed(order))
    live = None
    while pending or live is not None:
        if live is None:
            live = generate_module._admit(call, pending, None, batch_size)
        live = generate_module._advance(call, live)


def _soft_prompts_in_the_inputs(loaded, softs: list, stats) -> list:
    """`_shared_prefixes` without the conversion: embeddings stay in each row's inputs (a prefix
    stays a prefix; it is key/values already). Rows of one soft prompt keep one object, which is
    how `_groups` batches them together."""
    kept = {id(s): None if s is None or (isinstance(s, torch.Tensor) and len(s) == 0) else s.detach() for s in softs}
    return [kept[id(s)] for s in softs]


REPLACEMENTS = {
    "refill": ("_decode", _decode_batch_by_batch),
    "pack_weights": ("packed_linears", lambda model: contextlib.nullcontext()),
    "soft_prompt_once": ("_shared_prefixes", _soft_prompts_in_the_inputs),
    "cache_in_place": ("_make_room", lambda cache: None),
}


@contextlib.contextmanager
def decoding_without(*features: str) -> Iterator[None]:
    """`trainable.decoding.generate` without `features` (names from FEATURES) while the context is open."""
    unknown = set(features) - set(FEATURES)
    if unknown:
        raise ValueError(f"features: got {sorted(unknown)}, expected names from {FEATURES}")
    saved = {}
    try:
        for feature in features:
            name, replacement = REPLACEMENTS[feature]
            saved[name] = getattr(generate_module, name)
            setattr(generate_module, name, replacement)
        yield
    finally:
        for name, original in saved.items():
            setattr(generate_module, name, original)
