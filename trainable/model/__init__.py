"""The frozen model: where it comes from, in which dtype, loaded once per process.

Public surface (re-exported from loading.py): `load_model`, `cached_model`, `LoadedModel`,
`ModelRef`, `resolve_model_ref`, `dtype_rule`, `cpu_flags`. Choosing `auto` where it must
be measured (a CPU) happens above this package: `trainable.dtype_probe.choose_dtype`.

With its own command line: bundled.py (`python -m trainable.model.bundled`: the offline
stand-in for Qwen2.5-Coder-0.5B). Internal: files.py (a model directory checked without loading
it). The tiny random model the tests use is built above (`trainable.tiny`: its tokenizer learns
from HumanEval's text).
"""

from trainable.model.loading import (
    LoadedModel,
    ModelRef,
    cached_model,
    cpu_flags,
    dtype_rule,
    load_model,
    resolve_model_ref,
)

__all__ = [
    "LoadedModel",
    "ModelRef",
    "cached_model",
    "cpu_flags",
    "dtype_rule",
    "load_model",
    "resolve_model_ref",
]
