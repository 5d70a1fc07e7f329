"""A whole search over `method` on the tiny model: every method's trials run, Optuna holds only
each trial's own parameters, MLflow names the method of every child run and the best one."""

import json
import sqlite3

import optuna
import pytest

from search_helpers import metric_history, mlflow_runs, run_search

pytestmark = pytest.mark.integration  # a whole search: `pytest -m integration`

# TPE's random start-up with budget seed 2 draws prefix_tuning (with projection) twice,
# prompt_tuning and p_tuning once each, among 4 trials.
# fp32: these searches are compared across kills, resumes and runs; `auto` is measured in test_search_dtype.
METHOD_SPACE = """\
base: smoke
search:
  method: {choice: [prompt_tuning, p_tuning, prefix_tuning]}
  num_virtual_tokens: {choice: [2, 4]}
  init: {prompt_tuning: {choice: [random, sample_vocab]}}
  encoder_hidden_size: {choice: [16, 32]}
  prefix_projection: {choice: [0, 8]}
fixed: {batch_size: 2, max_length: 128, max_new_tokens: 8, eval_batch_size: 4, sandbox_timeout_s: 5, dtype: float32}
data: {train: 4, val: 4, test: 4}
budget: {num_samples: 4, max_epochs: 2, grace_period: 2, reduction_factor: 2, max_concurrent: 2, seed: 2}
resources: {cpu: 1, gpu: 0}
"""
OWN = {"prompt_tuning": {"init"}, "p_tuning": {"encoder_hidden_size"}, "prefix_tuning": {"prefix_projection"}}


@pytest.fixture(scope="module")
def method_search(tiny_model_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("methods")
    space = tmp_path / "methods.yaml"
    space.write_text(METHOD_SPACE)
    proc = run_search(tmp_path, space, tiny_model_dir, "methods")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path, proc


def _params(db, run_id: str) -> dict:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("select key, value from params where run_uuid = ?", (run_id,)).fetchall())


def test_optuna_holds_only_each_trials_own_parameters(method_search):
    tmp_path, _ = method_search
    study = optuna.load_study(study_name="methods", storage=f"sqlite:///{tmp_path}/runs/methods/optuna.db")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4 and {t.params["method"] for t in trials} == set(OWN)
    for trial in trials:
        method = trial.params["method"]
        others = set().union(*(own for m, own in OWN.items() if m != method))
        assert not any(name.split(".")[0] in others for name in trial.params), trial.params
        assert all(
            name in {"method", "num_virtual_tokens"} or name.endswith("." + method) or name in OWN[method]
            for name in trial.params
        ), trial.params


def test_mlflow_names_every_childs_method_and_the_best(method_search):
    tmp_path, proc = method_search
    db = tmp_path / "runs" / "mlflow.db"
    runs = mlflow_runs(db)
    parent = next(r for r in runs if r["parent"] is None)
    children = [r for r in runs if r["parent"] == parent["id"]]
    assert len(children) == 4
    for child in children:
        params = _params(db, child["id"])
        method = params["method"]
        assert set(params) == {"method", "num_virtual_tokens", "learning_rate"} | OWN[method], params
    # best.* are tags: a resume with more trials may pick another best, and MLflow refuses a changed param.
    best = parent["tags"]["best.method"]
    assert best in OWN
    methods = {_params(db, c["id"])["method"] for c in children}
    for method in methods:
        assert metric_history(db, parent["id"], f"best_val_pass_at_1.{method}")
    assert any(line.startswith("methods ") for line in proc.stdout.splitlines()), proc.stdout[-2000:]
    adapter = tmp_path / "runs" / "methods" / "best_adapter"
    peft_type = json.loads((adapter / "adapter_config.json").read_text())["peft_type"]
    assert peft_type == best.upper()


def test_report_files_and_results_name_each_method(method_search):
    """trials.json holds parameters by field (Optuna's `learning_rate.p_tuning` undone), and the
    final report and RESULTS.md give each method's best val pass@1."""
    from search.results import write_results

    tmp_path, _ = method_search
    report = tmp_path / "runs" / "methods" / "report"
    trials = json.loads((report / "trials.json").read_text())
    for trial in trials:
        method = trial["params"]["method"]
        assert set(trial["params"]) == {"method", "num_virtual_tokens", "learning_rate"} | OWN[method], trial
    final = json.loads((report / "final_report.json").read_text())
    assert set(final["by_method"]) == {t["params"]["method"] for t in trials}
    # No init text in this space: the one hard-prompt candidate is the one-shot worked example,
    # a train problem (never one it is tested on).
    hard = final["hard_prompt"]
    assert hard["form"] == "one_shot" and list(hard["val_pass_at_1"]) == [hard["label"]]
    tested = (report / "test_completions_hard_prompt.jsonl").read_text().splitlines()
    assert len(tested) == 4 and hard["example_id"] not in {json.loads(s)["task_id"] for s in tested}
    assert list(final["test"]) == ["soft_prompt", "frozen", "hard_prompt"]
    text = write_results(tmp_path / "runs" / "methods", tmp_path / "RESULTS.md").read_text()
    assert "Best val pass@1 per method: " in text and "| learning_rate | method |" in text
