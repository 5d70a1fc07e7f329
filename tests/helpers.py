"""Helpers shared by tests of every tier: the project's pinned versions (pyproject.toml is their
one source) and a free loopback port."""
from __future__ import annotations

import re
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"


def pinned_versions() -> dict[str, str]:
    """Distribution name -> version, for every exact (`==`) pin of pyproject.toml's
    dependencies and optional dependencies."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = [*project["dependencies"], *(r for group in project.get("optional-dependencies", {}).values()
                                                for r in group)]
    pins = {}
    for requirement in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;,\s]+)", requirement.strip())
        if m:
            pins[m.group(1).lower()] = m.group(3)
    return pins


def pinned(name: str) -> str:
    return pinned_versions()[name.lower()]


def free_port() -> int:
    """A loopback port that nothing listens on now (the OS picks it; a race with another
    process binding it first is possible and rare)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
