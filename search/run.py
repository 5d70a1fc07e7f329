"""Run a soft-prompt search: Ray Tune trials, Optuna TPE, ASHA, MLflow, a final test report.

    python -m search.run --space smoke                       # local Ray, ./runs/, sqlite MLflow
    python -m search.run --space default --address auto      # on a Ray cluster
    python -m search.run --space smoke --name my-search --resume
    python -m search.run --space default --dry-run           # validate and print, start nothing

The same command is the RayJob entrypoint (k8s/rayjob.yaml).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from search.checks import (check_data, check_local_resources, check_mlflow_uri, check_model, check_name,
                           check_sandbox, check_storage, check_warm_starts)
from spaces import load_space
from trainable.cli import OneLineParser, run_main
from trainable.errors import field_error

DEFAULT_STORAGE = "./runs"


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m search.run", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help="a shipped space name (default, smoke) or a YAML path")
    p.add_argument("--model", help="override the space's model: hub id, local dir, or `bundled`")
    p.add_argument("--num-samples", type=int, help="override budget.num_samples")
    p.add_argument("--max-concurrent", type=int, help="override budget.max_concurrent")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Tune storage: a directory or s3://... (default ./runs)")
    p.add_argument("--mlflow-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite under ./runs)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                   help="Ray cluster address (default: $RAY_ADDRESS or a local Ray started in-process)")
    p.add_argument("--name", help="search name (default: SPACE-YYYYmmdd-HHMMSS); needed by --resume")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search --name")
    p.add_argument("--dry-run", action="store_true", help="validate everything, print the configuration, start nothing")
    return p


def _resolve(args) -> dict:
    """Every check that can fail on user input, before Ray starts. Returns the plan."""
    spec = load_space(args.space).with_overrides(model=args.model, num_samples=args.num_samples,
                                                  max_concurrent=args.max_concurrent)
    storage = check_storage(args.storage)
    local_root = Path(storage if "://" not in storage else DEFAULT_STORAGE).resolve()
    if args.resume and not args.name:
        raise field_error("--name", None, "the name of the search to resume (a directory under the storage)")
    name = check_name(args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    experiment_path = f"{storage.rstrip('/')}/{name}"
    if args.resume:
        from search.tuner import can_restore

        if not can_restore(experiment_path):
            raise field_error("--name", name, f"a search to resume (nothing resumable at {experiment_path})")
    mlflow_uri = args.mlflow_uri or f"sqlite:///{local_root / 'mlflow.db'}"
    return {"spec": spec, "storage": storage, "name": name, "experiment_path": experiment_path,
            "state_dir": local_root / name, "mlflow_uri": mlflow_uri,
            "artifact_location": None if args.mlflow_uri else (local_root / "mlartifacts").as_uri(),
            "address": args.address}


def _print_plan(plan: dict) -> None:
    shown = {"search": plan["name"], "space": plan["spec"].to_dict(), "storage": plan["experiment_path"],
             "mlflow_uri": plan["mlflow_uri"], "ray_address": plan["address"] or "local (in-process)"}
    print("resolved configuration:\n" + json.dumps(shown, indent=2, default=str), flush=True)


def _quiet_libraries() -> None:
    """Our console is one line per trial event; Tune's tables and MLflow/Optuna INFO lines go."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's new engine prints tables even at verbose=0
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run ..." per run
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    plan = _resolve(args)
    _print_plan(plan)
    # Checks of the world outside the command line, after the plan is shown.
    if not args.address:  # on a cluster, the nodes that run trials check for themselves
        check_local_resources(plan["spec"].resources.cpu, plan["spec"].resources.gpu)
        check_sandbox()
    check_mlflow_uri(plan["mlflow_uri"])
    check_data(plan["spec"])  # cheap file checks before warm starts (which may convert the bundled model)
    check_warm_starts(plan["spec"], check_model(plan["spec"].model))
    if args.dry_run:
        print("dry run: configuration valid; no trial started")
        return 0
    from search.driver import run_search

    _quiet_libraries()  # after the imports: mlflow sets its own logger level when imported
    return run_search(plan, resume=args.resume)


if __name__ == "__main__":
    run_main(main)
