"""Build (or restore) the Ray Tune `Tuner`: Optuna TPE + ASHA + per-trial resources."""
from __future__ import annotations

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from search.callbacks import ConsoleCallback, MlflowCallback
from search.searcher import build_searcher, study_storage_url
from search.tracking import MlflowLedger
from search.trainable import train_soft_prompt
from spaces import SpaceSpec
from trainable.trial import OBJECTIVE

MAX_TRIAL_FAILURES = 2  # a trial killed mid-epoch restarts from its last checkpoint


def trainable_for(spec: SpaceSpec, targets: dict | None = None):
    """`targets`: the distilled training targets (search.targets), shipped to every trial."""
    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    return tune.with_resources(tune.with_parameters(train_soft_prompt, spec=spec, targets=targets), resources)


def build_tuner(spec: SpaceSpec, storage: str, name: str, state_dir, ledger: MlflowLedger,
                targets: dict | None = None) -> tune.Tuner:
    budget = spec.budget
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=budget.max_epochs,
                              grace_period=budget.grace_period, reduction_factor=budget.reduction_factor)
    callbacks = [
        ConsoleCallback(budget.num_samples, budget.max_epochs, spec.trial_params),
        MlflowCallback(ledger, budget.max_epochs, name, study_storage_url(state_dir), spec.trial_params),
    ]
    return tune.Tuner(
        trainable_for(spec, targets),
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE, mode="max", search_alg=build_searcher(spec, state_dir, name),
            scheduler=scheduler, num_samples=budget.num_samples,
            # With a searcher, Tune otherwise runs one trial at a time.
            max_concurrent_trials=budget.max_concurrent, reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_FAILURES),
        ),
    )


def restore_tuner(spec: SpaceSpec, experiment_path: str, targets: dict | None = None) -> tune.Tuner:
    # Errored trials are retried: an interrupted search should finish with every trial terminal.
    return tune.Tuner.restore(experiment_path, trainable=trainable_for(spec, targets),
                              resume_unfinished=True, resume_errored=True)


def can_restore(experiment_path: str) -> bool:
    return tune.Tuner.can_restore(experiment_path)
