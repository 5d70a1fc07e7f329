"""The searcher on its own: Ray's OptunaSearch with our PRUNED, trial-link and resume rules,
driven by direct calls (suggest / on_trial_result / on_trial_complete / save / restore) as Tune
makes them, with no Ray trials, against a real Optuna study in a sqlite file under tmp_path.

    .venv/bin/pytest tests/test_searcher.py -q
"""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from search import private_apis
from search.searcher import RAY_TRIAL_ID_ATTR, build_searcher, optuna_number_of, study_storage_url
from search_helpers import write_space
from spaces import load_space
from trainable.trial import OBJECTIVE

EPOCHS = 3


@pytest.fixture()
def spec(tmp_path):
    return load_space(str(write_space(tmp_path, samples=6, epochs=EPOCHS)))


def _searcher(spec, tmp_path, name: str = "study"):
    return build_searcher(spec, tmp_path, name)


def _resumed(spec, tmp_path, snapshot, name: str = "study"):
    """What Tune does on --resume: a searcher built like a new one, then its saved state."""
    searcher = _searcher(spec, tmp_path, name)
    searcher.restore(str(snapshot))
    return searcher


def _trials(tmp_path, name: str = "study") -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=study_storage_url(tmp_path))
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def _result(value: float, epoch: int) -> dict:
    return {OBJECTIVE: value, "training_iteration": epoch}


def _expected_names(spec, config) -> set[str]:
    method = config.get("method", spec.methods[0])
    return {name for name, _, _ in spec.sampled(method)} | ({"method"} if "method" in config else set())


# -- suggest ------------------------------------------------------------------------------------


def test_suggest_asks_one_optuna_trial_per_tune_trial_and_links_them(spec, tmp_path):
    searcher = _searcher(spec, tmp_path)
    first = searcher.suggest("a")
    assert searcher.suggest("a") == first  # asked again (Tune retries): the same trial
    second = searcher.suggest("b")
    trials = _trials(tmp_path)
    assert [t.number for t in trials] == [0, 1]
    assert [t.user_attrs[RAY_TRIAL_ID_ATTR] for t in trials] == ["a", "b"]
    assert [t.params for t in trials] == [first, second]
    assert set(first) == _expected_names(spec, first) and first
    assert {k: t.number for k, t in private_apis.optuna_trials(searcher).items()} == {"a": 0, "b": 1}


# -- on_trial_result / on_trial_complete ----------------------------------------------------------


def test_trial_run_to_the_last_epoch_is_complete_with_every_epoch(spec, tmp_path):
    searcher = _searcher(spec, tmp_path)
    searcher.suggest("a")
    searcher.on_trial_result("a", _result(0.1, 1))
    searcher.on_trial_result("a", _result(0.2, 2))
    assert _trials(tmp_path)[0].state is TrialState.RUNNING
    # Tune hands the last result to on_trial_complete only, never to on_trial_result.
    searcher.on_trial_complete("a", _result(0.3, EPOCHS))
    [trial] = _trials(tmp_path)
    assert trial.state is TrialState.COMPLETE and trial.value == 0.3
    assert trial.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3}
    assert "a" in private_apis.told_trials(searcher)


def test_trial_stopped_early_is_pruned_at_its_last_epoch(spec, tmp_path):
    searcher = _searcher(spec, tmp_path)
    searcher.suggest("a")
    searcher.on_trial_result("a", _result(0.1, 1))
    searcher.on_trial_complete("a", _result(0.05, 2))  # ASHA stopped it at epoch 2 of 3
    [trial] = _trials(tmp_path)
    assert trial.state is TrialState.PRUNED and trial.intermediate_values == {1: 0.1, 2: 0.05}
    assert trial.value == 0.05  # Optuna gives a pruned trial its last intermediate value
    # Told once: a second completion (Tune's own replay) changes nothing.
    searcher.on_trial_complete("a", _result(0.9, EPOCHS))
    searcher.on_trial_result("a", _result(0.9, EPOCHS))
    assert _trials(tmp_path)[0].state is TrialState.PRUNED
    assert _trials(tmp_path)[0].intermediate_values == {1: 0.1, 2: 0.05}


def test_failed_trial_is_failed_not_pruned(spec, tmp_path):
    searcher = _searcher(spec, tmp_path)
    searcher.suggest("a")
    searcher.on_trial_result("a", _result(0.1, 1))
    searcher.on_trial_complete("a", None, error=True)
    [trial] = _trials(tmp_path)
    assert trial.state is TrialState.FAIL and trial.intermediate_values == {1: 0.1}


def test_trials_end_in_any_order(spec, tmp_path):
    searcher = _searcher(spec, tmp_path)
    for tid in "abc":
        searcher.suggest(tid)
    searcher.on_trial_complete("c", _result(0.4, EPOCHS))
    searcher.on_trial_complete("a", _result(0.0, 1))
    searcher.on_trial_complete("b", None, error=True)
    assert [t.state for t in _trials(tmp_path)] == [TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]


# -- resume: what the searcher does with a snapshot older than the study ---------------------------


def test_resumed_searcher_claims_the_trial_its_snapshot_missed(spec, tmp_path):
    before = _searcher(spec, tmp_path)
    before.suggest("t0")
    before.save(str(tmp_path / "snapshot.pkl"))  # Tune's last experiment snapshot
    lost = before.suggest("t1")  # asked after it; then the driver died
    before.on_trial_result("t1", _result(0.1, 1))

    after = _resumed(spec, tmp_path, tmp_path / "snapshot.pkl")
    assert after.suggest("t1-again") == lost  # the same Optuna trial, not a new one
    assert len(_trials(tmp_path)) == 2
    assert _trials(tmp_path)[1].user_attrs[RAY_TRIAL_ID_ATTR] == "t1-again"
    after.suggest("t2")  # nothing left to claim: a new trial
    assert [t.number for t in _trials(tmp_path)] == [0, 1, 2]
    after.on_trial_complete("t1-again", _result(0.2, EPOCHS))
    assert _trials(tmp_path)[1].state is TrialState.COMPLETE
    assert _trials(tmp_path)[1].intermediate_values == {1: 0.1, 3: 0.2}


@pytest.mark.parametrize(
    "epoch, state", [(EPOCHS, TrialState.COMPLETE), (2, TrialState.PRUNED), (None, TrialState.FAIL)]
)
def test_resumed_searcher_reruns_a_trial_told_after_its_snapshot(spec, tmp_path, epoch, state):
    """Tune's snapshot can be older than the study by whole trials (the driver died before Tune's
    next snapshot, or before its first): the study has them finished, Tune never heard of them.
    A COMPLETE or PRUNED one is handed out again (Tune reruns its configuration, so its result is
    in Tune's results and the report); the study keeps what it was told, and the new Ray trial id
    still finds its Optuna trial (MLflow keys its run by that number). A FAIL one is not."""
    before = _searcher(spec, tmp_path)
    before.save(str(tmp_path / "snapshot.pkl"))  # Tune's first snapshot: no trials yet
    lost = before.suggest("t0")
    before.on_trial_result("t0", _result(0.1, 1))
    before.on_trial_complete("t0", None if epoch is None else _result(0.3, epoch), error=epoch is None)
    told = _trials(tmp_path)[0]
    assert told.state is state

    after = _resumed(spec, tmp_path, tmp_path / "snapshot.pkl")
    config = after.suggest("t0-again")
    if state is TrialState.FAIL:
        assert [t.number for t in _trials(tmp_path)] == [0, 1]  # a new trial, as for any failure
        return
    assert config == lost and len(_trials(tmp_path)) == 1
    assert optuna_number_of(study_storage_url(tmp_path), "study", "t0-again") == 0
    assert optuna_number_of(study_storage_url(tmp_path), "study", "t0") == 0  # the first link stays
    assert after.suggest("t0-again") == lost  # Tune asks again: the same trial, the same link
    after.on_trial_result("t0-again", _result(0.5, 1))
    after.on_trial_result("t0-again", _result(0.5, EPOCHS - 1))
    after.on_trial_complete("t0-again", _result(0.6, EPOCHS))
    [trial] = _trials(tmp_path)
    assert (trial.state, trial.value, trial.intermediate_values) == (told.state, told.value, told.intermediate_values)
    after.suggest("t1")  # nothing left to claim: a new trial
    assert [t.number for t in _trials(tmp_path)] == [0, 1]


def test_resumed_tune_trial_that_the_searchers_snapshot_missed_reports_to_its_trial(spec, tmp_path):
    """Tune saves its trial list and the searcher in separate files: a driver killed between the
    two resumes a Tune trial that the searcher's snapshot never heard of. Its results go to the
    Optuna trial linked to its Ray trial id, not to a KeyError."""
    before = _searcher(spec, tmp_path)
    before.save(str(tmp_path / "snapshot.pkl"))
    before.suggest("t0")
    before.on_trial_result("t0", _result(0.1, 1))

    after = _resumed(spec, tmp_path, tmp_path / "snapshot.pkl")
    after.on_trial_result("t0", _result(0.2, 2))
    after.on_trial_complete("t0", _result(0.3, EPOCHS))
    [trial] = _trials(tmp_path)
    assert trial.state is TrialState.COMPLETE and trial.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3}


def test_restored_tune_trials_are_adopted_before_new_ones_claim_their_optuna_trials(spec, tmp_path):
    """Tune's trial list newer than the searcher's state (a kill between the two files): Tune
    resumes t0 and asks for a new trial. Adopted first (Tune's first step, `AdoptRestoredTrials`
    in the Tuner that build_tuner makes), t0 keeps its Optuna trial and the new one gets its own;
    not adopted, the new one would claim t0's trial and run its configuration a second time."""
    from ray.tune.search import ConcurrencyLimiter

    from search.tracking import MlflowLedger
    from search.tuner import AdoptRestoredTrials, build_tuner

    before = _searcher(spec, tmp_path)
    before.save(str(tmp_path / "snapshot.pkl"))
    config = before.suggest("t0")

    ledger = MlflowLedger(f"sqlite:///{tmp_path}/mlflow.db", "exp", "study", "uuid", tmp_path)
    tuner, _ = build_tuner(spec, str(tmp_path / "runs"), "study", tmp_path, ledger)
    [adopt] = [c for c in tuner._local_tuner._run_config.callbacks if isinstance(c, AdoptRestoredTrials)]
    search = tuner._local_tuner._tune_config.search_alg.searcher  # test-only reads of Tune's wiring
    assert isinstance(search, ConcurrencyLimiter) and search.searcher is adopt.searcher

    after = adopt.searcher
    after.restore(str(tmp_path / "snapshot.pkl"))  # what Tune does on --resume, before its first step
    adopt.on_step_begin(iteration=0, trials=[SimpleNamespace(trial_id="t0")])
    after.suggest("t1")
    assert [(t.number, t.user_attrs[RAY_TRIAL_ID_ATTR]) for t in _trials(tmp_path)] == [(0, "t0"), (1, "t1")]
    assert after.suggest("t0") == config  # t0 resumes on its own Optuna trial


def test_resume_claims_a_trial_killed_between_ask_and_its_params(spec, tmp_path):
    before = _searcher(spec, tmp_path)
    before.save(str(tmp_path / "snapshot.pkl"))
    private_apis.optuna_study(before).ask()  # asked; the driver died before any suggest_*
    assert _trials(tmp_path)[0].params == {}

    config = _resumed(spec, tmp_path, tmp_path / "snapshot.pkl").suggest("t0")
    [trial] = _trials(tmp_path)
    assert trial.params == config and set(config) == _expected_names(spec, config)


def test_resume_does_not_claim_a_failed_trial(spec, tmp_path):
    before = _searcher(spec, tmp_path)
    before.save(str(tmp_path / "snapshot.pkl"))
    before.suggest("t0")
    before.on_trial_complete("t0", None, error=True)

    _resumed(spec, tmp_path, tmp_path / "snapshot.pkl").suggest("t1")
    assert [(t.number, t.state) for t in _trials(tmp_path)] == [(0, TrialState.FAIL), (1, TrialState.RUNNING)]


@pytest.mark.parametrize("epoch, state", [(EPOCHS, TrialState.COMPLETE), (1, TrialState.PRUNED)])
def test_resume_replaying_a_told_trial_changes_nothing(spec, tmp_path, epoch, state):
    before = _searcher(spec, tmp_path)
    before.suggest("t0")
    before.save(str(tmp_path / "snapshot.pkl"))
    before.on_trial_complete("t0", _result(0.3, epoch))  # told after the snapshot
    told = _trials(tmp_path)[0]
    assert told.state is state

    after = _resumed(spec, tmp_path, tmp_path / "snapshot.pkl")
    after.on_trial_result("t0", _result(0.3, epoch))  # Tune replays what it had not recorded
    after.on_trial_complete("t0", _result(0.3, epoch))
    [trial] = _trials(tmp_path)
    assert (trial.state, trial.value, trial.intermediate_values) == (told.state, told.value, told.intermediate_values)
    assert "t0" in private_apis.told_trials(after)
