"""Drive one search after its input is validated: Ray, the Tuner, MLflow, the final report.

A search ends in one of four states, the same in its record (`search.state`), in MLflow (the
parent's `search_state` tag and run status) and in the exit code:

    finished     every trial ended and the final report is logged      FINISHED   exit 0
    interrupted  SIGINT/SIGTERM: trials stop, state saved, no report   KILLED     exit 130 / 143
                 Ray's local node died, when the driver sees it first   KILLED     exit 1
                 (Ray's core worker often ends the driver itself within ~0.1 s: RUNNING remains)
    failed       no trial succeeded, or the driver itself failed       FAILED     exit 1
                 (a storage that refuses writes: one line, no traceback)

An interrupted (or failed) search goes on with `--resume --name NAME`; the command is printed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, replace

import ray

from search.baselines import one_shot
from search.callbacks import mlflow_params, state_of
from search import mlflow_ops as ops
from search import ray_health, watcher
from search.dtype_choice import search_dtype, with_dtype
from search.faults import storage_fault, unwritable
from search.interrupt import (
    CURRENT,
    TUNE_SIGINT_ENV,
    Phase,
    SearchInterrupted,
    raised_by_signal,
    sigterm_blocked_for_children,
)
from search.plan import SearchPlan
from search.private_apis import local_token_auth
from search.provenance import code, provenance
from search.report import FinalReport, best_by_method, copy_adapter, save_plots, score_arms, summary_lines
from search.results import learning_curves, write_run_record
from search.study import STUDY_FILE, open_study, study_storage_url, with_trials
from search.targets import NoTargets, prepare_targets
from search.state import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    LOCK_FILE,
    RECORD_FILE,
    RUNNING,
    SearchLock,
    SearchRecord,
    identity,
)
from search.tracking import EXPERIMENT, PARENT, MlflowLedger, search_view
from search.engine_service import EngineStartError, start_engines, stop_engines
from search.tuner import build_tuner, can_restore, snapshot_problem
from spaces import SpaceSpec
from softprompt_cli.errors import UsageError, field_error
from trainable.data.splits import problems_for
from trainable.trial import OBJECTIVE


def _start_ray(address: str | None) -> None:
    # Tune snapshots the experiment every second (default: adaptive, >= 10 s), so that a killed
    # driver's --resume replays little; the snapshot is a few KB per trial.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ[TUNE_SIGINT_ENV] = "1"  # SIGINT stays ours during fit() (search.interrupt)
    if address is None and "RAY_AUTH_MODE" not in os.environ:
        local_token_auth()  # what ray.init() would do here, without warning every user that it did
    # log_to_driver=False: trial output stays in Ray's log files; the console gets our lines.
    with sigterm_blocked_for_children():
        ray.init(
            address=address,
            logging_level=logging.WARNING,
            log_to_driver=False,
            include_dashboard=False if address is None else None,
        )
    if address is None:
        ray_health.watch_local_node()


def _check_cluster_fits(spec: SpaceSpec) -> None:
    total = ray.cluster_resources()
    for key, want in (("cpu", spec.resources.cpu), ("gpu", spec.resources.gpu)):
        have = total.get(key.upper(), 0.0)
        if want > have:
            raise field_error(f"resources.{key}", want, f"at most {have:g} (the {key.upper()}s this Ray cluster has)")


def _new_record(plan: SearchPlan) -> SearchRecord:
    spec: SpaceSpec = plan.spec
    return SearchRecord(
        name=plan.name,
        identity=identity(spec),
        num_samples=spec.budget.num_samples,
        max_concurrent=spec.budget.max_concurrent,
        mlflow_uri=plan.mlflow_uri,
        parent_logged=False,
    )


def _open_record(plan: SearchPlan, lock: SearchLock) -> SearchRecord:
    """The record, written before anything else, under the search's lock. A new search's state
    dir is created here, once: a second search of the same name fails on it, never shares it."""
    record = plan.record
    if record is None:
        plan.state_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            plan.state_dir.mkdir()
        except FileExistsError:
            raise field_error("--name", plan.name, f"a new search name ({plan.state_dir} appeared meanwhile)") from None
        record = _new_record(plan)
    lock.acquire()
    if record.study is None and plan.record is None:
        record.study = open_study(plan.state_dir, plan.name, record.search_id)
    record.state, record.interrupted_by = RUNNING, None
    record.num_samples, record.max_concurrent = plan.spec.budget.num_samples, plan.spec.budget.max_concurrent
    record.note_code(code())
    record.save(plan.state_dir)
    return record


def _model_identity(spec: SpaceSpec) -> dict:
    if spec.model == "bundled":
        from trainable.model.bundled import bundled_identity

        return bundled_identity()
    return {"name": spec.model}


def _log_parent_start(ledger: MlflowLedger, plan: SearchPlan, record: SearchRecord, resumed: bool) -> None:
    spec: SpaceSpec = plan.spec
    # The trial budget may grow on --resume: tags (params cannot change in MLflow).
    writes = [
        ops.Tags(
            PARENT,
            {
                "search_state": RUNNING,
                "budget.num_samples": spec.budget.num_samples,
                "budget.max_concurrent": spec.budget.max_concurrent,
                "dtype": record.dtype,
                "dtype_reason": record.dtype_reason,
                ops.DESCRIPTION_TAG: f"search {plan.name} (space {spec.name}, model {spec.model}): running; its "
                "final summary replaces this line when it finishes",
            },
        ),
        ops.View(search_view(record.search_id, sorted(spec.search))),
    ]
    if resumed:
        writes = [ops.Start(PARENT), *writes, ops.Tags(PARENT, {"resume_command": plan.resume_command})]
    else:
        space_file = plan.state_dir / "space" / "space.json"
        space_file.parent.mkdir(parents=True, exist_ok=True)
        space_file.write_text(json.dumps(spec.to_dict(), indent=2, default=str))
        identity_tags = {f"model.{k}": v for k, v in _model_identity(spec).items()}
        budget = {
            f"budget.{k}": v for k, v in spec.to_dict()["budget"].items() if k not in ("num_samples", "max_concurrent")
        }
        from trainable.data.splits import SOURCES  # each data source used, with its license (MBPP: CC-BY-4.0)

        licenses = {f"data.{name}.license": SOURCES[name].license for name in sorted(spec.data.sources())}
        writes += [
            ops.Tags(
                PARENT,
                {**provenance(), **identity_tags, **licenses, "space": spec.name, "storage": plan.experiment_path},
            ),
            ops.Params(PARENT, {"space": spec.name, "model": spec.model, "dtype": record.dtype, **budget}),
            ops.Artifacts(PARENT, str(space_file.parent), "space"),
        ]
    ledger.submit(*writes)


def _best(results):
    best = results.get_best_result(metric=OBJECTIVE, mode="max", scope="all")
    checkpoint = best.get_best_checkpoint(OBJECTIVE, "max")
    metrics = next((m for c, m in best.best_checkpoints if c.path == checkpoint.path), best.metrics)
    return best, checkpoint, metrics


def _compute_report(
    plan: SearchPlan,
    record: SearchRecord,
    results,
    started: float,
    distill: dict | None,
    targets: dict | None,
    engines: list,
) -> tuple[FinalReport, object]:
    """Score the three arms (best soft prompt, frozen model, best hard prompt) on test, write the
    report files. Stoppable at any point: nothing of it is in MLflow yet. `targets`: the training
    targets (the one-shot hard prompt's worked example may be one); `engines`: the search's,
    whose model decodes the arms."""
    spec: SpaceSpec = plan.spec
    best, checkpoint, best_metrics = _best(results)
    print(
        f"final report: scoring trial {best.metrics['trial_id']} (epoch {best_metrics['training_iteration']}) "
        f"and the baselines on {spec.data.test_n} test problems",
        flush=True,
    )
    with checkpoint.as_directory() as checkpoint_dir:
        example = one_shot(problems_for("train", spec.data), targets)
        test_best, test_base, hard, frozen_val = score_arms(spec, best.config, checkpoint_dir, example, engines)
        adapter = copy_adapter(checkpoint_dir, plan.state_dir / "best_adapter")
    report = FinalReport(
        best.metrics["trial_id"],
        spec.trial_params(best.config),
        float(best_metrics["pass@1"]),
        int(best_metrics["training_iteration"]),
        test_best,
        test_base,
        hard,
        best_by_method(results, spec.trial_params),
        frozen_val,
    )
    out = plan.state_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    names = {"soft_prompt": "best", "frozen": "baseline", "hard_prompt": "hard_prompt"}
    for arm, samples in report.arms().items():
        (out / f"test_completions_{names[arm]}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    write_run_record(out, plan, record, report, results, time.time() - started, distill)
    save_plots(plan.name, study_storage_url(plan.state_dir), out / "plots")
    learning_curves(out)  # logged with the report: val pass@1 per epoch, ASHA's stops marked
    return report, adapter


def _commit_report(
    plan: SearchPlan, record: SearchRecord, ledger: MlflowLedger, report: FinalReport, adapter, summary: list[str]
) -> None:
    """The report into MLflow and the record, in one write ahead of sending: a report is logged
    once (a later one, after more trials, at the next step). `summary`, the console's final
    summary, becomes the parent run's description (a code block: its columns stay aligned)."""
    params, tags = mlflow_params(report.best_params)
    best = {**{f"best.{k}": v for k, v in {**params, **tags}.items()}, "best_trial_id": report.best_trial_id}
    if report.hard is not None:
        best.update({"hard_prompt.text": report.hard.chosen.text, "hard_prompt.form": report.hard.chosen.form})
    ledger.submit(
        ops.Tags(PARENT, {**best, "report_round": record.reports}),  # tags: a later round may change them
        ops.Metrics(PARENT, report.metrics(), record.reports),
        ops.Artifacts(PARENT, str(plan.state_dir / "report"), "report"),
        ops.Artifacts(PARENT, str(adapter), "best_soft_prompt"),
        ops.Tags(PARENT, {"search_state": FINISHED, ops.DESCRIPTION_TAG: "```\n" + "\n".join(summary) + "\n```"}),
        ops.End(PARENT, "FINISHED"),
    )
    record.reports += 1
    record.state = FINISHED
    record.study = with_trials(record.study, plan.state_dir)
    record.save(plan.state_dir)


def _drive(plan: SearchPlan, record: SearchRecord, ledger: MlflowLedger, started: float) -> int:
    spec: SpaceSpec = plan.spec
    resumed = plan.record is not None
    with CURRENT.during(Phase.DEFER):
        _start_ray(plan.address)
        ray_health.start_watchdog(lambda what: _ray_died(plan, record, ledger, what))
        _check_cluster_fits(spec)
        plan = _resolve_dtype(plan, record)
        spec = plan.spec
        ledger.connect()
        if resumed and ledger.queued():
            waiting = ledger.flush()  # what an earlier run could not send
            print(
                f"MLflow: sent the operations an earlier run queued{f'; {waiting} still wait' if waiting else ''}",
                flush=True,
            )
        _log_parent_start(ledger, plan, record, resumed=record.parent_logged)
        record.parent_logged = True
        record.save(plan.state_dir)
        CURRENT.check()
    with CURRENT.during(Phase.RAISE):  # loading the model once per device: nothing to save if stopped
        try:
            engines = start_engines(spec)
        except EngineStartError as err:  # fails alike on every try: said once, before any trial
            print(f"error: {err}", flush=True)
            _end(plan, record, ledger, FAILED, {"error": str(err)[:500]}, "the model could not be loaded")
            return 1
    try:  # the engines serve the distillation, the trials and the report, then stop
        with CURRENT.during(Phase.RAISE):  # distillation (or its cache): nothing to save if stopped
            try:
                targets, distilled = prepare_targets(spec, ledger, engines)
            except NoTargets as err:
                print(f"error: {err}", flush=True)
                _end(plan, record, ledger, FAILED, {"error": str(err)[:500]}, "no training targets")
                return 1
        distill = asdict(distilled) if distilled else None  # for report/run_info.json
        with CURRENT.during(Phase.DEFER):
            tuner, watch = build_tuner(
                spec,
                plan.storage,
                plan.name,
                plan.state_dir,
                ledger,
                targets,
                resume=resumed and _tune_can_resume(plan),
                engines=engines,
            )
        with CURRENT.during(Phase.TUNE):
            CURRENT.check()
            results = tuner.fit()
        if CURRENT.requested or watch.unfinished:  # Tune stopped early: partial results are no result
            raise SearchInterrupted(CURRENT.signum or signal.SIGUSR1)
        if all(r.error for r in results) or len(results) == 0:
            print(
                "no trial finished without error; see the FAILED lines above\n"
                f"after fixing the cause: {plan.resume_command}",
                flush=True,
            )
            _end(plan, record, ledger, FAILED, {"error": "no trial finished without error"}, "no trial succeeded")
            return 1
        with CURRENT.during(Phase.RAISE):
            report, adapter = _compute_report(plan, record, results, started, distill, targets, engines)
    finally:
        for line in stop_engines(engines):
            print(line, flush=True)
    counts = Counter(state_of(bool(r.error), r.metrics, spec.budget.max_epochs)[0] for r in results)
    counts["total"] = len(results)
    summary = summary_lines(
        report, counts, time.time() - started, adapter, ledger.parent_url(), ledger.ui_link(plan.default_mlflow)
    )
    with CURRENT.during(Phase.DEFER):
        _commit_report(plan, record, ledger, report, adapter, summary)
    for line in summary:
        print(line, flush=True)
    _warn_if_queued(plan, ledger)
    return 0


def _resolve_dtype(plan: SearchPlan, record: SearchRecord) -> SearchPlan:
    """The plan with the search's one dtype in its space, recorded before any trial starts."""
    record.dtype, record.dtype_reason = search_dtype(plan.spec, record)
    record.save(plan.state_dir)
    print(f"dtype {record.dtype} for every trial and the report ({record.dtype_reason})", flush=True)
    return replace(plan, spec=with_dtype(plan.spec, record.dtype))


def _tune_can_resume(plan: SearchPlan) -> bool:
    """Whether Tune resumes its saved experiment. Else (interrupted before Tune saved anything,
    or killed while it copied its snapshot) Tune starts afresh, and the searcher hands the
    study's trials out again: running ones start over, finished ones rerun for the report."""
    if not can_restore(plan.experiment_path):
        return False
    problem = snapshot_problem(plan.experiment_path)
    if problem is not None:
        print(
            f"warning: Tune's snapshot cannot be resumed: {problem}. Tune starts afresh from the "
            "Optuna study: unfinished trials start over, finished ones run again for the report "
            "(the study keeps their results)",
            flush=True,
        )
    return problem is None


def _end(
    plan: SearchPlan,
    record: SearchRecord | None,
    ledger: MlflowLedger | None,
    state: str,
    tags: dict,
    reason: str,
    quiet: bool = False,
) -> None:
    """Record `state` (interrupted or failed): the record first, then MLflow, where every run of
    this search still RUNNING becomes KILLED (with the reason) and the parent says `state`."""
    if record is None:
        return
    record.state, record.interrupted_by = state, reason if state == INTERRUPTED else None
    record.study = with_trials(record.study, plan.state_dir)
    try:
        record.save(plan.state_dir)
    except OSError as exc:
        if not quiet:  # (`quiet`: the caller's line says that the storage refuses writes)
            print(f"warning: cannot write {plan.state_dir}/search.json ({exc.strerror or exc})", flush=True)
    if ledger is not None and record.parent_logged:  # else MLflow has no run of it yet
        described = {ops.DESCRIPTION_TAG: ended_description(plan, state, reason, tags.get("error"))}
        ledger.submit(
            ops.Interrupted(reason),
            ops.Tags(PARENT, {"search_state": state, **tags, **described}),
            ops.End(PARENT, "KILLED" if state == INTERRUPTED else "FAILED"),
        )


def ended_description(plan: SearchPlan, state: str, reason: str, error: str | None) -> str:
    """The parent run's description once the search stopped short of its final report: how it
    ended and the way on (it said "running" until now)."""
    why = f"{reason}: {error}" if error and error != reason else reason
    return f"search {plan.name}: {state} ({why[:300]}); finished trials are kept. Go on with: {plan.resume_command}"


def _warn_if_queued(plan: SearchPlan, ledger: MlflowLedger, send: bool = True) -> None:
    waiting = ledger.flush() if send else ledger.queued()
    if waiting:
        print(
            f"warning: MLflow unreachable; {waiting} operation(s) not logged, kept in "
            f"{plan.state_dir}/mlflow_backlog.jsonl; `--resume --name {plan.name}` sends them",
            flush=True,
        )


def _ledger(plan: SearchPlan, record: SearchRecord) -> MlflowLedger:
    """The search's MLflow writes (its runs found by the record's search id)."""
    return MlflowLedger(
        plan.mlflow_uri, EXPERIMENT, plan.name, record.search_id, plan.state_dir, plan.artifact_location
    )


_SAID = threading.Lock()  # the interruption is recorded and said once per process


def _interrupted(plan: SearchPlan, record, ledger, why: str, exit_code: int) -> int:
    """`why`: the signal's name, or what happened to Ray. Once per process: the watchdog thread
    and the main thread may both find Ray gone."""
    if not _SAID.acquire(blocking=False):
        return exit_code
    with CURRENT.during(Phase.CLEANUP):
        print(
            f"== search {plan.name} interrupted by {why}: state saved, no final report "
            f"(unfinished trials and the report run on resume)\nresume with: {plan.resume_command}",
            flush=True,
        )
        _end(plan, record, ledger, INTERRUPTED, {}, why)
        if ledger is not None:
            _warn_if_queued(plan, ledger, send=False)
    return exit_code


def record_driver_death(plan: SearchPlan, record: SearchRecord, pid: int) -> None:
    """From the watcher (search.watcher), once the driver `pid` died without ending normally.
    With the search still running: what `_interrupted` would have done, said on the driver's
    console. Already recorded (the driver's watchdog saw Ray go and left MLflow to this): every
    run still RUNNING becomes KILLED, quietly."""
    ledger = _ledger(plan, record)
    if record.state == RUNNING:
        why = f"the driver's death (pid {pid}: killed, or ended by Ray when its local node died)"
        _interrupted(plan, record, ledger, why, 1)
    else:
        ledger.submit(ops.Interrupted(record.interrupted_by or "the driver's death"))


def _ray_died(plan: SearchPlan, record: SearchRecord, ledger: MlflowLedger, what: str) -> None:
    """From the watchdog thread: Ray's local node is gone, and Ray's core worker may end this
    process any moment. Record the search as interrupted (resumable), say so, and exit 1."""
    if CURRENT.phase is Phase.CLEANUP:  # the driver is already saving the search state
        return
    CURRENT.phase = Phase.CLEANUP
    # The record and the line now; MLflow is left to the watcher once this process is gone
    # (from this thread its writes would race the main thread's on the same runs).
    code = _interrupted(plan, record, None, what, 1)
    ray_health.kill_local_node(spare=watcher.WATCHER_PID)
    os._exit(code)


def _failed(plan: SearchPlan, record, ledger, exc: Exception) -> bool:
    """Record the driver's failure; True if it was the storage refusing writes (said in one line,
    no traceback), False if the caller raises it."""
    fault = storage_fault(exc) or (unwritable(plan.state_dir) if plan.state_dir.is_dir() else None)
    first = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
    _end(plan, record, ledger, FAILED, {"error": fault or first}, "driver failed", quiet=fault is not None)
    if fault is None:
        print(f"the search failed; after fixing the cause: {plan.resume_command}", flush=True)
        return False
    kind, detail = fault.split(": ", 1)
    fix = "free some space" if kind == "disk full" else "make it writable"
    print(f"error: {kind} ({detail}); {fix}, then: {plan.resume_command}", flush=True)
    return True


def run_search(plan: SearchPlan) -> int:
    started = time.time()
    lock, record, ledger, watching = SearchLock(plan.state_dir), None, None, None
    try:
        with CURRENT.during(Phase.DEFER):
            record = _open_record(plan, lock)
            ledger = _ledger(plan, record)
            watching = watcher.start(plan)  # records the search if this process dies unsaved
        return _drive(plan, record, ledger, started)
    except SearchInterrupted as stop:
        return _interrupted(plan, record, ledger, str(stop), stop.exit_code)
    except UsageError:
        # Bad input found late (the search's lock, the cluster's size): a new search that wrote
        # only its record leaves nothing behind, so the same command works once fixed.
        if plan.record is None and record is not None:
            _forget_new_search(plan.state_dir)
        raise
    except Exception as exc:
        stop = raised_by_signal(exc)
        if stop is not None:
            return _interrupted(plan, record, ledger, str(stop), stop.exit_code)
        died = ray_health.died(exc)
        if died is not None:
            return _interrupted(plan, record, ledger, died, 1)
        with CURRENT.during(Phase.CLEANUP):
            if not _failed(plan, record, ledger, exc):
                raise
        return 1
    finally:
        with CURRENT.during(Phase.CLEANUP):
            ray_health.stop_watchdog()
            ray.shutdown()
            if watching is not None:
                watcher.stop(watching)
            lock.release()


def _forget_new_search(state_dir) -> None:
    if {p.name for p in state_dir.iterdir()} <= {RECORD_FILE, LOCK_FILE, STUDY_FILE}:
        for name in (RECORD_FILE, LOCK_FILE, STUDY_FILE):
            (state_dir / name).unlink(missing_ok=True)
        state_dir.rmdir()


def already_finished(plan: SearchPlan) -> int:
    """--resume of a finished search without more trials: change nothing (but send what MLflow
    has not taken yet)."""
    record: SearchRecord = plan.record
    lock = SearchLock(plan.state_dir)
    lock.acquire()
    try:
        ledger = _ledger(plan, record)
        waiting = ledger.flush() if ledger.queued() else 0
    finally:
        lock.release()
    print(
        f"search {plan.name} already finished ({record.num_samples} trials, final report logged); "
        f"nothing to do. Best soft prompt: {plan.state_dir / 'best_adapter'}. To add trials: "
        f"{plan.resume_command} --num-samples N (N > {record.num_samples})",
        flush=True,
    )
    if waiting:
        print(f"warning: MLflow unreachable; {waiting} operation(s) still queued", flush=True)
    return 0
