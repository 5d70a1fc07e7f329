"""What `python -m search.run` resolved from its command line: the one input of the driver.

Built by `search.run` after every check of user input and before Ray starts; read by
`search.driver` and `search.results`. Frozen: a resume sets `record` by `dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing only: this module stays import-light
    from search.state import SearchRecord
    from spaces import SpaceSpec


@dataclass(frozen=True)
class SearchPlan:
    spec: "SpaceSpec"  # the resolved space, command-line overrides applied
    storage: str  # Tune storage: a directory or a URI (s3://...)
    name: str  # the search's name: a directory under the storage
    experiment_path: str  # storage/name: where Tune keeps the experiment
    state_dir: Path  # local: search.json, optuna.db, report/, best_adapter/
    mlflow_uri: str
    default_mlflow: bool  # no --mlflow-uri given: the sqlite file under the storage may be created
    artifact_location: str | None  # beside a sqlite store; None lets the server decide
    address: str | None  # the Ray cluster, or None for a local Ray started in-process
    resume_command: str  # the exact command that continues this search
    record: "SearchRecord | None" = None  # the record of the search --resume continues
