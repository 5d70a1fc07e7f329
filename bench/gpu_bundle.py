"""The Python half of bench/gpu_bundle.sh and bench/gpu_install.sh (standard library + packaging).

    python bench/gpu_bundle.py roots                       # pyproject's exact pins, as the bundle asks for them
    python bench/gpu_bundle.py carry REPORT.json           # name==version of what the GPU image lacks
    python bench/gpu_bundle.py image-deps REPORT.json      # what it relies on the image for (no torch)
    python bench/gpu_bundle.py tokenizer DEST              # the bundled model's tokenizer files alone
    python bench/gpu_bundle.py pack STAGE ARCHIVE REPO     # one .tar.xz, a size table per distribution
    python bench/gpu_bundle.py keep SITE                   # on the GPU machine: drop what the image has

`carry` walks the requirements from the roots down and stops at what the image holds
(bench/gpu_image_packages.txt), except the roots themselves: a pinned package is carried at its
pin, and `keep` removes it on the machine when the image's version already equals it, so the
bundle shadows only what the image has at another version.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
IMAGE_LIST = HERE / "gpu_image_packages.txt"
# The machine's interpreter (its image's Python; another only to try the bundle on a CPU machine),
# for evaluating environment markers of the carried wheels' requirements.
PY = os.environ.get("GPU_BUNDLE_PY", "3.12")
TARGET_ENV = {"python_version": PY, "python_full_version": f"{PY}.0", "sys_platform": "linux",
              "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip
# What the bundle asks for instead of pyproject's spelling: MLflow without its server (search/
# only uses MlflowClient against a sqlite file), Ray without the dashboard/job server ([default]).
RENAME = {"mlflow": ("mlflow-skinny", ()), "ray": ("ray", ("tune",))}
XZ_PRESET = 9  # the archive travels once per run; a slower, tighter pack pays for itself


def image_names() -> set[str]:
    lines = IMAGE_LIST.read_text().splitlines()
    return {canonicalize_name(line) for line in lines if line.strip() and not line.startswith("#")}


def roots(pyproject: Path = HERE.parent / "pyproject.toml") -> list[str]:
    """pyproject's exactly pinned dependencies (the stack whose APIs we rely on)."""
    text = pyproject.read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    out = []
    for line in deps.splitlines():
        found = re.match(r'\s*"([^"]+)"', line)
        if not found:
            continue
        req = Requirement(found.group(1))
        pins = [s.version for s in req.specifier if s.operator == "=="]
        if pins:
            name, extras = RENAME.get(req.name, (req.name, ()))
            out.append(f"{name}{'[' + ','.join(extras) + ']' if extras else ''}=={pins[0]}")
    return out


def _walk(report: Path) -> tuple[dict[str, str], dict[str, str]]:
    """From the roots down pip's resolution in REPORT (`pip install --dry-run --report`): what to
    carry (a root, or needed and not in the image) and what the image is relied on for."""
    resolved = {}
    for item in json.loads(report.read_text())["install"]:
        meta = item["metadata"]
        resolved[canonicalize_name(meta["name"])] = meta
    have = image_names()
    todo = [Requirement(r) for r in roots()]
    root_names = {canonicalize_name(r.name) for r in todo}
    carried: dict[str, str] = {}
    relied: dict[str, str] = {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in carried or name in relied:
            continue
        meta = resolved[name]
        if name in have and name not in root_names:
            relied[name] = meta["version"]  # the image brings its own requirements along
            continue
        carried[name] = meta["version"]
        for spec in meta.get("requires_dist", []):
            dep = Requirement(spec)
            envs = [dict(TARGET_ENV, extra=e) for e in (req.extras or {""})]
            if dep.marker is None or any(dep.marker.evaluate(env) for env in envs):
                todo.append(dep)
    return carried, relied


def carry(report: Path) -> list[str]:
    """name==version for each distribution the roots need that the image lacks."""
    return [f"{name}=={version}" for name, version in sorted(_walk(report)[0].items())]


def image_deps(report: Path) -> list[str]:
    """What the carried distributions need from the image, minus torch and its CUDA stack: a CPU
    venv with these (and their own requirements) stands in for the image when trying the bundle
    here (tests/test_gpu_bundle.py)."""
    relied = _walk(report)[1]
    gpu_stack = ("torch", "triton", "nvidia-", "cuda-")
    return [f"{n}=={v}" for n, v in sorted(relied.items()) if not n.startswith(gpu_stack)]


def tokenizer(dest: Path) -> Path:
    """The bundled model's tokenizer files (the GPU machine gets no weights): from the converted
    checkpoint if this machine has one, else read from the GGUF parts without converting."""
    sys.path.insert(0, str(HERE.parent))
    from trainable.model import bundled

    if (dest / "tokenizer.json").is_file():
        return dest
    converted = bundled.cache_root() / f"bundled-{bundled.BUNDLED_SHA256[:16]}"
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=dest.parent))
    try:
        if (converted / "identity.json").is_file():
            for f in converted.iterdir():
                if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens")):
                    shutil.copy(f, tmp / f.name)
        else:
            from transformers import AutoTokenizer

            with tempfile.TemporaryDirectory() as gguf_dir:
                bundled.join_parts(bundled.locate_parts(), Path(gguf_dir) / bundled.GGUF_NAME)
                with bundled._quiet_transformers():
                    AutoTokenizer.from_pretrained(gguf_dir, gguf_file=bundled.GGUF_NAME).save_pretrained(tmp)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _groups(stage: Path) -> dict[str, list[str]]:
    """Archive member names by what they belong to: each distribution's files (its RECORD),
    the tokenizer, and anything no RECORD names."""
    site = stage / "site"
    groups: dict[str, list[str]] = {}
    claimed: set[str] = set()
    for info in sorted(site.glob("*.dist-info")):
        meta = (info / "METADATA").read_text(errors="replace")
        label = " ".join(re.search(rf"^{k}: (.*)$", meta, re.M).group(1) for k in ("Name", "Version"))
        files = {info.relative_to(stage).as_posix()}
        for row in (info / "RECORD").read_text().splitlines():
            path = (site / row.rsplit(",", 2)[0]).resolve()
            if path.is_file() and path.is_relative_to(site.resolve()):
                files.add(path.relative_to(stage.resolve()).as_posix())
        files = {f for f in files if f not in claimed}
        claimed |= files
        groups[label] = sorted(files)
    rest = [p.relative_to(stage).as_posix() for p in sorted(stage.rglob("*")) if p.is_file() or p.is_symlink()]
    rest = [f for f in rest if f not in claimed and not any(f.startswith(c + "/") for c in claimed)]
    for name in ("tokenizer",):
        groups[f"{name} (bundled model's)"] = [f for f in rest if f.startswith(name + "/")]
    groups["(files no RECORD names)"] = [f for f in rest if not f.startswith("tokenizer/")]
    return {k: v for k, v in groups.items() if v}


def _repo_bytes(repo: Path) -> int:
    import subprocess

    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=True).stdout
    return sum((repo / n).stat().st_size for n in listed.decode().split("\0") if n and (repo / n).is_file())


def pack(stage: Path, archive: Path, repo: Path) -> None:
    """One .tar.xz of STAGE, written as one compressed tar per group back to back (GNU tar reads
    it with --ignore-zeros; xz reads concatenated streams), so the table's compressed column is
    each group's exact share of the archive. Prints the table; writes it beside the archive."""
    rows = []
    with open(archive, "wb") as out:
        for label, files in _groups(stage).items():
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:xz", preset=XZ_PRESET) as tar:
                for f in files:
                    tar.add(stage / f, arcname=f, recursive=False)
            out.write(buf.getvalue())
            disk = sum((stage / f).lstat().st_size for f in files)
            rows.append((label, disk, buf.tell()))
    rows.sort(key=lambda r: -r[2])
    repo_size = _repo_bytes(repo)
    total = archive.stat().st_size
    mib = 2**20
    lines = ["| what | on disk MiB | compressed MiB |", "|---|---|---|"]
    lines += [f"| {label} | {disk / mib:.2f} | {packed / mib:.2f} |" for label, disk, packed in rows]
    lines.append(f"| **archive** ({archive.name}) | {sum(r[1] for r in rows) / mib:.2f} | {total / mib:.2f} |")
    repo_mib = f"{repo_size / mib:.2f}"
    lines.append(f"| project files (git ls-files; travel as they are) | {repo_mib} | {repo_mib} |")
    lines.append(f"| **travels** (archive + project files) | | **{(total + repo_size) / mib:.2f}** |")
    table = "\n".join(lines)
    print(table)
    archive.with_suffix("").with_suffix(".sizes.md").write_text(table + "\n")
    (archive.parent / "travels_bytes").write_text(f"{total + repo_size}\n")


def keep(site: Path) -> None:
    """Remove from SITE each distribution that this interpreter already has (outside SITE) at the
    same version; then name any carried requirement that nothing satisfies (a warning: pip's
    resolution may ask for more than the code uses, and an import that fails says so itself)."""
    site = site.resolve()
    outside = [p for p in sys.path if p and Path(p).resolve() != site]
    image = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=outside)}
    for info in sorted(site.glob("*.dist-info")):
        dist = importlib.metadata.Distribution.at(info)
        name, version = canonicalize_name(dist.metadata["Name"]), dist.version
        if image.get(name) == version:
            for row in dist.files or []:
                path = Path(dist.locate_file(row)).resolve()
                if path.is_relative_to(site) and path.is_file():
                    path.unlink()
            shutil.rmtree(info, ignore_errors=True)
            print(f"image has {name} {version}: not shadowed")
    carried = list(importlib.metadata.distributions(path=[str(site)]))
    found = dict(image)
    found.update({canonicalize_name(d.metadata["Name"]): d.version for d in carried})
    env = default_environment()
    unmet = []
    for d in carried:
        for spec in d.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(dict(env, extra="")):
                continue
            have = found.get(canonicalize_name(req.name))
            if have is None or not req.specifier.contains(have, prereleases=True):
                unmet.append(f"{d.metadata['Name']} needs {req}, found {have or 'nothing'}")
    for line in unmet:
        print(f"warning: unmet: {line}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("roots")
    sub.add_parser("carry").add_argument("report", type=Path)
    sub.add_parser("image-deps").add_argument("report", type=Path)
    sub.add_parser("tokenizer").add_argument("dest", type=Path)
    packer = sub.add_parser("pack")
    for name in ("stage", "archive", "repo"):
        packer.add_argument(name, type=Path)
    sub.add_parser("keep").add_argument("site", type=Path)
    args = p.parse_args()
    if args.verb == "roots":
        print("\n".join(roots()))
    elif args.verb == "carry":
        print("\n".join(carry(args.report)))
    elif args.verb == "image-deps":
        print("\n".join(image_deps(args.report)))
    elif args.verb == "tokenizer":
        print(tokenizer(args.dest))
    elif args.verb == "pack":
        pack(args.stage, args.archive, args.repo)
    else:
        keep(args.site)


if __name__ == "__main__":
    main()
