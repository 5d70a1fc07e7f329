"""What a sandboxed program's interpreter may read, and what it must never load.

Computed once in the scorer, passed to the sandbox as lists of paths:

- `interpreter()`: the base interpreter (a venv's `python` resolves to it), run with
  `-I -S -B`: the standard library only, no site-packages, no venv.
- `denied_paths()`: what gives a program raw access to its own memory or another interpreter
  (ctypes, cffi, CPython's test and sub-interpreter modules, ...): their extension files and
  package dirs wherever the interpreter's own `sys.path` has them, and every site-packages and
  dist-packages dir (third-party packages such as numpy build arrays over any address).
- `readable_paths()`: the interpreter's install, its `sys.path` and the system libraries, carved
  around the denied paths: a tree holding a denied path is replaced by its children, down to
  the denied entries, so Landlock and bwrap's binds can grant whole trees and still hide them.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

# Matched against every dotted part of a module name and against the name of a file or
# package dir (up to its first dot): CPython finds an extension's init function by that
# name alone, so a copy or an alias of the file keeps it.
DENIED_MODULES = frozenset(
    {
        "ctypes",
        "_ctypes",
        "cffi",
        "_cffi_backend",
        "_xxsubinterpreters",
        "_interpreters",
        "interpreters",
        "_lsprof",
        "_remote_debugging",
        "xxsubtype",
        "xxlimited",
        "xxlimited_35",
        "test",
    }
)
DENIED_PREFIXES = ("_test", "_xx", "_ctypes", "_interp", "_cffi")
PACKAGE_DIRS = ("site-packages", "dist-packages")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SYSTEM_ROOTS = (*SYSTEM_DIRS, "/etc/ld.so.cache")


def denied_module(name: str) -> bool:
    """True when any dotted part of `name` (a module or file name) is a denied module."""
    return any(part in DENIED_MODULES or part.startswith(DENIED_PREFIXES) for part in name.split("."))


@functools.lru_cache(maxsize=1)
def interpreter() -> str:
    """The real interpreter binary behind sys.executable (a venv's symlink resolved)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def install_root() -> str:
    return os.path.dirname(os.path.dirname(interpreter()))


@functools.lru_cache(maxsize=1)
def interpreter_path() -> tuple[str, ...]:
    """The sandboxed interpreter's own sys.path (`-I -S`), asked of it once."""
    out = subprocess.run(
        [interpreter(), "-I", "-S", "-c", "import json, sys; print(json.dumps(sys.path))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return tuple(os.path.realpath(p) for p in json.loads(out) if p and os.path.isdir(p))


@functools.lru_cache(maxsize=1)
def denied_paths() -> tuple[str, ...]:
    denied = set()
    for directory in interpreter_path():
        for entry in os.listdir(directory):
            if denied_module(entry.split(".")[0]) or entry in PACKAGE_DIRS:
                denied.add(os.path.join(directory, entry))
    # Where installs keep third-party packages: <root>/lib*/python*/{site,dist}-packages.
    libs = {os.path.join(root, lib) for root in (install_root(), *interpreter_path()) for lib in ("lib", "lib64")}
    for base in sorted(libs | {"/usr/lib", "/usr/local/lib"}):
        for version in _listdir(base):
            if version.startswith("python"):
                paths = (os.path.join(base, version, d) for d in PACKAGE_DIRS)
                denied |= {path for path in paths if os.path.isdir(path)}
    return tuple(sorted(os.path.realpath(p) for p in denied))


@functools.lru_cache(maxsize=1)
def launcher_needs() -> tuple[str, ...]:
    """The denied paths the launcher itself loads (ctypes) before its Landlock rules hide them."""
    return tuple(p for p in denied_paths() if os.path.basename(p).split(".")[0] in ("ctypes", "_ctypes"))


@functools.lru_cache(maxsize=1)
def readable_paths() -> tuple[str, ...]:
    return tuple(sorted(_carved()[0]))


def interpreter_roots() -> list[str]:
    """The trees the interpreter reads: system libraries, its install, its sys.path (outermost only)."""
    roots = {os.path.realpath(p) for p in (*SYSTEM_ROOTS, install_root(), *interpreter_path()) if os.path.exists(p)}
    return sorted(r for r in roots if not any(under(r, other) for other in roots if other != r))


@functools.lru_cache(maxsize=1)
def listable_dirs() -> tuple[str, ...]:
    """The dirs that `readable_paths` replaced by their entries: they may be listed (an import
    lists a dir on sys.path), not read beneath."""
    return tuple(sorted(set(_carved()[1])))


@functools.lru_cache(maxsize=1)
def _carved() -> tuple[list[str], list[str]]:
    return carve(interpreter_roots(), denied_paths())


def carve(roots, denied) -> tuple[list[str], list[str]]:
    """`roots` with every path in `denied` left out: a root holding a denied path is replaced
    by its entries, recursively (symbolic links are kept as they are: Landlock and bwrap follow
    them to where they point, which must be granted on its own). Returns the trees kept and the
    dirs split on the way."""
    kept, split = [], []
    for root in roots:
        if any(under(root, d) for d in denied):
            continue
        if not any(under(d, root) for d in denied):
            kept.append(root)
        elif os.path.isdir(root) and not os.path.islink(root):
            split.append(root)
            below_kept, below_split = carve([os.path.join(root, entry) for entry in _listdir(root)], denied)
            kept += below_kept
            split += below_split
    return kept, split


def under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []
