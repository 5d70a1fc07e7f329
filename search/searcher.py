"""Optuna (TPE) through Ray Tune, with ASHA-stopped trials told to Optuna as PRUNED.

Ray's `OptunaSearch` tells Optuna COMPLETE for a trial that ASHA stopped at a low rung, with its
low-rung value: TPE then models "bad" configurations from half-trained numbers as if they were
final. A trial that ended (without error) before the last epoch was stopped early, so we tell
Optuna PRUNED; Optuna keeps its intermediate values.

The space is define-by-run (`ConditionalSpace`): `method` first, then only that method's
parameters (`spaces.conditional`), so Optuna never holds a value that the trial ignored.
"""

from __future__ import annotations

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from search import private_apis
from search.study import study_storage_url
from spaces import DistKind, Distribution, SpaceSpec
from spaces.spec import METHOD
from trainable.trial import OBJECTIVE

RAY_TRIAL_ID_ATTR = "ray_trial_id"
# A finished Optuna trial cannot change, so a resumed search that reruns one (see
# `_claim_unclaimed_trial`) links the new Ray trial id on the study: key RERUN_ATTR_PREFIX + Ray id,
# value the Optuna trial number.
RERUN_ATTR_PREFIX = "rerun:ray_trial_id:"


def link_ray_trial(ot_trial: optuna.trial.Trial, trial_id: str) -> None:
    """Name the Ray trial that runs `ot_trial`: on the trial while it runs (optuna-dashboard shows
    it), on the study once the trial has finished."""
    try:
        ot_trial.set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
    except UpdateFinishedTrialError:
        ot_trial.study.set_user_attr(RERUN_ATTR_PREFIX + trial_id, ot_trial.number)


def linked_trial(study: optuna.Study, trial_id: str) -> optuna.trial.FrozenTrial | None:
    """The Optuna trial that Ray trial `trial_id` runs (`link_ray_trial`), if the study names it."""
    trials = study.get_trials(deepcopy=False)
    rerun = study.user_attrs.get(RERUN_ATTR_PREFIX + trial_id)
    if rerun is not None:
        return next((ot for ot in trials if ot.number == rerun), None)
    return next((ot for ot in trials if ot.user_attrs.get(RAY_TRIAL_ID_ATTR) == trial_id), None)


def optuna_number_of(storage_url: str, study_name: str, trial_id: str) -> int | None:
    """`linked_trial`'s number; None when the study cannot be read or does not name `trial_id`."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage_url)
    except Exception:
        return None
    linked = linked_trial(study, trial_id)
    return None if linked is None else linked.number


def optuna_distribution(dist: Distribution):
    if dist.kind is DistKind.CHOICE:
        return CategoricalDistribution(list(dist.values))
    if dist.kind is DistKind.RANDINT:
        return IntDistribution(int(dist.low), int(dist.high))  # both ends included, as in spaces
    return FloatDistribution(float(dist.low), float(dist.high), log=dist.kind is DistKind.LOGUNIFORM)


def suggest(trial, name: str, dist: Distribution):
    """One value through Optuna's public API (Ray records what the suggest_* calls return)."""
    d = optuna_distribution(dist)
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high)
    return trial.suggest_float(name, d.low, d.high, log=d.log)


class ConditionalSpace:
    """The define-by-run space (a class, not a closure: Tune pickles the searcher with it)."""

    def __init__(self, spec: SpaceSpec):
        self.spec = spec

    def __call__(self, trial) -> None:
        method = self.spec.methods[0]
        if METHOD in self.spec.search:
            method = suggest(trial, METHOD, self.spec.search[METHOD])
        for name, _, dist in self.spec.sampled(method):
            suggest(trial, name, dist)


class PrunedAwareOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, plus: ASHA-stopped trials told as PRUNED, the Ray trial id on each
    Optuna trial, and a resumed search that hands out the trials its snapshot missed. What it
    reads of Ray's and Optuna's internals goes through `search.private_apis`."""

    def __init__(self, *args, max_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs

    def suggest(self, trial_id: str):
        ot_trials = private_apis.optuna_trials(self)
        if trial_id not in ot_trials:
            self._claim_unclaimed_trial(trial_id)
        params = super().suggest(trial_id)
        ot_trial = ot_trials.get(trial_id)
        if ot_trial is not None:  # lets MLflow and the dashboard link Ray and Optuna trials
            link_ray_trial(ot_trial, trial_id)
        return params

    def _claim_unclaimed_trial(self, trial_id: str) -> None:
        """An Optuna trial asked for after Tune's last experiment snapshot: the driver died
        before Tune recorded it, so a resumed search would ask for a new one and end with more
        trials than `num_samples`. Hand its configuration to `trial_id` instead.

        Tune's snapshot can be older than the study by whole trials, finished ones included
        (the driver died before Tune's next snapshot, or before its first). Tune reruns such a
        trial's configuration, so that its result is among Tune's results and the report's; the
        study keeps what it was told, so the rerun counts as told from the start."""
        known = {ot.number for ot in private_apis.optuna_trials(self).values()}
        study = private_apis.optuna_study(self)
        for frozen in study.get_trials(deepcopy=False):
            if frozen.number not in known and frozen.state in (
                TrialState.RUNNING,
                TrialState.COMPLETE,
                TrialState.PRUNED,
            ):
                # Killed between `ask` and its last param write? The define-by-run space samples
                # what is missing and returns the values the trial already has.
                self._hand_out(trial_id, frozen)
                return

    def _hand_out(self, trial_id: str, frozen: optuna.trial.FrozenTrial) -> None:
        private_apis.optuna_trials(self)[trial_id] = private_apis.reopen_trial(private_apis.optuna_study(self), frozen)
        if frozen.state.is_finished():
            private_apis.told_trials(self).add(trial_id)

    def adopt(self, trial_ids) -> None:
        """Take in the Tune trials this searcher's state does not know (see `_knows`), before
        Tune asks for new ones: else a new trial would claim their Optuna trials a second time."""
        for trial_id in trial_ids:
            self._knows(trial_id)

    def _knows(self, trial_id: str) -> bool:
        """Whether `trial_id` has its Optuna trial here. A resumed Tune trial may not: Tune saves
        its trial list and this searcher's state in separate files, and a driver killed between
        the two leaves a trial list newer than the searcher's. The link on the study finds it."""
        if trial_id not in private_apis.optuna_trials(self):
            linked = linked_trial(private_apis.optuna_study(self), trial_id)
            if linked is not None:
                self._hand_out(trial_id, linked)
        return trial_id in private_apis.optuna_trials(self)

    def on_trial_result(self, trial_id: str, result: dict):
        if not self._knows(trial_id) or trial_id in private_apis.told_trials(self):
            return  # nothing to tell; Ray would warn at every epoch of a rerun (_claim_unclaimed_trial)
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            pass  # see on_trial_complete: a resumed search replays what the study already has

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
        ot_trials, told = private_apis.optuna_trials(self), private_apis.told_trials(self)
        if not self._knows(trial_id) or trial_id in told:
            return None  # told already (Tune's replay, or a rerun: _claim_unclaimed_trial), or unknown
        try:
            if not error and result and self.metric in result:
                # Tune passes a trial's last result here, never to on_trial_result: without this
                # Optuna would miss the epoch at which the trial ended.
                ot_trials[trial_id].report(result[self.metric], result["training_iteration"])
        except UpdateFinishedTrialError:
            # Told before the driver died, after Tune's last experiment checkpoint: a resumed
            # search reports it again. The study already has it; telling twice would fail.
            told.add(trial_id)
            return None
        stopped_early = (
            not error and result is not None and result.get("training_iteration", self._max_epochs) < self._max_epochs
        )
        if not stopped_early:
            return super().on_trial_complete(trial_id, result, error)
        private_apis.optuna_study(self).tell(ot_trials[trial_id], state=TrialState.PRUNED)
        told.add(trial_id)


def build_searcher(spec: SpaceSpec, state_dir, study_name: str) -> PrunedAwareOptunaSearch:
    """TPE seeded from the space; the study persists in `state_dir/optuna.db` (optuna-dashboard)."""
    storage = optuna.storages.RDBStorage(study_storage_url(state_dir))
    return PrunedAwareOptunaSearch(
        space=ConditionalSpace(spec),
        metric=OBJECTIVE,
        mode="max",
        max_epochs=spec.budget.max_epochs,
        sampler=optuna.samplers.TPESampler(seed=spec.budget.seed),
        storage=storage,
        study_name=study_name,
    )
