"""Build the Ray Tune `Tuner`: Optuna TPE + ASHA + per-trial resources, new or resumed.

A resumed search gets a Tuner built like a new one (this run's callbacks, budget and trainable)
that Tune fills from the experiment's saved state (trials, searcher). On restore Tune also puts
back the saved trial count and concurrency; `BudgetedSearch` then applies this run's, which may
only grow the trials (`search.state.SAFE_TO_CHANGE`).
"""

from __future__ import annotations

import fnmatch
import json
import pickletools
from pathlib import Path

import pyarrow.fs
from ray import tune
from ray.tune import ResumeConfig
from ray.tune.execution.tune_controller import TuneController
from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher

from search import private_apis
from search.callbacks import ConsoleCallback, MlflowCallback
from search.catch_up import CatchUpRestoredTrials, EndingASHA
from search.faults import StorageFault, lasting, storage_fault
from search.interrupt import TuneInterrupt
from search.searcher import build_searcher, study_storage_url
from search.tracking import MlflowLedger
from search.tune_trial import train_soft_prompt
from spaces import SpaceSpec
from trainable.trial import OBJECTIVE

# A trial killed mid-epoch restarts from its last checkpoint; one that failed for a lasting reason
# (search.faults) is not retried.
MAX_TRIAL_FAILURES = 2
# What Tuner.restore(resume_unfinished=True, resume_errored=True) does: unfinished trials go on
# from their checkpoints, errored ones are retried, so an interrupted search ends with every
# trial terminal. Passed to a Tuner built like a new one (search.private_apis.tuner_resume_kwargs),
# since Tuner.restore keeps the callbacks and budget pickled by the first run.
RESUME = ResumeConfig(unfinished=ResumeConfig.ResumeType.RESUME, errored=ResumeConfig.ResumeType.RESUME)


class BudgetedSearch(SearchGenerator):
    """Tune's SearchGenerator over a ConcurrencyLimiter, whose restored counters yield to this
    run's budget: `set_state` is called last when Tune restores the search algorithm."""

    def __init__(self, searcher, num_samples: int, max_concurrent: int):
        super().__init__(ConcurrencyLimiter(searcher, max_concurrent=max_concurrent))
        self.budget = (num_samples, max_concurrent)

    def set_state(self, state: dict):
        num_samples, max_concurrent = self.budget
        super().set_state(private_apis.grow_sample_budget(state, num_samples))  # more on --resume
        self.searcher.set_max_concurrency(max_concurrent)


class AdoptRestoredTrials(tune.Callback):
    """Hands the searcher Tune's restored trial list at the first step, before Tune asks it for
    new trials (`PrunedAwareOptunaSearch.adopt`)."""

    def __init__(self, searcher):
        self.searcher, self._done = searcher, False

    def on_step_begin(self, iteration, trials, **info):
        if not self._done:
            self.searcher.adopt(trial.trial_id for trial in trials)
            self._done = True


class ExperimentEnd(tune.Callback):
    """Which trials were not finished when `fit()` returned: none, unless Tune was stopped."""

    def __init__(self):
        self.unfinished: list[str] = []

    def on_experiment_end(self, trials, **info):
        self.unfinished = [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]


class StopOnStorageFault(tune.Callback):
    """A trial that failed because the storage refuses writes (read-only, full) stops the search:
    every other trial would fail the same way. Raised out of `fit()`, after the other callbacks
    recorded the trial (this one is last)."""

    def on_trial_error(self, iteration, trials, trial, **info):
        fault = getattr(trial, "storage_error", None)
        if fault:
            raise StorageFault(fault)


def trainable_for(spec: SpaceSpec, targets: dict | None = None, engines: list | None = None):
    """`targets`: the distilled training targets (search.targets), shipped to every trial;
    `engines`: the engines that serve them (search.engine_service). A trial asks for CPUs only:
    the GPUs are its engine's."""
    resources = {"cpu": spec.resources.cpu, "gpu": 0}
    trainable = tune.with_parameters(train_soft_prompt, spec=spec, targets=targets, engines=engines)
    return tune.with_resources(trainable, resources)


def build_tuner(
    spec: SpaceSpec,
    storage: str,
    name: str,
    state_dir,
    ledger: MlflowLedger,
    targets: dict | None = None,
    resume: bool = False,
    engines: list | None = None,
) -> tuple[tune.Tuner, ExperimentEnd]:
    budget = spec.budget
    scheduler = EndingASHA(
        time_attr="training_iteration",
        max_t=budget.max_epochs,
        grace_period=budget.grace_period,
        reduction_factor=budget.reduction_factor,
    )
    watch = ExperimentEnd()
    searcher = build_searcher(spec, state_dir, name)
    callbacks = [
        AdoptRestoredTrials(searcher),
        CatchUpRestoredTrials(searcher, scheduler),
        ConsoleCallback(budget.num_samples, budget.max_epochs, spec.trial_params),
        MlflowCallback(ledger, budget.max_epochs, name, study_storage_url(state_dir), spec.trial_params),
        TuneInterrupt(),
        watch,
        StopOnStorageFault(),
    ]
    private_apis.retry_unless_lasting(lasting, storage_fault)
    # With a searcher and no concurrency limit, Tune runs one trial at a time.
    search = BudgetedSearch(searcher, budget.num_samples, budget.max_concurrent)
    tuner = tune.Tuner(
        trainable_for(spec, targets, engines),
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE,
            mode="max",
            search_alg=search,
            scheduler=scheduler,
            num_samples=budget.num_samples,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_FAILURES),
        ),
        **(private_apis.tuner_resume_kwargs(RESUME) if resume else {}),
    )
    return tuner, watch


def can_restore(experiment_path: str) -> bool:
    return tune.Tuner.can_restore(experiment_path)


# The files Tune resumes an experiment from, each the greatest name of its pattern: the trial
# list (JSON), the search algorithm's state and the searcher's (pickles, the first named .json).
def _read_pickle_through(data: bytes) -> None:
    """Walks a pickle's opcodes to its STOP, running none of them: one cut short raises."""
    for _ in pickletools.genops(data):
        pass


SNAPSHOT_FILES = {
    TuneController.CKPT_FILE_TMPL: json.loads,
    SearchGenerator.CKPT_FILE_TMPL: _read_pickle_through,
    Searcher.CKPT_FILE_TMPL: _read_pickle_through,
}


def snapshot_problem(experiment_path: str) -> str | None:
    """Why Tune cannot resume the experiment saved at `experiment_path`, or None if it can.

    Tune writes its snapshot in a staging directory and copies the files into the storage one by
    one, not atomically, every second (search.driver). A driver killed during a copy can leave a
    file cut short or missing. Tune, given such a snapshot, logs "Failed to restore the run
    state" with a traceback and restarts the experiment, with whatever it had restored before the
    bad file still in place. Checked first, the search says why in one line and Tune starts
    cleanly; the Optuna study holds every trial (search.searcher hands them out again)."""
    fs, root = _filesystem(experiment_path)
    names = [info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))]
    for template, read in SNAPSHOT_FILES.items():
        saved = fnmatch.filter(names, template.format("*"))
        if not saved:
            return f"no {template.format('*')}"
        newest = max(saved)  # as Tune chooses
        try:
            with fs.open_input_stream(f"{root}/{newest}") as stream:
                read(stream.readall())
        except Exception as exc:  # noqa: BLE001 - whatever stops us reading it would stop Tune
            return f"{newest} is cut short or unreadable ({exc})"
    return None


def _filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).resolve())
