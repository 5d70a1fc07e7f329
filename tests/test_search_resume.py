"""Kill the driver (SIGKILL) mid-search; `--resume` finishes it with nothing lost or doubled. A
finished search grows with more trials."""

import json
import os
import re
import signal
import subprocess
import time

import optuna
import pytest

from search_helpers import mlflow_runs, run_search, search_command, search_env, write_space

pytestmark = pytest.mark.integration


def _start_and_kill_at(tmp_path, space, model, name, marker: str, timeout: float = 300, env=None) -> str:
    log = tmp_path / f"{name}-killed.log"
    with open(log, "w") as out:
        # Its own session: Ray's node agents inherit the group, so killpg(pid) reaps them too.
        proc = subprocess.Popen(
            search_command(space, model, name),
            cwd=tmp_path,
            env={**search_env(), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + timeout
        while marker not in log.read_text():
            assert proc.poll() is None, f"search ended before {marker!r}:\n{log.read_text()[-2000:]}"
            assert time.time() < deadline, f"no {marker!r} in {timeout} s"
            time.sleep(0.1)
        proc.kill()  # SIGKILL: no cleanup, no atexit, exactly a crashed driver
        proc.wait(30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the driver left (Ray agents), by its group
        except ProcessLookupError:
            pass
    return log.read_text()


@pytest.mark.parametrize("marker", ["progress: 2/6", "progress: 6/6"], ids=["during-trials", "during-final-report"])
def test_killed_driver_resumes_to_a_complete_search(tiny_model_dir, tmp_path, marker):
    space = write_space(tmp_path, samples=6, epochs=3)
    killed_log = _start_and_kill_at(tmp_path, space, tiny_model_dir, "killed", marker)
    assert "== search finished" not in killed_log

    _assert_resumes_to_a_complete_search(tmp_path, space, tiny_model_dir)


def test_resume_when_tunes_snapshot_is_older_than_the_study(tiny_model_dir, tmp_path):
    """The study records a trial at once; Tune's snapshot follows within a second (search.driver).
    A driver killed in between leaves trials, finished ones included, that only the study knows.
    Made certain here: the killed run keeps Tune's first snapshot (taken before any trial ran)."""
    space = write_space(tmp_path, samples=6, epochs=3)
    killed_log = _start_and_kill_at(
        tmp_path, space, tiny_model_dir, "killed", "progress: 4/6", env={"TUNE_GLOBAL_CHECKPOINT_S": "3600"}
    )
    assert "== search finished" not in killed_log
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{tmp_path}/runs/killed/optuna.db")
    finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    [snapshot] = (tmp_path / "runs" / "killed").glob("experiment_state-*.json")
    assert finished >= 4 and len(json.loads(snapshot.read_text())["trial_data"]) < finished

    _assert_resumes_to_a_complete_search(tmp_path, space, tiny_model_dir)


@pytest.mark.parametrize("cut", ["experiment_state-*.json", "searcher-state-*.pkl"])
def test_resume_after_a_kill_that_cut_tunes_snapshot_short(tiny_model_dir, tmp_path, cut):
    """Tune copies its snapshot into the storage file by file, every second: a driver killed
    mid-copy leaves a file cut short. --resume says so and starts Tune afresh from the study."""
    space = write_space(tmp_path, samples=6, epochs=3)
    _start_and_kill_at(tmp_path, space, tiny_model_dir, "killed", "progress: 4/6")
    [path] = (tmp_path / "runs" / "killed").glob(cut)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    resumed = _assert_resumes_to_a_complete_search(tmp_path, space, tiny_model_dir)
    assert f"warning: Tune's snapshot cannot be resumed: {path.name} is cut short" in resumed.stdout


def _assert_resumes_to_a_complete_search(tmp_path, space, tiny_model_dir):
    """`--resume` ends the search killed under the name "killed": six trials in the study and in
    MLflow, each once, all finished. Returns the resumed run."""
    resumed = run_search(tmp_path, space, tiny_model_dir, "killed", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "== search finished" in resumed.stdout and "0 failed" in resumed.stdout

    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{tmp_path}/runs/killed/optuna.db")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6
    assert all(t.state.is_finished() and t.state.name in ("COMPLETE", "PRUNED") for t in trials)

    runs = mlflow_runs(tmp_path / "runs" / "mlflow.db")
    parents = [r for r in runs if r["parent"] is None]
    children = [r for r in runs if r["parent"] is not None]
    assert len(parents) == 1 and len(children) == 6
    assert all(c["parent"] == parents[0]["id"] for c in children)
    assert len({c["tags"]["ray_trial_id"] for c in children}) == 6, "a trial got two MLflow runs"
    assert {r["status"] for r in runs} == {"FINISHED"}, "a run was left RUNNING"
    assert {c["tags"]["state"] for c in children} <= {"COMPLETED", "PRUNED"}
    return resumed


def test_a_finished_search_grows_with_more_trials(tiny_model_dir, tmp_path):
    """--resume --num-samples 3 on a finished 2-trial search: one more trial (not a rerun of the
    two), the report runs again on the new best and is logged at the next step, once."""

    from fault_helpers import metric_rows, mlflow_summary, write_fault_space

    space = write_fault_space(tmp_path, samples=2, epochs=1, grace=1, slow=False)
    first = run_search(tmp_path, space, tiny_model_dir, "grow")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    grown = run_search(
        tmp_path, space, tiny_model_dir, "grow", "--resume", "--num-samples", "3", "--max-concurrent", "1"
    )
    assert grown.returncode == 0, grown.stdout[-3000:] + grown.stderr[-3000:]
    assert "== search finished" in grown.stdout and "3 trials" in grown.stdout
    assert len(set(re.findall(r"trial (\w+) COMPLETED", grown.stdout))) == 1, "only the new trial ran"
    db = tmp_path / "runs" / "mlflow.db"
    summary = mlflow_summary(db)
    (parent,) = summary["parents"]
    assert len(summary["children"]) == 3 and {c["status"] for c in summary["children"]} == {"FINISHED"}
    assert parent["status"] == "FINISHED" and parent["tags"]["budget.num_samples"] == "3"
    lift = sorted(step for key, step, _ in metric_rows(db, parent["id"]) if key == "lift")
    assert lift == [0, 1], "one report per round, at its own step"
    record = json.loads((tmp_path / "runs" / "grow" / "search.json").read_text())
    assert (record["state"], record["num_samples"], record["max_concurrent"], record["reports"]) == (
        "finished",
        3,
        1,
        2,
    )
    study = optuna.load_study(study_name="grow", storage=f"sqlite:///{tmp_path}/runs/grow/optuna.db")
    assert len(study.get_trials(deepcopy=False)) == 3


def test_a_search_whose_trials_all_fail_ends_failed_and_resumes(tiny_model_dir, tmp_path):
    """Every attempt of the only trial raises: the search is failed (exit 1, MLflow FAILED, the
    record says so); once the cause is gone, --resume retries the errored trial and finishes."""

    from fault_helpers import mlflow_summary, write_fault_space

    space = write_fault_space(tmp_path, samples=1, epochs=1, grace=1, tokens=(8,), slow=False)
    env = {**search_env(), "SOFTPROMPT_INJECT_FAULT": "num_virtual_tokens=8@1"}
    failed = subprocess.run(
        search_command(space, tiny_model_dir, "allfail"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert "no trial finished without error" in failed.stdout and "Traceback" not in failed.stdout + failed.stderr
    assert re.search(r"^after fixing the cause: python -m search.run .* --resume --name allfail$", failed.stdout, re.M)
    record = json.loads((tmp_path / "runs" / "allfail" / "search.json").read_text())
    assert record["state"] == "failed"
    (parent,) = mlflow_summary(tmp_path / "runs" / "mlflow.db")["parents"]
    assert (parent["status"], parent["tags"]["search_state"]) == ("FAILED", "failed")
    described = parent["tags"]["mlflow.note.content"]  # it said "running" until the search failed
    assert described.startswith("search allfail: failed (no trial succeeded: no trial finished without error)")
    assert described.endswith("--resume --name allfail"), described

    resumed = run_search(tmp_path, space, tiny_model_dir, "allfail", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = mlflow_summary(tmp_path / "runs" / "mlflow.db")
    assert summary["parents"][0]["status"] == "FINISHED" and len(summary["children"]) == 1
    assert summary["children"][0]["status"] == "FINISHED" and summary["not_ended"] == []
