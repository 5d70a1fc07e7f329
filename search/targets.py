"""Training targets before the first trial: for a train source without solutions (MBPP), the
frozen model's self-verified completions (`trainable.distill`), made once per search by a Ray
task with a trial's resources, or found in the cache (or the space's pinned file). Trials get
them as a parameter, so a trial on any node trains on the same targets.
"""

from __future__ import annotations

import ray
import torch

from search import mlflow_ops as ops
from search.interrupt import wait_for
from search.tracking import PARENT, MlflowLedger
from spaces import SpaceSpec
from trainable.config import TrainConfig
from trainable.distill import DistillReport


def generation_config(spec: SpaceSpec) -> TrainConfig:
    """The fixed generation settings (a searched one falls back to its default)."""
    return TrainConfig.from_dict({**spec.fixed, "epochs": spec.budget.max_epochs})


@ray.remote
def _distill(spec: SpaceSpec, engine_handle) -> tuple[dict, DistillReport]:
    from search.engine_service import RemoteEngine
    from trainable.data.splits import problems_for
    from trainable.distill import ensure_targets

    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    problems = problems_for("train", spec.data)
    engine = RemoteEngine(engine_handle)  # the model the trials will share decodes the candidates
    return ensure_targets(spec.model, problems, spec.data.distill, generation_config(spec), engine)


class NoTargets(RuntimeError):
    """Not one training problem has a passing target: there is nothing to train on."""


def prepare_targets(spec: SpaceSpec, ledger: MlflowLedger, engines: list) -> tuple[dict | None, DistillReport | None]:
    """(None, None) when train has solutions; else the targets and the yield (printed, logged).
    A Ray task with a trial's CPUs reads or distils them; the first of `engines`
    (search.engine_service) generates the candidates."""
    if not spec.data.needs_targets():
        return None, None
    resources = {"num_cpus": spec.resources.cpu}
    train = spec.data.train
    print(f"training targets for {train.n} {train.source} problems: a Ray task reads or distils them", flush=True)
    [(targets, report)] = wait_for([_distill.options(**resources).remote(spec, engines[0][0])])
    print(report.line(), flush=True)
    settings = {f"distill.{k}": v for k, v in spec.data.distill.sampling().items()}
    ledger.submit(ops.Params(PARENT, settings))
    ledger.submit(ops.Tags(PARENT, {"distill.cache": report.cache, "distill.dtype": report.dtype}))
    ledger.submit(
        ops.Metrics(
            PARENT,
            {
                "distill_problems": report.problems,
                "distill_with_target": report.with_target,
                "distill_targets": report.targets,
                "distill_skipped": report.skipped,
                "distill_seconds": report.seconds,
            },
        )
    )
    if not report.with_target:
        raise NoTargets(
            f"no training problem has a passing target (0 of {report.problems}): the model solved "
            "none of them, so there is nothing to train on; try more data.distill.samples or "
            "another data.train"
        )
    return targets, report
