"""The Ray Tune trial: a thin wrapper around `trainable.trial.Trial`.

One `tune.report` per epoch, always carrying `pass@1`, with a checkpoint (PEFT adapter +
optimizer state + the epoch's val completions, a few KB); a restarted trial resumes from it.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from ray import tune

from spaces import SpaceSpec
from trainable.trial import Trial

COMPLETIONS_FILE = "val_completions.jsonl"


def _write_completions(out_dir: Path, samples: list[dict]) -> None:
    with open(out_dir / COMPLETIONS_FILE, "w") as f:
        for sample in samples:
            f.write(json.dumps(sample) + "\n")


def train_soft_prompt(params: dict, spec: SpaceSpec) -> None:
    # A trial gets the CPUs it asked for; more torch threads than that only contend.
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    config = spec.train_config(params)
    trial = Trial(config, spec.model, spec.data)  # the frozen model is cached per process
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as checkpoint_dir:
            trial.restore(checkpoint_dir)
    while trial.epoch < config.epochs:
        result = trial.run_epoch()
        with tempfile.TemporaryDirectory() as out_dir:
            trial.save(out_dir)
            _write_completions(Path(out_dir), trial.last_eval.samples)
            tune.report(result.metrics(), checkpoint=tune.Checkpoint.from_directory(out_dir))
