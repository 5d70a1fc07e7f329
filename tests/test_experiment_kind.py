"""MLflow's UI opens our experiment in its model-training view: the experiment carries MLflow's
experiment-kind tag (a real sqlite store, no Ray), every UI link we print asks for that view, and
both names are the ones the installed MLflow UI reads (so an MLflow upgrade that renames them
fails here, not silently in a user's browser).

    .venv/bin/pytest tests/test_experiment_kind.py -q
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from search.callbacks import init_label, mlflow_params
from search.mlflow_ops import View
from search.tracking import (
    EXPERIMENT,
    EXPERIMENT_TAGS,
    SHARED_VIEW_PREFIX,
    UI_VIEW_QUERY,
    MlflowLedger,
    search_view,
    ui_link,
)

KIND_TAG = "mlflow.experimentKind"
# Each test's store is tmp_path/mlflow.db, new and empty, copied from one already migrated (conftest).
pytestmark = pytest.mark.usefixtures("mlflow_db")


def _ledger(tmp_path, search_id: str | None = None) -> MlflowLedger:
    return MlflowLedger(
        f"sqlite:///{tmp_path / 'mlflow.db'}", EXPERIMENT, "s", search_id or uuid.uuid4().hex, tmp_path / "state"
    )


def _kind(tmp_path) -> str | None:
    experiment = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name(EXPERIMENT)
    return experiment.tags.get(KIND_TAG)


def test_a_new_experiment_is_created_as_model_training(tmp_path):
    assert _ledger(tmp_path).connect()
    assert _kind(tmp_path) == "custom_model_development"


@pytest.mark.parametrize("before", [None, "genai_development"], ids=["untagged", "genai"])
def test_an_existing_experiment_is_switched_to_model_training(tmp_path, before):
    """A store written before this tag existed (or switched to GenAI in the UI) gets it on the
    next search's connect, with its runs left as they are."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment(EXPERIMENT, tags={KIND_TAG: before} if before else None)
    run_id = client.create_run(experiment_id).info.run_id
    ledger = _ledger(tmp_path)
    assert ledger.connect()
    assert _kind(tmp_path) == "custom_model_development"
    assert ledger.ui_link(default_store=True).startswith(f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?")
    assert client.get_run(run_id).info.experiment_id == experiment_id


def test_ui_links_ask_for_the_model_training_view():
    assert ui_link("http://mlflow.example:5000/", "7") == (
        "http://mlflow.example:5000/#/experiments/7/runs?workflowType=machine_learning"
    )
    local = ui_link("sqlite:////data/x/mlflow.db", "3", default_store=False)
    assert local.startswith("http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning")
    assert "python -m mlflow_server --backend-store-uri sqlite:////data/x/mlflow.db" in local
    assert "--backend-store-uri" not in ui_link("sqlite:////r/runs/mlflow.db", "3", default_store=True)


def test_each_search_has_a_shared_view_of_its_own_trials(tmp_path):
    """The link the driver prints opens the runs page filtered to this search, best val pass@1
    first, with metric and parameter columns (neither view of MLflow 3.17 shows them unasked)."""
    search_id = uuid.uuid4().hex
    ledger = _ledger(tmp_path, search_id)
    assert ledger.submit(View(search_view(search_id, ["learning_rate", "num_virtual_tokens"])))
    experiment = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_experiment_by_name(EXPERIMENT)
    view = json.loads(experiment.tags[SHARED_VIEW_PREFIX + search_id])
    assert view["searchFilter"] == f"tags.search_id = '{search_id}'"
    assert view["orderByKey"] == "metrics.`val_pass_at_1`" and view["orderByAsc"] is False
    assert {"metrics.`val_pass_at_1`", "params.`learning_rate`", "params.`num_virtual_tokens`", "tags.`state`"} <= set(
        view["selectedColumns"]
    )
    link = ledger.ui_link(default_store=True)
    assert f"/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey={search_id}&{UI_VIEW_QUERY}" in link


def _ui_bundle() -> str:
    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    return "".join(p.read_text(errors="replace") for p in sorted(js.glob("*.js")))


def test_the_installed_mlflow_ui_reads_these_names():
    """The tag, its value and the view query as MLflow's own UI code spells them (see
    search.tracking for how the UI picks between them)."""
    bundle = _ui_bundle()
    ((name, value),) = EXPERIMENT_TAGS.items()
    assert f'"{name}"===e.key' in bundle or f'key:"{name}"' in bundle, name
    assert f'CUSTOM_MODEL_DEVELOPMENT="{value}"' in bundle, value
    key, view = UI_VIEW_QUERY.split("=")
    assert f'e.get("{key}")' in bundle and f'MACHINE_LEARNING="{view}"' in bundle, UI_VIEW_QUERY
    assert f'"viewStateShareKey",$="{SHARED_VIEW_PREFIX}"' in bundle, SHARED_VIEW_PREFIX


def test_a_text_init_reads_as_its_words_and_two_with_one_prefix_stay_apart():
    """The runs table showed a text init as `text:<hash>`; its label is the text's start in
    quotes, and where cut, the hash its param keeps (resumed searches log the same param)."""
    shared = "Write a correct Python function for the task below, "
    a, b = shared + "then stop.", shared + "with a docstring."
    assert init_label(a).startswith("'Write a correct Python function for the")
    assert init_label(a) != init_label(b)
    for text in (a, b):
        params, tags = mlflow_params({"init": text, "method": "prompt_tuning"})
        assert tags["init_label"] == init_label(text) and params["init"] in tags["init_label"]
    assert init_label("Be brief.") == "'Be brief.'" and init_label("random") == "random"
    view = search_view("s", ["init", "learning_rate"])
    assert "tags.`init_label`" in view["selectedColumns"] and "params.`init`" not in view["selectedColumns"]
