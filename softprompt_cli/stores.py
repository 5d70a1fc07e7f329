"""Where a sqlite MLflow store keeps its artifacts: one rule for the search driver and the server.

MLflow's own default is ./mlruns (or ./mlartifacts) of whatever directory the process runs in,
so the same store would scatter its artifacts by working directory; beside the database file
they move, back up and get deleted with it.
"""

from __future__ import annotations

from pathlib import Path

ARTIFACTS_DIR = "mlartifacts"


def artifacts_beside(db_file: str | Path) -> Path:
    """The artifact directory of the sqlite store in `db_file` (absolute)."""
    return Path(db_file).expanduser().resolve().parent / ARTIFACTS_DIR
