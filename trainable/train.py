"""Train the soft prompt: AdamW on the method's own parameters only, the model frozen.

The loss covers only the completion tokens (the target + end of text): a HumanEval canonical
solution, or a self-verified completion (`trainable.distill`) for a source without solutions. Only the
hidden states of those positions go through the output layer: with a 152k vocabulary the
full logits would dominate time and memory on CPU (see bench/bench_train.py).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch

from trainable.config import TrainConfig
from trainable.engine import LossRequest, StepResult, as_engine, backward_into, fused_completion_loss
from trainable.inputs import Prefix
from trainable.model.loading import LoadedModel
from trainable.softprompt import SoftPrompt


@dataclass(frozen=True)
class TrainExample:
    tokens: list[int]  # prompt + target
    n_prompt: int  # tokens before the target; they carry no loss


@dataclass
class EpochStats:
    loss: float
    steps: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def build_examples(model, problems: list[dict], max_length: int) -> list[TrainExample]:
    """prompt -> `target` (default: the canonical solution) + eos; over-long examples lose prompt
    tokens from the left. `model`: anything with the model's `tokenizer` (a loaded model, an
    engine's `facts`)."""
    tok = model.tokenizer
    examples = []
    for problem in problems:
        prompt = tok(problem["prompt"], add_special_tokens=False)["input_ids"]
        text = problem["target"] if "target" in problem else problem["canonical_solution"]
        target = tok(text, add_special_tokens=False)["input_ids"]
        if tok.eos_token_id is not None:
            target = target + [tok.eos_token_id]
        target = target[: max_length - 1]  # keep at least one prompt token to condition on
        prompt = prompt[-(max_length - len(target)) :]
        examples.append(TrainExample(prompt + target, len(prompt)))
    return examples


def completion_loss(
    loaded: LoadedModel, soft: torch.Tensor | Prefix | None, examples: list[TrainExample]
) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over completion tokens, and the number of tokens processed (the soft
    prompt's positions included). `soft`: input embeddings or a prefix (`SoftPrompt.inputs()`).
    The engine's step for one request (`trainable.engine`)."""
    return fused_completion_loss(loaded, [LossRequest(soft, examples)])[0]


class Trainer:
    """Optimizer + schedule for one soft prompt; its state travels in trial checkpoints. The
    model's forward/backward is the engine's (`trainable.engine`; `model`: an engine or a loaded
    model, served in-process): this trial's rows alone (`train_epoch`, which an engine serving
    several trials fuses with theirs) or beside other trainers' rows (`step_together`)."""

    def __init__(self, model, prompt: SoftPrompt, config: TrainConfig, n_examples: int):
        self.engine, self.prompt, self.config = as_engine(model), prompt, config
        self.optimizer = torch.optim.AdamW(
            prompt.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        total = config.epochs * math.ceil(n_examples / config.batch_size)
        warmup = max(1, round(config.warmup_ratio * total)) if config.warmup_ratio else 0
        # Linear warm-up then constant: ASHA compares trials at rungs, so a schedule that
        # depends on the full length would penalise trials differently by where they stop.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )

    def batches(self, examples: list[TrainExample], epoch: int) -> list[list[TrainExample]]:
        """The epoch's batches, in this trial's own seeded order."""
        order = list(range(len(examples)))
        random.Random(self.config.seed * 100_003 + epoch).shuffle(order)
        size = self.config.batch_size
        return [[examples[i] for i in order[start : start + size]] for start in range(0, len(order), size)]

    def request(self, batch: list[TrainExample]) -> tuple[torch.Tensor | Prefix, LossRequest]:
        """This trial's soft inputs (kept: `apply` pushes the gradient through them) and request."""
        soft = self.prompt.inputs()
        return soft, LossRequest(soft, batch)

    def apply(self, soft: torch.Tensor | Prefix, result: StepResult) -> None:
        """The engine's gradient w.r.t. `soft` -> this trial's parameters -> one optimizer step."""
        self.optimizer.zero_grad(set_to_none=True)
        backward_into(soft, result.grad)
        torch.nn.utils.clip_grad_norm_(self.prompt.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()

    def train_epoch(self, examples: list[TrainExample], epoch: int) -> EpochStats:
        started, losses, tokens = time.perf_counter(), [], 0
        for batch in self.batches(examples, epoch):
            (result,) = step_together([(self, batch)])
            losses.append(result.loss)
            tokens += result.tokens
        seconds = time.perf_counter() - started
        return EpochStats(sum(losses) / max(1, len(losses)), len(losses), tokens, seconds)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def step_together(
    work: list[tuple[Trainer, list[TrainExample]]], rows_per_forward: int | None = None
) -> list[StepResult]:
    """One optimizer step for each (trainer, batch), from the shared frozen model's forwards and
    backwards over every batch's rows (all trainers hold the same engine, or in-process engines
    of the same loaded model; `rows_per_forward`: `trainable.engine.train_step`'s, default the
    engine's)."""
    engine = work[0][0].engine
    if any(_served_model(trainer.engine) is not _served_model(engine) for trainer, _ in work):
        raise ValueError("trainers stepped together must share one loaded model")
    inputs = [trainer.request(batch) for trainer, batch in work]
    requests = [request for _, request in inputs]
    results = engine.train_step(requests, rows_per_forward) if rows_per_forward else engine.train_step(requests)
    for (trainer, _), (soft, _), result in zip(work, inputs, results):
        trainer.apply(soft, result)
    return results


def _served_model(engine):
    """What an engine serves: its loaded model in-process, else the engine itself."""
    return getattr(engine, "loaded", engine)
