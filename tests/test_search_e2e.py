"""A whole search on the tiny model: real local Ray, real sqlite MLflow, real sandbox."""

import json
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from search_helpers import metric_history, mlflow_runs, run_search, search_env, write_space

pytestmark = pytest.mark.integration  # a whole search: `pytest -m integration`


@pytest.fixture(scope="module")
def finished_search(tiny_model_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("e2e")
    space = write_space(tmp_path, samples=6, epochs=3)
    proc = run_search(tmp_path, space, tiny_model_dir, "e2e")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path, proc


def test_six_trials_with_asha_pruning_reach_optuna_as_pruned(finished_search):
    tmp_path, _ = finished_search
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path}/runs/e2e/optuna.db")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6
    states = [t.state for t in trials]
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    assert pruned, "ASHA stopped no trial early"
    for t in pruned:  # pruned = stopped before the last epoch, with its rung values kept
        assert 1 <= len(t.intermediate_values) < 3
    for t in trials:
        if t.state is TrialState.COMPLETE:
            assert len(t.intermediate_values) == 3


def test_mlflow_has_one_parent_and_one_child_per_trial(finished_search):
    tmp_path, _ = finished_search
    db = tmp_path / "runs" / "mlflow.db"
    runs = mlflow_runs(db)
    parents = [r for r in runs if r["parent"] is None]
    assert len(parents) == 1
    children = [r for r in runs if r["parent"] == parents[0]["id"]]
    assert len(children) == len(runs) - 1 == 6
    assert {r["status"] for r in runs} == {"FINISHED"}
    assert len({r["tags"]["ray_trial_id"] for r in children}) == 6
    for child in children:
        epochs = int(child["tags"]["stopped_at_epoch"])
        history = metric_history(db, child["id"], "val_pass_at_1")
        assert [step for step, _ in history] == list(range(1, epochs + 1))
        assert child["tags"]["state"] == ("COMPLETED" if epochs == 3 else "PRUNED")
        assert "optuna_trial_number" in child["tags"]
    assert {c["tags"]["state"] for c in children} == {"COMPLETED", "PRUNED"}
    parent_metrics = {
        k
        for k in ("test_pass_at_1_best", "test_pass_at_1_baseline", "lift", "lift_ci95_low")
        if metric_history(db, parents[0]["id"], k)
    }
    assert len(parent_metrics) == 4


def test_trials_ran_two_at_a_time_and_the_summary_is_printed(finished_search):
    tmp_path, proc = finished_search
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{tmp_path}/runs/e2e/optuna.db")
    spans = sorted((t.datetime_start, t.datetime_complete) for t in study.get_trials(deepcopy=False))
    overlaps = [a for a, b in zip(spans, spans[1:]) if b[0] < a[1]]
    assert overlaps, "no two trials ran at the same time (max_concurrent: 2)"
    for label in (
        "best trial",
        "val pass@1",
        "test pass@1",
        "baseline",
        "hard prompt",
        "lift",
        "lift vs hard",
        "adapter",
        "mlflow",
    ):
        assert any(line.startswith(label) for line in proc.stdout.splitlines()), label
    assert (tmp_path / "runs" / "e2e" / "best_adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "runs" / "e2e" / "report" / "plots" / "optimization_history.png").is_file()


def test_the_report_carries_three_arms_everywhere(finished_search):
    tmp_path, _ = finished_search
    final = json.loads((tmp_path / "runs" / "e2e" / "report" / "final_report.json").read_text())
    assert list(final["test"]) == ["soft_prompt", "frozen", "hard_prompt"]
    assert {t["n"] for t in final["test"].values()} == {4}
    assert final["hard_prompt"]["text"] == "Write correct code."  # ties go to the space's text, before the one-shot
    labels = list(final["hard_prompt"]["val_pass_at_1"])  # the text as tokens, as a comment, then one worked example
    assert [label.split("-")[0] for label in labels] == ["tokens", "comment", "one_shot"]
    assert [c["other"] for c in final["comparisons"]] == ["frozen", "hard_prompt"]
    report_dir = tmp_path / "runs" / "e2e" / "report"
    assert (report_dir / "test_completions_hard_prompt.jsonl").is_file()
    db = tmp_path / "runs" / "mlflow.db"
    parent = next(r for r in mlflow_runs(db) if r["parent"] is None)
    for key in (
        "test_pass_at_1_hard_prompt",
        "lift_vs_hard_prompt",
        "lift_vs_hard_prompt_ci95_low",
        "solved_only_by_soft_prompt_vs_frozen",
        "solved_only_by_hard_prompt",
    ):
        assert metric_history(db, parent["id"], key), key
    assert parent["tags"]["hard_prompt.text"] == "Write correct code."


def test_results_markdown_from_the_finished_search(finished_search):
    tmp_path, _ = finished_search
    proc = subprocess.run(
        [sys.executable, "-m", "search.results", "runs/e2e", "--out", "RESULTS.md"],
        cwd=tmp_path,
        env=search_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "RESULTS.md").read_text()
    trials = json.loads((tmp_path / "runs" / "e2e" / "report" / "trials.json").read_text())
    assert len(trials) == 6 and {t["state"] for t in trials} == {"COMPLETED", "PRUNED"}
    assert all(len(t["val_pass_at_1"]) == t["epochs"] for t in trials)
    for part in (
        "search.run",
        "wall time",
        "cores",
        "| trial |",
        "PRUNED",
        "frozen model",
        "hard prompt",
        "95% CI",
        "RESULTS-learning-curves.png",
        "## Conclusion",
    ):
        assert part in text, part
    assert (tmp_path / "RESULTS-learning-curves.png").stat().st_size > 1000


def test_mlflow_describes_the_search_and_each_trial(finished_search):
    """The parent run's description (MLflow's `mlflow.note.content`) is the printed summary, each
    trial's is one line with its end state and parameters, and a text init reads as its words."""
    tmp_path, proc = finished_search
    runs = mlflow_runs(tmp_path / "runs" / "mlflow.db")
    parent = next(r for r in runs if r["parent"] is None)
    note = parent["tags"]["mlflow.note.content"]
    assert note.startswith("```\n== search finished") and note.endswith("\n```"), note
    body = note.removeprefix("```\n").removesuffix("\n```").splitlines()
    lines = proc.stdout.splitlines()
    start = lines.index(body[0])
    assert lines[start : start + len(body)] == body and any(line.startswith("mlflow ui") for line in body)
    for child in (r for r in runs if r["parent"] is not None):
        description, label = child["tags"]["mlflow.note.content"], child["tags"]["init_label"]
        assert "\n" not in description and description.startswith(f"{child['tags']['state']} at epoch ")
        assert f"init={label}" in description and label in ("random", "sample_vocab", "'Write correct code.'")
