"""A whole trial without Ray, and its checkpoint round trip (what a restarted Ray trial uses)."""

import torch

from trainable.config import TrainConfig
from trainable.data.splits import DataSplit
from trainable.trial import OBJECTIVE, Trial, objective

SMALL = DataSplit(train=2, val=2, test=2)
CONFIG = TrainConfig(
    num_virtual_tokens=3,
    epochs=2,
    batch_size=2,
    max_new_tokens=4,
    eval_batch_size=2,
    sandbox_timeout_s=5,
    max_length=128,
    dtype="float32",  # restored and fresh trials are compared; `auto` is measured in test_dtype_probe
)


def test_a_trial_reports_every_epoch(tiny_model_dir):
    trial = Trial(CONFIG, str(tiny_model_dir), SMALL)
    results = [trial.run_epoch() for _ in range(CONFIG.epochs)]
    assert [r.epoch for r in results] == [1, 2]
    metrics = results[-1].metrics()
    assert metrics["val_n"] == 2 and 0.0 <= metrics["pass@1"] <= 1.0
    assert metrics[OBJECTIVE] == objective(metrics["pass@1"], metrics["val_loss"])
    assert metrics["train_loss"] == metrics["train_loss"] and metrics["val_loss"] > 0
    # the process's own peak (resident memory on a CPU): at least the model and torch, never less later
    assert 0.05 < results[0].peak_memory_gib <= results[1].peak_memory_gib < 64


def test_objective_never_reorders_pass_at_1():
    """The smallest pass@1 step (one problem of 164) with the worst loss still beats the lower
    pass@1 with a perfect loss; within equal pass@1, lower loss wins."""
    assert objective(1 / 164, float("nan")) > objective(0.0, 0.0)
    assert objective(1 / 164, 1e9) > objective(0.0, 0.0)
    assert objective(0.5, 1.0) > objective(0.5, 2.0)


def test_checkpoint_restores_prompt_optimizer_and_epoch(tiny_model_dir, tmp_path):
    trial = Trial(CONFIG, str(tiny_model_dir), SMALL)
    trial.run_epoch()
    trial.save(tmp_path)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    fresh = Trial(CONFIG, str(tiny_model_dir), SMALL)
    fresh.restore(tmp_path)
    assert fresh.epoch == 1
    assert torch.equal(fresh.prompt.output(), trial.prompt.output())
    steps = [s["step"] for s in fresh.trainer.optimizer.state_dict()["state"].values()]
    assert steps and all(
        float(s) == float(t["step"]) for s, t in zip(steps, trial.trainer.optimizer.state_dict()["state"].values())
    )
    # Both continue identically from the checkpoint.
    assert fresh.run_epoch().train_loss == trial.run_epoch().train_loss
