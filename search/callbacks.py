"""Tune callbacks on the driver: MLflow child runs per trial, and quiet console lines.

Both are pickled with the experiment by Tune, so `--resume` brings them back.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from pathlib import Path

from ray import tune

from search import mlflow_ops as ops
from search.mlflow_ops import DESCRIPTION_TAG
from search.searcher import optuna_number_of
from search.tracking import MlflowLedger
from trainable.checkpoint import adapter_dir
from trainable.config import InitKind, init_kind

# Tune's metric names -> MLflow's (MLflow forbids "@").
METRICS = {
    "pass@1": "val_pass_at_1",
    "objective": "objective",
    "val_loss": "val_loss",
    "train_loss": "train_loss",
    "train_tokens_per_s": "train_tokens_per_s",
    "generation_tokens_per_s": "generation_tokens_per_s",
    "eval_seconds": "eval_seconds",
    "train_seconds": "train_seconds",
    "sandbox_seconds": "sandbox_seconds",
    "train_examples": "train_examples",
    "peak_memory_gib": "peak_memory_gib",
}
# Strings a trial reports once per epoch that go to its MLflow run as tags.
TAGS = ("node_id", "sandbox_mode", "dtype", "dtype_reason", "val_source")


# MLflow keeps at most 8000 characters in a tag value; a longer init text is cut there (the
# whole text is in the parent run's space/space.json).
TAG_CHARS = 8000


def text_param_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


# How much of an init text the runs table shows (`init_label`).
LABEL_CHARS = 40


def init_label(init: str) -> str:
    """The init as a reader recognises it in the runs table: a text's first words in quotes and,
    when cut, the hash its `init` param carries (two texts that share a prefix stay apart, and the
    label leads to the param); any other init (random, sample_vocab, adapter:PATH) as it is."""
    if init_kind(init) is not InitKind.TEXT:
        return init
    if len(init) <= LABEL_CHARS:
        return repr(init)
    return f"{init[:LABEL_CHARS]!r}... (text:{text_param_hash(init)})"


def mlflow_params(params: dict) -> tuple[dict, dict]:
    """Params for MLflow plus tags: a long init text goes in a tag, a short hash in the param (the
    key a resumed search logs again, so it never changes), its readable form in `init_label`."""
    out, tags = dict(params), {}
    if "init" in params:
        tags["init_label"] = init_label(params["init"])
    if "init" in params and init_kind(params["init"]) is InitKind.TEXT:
        out["init"] = f"text:{text_param_hash(params['init'])}"
        text = params["init"]
        tags["init_text"] = (
            text
            if len(text) <= TAG_CHARS
            else (f"{text[: TAG_CHARS - 100]}... ({len(text)} chars; all of it in the parent run's space/space.json)")
        )
    return out, tags


def final_state(trial, max_epochs: int) -> tuple[str, int]:
    """COMPLETED, PRUNED (ASHA stopped it) or FAILED, and the last epoch it reported."""
    return state_of(trial.status == "ERROR", trial.last_result, max_epochs)


def state_of(errored: bool, last_result: dict | None, max_epochs: int) -> tuple[str, int]:
    epoch = int((last_result or {}).get("training_iteration", 0))
    if errored:
        return "FAILED", epoch
    return ("PRUNED" if epoch < max_epochs else "COMPLETED"), epoch


def error_reason(trial) -> str:
    try:
        lines = Path(trial.error_file).read_text().strip().splitlines()
        return lines[-1][:500] if lines else "unknown error"
    except (OSError, TypeError):
        return "unknown error (no error file)"


class MlflowCallback(tune.Callback):
    def __init__(self, ledger: MlflowLedger, max_epochs: int, study_name: str, storage_url: str, params_of=dict):
        self.ledger, self.max_epochs = ledger, max_epochs
        self.study_name, self.storage_url = study_name, storage_url
        # Tune's config (Optuna's names, e.g. `learning_rate.p_tuning`) -> the trial's parameters by
        # field, `method` always among them (`SpaceSpec.trial_params`).
        self.params_of = params_of
        self._numbers: dict[str, int | None] = {}  # Ray trial id -> Optuna trial number

    def _key(self, trial) -> str:
        """The MLflow run of a trial is keyed by its Optuna trial number, which survives a resume
        even when Tune reruns a configuration under a new Ray trial id."""
        if trial.trial_id not in self._numbers:
            self._numbers[trial.trial_id] = optuna_number_of(self.storage_url, self.study_name, trial.trial_id)
        number = self._numbers[trial.trial_id]
        return trial.trial_id if number is None else f"optuna-{number}"

    def on_trial_start(self, iteration, trials, trial, **info):
        params, tags = mlflow_params(self.params_of(trial.config))
        key = self._key(trial)
        tags.update(ray_trial_id=trial.trial_id, state="RUNNING")
        tags[DESCRIPTION_TAG] = trial_description(self.params_of(trial.config), "RUNNING")
        if key.startswith("optuna-"):
            tags["optuna_trial_number"] = key.removeprefix("optuna-")
        # "start": RUNNING again if an interruption had KILLED it.
        self.ledger.submit(ops.Start(key), ops.Params(key, params), ops.Tags(key, tags))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = self._key(trial)
        values = {METRICS[k]: v for k, v in result.items() if k in METRICS and v == v}  # drop NaN
        self.ledger.log_epoch(key, values, int(result["training_iteration"]))
        # Where it ran, how generated code was isolated (bwrap, or a weaker fallback), the dtype
        # the trial chose and why, and the val source (HumanEval: the mission's metric).
        self.ledger.submit(ops.Tags(key, {tag: result.get(tag) for tag in TAGS if tag in result}))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # Copy the KB-sized checkpoint into the state dir first: if MLflow is down, the queued
        # upload must still find its files after Tune deletes old checkpoints.
        local = self.ledger.state_dir / "artifacts" / trial.trial_id
        shutil.rmtree(local, ignore_errors=True)
        try:
            checkpoint.to_directory(str(local))
        except OSError as exc:  # a full disk: the trial goes on, this epoch's files stay in Tune's storage
            print(
                f"warning: trial {trial.trial_id}: checkpoint not copied for MLflow ({exc.strerror or exc})", flush=True
            )
            return
        self.ledger.submit(ops.Artifacts(self._key(trial), str(adapter_dir(local)), "soft_prompt"))
        self.ledger.submit(ops.Artifacts(self._key(trial), str(local), "checkpoint"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        state, epoch = final_state(trial, self.max_epochs)
        key = self._key(trial)
        described = trial_description(self.params_of(trial.config), f"{state} at epoch {epoch}/{self.max_epochs}")
        tags = {"state": state, "stopped_at_epoch": epoch, DESCRIPTION_TAG: described}
        self.ledger.submit(ops.Tags(key, tags), ops.End(key, self.ledger.end_status(state)))

    def on_trial_error(self, iteration, trials, trial, **info):
        _, epoch = final_state(trial, self.max_epochs)
        key = self._key(trial)
        reason = error_reason(trial)
        described = trial_description(self.params_of(trial.config), f"FAILED at epoch {epoch}: {reason[:200]}")
        tags = {"state": "FAILED", "stopped_at_epoch": epoch, "error": reason, DESCRIPTION_TAG: described}
        self.ledger.submit(ops.Tags(key, tags), ops.End(key, self.ledger.end_status("FAILED")))


class ConsoleCallback(tune.Callback):
    """One line per trial result, one per trial end, and a progress line; no Ray tables."""

    def __init__(self, num_samples: int, max_epochs: int, params_of=dict):
        self.num_samples, self.max_epochs = num_samples, max_epochs
        self.params_of = params_of  # as in MlflowCallback
        self.started = time.time()
        self.dtypes_shown: set = set()

    def setup(self, **info):
        self.started = time.time()  # also on --resume, where this object comes back unpickled
        self.dtypes_shown = set()

    def _print(self, line: str) -> None:
        print(f"[{time.time() - self.started:7.1f}s] {line}", file=sys.stdout, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        choice = (result.get("dtype"), result.get("dtype_reason"))
        if choice[0] and choice not in self.dtypes_shown:  # once per distinct choice, e.g. per machine kind
            self.dtypes_shown.add(choice)
            self._print(f"dtype {choice[0]} ({choice[1]})")
        self._print(
            f"trial {trial.trial_id} epoch {result['training_iteration']}/{self.max_epochs} "
            f"val pass@1 {result['pass@1']:.3f} val loss {result.get('val_loss', float('nan')):.4f} "
            f"train loss {result.get('train_loss', float('nan')):.4f} "
            f"({result.get('train_tokens_per_s', 0):.0f} tok/s train)"
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        state, epoch = final_state(trial, self.max_epochs)
        self._print(f"trial {trial.trial_id} {state} at epoch {epoch} {_short(self.params_of(trial.config))}")
        self._progress(trials, trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._print(f"trial {trial.trial_id} crashed ({error_reason(trial)}); retrying from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        lasting = getattr(trial, "lasting_error", None)  # search.faults via search.private_apis
        why = f"{lasting} (not retried: it would fail the same way again)" if lasting else error_reason(trial)
        self._print(f"trial {trial.trial_id} FAILED: {why}")
        self._progress(trials, trial)

    def _progress(self, trials, ending) -> None:
        # Tune calls us before it marks `ending` terminated: count it as ended already.
        ended = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR") or t is ending)
        running = sum(1 for t in trials if t.status == "RUNNING" and t is not ending)
        self._print(f"progress: {ended}/{self.num_samples} trials ended, {running} running")


def _short(params: dict) -> str:
    shown = {**params, "init": init_label(params["init"])} if "init" in params else params
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def trial_description(params: dict, state: str) -> str:
    """A trial run's one-line description: its state, then its parameters as the console shows them."""
    return f"{state}: {_short(params)}"
