"""Drive one search after its input is validated: Ray, the Tuner, MLflow, the final report."""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict

import ray

from search.callbacks import mlflow_params, state_of
from search.provenance import provenance
from search.report import FinalReport, best_by_method, copy_adapter, save_plots, score_arms, summary_lines
from search.results import write_run_record
from search.searcher import study_storage_url
from search.targets import NoTargets, prepare_targets
from search.tracking import EXPERIMENT, PARENT, MlflowLedger
from search.tuner import build_tuner, restore_tuner
from spaces import SpaceSpec
from trainable.errors import field_error
from trainable.trial import OBJECTIVE

def _start_ray(address: str | None) -> None:
    # Tune snapshots the experiment every second (default: adaptive, >= 10 s), so that a killed
    # driver's --resume replays little; the snapshot is a few KB per trial.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # log_to_driver=False: trial output stays in Ray's log files; the console gets our lines.
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
             include_dashboard=False if address is None else None)


def _check_cluster_fits(spec: SpaceSpec) -> None:
    total = ray.cluster_resources()
    for key, want in (("cpu", spec.resources.cpu), ("gpu", spec.resources.gpu)):
        have = total.get(key.upper(), 0.0)
        if want > have:
            raise field_error(f"resources.{key}", want, f"at most {have:g} (the {key.upper()}s this Ray cluster has)")


def _model_identity(spec: SpaceSpec) -> dict:
    if spec.model == "bundled":
        from trainable.bundled import bundled_identity

        return bundled_identity()
    return {"name": spec.model}


def _log_parent_start(ledger: MlflowLedger, plan: dict) -> None:
    spec: SpaceSpec = plan["spec"]
    space_file = plan["state_dir"] / "space" / "space.json"
    space_file.parent.mkdir(parents=True, exist_ok=True)
    space_file.write_text(json.dumps(spec.to_dict(), indent=2, default=str))
    identity = {f"model.{k}": v for k, v in _model_identity(spec).items()}
    from trainable.data import SOURCES  # each data source used, with its license (MBPP: CC-BY-4.0)

    licenses = {f"data.{name}.license": SOURCES[name].license for name in sorted(spec.data.sources())}
    ledger.submit("tags", PARENT, {**provenance(), **identity, **licenses, "space": spec.name,
                                   "storage": plan["experiment_path"]})
    budget = {f"budget.{k}": v for k, v in spec.to_dict()["budget"].items()}
    ledger.submit("params", PARENT, {"space": spec.name, "model": spec.model, **budget})
    ledger.submit("artifacts", PARENT, str(space_file.parent), "space")


def _final_report(plan: dict, results, ledger: MlflowLedger, started: float) -> None:
    spec: SpaceSpec = plan["spec"]
    best = results.get_best_result(metric=OBJECTIVE, mode="max", scope="all")
    checkpoint = best.get_best_checkpoint(OBJECTIVE, "max")
    best_metrics = next((m for c, m in best.best_checkpoints if c.path == checkpoint.path), best.metrics)
    with checkpoint.as_directory() as checkpoint_dir:
        test_best, test_base, hard = score_arms(spec, best.config, checkpoint_dir)
        adapter = copy_adapter(checkpoint_dir, plan["state_dir"] / "best_adapter")
    report = FinalReport(best.metrics["trial_id"], spec.trial_params(best.config), float(best_metrics["pass@1"]),
                         int(best_metrics["training_iteration"]), test_best, test_base, hard,
                         best_by_method(results, spec.trial_params))
    params, tags = mlflow_params(report.best_params)  # best.method names the best kind of soft prompt
    ledger.submit("params", PARENT, {f"best.{k}": v for k, v in params.items()})
    ledger.submit("tags", PARENT, {**{f"best.{k}": v for k, v in tags.items()}, "best_trial_id": report.best_trial_id})
    if hard is not None:
        ledger.submit("tags", PARENT, {"hard_prompt.text": hard.chosen.text, "hard_prompt.form": hard.chosen.form})
    ledger.submit("metrics", PARENT, report.metrics(), 0)
    out = plan["state_dir"] / "report"
    out.mkdir(parents=True, exist_ok=True)
    names = {"soft_prompt": "best", "frozen": "baseline", "hard_prompt": "hard_prompt"}
    for arm, samples in report.arms().items():
        (out / f"test_completions_{names[arm]}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    write_run_record(out, plan, report, results, time.time() - started)
    save_plots(plan["name"], study_storage_url(plan["state_dir"]), out / "plots")
    ledger.submit("artifacts", PARENT, str(out), "report")
    ledger.submit("artifacts", PARENT, str(adapter), "best_soft_prompt")
    counts = Counter(state_of(bool(r.error), r.metrics, spec.budget.max_epochs)[0] for r in results)
    counts["total"] = len(results)
    for line in summary_lines(report, counts, time.time() - started, adapter, ledger.parent_url()):
        print(line, flush=True)


def run_search(plan: dict, resume: bool) -> int:
    started = time.time()
    spec: SpaceSpec = plan["spec"]
    plan["state_dir"].mkdir(parents=True, exist_ok=True)
    _start_ray(plan["address"])
    try:
        _check_cluster_fits(spec)
        ledger = MlflowLedger(plan["mlflow_uri"], EXPERIMENT, plan["name"], plan["state_dir"],
                              plan["artifact_location"])
        if not resume:
            _log_parent_start(ledger, plan)
        try:
            targets, distilled = prepare_targets(spec, ledger)
            plan["distill"] = asdict(distilled) if distilled else None  # for report/run_info.json
        except NoTargets as err:
            print(f"error: {err}", flush=True)
            ledger.submit("end", PARENT, "FAILED")
            return 1
        tuner = (restore_tuner(spec, plan["experiment_path"], targets) if resume
                 else build_tuner(spec, plan["storage"], plan["name"], plan["state_dir"], ledger, targets))
        results = tuner.fit()
        if all(r.error for r in results) or len(results) == 0:
            print("no trial finished without error; see the FAILED lines above", flush=True)
            ledger.submit("end", PARENT, "FAILED")
            return 1
        _final_report(plan, results, ledger, started)
        ledger.submit("end", PARENT, "FINISHED")
        waiting = ledger.flush()
        if waiting:
            print(f"warning: MLflow unreachable; {waiting} operation(s) not logged, kept in "
                  f"{plan['state_dir']}/mlflow_backlog.jsonl; `--resume --name {plan['name']}` sends them", flush=True)
        return 0
    finally:
        ray.shutdown()
