"""One trial without Ray: train a soft prompt epoch by epoch, scoring val pass@1 after each.

`search.tune_trial` wraps `Trial` for Ray Tune (report + checkpoint per epoch); tests and the
benchmarks call it directly. A trial holds its soft prompt, optimizer and data, never the model:
an engine serves it (`trainable.engine`): in-process here unless one is given, under Ray Tune the
one engine of its device that serves every trial there (`search.engine_service`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trainable.checkpoint import adapter_dir, state_file, write_trial_files
from trainable.config import TrainConfig
from trainable.data.splits import DataSplit, problems_for
from trainable.distill import ensure_targets, training_items
from trainable.decoding.generate_and_score import EvalResult, evaluate_problems
from trainable.dtype_probe import config_dtype
from trainable.engine import LocalEngine, LossRequest
from trainable.model.loading import LoadedModel, cached_model
from trainable.softprompt import SoftPrompt
from trainable.train import Trainer, build_examples

OBJECTIVE = "objective"
# Val pass@1 moves in steps of 1/len(val); many trials tie (a tiny model ties at 0). Ties are
# broken by the val loss of the canonical solutions, weighted so that it can never reorder two
# different pass@1 values (loss is capped at 50: 50 * 1e-4 < 1/164).
LOSS_TIEBREAK = 1e-4
LOSS_CAP = 50.0


def peak_memory_gib(device) -> float:
    """This process's peak so far: GPU memory allocated by torch on a CUDA device (what a trial's
    GPU fraction must hold), else resident memory (Linux reports ru_maxrss in KiB)."""
    import resource

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def objective(pass_at_1: float, val_loss: float) -> float:
    """What ASHA and Optuna maximise: val pass@1, ties broken by lower val loss."""
    loss = LOSS_CAP if val_loss != val_loss else min(val_loss, LOSS_CAP)  # NaN -> worst
    return pass_at_1 - LOSS_TIEBREAK * loss


@dataclass
class EpochResult:
    epoch: int
    val_pass_at_1: float
    val_passed: int
    val_n: int
    val_loss: float
    train_loss: float
    train_tokens_per_s: float
    train_seconds: float
    eval_seconds: float
    generation_tokens_per_s: float
    sandbox_seconds: float
    peak_memory_gib: float = 0.0

    def metrics(self) -> dict:
        """What every report carries; `pass@1` is the search objective."""
        out = asdict(self)
        out["pass@1"] = out.pop("val_pass_at_1")
        out[OBJECTIVE] = objective(self.val_pass_at_1, self.val_loss)
        return out


class Trial:
    def __init__(
        self,
        config: TrainConfig,
        model_ref: str,
        data: DataSplit,
        loaded: LoadedModel | None = None,
        targets: dict[str, list[str]] | None = None,
        engine=None,
    ):
        """`targets`: self-verified targets of the train problems (a search distils them once,
        before its trials); without them a train source that needs them is distilled here, by
        the trial's engine. `engine`: the engine that serves this trial, with the
        reason for its dtype (`engine.dtype_reason`); else one in this process, on `loaded` or on
        the model this process caches."""
        self.config, self.model_ref, self.data = config, model_ref, data
        if engine is None and loaded is not None:  # the caller's model, in its dtype
            engine = LocalEngine(loaded)
        elif engine is None:
            dtype, reason = config_dtype(config, model_ref)
            engine = LocalEngine(cached_model(model_ref, dtype=dtype), dtype_reason=reason)
        self.engine, self.dtype_reason = engine, engine.dtype_reason
        self.model = self.engine.facts
        self.prompt = SoftPrompt.create(self.engine, config)
        train = problems_for("train", data)
        if targets is None and data.needs_targets():
            targets, _ = ensure_targets(model_ref, train, data.distill, config, self.engine)
        items, self.skipped = training_items(train, targets)
        self.examples = build_examples(self.model, items, config.max_length)
        self.val_problems = problems_for("val", data)
        # Val loss (the objective's tie-breaker) needs reference solutions: HumanEval has them.
        with_solutions = [p for p in self.val_problems if "canonical_solution" in p]
        self.val_examples = build_examples(self.model, with_solutions, config.max_length)
        self.trainer = Trainer(self.engine, self.prompt, config, max(1, len(self.examples)))
        self.epoch = 0
        self.last_eval: EvalResult | None = None

    def run_epoch(self) -> EpochResult:
        self.epoch += 1
        stats = self.trainer.train_epoch(self.examples, self.epoch) if self.examples else None
        started = time.perf_counter()
        self.last_eval = self.evaluate(self.val_problems)
        val_loss = self.val_loss()
        eval_seconds = time.perf_counter() - started
        return EpochResult(
            epoch=self.epoch,
            val_pass_at_1=self.last_eval.pass_at_1,
            val_passed=self.last_eval.passed,
            val_n=self.last_eval.n,
            val_loss=val_loss,
            train_loss=stats.loss if stats else float("nan"),
            train_tokens_per_s=stats.tokens_per_s if stats else 0.0,
            train_seconds=stats.seconds if stats else 0.0,
            eval_seconds=eval_seconds,
            generation_tokens_per_s=self.last_eval.generation.tokens_per_s,
            sandbox_seconds=self.last_eval.sandbox_seconds,
            peak_memory_gib=peak_memory_gib(self.model.device),
        )

    def evaluate(self, problems: list[dict]) -> EvalResult:
        c = self.config
        with torch.no_grad():
            soft = self.prompt.inputs()
        return evaluate_problems(self.engine, problems, soft, c.max_new_tokens, c.eval_batch_size, c.sandbox_timeout_s)

    @torch.no_grad()
    def val_loss(self) -> float:
        """Teacher-forced loss of the val canonical solutions (the objective's tie-breaker)."""
        size, soft = self.config.batch_size, self.prompt.inputs()
        batches = [self.val_examples[start : start + size] for start in range(0, len(self.val_examples), size)]
        if not batches:
            return float("nan")
        losses = self.engine.losses([LossRequest(soft, batch) for batch in batches])
        total, count = 0.0, 0
        for batch, (loss, _) in zip(batches, losses):
            n = sum(len(ex.tokens) - ex.n_prompt for ex in batch)
            total, count = total + loss * n, count + n
        return total / count if count else float("nan")

    def trained_with(self) -> dict:
        """What `trainable.evaluate --prompt` needs to score as the search did."""
        c, ref = self.config, self.model.ref
        return {
            "model": ref.location if ref.kind == "local" else ref.ref,
            "model_identity": self.model.identity,
            "data": self.data.to_dict(),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "max_new_tokens": c.max_new_tokens,
            "eval_batch_size": c.eval_batch_size,
            "sandbox_timeout_s": c.sandbox_timeout_s,
        }

    def save(self, out_dir: str | Path) -> Path:
        """Checkpoint: the PEFT adapter (+ what it was trained with) + optimizer/schedule state +
        epoch (a few KB)."""
        out_dir = Path(out_dir)
        self.prompt.save(adapter_dir(out_dir))
        torch.save(
            {"epoch": self.epoch, "prompt": self.prompt.state_dict(), "trainer": self.trainer.state_dict()},
            state_file(out_dir),
        )
        write_trial_files(out_dir, self.trained_with(), asdict(self.config))
        return out_dir

    def restore(self, checkpoint_dir: str | Path) -> None:
        state = torch.load(state_file(checkpoint_dir), weights_only=True)
        self.prompt.load_state_dict(state["prompt"])
        self.trainer.load_state_dict(state["trainer"])
        self.epoch = state["epoch"]
