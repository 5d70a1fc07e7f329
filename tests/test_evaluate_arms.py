"""Several arms' soft prompts scored on the same problems from one fused decode
(`trainable.decoding.generate_and_score.evaluate_arms`): each arm's result is what evaluating it alone
gives (tiny model, fp32, real sandbox)."""

from __future__ import annotations

import torch

from trainable.data.splits import load_problems
from trainable.decoding.generate_and_score import evaluate_arms, evaluate_problems
from trainable.inputs import Prefix
from trainable.model.loading import LoadedModel, ModelRef
from trainable.tiny import tiny_model, tiny_tokenizer

SETTINGS = dict(max_new_tokens=8, batch_size=2, sandbox_timeout_s=10.0)


def _scaled_tiny() -> LoadedModel:
    # Scaled-up weights spread the logits, so that each soft prompt changes what the model writes.
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), seed=1, weight_scale=6.0)
    model.generation_config.eos_token_id = None
    return LoadedModel(model, tokenizer, ModelRef("tiny", "local", "tiny"))


def _arms(loaded) -> dict:
    config = loaded.model.config
    g = torch.Generator().manual_seed(5)
    head_dim = config.hidden_size // config.num_attention_heads

    def kv(n: int) -> torch.Tensor:  # as large as the scaled model's own keys, to draw attention
        return torch.randn(config.num_key_value_heads, n, head_dim, generator=g) * 20

    layers = range(config.num_hidden_layers)
    return {
        "prompt tuning": torch.randn(4, config.hidden_size, generator=g) * 2,
        "prefix": Prefix(tuple(kv(6) for _ in layers), tuple(kv(6) for _ in layers)),
        "frozen": None,
    }


def test_each_arm_of_one_fused_decode_scores_as_it_does_alone():
    loaded = _scaled_tiny()
    problems = [p for _, p in sorted(load_problems().items())][:3]
    arms = _arms(loaded)
    together = evaluate_arms(loaded, {name: (problems, soft) for name, soft in arms.items()}, **SETTINGS)
    assert list(together) == list(arms)
    completions = {}
    for name, soft in arms.items():
        alone = evaluate_problems(loaded, problems, soft, **SETTINGS)
        assert together[name].samples == alone.samples, name
        assert (together[name].pass_at_1, together[name].n) == (alone.pass_at_1, len(problems))
        completions[name] = [s["completion"] for s in alone.samples]
    assert len({tuple(c) for c in completions.values()}) == len(arms), "arms write differently: routing shows"
    shared = together["frozen"].generation
    assert shared.sequences == len(problems) * len(arms) and all(r.generation is shared for r in together.values())


def test_arms_with_their_own_problems_score_as_they_do_alone():
    """The final report's arms: the soft prompt and the frozen model on test, the frozen model on
    val, a hard prompt written before val's prompts: one decode, each as alone."""
    loaded = _scaled_tiny()
    ordered = [p for _, p in sorted(load_problems().items())]
    test, val = ordered[:3], ordered[3:5]
    hinted = [{**p, "prompt": "# Write correct code.\n" + p["prompt"]} for p in val]
    arms = {
        "soft": (test, _arms(loaded)["prompt tuning"]),
        "frozen": (test, None),
        "frozen val": (val, None),
        "hard val": (hinted, None),
    }
    together = evaluate_arms(loaded, arms, **SETTINGS)
    for name, (problems, soft) in arms.items():
        alone = evaluate_problems(loaded, problems, soft, **SETTINGS)
        assert together[name].samples == alone.samples, name
    assert [s["task_id"] for s in together["hard val"].samples] == [p["task_id"] for p in val]
    assert together["hard val"].samples != together["frozen val"].samples, "the hard prompt changes nothing"
