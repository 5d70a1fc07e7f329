"""Load a search space by name or path into a validated `SpaceSpec`.

    .venv/bin/python -c "from spaces import load_space; print(load_space('smoke').to_dict())"

A name (`cpu`, `default`, `smoke`) is a YAML file shipped in this package; anything containing `/` or
ending in `.yaml`/`.yml` is a path. A file may say `base: NAME|PATH` (a relative path is taken
from the file's folder) and then holds only what differs: mappings merge key by key, lists and
scalars replace, a searched parameter's distribution replaces as a whole, and `null` deletes a key.
Every error is a one-line `UsageError` naming the key path, the value and what is allowed.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

import yaml

from spaces.conditional import parse_searched
from spaces.key_paths import check_mapping
from spaces.spec import Budget, Resources, SpaceSpec, check_train_field
from trainable.config import run_defaults
from trainable.data.splits import DataSplit
from softprompt_cli.errors import UsageError, field_error

SPACES_DIR = Path(__file__).resolve().parent
# Every YAML file here is a shipped space (and is loaded by tests/test_spaces.py).
SHIPPED_SPACES = tuple(sorted(path.stem for path in SPACES_DIR.glob("*.yaml")))

TOP_KEYS = ("base", "model", "search", "fixed", "data", "budget", "resources")
REQUIRED_KEYS = ("model", "search", "data", "budget", "resources")
DATA_KEYS = ("train", "val", "test", "seed", "distill")
DATA_REQUIRED = ("train", "val", "test", "seed")
BUDGET_KEYS = tuple(f.name for f in fields(Budget))
RESOURCE_KEYS = tuple(f.name for f in fields(Resources))
_REF_ALLOWED = "one of " + ", ".join(SHIPPED_SPACES) + " or a path to a .yaml file"


class _Loader(yaml.SafeLoader):
    """SafeLoader (no object construction) that also rejects duplicate keys.

    A repeated key would otherwise silently keep the last value, e.g. a second learning_rate.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)):
                continue  # SafeLoader itself reports unhashable keys
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads `1e-3` and `3.0e1` as strings; YAML 1.2 and every reader of a
# hyperparameter file expect numbers, so accept exponent notation with or without a dot/sign.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


# YAML 1.1 (PyYAML) reads yes/no/on/off/y/n as booleans: `init: {choice: [random, off]}` would
# say `got False`. YAML 1.2 keeps only true/false; the others stay the strings the user wrote.
_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))

# A space file is a few KB. Aliases can make a small file expand without bound (a "billion
# laughs" file is 1 KB and 10^9 values): the document is measured before it is built.
MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 100_000


def _count_values(node, budget: int, path: tuple = ()) -> int:
    """Values `node` expands to (aliases counted each time they are used), stopping past `budget`;
    -1 for an alias that contains itself."""
    if any(node is seen for seen in path):
        return -1
    if isinstance(node, yaml.ScalarNode):
        return 1
    children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
    total = 1
    for child in children:
        size = _count_values(child, budget - total, path + (node,))
        if size < 0:
            return size
        total += size
        if total > budget:
            break
    return total


def _is_path(ref: str) -> bool:
    return "/" in ref or os.sep in ref or ref.endswith((".yaml", ".yml"))


def _locate(ref, field: str, folder: Path, where: str = "") -> Path:
    """The file a space reference names: a shipped name, or a path relative to `folder`."""
    if not isinstance(ref, str) or not ref.strip():
        raise field_error(field, ref, _REF_ALLOWED + where)
    if _is_path(ref):
        return (folder / Path(ref).expanduser()).resolve()
    if ref not in SHIPPED_SPACES:
        raise field_error(field, ref, _REF_ALLOWED + where)
    return SPACES_DIR / f"{ref}.yaml"


def _yaml_error(path: Path, err: yaml.YAMLError) -> UsageError:
    mark = getattr(err, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = " ".join(str(getattr(err, "problem", None) or err).split())  # one line
    return UsageError(str(path), None, "valid YAML", got=f"invalid YAML{at} ({problem})")


def _read(path: Path, field: str, ref) -> dict:
    """One file's top-level mapping."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise field_error(field, ref, f"a space file of at most {MAX_FILE_BYTES >> 10} KiB ({path})")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise field_error(field, ref, f"a readable YAML file ({reason}: {path})") from None
    try:
        raw = _load_yaml(text, path)
    except yaml.YAMLError as err:
        raise _yaml_error(path, err) from None
    except RecursionError:
        raise UsageError(str(path), None, "a space file", got="YAML nested too deeply") from None
    if not isinstance(raw, dict):
        what = "an empty file" if raw is None else f"a YAML {type(raw).__name__} ({raw!r:.60})"
        raise UsageError(str(path), raw, f"a mapping with keys {', '.join(TOP_KEYS)}", got=what)
    check_text(raw)
    return raw


def check_text(tree, at: str = "") -> None:
    """Every string (key or value) is Unicode text: YAML's "\\ud800" escape makes a lone surrogate,
    which no tokenizer, file or MLflow param can encode (every trial would crash on it)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            check_text(key, at or "space")  # the mapping is blamed: the key itself cannot be printed
            check_text(value, f"{at}.{key}" if at else str(key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            check_text(value, f"{at}[{i}]")
    elif isinstance(tree, str):
        try:
            tree.encode("utf-8")
        except UnicodeEncodeError as err:
            raise field_error(
                at or "space", tree, f"text of Unicode characters (a lone surrogate {tree[err.start]!r} is not one)"
            ) from None


def _load_yaml(text: str, path: Path):
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _count_values(node, MAX_VALUES)
        if size < 0:
            raise UsageError(str(path), None, "a space file", got="a YAML alias that contains itself")
        if size > MAX_VALUES:
            raise UsageError(
                str(path),
                None,
                "a space file",
                got=f"YAML that expands to more than {MAX_VALUES} values (through aliases)",
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def merge(base: dict, over: dict, path: tuple = ()) -> dict:
    """`over` deep-merged onto `base` (see the module docstring for the rules)."""
    out = dict(base)
    for key, value in over.items():
        here = path + (key,)
        # A distribution replaces as a whole: merging {loguniform} with {choice} would mix kinds.
        whole = len(here) == 2 and here[0] == "search"
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and not whole:
            # Onto an empty mapping where the base has none: its nulls delete nothing, and go.
            out[key] = merge(out[key] if isinstance(out.get(key), dict) else {}, value, here)
        else:
            out[key] = value
    return out


def _resolve(path: Path, field: str, ref, chain: tuple[Path, ...] = ()) -> dict:
    """The file's mapping merged over its chain of bases, `base` keys consumed."""
    raw = _read(path, field, ref)
    base_ref = raw.pop("base", None)
    if base_ref is None:
        return raw
    where = f" (in {path})"
    base = _locate(base_ref, "base", path.parent, where)
    seen = chain + (path,)
    if base in seen:
        cycle = " -> ".join(p.name for p in seen + (base,))
        raise field_error("base", base_ref, f"a chain of bases without a cycle ({cycle})")
    return merge(_resolve(base, "base", base_ref, seen), raw)


def _train_fields(raw, section: str) -> dict:
    if not isinstance(raw, dict):
        raise field_error(section, raw, "a mapping of TrainConfig fields")
    for key, value in raw.items():
        check_train_field(section, key, value)
    return raw


def _with_run_defaults(fixed: dict, search: dict) -> dict:
    """`fixed` over TrainConfig's run defaults (the one home of those values), less the searched
    ones: the resolved space names every value a trial runs with, as when the YAML restated them."""
    defaults = {key: value for key, value in run_defaults().items() if key not in search}
    return {**defaults, **fixed}


def parse_space(raw: dict, name: str, source: str) -> SpaceSpec:
    """A resolved mapping (bases already merged) as a validated `SpaceSpec`."""
    check_mapping(raw, "", TOP_KEYS, REQUIRED_KEYS)
    search = {
        key: parse_searched(value, f"search.{key}") for key, value in _train_fields(raw["search"], "search").items()
    }
    fixed = _with_run_defaults(_train_fields(raw.get("fixed", {}), "fixed"), search)
    data = check_mapping(raw["data"], "data", DATA_KEYS, DATA_REQUIRED)
    budget = check_mapping(raw["budget"], "budget", BUDGET_KEYS, BUDGET_KEYS)
    resources = check_mapping(raw["resources"], "resources", RESOURCE_KEYS, RESOURCE_KEYS)
    return SpaceSpec(
        name=name,
        source=source,
        model=raw["model"],
        search=search,
        fixed=fixed,
        data=DataSplit(**data),
        budget=Budget(**budget),
        resources=Resources(**resources),
    )


def load_space(name_or_path: str) -> SpaceSpec:
    """The space `name_or_path` (a shipped name or a YAML path), bases merged and validated."""
    path = _locate(name_or_path, "space", Path.cwd())
    raw = _resolve(path, "space", name_or_path)
    name = path.stem if _is_path(name_or_path) else name_or_path
    return parse_space(raw, name, str(path))
