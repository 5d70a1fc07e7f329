"""The MLflow writes of a search, one typed operation each, checked where it is built.

A ledger (`search/tracking.py`) queues these and sends them in order. A malformed write (a
metric that is not a number, an unknown end status, a tag value that is a list) raises
`ValueError` naming the field where the caller builds it, not minutes later when it is sent.

On disk (the ledger's backlog, which `--resume` sends) each operation is the JSON list it has
always been, `[kind, key, *args]` (e.g. `["tags", "parent", {"search_state": "running"}]`):
`from_list` reads the backlog of any saved search.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field

PARENT = "parent"  # the key of a search's parent run; a trial's run is keyed `optuna-<number>`
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
# MLflow renders this tag as a run's description (the run page's "Description").
DESCRIPTION_TAG = "mlflow.note.content"


def _bad(name: str, value, allowed: str) -> ValueError:
    return ValueError(f"{name}: got {value!r:.80}, expected {allowed}")


def _key(key) -> str:
    if not isinstance(key, str) or not key:
        raise _bad("key", key, "a run's key (a non-empty string)")
    return key


def _scalar(name: str, value):
    """A value MLflow stores as text, in a form JSON keeps (numpy's numbers become Python's)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise _bad(name, value, "a string, number, bool or None")


def _mapping(what: str, values, convert) -> dict:
    if not isinstance(values, dict):
        raise _bad(what, values, "a dict of name -> value")
    out = {}
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise _bad(f"{what} name", name, "a non-empty string")
        out[name] = convert(f"{what}.{name}", value)
    return out


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(name, value, "a number")
    return float(value)


class _Op:
    kind = ""

    def __post_init__(self):
        object.__setattr__(self, "key", _key(self.key))

    def args(self) -> list:
        return []

    def to_list(self) -> list:
        return [self.kind, self.key, *self.args()]


@dataclass(frozen=True)
class Start(_Op):
    """The run of `key` RUNNING again (after an interruption or failure), its old reason gone."""

    key: str
    kind = "start"


@dataclass(frozen=True)
class Params(_Op):
    """Params (fixed once logged: MLflow refuses a changed one)."""

    key: str
    values: dict
    kind = "params"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "values", _mapping("params", self.values, _scalar))

    def args(self) -> list:
        return [self.values]


@dataclass(frozen=True)
class Tags(_Op):
    """Tags (a later write replaces them); `mlflow.note.content` is the run's description."""

    key: str
    values: dict
    kind = "tags"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "values", _mapping("tags", self.values, _scalar))

    def args(self) -> list:
        return [self.values]


@dataclass(frozen=True)
class Metrics(_Op):
    """Metrics at one step, sent as one batch."""

    key: str
    values: dict
    step: int = 0
    kind = "metrics"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "values", _mapping("metrics", self.values, _number))
        if isinstance(self.step, bool) or not isinstance(self.step, numbers.Integral) or self.step < 0:
            raise _bad("step", self.step, "an integer >= 0")
        object.__setattr__(self, "step", int(self.step))

    def args(self) -> list:
        return [self.values, self.step]


@dataclass(frozen=True)
class Artifacts(_Op):
    """The files under `local_dir` into the run's `artifact_path` (nothing if it is gone)."""

    key: str
    local_dir: str
    artifact_path: str
    kind = "artifacts"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "local_dir", str(self.local_dir))  # a Path is welcome
        if not self.local_dir:
            raise _bad("local_dir", self.local_dir, "a directory")
        if not isinstance(self.artifact_path, str) or not self.artifact_path:
            raise _bad("artifact_path", self.artifact_path, "a non-empty string")

    def args(self) -> list:
        return [self.local_dir, self.artifact_path]


@dataclass(frozen=True)
class End(_Op):
    """The run ends with `status`."""

    key: str
    status: str
    kind = "end"

    def __post_init__(self):
        super().__post_init__()
        if self.status not in END_STATUSES:
            raise _bad("status", self.status, " | ".join(END_STATUSES))

    def args(self) -> list:
        return [self.status]


@dataclass(frozen=True)
class Interrupted(_Op):
    """Every run of the search still RUNNING becomes KILLED, with `reason`."""

    reason: str
    key: str = field(default=PARENT)
    kind = "interrupted"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.reason, str) or not self.reason:
            raise _bad("reason", self.reason, "a non-empty string")

    def args(self) -> list:
        return [self.reason]


@dataclass(frozen=True)
class View(_Op):
    """The search's shared view of MLflow's runs page (`tracking.search_view`)."""

    view: dict
    key: str = field(default=PARENT)
    kind = "view"

    def __post_init__(self):
        super().__post_init__()
        try:
            json.dumps(self.view)
        except (TypeError, ValueError) as exc:
            raise _bad("view", self.view, f"a JSON object ({exc})") from None
        if not isinstance(self.view, dict):
            raise _bad("view", self.view, "a JSON object")

    def args(self) -> list:
        return [self.view]


Op = Start | Params | Tags | Metrics | Artifacts | End | Interrupted | View
KINDS = {cls.kind: cls for cls in (Start, Params, Tags, Metrics, Artifacts, End, Interrupted, View)}


def from_list(raw) -> Op:
    """An operation from its on-disk form `[kind, key, *args]`; ValueError if it is none."""
    if not isinstance(raw, list) or len(raw) < 2 or raw[0] not in KINDS:
        raise _bad("operation", raw, f"[kind, key, ...] with kind one of {', '.join(KINDS)}")
    kind, key, *args = raw
    cls = KINDS[kind]
    try:
        if cls in (Interrupted, View):
            return cls(*args, key=key)
        return cls(key, *args)
    except TypeError as exc:  # the wrong number of arguments for its kind
        raise _bad("operation", raw, f"the arguments of {kind!r} ({exc})") from None
