"""A search's record in its state dir (`runs/NAME/search.json`): who it is and where it stands.

    {"search_id": "9f1c...", "name": "smoke-20261124-072919", "state": "interrupted",
     "interrupted_by": "SIGINT", "identity": {...}, "budget": {"num_samples": 3, "max_concurrent": 1},
     "mlflow_uri": "sqlite:///.../runs/mlflow.db", "reports": 0,
     "study": {"name": "smoke-20261124-072919", "search_id": "9f1c...", "trials": 3}}

- `search_id` (a uuid) names the search in MLflow; two searches never share one, even with the
  same name.
- `state`: running | interrupted (resumable) | finished | failed.
- `identity`: what the results depend on (the resolved space without its trial budget, and the
  model's identity: path and config hash, or the bundled model's sha256; the sha256 of each
  `adapter:PATH` warm start). `--resume` refuses another one; only the trial budget may change
  (`SAFE_TO_CHANGE`).
- `reports`: how many final reports were committed (a second one only after more trials).
- `study`: the Optuna study the search must find on `--resume` (its name, the search id it is
  stamped with, how many trials it had when the record was last written); `search.study`.
- `dtype`, `dtype_reason`: the one dtype of the search's trials and report (`auto` resolved before
  the first trial, `search.dtype_choice`); `--resume` uses it as it is.

The record is written before Ray starts and rewritten atomically; `search.lock` (flock) is held
by the driver that runs the search, so a second driver cannot resume it at the same time.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spaces import SpaceSpec
from softprompt_cli.errors import UsageError, field_error, shown

RECORD_FILE = "search.json"
LOCK_FILE = "search.lock"
RUNNING, INTERRUPTED, FINISHED, FAILED = "running", "interrupted", "finished", "failed"
SAFE_TO_CHANGE = "--num-samples (more trials) and --max-concurrent"


@dataclass
class SearchRecord:
    name: str
    identity: dict
    num_samples: int
    max_concurrent: int
    mlflow_uri: str
    search_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: str = RUNNING
    interrupted_by: str | None = None
    reports: int = 0
    # The Optuna study it must find on --resume: name, search id, trials (search.study).
    study: dict | None = None
    # The frozen model's dtype for every trial and the report, resolved once (search.dtype_choice).
    dtype: str | None = None
    dtype_reason: str | None = None
    # Whether its MLflow parent run was started with its params (a search stopped before that,
    # e.g. during the dtype probe, starts it on --resume); True for records older than the field.
    parent_logged: bool = True
    # The code it ran: at its start, then at each resume that ran other code (search.provenance.code).
    code: list = field(default_factory=list)

    def note_code(self, now: dict) -> None:
        """Keep `now` (git sha, dirty flag, command) if it is the first or its code differs from
        the last kept (a resume's other command alone is not other code)."""
        commit = lambda code: (code["git_sha"], code["git_dirty"])  # noqa: E731 - named for reading
        if not self.code or commit(self.code[-1]) != commit(now):
            self.code.append(now)

    def save(self, state_dir: Path) -> None:
        # A killed driver must leave the old record or the new one, never half of either.
        path = Path(state_dir) / RECORD_FILE
        tmp = path.with_name(f".{RECORD_FILE}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, default=str))
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> "SearchRecord | None":
        path = Path(state_dir) / RECORD_FILE
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise field_error("--name", Path(state_dir).name, f"a search with a readable {path} ({exc})") from None


def model_identity(ref: str) -> dict:
    """The model as the results depend on it; cheap (no weights are read)."""
    from trainable.model.loading import resolve_model_ref

    model = resolve_model_ref(ref)
    if model.kind == "bundled":
        from trainable.model.bundled import bundled_identity

        return {"kind": "bundled", "name": bundled_identity()["name"], "sha256": bundled_identity()["sha256"]}
    if model.kind == "hub":
        return {"kind": "hub", "name": model.location}
    folder = Path(model.location)
    weights = {
        p.name: p.stat().st_size
        for p in sorted(folder.iterdir())
        if p.suffix in (".safetensors", ".bin", ".gguf", ".pt")
    }
    return {
        "kind": "local",
        "path": str(folder),
        "config_sha256": hashlib.sha256((folder / "config.json").read_bytes()).hexdigest(),
        "weight_bytes": weights,
    }


def identity(spec: SpaceSpec) -> dict:
    """The resolved space minus what may change on --resume (and minus its file name), with the
    model reference replaced by the model's identity."""
    space = spec.to_dict()
    for key in ("name", "source", "model"):
        space.pop(key)
    for key in ("num_samples", "max_concurrent"):
        space["budget"].pop(key)
    warm = warm_start_identity(space)
    return json.loads(
        json.dumps(
            {"model": model_identity(spec.model), **space, **({"warm_starts": warm} if warm else {})}, default=str
        )
    )


def warm_start_identity(tree) -> dict:
    """sha256 of each `adapter:PATH` soft prompt the space starts trials from: a warm start whose
    files changed would resume the remaining trials from another starting point."""
    from trainable.config import ADAPTER_PREFIX, adapter_path

    if isinstance(tree, dict):
        return {k: v for value in tree.values() for k, v in warm_start_identity(value).items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for value in tree for k, v in warm_start_identity(value).items()}
    if not (isinstance(tree, str) and tree.startswith(ADAPTER_PREFIX)):
        return {}
    folder, digest = Path(adapter_path(tree)), hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else ():
        digest.update(str(file.relative_to(folder)).encode() + b"\0" + file.read_bytes())
    return {adapter_path(tree): digest.hexdigest()}


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _model_label(model: dict) -> str:
    return {"local": model.get("path"), "hub": model.get("name")}.get(model.get("kind"), model.get("kind"))


def differences(old: dict, new: dict) -> list[str]:
    """`key old -> new` for each value that differs; the model as one entry."""
    out = []
    if old.get("model") != new.get("model"):
        a, b = old.get("model", {}), new.get("model", {})
        same_name = _model_label(a) == _model_label(b)
        detail = " (its files changed)" if same_name else ""
        out.append(f"model {shown(_model_label(a))} -> {shown(_model_label(b))}{detail}")
    a, b = _flat({k: v for k, v in old.items() if k != "model"}), _flat({k: v for k, v in new.items() if k != "model"})
    return out + [
        f"{key} {shown(a.get(key, '(none)'))} -> {shown(b.get(key, '(none)'))}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def check_resumable(record: SearchRecord, spec: SpaceSpec, mlflow_uri: str) -> None:
    """One line naming what differs, if --resume would change what the results mean."""
    changed = differences(record.identity, identity(spec))
    if changed:
        raise UsageError(
            "--resume",
            None,
            f"the same space and model; only {SAFE_TO_CHANGE} may change on --resume",
            got=f"a different search than {record.name!r} was started with "
            f"({'; '.join(changed[:4])}{'; ...' if len(changed) > 4 else ''})",
        )
    if spec.budget.num_samples < record.num_samples:
        raise field_error(
            "--num-samples",
            spec.budget.num_samples,
            f"at least {record.num_samples} (the trials search {record.name!r} was started with)",
        )
    if mlflow_uri != record.mlflow_uri:
        raise field_error(
            "--mlflow-uri", mlflow_uri, f"{record.mlflow_uri} (where search {record.name!r} logs; runs are not moved)"
        )


WATCHER_WAIT_S = 60.0  # how long a driver waits for a watcher to finish recording (search.watcher)


class SearchLock:
    """flock on `search.lock`, held while a driver runs the search; released by the kernel when
    the driver dies, however it dies. (Python opens files close-on-exec: Ray's processes do not
    inherit it.)"""

    def __init__(self, state_dir: Path, holder: str | None = None):
        self.path = Path(state_dir) / LOCK_FILE
        self.holder = holder or str(os.getpid())  # a driver's pid, or "watcher PID"
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; a watcher recording a dead driver's search (search.watcher) holds it
        for a few seconds, which is waited for."""
        deadline = time.monotonic() + WATCHER_WAIT_S
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
            if not holder.startswith("watcher") or time.monotonic() > deadline:
                raise field_error(
                    "--name",
                    self.path.parent.name,
                    f"a search that is not running now (driver pid {holder} holds {self.path})",
                ) from None
            time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.holder.encode(), 0)
        self.fd = fd

    def _holder(self) -> str | None:
        """Who holds the lock now (a driver's pid, or "watcher PID"), or None."""
        return (self.path.read_text(errors="replace").strip() or "?") if self.held_elsewhere() else None

    def held_by_driver(self) -> bool:
        """True if a driver (not a watcher) holds the lock now."""
        holder = self._holder()
        return holder is not None and not holder.startswith("watcher")

    def wait_for_watcher(self) -> None:
        """Return once no watcher holds the lock (it records a dead driver's search in seconds;
        search.watcher), or after WATCHER_WAIT_S."""
        deadline = time.monotonic() + WATCHER_WAIT_S
        while (holder := self._holder()) is not None and holder.startswith("watcher"):
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)

    def held_elsewhere(self) -> bool:
        """True if another driver holds the lock (checked without taking it for long)."""
        if not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
