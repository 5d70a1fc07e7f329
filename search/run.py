"""Run a soft-prompt search: Ray Tune trials, Optuna TPE, ASHA, MLflow, a final test report.

    python -m search.run --space smoke                       # local Ray, ./runs/, sqlite MLflow
    python -m search.run --space default --address auto      # on a Ray cluster
    python -m search.run --space smoke --name my-search --resume
    python -m search.run --space default --dry-run           # validate and print, start nothing

The same command is the RayJob entrypoint (k8s/rayjob.yaml).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from search.checks import (
    check_data,
    check_fits_model,
    check_local_resources,
    check_mlflow_uri,
    check_model,
    check_name,
    check_sandbox,
    check_storage,
    check_warm_starts,
    check_writable_dir,
    sqlite_path,
)
from search.faults import is_storage_message, storage_fault
from search.interrupt import CURRENT, SearchInterrupted
from search.plan import SearchPlan
from search.state import FINISHED, RECORD_FILE, SearchLock, SearchRecord, check_resumable
from spaces import SHIPPED_SPACES, load_space
from softprompt_cli.commands import OneLineParser, run_main
from softprompt_cli.errors import UsageError, field_error
from softprompt_cli.stores import artifacts_beside
from trainable.model.loading import resolve_model_ref

DEFAULT_STORAGE = "./runs"
# Options that a resume command repeats when they were given (--name and --resume are added).
_RESUME_OPTIONS = ("space", "model", "num_samples", "max_concurrent", "storage", "mlflow_uri", "address")


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m search.run", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help=f"a shipped space name ({', '.join(SHIPPED_SPACES)}) or a YAML path")
    p.add_argument("--model", help="override the space's model: hub id, local dir, or `bundled`")
    p.add_argument("--num-samples", type=int, help="override budget.num_samples")
    p.add_argument("--max-concurrent", type=int, help="override budget.max_concurrent")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Tune storage: a directory or s3://... (default ./runs)")
    p.add_argument(
        "--mlflow-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under ./runs)",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster address (default: $RAY_ADDRESS or a local Ray started in-process)",
    )
    p.add_argument("--name", help="search name (default: SPACE-YYYYmmdd-HHMMSS); needed by --resume")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search --name")
    p.add_argument("--dry-run", action="store_true", help="validate everything, print the configuration, start nothing")
    return p


def _resolve(args) -> SearchPlan:
    """Every check that can fail on user input, before Ray starts. Returns the plan."""
    spec = load_space(args.space).with_overrides(
        model=args.model, num_samples=args.num_samples, max_concurrent=args.max_concurrent
    )
    spec = _absolute_model(spec)
    storage = check_storage(args.storage)
    local_root = Path(storage if "://" not in storage else DEFAULT_STORAGE).resolve()
    if "://" in storage:  # the driver's own state stays local
        check_writable_dir("--storage", args.storage, next(p for p in [local_root, *local_root.parents] if p.exists()))
    if args.resume and not args.name:
        raise field_error("--name", None, "the name of the search to resume (a directory under the storage)")
    name = check_name(args.name or _default_name(spec.name, local_root))
    mlflow_uri = args.mlflow_uri or f"sqlite:///{local_root / 'mlflow.db'}"
    plan = SearchPlan(
        spec=spec,
        storage=storage,
        name=name,
        experiment_path=f"{storage.rstrip('/')}/{name}",
        state_dir=local_root / name,
        mlflow_uri=mlflow_uri,
        default_mlflow=not args.mlflow_uri,
        artifact_location=_artifact_location(mlflow_uri),
        address=args.address,
        resume_command=resume_command(args, name),
    )
    if args.resume:
        plan = replace(plan, record=_resumable(plan))
    elif plan.state_dir.exists() and not (plan.state_dir / RECORD_FILE).exists():
        raise _no_record(plan)
    elif plan.state_dir.exists() or ("://" in storage and _can_restore(plan.experiment_path)):
        raise _name_taken(name, f"{plan.state_dir if plan.state_dir.exists() else plan.experiment_path} holds a search")
    return plan


def _absolute_model(spec):
    """A local model path as an absolute one: trials run in other working directories, and the
    search's identity must not depend on how the path was spelled."""
    model = resolve_model_ref(spec.model)
    return spec.with_overrides(model=model.location) if model.kind == "local" else spec


def _default_name(space_name: str, local_root: Path) -> str:
    name = f"{space_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while (local_root / (name if suffix == 1 else f"{name}-{suffix}")).exists():
        suffix += 1
    return name if suffix == 1 else f"{name}-{suffix}"


def _artifact_location(mlflow_uri: str) -> str | None:
    """Artifacts of a sqlite store live beside the database (MLflow's default is ./mlruns of
    whatever directory the driver runs in); a server or database store decides for itself."""
    db = sqlite_path(mlflow_uri)
    return artifacts_beside(db).as_uri() if db is not None else None


def _can_restore(experiment_path: str) -> bool:
    from search.tuner import can_restore

    return can_restore(experiment_path)


def _name_taken(name: str, where: str):
    return field_error(
        "--name", name, f"a new search name ({where}; add --resume to continue it, or choose another --name)"
    )


def _resumable(plan: SearchPlan) -> SearchRecord:
    """The record of the search --resume names, if this run may continue it."""
    SearchLock(plan.state_dir).wait_for_watcher()  # a dead driver's watcher may be recording it
    record = SearchRecord.load(plan.state_dir)
    if record is None:
        if plan.state_dir.exists() or _can_restore(plan.experiment_path):
            raise _no_record(plan)
        raise field_error("--name", plan.name, f"a search to resume (nothing resumable at {plan.experiment_path})")
    if SearchLock(plan.state_dir).held_elsewhere():
        raise field_error(
            "--name", plan.name, f"a search that is not running now (another driver holds {plan.state_dir}/search.lock)"
        )
    check_resumable(record, plan.spec, plan.mlflow_uri)
    from search.study import STUDY_FILE, study_problem  # (optuna: only a resume needs it here)

    problem = study_problem(plan.state_dir, record.study) if record.study is not None else None
    if problem is not None:
        # Another study would number its trials from 0 again, onto the finished trials' MLflow runs.
        raise UsageError(
            "--resume",
            None,
            f"the Optuna study search {plan.name!r} was started with ({record.study['trials']} trial(s) or more); "
            f"nothing was changed: put that {STUDY_FILE} back, or start a new search with another --name "
            "(the old one's results and MLflow runs stay as they are)",
            got=f"a search whose study is gone ({problem})",
        )
    return record


def _no_record(plan: SearchPlan) -> UsageError:
    """A search directory without its search.json: it cannot be resumed, and the name stays taken
    (MLflow has its runs), so the way on is another name."""
    return field_error(
        "--name",
        plan.name,
        f"a search with its record {plan.state_dir}/{RECORD_FILE} (it is missing, so this search cannot be "
        "resumed; its results and MLflow runs are kept as they are): start a new search with another --name",
    )


def resume_command(args, name: str) -> str:
    """The exact command that resumes this search: the options given, then --resume --name."""
    parser = _parser()
    out = ["python", "-m", "search.run"]
    for dest in _RESUME_OPTIONS:
        value = getattr(args, dest)
        if value is not None and (dest == "space" or value != parser.get_default(dest)):
            out += ["--" + dest.replace("_", "-"), str(value)]
    return shlex.join(out + ["--resume", "--name", name])


def _print_plan(plan: SearchPlan) -> None:
    """A compact summary (search.plan_summary); the full space goes to MLflow and the state dir."""
    from search.plan_summary import plan_lines

    record = plan.record
    lines = plan_lines(
        plan.spec,
        plan.name,
        plan.experiment_path,
        plan.mlflow_uri,
        plan.address,
        (record.search_id, record.state) if record is not None else None,
    )
    print("\n".join(lines), flush=True)


class _DropMessages(logging.Filter):
    """Drops records whose message starts with one of `prefixes`, and any record whose exception
    is a full or read-only disk (the driver ends with one line for that instead of a traceback per
    writer)."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and storage_fault(record.exc_info[1]):
            return False
        return not (str(record.msg).startswith(self.prefixes) or is_storage_message(record.getMessage()))


def _quiet_libraries() -> None:
    """Our console is one line per trial event; Tune's tables and MLflow/Optuna INFO lines go."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's new engine prints tables even at verbose=0
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run ..." per run
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Tune's own words on an interruption (and its `Tuner.restore(...)` hint) would contradict
    # ours: the driver prints the state and the `--resume` command itself. A failed trial's
    # traceback is in its error.txt; the console gets our one FAILED line.
    for name, prefixes in (
        ("ray.tune.tune", ("Stop signal received", "Experiment has been interrupted", "Trials did not complete")),
        ("ray.tune.execution.tune_controller", ("Trial task failed",)),
        ("ray.train._internal.syncer", ()),  # a traceback per second on a full disk
        ("ray.tune.search.optuna.optuna_search", ()),  # the study's failed writes
        ("ray._private.worker", ()),  # "Unhandled error" of a trial task the storage failed
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(*prefixes))
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    CURRENT.install()  # SIGINT and SIGTERM alike, from here on (search.interrupt)
    try:
        return _main(argv)
    except SearchInterrupted as stop:  # before the search was written: nothing to resume
        print(f"{stop}: stopped before the search started; nothing was written", file=sys.stderr)
        return stop.exit_code


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    plan = _resolve(args)
    _print_plan(plan)
    # Checks of the world outside the command line, after the plan is shown. What this machine
    # lacks (GPUs, cores, the hub, a sandbox) stops a real run here; a dry run of a space meant
    # for a cluster reports it and goes on checking the space itself.
    unfit: list[str] = []
    if not args.address:  # on a cluster, the nodes that run trials check for themselves
        _here(lambda: check_local_resources(plan.spec.resources.cpu, plan.spec.resources.gpu), args.dry_run, unfit)
        from trainable.sandbox.runner import SandboxUnavailable  # (a bad $SOFTPROMPT_SANDBOX stays an error)

        _here(check_sandbox, args.dry_run, unfit, SandboxUnavailable)
    check_mlflow_uri(plan.mlflow_uri, create_dir=plan.default_mlflow)
    check_data(plan.spec)  # cheap file checks before warm starts (which may convert the bundled model)
    model = _model_here(plan.spec.model, args.dry_run, unfit)
    if model is not None:
        check_fits_model(plan.spec, model)
        check_warm_starts(plan.spec, model)
    elif any(plan.spec.warm_starts(method) for method in plan.spec.methods):
        unfit.append("init adapters not checked against the model (it cannot be loaded here)")
    if plan.record is None:
        _check_name_unused_in_mlflow(plan)
    if args.dry_run:
        for reason in unfit:
            print(f"would not run here: {reason}")
        print(
            "dry run: configuration valid; no trial started"
            + (" (this machine could not run it: see above)" if unfit else "")
        )
        return 0
    record = plan.record
    if record is not None and record.state == FINISHED and plan.spec.budget.num_samples == record.num_samples:
        from search.driver import already_finished

        return already_finished(plan)
    from search.driver import run_search

    _quiet_libraries()  # after the imports: mlflow sets its own logger level when imported
    return run_search(plan)


def _here(check, dry_run: bool, unfit: list[str], lacks: type[UsageError] = UsageError):
    """`check()`, a check of this machine: its error (`lacks`) stops a real run; a dry run notes it."""
    try:
        return check()
    except lacks as exc:
        if not dry_run:
            raise
        unfit.append(str(exc))
        return None


def _model_here(ref: str, dry_run: bool, unfit: list[str]):
    """The model checked; a hub model this machine cannot reach is a fact about the machine (a
    dry run notes it), everything else about the model stays an error."""
    if resolve_model_ref(ref).kind != "hub":
        return check_model(ref)
    return _here(lambda: check_model(ref), dry_run, unfit)


def _check_name_unused_in_mlflow(plan: SearchPlan) -> None:
    from search.tracking import search_name_taken

    _quiet_libraries()
    if search_name_taken(plan.mlflow_uri, plan.name):
        raise _name_taken(plan.name, f"MLflow at {plan.mlflow_uri} has runs of a search of that name")


if __name__ == "__main__":
    run_main(main)
