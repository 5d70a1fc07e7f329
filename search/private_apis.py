"""Every private attribute of Ray and Optuna that `search/` relies on, and nothing else.

Ray's `OptunaSearch` has no public way to map a Tune trial to its Optuna trial, to hand an
Optuna trial to a resumed Tune trial, or to tell Optuna PRUNED (`search.searcher` needs all
three); Tune's `SearchGenerator` and `Tuner` have no public way to grow a restored budget or to
resume a Tuner built like a new one (`search.tuner`); Ray has no public way to turn token auth
on for a new local cluster once it is imported (`search.driver`). Each such access is one
function here, named for what we use it for.

Read from the versions in READ_FROM (the files are named at each function). On an upgrade of
either package: re-read those files against each function below, then set READ_FROM to the new
versions. tests/test_private_apis.py fails until READ_FROM equals both the installed versions and
the pins in pyproject.toml, and it (with tests/test_searcher.py) exercises every function here on
real objects, so an upgrade that moves one of them fails there before a search does.

Behaviours (not attributes) of the same packages that the code relies on, each with its own test:
Tune's SIGUSR1 graceful stop (search/interrupt.py, tests/test_interrupt.py); the logger names
whose messages the console drops, with the messages' prefixes (search/run.py `_quiet_libraries`,
tests/test_private_apis.py); token auth as k8s/README.md describes it (tests/test_cluster.py,
integration tier).
"""

from __future__ import annotations

import optuna

READ_FROM = {"ray": "2.60.0", "optuna": "5.0.0"}


# -- ray/tune/search/optuna/optuna_search.py: OptunaSearch -----------------------------------------


def optuna_trials(searcher) -> dict[str, optuna.trial.Trial]:
    """Tune trial id -> the Optuna trial asked for it (`_ot_trials`; Ray fills it in `suggest`
    and pickles it in `save`, so a restored searcher knows the trials of its snapshot)."""
    return searcher._ot_trials


def optuna_study(searcher) -> optuna.Study:
    """The study Ray created (or loaded: `load_if_exists=True`) in `_setup_study` (`_ot_study`)."""
    return searcher._ot_study


def told_trials(searcher) -> set[str]:
    """Tune trial ids already told to Optuna (`_completed_trials`): Ray ignores any later result
    or completion for them."""
    return searcher._completed_trials


# -- optuna/trial/_frozen.py, optuna/trial/_trial.py ----------------------------------------------


def reopen_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """A live `Trial` for a stored one, as `Study.ask` builds it: `Trial(study, trial_id)` with the
    storage's id, which FrozenTrial keeps private (`_trial_id`; `number` is not that id)."""
    return optuna.trial.Trial(study, frozen._trial_id)


# -- ray/tune/search/search_generator.py: SearchGenerator.get_state / set_state --------------------


def grow_sample_budget(state: dict, num_samples: int) -> dict:
    """The search generator's saved state with room for `num_samples` trials in all: the keys of
    `get_state` (`total_samples`, `finished`: Tune stops asking for trials when either says so)."""
    if num_samples <= state["total_samples"]:
        return state
    return {**state, "total_samples": num_samples, "finished": False}


# -- ray/tune/tuner.py, ray/tune/impl/tuner_internal.py, ray/tune/tune.py: Tuner(_tuner_kwargs=...) --


def tuner_resume_kwargs(resume_config) -> dict:
    """Keyword arguments for `tune.Tuner(...)`: resume a restored experiment with this
    `ResumeConfig` while this run's callbacks and budget apply (`Tuner.restore` would keep the first
    run's pickled ones). Ray marks `_tuner_kwargs` internal: TunerInternal keeps it and passes it
    to `tune.run(**...)`, which takes `resume_config`."""
    return {"_tuner_kwargs": {"resume_config": resume_config}}


# -- ray/_private/authentication/authentication_token_setup.py, ray/_private/worker.py: init -------


def local_token_auth() -> None:
    """Token auth for a new local cluster, as `ray.init()` turns it on when RAY_AUTH_MODE is unset
    (`enable_token_auth_by_default` -> `_enable_token_auth`: RAY_AUTH_MODE=token for this process
    and its children, Ray's cached config re-read), minus the warning that `ray.init()` logs then.
    With RAY_AUTH_MODE set, `ray.init()` says nothing; but Ray reads it when imported, so setting
    the variable alone after `import ray` would leave the driver out of step with the cluster."""
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()


# -- ray/tune/experiment/trial.py: Trial.handle_error, Trial.should_recover -----------------------


def retry_unless_lasting(lasting, storage_fault) -> None:
    """Tune retries a failed trial up to `FailureConfig.max_failures` times whatever failed, with no
    hook between the error and that decision: `TuneController._process_trial_failure` calls
    `trial.handle_error(exc)`, then `trial.should_recover()`. Both are wrapped (once per process):
    an error for which `lasting(exc)` gives a reason is not retried. The trial keeps the reason as
    `lasting_error`, and `storage_fault(exc)` as `storage_error`, for the callbacks."""
    from ray.tune.experiment import Trial

    if getattr(Trial.handle_error, "classifies_errors", False):
        return
    handle_error, should_recover = Trial.handle_error, Trial.should_recover

    def classified_handle_error(self, exc=None):
        self.lasting_error = lasting(exc) if exc is not None else None
        self.storage_error = storage_fault(exc) if exc is not None else None
        return handle_error(self, exc)

    def classified_should_recover(self):
        return getattr(self, "lasting_error", None) is None and should_recover(self)

    classified_handle_error.classifies_errors = True
    Trial.handle_error, Trial.should_recover = classified_handle_error, classified_should_recover


# -- ray/tune/experiment/trial.py: Trial.storage, Trial.on_checkpoint, Trial.update_last_result ----
# -- ray/train/_internal/session.py: _TrainingResult -----------------------------------------------


def trial_storage(trial):
    """The filesystem and the directory in it where a trial's result.json and checkpoints are
    (`Trial.storage`, a `StorageContext`: `storage_filesystem`, `trial_fs_path`)."""
    return trial.storage.storage_filesystem, trial.storage.trial_fs_path


def record_reported_checkpoint(trial, checkpoint_path: str, result: dict) -> None:
    """Register with a restored trial a checkpoint and result that it reported after Tune's last
    snapshot, as the controller does when a result with a checkpoint arrives (`_process_trial_save`
    -> `Trial.on_checkpoint`, which also moves on the index of the trial's next checkpoint
    directory; `_process_trial_result` -> `Trial.update_last_result`). Tune then restores the trial
    from that checkpoint, its `training_iteration` from `result` (`Trainable.restore`)."""
    from ray.train._internal.session import _TrainingResult
    from ray.tune import Checkpoint

    checkpoint = Checkpoint(checkpoint_path, filesystem=trial.storage.storage_filesystem)
    trial.on_checkpoint(_TrainingResult(checkpoint=checkpoint, metrics=result))
    trial.update_last_result(result)
