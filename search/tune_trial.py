"""The Ray Tune trial: a thin wrapper around `trainable.trial.Trial`.

One `tune.report` per epoch, always carrying `pass@1`, with a checkpoint (PEFT adapter +
optimizer state + the epoch's val completions, a few KB); a restarted trial resumes from it.
"""

from __future__ import annotations

import os
import tempfile

import ray
import torch
from ray import tune

from spaces import SpaceSpec
from trainable.checkpoint import write_completions
from trainable.sandbox import sandbox_mode
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


def train_soft_prompt(params: dict, spec: SpaceSpec, targets: dict | None = None) -> None:
    # A trial gets the CPUs it asked for; more torch threads than that only contend.
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    config = spec.train_config(params)
    trial = Trial(config, spec.model, spec.data, targets=targets)  # the frozen model is cached per process
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as checkpoint_dir:
            trial.restore(checkpoint_dir)
    node_id = ray.get_runtime_context().get_node_id()  # which cluster node ran it (tests, MLflow)
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
                "dtype": str(trial.loaded.dtype).removeprefix("torch."),
                "dtype_reason": trial.dtype_reason,
                "val_source": spec.data.val.source,
                "train_examples": len(trial.examples),
            }
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(out_dir))
