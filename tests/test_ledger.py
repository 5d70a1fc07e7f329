"""The MLflow ledger against a real sqlite MLflow store, no Ray: refusals are reported and
dropped, outages wait and are sent later (by a new ledger, as `--resume` builds one), runs are
found by search id (never by name), an interruption ends every RUNNING run of its search, and a
full disk keeps the queue in memory with one line instead of a traceback.

    .venv/bin/pytest tests/test_ledger.py -q
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    REQUEST_LIMIT_EXCEEDED,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from search.mlflow_ops import DESCRIPTION_TAG, Artifacts, End, Interrupted, Metrics, Params, Start, Tags, View
from search.tracking import BACKLOG_FILE, EXPERIMENT, OUTAGE, PARENT, REFUSAL, MlflowLedger, classify

REPO = Path(__file__).resolve().parents[1]
# Each test's store is tmp_path/mlflow.db, new and empty, copied from one already migrated (conftest).
pytestmark = pytest.mark.usefixtures("mlflow_db")


def _ledger(tmp_path, name="s", search_id=None, state="state") -> MlflowLedger:
    return MlflowLedger(
        f"sqlite:///{tmp_path / 'mlflow.db'}", EXPERIMENT, name, search_id or uuid.uuid4().hex, tmp_path / state
    )


def _runs(tmp_path) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_a_refusal_is_reported_and_dropped_and_the_queue_goes_on(tmp_path, capsys):
    """MLflow refuses a changed param: before, the ledger filed it as an outage and it and every
    later operation stayed in the backlog forever."""
    ledger = _ledger(tmp_path)
    assert ledger.submit(Params(PARENT, {"best.lr": 0.1}))
    assert ledger.submit(Params(PARENT, {"best.lr": 0.2})) is True  # refused: nothing waits
    assert ledger.submit(Tags(PARENT, {"after": "yes"}))
    assert ledger.queued() == 0 and not (ledger.state_dir / BACKLOG_FILE).read_text()
    out = capsys.readouterr().out
    assert "MLflow refused params of run 'parent'" in out and "not retried" in out
    (run,) = _runs(tmp_path)
    assert run.data.params == {"best.lr": "0.1"} and run.data.tags["after"] == "yes"
    refused = [json.loads(line) for line in (ledger.state_dir / "mlflow_refused.jsonl").read_text().splitlines()]
    assert refused[0]["op"] == ["params", PARENT, {"best.lr": 0.2}] and "Changing param" in refused[0]["error"]


def test_an_outage_waits_and_a_new_ledger_sends_it(tmp_path):
    """A locked store (a real sqlite lock held by another connection) is an outage: the
    operation waits in the backlog; the ledger of a resumed driver sends it."""
    search_id = uuid.uuid4().hex
    first = _ledger(tmp_path, search_id=search_id)
    assert first.connect() and first.submit(Params(PARENT, {"a": 1}))
    lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=0.1, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        assert first.submit(Metrics(PARENT, {"m": 1.0}, 0)) is False
        assert first.submit(Tags(PARENT, {"t": "x"})) is False  # queued without trying again
    finally:
        lock.execute("COMMIT")
    assert [op.kind for op in first._pending()] == ["metrics", "tags"]
    resumed = _ledger(tmp_path, search_id=search_id)  # as --resume builds it: same state dir and id
    assert resumed.flush() == 0 and resumed.queued() == 0
    (run,) = _runs(tmp_path)
    assert run.data.metrics == {"m": 1.0} and run.data.tags["t"] == "x"


def test_runs_are_found_by_search_id_not_by_name(tmp_path):
    """Two searches called `same` (say from two --storage dirs on one MLflow) never merge."""
    a, b = _ledger(tmp_path, "same", state="a"), _ledger(tmp_path, "same", state="b")
    for ledger, value in ((a, 1.0), (b, 2.0)):
        ledger.submit(Metrics(PARENT, {"lift": value}, 0))
        ledger.submit(Metrics("optuna-0", {"val_pass_at_1": value}, 1))
    runs = _runs(tmp_path)
    assert len(runs) == 4
    for ledger, value in ((a, 1.0), (b, 2.0)):
        mine = [r for r in runs if r.data.tags["search_id"] == ledger.search_id]
        assert len(mine) == 2 and {r.data.metrics.popitem()[1] for r in mine} == {value}
        parent = next(r for r in mine if "mlflow.parentRunId" not in r.data.tags)
        child = next(r for r in mine if "mlflow.parentRunId" in r.data.tags)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_an_interruption_kills_every_running_run_of_its_search_only(tmp_path):
    mine, other = _ledger(tmp_path, state="a"), _ledger(tmp_path, state="b")
    for key in (PARENT, "optuna-0", "optuna-1"):
        mine.submit(Tags(key, {"x": 1, DESCRIPTION_TAG: "RUNNING: method=prompt_tuning"}))
    other.submit(Tags(PARENT, {"x": 1}))
    mine.submit(End("optuna-1", "FINISHED"))
    mine.submit(Interrupted("SIGTERM"))
    by_key = {r.data.tags["search_key"]: r for r in _runs(tmp_path)}
    parent, running, done = (by_key[f"{mine.search_id}/{k}"] for k in (PARENT, "optuna-0", "optuna-1"))
    assert (parent.info.status, parent.data.tags["search_state"], parent.data.tags["interrupted_by"]) == (
        "KILLED",
        "interrupted",
        "SIGTERM",
    )
    assert (running.info.status, running.data.tags["state"]) == ("KILLED", "INTERRUPTED")
    assert running.data.tags[DESCRIPTION_TAG] == "INTERRUPTED: method=prompt_tuning"  # no longer "RUNNING"
    assert done.info.status == "FINISHED" and "interrupted_by" not in done.data.tags
    assert by_key[f"{other.search_id}/{PARENT}"].info.status == "RUNNING"
    mine.submit(Start("optuna-0"))  # a resumed trial runs again
    again = next(r for r in _runs(tmp_path) if r.info.run_id == running.info.run_id)
    assert again.info.status == "RUNNING" and "interrupted_by" not in again.data.tags


def test_a_full_disk_keeps_the_queue_in_memory_with_one_line(tmp_path, capsys):
    """The backlog's temporary file points at /dev/full: every write of it fails with the
    kernel's ENOSPC. The ledger says so once, keeps the operations and sends them when MLflow
    takes them; before, the ENOSPC escaped into Tune's callbacks."""
    search_id = uuid.uuid4().hex
    ledger = _ledger(tmp_path, search_id=search_id)
    ledger.state_dir.mkdir()
    (ledger.state_dir / BACKLOG_FILE).with_suffix(".tmp").symlink_to("/dev/full")
    lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=0.1, isolation_level=None)
    ledger.connect()
    lock.execute("BEGIN EXCLUSIVE")
    try:
        for step in (1, 2, 3):
            ledger.submit(Metrics(PARENT, {"m": float(step)}, step))
    finally:
        lock.execute("COMMIT")
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "disk full" in line]
    assert len(warnings) == 1 and "keeping" in warnings[0], out
    assert ledger.queued() == 3
    assert ledger.flush() == 0
    (run,) = _runs(tmp_path)
    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run.info.run_id, "m")
    assert sorted(m.step for m in history) == [1, 2, 3]


@pytest.mark.parametrize(
    "exc, kind",
    [
        (MlflowException("Changing param values is not allowed", error_code=INVALID_PARAMETER_VALUE), REFUSAL),
        (MlflowException("Run 'x' not found", error_code=RESOURCE_DOES_NOT_EXIST), REFUSAL),
        (MlflowException("API request to http://h/api failed with exception HTTPConnectionPool"), OUTAGE),  # 500
        (MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE), OUTAGE),
        (MlflowException("slow down", error_code=REQUEST_LIMIT_EXCEEDED), OUTAGE),
        (ConnectionRefusedError(111, "Connection refused"), OUTAGE),
        (OSError(28, "No space left on device"), OUTAGE),
        (TypeError("a bug in an operation"), REFUSAL),
    ],
)
def test_outages_and_refusals_are_told_apart(exc, kind):
    assert classify(exc) == kind


def test_a_refusal_raised_while_handling_a_database_error_is_a_refusal():
    from sqlalchemy.exc import IntegrityError

    try:
        try:
            raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))
        except IntegrityError:
            raise MlflowException("Changing param values is not allowed", error_code=INVALID_PARAMETER_VALUE)
    except MlflowException as exc:
        assert classify(exc) == REFUSAL


FRESH_STORE_WRITER = """
import sys, uuid
from search.mlflow_ops import Tags
from search.tracking import EXPERIMENT, PARENT, MlflowLedger
ledger = MlflowLedger(sys.argv[1], EXPERIMENT, sys.argv[2], uuid.uuid4().hex, sys.argv[3])
ok = ledger.connect() and ledger.submit(Tags(PARENT, {"writer": sys.argv[2]}))
print("ok" if ok and ledger.queued() == 0 else "queued")
"""


@pytest.mark.slow  # four processes importing MLflow: about a minute on 2 cores
def test_four_writers_on_a_fresh_sqlite_store(tmp_path):
    """Four drivers start at once on a store that does not exist yet: one creates and migrates
    it, the others wait for it (before, concurrent migrations collided in `_alembic_tmp_runs`)."""
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FRESH_STORE_WRITER, uri, f"w{i}", str(tmp_path / f"s{i}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["ok"] * 4, outs
    with sqlite3.connect(tmp_path / "store" / "mlflow.db") as conn:
        tables = {row[0] for row in conn.execute("select name from sqlite_master where type = 'table'")}
        writers = {row[0] for row in conn.execute("select value from tags where key = 'writer'")}
    assert not any(t.startswith("_alembic_tmp") for t in tables) and writers == {"w0", "w1", "w2", "w3"}


# Malformed writes, each refused where it is built (before, a list like these was queued, written
# to the backlog and only failed when MLflow was sent it).
MALFORMED = {
    "metric-not-a-number": (lambda: Metrics(PARENT, {"val_pass_at_1": "high"}, 1), "metrics.val_pass_at_1"),
    "negative-step": (lambda: Metrics(PARENT, {"m": 1.0}, -1), "step"),
    "unknown-end-status": (lambda: End("optuna-0", "DONE"), "status"),
    "tag-value-a-list": (lambda: Tags(PARENT, {"t": [1, 2]}), "tags.t"),
    "params-not-a-dict": (lambda: Params(PARENT, [("a", 1)]), "params"),
    "empty-key": (lambda: Start(""), "key"),
    "empty-reason": (lambda: Interrupted(""), "reason"),
    "view-not-json": (lambda: View({"columns": {1, 2}}), "view"),
    "artifacts-without-path": (lambda: Artifacts(PARENT, "/tmp/x", ""), "artifact_path"),
}


@pytest.mark.parametrize("build, field", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_write_fails_where_it_is_built(build, field):
    with pytest.raises(ValueError) as err:
        build()
    assert str(err.value).startswith(f"{field}: got "), err.value


def test_the_ledger_takes_only_typed_operations(tmp_path):
    ledger = _ledger(tmp_path)
    with pytest.raises(TypeError, match="operation"):
        ledger.submit(["tags", PARENT, {"t": "x"}])
    assert ledger.queued() == 0


def test_a_backlog_of_lists_from_a_saved_search_is_sent(tmp_path, capsys):
    """The backlog keeps the JSON-list form (`[kind, key, *args]`) a saved search wrote; a
    `--resume` reads it, sends every operation, and reports a line that is no operation instead
    of stopping on it."""
    ledger = _ledger(tmp_path)
    lines = [
        ["start", PARENT],
        ["params", PARENT, {"space": "smoke"}],
        ["tags", PARENT, {"search_state": "running"}],
        ["metrics", "optuna-0", {"val_pass_at_1": 0.5}, 1],
        ["end", "optuna-0", "FINISHED"],
        ["frobnicate", PARENT],
        ["interrupted", PARENT, "SIGTERM"],
    ]
    ledger.state_dir.mkdir()
    (ledger.state_dir / BACKLOG_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [op.to_list() for op in ledger._pending()] == lines[:5] + lines[6:]
    assert "MLflow refused queued line" in capsys.readouterr().out
    assert ledger.flush() == 0
    by_key = {r.data.tags["search_key"].split("/")[1]: r for r in _runs(tmp_path)}
    parent, child = by_key[PARENT], by_key["optuna-0"]
    assert parent.data.params == {"space": "smoke"} and parent.info.status == "KILLED"
    assert parent.data.tags["interrupted_by"] == "SIGTERM"
    assert child.data.metrics == {"val_pass_at_1": 0.5} and child.info.status == "FINISHED"
    (refused,) = (ledger.state_dir / "mlflow_refused.jsonl").read_text().splitlines()  # reported once
    assert "frobnicate" in json.loads(refused)["op"]
