"""MLflow: one parent run per search, one child run per trial, logged from the driver.

Every write goes through a ledger: an ordered queue of operations persisted under the search's
state dir before it is sent (a driver killed mid-send resends, it never drops). What MLflow does
with an operation decides what happens to it:

- sent: removed from the queue;
- an outage (no connection, a timeout, a 5xx, a locked database, a full disk): it and everything
  after it wait, retried on later writes and by `--resume`; a search never crashes for MLflow;
- a refusal (MLflow said no: a changed param, an invalid name, a missing run): reported on the
  console and in `mlflow_refused.jsonl`, never queued (it would be refused again forever and
  hold back everything behind it).

Runs are found by a `search_key` tag (`<search id>/<key>`), never by the search's name, so a
resumed search reattaches to its own runs and two searches of one name never merge.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, RunStatus
from mlflow.exceptions import MlflowException

from search import mlflow_ops as ops
from search.checks import is_no_space, sqlite_path
from search.mlflow_ops import DESCRIPTION_TAG, PARENT, Op

log = logging.getLogger(__name__)
EXPERIMENT = "softprompt-search"  # the MLflow experiment every search logs to
# MLflow 3's UI shows an experiment as GenAI (traces, "Evaluation runs") or as model training
# (runs, models): ours is the latter. Read from MLflow 3.17.2's UI bundle
# (mlflow/server/js/build/static/js): the kind is the experiment tag `mlflow.experimentKind`
# (ExperimentKind.CUSTOM_MODEL_DEVELOPMENT), but that build reads it only with its workflow
# selector off; with the selector on (as shipped) the view follows the URL's `workflowType` query
# (else the browser's last choice, else GenAI). So we set both: the tag on the experiment, and the
# query on the UI link the driver prints (`ui_link`).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
UI_VIEW_QUERY = "workflowType=machine_learning"
UI_DEFAULT_URL = "http://127.0.0.1:5000"  # where `python -m mlflow_server` serves by default
# Neither view shows metric or param columns until a user picks them. MLflow's "shared view" (the
# runs page's Share button: an experiment tag with this prefix, opened by ?viewStateShareKey=KEY)
# holds a filter, a sort and the columns: each search gets one (key = its search id) that lists
# its own trials by val pass@1 with the searched parameters.
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
VIEW_METRICS = ("val_pass_at_1", "val_loss", "train_loss")
BACKLOG_FILE = "mlflow_backlog.jsonl"
STEPS_FILE = "mlflow_steps.json"
REFUSED_FILE = "mlflow_refused.jsonl"
# After a failed write, queue without trying for this long: a server that hangs instead of
# refusing connections would otherwise cost a timeout on every trial event.
RETRY_AFTER_S = 30.0
# Persist the queue's progress this often while sending a long backlog (a kill resends at most
# this many operations).
SAVE_EVERY = 25
# HTTP answers that say "not now" rather than "no": auth can be fixed and a resume sends them.
_RETRYABLE_STATUS = (401, 403, 408, 429)
OUTAGE, REFUSAL = "outage", "refusal"


def classify(exc: BaseException) -> str:
    """OUTAGE (retry later) or REFUSAL (report, drop) for an exception from an MLflow call."""
    from sqlalchemy.exc import OperationalError

    status = exc.get_http_status_code() if isinstance(exc, MlflowException) else None
    if status is not None and 400 <= status < 500 and status not in _RETRYABLE_STATUS:
        # MLflow said no, even when it says so while handling a database error (a changed param
        # is an IntegrityError underneath).
        return REFUSAL
    seen, link = set(), exc
    while link is not None and id(link) not in seen:  # requests' errors are OSErrors too
        seen.add(id(link))
        if isinstance(link, (OSError, OperationalError)):  # no connection, timeout, locked, disk
            return OUTAGE
        link = link.__cause__ or link.__context__
    if status is not None and (status >= 500 or status in _RETRYABLE_STATUS):
        return OUTAGE
    # Anything else (a bug in an operation, say) would fail the same way on every retry.
    return REFUSAL


def mlflow_client(tracking_uri: str) -> MlflowClient:
    # MLflow's own retries back off for ~4 minutes per request; the queue retries on every later
    # write instead, so one attempt with a short timeout is enough.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    return MlflowClient(tracking_uri=tracking_uri)


@contextlib.contextmanager
def store_init_lock(tracking_uri: str):
    """Serialise the first connection of each process to a sqlite store: MLflow creates and
    migrates a fresh store's tables on connect, and concurrent migrations collide (a stray
    `_alembic_tmp_runs` table). The lock is flock on the database's directory: nothing is added
    beside the user's file."""
    db = sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(db.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def search_name_taken(tracking_uri: str, name: str) -> bool:
    """True if the experiment has a run of a search called `name` (looked up without creating
    anything: a sqlite file that does not exist yet has none)."""
    db = sqlite_path(tracking_uri)
    if db is not None and not db.is_file():
        return False
    with store_init_lock(tracking_uri):
        client = mlflow_client(tracking_uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return False
    return bool(client.search_runs([experiment.experiment_id], f"tags.search_name = '{name}'", max_results=1))


class MlflowLedger:
    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        search_name: str,
        search_id: str,
        state_dir: str | Path,
        artifact_location: str | None = None,
    ):
        self.tracking_uri, self.experiment, self.search_name = tracking_uri, experiment, search_name
        self.search_id = search_id
        self.state_dir, self.artifact_location = Path(state_dir), artifact_location
        self._client = None
        self._experiment_id = None
        self._run_ids: dict[str, str] = {}
        self._retry_at = 0.0
        self._memory: list[Op] | None = None  # the queue, while the disk refuses to hold it
        self._steps: dict[str, int] | None = None
        self._unwritable: set[str] = set()  # files a write of failed (said once each)
        self.refused = 0

    def __getstate__(self):  # Tune pickles callbacks with the experiment; clients don't pickle
        return {**self.__dict__, "_client": None, "_retry_at": 0.0}

    # -- the queue -------------------------------------------------------------------------
    def _backlog(self) -> Path:
        return self.state_dir / BACKLOG_FILE

    def _pending(self) -> list[Op]:
        if self._memory is not None:
            return list(self._memory)
        path = self._backlog()
        lines = [line for line in path.read_text().splitlines() if line] if path.exists() else []
        pending, unreadable = [], 0
        for line in lines:
            try:
                pending.append(ops.from_list(json.loads(line)))
            except ValueError as exc:  # (JSONDecodeError too) it would fail the same way on every try
                unreadable += 1
                self._refused(line, exc)
        if unreadable:
            self._save_pending(pending)
        return pending

    def _save_pending(self, queue: list[Op]) -> None:
        text = "".join(json.dumps(op.to_list()) + "\n" for op in queue)
        if self._write_atomically(self._backlog(), text, f"{len(queue)} queued MLflow operation(s)"):
            self._memory = None
        else:
            self._memory = list(queue)

    def _write_atomically(self, path: Path, text: str, what: str) -> bool:
        """False (and one clear line) if the disk refuses: the caller keeps it in memory."""
        # A killed driver must leave the old file or the new one, never half of either.
        tmp = path.with_suffix(".tmp")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            tmp.replace(path)
            return True
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if path.name not in self._unwritable:  # once per file, not per write
                self._unwritable.add(path.name)
                full = " (disk full)" if is_no_space(exc) else ""
                print(
                    f"warning: cannot write {path}{full}: {exc.strerror or exc}; keeping {what} in memory until it can",
                    flush=True,
                )
            return False

    def submit(self, *queued: Op) -> bool:
        """Queue operations together (one write) and send everything queued; False if something
        stays queued."""
        for op in queued:
            if not isinstance(op, tuple(ops.KINDS.values())):
                raise TypeError(f"operation: got {op!r:.80}, expected one of search.mlflow_ops' operations")
        queue = self._pending() + list(queued)
        self._save_pending(queue)  # written ahead: a driver killed while sending resends them
        if time.monotonic() < self._retry_at:
            return False
        return self._send(queue)

    def log_epoch(self, key: str, values: dict, step: int) -> None:
        """Per-epoch metrics, once per step: a resumed search replays the results that came after
        Tune's last snapshot, and MLflow would keep both copies. The last step sent per run is
        kept on disk because this object itself may come back from that older snapshot."""
        path = self.state_dir / STEPS_FILE
        if self._steps is None:
            self._steps = json.loads(path.read_text()) if path.exists() else {}
        if step <= self._steps.get(key, 0):
            return
        self._steps[key] = step
        self._write_atomically(path, json.dumps(self._steps), "the last epoch logged per run")
        self.submit(ops.Metrics(key, values, step))

    def flush(self) -> int:
        """Send what is queued (e.g. after an outage); returns how many operations still wait."""
        queue = self._pending()
        return 0 if not queue or self._send(queue) else len(self._pending())

    def queued(self) -> int:
        return len(self._pending())

    def _send(self, queue: list[Op]) -> bool:
        for done, op in enumerate(queue):
            if done and done % SAVE_EVERY == 0:
                self._save_pending(queue[done:])
            try:
                self._apply(op)
            except Exception as exc:  # noqa: BLE001 - classified: an outage waits, a refusal is reported
                if classify(exc) is REFUSAL:
                    self._refused(op, exc)
                    continue
                log.warning(
                    "MLflow at %s unreachable (%s); %d operation(s) queued in %s",
                    self.tracking_uri,
                    _first_line(exc),
                    len(queue) - done,
                    self._backlog(),
                )
                self._client = None  # reconnect next time
                self._retry_at = time.monotonic() + RETRY_AFTER_S
                self._save_pending(queue[done:])
                return False
        self._save_pending([])
        return True

    def _refused(self, op: Op | str, exc: Exception) -> None:
        """`op`: an operation MLflow refused, or a backlog line that is no operation."""
        self.refused += 1
        raw = op.to_list() if not isinstance(op, str) else op
        what = f"{op.kind} of run {op.key!r}" if not isinstance(op, str) else f"queued line {op[:80]!r}"
        print(f"warning: MLflow refused {what} ({_first_line(exc)}); not retried", flush=True)
        line = json.dumps({"op": raw, "error": f"{type(exc).__name__}: {_first_line(exc)}"}, default=str)
        with contextlib.suppress(OSError):
            with open(self.state_dir / REFUSED_FILE, "a") as out:
                out.write(line + "\n")

    # -- operations ------------------------------------------------------------------------
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = mlflow_client(self.tracking_uri)
        return self._client

    def connect(self) -> bool:
        """Create (or migrate) the store and the experiment now, once, before trials start; False
        if MLflow is unreachable (operations then wait in the queue)."""
        try:
            with store_init_lock(self.tracking_uri):
                self._experiment()
            return True
        except Exception as exc:  # noqa: BLE001 - an outage at start must not stop the search
            if classify(exc) is REFUSAL:
                raise
            self._client = None
            log.warning(
                "MLflow at %s unreachable at start (%s); operations will wait in %s",
                self.tracking_uri,
                _first_line(exc),
                self._backlog(),
            )
            return False

    def _experiment(self) -> str:
        if self._experiment_id is None:
            client = self.client()
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                self._experiment_id = client.create_experiment(
                    self.experiment, artifact_location=self.artifact_location, tags=EXPERIMENT_TAGS
                )
            else:  # a store from before the tag (or one a user changed): model training again
                for name, value in EXPERIMENT_TAGS.items():
                    if found.tags.get(name) != value:
                        client.set_experiment_tag(found.experiment_id, name, value)
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def run_id(self, key: str) -> str:
        """The run of `key` (PARENT or a trial's key), found by tag or created once."""
        if key in self._run_ids:
            return self._run_ids[key]
        tag = f"{self.search_id}/{key}"
        found = self.client().search_runs([self._experiment()], f"tags.search_key = '{tag}'", max_results=1)
        if found:
            self._run_ids[key] = found[0].info.run_id
        else:
            tags = {"search_key": tag, "search_id": self.search_id, "search_name": self.search_name}
            if key != PARENT:
                tags["mlflow.parentRunId"] = self.run_id(PARENT)
            name = self.search_name if key == PARENT else key
            self._run_ids[key] = self.client().create_run(self._experiment(), tags=tags, run_name=name).info.run_id
        return self._run_ids[key]

    def _apply(self, op: Op) -> None:
        client = self.client()
        if isinstance(op, ops.Interrupted):  # every run of this search still RUNNING: KILLED, and why
            self._end_running(op.reason)
            return
        if isinstance(op, ops.View):  # the search's shared view of the runs page (an experiment tag)
            client.set_experiment_tag(self._experiment(), SHARED_VIEW_PREFIX + self.search_id, json.dumps(op.view))
            return
        run_id = self.run_id(op.key)
        if isinstance(op, ops.Params):  # one call per param: a refused one does not take the others along
            for name, value in op.values.items():
                client.log_param(run_id, name, value)
        elif isinstance(op, ops.Metrics):  # one batch: all of an epoch's metrics or none (no duplicate rows)
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(name, value, now, op.step) for name, value in op.values.items()])
        elif isinstance(op, ops.Tags):
            for name, value in op.values.items():
                client.set_tag(run_id, name, str(value))
        elif isinstance(op, ops.Artifacts):
            if Path(op.local_dir).exists():
                client.log_artifacts(run_id, op.local_dir, op.artifact_path)
        elif isinstance(op, ops.Start):  # a run that was KILLED (interrupted) or FAILED runs again
            run = client.get_run(run_id)
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
            for stale in ("interrupted_by", "error"):  # why it stopped last time
                if stale in run.data.tags:
                    client.delete_tag(run_id, stale)
        elif isinstance(op, ops.End):
            client.set_terminated(run_id, status=op.status)
        else:
            raise TypeError(f"unknown MLflow operation {op!r:.80}")

    def _end_running(self, reason: str) -> None:
        client = self.client()
        runs = client.search_runs([self._experiment()], f"tags.search_id = '{self.search_id}'", max_results=10_000)
        for run in runs:
            if run.info.status != "RUNNING":
                continue
            parent = run.data.tags.get("search_key") == f"{self.search_id}/{PARENT}"
            tags = {"search_state": "interrupted"} if parent else {"state": "INTERRUPTED"}
            if not parent:  # its description said RUNNING (search.callbacks.trial_description)
                described = run.data.tags.get(DESCRIPTION_TAG, "RUNNING")
                tags[DESCRIPTION_TAG] = "INTERRUPTED" + described.removeprefix("RUNNING")
            for name, value in {**tags, "interrupted_by": reason}.items():
                client.set_tag(run.info.run_id, name, value)
            client.set_terminated(run.info.run_id, status="KILLED")

    def end_status(self, state: str) -> str:
        return RunStatus.to_string(RunStatus.FAILED if state == "FAILED" else RunStatus.FINISHED)

    def parent_url(self) -> str:
        try:
            return f"{self.tracking_uri} experiment {self._experiment()} run {self.run_id(PARENT)}"
        except Exception:  # noqa: BLE001 - only for the summary line
            return f"{self.tracking_uri} (unreachable now; see {self._backlog()})"

    def ui_link(self, default_store: bool) -> str:
        """The experiment's runs page in MLflow's UI, in the model-training view: the server's
        own URL for an http(s) store, else where `python -m mlflow_server` serves this store."""
        try:
            experiment_id = self._experiment()
        except Exception:  # noqa: BLE001 - only for the summary line
            return f"(MLflow unreachable now; see {self._backlog()})"
        return ui_link(self.tracking_uri, experiment_id, default_store, self.search_id)


def search_view(search_id: str, params: list[str]) -> dict:
    """The runs page as this search's shared view: its trials (and parent), best val pass@1
    first, with the per-epoch metrics, the searched parameters and each trial's end state. The
    init column is its readable form (the `init_label` tag: a text's first words), not the param's
    hash."""
    shown = ["tags.`init_label`" if p == "init" else f"params.`{p}`" for p in params]
    columns = [f"metrics.`{m}`" for m in VIEW_METRICS] + shown + ["tags.`state`"]
    return {
        "searchFilter": f"tags.search_id = '{search_id}'",
        "orderByKey": f"metrics.`{VIEW_METRICS[0]}`",
        "orderByAsc": False,
        "selectedColumns": columns,
    }


def ui_link(tracking_uri: str, experiment_id: str, default_store: bool = True, search_id: str | None = None) -> str:
    share = f"viewStateShareKey={search_id}&" if search_id else ""
    page = f"/#/experiments/{experiment_id}/runs?{share}{UI_VIEW_QUERY}"
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/") + page
    serve = "python -m mlflow_server" + ("" if default_store else f" --backend-store-uri {tracking_uri}")
    return f"{UI_DEFAULT_URL}{page}  (after: {serve})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__
