"""Load: four searches at once on one storage dir and one sqlite MLflow store, and one search of 40
trials eight at a time on a 2-core machine. Nothing is lost (the Optuna study, Tune's trials, the
MLflow child runs and report/trials.json name the same trials), nothing is left RUNNING, and the
driver's memory does not grow with the number of trials.

Sized for CI: the tiny model, one epoch, four val problems. The 40-trial test prints the driver's
resident memory after 10 and after 40 trials and its peak.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import optuna
import pytest

from fault_helpers import SearchProcess, read_results, trial_dirs
from search_helpers import mlflow_runs

pytestmark = pytest.mark.integration

LOAD_SPACE = """\
base: smoke
search:
  method: null
  num_virtual_tokens: {{choice: [2, 4]}}
  init: {{choice: [random, sample_vocab]}}
  learning_rate: {{loguniform: [1.0e-3, 3.0e-1]}}
fixed: {{batch_size: 2, max_length: 128, max_new_tokens: 8, eval_batch_size: 4, sandbox_timeout_s: 5}}
data: {{train: 4, val: 4, test: 4}}
budget: {{num_samples: {samples}, max_epochs: 1, grace_period: 1, reduction_factor: 2, max_concurrent: {concurrent}}}
resources: {{cpu: {cpu}, gpu: 0}}
"""
# The driver's resident memory may grow by this much from the 10th trial's end to the 40th's: a
# leak of 2 MiB or more per trial (an MLflow client, a figure, a trial's results kept) goes past it.
MAX_DRIVER_GROWTH_MIB = 60


def _space(tmp_path: Path, samples: int, concurrent: int, cpu: float) -> Path:
    path = tmp_path / f"load_{samples}.yaml"
    path.write_text(LOAD_SPACE.format(samples=samples, concurrent=concurrent, cpu=cpu))
    return path


def _assert_nothing_lost(tmp_path: Path, name: str, samples: int) -> None:
    """The study, Tune, MLflow and report/trials.json hold the same `samples` trials, all ended."""
    experiment = tmp_path / "runs" / name
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{experiment}/optuna.db")
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    assert len(states) == samples and set(states) <= {"COMPLETE", "PRUNED"}, states
    tune_trials = trial_dirs(experiment)
    assert len(tune_trials) == samples and all(read_results(d) for d in tune_trials.values())
    runs = mlflow_runs(tmp_path / "runs" / "mlflow.db")
    (parent,) = [r for r in runs if r["parent"] is None and r["tags"].get("search_name") == name]
    children = [r for r in runs if r["parent"] == parent["id"]]
    assert sorted(c["tags"]["ray_trial_id"] for c in children) == sorted(tune_trials), name
    assert len({c["tags"]["optuna_trial_number"] for c in children}) == samples
    assert {r["status"] for r in [parent, *children]} == {"FINISHED"}, "a run was left RUNNING or KILLED"
    recorded = json.loads((experiment / "report" / "trials.json").read_text())
    assert sorted(t["trial_id"] for t in recorded) == sorted(tune_trials)


def test_four_searches_at_once_on_one_storage_and_mlflow_store(tiny_model_dir, tmp_path):
    space = _space(tmp_path, samples=2, concurrent=2, cpu=0.5)
    names = [f"four{i}" for i in range(4)]
    searches = [SearchProcess(tmp_path, space, tiny_model_dir, name) for name in names]
    try:
        codes = [search.wait(600) for search in searches]
        assert codes == [0] * 4, "\n\n".join(f"{s.name} exit {c}:\n{s.tail(2000)}" for s, c in zip(searches, codes))
    finally:
        for search in searches:
            search.kill_session()
    for name in names:
        _assert_nothing_lost(tmp_path, name, 2)
    assert {r["status"] for r in mlflow_runs(tmp_path / "runs" / "mlflow.db")} == {"FINISHED"}


def _memory_mib(pid: int) -> dict[str, float]:
    """The process's resident memory now (VmRSS) and at its peak so far (VmHWM), in MiB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {key: int(kb) / 1024 for key, kb in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}


def _ended(output: str) -> int:
    counts = re.findall(r"progress: (\d+)/\d+ trials ended", output)
    return int(counts[-1]) if counts else 0


def test_forty_trials_eight_at_once_lose_nothing_and_the_driver_stays_flat(tiny_model_dir, tmp_path):
    samples = 40
    space = _space(tmp_path, samples=samples, concurrent=8, cpu=0.25)
    at_ten = at_all = peak = None
    with SearchProcess(tmp_path, space, tiny_model_dir, "forty", "--max-concurrent", "8") as search:
        while search.alive():
            memory, output = _memory_mib(search.pid), search.output()
            ended = _ended(output)
            if memory:
                peak = memory["VmHWM"]
                if at_ten is None and ended >= 10:
                    at_ten = memory["VmRSS"]
                # The first look after the last trial ended: the report may have just begun, but
                # its work (a Ray task, then the plots) comes after; when the driver went on from
                # the last trial to the report within one look, waiting for a look between them
                # missed it.
                if at_all is None and ended == samples:
                    at_all = memory["VmRSS"]
            assert time.monotonic() - search.started < 600, search.tail()
            time.sleep(0.2)
        assert search.wait(10) == 0, search.tail()
    print(
        f"\ndriver memory: {at_ten:.0f} MiB after 10 trials, {at_all:.0f} MiB after {samples}, peak {peak:.0f} MiB"
        f" (with the final report); {time.monotonic() - search.started:.0f} s"
    )
    assert at_all - at_ten < MAX_DRIVER_GROWTH_MIB, (at_ten, at_all)
    _assert_nothing_lost(tmp_path, "forty", samples)
