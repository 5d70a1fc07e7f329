"""The engine: one forward/backward of the frozen model for several trials' rows equals each
trial's own step (fp32, tiny model): losses, gradients, and parameters after optimizer steps,
for mixed methods, numbers of virtual tokens, batch sizes, and trials joining and leaving."""

import pytest
import torch

from bench.bench_train import full_logits_loss
from trainable.config import TrainConfig
from trainable.data.splits import DataSplit, problems_for
from trainable.engine import LossRequest, fused_completion_loss, train_step
from trainable.inputs import Prefix
from trainable.softprompt import SoftPrompt
from trainable.train import Trainer, build_examples, step_together


def _reference_loss(loaded, soft, examples):
    """One request alone: trainable.inputs' own layout and the stock loss over every position's
    logits (bench_train's baseline, the path before the engine)."""
    return full_logits_loss(loaded, soft, examples)[0]


def _random_prefix(loaded, n, seed):
    config = loaded.model.config
    heads = config.num_key_value_heads
    head_dim = config.hidden_size // config.num_attention_heads
    g = torch.Generator().manual_seed(seed)
    make = lambda: torch.randn(heads, n, head_dim, generator=g)  # noqa: E731
    return Prefix(
        tuple(make() for _ in range(config.num_hidden_layers)), tuple(make() for _ in range(config.num_hidden_layers))
    )


def _flat(soft):
    if isinstance(soft, Prefix):
        return torch.cat([t.reshape(-1) for t in (*soft.keys, *soft.values)])
    return soft.reshape(-1)


@pytest.fixture
def examples(tiny_loaded):
    return build_examples(tiny_loaded, problems_for("train", DataSplit(12, 4, 4)), 96)


@pytest.mark.parametrize("rows_per_forward", [None, 1, 64], ids=["largest-batch", "row-by-row", "one-forward"])
def test_fused_losses_and_gradients_equal_each_request_alone(tiny_loaded, examples, rows_per_forward):
    hidden = tiny_loaded.model.config.hidden_size
    g = torch.Generator().manual_seed(0)
    requests = [
        LossRequest(torch.randn(4, hidden, generator=g), examples[0:2]),  # prompt tuning, 4 tokens
        LossRequest(_random_prefix(tiny_loaded, 3, 1), examples[2:5]),  # prefix of 3
        LossRequest(torch.randn(7, hidden, generator=g), examples[5:6]),  # 7 tokens, batch of one
        LossRequest(None, examples[6:8]),  # the frozen model itself
        LossRequest(_random_prefix(tiny_loaded, 5, 2), examples[8:12]),  # prefix of 5
    ]
    fused = train_step(tiny_loaded, requests, rows_per_forward)
    for request, result in zip(requests, fused):
        leaf = None if request.soft is None else _leafed(request.soft)
        alone = _reference_loss(tiny_loaded, leaf, request.examples)
        assert result.loss == pytest.approx(alone.item(), rel=1e-6, abs=0)
        if leaf is None:
            assert result.grad is None
            continue
        alone.backward()
        expected, got = _flat(_grads(leaf)), _flat(result.grad)
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7), (got - expected).abs().max()
        assert (got - expected).norm() <= 1e-6 * expected.norm()


def test_token_counts_match_each_request_alone(tiny_loaded, examples):
    soft = torch.zeros(4, tiny_loaded.model.config.hidden_size)
    prefix = _random_prefix(tiny_loaded, 3, 0)
    together = fused_completion_loss(tiny_loaded, [LossRequest(soft, examples[:2]), LossRequest(prefix, examples[2:4])])
    assert together[0][1] == sum(4 + len(ex.tokens) for ex in examples[:2])
    assert together[1][1] == sum(3 + len(ex.tokens) for ex in examples[2:4])


def _leafed(soft):
    if isinstance(soft, Prefix):
        return Prefix(tuple(_leafed(k) for k in soft.keys), tuple(_leafed(v) for v in soft.values))
    return soft.detach().clone().requires_grad_(True)


def _grads(soft):
    if isinstance(soft, Prefix):
        return Prefix(tuple(k.grad for k in soft.keys), tuple(v.grad for v in soft.values))
    return soft.grad


CONFIGS = [
    TrainConfig(method="prompt_tuning", num_virtual_tokens=4, init="sample_vocab", batch_size=2, learning_rate=0.05),
    TrainConfig(method="p_tuning", num_virtual_tokens=6, batch_size=3, learning_rate=0.01, seed=1),
    TrainConfig(method="prefix_tuning", num_virtual_tokens=3, batch_size=2, learning_rate=0.02, seed=2),
    TrainConfig(method="prefix_tuning", num_virtual_tokens=5, prefix_projection=16, batch_size=4, seed=3),
]


def _trainers(loaded, n_examples):
    return [Trainer(loaded, SoftPrompt.create(loaded, config), config, n_examples) for config in CONFIGS]


def test_trials_stepped_together_end_where_each_alone_ends(tiny_loaded, examples):
    """Per trial, its own seeded batches; the first trial joins one step late, and trials with
    fewer batches leave early: the parameters after every step still equal training alone
    (relative difference of each tensor's norm; Adam turns last-bit gradient differences in
    near-zero entries into differences of up to its learning rate's scale in single entries)."""
    alone, together = _trainers(tiny_loaded, len(examples)), _trainers(tiny_loaded, len(examples))
    schedules = [trainer.batches(examples[: 4 + 2 * i], epoch=1) for i, trainer in enumerate(alone)]
    for trainer, batches in zip(alone, schedules):
        for batch in batches:
            step_together([(trainer, batch)])
    starts = [1, 0, 0, 0]  # trial 0 joins at the second step
    steps = max(start + len(batches) for start, batches in zip(starts, schedules))
    for step in range(steps):
        work = [
            (trainer, batches[step - start])
            for trainer, batches, start in zip(together, schedules, starts)
            if 0 <= step - start < len(batches)
        ]
        step_together(work)
    for a, b in zip(alone, together):
        for p, q in zip(a.prompt.parameters(), b.prompt.parameters()):
            assert (p - q).norm() <= 1e-5 * p.norm(), ((p - q).norm() / p.norm()).item()
        assert not torch.equal(a.prompt.parameters()[0], SoftPrompt.create(tiny_loaded, a.config).parameters()[0])


def test_trainers_of_different_models_are_refused(tiny_loaded, examples):
    other = type(tiny_loaded)(**{**vars(tiny_loaded)})
    a = Trainer(tiny_loaded, SoftPrompt.create(tiny_loaded, CONFIGS[0]), CONFIGS[0], 4)
    b = Trainer(other, SoftPrompt.create(other, CONFIGS[0]), CONFIGS[0], 4)
    with pytest.raises(ValueError, match="share one loaded model"):
        step_together([(a, examples[:2]), (b, examples[2:4])])
