"""A driver killed after a trial recorded an epoch and before Tune's snapshot of its trials had it:
`--resume` goes on after that epoch. No epoch is trained twice and none is recorded twice: not in
Tune's result.json, not in the child run's MLflow metric history, not in the Optuna trial's
intermediate values (which must be the values result.json holds).

Tune snapshots its trials right after each checkpointed result, and once more when it stops, so
the window is short: a crash in it is made certain here by putting back, after the kill, the
snapshot files as they were one epoch earlier (what a driver killed before writing the newer ones
leaves)."""

from __future__ import annotations

import json
import os
import re
import signal

import optuna
import pytest

from fault_helpers import SearchProcess, all_results, mlflow_summary, wait_until, write_fault_space
from search_helpers import run_search

pytestmark = pytest.mark.integration

SNAPSHOT = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")


def _snapshot_epochs(experiment) -> dict[str, int]:
    """Ray trial id -> the last epoch in Tune's snapshot of its trials (empty until one is readable)."""
    try:
        trials = json.loads(max(experiment.glob(SNAPSHOT[0])).read_text())["trial_data"]
    except (ValueError, OSError, json.JSONDecodeError):
        return {}
    out = {}
    for state, metadata in trials:
        last = json.loads(metadata).get("last_result") or {}
        out[json.loads(state)["trial_id"]] = int(last.get("training_iteration", 0))
    return out


def _snapshot_files(experiment) -> dict:
    return {path: path.read_bytes() for pattern in SNAPSHOT for path in experiment.glob(pattern)}


def _recorded(tmp_path, name: str):
    state = json.loads((tmp_path / "runs" / name / "search.json").read_text()).get("state")
    return state if state != "running" else None


@pytest.mark.parametrize("epochs", [3, 2], ids=["after-a-middle-epoch", "after-the-final-epoch"])
def test_a_resumed_trial_goes_on_after_the_last_epoch_it_recorded(tiny_model_dir, tmp_path, epochs):
    name = "again"
    space = write_fault_space(tmp_path, samples=2, epochs=epochs)  # grace = epochs: ASHA stops nobody
    experiment = tmp_path / "runs" / name

    def at_epoch(epoch: int, trial: str | None = None):
        """A trial (or `trial`) whose result.json and Tune's snapshot both end at `epoch`."""
        saved, results = _snapshot_epochs(experiment), all_results(experiment)
        for tid, rows in results.items():
            if (
                (trial in (None, tid))
                and saved.get(tid) == epoch
                and [r["training_iteration"] for r in rows][-1:] == [epoch]
            ):
                return tid
        return None

    with SearchProcess(tmp_path, space, tiny_model_dir, name) as search:
        trial_id = wait_until(lambda: at_epoch(1), 300, "a trial at epoch 1", search, interval=0.02)
        older = _snapshot_files(experiment)
        if _snapshot_epochs(experiment).get(trial_id) != 1:
            pytest.fail("the snapshot moved on while it was read")
        wait_until(lambda: at_epoch(2, trial_id), 300, "its epoch 2", search, interval=0.02)
        os.kill(search.pid, signal.SIGKILL)
        assert search.wait(60) is not None, "the driver did not end"
        wait_until(lambda: _recorded(tmp_path, name), 60, "the watcher's record")
    for pattern in SNAPSHOT:
        for path in experiment.glob(pattern):
            path.unlink()
    for path, data in older.items():
        path.write_bytes(data)  # as if the driver had died before its snapshot of epoch 2
    assert _snapshot_epochs(experiment)[trial_id] == 1

    resumed = run_search(tmp_path, space, tiny_model_dir, name, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    results = all_results(experiment)
    iterations = {tid: [r["training_iteration"] for r in rows] for tid, rows in results.items()}
    assert all(its == list(range(1, epochs + 1)) for its in iterations.values()), iterations
    assert not re.search(rf"trial {trial_id} epoch 2/", resumed.stdout), "the epoch ran again"

    summary = mlflow_summary(tmp_path / "runs" / "mlflow.db")
    assert summary["duplicate_steps"] == 0 and summary["incomplete"] == [], summary["steps"]
    assert summary["not_ended"] == [] and len(summary["children"]) == 2

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{experiment}/optuna.db")
    objectives = sorted(tuple(r["objective"] for r in rows) for rows in results.values())
    optuna_values = sorted(tuple(v for _, v in sorted(t.intermediate_values.items())) for t in study.trials)
    assert optuna_values == objectives
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
