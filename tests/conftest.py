"""Shared fixtures: a tiny random Qwen2 built in-process (no downloads, < 1 s)."""

from __future__ import annotations

import os

import pytest
import torch

# Tests must never reach the model hub, even by accident.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny checkpoint: usable wherever a user would pass `--model PATH`."""
    from trainable.tiny import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture()
def tiny_loaded(tiny_model_dir):
    """The tiny model loaded through the real loader, in fp32 (deterministic on CPU)."""
    from trainable.model.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def cli_zygote(tmp_path_factory):
    """One interpreter that has imported the search stack (torch, transformers, Ray, MLflow) and
    forks a fresh process per command (tests/cli_zygote.py): for tests that run our commands
    many times, each a fresh interpreter spending ~7 s of CPU on imports. Started without TQDM_*
    variables (tqdm reads them on import), as the tests that watch progress bars run."""
    from search_helpers import CliZygote, search_env

    env = {k: v for k, v in search_env().items() if not k.startswith("TQDM_")}
    zygote = CliZygote(tmp_path_factory.mktemp("cli-zygote"), env=env)
    yield zygote
    zygote.close()


@pytest.fixture(scope="session")
def model_cli(tmp_path_factory):
    """`python -m trainable.evaluate|trainable.distill ARGS` in those tests' bare environment
    (PATH=/usr/bin:/bin, the repo, offline), for the commands that load a model:
    forked from one zygote that imported torch and transformers in that same environment."""
    from helpers import REPO
    from search_helpers import CliZygote

    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    preload = (
        "trainable.decoding.generate",
        "trainable.decoding.generate_and_score",
        "trainable.model.loading",
        "trainable.softprompt",
    )
    zygote = CliZygote(tmp_path_factory.mktemp("model-cli"), env=env, preload=preload)
    yield zygote
    zygote.close()


@pytest.fixture(scope="session")
def search_cli(cli_zygote):
    """`python -m search.run ARGS` for the many CLI tests that check what it prints and its exit
    status, forked from the session's zygote."""
    from search_helpers import search_env

    def run(*args: str, cwd, env: dict | None = None, timeout: float = 180):
        return cli_zygote.run("search.run", *args, cwd=cwd, env=env or search_env(), timeout=timeout)

    return run


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory):
    """An empty MLflow sqlite store with all of MLflow's migrations applied: a new store spends
    seconds of CPU in alembic, paid here once per session."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def mlflow_db(migrated_mlflow_db, tmp_path):
    """tmp_path/mlflow.db: a new, empty MLflow store of this test's own (a copy of the session's
    migrated one), for tests of what we write into a store, not of how MLflow creates one."""
    import shutil

    db = tmp_path / "mlflow.db"
    shutil.copyfile(migrated_mlflow_db, db)
    return db
