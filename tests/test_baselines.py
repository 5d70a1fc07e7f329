"""Hard-prompt baselines: each text init as tokens (= the TEXT-init soft prompt before training) and
as a comment line; the best is chosen on val, never on test.

The tiny model writes noise, so the problems make pass/fail a rule of the arm, not of the noise:
the completion lands on a comment line (and stops at its end), and the test asserts on the line
where `f` starts - 1 for the tokens form, 1 + the text's lines for the comment form. Val and test
problems have opposite rules, so an arm's test score is the number of problems minus its val
score: the arm best on val is not the best on test, and a choice made on test would pick another.
(The sandbox compiles the program and the test apart, so a test cannot close the prompt's string.)
"""

from __future__ import annotations

import torch

from search.baselines import (
    ONE_SHOT,
    HardPrompt,
    arm_inputs,
    as_comment,
    candidates,
    choose_and_test,
    choose_on_val,
    hard_arms,
    one_shot,
    rate,
    score_hard,
    texts_of,
)
from spaces import load_space
from trainable.config import TrainConfig
from trainable.decoding.generate_and_score import evaluate_arms, evaluate_problems
from trainable.softprompt import SoftPrompt

CONFIG = TrainConfig(max_new_tokens=6, eval_batch_size=8, sandbox_timeout_s=5, dtype="float32")
TEXTS = ["Write correct code.", "def solve\nquickly", "Return the answer\nquickly\nand exactly.", "x"]
# Per problem, the lines where `f` may start for a val pass (a test pass: any other line). Arms start
# f at line 1 (tokens form), 2, 3, 4 (comment form of a 1-, 2-, 3-line text).
VAL_LINES = [{3}, {3}, {3, 1}, {2}]


def _problem(task_id: str, lines: set[int], on_val: bool) -> dict:
    rule = "in" if on_val else "not in"
    return {
        "task_id": task_id,
        "entry_point": "f",
        "stop_tokens": ["\n", "\r", "\x00"],
        "prompt": "def f():\n    return 1\n\n# ",
        "test": f"def check(candidate):\n    assert candidate() == 1\n"
        f"    assert candidate.__code__.co_firstlineno {rule} {sorted(lines)}\n",
    }


VAL = [_problem(f"v{i}", lines, True) for i, lines in enumerate(VAL_LINES)]
TEST = [_problem(f"t{i}", lines, False) for i, lines in enumerate(VAL_LINES)]


def test_the_hard_prompt_is_chosen_on_val_not_test(tiny_loaded):
    hard_prompts = candidates(TEXTS)
    c = CONFIG  # every candidate on val in one decode, as the final report scores them
    scored = evaluate_arms(
        tiny_loaded, hard_arms(tiny_loaded, hard_prompts, VAL), c.max_new_tokens, c.eval_batch_size, c.sandbox_timeout_s
    )
    result = choose_and_test(tiny_loaded, hard_prompts, {k: r.samples for k, r in scored.items()}, TEST, CONFIG)
    val = {h: rate(score_hard(tiny_loaded, h, VAL, CONFIG)) for h in hard_prompts}
    test = {h: rate(score_hard(tiny_loaded, h, TEST, CONFIG)) for h in hard_prompts}
    assert len(set(val.values())) > 1, "the arms must differ on val for this check to have teeth"
    best_on_val, best_on_test = max(val, key=val.get), max(test, key=test.get)
    assert best_on_val != best_on_test, "precondition: choosing on test would pick another arm"
    assert result.chosen == best_on_val and result.chosen != best_on_test
    assert result.val_pass_at_1 == {h.label: v for h, v in val.items()}
    assert rate(result.test_samples) == test[result.chosen]
    assert [s["task_id"] for s in result.test_samples] == [p["task_id"] for p in TEST]


def test_ties_go_to_the_first_candidate_in_space_order():
    a, b = HardPrompt("one", "tokens"), HardPrompt("two", "comment")
    same = [{"passed": True}, {"passed": False}]
    assert choose_on_val({a: same, b: same}) == a
    assert choose_on_val({b: same, a: same}) == b
    assert choose_on_val({a: [{"passed": False}] * 2, b: same}) == b


def test_tokens_form_is_the_text_init_soft_prompt_before_training(tiny_loaded):
    text = "Write correct code."
    _, weight = arm_inputs(tiny_loaded, HardPrompt(text, "tokens"), VAL)
    ids = tiny_loaded.tokenizer(text)["input_ids"]
    peft = SoftPrompt.create(tiny_loaded, TrainConfig(num_virtual_tokens=len(ids), init=text))
    assert weight.dtype == torch.float32 and torch.equal(weight, peft.inputs().detach())


def test_comment_form_puts_the_text_before_the_prompt(tiny_loaded):
    problems, weight = arm_inputs(tiny_loaded, HardPrompt("Be exact.\nTwo lines", "comment"), VAL[:1])
    assert weight is None
    assert problems[0]["prompt"] == "# Be exact.\n# Two lines\n" + VAL[0]["prompt"]
    assert problems[0]["test"] == VAL[0]["test"] and VAL[0]["prompt"].startswith("def f")  # input untouched
    assert as_comment("") == "#\n"


def test_candidates_are_the_space_s_text_inits():
    spec = load_space("default")
    texts = texts_of(spec.search, spec.fixed)
    inits = [v for dist in spec.search["init"].by_method.values() for v in dist.values]
    assert texts == list(dict.fromkeys(v for v in inits if v not in ("random", "sample_vocab")))
    assert len(texts) == 3, "per-method init lists share their texts: each is one hard prompt"
    assert [h.form for h in candidates(texts)] == ["tokens", "comment"] * len(texts)
    assert texts_of({}, {"init": "A fixed instruction."}) == ["A fixed instruction."]
    assert texts_of({}, {"init": "random"}) == [] and choose_and_test(None, [], {}, [], CONFIG) is None


def test_one_shot_is_the_first_train_problem_with_a_solution_before_the_problem(tiny_loaded):
    train = [
        {"task_id": "mbpp_3_a", "prompt": "def a():\n"},
        {"task_id": "mbpp_12_b", "prompt": "def b():\n"},
        {"task_id": "HumanEval/9", "prompt": "def c():\n", "canonical_solution": "    return 3\n\n"},
    ]
    assert one_shot(train[:2], None) is None and one_shot(train[:2], {"mbpp_3_a": []}) is None
    example = one_shot(train, {"mbpp_12_b": ["    return 2\n", "    return 22\n"]})
    assert (example.form, example.example_id, example.text) == (ONE_SHOT, "mbpp_12_b", "def b():\n    return 2\n")
    assert one_shot(train[2:], None).text == "def c():\n    return 3\n"  # a canonical solution counts
    assert "mbpp_12_b" in example.describe() and example.label.startswith("one_shot-")
    problems, weight = arm_inputs(tiny_loaded, example, VAL[:1])
    assert weight is None and problems[0]["prompt"] == example.text + "\n\n" + VAL[0]["prompt"]
    assert candidates(["t"], example) == [HardPrompt("t", "tokens"), HardPrompt("t", "comment"), example]
    assert candidates([], example) == [example]


def test_the_frozen_model_is_a_prompt_of_nothing(tiny_loaded):
    frozen = score_hard(tiny_loaded, None, VAL, CONFIG)
    assert [s["task_id"] for s in frozen] == [p["task_id"] for p in VAL]
    direct = evaluate_problems(tiny_loaded, VAL, None, CONFIG.max_new_tokens, CONFIG.eval_batch_size, 5).samples
    assert [s["completion"] for s in frozen] == [s["completion"] for s in direct]
