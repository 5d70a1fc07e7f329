"""Each method (prompt tuning, P-tuning, prefix tuning) trains, round-trips through PEFT, and warm-starts.

.venv/bin/pytest tests/test_methods.py -q
"""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from trainable.adapter import ENCODER_FILE, WEIGHTS_FILE, model_dims
from trainable.config import TrainConfig
from trainable.data.splits import DataSplit, problems_for
from softprompt_cli.errors import UsageError
from trainable.inputs import Prefix, left_padded
from trainable.softprompt import SoftPrompt, use_prompt
from trainable.tiny import tiny_model
from trainable.train import Trainer, build_examples

# (settings, a learning rate at which the tiny model's loss visibly falls in 4 epochs)
METHODS = {
    "prompt_tuning": ({"method": "prompt_tuning", "init": "sample_vocab"}, 0.3),
    "p_tuning": ({"method": "p_tuning", "encoder_hidden_size": 32}, 0.01),
    "prefix_tuning": ({"method": "prefix_tuning"}, 1.0),
    "prefix_projected": ({"method": "prefix_tuning", "prefix_projection": 32}, 0.1),
}
CASES = pytest.mark.parametrize("settings", [m[0] for m in METHODS.values()], ids=list(METHODS))


def _perturbed(loaded, settings: dict, tokens: int = 5) -> SoftPrompt:
    """A soft prompt moved away from its init, as training would."""
    prompt = SoftPrompt.create(loaded, TrainConfig(num_virtual_tokens=tokens, **settings))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in prompt.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return prompt


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_trains_only_its_own_parameters(tiny_loaded, name):
    settings, lr = METHODS[name]
    config = TrainConfig(num_virtual_tokens=8, learning_rate=lr, epochs=4, batch_size=4, warmup_ratio=0.0, **settings)
    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    prompt = SoftPrompt.create(tiny_loaded, config)
    examples = build_examples(tiny_loaded, problems_for("train", DataSplit(8, 4, 4)), 256)
    trainer = Trainer(tiny_loaded, prompt, config, len(examples))
    losses = [trainer.train_epoch(examples, epoch).loss for epoch in range(1, 5)]
    assert losses[-1] < losses[0] * 0.97, losses
    after = tiny_loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the frozen model changed"
    assert not any(p.requires_grad for p in tiny_loaded.model.parameters())
    trainable = prompt.parameters()
    model_tensors = {id(p) for p in tiny_loaded.model.parameters()}
    assert all(p.requires_grad and p.dtype == torch.float32 and id(p) not in model_tensors for p in trainable)
    assert len(trainable) == {"prompt_tuning": 1, "p_tuning": 7, "prefix_tuning": 1, "prefix_projected": 5}[name]


@CASES
def test_peft_from_pretrained_gives_our_logits(tiny_loaded, tiny_model_dir, tmp_path, settings):
    """The adapter is a standard PEFT adapter: PEFT's own forward on a fresh copy of the model gives
    the logits of our path, for an unpadded sequence (where PEFT's layout is right)."""
    prompt = _perturbed(tiny_loaded, settings)
    out = prompt.save(tmp_path / "adapter")
    ids = tiny_loaded.tokenizer("def add(a, b):\n    return", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        batch = left_padded(
            [ids], tiny_loaded.model.get_input_embeddings(), tiny_loaded.tokenizer.pad_token_id, prompt.inputs()
        )
        ours = tiny_loaded.model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            past_key_values=batch.past_key_values,
        ).logits
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
        tokens = torch.tensor([ids])
        theirs = peft(input_ids=tokens, attention_mask=torch.ones_like(tokens)).logits
    assert theirs.shape[1] == ours.shape[1] == len(ids) + (0 if isinstance(prompt.inputs(), Prefix) else 5)
    assert ours.abs().max() > 1.0, "logits spread enough for the comparison to mean something"
    assert torch.allclose(ours[:, -len(ids) :], theirs[:, -len(ids) :], atol=1e-5)
    # Our reader of the saved files gives what the trained prompt gives.
    reread = use_prompt(tiny_loaded, out)
    now = prompt.inputs()
    if isinstance(now, Prefix):
        assert all(torch.equal(a, b) for a, b in zip(reread.keys + reread.values, now.keys + now.values))
    else:
        assert torch.equal(reread, now)


def test_a_prefix_from_text_is_the_text_as_a_hard_prompt(tiny_loaded):
    """TEXT init of a prefix: the key/values the model computes for the text, so before training
    the model reads any prompt exactly as if the text came first (Li & Liang's init)."""
    text = "def solve(x):"
    text_ids = tiny_loaded.tokenizer(text)["input_ids"]
    prompt = SoftPrompt.create(
        tiny_loaded, TrainConfig(method="prefix_tuning", num_virtual_tokens=len(text_ids), init=text)
    )
    rows = [
        tiny_loaded.tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in ("    return x + 1", "    # add one\n    return x+1")
    ]
    with torch.no_grad():
        batch = left_padded(
            rows, tiny_loaded.model.get_input_embeddings(), tiny_loaded.tokenizer.pad_token_id, prompt.inputs()
        )
        ours = tiny_loaded.model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            past_key_values=batch.past_key_values,
        ).logits
        for row, ids in enumerate(rows):
            hard = tiny_loaded.model(input_ids=torch.tensor([text_ids + ids])).logits[0, -len(ids) :]
            assert torch.allclose(ours[row, -len(ids) :], hard, atol=1e-4)
    # Longer prompts repeat the text's tokens, shorter ones cut them (as PEFT's prompt-tuning TEXT init).
    from trainable.softprompt import init_token_ids

    long = TrainConfig(method="prefix_tuning", num_virtual_tokens=len(text_ids) * 2 + 1, init=text)
    assert init_token_ids(tiny_loaded, long) == (text_ids * 3)[: len(text_ids) * 2 + 1]


def test_a_prefix_from_sampled_vocabulary_is_seeded(tiny_loaded):
    from trainable.softprompt import prefix_from_tokens

    config = TrainConfig(method="prefix_tuning", num_virtual_tokens=6, init="sample_vocab", seed=4)
    a = SoftPrompt.create(tiny_loaded, config).output().detach()
    b = SoftPrompt.create(tiny_loaded, config).output().detach()
    assert torch.equal(a, b)
    c = (
        SoftPrompt.create(
            tiny_loaded, TrainConfig(method="prefix_tuning", num_virtual_tokens=6, init="sample_vocab", seed=5)
        )
        .output()
        .detach()
    )
    assert not torch.equal(a, c)
    # Position 0 holds real key/values: those of some vocabulary token read at position 0.
    vocab = [prefix_from_tokens(tiny_loaded, [token])[0] for token in range(len(tiny_loaded.tokenizer))]
    assert any(torch.allclose(a[0], row, atol=1e-5) for row in vocab)


def test_prefix_dims_follow_peft_on_a_gqa_model(tiny_loaded):
    """PEFT stores key/value heads only (GQA); our shape check must agree with what PEFT builds."""
    prompt = SoftPrompt.create(tiny_loaded, TrainConfig(num_virtual_tokens=3, method="prefix_tuning"))
    config = tiny_loaded.model.config
    assert config.num_key_value_heads < config.num_attention_heads
    dims = model_dims("prefix_tuning", config)
    assert (prompt.config.token_dim, prompt.config.num_layers, prompt.config.num_attention_heads) == (
        dims["token_dim"],
        dims["num_layers"],
        dims["num_attention_heads"],
    )
    prefix = prompt.inputs()
    head_dim = config.hidden_size // config.num_attention_heads
    assert len(prefix.keys) == config.num_hidden_layers
    assert prefix.keys[0].shape == (config.num_key_value_heads, 3, head_dim) and len(prefix) == 3


@CASES
def test_warm_start_reproduces_the_saved_prompt_exactly(tiny_loaded, tmp_path, settings):
    source = _perturbed(tiny_loaded, settings, tokens=4)
    out = source.save(tmp_path / "source")
    saved = load_file(out / WEIGHTS_FILE)["prompt_embeddings"]
    config = TrainConfig(num_virtual_tokens=4, seed=7, **{**settings, "init": f"adapter:{out}"})
    warm = SoftPrompt.create(tiny_loaded, config)
    assert torch.equal(warm.output().detach(), saved)
    assert torch.equal(warm.output().detach(), source.output().detach())
    if warm.reparameterised:  # the encoder itself came back, not only its output
        assert all(torch.equal(a, b) for a, b in zip(warm.parameters(), source.parameters()))


def _adapter(loaded, tmp_path, name: str, **settings):
    return _perturbed(loaded, settings, tokens=settings.pop("tokens", 4)).save(tmp_path / name)


def test_warm_start_mismatches_are_one_line_errors_naming_init(tiny_loaded, tmp_path):
    prompt_4 = _adapter(tiny_loaded, tmp_path, "pt4", method="prompt_tuning")
    p_tuning = _adapter(tiny_loaded, tmp_path, "p16", method="p_tuning", encoder_hidden_size=16)
    prefix_proj = _adapter(tiny_loaded, tmp_path, "px", method="prefix_tuning", prefix_projection=8)
    cases = [
        ({"init": f"adapter:{tmp_path / 'missing'}"}, "not found"),
        ({"init": f"adapter:{prompt_4}", "method": "p_tuning"}, "method 'p_tuning' (this adapter has 'prompt_tuning')"),
        ({"init": f"adapter:{prompt_4}", "num_virtual_tokens": 8}, "num_virtual_tokens 8 (this adapter has 4)"),
        (
            {"init": f"adapter:{p_tuning}", "method": "p_tuning", "encoder_hidden_size": 32},
            "encoder_hidden_size 32 (this adapter has 16)",
        ),
        ({"init": f"adapter:{prefix_proj}", "method": "prefix_tuning"}, "prefix_projection 0 (this adapter has 8)"),
    ]
    for settings, message in cases:
        with pytest.raises(UsageError) as caught:
            TrainConfig(**{"num_virtual_tokens": 4, **settings})
        text = str(caught.value)
        assert text.startswith(f"init: got {settings['init']!r}, expected ") and message in text, text
        assert "\n" not in text


def test_warm_start_from_another_hidden_size_is_refused(tiny_loaded, tmp_path):
    from trainable.model.loading import LoadedModel, ModelRef

    adapter = _adapter(tiny_loaded, tmp_path, "h48", method="prompt_tuning")
    other = LoadedModel(
        tiny_model(len(tiny_loaded.tokenizer), hidden=32), tiny_loaded.tokenizer, ModelRef("tiny32", "local", "tiny32")
    )
    config = TrainConfig(num_virtual_tokens=4, init=f"adapter:{adapter}")
    with pytest.raises(
        UsageError,
        match=r"^init: got .*expected an adapter for this model's hidden size 32 "
        r"\(this adapter has 48\)$",
    ):
        SoftPrompt.create(other, config)


def test_a_plain_peft_p_tuning_adapter_cannot_warm_start(tiny_loaded, tmp_path):
    """PEFT's files hold P-tuning's output, not its MLP: continuing needs our encoder file."""
    adapter = _adapter(tiny_loaded, tmp_path, "p", method="p_tuning", encoder_hidden_size=16)
    (adapter / ENCODER_FILE).unlink()
    with pytest.raises(
        UsageError, match=rf"^init: got .*expected .*an adapter saved by this project, with {ENCODER_FILE}"
    ):
        TrainConfig(num_virtual_tokens=4, method="p_tuning", encoder_hidden_size=16, init=f"adapter:{adapter}")
    # It still works as a prompt to use (generation needs only the output).
    assert use_prompt(tiny_loaded, adapter).shape == (4, tiny_loaded.model.config.hidden_size)
    config_json = json.loads((adapter / "adapter_config.json").read_text())
    assert config_json["peft_type"] == "P_TUNING" and config_json["encoder_hidden_size"] == 16


def test_damaged_adapter_files_are_one_line_errors(tiny_loaded, tmp_path):
    from safetensors.torch import save_file

    from trainable.softprompt import load_prompt

    adapter = _adapter(tiny_loaded, tmp_path, "a", method="prefix_tuning")
    save_file({"other": torch.zeros(4, 96)}, adapter / WEIGHTS_FILE)
    with pytest.raises(UsageError, match=r"^--prompt: got .*holds prompt_embeddings \(KeyError"):
        load_prompt(adapter)
    save_file({"prompt_embeddings": torch.zeros(4, 95)}, adapter / WEIGHTS_FILE)
    with pytest.raises(UsageError, match=r"^--prompt: got .*of shape \[4, 96\] as its adapter_config.json says"):
        load_prompt(adapter)
    (adapter / WEIGHTS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match=r"^--prompt: got .*holds prompt_embeddings"):
        load_prompt(adapter)
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"^init: got .*JSONDecodeError"):
        TrainConfig(num_virtual_tokens=4, method="prefix_tuning", init=f"adapter:{adapter}")
    with pytest.raises(UsageError, match=r"^init: got 'adapter:', expected 'adapter:PATH' with the PATH"):
        TrainConfig(init="adapter:")


@pytest.mark.parametrize(
    "settings, field, message",
    [
        ({"method": "lora"}, "method", "one of prompt_tuning, p_tuning, prefix_tuning"),
        ({"method": "p_tuning", "init": "sample_vocab"}, "init", "'random' or 'adapter:PATH' for method p_tuning"),
        ({"method": "p_tuning", "init": "Write code."}, "init", "P-tuning's embeddings pass through an MLP"),
        (
            {"method": "prefix_tuning", "prefix_projection": 8, "init": "Write code."},
            "init",
            "'random' or 'adapter:PATH' for method prefix_tuning with prefix_projection 8",
        ),
        (
            {"method": "prefix_tuning", "prefix_projection": 8, "init": "sample_vocab"},
            "init",
            "with prefix_projection 8",
        ),
        ({"encoder_hidden_size": 64}, "encoder_hidden_size", "no value unless method is p_tuning"),
        (
            {"method": "p_tuning", "prefix_projection": 64},
            "prefix_projection",
            "no value unless method is prefix_tuning",
        ),
        ({"method": "p_tuning", "encoder_hidden_size": 0}, "encoder_hidden_size", "an integer >= 1"),
        ({"method": "prefix_tuning", "prefix_projection": -1}, "prefix_projection", "an integer >= 0"),
    ],
)
def test_method_settings_are_checked(settings, field, message):
    with pytest.raises(UsageError) as caught:
        TrainConfig(**settings)
    assert str(caught.value).startswith(f"{field}: got ") and message in str(caught.value)


@pytest.mark.parametrize(
    "path",
    ["x" * 5000, "a\x00b", "~no-such-user-xyz/adapter", "/dev/null"],
    ids=["too-long", "nul-byte", "unknown-user", "a-device"],
)
def test_paths_the_os_refuses_are_not_found_in_one_line(path):
    with pytest.raises(UsageError) as caught:
        TrainConfig(init=f"adapter:{path}")
    text = str(caught.value)
    assert text.startswith("init: got ") and "(not found" in text and "\n" not in text, text


@pytest.mark.parametrize(
    "change",
    [
        {"num_virtual_tokens": 1e400},
        {"num_virtual_tokens": True},
        {"num_virtual_tokens": 4.5},
        {"num_virtual_tokens": "4"},
        {"num_virtual_tokens": 0},
        {"token_dim": -48},
        {"num_layers": None},
        {"encoder_hidden_size": [16]},
        {"peft_type": "LORA"},
        {"peft_type": ["PROMPT_TUNING"]},
    ],
    ids=lambda change: repr(change),
)
def test_hostile_adapter_configs_are_one_line_errors(tiny_loaded, tmp_path, change):
    adapter = _adapter(tiny_loaded, tmp_path, "a", method="prompt_tuning")
    config_file = adapter / "adapter_config.json"
    raw = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**raw, **change}))
    with pytest.raises(UsageError) as caught:
        TrainConfig(num_virtual_tokens=4, init=f"adapter:{adapter}")
    text = str(caught.value)
    assert text.startswith(f"init: got 'adapter:{adapter}', expected a saved soft prompt") and "\n" not in text, text
    for bad in ("[1]", '"text"', "null"):
        config_file.write_text(bad)
        with pytest.raises(UsageError, match=r"^init: got .*expected a saved soft prompt"):
            TrainConfig(num_virtual_tokens=4, init=f"adapter:{adapter}")


@pytest.mark.parametrize(
    "settings", [METHODS["p_tuning"][0], METHODS["prefix_projected"][0]], ids=["p_tuning", "prefix_projected"]
)
def test_a_warm_started_trial_begins_at_the_saved_prompt_and_trains_it(tiny_loaded, tmp_path, settings):
    """Through `Trial` (what a search runs): epoch 0 is the saved prompt bit for bit, and the
    optimizer holds the very parameters the adapter was loaded into."""
    from trainable.trial import Trial

    out = _perturbed(tiny_loaded, settings, tokens=4).save(tmp_path / "source")
    saved = load_file(out / WEIGHTS_FILE)["prompt_embeddings"]
    config = TrainConfig(
        num_virtual_tokens=4,
        epochs=1,
        batch_size=4,
        learning_rate=0.01,
        max_new_tokens=4,
        **{**settings, "init": f"adapter:{out}"},
    )
    trial = Trial(config, "tiny", DataSplit(4, 2, 2), loaded=tiny_loaded)
    assert torch.equal(trial.prompt.output().detach(), saved)
    trained = {id(p) for group in trial.trainer.optimizer.param_groups for p in group["params"]}
    assert trained == {id(p) for p in trial.prompt.parameters()}
    trial.trainer.train_epoch(trial.examples, 1)
    assert not torch.equal(trial.prompt.output().detach(), saved), "training moves the warm-started prompt"
