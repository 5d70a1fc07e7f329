"""One home for each pinned version: pyproject.toml. Whatever must restate a pin because its format
cannot read pyproject.toml (the Dockerfile's base image, the KubeRay manifests' rayVersion, a
copyable build command, .ci/setup's torch) must agree with it, and the installed packages must be
the pinned ones. An upgrade is the pin in pyproject.toml; this test then names every file:line
that still says the old version.

    .venv/bin/pytest tests/test_versions.py -q
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from helpers import PYPROJECT, REPO, pinned, pinned_versions

SKIP_DIRS = {".git", ".venv", "runs", "__pycache__", "node_modules"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".sh", ""}
# Where a pinned version is restated in a form a machine reads, or a user copies.
RAY_PINS = [
    re.compile(r"rayproject/ray:(\d+(?:\.\d+)*)"),  # images
    re.compile(r"""rayVersion:\s*["']?([\w.]+)"""),  # KubeRay
    re.compile(r"\bray(?:\[[^\]]*\])?==([\w.]+)"),  # pip requirements
]
TORCH_PINS = [re.compile(r"\btorch==(\d[\w.]*)"), re.compile(r"\bTORCH_VERSION=(\d[\w.]*)")]


def _tree() -> list[Path]:
    """The files that make up the checkout: what git tracks and what it would add (ignored build
    outputs and caches are not the project: pytest's own cache holds this file's test ids, stale
    versions included). Without git (an unpacked archive), every file."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return sorted(REPO.rglob("*"))
    return sorted(REPO / name for name in listed.decode().split("\0") if name)


def text_files() -> list[Path]:
    out = []
    for path in _tree():
        rel = path.relative_to(REPO)
        if any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path == Path(__file__).resolve():
            continue  # its own examples of stale versions
        if path.is_file() and (path.suffix in TEXT_SUFFIXES or path.name.startswith("Dockerfile")):
            out.append(path)
    return out


def occurrences(patterns: list[re.Pattern]) -> list[tuple[str, str]]:
    """(file:line, version) for every match of the patterns in the repository's text files."""
    found = []
    for path in text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for pattern in patterns:
                found += [(f"{path.relative_to(REPO)}:{n}", m.group(1)) for m in pattern.finditer(line)]
    return found


def test_every_exact_pin_is_installed():
    wrong = {
        name: (version, _installed(name)) for name, version in pinned_versions().items() if _installed(name) != version
    }
    assert not wrong, f"pinned vs installed (run .ci/setup): {wrong}"


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_ray_version_agrees_everywhere():
    found = occurrences(RAY_PINS)
    wrong = [f"{where}: {version}" for where, version in found if version != pinned("ray")]
    assert not wrong, f"pyproject.toml pins ray=={pinned('ray')}; these say otherwise:\n" + "\n".join(wrong)
    where = {w.split(":")[0] for w, _ in found}
    # The places that must restate it: if one stops matching, the patterns above went stale.
    assert {"pyproject.toml", "k8s/Dockerfile", "k8s/raycluster.yaml", "k8s/rayjob.yaml"} <= where, where


def test_manifests_and_dockerfile_use_the_pinned_ray():
    """The agreement read as data, not only as text: the manifests' rayVersion and the image the
    Dockerfile builds FROM by default."""
    for name in ("raycluster.yaml", "rayjob.yaml"):
        doc = yaml.safe_load((REPO / "k8s" / name).read_text())
        cluster = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert cluster["rayVersion"] == pinned("ray"), name
    dockerfile = (REPO / "k8s" / "Dockerfile").read_text()
    [base] = re.findall(r"^ARG RAY_IMAGE=(\S+)$", dockerfile, re.M)
    assert base.startswith(f"rayproject/ray:{pinned('ray')}-"), base


def test_dockerfile_does_not_restate_pyprojects_pins():
    """`pip install .` installs pyproject.toml's pins; a second pin in the Dockerfile would drift."""
    dockerfile = (REPO / "k8s" / "Dockerfile").read_text()
    restated = [
        name for name in pinned_versions() if re.search(rf"(?i)[\"'\s]{re.escape(name)}(\[[^\]]*\])?==", dockerfile)
    ]
    assert not restated, f"k8s/Dockerfile pins what pyproject.toml pins: {restated}"


def test_torch_version_agrees_everywhere():
    """torch is a range in pyproject.toml (GPU users keep their CUDA build); .ci/setup, the
    Dockerfile and the README name the one exact version set-up installs."""
    found = occurrences(TORCH_PINS)
    versions = {version for _, version in found}
    assert len(versions) == 1, f"torch pinned differently: {found}"
    [version] = versions
    assert {"k8s/Dockerfile", ".ci/setup", "README.md"} <= {w.split(":")[0] for w, _ in found}, found
    spec = re.search(r'"torch([^"]*)"', PYPROJECT.read_text()).group(1)
    assert Version(version) in SpecifierSet(spec), f"torch=={version} is outside pyproject's torch{spec}"
    assert Version(importlib.metadata.version("torch")).base_version == version


@pytest.mark.parametrize(
    "text, expected",
    [
        ('  rayVersion: "2.61.0"', "2.61.0"),
        ("ARG RAY_IMAGE=rayproject/ray:2.61.0-py311-cpu", "2.61.0"),
        ("--build-arg RAY_IMAGE=rayproject/ray:2.61.1-py312-gpu \\", "2.61.1"),
        ('    "ray[default,tune]==2.61.0",  # [default]', "2.61.0"),
        ("pip install 'ray==2.61.0'", "2.61.0"),
    ],
)
def test_the_patterns_catch_a_stale_version(text, expected):
    assert [m.group(1) for p in RAY_PINS for m in p.finditer(text)] == [expected]
