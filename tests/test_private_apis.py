"""search/private_apis.py is the only home of Ray's and Optuna's private attributes, and
trainable/private_apis.py of torch's: each names the versions it was read from, each of its
functions works on the installed packages, and no other module of ours reaches into a private
name. An upgrade that moves one of them fails here (and in tests/test_searcher.py), in seconds,
before a search does.

    .venv/bin/pytest tests/test_private_apis.py -q
"""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
from pathlib import Path

import pytest

from helpers import REPO, pinned
from search import private_apis
from trainable import private_apis as torch_private_apis

PACKAGES = ("search", "spaces", "mlflow_server", "trainable")
# Private names of the standard library that the sandbox harness uses on purpose (it documents why).
ALLOWED = {("os", "_exit")}
HOMES = {REPO / "search" / "private_apis.py", REPO / "trainable" / "private_apis.py"}


@pytest.mark.parametrize("package", sorted(private_apis.READ_FROM))
def test_read_from_the_pinned_and_installed_versions(package):
    read_from = private_apis.READ_FROM[package]
    assert read_from == pinned(package), (
        f"pyproject.toml pins {package}=={pinned(package)} but search/private_apis.py was read from "
        f"{read_from}: re-read the files it names against each of its functions, then update READ_FROM"
    )
    assert importlib.metadata.version(package) == read_from, "installed version differs: run .ci/setup"


def _private_uses(path: Path) -> list[str]:
    """`x._name` on anything but self/cls, `self._name` that this module never defines (an
    inherited private), `f(_name=...)`, and imports of another package's private modules or names."""
    tree = ast.parse(path.read_text())
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    own |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)}
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value.id if isinstance(node.value, ast.Name) else None
            if base in ("self", "cls"):
                if node.attr not in own:
                    found.append(f"{where}: {base}.{node.attr} (inherited)")
            elif (base, node.attr) not in ALLOWED:
                found.append(f"{where}: {ast.unparse(node)}")
        elif isinstance(node, ast.keyword) and node.arg and node.arg.startswith("_"):
            found.append(f"{where}: keyword {node.arg}=")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] not in PACKAGES
        ):  # our own modules may share privates
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if any(part.startswith("_") and not part.startswith("__") for part in node.module.split(".")) or private:
                found.append(f"{where}: from {node.module} import {', '.join(a.name for a in node.names)}")
    return found


def test_no_other_module_uses_a_private_name():
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path not in HOMES:
                found += _private_uses(path)
    assert not found, "private names outside search/ and trainable/private_apis.py:\n" + "\n".join(found)


def test_torch_privates_read_from_the_set_up_version_and_work_here():
    """torch is a range in pyproject.toml, .ci/setup installs one exact version: the operators
    were read from that one, and on it (a CPU build with oneDNN) they must work, or every CPU
    evaluation would fall back to the slower plain linears without a word."""
    import re

    import torch

    setup_pin = re.search(r"torch==([0-9.]+)", (REPO / ".ci" / "setup").read_text()).group(1)
    assert torch_private_apis.READ_FROM["torch"] == setup_pin, "re-read trainable/private_apis.py's sources"
    if torch.__version__.split("+")[0] != setup_pin or not torch.backends.mkldnn.is_available():
        pytest.skip(f"torch {torch.__version__} here, not .ci/setup's {setup_pin} with oneDNN")
    assert torch_private_apis.packed_linear_works()
    weight, x = torch.randn(7, 16), torch.randn(3, 16)
    packed = torch_private_apis.pack_linear_weight(weight)
    torch.testing.assert_close(torch_private_apis.packed_linear(x, packed, None), x @ weight.T, rtol=1e-5, atol=1e-5)


def test_the_private_use_check_can_fail(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text(
        "from ray.tune.tune import _setup_signal_catching\n"
        "class S(Base):\n    def f(self, other):\n        self._own = 1\n"
        "        return self._own, self._inherited, other._ot_trials, g(_tuner_kwargs=1)\n"
    )
    found = _private_uses(bad)
    assert [f.split(": ", 1)[1] for f in found] == [
        "from ray.tune.tune import _setup_signal_catching",
        "self._inherited (inherited)",
        "other._ot_trials",
        "keyword _tuner_kwargs=",
    ], found


def test_grow_sample_budget_on_tunes_search_generator(tmp_path):
    from search.searcher import build_searcher
    from search.tuner import BudgetedSearch
    from search_helpers import write_space
    from spaces import load_space

    spec = load_space(str(write_space(tmp_path, samples=6, epochs=2)))
    saved = {
        **BudgetedSearch(build_searcher(spec, tmp_path, "a"), 3, 1).get_state(),
        "counter": 3,
        "total_samples": 3,
        "finished": True,
    }  # a finished 3-trial search
    grown = BudgetedSearch(build_searcher(spec, tmp_path, "b"), num_samples=5, max_concurrent=2)
    grown.set_state(dict(saved))
    assert grown.total_samples == 5 and not grown.is_finished()
    assert grown.searcher.max_concurrent == 2
    same = BudgetedSearch(build_searcher(spec, tmp_path, "c"), num_samples=3, max_concurrent=1)
    same.set_state(dict(saved))
    assert same.total_samples == 3 and same.is_finished()


def test_tuner_resume_kwargs_reach_tunes_resume_config(tmp_path):
    import ray
    from ray import tune

    from search.tuner import RESUME

    tuner = tune.Tuner(
        lambda config: None,
        **private_apis.tuner_resume_kwargs(RESUME),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="probe"),
    )
    # TunerInternal keeps them and hands them to tune.run (test-only reads of where Ray keeps them)
    assert tuner._local_tuner._tuner_kwargs == {"resume_config": RESUME}
    assert "resume_config" in inspect.signature(tune.run).parameters
    assert not ray.is_initialized()  # built, not started


def test_the_loggers_the_console_quiets_still_say_what_we_drop(cli_zygote):
    """search/run.py drops some of Tune's messages by logger name and prefix: each logger must
    still be a module of the installed ray, and each prefix still in its source."""
    import json

    from search_helpers import search_env

    probe = (
        "import json, logging; from search.run import _DropMessages, _quiet_libraries; _quiet_libraries(); "
        "print(json.dumps({n: [list(f.prefixes) for f in l.filters if isinstance(f, _DropMessages)] "
        "for n, l in logging.Logger.manager.loggerDict.items() if isinstance(l, logging.Logger)}))"
    )
    # `python -c PROBE` in a process of its own, forked from the session's zygote (conftest)
    out = cli_zygote.run_code(probe, cwd=REPO, env=search_env(), timeout=300, preload=("search.run",))
    assert out.returncode == 0, out.stderr[-2000:]
    dropped = {name: filters[0] for name, filters in json.loads(out.stdout.splitlines()[-1]).items() if filters}
    assert any(name.startswith("ray.") for name in dropped), dropped
    for name, prefixes in dropped.items():
        source = inspect.getsource(importlib.import_module(name))
        missing = [p for p in prefixes if p not in source]
        assert not missing, f"{name} no longer says {missing}: search/run.py filters nothing"


@pytest.mark.integration  # starts a real local Ray cluster (~20 s of the fast tier on 2 cores)
def test_a_local_search_keeps_token_auth_without_rays_warning(tmp_path):
    """A local `search.run` starts Ray with token auth on, as `ray.init()` would by default, and the
    user sees no warning that it did: the driver and its cluster agree (a task runs). Its own HOME,
    so the token Ray writes lands in tmp_path, not ~/.ray."""
    import os
    import subprocess
    import sys

    probe = (
        "import os, ray; from search.driver import _start_ray; _start_ray(None); "
        "print(os.environ['RAY_AUTH_MODE'], ray.get(ray.remote(lambda: 42).remote())); ray.shutdown()"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")} | {"HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["token", "42"], out.stdout
    assert "Token authentication" not in out.stderr, out.stderr[-2000:]
    assert (tmp_path / ".ray" / "auth_token").is_file()
