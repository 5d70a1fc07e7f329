"""A restored Tune trial is moved on over the epochs its result.json holds past its checkpoint
(search.catch_up), on a real Tune `Trial` and a real storage directory: up to the first epoch whose
checkpoint is not complete, and a line cut short ends what was recorded."""

from __future__ import annotations

import json
from pathlib import Path

from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial

from search import private_apis
from search.catch_up import recorded_after_checkpoint
from trainable.checkpoint import STATE_FILE


def _trial(tmp_path: Path) -> tuple[Trial, Path]:
    storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="exp", trial_dir_name="t")
    trial = Trial("train_soft_prompt", config={}, storage=storage, stub=True)
    directory = Path(private_apis.trial_storage(trial)[1])
    directory.mkdir(parents=True, exist_ok=True)
    return trial, directory


def _row(iteration: int) -> dict:
    return {
        "training_iteration": iteration,
        "objective": iteration / 10,
        "checkpoint_dir_name": f"checkpoint_{iteration - 1:06d}",
    }


def test_a_restored_trial_catches_up_to_its_last_complete_epoch(tmp_path):
    trial, directory = _trial(tmp_path)
    lines = [json.dumps(_row(i)) for i in (1, 2, 3, 4)]
    (directory / "result.json").write_text("\n".join(lines) + "\n")
    for iteration in (1, 2, 4):  # epoch 3's checkpoint is missing: epoch 4 cannot follow it
        (directory / f"checkpoint_{iteration - 1:06d}").mkdir()
        (directory / f"checkpoint_{iteration - 1:06d}" / STATE_FILE).write_bytes(b"state")

    recorded = recorded_after_checkpoint(trial)
    assert [r["training_iteration"] for _, r in recorded] == [1, 2]
    private_apis.record_reported_checkpoint(trial, *recorded[0])
    assert [r["training_iteration"] for _, r in recorded_after_checkpoint(trial)] == [2]
    private_apis.record_reported_checkpoint(trial, *recorded_after_checkpoint(trial)[0])

    assert trial.latest_checkpoint_result.metrics["training_iteration"] == 2
    assert trial.latest_checkpoint_result.checkpoint.path == str(directory / "checkpoint_000001")
    assert trial.last_result["training_iteration"] == 2
    assert trial.storage.current_checkpoint_index == 1  # as Tune counts after two checkpoints
    assert recorded_after_checkpoint(trial) == []


def test_a_line_cut_short_ends_what_was_recorded(tmp_path):
    trial, directory = _trial(tmp_path)
    (directory / "result.json").write_text(json.dumps(_row(1)) + "\n" + json.dumps(_row(2))[:20])
    for iteration in (1, 2):
        (directory / f"checkpoint_{iteration - 1:06d}").mkdir()
        (directory / f"checkpoint_{iteration - 1:06d}" / STATE_FILE).write_bytes(b"state")
    assert [r["training_iteration"] for _, r in recorded_after_checkpoint(trial)] == [1]
