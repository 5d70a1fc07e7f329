"""The parent run's plots: learning curves (val pass@1 per epoch per trial, ASHA's stops marked
at their rung) from the report files, and parameter importance only from enough trials that ran
every epoch (`search.report.MIN_TRIALS_FOR_IMPORTANCE`).

    .venv/bin/pytest tests/test_report_plots.py -q
"""

from __future__ import annotations

import json

import optuna
import pytest

from search.report import MIN_TRIALS_FOR_IMPORTANCE, FinalReport, save_plots
from search.results import LEARNING_CURVES, learning_curves


def _trial(trial_id: str, state: str, curve: list[float]) -> dict:
    return {
        "trial_id": trial_id,
        "params": {"learning_rate": 0.01},
        "init_text": None,
        "state": state,
        "epochs": len(curve),
        "val_pass_at_1": curve,
        "error": None,
    }


def _report_dir(tmp_path, trials: list[dict]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    samples = [{"task_id": "HumanEval/0", "completion": "", "passed": True}]
    final = FinalReport("a", {"learning_rate": 0.01}, 0.5, 3, samples, samples).to_dict()
    (tmp_path / "trials.json").write_text(json.dumps(trials))
    (tmp_path / "final_report.json").write_text(json.dumps(final))
    return tmp_path


def test_learning_curves_are_drawn_beside_the_report(tmp_path):
    trials = [
        _trial("a", "COMPLETED", [0.2, 0.4, 0.5]),
        _trial("b", "PRUNED", [0.1]),
        _trial("c", "FAILED", []),
    ]  # a trial that failed before its first epoch: no line
    path = learning_curves(_report_dir(tmp_path / "one", trials))
    assert path == tmp_path / "one" / "plots" / LEARNING_CURVES
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    # Where ASHA stopped a trial shows: the same curves with "b" run to the end draw another picture.
    other = learning_curves(_report_dir(tmp_path / "two", [trials[0], _trial("b", "COMPLETED", [0.1]), trials[2]]))
    assert other.read_bytes() != path.read_bytes()


def _study(tmp_path, complete: int, pruned: int) -> str:
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(
        study_name="s", storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    for i in range(complete + pruned):
        trial = study.ask()
        lr = trial.suggest_float("learning_rate", 1e-3, 3e-1, log=True)
        trial.suggest_categorical("num_virtual_tokens", [4, 8, 16])
        if i < complete:
            study.tell(trial, lr * 2 + (i % 3) / 10)
        else:
            trial.report(0.1, 1)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return storage


@pytest.mark.parametrize(
    "complete, pruned, drawn",
    [(MIN_TRIALS_FOR_IMPORTANCE - 1, 6, False), (MIN_TRIALS_FOR_IMPORTANCE, 0, True)],
    ids=["too-few-full-trials", "enough"],
)
def test_parameter_importance_only_from_enough_trials_that_ran_every_epoch(tmp_path, capsys, complete, pruned, drawn):
    """ASHA-stopped (PRUNED) trials do not count: their values are from a lower rung."""
    written = {p.name for p in save_plots("s", _study(tmp_path, complete, pruned), tmp_path / "plots")}
    assert {"optimization_history.png", "parallel_coordinate.png"} <= written
    assert ("param_importances.png" in written) is drawn
    out = capsys.readouterr().out
    assert ("param_importances skipped" in out) is not drawn
    if not drawn:
        assert f"{complete} trial(s) ran every epoch, importance needs {MIN_TRIALS_FOR_IMPORTANCE}" in out
