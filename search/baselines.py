"""Hard-prompt baselines: what a user would try before tuning a soft prompt.

Each TEXT init of the space is a hand-written prompt, used two ways:
  tokens    the text's own token embeddings in the soft prompt's place: exactly the TEXT-init soft
            prompt before any training (with as many virtual tokens as the text has tokens)
  comment   the text as a Python comment line before the problem's prompt
and one more candidate needs no text from the space:
  one_shot  one worked problem and its solution from the train split (the first in the split's
            order with a canonical solution or a self-verified target) before the problem
Every candidate is scored on val; the best one (ties: the earlier in this order: the space's
texts, tokens before comment, then one-shot) is then scored on test. Test never takes part in
the choice. The frozen model is scored on val as well: the reference a trial's val pass@1 is
read against.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from search.callbacks import text_param_hash
from trainable.config import InitKind, TrainConfig, init_kind
from trainable.decoding.generate_and_score import Arm, evaluate_problems
from trainable.engine import as_engine

FORMS = ("tokens", "comment")  # the forms of a space's text; `one_shot` is a candidate of its own
ONE_SHOT = "one_shot"


@dataclass(frozen=True)
class HardPrompt:
    text: str
    form: str
    example_id: str | None = None  # one_shot: the train problem whose solution `text` shows

    @property
    def label(self) -> str:
        return f"{self.form}-{text_param_hash(self.text)}"

    def describe(self) -> str:
        if self.form == ONE_SHOT:
            return f"one worked example ({self.example_id} and its solution) before the problem"
        shown = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        how = "as tokens in the soft prompt's place" if self.form == "tokens" else "as a comment line"
        return f"{shown!r} {how}"


@dataclass
class HardBaseline:
    chosen: HardPrompt
    val_pass_at_1: dict[str, float]  # label -> val pass@1, every candidate
    test_samples: list[dict] = field(default_factory=list)
    descriptions: dict[str, str] = field(default_factory=dict)  # label -> describe(), every candidate


def texts_of(search: dict, fixed: dict) -> list[str]:
    """The space's TEXT inits, in order and once each: the searched choices (of every method, when
    `init` is per method), else a fixed init. A text is a hand-written prompt whatever the method."""
    dist = search.get("init")
    dists = list(getattr(dist, "by_method", {}).values()) or ([dist] if dist is not None else [])
    values = (
        [v for d in dists if d.kind.value == "choice" for v in d.values] if dists else [fixed.get("init", "random")]
    )
    texts = [v for v in values if isinstance(v, str) and init_kind(v) is InitKind.TEXT]
    return list(dict.fromkeys(texts))


def one_shot(train_problems: list[dict], targets: dict[str, list[str]] | None) -> HardPrompt | None:
    """The worked example: the first train problem (split order) with a canonical solution or a
    self-verified target, as its prompt and that solution; None when no problem has one."""
    for problem in train_problems:
        solutions = [problem["canonical_solution"]] if "canonical_solution" in problem else []
        solution = next(iter(solutions or (targets or {}).get(problem["task_id"], [])), None)
        if solution is not None:
            return HardPrompt(problem["prompt"] + solution.rstrip() + "\n", ONE_SHOT, problem["task_id"])
    return None


def candidates(texts: list[str], example: HardPrompt | None = None) -> list[HardPrompt]:
    return [HardPrompt(text, form) for text in texts for form in FORMS] + ([example] if example else [])


def as_comment(text: str) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in text.splitlines() or [""])


def arm_inputs(model, hard: HardPrompt, problems: list[dict]):
    """(problems, soft prompt) that put `hard` in front of every problem; `model`: a loaded model
    or an engine (`trainable.engine`)."""
    if hard.form == "comment":
        return [{**p, "prompt": as_comment(hard.text) + p["prompt"]} for p in problems], None
    if hard.form == ONE_SHOT:  # the example, a blank line, then the problem: two functions in one file
        return [{**p, "prompt": hard.text + "\n\n" + p["prompt"]} for p in problems], None
    engine = as_engine(model)
    ids = engine.facts.tokenizer(hard.text)["input_ids"]  # as PEFT's TEXT init tokenizes it
    return problems, engine.embed(ids)


def score_hard(model, hard: HardPrompt | None, problems: list[dict], config: TrainConfig) -> list[dict]:
    """Samples of `problems` behind `hard`; None: the frozen model, no prompt at all."""
    inputs, weight = arm_inputs(model, hard, problems) if hard is not None else (problems, None)
    return evaluate_problems(
        as_engine(model), inputs, weight, config.max_new_tokens, config.eval_batch_size, config.sandbox_timeout_s
    ).samples


def rate(samples: list[dict]) -> float:
    return sum(s["passed"] for s in samples) / len(samples) if samples else 0.0


def choose_on_val(val_results: dict[HardPrompt, list[dict]]) -> HardPrompt:
    """The best val pass@1; `max` keeps the first of equals, i.e. the space's order."""
    return max(val_results, key=lambda hard: rate(val_results[hard]))


def hard_arms(model, hard_prompts: list[HardPrompt], problems: list[dict]) -> dict[str, Arm]:
    """Each candidate in front of `problems`, keyed by its label: arms for `evaluate_arms`."""
    return {hard.label: arm_inputs(model, hard, problems) for hard in hard_prompts}


def choose_and_test(
    model,
    hard_prompts: list[HardPrompt],
    val_samples: dict[str, list[dict]],
    test_problems: list[dict],
    config: TrainConfig,
) -> HardBaseline | None:
    """Choose on val (`val_samples`: each candidate's, by label), then score only the chosen
    candidate on test."""
    if not hard_prompts:
        return None
    chosen = choose_on_val({hard: val_samples[hard.label] for hard in hard_prompts})
    return HardBaseline(
        chosen,
        {hard.label: rate(val_samples[hard.label]) for hard in hard_prompts},
        score_hard(model, chosen, test_problems, config),
        {hard.label: hard.describe() for hard in hard_prompts},
    )
