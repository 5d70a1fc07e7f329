"""Real SIGINT and SIGTERM to a search's process group (as Ctrl-C, `timeout` or systemd send
them) at three points: before the first trial result, mid-trials, during the final report. Each
is followed by the printed `--resume` command. What must hold:

- the interrupted run exits 130 (SIGINT) or 143 (SIGTERM), prints the exact resume command,
  runs no final report, and leaves MLflow with no RUNNING run: the parent KILLED with
  `search_state=interrupted` and `interrupted_by`, unfinished trials KILLED (`INTERRUPTED`);
- the resumed run finishes: exit 0, one parent FINISHED, one FINISHED child per trial, nothing
  KILLED or RUNNING, an empty backlog, and the report's metrics logged exactly once.

Before: one Ctrl-C was reported as a finished search (exit 0, the report on partial results,
a child left RUNNING); SIGTERM aborted with exit 134 and Ray's C++ stack dump.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys

import optuna
import pytest

from fault_helpers import (
    SearchProcess,
    backlog_ops,
    metric_rows,
    mlflow_summary,
    read_results,
    trial_dirs,
    wait_until,
    write_fault_space,
)
from search_helpers import search_env

pytestmark = pytest.mark.integration

SAMPLES, EPOCHS = 3, 2
POINTS = {
    # Tune made trial directories, no trial has reported: the trials are loading or training epoch 1.
    "before-first-result": lambda s, exp: (
        trial_dirs(exp) and not any(read_results(d) for d in trial_dirs(exp).values()) and "epoch 1/" not in s.output()
    ),
    "mid-trials": lambda s, exp: re.search(r"trial \w+ epoch 1/", s.output()),
    "during-final-report": lambda s, exp: "final report: scoring" in s.output(),
}


def _interrupt(tmp_path, model, name: str, point: str, signals: list[int]):
    space = write_fault_space(
        tmp_path, samples=SAMPLES, epochs=EPOCHS, tokens=(4, 8), slow=point != "during-final-report"
    )
    experiment = tmp_path / "runs" / name
    with SearchProcess(tmp_path, space, model, name) as search:
        wait_until(lambda: POINTS[point](search, experiment), 300, point, search, interval=0.05)
        for signum in signals:
            os.killpg(search.pid, signum)  # the whole group, as a terminal's Ctrl-C does
        rc = search.wait(180)
        return rc, search.output()


def _check_interrupted(tmp_path, name: str, rc: int, output: str, signum: int) -> str:
    sig = signal.Signals(signum).name
    assert rc == 128 + signum, f"exit {rc}:\n{output[-3000:]}"
    assert f"== search {name} interrupted by {sig}" in output and "== search finished" not in output, output[-3000:]
    assert "Traceback" not in output and "Tuner.restore" not in output, output[-3000:]
    (command,) = re.findall(r"^resume with: (.*)$", output, re.M)
    assert command.startswith("python -m search.run ") and command.endswith(f"--resume --name {name}")
    summary = mlflow_summary(tmp_path / "runs" / "mlflow.db")
    (parent,) = summary["parents"]
    assert (parent["status"], parent["tags"]["search_state"], parent["tags"]["interrupted_by"]) == (
        "KILLED",
        "interrupted",
        sig,
    )
    # Its description said "running" until now: how it ended and the way on.
    assert parent["tags"]["mlflow.note.content"].startswith(f"search {name}: interrupted ({sig}")
    assert parent["tags"]["mlflow.note.content"].endswith(command)
    assert summary["parent_metric_keys"] == [], "an interrupted search ran the final report"
    statuses = {r["status"] for r in summary["children"]} | {parent["status"]}
    assert "RUNNING" not in statuses
    for child in summary["children"]:
        if child["status"] == "KILLED":
            assert child["tags"]["state"] == "INTERRUPTED" and child["tags"]["interrupted_by"] == sig
            assert not child["tags"]["mlflow.note.content"].startswith("RUNNING"), child["tags"]
    record = json.loads((tmp_path / "runs" / name / "search.json").read_text())
    assert (record["state"], record["interrupted_by"], record["reports"]) == ("interrupted", sig, 0)
    assert backlog_ops(tmp_path / "runs" / name) == []
    return command


def _resume(tmp_path, command: str):
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "search.run"]
    return subprocess.run(
        [sys.executable, *argv[1:]], cwd=tmp_path, env=search_env(), capture_output=True, text=True, timeout=600
    )


def _check_finished(tmp_path, name: str, proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== search finished" in proc.stdout and f"{SAMPLES} trials" in proc.stdout
    db = tmp_path / "runs" / "mlflow.db"
    summary = mlflow_summary(db)
    (parent,) = summary["parents"]
    assert (parent["status"], parent["tags"]["search_state"]) == ("FINISHED", "finished")
    assert "interrupted_by" not in parent["tags"]
    assert len(summary["children"]) == SAMPLES and summary["duplicate_runs"] == 0
    assert {c["status"] for c in summary["children"]} == {"FINISHED"}, summary["children"]
    assert {c["tags"]["state"] for c in summary["children"]} == {"COMPLETED"}
    assert summary["not_ended"] == [] and summary["duplicate_steps"] == 0 and summary["incomplete"] == []
    # The report, exactly once: one row per metric, at step 0.
    rows = metric_rows(db, parent["id"])
    assert {"lift", "test_pass_at_1_best", "test_pass_at_1_baseline"} <= {k for k, _, _ in rows}
    assert sorted(s for _, s, _ in rows) == [0] * len(rows) and summary["parent_duplicate_rows"] == 0
    assert backlog_ops(tmp_path / "runs" / name) == []
    record = json.loads((tmp_path / "runs" / name / "search.json").read_text())
    assert (record["state"], record["reports"]) == ("finished", 1)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/runs/{name}/optuna.db")
    assert [t.state.name for t in study.get_trials(deepcopy=False)] == ["COMPLETE"] * SAMPLES


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_interrupts_and_resume_finishes(tiny_model_dir, tmp_path, point, signum):
    name = "sig"
    rc, output = _interrupt(tmp_path, tiny_model_dir, name, point, [signum])
    command = _check_interrupted(tmp_path, name, rc, output, signum)
    _check_finished(tmp_path, name, _resume(tmp_path, command))


def test_a_second_ctrl_c_stops_at_once_and_still_says_how_to_resume(tiny_model_dir, tmp_path):
    name = "twice"
    rc, output = _interrupt(tmp_path, tiny_model_dir, name, "mid-trials", [signal.SIGINT, signal.SIGINT])
    command = _check_interrupted(tmp_path, name, rc, output, signal.SIGINT)
    _check_finished(tmp_path, name, _resume(tmp_path, command))


# -- while the driver waits on a Ray task --------------------------------------------------------

# MBPP to train on, which the tiny random model cannot solve: the driver waits on one long
# distillation task (tens of seconds), then would fail for want of targets.
DISTILL_SPACE = """\
base: smoke
search:
  num_virtual_tokens: {choice: [2, 4]}
  init: {choice: [random]}
fixed: {batch_size: 2, max_length: 128, max_new_tokens: 256, eval_batch_size: 4, sandbox_timeout_s: 5, dtype: float32}
data:
  train: {source: mbpp, n: 24}
  val: {source: humaneval, n: 3}
  test: {source: humaneval, n: 3}
  distill: {samples: 1}
budget: {num_samples: 2, max_epochs: 1, grace_period: 1, reduction_factor: 2, max_concurrent: 1}
resources: {cpu: 1, gpu: 0}
"""


@pytest.mark.parametrize(
    "signals",
    [[signal.SIGINT], [signal.SIGTERM], [signal.SIGINT, signal.SIGINT]],
    ids=["SIGINT", "SIGTERM", "SIGINT-twice"],
)
def test_a_signal_while_the_driver_waits_on_a_ray_task_stops_in_seconds(tiny_model_dir, tmp_path, signals):
    """Before: Ray's `get` kept the handler's exception until the distillation returned (31-46 s
    on the tiny model), with no word on the console, and a second Ctrl-C did nothing more."""
    import time

    from trainable.data import mbpp

    if not mbpp.mbpp_file().is_file():
        pytest.skip("MBPP not fetched: python -m trainable.data.mbpp")
    cache = tmp_path / "cache"
    (cache / "mbpp").mkdir(parents=True)
    (cache / "mbpp" / mbpp.FILE_NAME).write_bytes(mbpp.mbpp_file().read_bytes())
    space = tmp_path / "distill_space.yaml"
    space.write_text(DISTILL_SPACE)
    name, signum = "waits", signals[0]
    with SearchProcess(tmp_path, space, tiny_model_dir, name, env={"SOFTPROMPT_SEARCH_CACHE": str(cache)}) as search:
        wait_until(lambda: "a Ray task reads or distils them" in search.output(), 300, "distillation", search)
        time.sleep(3)  # the task is running
        sent = time.monotonic()
        for n, sig in enumerate(signals):
            os.killpg(search.pid, sig)
            if n + 1 < len(signals):
                wait_until(lambda: "stopping: cancelling the Ray tasks" in search.output(), 10, "the first", search)
        rc = search.wait(120)
        took = time.monotonic() - sent
        output = search.output()
    print(f"\n[{'+'.join(signal.Signals(s).name for s in signals)} during distillation] exit {rc} in {took:.1f} s")
    assert f"{signal.Signals(signum).name}: stopping: cancelling the Ray tasks" in output, output[-3000:]
    assert took < 15, f"took {took:.1f} s:\n{output[-3000:]}"
    assert "training targets: " not in output, "the distillation ran to its end"
    _check_interrupted(tmp_path, name, rc, output, signum)
