"""A driver that dies without saving (Ray's node killed under it, or the driver itself killed):
its watcher records the search as interrupted, leaves no MLflow run RUNNING, says so in one line
with the resume command, and `--resume` finishes the search."""

import json
import os
import signal

import psutil
import pytest

from fault_helpers import SearchProcess, mlflow_summary, wait_until, write_fault_space
from search_helpers import mlflow_runs, run_search

pytestmark = pytest.mark.integration


def _ray_process(search: SearchProcess, name: str) -> int | None:
    for process in psutil.Process(search.pid).children(recursive=True):
        try:
            if process.name() == name or name in " ".join(process.cmdline()):
                return process.pid
        except psutil.NoSuchProcess:
            continue
    return None


def _recorded(tmp_path, name: str):
    record = tmp_path / "runs" / name / "search.json"
    state = json.loads(record.read_text()).get("state")
    return state if state != "running" else None


@pytest.mark.parametrize("victim", ["dashboard_agent", "driver"])
def test_a_driver_that_dies_unsaved_is_recorded_interrupted(tiny_model_dir, tmp_path, victim):
    space = write_fault_space(tmp_path, samples=3, epochs=3)
    with SearchProcess(tmp_path, space, tiny_model_dir, "dies") as search:
        wait_until(lambda: search.events(), 300, "a trial event", search)
        if victim == "driver":
            os.kill(search.pid, signal.SIGKILL)
        else:  # the raylet shares its fate with its agents; Ray then ends the driver
            pid = wait_until(lambda: _ray_process(search, "dashboard/agent.py"), 60, "Ray's dashboard agent")
            os.kill(pid, signal.SIGKILL)
        assert search.wait(60) is not None, "the driver did not end"
        state = wait_until(lambda: _recorded(tmp_path, "dies"), 60, "the watcher's record")
        output = wait_until(lambda: "resume with:" in search.output() and search.output(), 30, "the resume line")
    assert state == "interrupted"
    # Said once: by the driver's own watchdog when it was quicker than Ray, else by the watcher.
    said = [line for line in output.splitlines() if line.startswith("== search dies interrupted by")]
    assert len(said) == 1 and output.count("resume with:") == 1, output[-3000:]
    if victim == "driver":
        assert "the driver's death" in said[0]
    db = tmp_path / "runs" / "mlflow.db"  # the record is saved first, then MLflow: wait for both
    running = lambda: [r["id"] for r in mlflow_runs(db) if r["status"] == "RUNNING"]  # noqa: E731
    wait_until(lambda: not running(), 60, "no MLflow run RUNNING")
    assert {r["status"] for r in mlflow_runs(db)} == {"KILLED"}

    proc = run_search(tmp_path, space, tiny_model_dir, "dies", "--resume")
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = mlflow_summary(db)
    assert summary["not_ended"] == [] and len(summary["parents"]) == 1, summary["not_ended"]
    assert summary["duplicate_runs"] == 0 and summary["duplicate_trial_ids"] == 0
    assert len(summary["children"]) == 3
