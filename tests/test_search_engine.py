"""A search's trials share one engine: fusing their requests changes no trial's numbers, and the
engine's death mid-search loses nothing.

Two searches of the same 8 tiny trials (4 at once, no early stopping), each a real
`python -m search.run` with a real local Ray: one whose engine serves one request per call
(`engine_max_batch: 1`, a trial at a time), one with the default window, whose engine process
exits once mid-search. Both complete every trial; each trial (the same configuration in both,
Optuna's seeded proposals) reports the same pass@1 per epoch and the same losses.
"""

from __future__ import annotations

import pytest

from fault_helpers import all_results
from search_helpers import run_search

SPACE = """\
base: smoke
search:
  method: {{choice: [prompt_tuning, prefix_tuning]}}
  num_virtual_tokens: {{choice: [2, 4, 8]}}
  init:
    prompt_tuning: {{choice: [random, sample_vocab, "Write correct code."]}}
    prefix_tuning: {{choice: [random]}}
  learning_rate: {{loguniform: [1.0e-3, 3.0e-1]}}
fixed: {{batch_size: 2, max_length: 128, max_new_tokens: 8, eval_batch_size: 4, sandbox_timeout_s: 5, dtype: float32,
        engine_max_batch: {max_batch}}}
data: {{train: 4, val: 4, test: 4}}
budget: {{num_samples: 8, max_epochs: 2, grace_period: 2, reduction_factor: 2, max_concurrent: 4}}
resources: {{cpu: 0.5, gpu: 0}}
"""


def _per_trial(tmp_path, name):
    """Each trial's reports keyed by its configuration (trial ids differ between searches)."""
    out = {}
    for reports in all_results(tmp_path / "runs" / name).values():
        config = reports[0]["config"]
        out[tuple(sorted((k, str(v)) for k, v in config.items()))] = reports
    return out


@pytest.mark.integration  # two 8-trial searches on a real local Ray (~3 min on 2 cores)
def test_fused_trials_and_a_dying_engine_give_each_trial_its_own_numbers(tmp_path, tiny_model_dir, monkeypatch):
    from search.engine_service import DEATH_ENV

    one = tmp_path / "one.yaml"
    one.write_text(SPACE.format(max_batch=1))
    fused = tmp_path / "fused.yaml"
    fused.write_text(SPACE.format(max_batch=16))
    alone = run_search(tmp_path, one, tiny_model_dir, "alone", timeout=900)
    assert alone.returncode == 0, alone.stdout[-3000:] + alone.stderr[-3000:]
    marker = tmp_path / "engine-dies-once"
    marker.touch()
    monkeypatch.setenv(DEATH_ENV, str(marker))  # search_env() copies os.environ: the engine sees it
    together = run_search(tmp_path, fused, tiny_model_dir, "together", timeout=900)
    assert together.returncode == 0, together.stdout[-3000:] + together.stderr[-3000:]
    assert not marker.exists(), "the engine never reached its injected death"
    assert "8 trials (8 completed, 0 stopped early by ASHA, 0 failed)" in together.stdout

    a, b = _per_trial(tmp_path, "alone"), _per_trial(tmp_path, "together")
    assert len(a) == 8 and a.keys() == b.keys()
    for config in a:
        assert [r["training_iteration"] for r in b[config]] == [1, 2]
        for x, y in zip(a[config], b[config]):
            assert x["pass@1"] == y["pass@1"]
            assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-5)
            assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-5)
    served = [line for line in together.stdout.splitlines() if line.startswith("engine 0:")]
    assert served, together.stdout[-2000:]
