"""Every private name of torch and PEFT that `trainable/` relies on, and nothing else (Ray's and
Optuna's live in search/private_apis.py; tests/test_private_apis.py keeps both the only homes).

PEFT fills a prompt-learning config's model dimensions (layers, token width, heads; for a prefix
on a grouped-query model the key/value heads and their width) in a private function that
`get_peft_model` calls; a soft prompt built without wrapping the model (`trainable.softprompt`)
calls it too, so its shapes are PEFT's for every architecture PEFT knows.

oneDNN's linear with a weight reordered once (`trainable.decoding.packed_linear`) has no public API: it is
what `torch.compile` emits for frozen CPU models, as two `torch.ops.mkldnn` operators. Read from
the version in READ_FROM (aten/src/ATen/native/mkldnn/Linear.cpp: `mkldnn_reorder_linear_weight`,
`mkldnn_linear_pointwise`). pyproject.toml pins torch only to a range (GPU users keep their CUDA
build), so `packed_linear_works` probes the two operators once on the installed torch and every
caller falls back to `nn.Linear` when they are missing or disagree with it.
"""

from __future__ import annotations

import functools

import torch

READ_FROM = {"torch": "2.13.0", "peft": "0.21.2"}  # .ci/setup's torch pin, pyproject.toml's peft pin


def fill_prompt_learning_config(peft_config, model_config):
    """`peft_config` with the model's dimensions filled as `get_peft_model` fills them
    (peft/utils/other.py: `_prepare_prompt_learning_config`)."""
    from peft.utils import _prepare_prompt_learning_config

    return _prepare_prompt_learning_config(peft_config, model_config)


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """`weight` [out, in] in oneDNN's blocked layout, for any number of input rows (None: no
    batch-size hint, so one copy serves every batch)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`nn.functional.linear(x, weight, bias)` from `pack_linear_weight(weight)`; no autograd."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@functools.cache
def packed_linear_works() -> bool:
    """The operators exist here and give nn.Linear's product on a small case (3-D input, bias)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight, bias = torch.randn(5, 3, generator=generator), torch.randn(5, generator=generator)
        x = torch.randn(2, 4, 3, generator=generator)
        return torch.allclose(packed_linear(x, pack_linear_weight(weight), bias), x @ weight.T + bias, atol=1e-5)
    except (AttributeError, RuntimeError, TypeError):
        return False
