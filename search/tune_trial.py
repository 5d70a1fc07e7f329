"""The Ray Tune trial: a thin wrapper around `trainable.trial.Trial`, served by its device's engine.

The trial holds no model: the engine on its node (`search.engine_service`) runs its forwards,
backwards and decoding, fused with the other trials'. One `tune.report` per epoch, always
carrying `pass@1`, with a checkpoint (PEFT adapter + optimizer state + the epoch's val
completions, a few KB); a restarted trial resumes from it.
"""

from __future__ import annotations

import os
import tempfile

import ray
import torch
from ray import tune

from search.engine_service import RemoteEngine, pick
from search.faults import TrialSetupError, lasting
from spaces import SpaceSpec
from trainable.checkpoint import write_completions
from trainable.sandbox.runner import sandbox_mode
from trainable.trial import Trial

# Fault injection for the fault-tolerance tests, e.g. "num_virtual_tokens=8@2": a trial whose
# num_virtual_tokens is 8 raises at the start of epoch 2. Unset in normal use.
FAULT_ENV = "SOFTPROMPT_INJECT_FAULT"


def _maybe_inject_fault(params: dict, epoch: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    condition, at_epoch = spec.rsplit("@", 1)
    key, value = condition.split("=", 1)
    if str(params.get(key)) == value and epoch == int(at_epoch):
        raise RuntimeError(f"injected fault ({FAULT_ENV}={spec})")


def _set_up(config, spec: SpaceSpec, targets: dict | None, engine) -> Trial:
    """The trial's data and prompt, served by `engine`. What fails here fails the same way on
    every try (a bad init adapter, a bad config), so it is marked as lasting and not retried
    (search.faults); running out of memory or a connection may pass next time."""
    try:
        return Trial(config, spec.model, spec.data, targets=targets, engine=engine)
    except (MemoryError, torch.OutOfMemoryError, ConnectionError, TimeoutError):
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised, marked as lasting
        if lasting(exc) is not None or type(exc).__module__.startswith(("requests", "urllib3")):
            raise
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise TrialSetupError(f"cannot set up the trial: {type(exc).__name__}: {text}") from exc


def train_soft_prompt(params: dict, spec: SpaceSpec, targets: dict | None = None, engines: list | None = None) -> None:
    """`engines`: `search.engine_service.start_engines`'s (handle, node) pairs."""
    # A trial gets the CPUs it asked for; more torch threads than that only contend.
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    config = spec.train_config(params)
    node_id = ray.get_runtime_context().get_node_id()  # which cluster node ran it (tests, MLflow)
    engine = RemoteEngine(pick(engines, node_id, tune.get_context().get_trial_id())) if engines else None
    trial = _set_up(config, spec, targets, engine)
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as checkpoint_dir:
            trial.restore(checkpoint_dir)
    while trial.epoch < config.epochs:
        _maybe_inject_fault(params, trial.epoch + 1)
        result = trial.run_epoch()
        with tempfile.TemporaryDirectory() as out_dir:
            trial.save(out_dir)
            write_completions(out_dir, trial.last_eval.samples)
            metrics = {
                **result.metrics(),
                "node_id": node_id,
                "sandbox_mode": sandbox_mode(),
                "dtype": str(trial.model.dtype).removeprefix("torch."),
                "dtype_reason": trial.dtype_reason,
                "val_source": spec.data.val.source,
                "train_examples": len(trial.examples),
            }
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(out_dir))
