"""What a finished search guards: its name, its identity and its results. One tiny search runs
(real local Ray, real sqlite MLflow in a store of its own, `--mlflow-uri sqlite:///...`); every
other command here must be refused or do nothing, before Ray starts and without writing.

    .venv/bin/pytest tests/test_search_state.py -q
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from fault_helpers import write_fault_space
from search_helpers import mlflow_runs, run_search, search_command, search_env
from search.state import SearchRecord

NAME = "guarded"
# The tests of a finished search share one whole search (the `finished` fixture): integration tier.
WHOLE_SEARCH = pytest.mark.integration


def _snapshot(tmp_path: Path) -> dict:
    """Everything a refused command must leave as it was."""
    db = tmp_path / "store" / "mlflow.db"
    with sqlite3.connect(db) as conn:
        rows = {
            table: conn.execute(f"select count(*) from {table}").fetchone()[0]
            for table in ("runs", "metrics", "params", "tags")
        }
        tags = sorted(conn.execute("select run_uuid, key, value from tags").fetchall())
    state = tmp_path / "runs" / NAME
    files = sorted(str(p.relative_to(state)) for p in state.rglob("*") if "search.lock" not in p.name)
    text = lambda path: path.read_text() if path.exists() else None  # noqa: E731
    return {
        "rows": rows,
        "tags": tags,
        "files": files,
        "record": text(state / "search.json"),
        "space": text(state / "space" / "space.json"),
    }


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("state")
    (tmp_path / "store").mkdir()
    space = write_fault_space(tmp_path, samples=2, epochs=1, grace=1, slow=False)
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    proc = run_search(tmp_path, space, tiny_model_dir, NAME, "--mlflow-uri", uri)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path, space, uri, tiny_model_dir


def _again(finished, *extra, name=NAME, model=None):
    tmp_path, space, uri, tiny_model_dir = finished
    return run_search(tmp_path, space, model or tiny_model_dir, name, "--mlflow-uri", uri, *extra, timeout=300)


def _one_line(proc, code: int = 2) -> str:
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@WHOLE_SEARCH
def test_the_search_is_recorded_with_its_id_and_state(finished):
    tmp_path = finished[0]
    record = json.loads((tmp_path / "runs" / NAME / "search.json").read_text())
    assert record["state"] == "finished" and record["reports"] == 1 and len(record["search_id"]) == 32
    runs = mlflow_runs(tmp_path / "store" / "mlflow.db")
    assert {r["tags"]["search_id"] for r in runs} == {record["search_id"]}
    parent = next(r for r in runs if r["parent"] is None)
    assert parent["status"] == "FINISHED" and parent["tags"]["search_state"] == "finished"
    # The code it ran, read when it started; the report names that code.
    (code,) = record["code"]
    info = json.loads((tmp_path / "runs" / NAME / "report" / "run_info.json").read_text())
    assert (info["git_sha"], info["command"], info["resumed_with"]) == (code["git_sha"], code["command"], [])
    assert code["command"].startswith("python -m search.run ") and code["git_sha"] == parent["tags"]["git_sha"]


def test_the_record_keeps_the_code_of_the_start_and_of_each_resume_that_ran_other_code():
    record = SearchRecord("s", {}, 2, 1, "sqlite:///x.db")
    start = {"command": "python -m search.run --space smoke", "git_sha": "a" * 40, "git_dirty": False}
    record.note_code(start)
    record.note_code({**start, "command": "python -m search.run --space smoke --resume"})  # same code
    assert record.code == [start]
    edited = {**start, "command": "python -m search.run --resume", "git_dirty": True}
    record.note_code(edited)
    record.note_code({**start, "git_sha": "b" * 40})
    assert record.code == [start, edited, {**start, "git_sha": "b" * 40}]


@WHOLE_SEARCH
def test_an_explicit_sqlite_store_keeps_its_artifacts_beside_it(finished):
    tmp_path = finished[0]
    assert not (tmp_path / "mlruns").exists(), "artifacts went to ./mlruns of the working directory"
    with sqlite3.connect(tmp_path / "store" / "mlflow.db") as conn:
        (location,) = conn.execute(
            "select artifact_location from experiments where name = 'softprompt-search'"
        ).fetchone()
    assert location == (tmp_path / "store" / "mlartifacts").as_uri()
    assert list((tmp_path / "store" / "mlartifacts").rglob("space.json"))


@WHOLE_SEARCH
def test_a_finished_search_resumed_says_so_and_changes_nothing(finished):
    before = _snapshot(finished[0])
    proc = _again(finished, "--resume")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"search {NAME} already finished" in proc.stdout and "--num-samples N (N > 2)" in proc.stdout
    assert "final report: scoring" not in proc.stdout and not re.search(r"trial \w+ epoch", proc.stdout)
    assert _snapshot(finished[0]) == before


@pytest.mark.parametrize(
    "change, named",
    [
        ("model", "model "),
        ("data", "data.test.n 4 -> 5"),
        ("budget", "budget.max_epochs 1 -> 2"),
    ],
    ids=["another-model", "another-split", "another-budget"],
)
@WHOLE_SEARCH
def test_resume_refuses_another_identity(finished, tiny_model_dir, tmp_path, change, named):
    """Before, the remaining trials (or, for a finished search, the test re-scoring) silently used
    the new model or split under the old search's name."""
    before = _snapshot(finished[0])
    model = None
    extra = []
    if change == "model":
        model = tmp_path / "other-model"
        shutil.copytree(tiny_model_dir, model)
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    else:
        space = finished[1].read_text()
        space = (
            space.replace("test: 4", "test: 5") if change == "data" else space.replace("max_epochs: 1", "max_epochs: 2")
        )
        (finished[0] / f"{change}.yaml").write_text(space)
        extra = ["--space", str(finished[0] / f"{change}.yaml")]
    line = _one_line(_again(finished, "--resume", *extra, model=model))
    assert line.startswith("error: --resume: got a different search") and named in line, line
    assert "--num-samples" in line, "the message says what may change"
    assert _snapshot(finished[0]) == before


@WHOLE_SEARCH
def test_resume_refuses_fewer_trials(finished):
    line = _one_line(_again(finished, "--resume", "--num-samples", "1"))
    assert line.startswith("error: --num-samples: got 1, expected at least 2")


@WHOLE_SEARCH
def test_an_existing_name_without_resume_is_refused_before_anything(finished):
    """Before: Ray started, then a 57-line Optuna traceback, after space.json and the parent's
    `command` tag had been overwritten."""
    before = _snapshot(finished[0])
    line = _one_line(_again(finished))
    assert line.startswith(f"error: --name: got '{NAME}', expected a new search name") and "--resume" in line
    assert _snapshot(finished[0]) == before


@WHOLE_SEARCH
def test_a_name_taken_in_mlflow_is_refused_from_another_storage(finished):
    """Another --storage, the same MLflow (the README's cluster set-up): before, the two
    searches' runs were merged (metric steps 1, 2, 1, 2)."""
    tmp_path, space, uri, model = finished
    before = _snapshot(tmp_path)
    proc = subprocess.run(
        search_command(space, model, NAME, "--mlflow-uri", uri, storage="elsewhere"),
        cwd=tmp_path,
        env=search_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = _one_line(proc)
    assert f"--name: got '{NAME}'" in line and "MLflow" in line
    assert not (tmp_path / "elsewhere").exists() and _snapshot(tmp_path) == before


@WHOLE_SEARCH
def test_a_name_left_only_in_mlflow_is_refused(finished):
    """`runs/NAME` deleted, its runs still in MLflow."""
    tmp_path = finished[0]
    moved = tmp_path / "moved-away"
    shutil.move(tmp_path / "runs" / NAME, moved)
    try:
        line = _one_line(_again(finished))
        assert "MLflow" in line and not (tmp_path / "runs" / NAME).exists()
    finally:
        shutil.rmtree(tmp_path / "runs" / NAME, ignore_errors=True)
        shutil.move(moved, tmp_path / "runs" / NAME)


@WHOLE_SEARCH
def test_resume_of_a_name_that_never_ran_is_refused(finished):
    line = _one_line(_again(finished, "--resume", name="never-ran"))
    assert line.startswith("error: --name: got 'never-ran', expected a search to resume")


def test_a_warm_start_whose_files_changed_is_another_identity(tmp_path):
    """A space warm-started from `adapter:PATH`: the identity holds the adapter's
    sha256, so --resume after its files changed names it instead of resuming from another start."""
    from search.state import differences, warm_start_identity

    adapter = tmp_path / "prompt"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v1")
    space = {"search": {"init": {"prompt_tuning": {"choice": ["random", f"adapter:{adapter}"]}}}}
    before = {"model": {}, **space, "warm_starts": warm_start_identity(space)}
    assert warm_start_identity({"search": {"init": {"choice": ["random", "adapter-like text"]}}}) == {}
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v2")
    after = {"model": {}, **space, "warm_starts": warm_start_identity(space)}
    (changed,) = differences(before, after)
    assert changed.startswith(f"warm_starts.{adapter} '") and before != after


@WHOLE_SEARCH
def test_the_record_keeps_the_study_it_must_find(finished):
    tmp_path = finished[0]
    record = json.loads((tmp_path / "runs" / NAME / "search.json").read_text())
    assert record["study"] == {"name": NAME, "search_id": record["search_id"], "trials": 2}


def _replace_study(db: Path, trials: int, search_id: str | None) -> None:
    import optuna

    study = optuna.create_study(study_name=NAME, storage=f"sqlite:///{db}", direction="maximize")
    if search_id is not None:
        study.set_user_attr("search_id", search_id)
    for _ in range(trials):
        study.tell(study.ask(), 0.5)


@pytest.mark.parametrize("replaced", ["deleted", "another-search", "fewer-trials", "not-a-database"])
@WHOLE_SEARCH
def test_resume_refuses_a_study_that_is_not_the_searchs_own(finished, replaced):
    """Before, a deleted optuna.db let --resume start a fresh study whose trial 0 was mapped onto
    the finished trial 0's MLflow run (KILLED, another trial's id), then a KeyError traceback."""
    tmp_path = finished[0]
    db = tmp_path / "runs" / NAME / "optuna.db"
    kept = tmp_path / "optuna.db.kept"
    shutil.move(db, kept)
    try:
        search_id = json.loads((tmp_path / "runs" / NAME / "search.json").read_text())["search_id"]
        if replaced == "another-search":
            _replace_study(db, 2, "0" * 32)
        elif replaced == "fewer-trials":
            _replace_study(db, 1, search_id)
        elif replaced == "not-a-database":
            db.write_text("not sqlite")
        before = _snapshot(tmp_path) if replaced != "not-a-database" else None
        line = _one_line(_again(finished, "--resume", "--num-samples", "3"))
        assert line.startswith("error: --resume: got a search whose study is gone (") and str(db) in line, line
        assert "nothing was changed" in line and "another --name" in line
        if before is not None:
            assert _snapshot(tmp_path) == before
        assert _one_line(_again(finished, "--resume", "--dry-run")) == line
    finally:
        db.unlink(missing_ok=True)
        shutil.move(kept, db)


@WHOLE_SEARCH
def test_a_search_without_its_record_says_how_to_go_on(finished):
    """Before: resume said only that the record was missing, and a new search of the name was
    told to `add --resume`, which could never work: the name was stuck with no way out named."""
    tmp_path = finished[0]
    record = tmp_path / "runs" / NAME / "search.json"
    kept = tmp_path / "search.json.kept"
    shutil.move(record, kept)
    try:
        for extra in (["--resume"], []):
            line = _one_line(_again(finished, *extra))
            assert line.startswith(f"error: --name: got '{NAME}', expected a search with its record {record}")
            assert "cannot be resumed" in line and "start a new search with another --name" in line, line
            assert "add --resume" not in line and not record.exists()
    finally:
        shutil.move(kept, record)
