"""Load the frozen causal LM: a hub id, a local directory, or `bundled` (the offline stand-in).

A model is never silently swapped for another: an unreachable hub id is an error that says how
to use `bundled` or a local path. Loaded models are cached per process so that Ray actors reused
across trials (`reuse_actors=True`) load the weights once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from softprompt_cli.errors import UsageError, field_error

BUNDLED = "bundled"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ALLOWED = "`bundled`, a local model directory (with config.json) or a Hugging Face hub id like Qwen/Qwen2.5-Coder-0.5B"


@dataclass(frozen=True)
class ModelRef:
    """A validated model reference: `kind` is bundled | local | hub; `location` is what to load."""

    ref: str
    kind: str
    location: str


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    ref: ModelRef
    # Name + hash etc. recorded in MLflow; the bundled stand-in is never labelled as the hub model.
    identity: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype


def resolve_model_ref(ref: str) -> ModelRef:
    """Check the reference without loading weights (cheap: used by --dry-run and before Ray)."""
    if not isinstance(ref, str) or not ref.strip():
        raise field_error("model", ref, _ALLOWED)
    if ref == BUNDLED:
        return ModelRef(ref, "bundled", BUNDLED)
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise field_error("model", ref, f"{_ALLOWED}; this directory has no config.json")
        return ModelRef(ref, "local", str(path.resolve()))
    looks_like_path = ref.startswith((".", "/", "~")) or ref.count("/") != 1
    if looks_like_path or not _HUB_ID.match(ref):
        raise field_error("model", ref, f"{_ALLOWED}; no such directory")
    return ModelRef(ref, "hub", ref)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dtype_rule(setting: str, device_type: str, cuda_bf16: bool) -> tuple[str, str] | None:
    """The dtype (name) for `setting` (`auto` | `float32` | `bfloat16`) and why, where no
    measurement is needed; None where `auto` must be measured (a CPU: `trainable.dtype_probe.choose_dtype`).

    Results that are compared must not mix dtypes (bf16 rounds differently, so equal settings give
    other tokens): the trials of one search and its final report's arms use the one dtype the
    search resolved before its trials (`search.driver`, recorded in `search.json`), and rescoring
    a search's soft prompt should use the dtype recorded with it (`trained_with.json`)."""
    if setting != "auto":
        return setting, f"set: dtype {setting}"
    if device_type == "cuda":
        if cuda_bf16:
            return "bfloat16", "auto: CUDA device with bf16 support (no probe: bf16 is the GPU's fast path)"
        return "float32", "auto: CUDA device without bf16 support"
    if device_type != "cpu":
        return "float32", f"auto: {device_type} device: fp32 (only CPUs are probed)"
    return None


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux); empty where the file is missing."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on a CPU (nothing to measure on here), bf16 on a CUDA device that has it."""
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    rule = dtype_rule("auto", device.type, cuda_bf16)
    return getattr(torch, rule[0] if rule is not None else "float32")


def _location_and_identity(ref: ModelRef) -> tuple[str, dict]:
    if ref.kind == "bundled":
        from trainable.model.bundled import bundled_checkpoint_dir, bundled_identity

        return str(bundled_checkpoint_dir()), bundled_identity()
    return ref.location, {"name": ref.ref, "kind": ref.kind}


def _from_pretrained(location: str, ref: ModelRef, dtype: torch.dtype):
    # security: never trust_remote_code: a model repo must not run code in our trials.
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, trust_remote_code=False)
    except OSError as exc:
        if ref.kind != "hub":
            raise
        raise UsageError(
            "model",
            ref.ref,
            text=f"got {ref.ref!r}, which could not be loaded from the Hugging Face hub "
            f"(no network or unknown id: {str(exc).splitlines()[0][:160]}); "
            "use --model bundled (offline stand-in) or a local model directory",
        ) from None
    return tokenizer, model


def load_model(
    ref: str | ModelRef, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> LoadedModel:
    """Load tokenizer + frozen model in eval mode; no parameter requires grad."""
    ref = ref if isinstance(ref, ModelRef) else resolve_model_ref(ref)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    location, identity = _location_and_identity(ref)
    tokenizer, model = _from_pretrained(location, ref, dtype)
    model.to(device).eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    identity = {
        **identity,
        "dtype": str(dtype).removeprefix("torch."),
        "device": device.type,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return LoadedModel(model=model, tokenizer=tokenizer, ref=ref, identity=identity)


_CACHE: dict[tuple, LoadedModel] = {}


def cached_model(ref: str, device: str | None = None, dtype: torch.dtype | None = None) -> LoadedModel:
    """Per-process cache: a reused Ray actor runs many trials on one copy of the frozen weights.
    Safe because trials never modify the frozen model (its parameters never require grad)."""
    key = (ref, device, dtype)
    if key not in _CACHE:
        _CACHE.clear()  # one model per process: a second would double memory on a small GPU
        _CACHE[key] = load_model(ref, device, dtype)
    return _CACHE[key]
