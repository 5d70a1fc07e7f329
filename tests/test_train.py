"""The soft prompt trains, the frozen model stays frozen, and adapters round-trip through PEFT."""

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from trainable.config import TrainConfig
from trainable.data.splits import DataSplit, problems_for
from trainable.softprompt import SoftPrompt, use_prompt
from trainable.train import Trainer, build_examples, completion_loss


def _frozen_copy(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def test_loss_falls_and_frozen_weights_are_bit_identical(tiny_loaded):
    config = TrainConfig(
        num_virtual_tokens=8, init="sample_vocab", learning_rate=0.3, epochs=6, batch_size=4, warmup_ratio=0.0
    )
    before = _frozen_copy(tiny_loaded.model)
    prompt = SoftPrompt.create(tiny_loaded, config)
    examples = build_examples(tiny_loaded, problems_for("train", DataSplit(8, 4, 4)), 256)
    trainer = Trainer(tiny_loaded, prompt, config, len(examples))
    start = prompt.output().detach().clone()
    losses = [trainer.train_epoch(examples, epoch).loss for epoch in range(1, 7)]
    assert losses[-1] < losses[0] * 0.95, losses
    assert not torch.equal(prompt.output().detach(), start)
    after = tiny_loaded.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in tiny_loaded.model.parameters())
    model_tensors = {id(p) for p in tiny_loaded.model.parameters()}
    assert all(p.requires_grad and id(p) not in model_tensors for p in prompt.parameters())
    assert [p.dtype for p in prompt.parameters()] == [torch.float32]


def test_selected_positions_loss_equals_full_logits_loss(tiny_loaded):
    """Our fast path (output layer on target positions only) computes the same loss as the
    stock path (full logits, masked; bench/bench_train.py's baseline)."""
    from bench.bench_train import full_logits_loss

    examples = build_examples(tiny_loaded, problems_for("train", DataSplit(4, 4, 4)), 256)
    soft = torch.randn(4, tiny_loaded.model.config.hidden_size)
    fast, tokens = completion_loss(tiny_loaded, soft, examples)
    full, _ = full_logits_loss(tiny_loaded, soft, examples)
    assert torch.allclose(fast, full, atol=1e-5)
    assert tokens == sum(len(e.tokens) + 4 for e in examples)


def test_loss_covers_completion_tokens_only(tiny_loaded):
    problem = problems_for("train", DataSplit(4, 4, 4))[0]
    (example,) = build_examples(tiny_loaded, [problem], 4096)
    prompt_ids = tiny_loaded.tokenizer(problem["prompt"], add_special_tokens=False)["input_ids"]
    assert example.n_prompt == len(prompt_ids)
    assert example.tokens[: example.n_prompt] == prompt_ids
    assert example.tokens[-1] == tiny_loaded.tokenizer.eos_token_id
    (cut,) = build_examples(tiny_loaded, [problem], 32)
    assert len(cut.tokens) <= 32 and cut.tokens[cut.n_prompt :] == example.tokens[example.n_prompt :][:31]


def test_saved_adapter_reloads_to_the_same_tensor(tiny_loaded, tiny_model_dir, tmp_path):
    config = TrainConfig(num_virtual_tokens=6, init="Write correct Python code.")
    prompt = SoftPrompt.create(tiny_loaded, config)
    with torch.no_grad():
        prompt.encoder.embedding.weight.add_(torch.randn_like(prompt.output()))
    out = prompt.save(tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reloaded = PeftModel.from_pretrained(fresh, out)
    assert torch.equal(reloaded.prompt_encoder["default"].embedding.weight, prompt.output())
    assert torch.equal(use_prompt(tiny_loaded, out), prompt.output())


def test_inits_follow_peft(tiny_loaded):
    embed = tiny_loaded.model.get_input_embeddings().weight
    text = "def solve"
    ids = tiny_loaded.tokenizer(text)["input_ids"]
    prompt = SoftPrompt.create(tiny_loaded, TrainConfig(num_virtual_tokens=len(ids), init=text))
    assert torch.equal(prompt.output().detach(), embed[ids].float())
    rows = SoftPrompt.create(tiny_loaded, TrainConfig(num_virtual_tokens=5, init="sample_vocab")).output()
    assert all(any(torch.equal(r, e) for e in embed.float()) for r in rows.detach())
    a = SoftPrompt.create(tiny_loaded, TrainConfig(init="random", seed=3)).output().detach().clone()
    b = SoftPrompt.create(tiny_loaded, TrainConfig(init="random", seed=3)).output().detach()
    assert torch.equal(a, b), "inits are seedable"
