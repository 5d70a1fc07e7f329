"""One dtype per search: `auto` is measured once, before the trials, in a Ray task; the record,
MLflow's parent run, every trial and the report carry the concrete dtype; a resume reuses it."""

import json
import subprocess

import pytest

from search_helpers import TINY_SPACE, mlflow_runs, search_command, search_env

# Two whole searches (a run and its --resume), each with its own Ray: ~2 min of the fast tier.
pytestmark = pytest.mark.integration
AUTO_SPACE = TINY_SPACE.replace(", dtype: float32}}", "}}")


def _search(tmp_path, model, *extra):
    space = tmp_path / "auto.yaml"
    space.write_text(AUTO_SPACE.format(samples=1, epochs=1))
    env = {**search_env(), "SOFTPROMPT_SEARCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        search_command(space, model, "auto", *extra), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_auto_is_measured_once_recorded_and_reused_on_resume(tmp_path, tiny_model_dir):
    assert "dtype: float32" in TINY_SPACE and "dtype" not in AUTO_SPACE
    out = _search(tmp_path, tiny_model_dir)
    record = json.loads((tmp_path / "runs" / "auto" / "search.json").read_text())
    dtype, reason = record["dtype"], record["dtype_reason"]
    assert dtype in ("float32", "bfloat16") and reason.startswith("auto: measured fp32 "), record
    assert f"dtype {dtype} for every trial and the report ({reason})" in out
    assert len(list((tmp_path / "cache" / "dtype-probe").glob("*.json"))) == 1  # probed in the Ray task
    assert record["identity"]["fixed"]["dtype"] == "auto"  # the space as given: what --resume compares
    runs = mlflow_runs(tmp_path / "runs" / "mlflow.db")
    parent = next(r for r in runs if r["parent"] is None)
    assert parent["tags"]["dtype"] == dtype and parent["tags"]["dtype_reason"] == reason
    trials = [r for r in runs if r["parent"] is not None]
    assert trials and all(r["tags"]["dtype"] == dtype for r in trials)
    space = json.loads((tmp_path / "runs" / "auto" / "space" / "space.json").read_text())
    assert space["fixed"]["dtype"] == dtype  # what the trials and the report were built from

    (tmp_path / "cache" / "dtype-probe").rename(tmp_path / "old-probe")  # a new probe would show
    out = _search(tmp_path, tiny_model_dir, "--resume", "--num-samples", "2")
    assert f"dtype {dtype} for every trial and the report ({reason})" in out and "dtype probe (" not in out
    assert not (tmp_path / "cache" / "dtype-probe").exists()
    again = json.loads((tmp_path / "runs" / "auto" / "search.json").read_text())
    assert (again["dtype"], again["dtype_reason"], again["state"]) == (dtype, reason, "finished")
    runs = mlflow_runs(tmp_path / "runs" / "mlflow.db")
    assert len([r for r in runs if r["parent"] is not None]) == 2
    assert all(r["tags"]["dtype"] == dtype for r in runs)
