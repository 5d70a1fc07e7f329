"""Faults during a search, with real processes and no mocks: a trial worker SIGKILLed mid-epoch,
a trial that raises on every attempt, and the MLflow server going away (and coming back, or not
until `--resume`). Each test runs whole searches on the tiny model (real local Ray, real sandbox,
real MLflow) and checks what Tune, Optuna and MLflow hold afterwards. A table of faults injected,
searches completed, trials lost and MLflow duplicates is printed at the end of the module.

Processes are signalled by pid only: a search runs in its own session (`SearchProcess`), a trial
worker is killed only after checking that it belongs to that session, the MLflow server is stopped
by its supervisor's pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from fault_helpers import (
    SearchProcess,
    all_results,
    backlog_ops,
    cmdline,
    mlflow_summary,
    read_results,
    trial_dirs,
    wait_until,
    wait_watching,
    write_fault_space,
)
from helpers import MlflowServer
from search.tune_trial import FAULT_ENV
from search.tuner import MAX_TRIAL_FAILURES

pytestmark = pytest.mark.integration

WARNING = "warning: MLflow unreachable"
# MLflow's HTTP client retries a refused connection 7 times with exponential backoff
# (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7, BACKOFF_FACTOR=2: ~4 minutes per request), which froze
# the driver for minutes per trial event during an outage. The ledger now sets 0 retries and a
# 10 s timeout unless the user set them: "defaults" leaves the environment alone (our defaults),
# "fails-fast" sets them explicitly, as a user might.
CLIENTS = {
    "mlflow-client-defaults": {},
    "mlflow-client-fails-fast": {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"},
}


# -- the fault table ------------------------------------------------------------------------------


class FaultTable:
    COLUMNS = (
        "scenario",
        "faults injected",
        "searches completed",
        "trials lost",
        "MLflow dup runs",
        "dup epoch steps",
        "parent dup rows",
        "longest driver gap",
        "verdict",
    )

    def __init__(self):
        self.rows: list[dict] = []

    def row(self, scenario: str, faults: str) -> dict:
        row = {
            "scenario": scenario,
            "faults injected": faults,
            "searches completed": "-",
            "trials lost": "-",
            "MLflow dup runs": "-",
            "dup epoch steps": "-",
            "parent dup rows": "-",
            "longest driver gap": "-",
            "verdict": "did not finish",
        }
        self.rows.append(row)
        return row

    def render(self) -> list[str]:
        widths = {c: max(len(c), *(len(str(r[c])) for r in self.rows)) for c in self.COLUMNS}
        line = lambda r: " | ".join(str(r[c]).ljust(widths[c]) for c in self.COLUMNS)  # noqa: E731 - a one-line helper, named for reading
        return [
            line({c: c for c in self.COLUMNS}),
            "-+-".join("-" * widths[c] for c in self.COLUMNS),
            *(line(r) for r in self.rows),
        ]


@pytest.fixture(scope="module")
def fault_table(request):
    table = FaultTable()
    yield table
    if table.rows:
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        write = reporter.write_line if reporter else print
        write("")
        write("== fault table (tests/test_faults.py) ==")
        for text in table.render():
            write(text)


def _record_mlflow(row: dict, summary: dict, expected_trials: int) -> None:
    ok = [
        c
        for c in summary["children"]
        if c["status"] in ("FINISHED", "FAILED")
        and c["tags"].get("state") in ("COMPLETED", "PRUNED", "FAILED")
        and c["tags"].get("ray_trial_id") not in {i[0] for i in summary["incomplete"]}
    ]
    row["trials lost"] = max(0, expected_trials - len({c["tags"].get("search_key") for c in ok}))
    row["MLflow dup runs"] = summary["duplicate_runs"]
    row["dup epoch steps"] = summary["duplicate_steps"]
    row["parent dup rows"] = summary["parent_duplicate_rows"]


def _event_gap(output: str) -> float:
    """Longest time between two consecutive console lines of the driver (its `[  12.3s]` stamps)."""
    stamps = [float(s) for s in re.findall(r"^\[\s*([\d.]+)s\]", output, re.M)]
    return max((b - a for a, b in zip(stamps, stamps[1:])), default=0.0)


def _completed(search: SearchProcess, rc) -> bool:
    return rc == 0 and ("== search finished" in search.output() or "already finished" in search.output())


@contextlib.contextmanager
def verdict(row: dict):
    """The table's verdict: pass, or the first line of the failed assertion."""
    try:
        yield
    except AssertionError as e:
        row["verdict"] = "FAIL: " + (str(e).splitlines() or ["assertion"])[0][:70]
        raise
    row["verdict"] = "pass"


def _study(tmp_path, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/runs/{name}/optuna.db")


# -- 1. a trial worker killed mid-epoch ------------------------------------------------------------


def test_trial_worker_killed_mid_epoch_resumes_from_its_checkpoint(tiny_model_dir, tmp_path, fault_table):
    """SIGKILL the Ray worker process of a trial while it trains epoch 2 (epoch 1's checkpoint is
    in storage). Tune retries the trial (FailureConfig max_failures=2) from that checkpoint."""
    row = fault_table.row("trial worker SIGKILLed in epoch 2", "1 SIGKILL")
    with verdict(row):
        name, samples, epochs = "killtrial", 2, 3
        space = write_fault_space(tmp_path, samples=samples, epochs=epochs, tokens=(8,))
        experiment = tmp_path / "runs" / name
        t0 = time.monotonic()
        with SearchProcess(tmp_path, space, tiny_model_dir, name) as search:

            def checkpointed_first_epoch():
                for trial_id, trial_dir in trial_dirs(experiment).items():
                    results = read_results(trial_dir)
                    if len(results) == 1 and (trial_dir / results[0]["checkpoint_dir_name"]).is_dir():
                        return trial_id, results[0]
                return None

            victim, first = wait_until(checkpointed_first_epoch, 240, "trial result with its checkpoint", search)
            pid = int(first["pid"])
            assert search.owns(pid), f"pid {pid} ({cmdline(pid)!r}) is not a process of this search"
            worker = cmdline(pid)
            os.kill(pid, signal.SIGKILL)
            lines_at_kill = len(read_results(trial_dirs(experiment)[victim]))
            row["faults injected"] = f"1 SIGKILL (pid {pid})"
            rc = search.wait(300)
            output = search.output()
        row["searches completed"] = f"{int(_completed(search, rc))}/1"
        row["longest driver gap"] = f"{_event_gap(output):.1f} s"
        results = all_results(experiment)
        killed = results[victim]
        print(
            f"\n[kill] worker pid {pid} ({worker.strip()[:60]}) of trial {victim} killed after its epoch-1 "
            f"result; search exit {rc} in {time.monotonic() - t0:.0f} s. result.json of {victim}:"
        )
        for r in killed:
            print(
                f"[kill]   epoch {r['epoch']} training_iteration {r['training_iteration']} "
                f"iterations_since_restore {r['iterations_since_restore']} pid {r['pid']} "
                f"checkpoint {r.get('checkpoint_dir_name')}"
            )
        db = tmp_path / "runs" / "mlflow.db"
        summary = mlflow_summary(db)
        _record_mlflow(row, summary, samples)
        print(f"[kill] MLflow val_pass_at_1 steps per trial: {summary['steps']}")
        print(
            f"[kill] console: Ray's 'Trial task failed' ERROR {output.count('Trial task failed')}x, "
            f"ActorDiedError {output.count('ActorDiedError:')}x; the search's own lines for {victim}: "
            + " | ".join(ln[:45] for ln in search.events() if victim in ln)
        )

        assert rc == 0, output[-3000:]
        assert lines_at_kill == 1, "epoch 2 was already reported when the kill landed: not mid-epoch"
        assert "== search finished" in output and "0 failed" in output, output[-3000:]
        # Retried from its checkpoint: the epochs continue 1, 2, 3 (not 1, 1, 2, 3); the new worker
        # ran epochs 2 and 3 and Tune counts iterations since the restore from 1 again.
        assert [r["epoch"] for r in killed] == [1, 2, 3]
        assert [r["training_iteration"] for r in killed] == [1, 2, 3]
        assert [r["iterations_since_restore"] for r in killed] == [1, 1, 2]
        assert killed[0]["pid"] == pid and all(r["pid"] != pid for r in killed[1:])
        for trial_id, trial_results in results.items():
            assert [r["epoch"] for r in trial_results] == [1, 2, 3], trial_id
        study = _study(tmp_path, name)
        assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.COMPLETE] * samples
        assert len(summary["parents"]) == 1 and len(summary["children"]) == samples
        assert summary["duplicate_runs"] == 0 and summary["duplicate_trial_ids"] == 0
        assert summary["not_ended"] == [], "a run was left RUNNING"
        assert {c["status"] for c in summary["children"]} == {"FINISHED"}
        assert {c["tags"]["state"] for c in summary["children"]} == {"COMPLETED"}
        assert summary["steps"][victim] == [1, 2, 3], "one val_pass_at_1 per epoch step for the killed trial"
        assert summary["duplicate_steps"] == 0 and summary["incomplete"] == []


# -- 2. a trial that raises on every attempt -----------------------------------------------------

FAULT_SEED = 0  # TPE's random start-up with this seed draws num_virtual_tokens 4 and 8 among 3 trials


def test_trial_that_raises_ends_failed_and_the_search_still_finishes(tiny_model_dir, tmp_path, fault_table):
    fault = "num_virtual_tokens=8@2"
    row = fault_table.row("trial raises at epoch 2 (every attempt)", f"{FAULT_ENV}={fault}")
    with verdict(row):
        name, samples, epochs = "raising", 3, 2
        space = write_fault_space(tmp_path, samples=samples, epochs=epochs, tokens=(4, 8), seed=FAULT_SEED, slow=False)
        with SearchProcess(tmp_path, space, tiny_model_dir, name, env={FAULT_ENV: fault}) as search:
            rc = search.wait(300)
            output = search.output()
        row["searches completed"] = f"{int(_completed(search, rc))}/1"
        row["longest driver gap"] = f"{_event_gap(output):.1f} s"
        experiment = tmp_path / "runs" / name
        dirs = trial_dirs(experiment)
        tokens = {tid: json.loads((d / "params.json").read_text())["num_virtual_tokens"] for tid, d in dirs.items()}
        faulty = sorted(t for t, n in tokens.items() if n == 8)
        healthy = sorted(t for t, n in tokens.items() if n != 8)
        # Tune appends one "Failure # N" block (the worker's traceback) per failed attempt.
        errors = {t: (dirs[t] / "error.txt").read_text() if (dirs[t] / "error.txt").exists() else "" for t in faulty}
        attempts = {t: len(re.findall(r"^Failure # \d+", text, re.M)) for t, text in errors.items()}
        raised = {t: text.count("\nRuntimeError: injected fault") for t, text in errors.items()}
        row["faults injected"] = f"{sum(attempts.values())} raises in {len(faulty)} trial(s)"
        db = tmp_path / "runs" / "mlflow.db"
        summary = mlflow_summary(db)
        _record_mlflow(row, summary, samples)
        by_trial = {c["tags"]["ray_trial_id"]: c for c in summary["children"]}
        print(
            f"\n[raise] exit {rc}; num_virtual_tokens per trial {tokens}; tracebacks "
            f"in error.txt: failures {attempts}, of them the injected RuntimeError {raised}"
        )
        print(
            f"[raise] result.json lines of the failed trial(s): "
            f"{ {t: len(read_results(dirs[t])) for t in faulty} } (Tune's progress.csv rows: "
            f"{ {t: max(0, len((dirs[t] / 'progress.csv').read_text().splitlines()) - 1) for t in faulty} })"
        )
        for line in output.splitlines():
            if " FAILED" in line or line.startswith("== search finished"):
                print(f"[raise] console: {line[:200]}")

        assert faulty and healthy, f"seed {FAULT_SEED} no longer draws both 4 and 8: {tokens}; pick another seed"
        assert rc == 0, output[-3000:]
        assert f"{len(faulty)} failed)" in output and "== search finished" in output, output[-3000:]
        for t in faulty:
            assert attempts[t] == raised[t] == 1 + MAX_TRIAL_FAILURES, (
                f"trial {t}: {attempts[t]} failure(s), {raised[t]} injected, not 1 + max_failures"
            )
            # Each attempt raised before epoch 2: epoch 1 was reported once, by the first attempt.
            # (Not read from result.json: when a trial is restored within ~1 s of a result, Tune
            # copies the storage's not-yet-synced result.json over its staging copy; see the print.)
            assert re.findall(rf"trial {t} epoch (\d+)/", output) == ["1"]
            console = [ln for ln in output.splitlines() if f"trial {t} FAILED" in ln]
            assert console and "injected fault" in console[0], f"no FAILED line with the reason for {t}"
            run = by_trial[t]
            assert run["status"] == "FAILED" and run["tags"]["state"] == "FAILED"
            assert "injected fault" in run["tags"].get("error", ""), run["tags"].get("error")
            assert run["tags"]["stopped_at_epoch"] == "1" and summary["steps"][t] == [1]
        for t in healthy:
            assert [r["epoch"] for r in read_results(dirs[t])] == [1, 2]
            assert by_trial[t]["status"] == "FINISHED" and by_trial[t]["tags"]["state"] == "COMPLETED"
        states = sorted(t.state.name for t in _study(tmp_path, name).get_trials(deepcopy=False))
        assert states == sorted(["FAIL"] * len(faulty) + ["COMPLETE"] * len(healthy))
        assert len(summary["parents"]) == 1 and len(summary["children"]) == samples
        assert summary["parents"][0]["status"] == "FINISHED"
        assert summary["duplicate_runs"] == 0 and summary["not_ended"] == []
        assert summary["duplicate_steps"] == 0 and summary["incomplete"] == []


# -- 3. MLflow goes down mid-search and comes back -------------------------------------------------

OUTAGE_S = 20  # at most this long down (restarted earlier once the driver shows progress)
PROGRESS_EVENTS = 3  # trial events the driver must print while MLflow is down


def _check_mlflow_complete(problems: list, summary: dict, samples: int, epochs: int | None) -> None:
    """Everything a finished search must leave in MLflow: 1 parent, one ended child per trial with
    one val_pass_at_1 per epoch step, and the final report's metrics on the parent."""
    check = lambda ok, msg: ok or problems.append(msg)  # noqa: E731 - a one-line helper, named for reading
    check(
        len(summary["parents"]) == 1 and len(summary["children"]) == samples,
        f"MLflow holds {len(summary['parents'])} parent(s) and {len(summary['children'])} child run(s), "
        f"expected 1 and {samples}",
    )
    check(
        summary["duplicate_runs"] == 0 and summary["duplicate_trial_ids"] == 0,
        f"duplicate MLflow runs: {summary['duplicate_runs']} by search key, "
        f"{summary['duplicate_trial_ids']} by Ray trial id",
    )
    check(summary["not_ended"] == [], f"runs not ended (RUNNING): {summary['not_ended']}")
    check(
        {c["tags"].get("state") for c in summary["children"]} <= {"COMPLETED", "PRUNED"},
        f"child states {sorted({str(c['tags'].get('state')) for c in summary['children']})}",
    )
    check(summary["duplicate_steps"] == 0, f"two values at one epoch step: {summary['steps']}")
    check(summary["incomplete"] == [], f"missing epoch steps (trial, stopped_at_epoch, steps): {summary['incomplete']}")
    if epochs is not None:
        check(
            all(steps == list(range(1, epochs + 1)) for steps in summary["steps"].values()),
            f"val_pass_at_1 steps {summary['steps']}, expected 1..{epochs} for every trial",
        )
    missing = {"test_pass_at_1_best", "test_pass_at_1_baseline", "lift"} - set(summary["parent_metric_keys"])
    check(not missing, f"parent run lacks the final report's metrics {sorted(missing)}")


@pytest.mark.parametrize("client", CLIENTS, ids=list(CLIENTS))
def test_mlflow_outage_and_recovery_loses_nothing(tiny_model_dir, tmp_path, fault_table, client):
    row = fault_table.row(f"MLflow down mid-search, back ({client})", "1 outage")
    with verdict(row):
        # 4 epochs (not 2) so that the search outlives the outage plus a server restart (~5-10 s on
        # 2 busy cores) even when the driver is not held up: the backlog must be sent by a later
        # write, not left for --resume.
        name, samples, epochs = "outage", 4, 4
        space = write_fault_space(tmp_path, samples=samples, epochs=epochs, tokens=(4, 8))
        server = MlflowServer(tmp_path / "mlflow-server")
        server.start()
        problems: list[str] = []
        try:
            with SearchProcess(
                tmp_path, space, tiny_model_dir, name, "--mlflow-uri", server.url, env=CLIENTS[client]
            ) as search:
                wait_until(
                    lambda: any(all_results(tmp_path / "runs" / name).values()), 240, "first trial result", search
                )
                before = len(search.events())
                down_at = time.monotonic()
                server.stop()
                assert server.port_closed()
                try:
                    wait_until(
                        lambda: len(search.events()) >= before + PROGRESS_EVENTS,
                        OUTAGE_S,
                        "progress while MLflow is down",
                        search,
                    )
                except AssertionError:
                    pass
                during = len(search.events()) - before
                ended_during_outage = not search.alive()
                restart_s = server.start()
                outage = time.monotonic() - down_at
                row["faults injected"] = f"1 outage ({outage:.0f} s)"
                rc = search.wait(300)
                output = search.output()
            row["searches completed"] = f"{int(_completed(search, rc))}/1"
            gap = _event_gap(output)
            row["longest driver gap"] = f"{gap:.1f} s"
            summary = mlflow_summary(server.db)
            _record_mlflow(row, summary, samples)
            queued = backlog_ops(tmp_path / "runs" / name)
            print(
                f"\n[outage/{client}] MLflow down {outage:.1f} s (restart took {restart_s:.1f} s); "
                f"{during} trial event(s) printed while down; longest gap between console lines "
                f"{gap:.1f} s; urllib3 retries logged: {output.count('Retrying (Retry(')}; exit {rc}; "
                f"ops still queued {len(queued)}; steps {summary['steps']}"
            )

            assert not ended_during_outage, "the search ended before the server came back: lengthen it"
            if during < PROGRESS_EVENTS:
                problems.append(
                    f"driver stalled while MLflow was down: {during} trial event(s) printed in "
                    f"{OUTAGE_S} s, longest gap between console lines {gap:.1f} s (MlflowClient's "
                    f"HTTP retries block the Tune callbacks)"
                )
            assert rc == 0, output[-3000:]
            assert "== search finished" in output and "0 failed" in output, output[-3000:]
            if WARNING in output or queued:
                problems.append(f"{len(queued)} operation(s) left queued although MLflow came back")
            _check_mlflow_complete(problems, summary, samples, epochs)
            assert not problems, "; ".join(problems)
        finally:
            server.stop()


# -- 4. MLflow goes down and stays down until --resume -----------------------------------------------

# The trials left after the outage need ~10-20 s with MLflow up on an idle 2-core machine, 40-60 s
# on a busy one (load 3-5, measured), then the report and Ray's shutdown; a driver stalled by
# MLflow's retries needs minutes per trial event.
FINISH_WITHOUT_MLFLOW_S = 120


@pytest.mark.parametrize("client", CLIENTS, ids=list(CLIENTS))
def test_mlflow_down_until_resume_sends_the_backlog(tiny_model_dir, tmp_path, fault_table, client):
    row = fault_table.row(f"MLflow down to the end, --resume ({client})", "1 outage")
    with verdict(row):
        name, samples, epochs = "nomlflow", 4, 2
        space = write_fault_space(tmp_path, samples=samples, epochs=epochs, tokens=(4, 8))
        state_dir = tmp_path / "runs" / name
        server = MlflowServer(tmp_path / "mlflow-server")
        server.start()
        problems: list[str] = []
        try:
            with SearchProcess(
                tmp_path,
                space,
                tiny_model_dir,
                name,
                "--mlflow-uri",
                server.url,
                env=CLIENTS[client],
                label=f"{name}-first",
            ) as search:
                wait_until(lambda: any(all_results(state_dir).values()), 240, "first trial result", search)
                down_at = time.monotonic()
                server.stop()
                rc, silence = wait_watching(search, FINISH_WITHOUT_MLFLOW_S)
                waited = time.monotonic() - down_at
                row["faults injected"] = f"1 outage (>= {waited:.0f} s, to the end)"
                output = search.output()
                if rc is None:  # still running: end it like a user would end a hung driver (kill)
                    problems.append(
                        f"search did not finish within {FINISH_WITHOUT_MLFLOW_S} s with MLflow down "
                        f"(no trial event printed for the last {silence:.0f} s, "
                        f"{output.count('Retrying (Retry(')} urllib3 retries logged, backlog "
                        f"{len(backlog_ops(state_dir))} op(s)); killed it"
                    )
                    search.kill_session()
            completed = int(_completed(search, rc))
            gap = max(_event_gap(output), silence)
            queued = backlog_ops(state_dir)
            warning = [ln for ln in output.splitlines() if ln.startswith(WARNING)]
            print(
                f"\n[down/{client}] first run: exit {rc} after {waited:.0f} s without MLflow; longest gap between "
                f"console lines {gap:.1f} s; {len(queued)} op(s) queued ({sorted({op[0] for op in queued})}); "
                f"warning line: {warning}"
            )
            if rc is not None:
                assert rc == 0, output[-3000:]
                assert "== search finished" in output, output[-3000:]
                assert warning, f"no {WARNING!r} line:\n{output[-3000:]}"
                assert str(state_dir / "mlflow_backlog.jsonl") in warning[0], warning[0]
                assert f"--resume --name {name}" in warning[0], warning[0]
                assert queued, "a warning, but nothing queued"

            server.start()
            with SearchProcess(
                tmp_path,
                space,
                tiny_model_dir,
                name,
                "--resume",
                "--mlflow-uri",
                server.url,
                env=CLIENTS[client],
                label=f"{name}-resume",
            ) as resume:
                rc2 = resume.wait(300)
                resumed = resume.output()
            completed += int(_completed(resume, rc2))
            row["searches completed"] = f"{completed}/2"
            row["longest driver gap"] = f"{max(gap, _event_gap(resumed)):.1f} s"
            summary = mlflow_summary(server.db)
            _record_mlflow(row, summary, samples)
            print(
                f"[down/{client}] --resume: exit {rc2}; ops still queued {len(backlog_ops(state_dir))}; "
                f"{len(summary['parents'])} parent, {len(summary['children'])} children; steps {summary['steps']}; "
                f"parent metric rows duplicated at step 0: {summary['parent_duplicate_rows']} "
                f"(with differing values: {summary['parent_conflicting_keys']})"
            )

            assert rc2 == 0, resumed[-3000:]
            # A first run that finished (report included, queued): the resume changes nothing but
            # sends the backlog, and says the search was already finished.
            done = f"search {name} already finished" if rc == 0 else "== search finished"
            assert done in resumed and WARNING not in resumed, resumed[-3000:]
            if rc == 0:
                assert "final report: scoring" not in resumed, "the report ran twice"
            if backlog_ops(state_dir):
                problems.append("--resume left operations queued")
            _check_mlflow_complete(problems, summary, samples, None)
            assert not problems, "; ".join(problems)
        finally:
            server.stop()
