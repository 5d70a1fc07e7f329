"""The frozen model: where it comes from, in which dtype, loaded once per process.

Public surface (re-exported from loading.py): `load_model`, `cached_model`, `LoadedModel`,
`ModelRef`, `resolve_model_ref`, `config_dtype`, `choose_dtype`, `cpu_flags`.

Modules with their own command line: bundled.py (`python -m trainable.model.bundled`: the
offline stand-in for Qwen2.5-Coder-0.5B), tiny.py (`python -m trainable.model.tiny DIR`: the tiny
random model the tests use), dtype_probe.py (`python -m trainable.model.dtype_probe`: bf16 or
fp32, measured on this machine). Internal: files.py (a model directory checked without loading).
"""

from trainable.model.loading import (
    LoadedModel,
    ModelRef,
    cached_model,
    choose_dtype,
    config_dtype,
    cpu_flags,
    load_model,
    resolve_model_ref,
)

__all__ = [
    "LoadedModel",
    "ModelRef",
    "cached_model",
    "choose_dtype",
    "config_dtype",
    "cpu_flags",
    "load_model",
    "resolve_model_ref",
]
