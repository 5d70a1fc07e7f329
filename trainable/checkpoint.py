"""The layout of a trial's checkpoint directory, in one place (no torch: the CLIs read it too).

    <checkpoint>/
      adapter/                 the soft prompt as a PEFT adapter (`trainable.softprompt`)
        trained_with.json      model, data split, dtype, generation settings (`trainable.evaluate --prompt`)
      trainer_state.pt         epoch, soft prompt and optimizer/schedule state (resume)
      train_config.json        the trial's TrainConfig
      val_completions.jsonl    the epoch's val samples with their verdicts

Written by `trainable.trial.Trial.save` and `search.tune_trial`, read by `Trial.restore`, the
final report (`search.report`), the MLflow callback (`search.callbacks`) and `trainable.evaluate`.
"""

from __future__ import annotations

import json
from pathlib import Path

ADAPTER_DIR = "adapter"
TRAINED_WITH = "trained_with.json"  # inside ADAPTER_DIR: it travels with the adapter when copied
STATE_FILE = "trainer_state.pt"
TRAIN_CONFIG_FILE = "train_config.json"
COMPLETIONS_FILE = "val_completions.jsonl"


def adapter_dir(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / ADAPTER_DIR


def state_file(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / STATE_FILE


def trained_with_file(adapter: str | Path) -> Path:
    """The record beside a saved adapter (a checkpoint's `adapter/` or a search's best_adapter/)."""
    return Path(adapter) / TRAINED_WITH


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=1, default=str))


def write_trial_files(checkpoint_dir: str | Path, trained_with: dict, train_config: dict) -> None:
    """The JSON files beside the adapter and the trainer state (`Trial.save` writes those two)."""
    write_json(trained_with_file(adapter_dir(checkpoint_dir)), trained_with)
    write_json(Path(checkpoint_dir) / TRAIN_CONFIG_FILE, train_config)


def write_completions(checkpoint_dir: str | Path, samples: list[dict]) -> None:
    with open(Path(checkpoint_dir) / COMPLETIONS_FILE, "w") as f:
        for sample in samples:
            f.write(json.dumps(sample) + "\n")
