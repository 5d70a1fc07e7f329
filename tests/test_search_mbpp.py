"""A search that trains on MBPP: its targets come from the distillation cache (or a Ray task that
distils them), trials train on them and still report HumanEval val pass@1, and a pinned file from
another model is refused before anything starts. Needs the real MBPP file (`.ci/setup`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from search_helpers import metric_history, mlflow_runs, search_command, search_env
from test_mbpp import SOLUTIONS
from trainable.data import mbpp
from trainable.data.splits import DistillSettings
from trainable.distill import FORMAT, cache_file, model_sha256, problem_sha256
from trainable.model.loading import resolve_model_ref

pytestmark = pytest.mark.skipif(
    not mbpp.mbpp_file().is_file(), reason="MBPP not fetched: python -m trainable.data.mbpp"
)

TRAIN = ["mbpp_17_square_perimeter", "mbpp_12_sort_matrix", "mbpp_3_is_not_prime"]
SPACE = """\
base: smoke
search:
  num_virtual_tokens: {{choice: [2, 4]}}
  init: {{choice: [random, "Write correct code."]}}
fixed: {{batch_size: 2, max_length: 128, max_new_tokens: 8, eval_batch_size: 4, sandbox_timeout_s: 5, dtype: float32}}
data:
  train: {{source: mbpp, ids: {train}}}
  val: {{source: humaneval, n: 3}}
  test: [{{source: humaneval, n: 3}}, {{source: mbpp, n: 2}}]
  distill: {{samples: 1{pinned}}}
budget: {{num_samples: 2, max_epochs: 2, grace_period: 1, reduction_factor: 2, max_concurrent: 1}}
resources: {{cpu: 1, gpu: 0}}
"""


def _setup(tmp_path, pinned: str = ""):
    cache = tmp_path / "cache"
    (cache / "mbpp").mkdir(parents=True)
    (cache / "mbpp" / mbpp.FILE_NAME).write_bytes(mbpp.mbpp_file().read_bytes())
    space = tmp_path / "mbpp_space.yaml"
    space.write_text(SPACE.format(train=json.dumps(TRAIN), pinned=pinned))
    env = {**search_env(), "SOFTPROMPT_SEARCH_CACHE": str(cache)}
    return space, env, cache


def _search(tmp_path, space, model, name, env, *extra):
    return subprocess.run(
        search_command(space, model, name, *extra), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )


def _record(model_dir, targets: dict) -> dict:
    """A distillation record as `trainable.distill` writes it: two of three problems solved."""
    problems = mbpp.load_problems()
    settings = {**DistillSettings(samples=1).sampling(), "max_new_tokens": 8}
    return {
        "format": FORMAT,
        "model": {"name": str(model_dir), "sha256": model_sha256(resolve_model_ref(str(model_dir)))},
        "dtype": "float32",
        "settings": settings,
        "problems": {
            t: {
                "sha256": problem_sha256(problems[t]),
                "targets": targets.get(t, []),
                "candidates": 2,
                "passed": len(targets.get(t, [])),
            }
            for t in TRAIN
        },
    }


@pytest.mark.integration  # a whole search
def test_a_search_trains_on_cached_targets_and_reports_humaneval_val(tmp_path, tiny_model_dir):
    space, env, cache = _setup(tmp_path)
    record = _record(tiny_model_dir, {t: [SOLUTIONS[t]] for t in TRAIN[:2]})
    path = cache_file(record["model"]["sha256"], "float32", record["settings"], cache)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(record))
    proc = _search(tmp_path, space, tiny_model_dir, "mbpp", env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "training targets: 2/3 problems with >= 1 passing target, 2 targets kept, 1 problems skipped" in proc.stdout
    assert "from the cache" in proc.stdout and "dtype float32 (set: dtype float32)" in proc.stdout
    db = tmp_path / "runs" / "mlflow.db"
    runs = mlflow_runs(db)
    parent = next(r for r in runs if r["parent"] is None)
    assert parent["tags"]["data.mbpp.license"] == "CC-BY-4.0"
    assert [v for _, v in metric_history(db, parent["id"], "distill_with_target")] == [2.0]
    children = [r for r in runs if r["parent"] == parent["id"]]
    assert len(children) == 2
    for child in children:
        assert child["tags"]["val_source"] == "humaneval" and child["tags"]["dtype"] == "float32"
        assert metric_history(db, child["id"], "val_pass_at_1")
        assert {v for _, v in metric_history(db, child["id"], "train_examples")} == {2.0}
    trained_with = json.loads((tmp_path / "runs" / "mbpp" / "best_adapter" / "trained_with.json").read_text())
    assert trained_with["data"]["train"] == {"source": "mbpp", "ids": TRAIN}
    assert trained_with["data"]["val"] == {"source": "humaneval", "n": 3}
    _the_report_scores_two_benchmarks_as_evaluate_does(tmp_path, env)


def _the_report_scores_two_benchmarks_as_evaluate_does(tmp_path, env):
    """Two test benchmarks, each with its rows; the one-shot hard prompt's example is the first
    train problem with a target; rescoring the best adapter with `trainable.evaluate --split test`
    gives the report's completions and figures exactly."""
    report_dir = tmp_path / "runs" / "mbpp" / "report"
    final = json.loads((report_dir / "final_report.json").read_text())
    assert list(final["benchmarks"]) == ["humaneval", "mbpp"] and final["test"]["soft_prompt"]["n"] == 5
    assert [len(final["benchmarks"][b]["comparisons"]) for b in ("humaneval", "mbpp")] == [2, 2]
    candidates = final["hard_prompt"]["candidates"].values()
    assert any(c.startswith("one worked example (mbpp_12_sort_matrix and its solution)") for c in candidates)
    assert len(candidates) == 3 and final["frozen_val_pass_at_1"] is not None
    out = tmp_path / "rescored.jsonl"
    adapter = tmp_path / "runs" / "mbpp" / "best_adapter"
    proc = subprocess.run(
        [sys.executable, "-m", "trainable.evaluate", "--prompt", str(adapter), "--split", "test", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for benchmark in ("humaneval", "mbpp"):
        reported = final["benchmarks"][benchmark]["test"]["soft_prompt"]
        expected = {"pass@1": reported["pass_at_1"], "n": reported["n"], "passed": reported["passed"]}
        assert summary["by_source"][benchmark] == expected
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    reported = [json.loads(line) for line in (report_dir / "test_completions_best.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["completion"], r["passed"]) for r in rows] == [
        (r["task_id"], r["completion"], r["passed"]) for r in reported
    ]


@pytest.mark.integration  # a whole search
def test_without_a_cache_a_ray_task_distils_and_an_empty_yield_ends_the_search(tmp_path, tiny_model_dir):
    """The tiny random model solves no MBPP problem: distillation runs (and is cached), finds no
    target, and the search stops with exit 1 and a line that says why, before any trial."""
    space, env, cache = _setup(tmp_path)
    proc = _search(tmp_path, space, tiny_model_dir, "empty", env)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "training targets: 0/3 problems" in proc.stdout and "3 distilled now" in proc.stdout
    assert "error: no training problem has a passing target (0 of 3)" in proc.stdout
    assert not re.search(r"\btrial [0-9a-f]{8}\b", proc.stdout), "a trial started"
    (written,) = (cache / "distill").glob("*.json")
    entries = json.loads(written.read_text())["problems"]
    assert sorted(entries) == sorted(TRAIN) and {e["candidates"] for e in entries.values()} == {2}


def test_a_pinned_file_from_another_model_is_refused_before_anything_starts(tmp_path, tiny_model_dir, search_cli):
    pinned = tmp_path / "targets.json"
    record = _record(tiny_model_dir, {TRAIN[0]: [SOLUTIONS[TRAIN[0]]]})
    record["model"] = {"name": "someone else's model", "sha256": "ab" * 32}
    pinned.write_text(json.dumps(record))
    space, env, _ = _setup(tmp_path, pinned=f", targets: {pinned}")
    # `python -m search.run ... --dry-run`, forked from an interpreter that imported it (conftest)
    args = search_command(space, tiny_model_dir, "pinned", "--dry-run")[3:]
    proc = search_cli(*args, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: data.distill.targets: got '{pinned}', expected targets distilled from the model")
    assert "someone else's model" in line and not (tmp_path / "runs").exists()
