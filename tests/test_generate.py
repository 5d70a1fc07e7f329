"""Batched generation must give exactly the tokens of one-at-a-time generation."""
import pytest
import torch

from trainable.config import TrainConfig
from trainable.data import load_problems
from trainable.generate import STOP_SEQUENCES, generate_with_tokens, truncate_at_stop
from trainable.inputs import Prefix, left_padded
from trainable.model import LoadedModel, ModelRef
from trainable.tiny import tiny_model, tiny_tokenizer


def _scaled_tiny() -> LoadedModel:
    # Small random weights give near-uniform logits, under which a padding bug hides; scaled-up
    # weights spread the logits so that any shift in positions changes the argmax.
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), seed=1, weight_scale=6.0)
    model.generation_config.eos_token_id = None  # run every row to max_new_tokens
    return LoadedModel(model, tokenizer, ModelRef("tiny", "local", "tiny"))


def _prompts(n: int) -> list[str]:
    problems = list(load_problems().values())
    return [problems[i]["prompt"] for i in (0, 2, 7, 11, 22, 35, 53, 80)[:n]]


def test_batched_equals_single_token_for_token():
    loaded = _scaled_tiny()
    torch.manual_seed(0)
    soft = torch.randn(5, loaded.model.config.hidden_size) * 2
    prompts = _prompts(8)
    lengths = {len(loaded.tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 4, "prompts of different lengths are what exercises the padding"
    _, batched = generate_with_tokens(loaded, prompts, soft, max_new_tokens=24, batch_size=8)
    for prompt, tokens in zip(prompts, batched):
        _, single = generate_with_tokens(loaded, [prompt], soft, max_new_tokens=24, batch_size=1)
        assert tokens == single[0]
    assert any(batched), "generation produced tokens"


def _method_prompt(loaded, settings: dict):
    """A soft prompt of one method, moved off its init so that it changes the output. (A prefix's
    keys must be as large as the scaled model's own, about 10 per element, to draw attention.)"""
    from trainable.softprompt import SoftPrompt

    prompt = SoftPrompt.create(loaded, TrainConfig(num_virtual_tokens=5, **settings))
    scale = 20.0 if settings["method"] == "prefix_tuning" else 1.0
    torch.manual_seed(2)
    with torch.no_grad():
        for p in prompt.parameters():
            p.add_(torch.randn_like(p) * scale)
        return prompt.inputs()


METHODS = {"prompt_tuning": {"method": "prompt_tuning"}, "p_tuning": {"method": "p_tuning", "encoder_hidden_size": 32},
           "prefix_tuning": {"method": "prefix_tuning"},
           "prefix_projected": {"method": "prefix_tuning", "prefix_projection": 16}}


@pytest.mark.parametrize("settings", METHODS.values(), ids=METHODS.keys())
def test_batched_equals_single_for_every_method(settings):
    loaded = _scaled_tiny()
    soft = _method_prompt(loaded, settings)
    prompts = _prompts(6)
    _, batched = generate_with_tokens(loaded, prompts, soft, max_new_tokens=16, batch_size=6)
    singles = [generate_with_tokens(loaded, [p], soft, max_new_tokens=16, batch_size=1)[1][0] for p in prompts]
    assert batched == singles
    plain = [generate_with_tokens(loaded, [p], None, max_new_tokens=16, batch_size=1)[1][0] for p in prompts]
    assert batched != plain, "the soft prompt changes what the model writes"


def test_batched_equals_single_without_soft_prompt():
    loaded = _scaled_tiny()
    prompts = _prompts(5)
    _, batched = generate_with_tokens(loaded, prompts, None, max_new_tokens=16, batch_size=5)
    singles = [generate_with_tokens(loaded, [p], None, max_new_tokens=16, batch_size=1)[1][0] for p in prompts]
    assert batched == singles


def _last_logits(loaded, token_lists, soft, peft_layout: bool) -> torch.Tensor:
    """Next-token logits per row, with our layout or PEFT's (soft prompt before the padding)."""
    embed = loaded.model.get_input_embeddings()
    if not peft_layout:
        batch = left_padded(token_lists, embed, loaded.tokenizer.pad_token_id, soft)
        out = loaded.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids)
        return out.logits[:, -1]
    plain = left_padded(token_lists, embed, loaded.tokenizer.pad_token_id, None)
    soft_rows = soft.unsqueeze(0).expand(len(token_lists), -1, -1)
    embeds = torch.cat([soft_rows, plain.inputs_embeds], dim=1)
    mask = torch.cat([torch.ones(len(token_lists), soft.shape[0], dtype=torch.long), plain.attention_mask], 1)
    return loaded.model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]


def test_the_check_has_teeth_peft_layout_differs():
    """PEFT's layout ([soft][pad][prompt], default positions) must change the logits here, or the
    equality tests above could not catch the bug. (RoPE is relative, so the shift shows only in
    the soft-prompt-to-prompt distances: a first argmax can survive it, the logits do not.)"""
    loaded = _scaled_tiny()
    torch.manual_seed(0)
    soft = torch.randn(5, loaded.model.config.hidden_size) * 2
    tokens = [loaded.tokenizer(p)["input_ids"] for p in _prompts(8)]
    with torch.no_grad():
        singles = torch.cat([_last_logits(loaded, [t], soft, peft_layout=False) for t in tokens])
        ours = _last_logits(loaded, tokens, soft, peft_layout=False)
        peft = _last_logits(loaded, tokens, soft, peft_layout=True)
    assert torch.allclose(ours, singles, atol=1e-4)
    assert (peft - singles).abs().max() > 1e-2


def _prefix_logits(loaded, token_lists, prefix: Prefix, peft_layout: bool) -> torch.Tensor:
    """Next-token logits per row behind a prefix: ours, or PEFT's (no position ids, so a padded
    row's tokens sit at P + padding instead of P)."""
    batch = left_padded(token_lists, loaded.model.get_input_embeddings(), loaded.tokenizer.pad_token_id, prefix)
    positions = None if peft_layout else batch.position_ids
    return loaded.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                        position_ids=positions, past_key_values=batch.past_key_values).logits[:, -1]


def test_the_prefix_check_has_teeth_peft_positions_differ():
    loaded = _scaled_tiny()
    prefix = _method_prompt(loaded, METHODS["prefix_tuning"])
    tokens = [loaded.tokenizer(p)["input_ids"] for p in _prompts(8)]
    with torch.no_grad():
        singles = torch.cat([_prefix_logits(loaded, [t], prefix, peft_layout=False) for t in tokens])
        ours = _prefix_logits(loaded, tokens, prefix, peft_layout=False)
        peft = _prefix_logits(loaded, tokens, prefix, peft_layout=True)
    assert torch.allclose(ours, singles, atol=1e-4)
    assert (peft - singles).abs().max() > 1e-2


def test_truncate_at_first_stop_sequence():
    body = "    return a + b\n"
    assert truncate_at_stop(body + "\ndef other():\n    pass") == body
    assert truncate_at_stop(body + "\n# comment\nprint(1)") == body
    assert truncate_at_stop(body + "\nif __name__ == '__main__':\n") == body
    assert truncate_at_stop(body) == body
    assert set(STOP_SEQUENCES) == {"\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"}
