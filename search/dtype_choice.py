"""One dtype per search: `dtype: auto` resolved once, before the first trial, and recorded.

The trials of a search are compared with each other and with its final report's arms, and bf16
rounds differently from fp32 (equal settings give other tokens), so all of them must run in one
dtype. The driver resolves `auto` here, before trials start:

- an explicit `dtype: float32 | bfloat16` in the space is used as is;
- a resumed search uses the dtype its record holds (`search.json`), never measured again;
- otherwise one Ray task with the trials' resources (CPUs, GPUs, torch threads) asks
  `trainable.dtype_probe.config_dtype` on the kind of node trials run on: bf16 on a CUDA device that has
  it, a measurement on a CPU (`trainable.dtype_probe`, cached per machine and model). A task
  rather than the driver's own process: on a cluster the driver's node is not the trials' kind,
  and locally the task runs with the trials' thread count, which is what the timing depends on.

The concrete dtype replaces `auto` in the space the trials, the distillation and the report are
built from; the record keeps it with its reason, and MLflow's parent run tags both.
"""

from __future__ import annotations

from dataclasses import replace

import ray
import torch

from search.interrupt import wait_for
from search.state import SearchRecord
from search.targets import generation_config
from spaces import SpaceSpec


@ray.remote
def _measure(spec: SpaceSpec) -> tuple[str, str]:
    from trainable.dtype_probe import config_dtype

    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    dtype, reason = config_dtype(generation_config(spec), spec.model)
    return str(dtype).removeprefix("torch."), reason


def search_dtype(spec: SpaceSpec, record: SearchRecord) -> tuple[str, str]:
    """The dtype of every trial and report of this search, and why (Ray must be running)."""
    if record.dtype:
        return record.dtype, record.dtype_reason or "recorded by this search"
    setting = generation_config(spec).dtype
    if setting != "auto":
        return setting, f"set: dtype {setting}"
    task = _measure.options(num_cpus=spec.resources.cpu, num_gpus=spec.resources.gpu)
    (chosen,) = wait_for([task.remote(spec)])  # Ctrl-C cancels the probe at once (search.interrupt)
    return chosen


def with_dtype(spec: SpaceSpec, dtype: str) -> SpaceSpec:
    """The space with its dtype made concrete (the record keeps the space as given: `--resume`
    compares that, so a measured choice never reads as a changed space)."""
    return replace(spec, fixed={**spec.fixed, "dtype": dtype})
