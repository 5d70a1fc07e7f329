"""The bundled 0.5B model through our own code paths (slow: minutes on 2 CPU cores)."""

import sqlite3
import subprocess
import sys

import pytest
import torch

from search_helpers import mlflow_runs, search_env
from trainable.decoding.generate import generate
from trainable.model.loading import load_model
from trainable.sandbox.score import score_samples

pytestmark = pytest.mark.slow

ADD = {
    "task_id": "add",
    "entry_point": "add",
    "prompt": 'def add(a, b):\n    """Return the sum of a and b.\n    >>> add(2, 3)\n    5\n    """\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
}


def test_bundled_completes_add_through_our_generation_and_sandbox():
    loaded = load_model("bundled", device="cpu", dtype=torch.bfloat16)
    (completion,) = generate(loaded, [ADD["prompt"]], max_new_tokens=48, batch_size=1).texts
    (result,) = score_samples([{"task_id": "add", "completion": completion}], {"add": ADD}, timeout_s=10)
    assert result["passed"], (completion, result["result"])


def test_smoke_search_on_the_bundled_model(tmp_path):
    """The README's main job, as a user runs it: `python -m search.run --space smoke`."""
    proc = subprocess.run(
        [sys.executable, "-m", "search.run", "--space", "smoke", "--name", "smoke"],
        cwd=tmp_path,
        env=search_env(),
        capture_output=True,
        text=True,
        timeout=3000,
    )
    print(proc.stdout[-2500:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== search finished" in proc.stdout and "lift" in proc.stdout
    runs = mlflow_runs(tmp_path / "runs" / "mlflow.db")
    assert len([r for r in runs if r["parent"] is None]) == 1
    assert len([r for r in runs if r["parent"]]) == 3
    assert {r["status"] for r in runs} == {"FINISHED"}
    parent = next(r for r in runs if r["parent"] is None)
    assert parent["tags"]["model.sha256"].startswith("1d9614638d18")
    # smoke searches both ways a soft prompt enters the model; TPE's seeded start-up picks each.
    with sqlite3.connect(tmp_path / "runs" / "mlflow.db") as conn:
        methods = {v for (v,) in conn.execute("select value from params where key = 'method'")}
    # best.* are tags: a resume with more trials may pick another best, and MLflow refuses a changed param.
    assert methods == {"prompt_tuning", "prefix_tuning"} and parent["tags"]["best.method"] in methods
    assert any(line.startswith("methods ") for line in proc.stdout.splitlines())
