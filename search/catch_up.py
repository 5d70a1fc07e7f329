"""A resumed trial goes on after the last epoch it reported, not after Tune's last snapshot of it.

When a result arrives, the callbacks record it at once (MLflow's epoch metrics, Optuna's
intermediate value, and Optuna's verdict when the trial ends or ASHA stops it), and the checkpoint
that came with it is already in the trial's storage directory (a trial's worker writes it before
reporting). Tune writes the result to the trial's result.json, which reaches the disk with Tune's
next snapshot of its trials, up to a second later (search.driver), or at once when the trial ends.
A driver killed in between leaves a snapshot in which the trial's latest checkpoint is an older one,
or none: resumed from it, the trial would run the epochs after it again and each would be recorded
twice, and a trial that had ended would run on.

So at the first step of a resumed search, before any trial starts, each unfinished trial is moved
on over the epochs that its result.json holds past its checkpoint (each with its checkpoint, as
Tune would have recorded it). It then goes on after the last one; one whose last epoch was its
final one ends at once without a report; one that the study has already finished (ASHA stopped it,
or it completed and was told) is ended by the scheduler (`EndingASHA`) without running.
"""

from __future__ import annotations

import json

import pyarrow.fs
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from search import private_apis
from search.searcher import linked_trial
from trainable.checkpoint import STATE_FILE

ITERATION = "training_iteration"
CHECKPOINT_DIR_NAME = "checkpoint_dir_name"  # what Tune adds to a result reported with a checkpoint


def recorded_after_checkpoint(trial) -> list[tuple[str, dict]]:
    """(checkpoint path, result) of each epoch in the trial's result.json after its latest
    checkpoint, in order, up to the first whose checkpoint is not complete in the storage."""
    fs, root = private_apis.trial_storage(trial)
    latest = trial.latest_checkpoint_result
    reached = int(latest.metrics.get(ITERATION, 0)) if latest else 0
    try:
        with fs.open_input_stream(f"{root}/result.json") as stream:
            lines = stream.readall().decode(errors="replace").splitlines()
    except (FileNotFoundError, OSError):
        return []
    out = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by the kill: nothing after it was recorded
        if int(row.get(ITERATION, 0)) <= reached:
            continue
        name = row.get(CHECKPOINT_DIR_NAME)
        complete = name and fs.get_file_info(f"{root}/{name}/{STATE_FILE}").type == pyarrow.fs.FileType.File
        if int(row.get(ITERATION, 0)) != reached + 1 or not complete:
            break
        out.append((f"{root}/{name}", row))
        reached += 1
    return out


class EndingASHA(ASHAScheduler):
    """ASHA that first ends the restored trials named in `ended` (the study finished them before
    the driver died), before choosing a trial to run. Ending a pending trial tells the callbacks
    (MLflow, the console) that it completed, at the epoch of its last result."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.ended: set[str] = set()

    def choose_trial_to_run(self, tune_controller):
        if self.ended:
            for trial in tune_controller.get_trials():
                if trial.trial_id in self.ended and trial.status == "PENDING":
                    tune_controller.stop_trial(trial)
            self.ended.clear()
        return super().choose_trial_to_run(tune_controller)


class CatchUpRestoredTrials(tune.Callback):
    """At the first step, moves each restored unfinished trial on to the last epoch it recorded
    (`recorded_after_checkpoint`); one that the study has finished is handed to the scheduler to
    end. Runs after `AdoptRestoredTrials`, which links the trials to the study."""

    def __init__(self, searcher, scheduler: EndingASHA):
        self.searcher, self.scheduler, self._done = searcher, scheduler, False

    def on_step_begin(self, iteration, trials, **info):
        if self._done:
            return
        self._done = True
        study = private_apis.optuna_study(self.searcher)
        for trial in trials:
            if trial.status != "PENDING":
                continue
            recorded = recorded_after_checkpoint(trial)
            for path, result in recorded:
                private_apis.record_reported_checkpoint(trial, path, result)
            linked = linked_trial(study, trial.trial_id) if recorded else None
            if linked is not None and linked.state.is_finished():
                private_apis.told_trials(self.searcher).add(trial.trial_id)  # the study has it
                self.scheduler.ended.add(trial.trial_id)
