"""oneDNN-packed linears (trainable.decoding.packed_linear): same outputs as nn.Linear, only inside the
context, and only where they apply (fp32 on a CPU)."""

import contextlib

import pytest
import torch

from bench.decoding_variants import decoding_without
from trainable.decoding.generate import generate
from trainable.model.loading import LoadedModel, ModelRef
from trainable.decoding.packed_linear import packed_linears, packs
from trainable.tiny import tiny_model, tiny_tokenizer

needs_onednn = pytest.mark.skipif(not packs(torch.nn.Linear(2, 2)), reason="this torch has no oneDNN CPU build")


def _with_random_biases(model):
    """HF initialises biases to zero, under which a dropped bias would go unseen."""
    torch.manual_seed(4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_()
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@needs_onednn
def test_packed_forward_matches_linear_and_is_undone_on_exit():
    tokenizer = tiny_tokenizer()
    model = _with_random_biases(tiny_model(len(tokenizer), seed=3))
    ids = torch.randint(0, len(tokenizer), (4, 9))
    plain = _logits(model, ids)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert any(m.bias is not None for m in linears) and any(m.bias is None for m in linears)
    with packed_linears(model):
        assert all("forward" in m.__dict__ for m in linears), "every linear is switched"
        packed = _logits(model, ids)
        one_row = _logits(model, ids[:1, :1])  # a single row keeps the plain kernel
    assert all("forward" not in m.__dict__ for m in linears), "the class's forward is back"
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(one_row, _logits(model, ids[:1, :1]))


@needs_onednn
def test_an_error_inside_still_restores_the_layers():
    model = tiny_model(len(tiny_tokenizer()), seed=3)
    with pytest.raises(RuntimeError, match="boom"):
        with packed_linears(model):
            raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_nothing_is_packed_outside_fp32_on_a_cpu():
    model = tiny_model(len(tiny_tokenizer()), seed=3).to(torch.bfloat16)
    assert not packs(model)
    with packed_linears(model):
        assert all("forward" not in m.__dict__ for m in model.modules())


def test_where_the_operators_do_not_work_nothing_is_packed(monkeypatch):
    """torch is a range in pyproject.toml: on a torch whose oneDNN operators are gone or differ
    (trainable/private_apis.py's probe says False) the plain linears run."""
    import trainable.decoding.packed_linear as packed_linear

    monkeypatch.setattr(packed_linear, "packed_linear_works", lambda: False)
    model = tiny_model(len(tiny_tokenizer()), seed=3)
    assert not packs(model)
    with packed_linears(model):
        assert all("forward" not in m.__dict__ for m in model.modules())


@contextlib.contextmanager
def _counting_packs():
    """Per `packed_linears` context `trainable.decoding.generate` opens: whether its linears were switched."""
    import trainable.decoding.generate as generate_module

    packed, original = [], generate_module.packed_linears

    @contextlib.contextmanager
    def counting(model):
        with original(model):
            packed.append(any("forward" in m.__dict__ for m in model.modules()))
            yield

    generate_module.packed_linears = counting
    try:
        yield packed
    finally:
        generate_module.packed_linears = original


@needs_onednn
def test_packing_changes_no_token():
    """Greedy decoding of 6 prompts, 3 rows at a time, with packed and plain linears: the same
    tokens (the model's weights are scaled up so that logits are far from ties)."""
    tokenizer = tiny_tokenizer()
    model = _with_random_biases(tiny_model(len(tokenizer), seed=1, weight_scale=6.0))
    assert packs(model), "the packed side must really be packed"
    model.generation_config.eos_token_id = None
    loaded = LoadedModel(model, tokenizer, ModelRef("tiny", "local", "tiny"))
    prompts = ["def add(a, b):\n", "x = [", "import os\n\n", "class A:\n    def", "# sum\n", "return ("]
    never = [("\x00never",)] * len(prompts)
    runs = []
    for without in ((), ("pack_weights",)):
        with decoding_without(*without), _counting_packs() as packed:
            runs.append(generate(loaded, prompts, None, max_new_tokens=20, batch_size=3, stops=never).tokens)
        assert packed == [not without], "the packed side packs, the plain side does not"
    assert runs[0] == runs[1]
    assert sum(map(len, runs[0])) > 60, [len(t) for t in runs[0]]
