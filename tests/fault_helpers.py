"""Helpers for the fault-injection tests (`tests/test_faults.py`): searches run as background
processes in their own session (so that the driver, Ray's node processes and the trial workers
can be signalled by pid and reaped by process group, never by name), and readers for what Tune and
MLflow stored. The MLflow server that goes away and comes back is tests/helpers.py's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from search_helpers import metric_history, mlflow_runs, search_command, search_env

# The tiny-model space of `search_helpers.TINY_SPACE`, with every knob the fault tests turn:
# the searched num_virtual_tokens values (the fault is keyed on one), the epoch length
# (max_new_tokens and data sizes: ~2.5-4 s per epoch at 256 new tokens, 24/16 problems, on
# 2 busy cores; ~0.4 s at 8 new tokens, 4/4), and ASHA's grace period (grace = max_epochs
# means ASHA stops nobody, so every trial must end COMPLETED unless a fault ends it).
# fp32: these searches are compared across kills, resumes and runs; `auto` is measured in test_search_dtype.
FAULT_SPACE = """\
base: smoke
search:
  method: null
  num_virtual_tokens: {{choice: {tokens}}}
  init: {{choice: [random, sample_vocab]}}
  learning_rate: {{loguniform: [1.0e-3, 3.0e-1]}}
fixed: {{batch_size: 2, max_length: 128, max_new_tokens: {new_tokens}, eval_batch_size: 4, sandbox_timeout_s: 5,
        dtype: float32}}
data: {{train: {train}, val: {val}, test: 4}}
budget: {{num_samples: {samples}, max_epochs: {epochs}, grace_period: {grace}, reduction_factor: 2,
         max_concurrent: 2, seed: {seed}}}
resources: {{cpu: 1, gpu: 0}}
"""
SLOW_EPOCHS = {"new_tokens": 256, "train": 24, "val": 16}  # an epoch lasts a few seconds
FAST_EPOCHS = {"new_tokens": 8, "train": 4, "val": 4}  # an epoch lasts well under a second

TRIAL_EVENT = re.compile(r"^\[\s*[\d.]+s\] trial (\w+) (epoch \d+|COMPLETED|PRUNED|FAILED)", re.M)


def write_fault_space(
    tmp_path: Path,
    *,
    samples: int,
    epochs: int,
    tokens=(8,),
    grace: int | None = None,
    seed: int = 0,
    slow: bool = True,
    name: str = "fault_space.yaml",
) -> Path:
    sizes = SLOW_EPOCHS if slow else FAST_EPOCHS
    path = tmp_path / name
    path.write_text(
        FAULT_SPACE.format(
            tokens=list(tokens),
            samples=samples,
            epochs=epochs,
            grace=epochs if grace is None else grace,
            seed=seed,
            **sizes,
        )
    )
    return path


# -- processes --------------------------------------------------------------------------------


def process_session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class SearchProcess:
    """`python -m search.run ...` in the background, in its own session, output to a log file.

    Ray's local node (GCS, raylet, workers) is started by the driver and inherits the session, so
    `kill_session()` reaps everything this search started, and only that."""

    def __init__(
        self,
        tmp_path: Path,
        space: Path,
        model: Path,
        name: str,
        *extra: str,
        env: dict | None = None,
        label: str | None = None,
    ):
        self.name = name
        self.log = tmp_path / f"{label or name}.log"
        self.started = time.monotonic()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                search_command(space, model, name, *extra),
                cwd=tmp_path,
                env={**search_env(), **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill_session()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, n: int = 4000) -> str:
        return self.output()[-n:]

    def events(self) -> list[str]:
        """Console lines for trial events (results, completions, failures), in order."""
        return [m.group(0) for m in TRIAL_EVENT.finditer(self.output())]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def owns(self, pid: int) -> bool:
        """True if `pid` runs in this search's session (a process it started)."""
        return process_session(pid) == self.proc.pid

    def kill_session(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # what the driver left (Ray agents), by its group
        except ProcessLookupError:
            pass


def wait_until(predicate, timeout: float, what: str, search: SearchProcess | None = None, interval: float = 0.1):
    """Poll `predicate` until it returns something truthy (returned); fail on timeout, or if the
    search ends first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if search is not None and not search.alive():
            raise AssertionError(f"search ended (exit {search.proc.returncode}) before {what}:\n{search.tail()}")
        if time.monotonic() > deadline:
            tail = f":\n{search.tail()}" if search is not None else ""
            raise AssertionError(f"no {what} within {timeout:g} s{tail}")
        time.sleep(interval)


def wait_watching(search: SearchProcess, timeout: float) -> tuple[int | None, float]:
    """Wait up to `timeout` s for the search to end. Returns its exit code (None if still running)
    and the longest time in which it printed no trial event, counting the time up to the deadline
    when it is still running (a driver stuck in a callback prints nothing)."""
    deadline = time.monotonic() + timeout
    seen, changed, longest = len(search.events()), time.monotonic(), 0.0
    while search.alive() and time.monotonic() < deadline:
        time.sleep(0.25)
        now, count = time.monotonic(), len(search.events())
        if count != seen:
            longest, seen, changed = max(longest, now - changed), count, now
    if search.alive():
        longest = max(longest, time.monotonic() - changed)
    return search.proc.poll(), longest


# -- what Tune stored -------------------------------------------------------------------------


def trial_dirs(experiment_dir: Path) -> dict[str, Path]:
    """Ray trial id -> trial directory (`train_soft_prompt_<id>_<n>_<params>_<date>`)."""
    out = {}
    for d in sorted(experiment_dir.glob("train_soft_prompt_*")):
        if d.is_dir():
            out[d.name.split("_")[3]] = d
    return out


def read_results(trial_dir: Path) -> list[dict]:
    """The trial's result.json, one dict per reported epoch; a half-written last line is skipped."""
    path = trial_dir / "result.json"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def all_results(experiment_dir: Path) -> dict[str, list[dict]]:
    return {tid: read_results(d) for tid, d in trial_dirs(experiment_dir).items()}


# -- what MLflow stored -------------------------------------------------------------------------------


def metric_rows(db: Path, run_id: str) -> list[tuple[str, int, float]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select key, step, value from metrics where run_uuid = ?", (run_id,)).fetchall()


def mlflow_summary(db: Path) -> dict:
    """Parent and child runs with what the fault tests check: duplicates (two runs for one trial,
    two values at one epoch step), missing epoch steps, runs not ended."""
    runs = mlflow_runs(db)
    parents = [r for r in runs if r["parent"] is None]
    children = [r for r in runs if r["parent"] is not None]
    keys = [c["tags"].get("search_key") for c in children]
    trial_ids = [c["tags"].get("ray_trial_id") for c in children]
    out = {
        "parents": parents,
        "children": children,
        "duplicate_runs": (len(keys) - len(set(keys))) + max(0, len(parents) - 1),
        "duplicate_trial_ids": len(trial_ids) - len(set(trial_ids)),
        "not_ended": [r["id"] for r in runs if r["status"] not in ("FINISHED", "FAILED")],
        "steps": {},
        "duplicate_steps": 0,
        "incomplete": [],
    }
    for c in children:
        steps = [s for s, _ in metric_history(db, c["id"], "val_pass_at_1")]
        tid = c["tags"].get("ray_trial_id", c["id"])
        out["steps"][tid] = steps
        out["duplicate_steps"] += len(steps) - len(set(steps))
        stopped = c["tags"].get("stopped_at_epoch")
        if stopped is None or sorted(set(steps)) != list(range(1, int(stopped) + 1)):
            out["incomplete"].append((tid, stopped, steps))
    # The parent's final-report metrics are logged at step 0: one row per key expected.
    parent_rows = [row for p in parents for row in metric_rows(db, p["id"])]
    pkeys = [(k, s) for k, s, _ in parent_rows]
    out["parent_metric_keys"] = sorted({k for k, _ in pkeys})
    out["parent_duplicate_rows"] = len(pkeys) - len(set(pkeys))
    values: dict = {}
    for k, s, v in parent_rows:
        values.setdefault((k, s), set()).add(v)
    out["parent_conflicting_keys"] = sorted(k for (k, _), vs in values.items() if len(vs) > 1)
    return out


def backlog_ops(state_dir: Path) -> list[list]:
    path = state_dir / "mlflow_backlog.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
