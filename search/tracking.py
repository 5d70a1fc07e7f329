"""MLflow: one parent run per search, one child run per trial, logged from the driver.

Every write goes through a ledger: an ordered queue of operations persisted under the search's
state dir. If the tracking server is down, operations wait (and are retried on every later
write); a search never crashes for MLflow, and `--resume` sends what is left. Runs are found by
a `search_key` tag before one is created, so a resumed search reattaches to its runs instead of
duplicating them.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import RunStatus

log = logging.getLogger(__name__)
EXPERIMENT = "softprompt-search"  # the MLflow experiment every search logs to
PARENT = "parent"
BACKLOG_FILE = "mlflow_backlog.jsonl"
STEPS_FILE = "mlflow_steps.json"
# After a failed write, queue without trying for this long: a server that hangs instead of
# refusing connections would otherwise cost a timeout on every trial event.
RETRY_AFTER_S = 30.0


class MlflowLedger:
    def __init__(self, tracking_uri: str, experiment: str, search_name: str, state_dir: str | Path,
                 artifact_location: str | None = None):
        self.tracking_uri, self.experiment, self.search_name = tracking_uri, experiment, search_name
        self.state_dir, self.artifact_location = Path(state_dir), artifact_location
        self._client = None
        self._experiment_id = None
        self._run_ids: dict[str, str] = {}
        self._retry_at = 0.0

    def __getstate__(self):  # Tune pickles callbacks with the experiment; clients don't pickle
        return {**self.__dict__, "_client": None, "_retry_at": 0.0}

    # -- the queue -------------------------------------------------------------------------
    def _backlog(self) -> Path:
        return self.state_dir / BACKLOG_FILE

    def _pending(self) -> list[list]:
        path = self._backlog()
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []

    def _save_pending(self, ops: list[list]) -> None:
        self._write_atomically(self._backlog(), "".join(json.dumps(op) + "\n" for op in ops))

    def _write_atomically(self, path: Path, text: str) -> None:
        # A killed driver must leave the old file or the new one, never half of either.
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)

    def submit(self, *op) -> bool:
        """Queue one operation and send everything queued; False if something stays queued."""
        ops = self._pending() + [list(op)]
        if time.monotonic() < self._retry_at:
            self._save_pending(ops)
            return False
        return self._send(ops)

    def log_epoch(self, key: str, values: dict, step: int) -> None:
        """Per-epoch metrics, once per step: a resumed search replays the results that came after
        Tune's last snapshot, and MLflow would keep both copies. The last step sent per run is
        kept on disk because this object itself may come back from that older snapshot."""
        path = self.state_dir / STEPS_FILE
        steps = json.loads(path.read_text()) if path.exists() else {}
        if step <= steps.get(key, 0):
            return
        steps[key] = step
        self._write_atomically(path, json.dumps(steps))
        self.submit("metrics", key, values, step)

    def flush(self) -> int:
        """Send what is queued (e.g. after an outage); returns how many operations still wait."""
        ops = self._pending()
        return 0 if not ops or self._send(ops) else len(self._pending())

    def _send(self, ops: list[list]) -> bool:
        for done, op in enumerate(ops):
            try:
                self._apply(*op)
            except Exception as exc:  # an outage must not end a search: keep the rest for later
                log.warning("MLflow at %s unreachable (%s); %d operation(s) queued in %s", self.tracking_uri,
                            str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__,
                            len(ops) - done, self._backlog())
                self._client = None  # reconnect next time
                self._retry_at = time.monotonic() + RETRY_AFTER_S
                self._save_pending(ops[done:])
                return False
        self._save_pending([])
        return True

    # -- operations ------------------------------------------------------------------------
    def client(self) -> MlflowClient:
        if self._client is None:
            # MLflow's own retries back off for ~4 minutes per request; the queue retries on every
            # later write instead, so one attempt with a short timeout is enough.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            found = self.client().get_experiment_by_name(self.experiment)
            self._experiment_id = found.experiment_id if found else self.client().create_experiment(
                self.experiment, artifact_location=self.artifact_location)
        return self._experiment_id

    def run_id(self, key: str) -> str:
        """The run of `key` (PARENT or a trial's key), found by tag or created once."""
        if key in self._run_ids:
            return self._run_ids[key]
        tag = f"{self.search_name}/{key}"
        found = self.client().search_runs([self._experiment()], f"tags.search_key = '{tag}'", max_results=1)
        if found:
            self._run_ids[key] = found[0].info.run_id
        else:
            tags = {"search_key": tag, "search_name": self.search_name}
            if key != PARENT:
                tags["mlflow.parentRunId"] = self.run_id(PARENT)
            name = self.search_name if key == PARENT else key
            self._run_ids[key] = self.client().create_run(self._experiment(), tags=tags, run_name=name).info.run_id
        return self._run_ids[key]

    def _apply(self, kind: str, key: str, *args) -> None:
        client, run_id = self.client(), self.run_id(key)
        if kind == "params":
            for name, value in args[0].items():
                client.log_param(run_id, name, value)
        elif kind == "metrics":
            values, step = args
            for name, value in values.items():
                client.log_metric(run_id, name, float(value), step=step)
        elif kind == "tags":
            for name, value in args[0].items():
                client.set_tag(run_id, name, str(value))
        elif kind == "artifacts":
            local_dir, artifact_path = args
            if Path(local_dir).exists():
                client.log_artifacts(run_id, local_dir, artifact_path)
        elif kind == "end":
            client.set_terminated(run_id, status=args[0])
        else:
            raise ValueError(f"unknown MLflow operation {kind!r}")

    def end_status(self, state: str) -> str:
        return RunStatus.to_string(RunStatus.FAILED if state == "FAILED" else RunStatus.FINISHED)

    def parent_url(self) -> str:
        try:
            return (f"{self.tracking_uri} experiment {self._experiment()} "
                    f"run {self.run_id(PARENT)}")
        except Exception:
            return f"{self.tracking_uri} (unreachable now; see {self._backlog()})"
