"""The end of a search: score the best soft prompt and the frozen baseline on the test split.

Test is read here only, after the search has chosen on val. The lift comes with a 95% paired
bootstrap confidence interval over test problems (the same problems for both arms).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch

from spaces import SpaceSpec
from trainable.adapter import AdapterInfo
from trainable.data import problems_for
from trainable.errors import shown
from trainable.trial import ADAPTER_DIR


def paired_bootstrap_ci(treated: list[bool], baseline: list[bool], resamples: int = 10_000,
                        level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Lift in pass@1 (treated - baseline) and its percentile bootstrap interval."""
    a, b = np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError("paired samples must be non-empty and of equal length")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(a), size=(resamples, len(a)))
    lifts = a[index].mean(1) - b[index].mean(1)
    tail = (1 - level) / 2 * 100
    return float(a.mean() - b.mean()), float(np.percentile(lifts, tail)), float(np.percentile(lifts, 100 - tail))


@ray.remote
def _score_test(spec: SpaceSpec, params: dict, prompt: tuple[AdapterInfo, torch.Tensor] | None) -> list[dict]:
    from trainable.evaluation import evaluate_problems
    from trainable.model import cached_model
    from trainable.softprompt import prompt_input

    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    config = spec.train_config(params)  # evaluation settings are the trials' own
    loaded = cached_model(spec.model)
    soft = None
    if prompt is not None:  # the saved adapter's output, as the trial used it (any method)
        info, output = prompt
        soft = prompt_input(info.method, output.to(loaded.device), info.num_layers, info.num_attention_heads)
    result = evaluate_problems(loaded, problems_for("test", spec.data), soft, config.max_new_tokens,
                               config.eval_batch_size, config.sandbox_timeout_s)
    return result.samples


def best_by_method(results, params_of) -> dict[str, tuple[float, int]]:
    """Best val pass@1 any epoch reached, and the number of trials, per method: which kind of soft
    prompt did best (on val; test scores only the overall best)."""
    out: dict[str, tuple[float, int]] = {}
    for result in results:
        if result.config is None or result.metrics_dataframe is None or "pass@1" not in result.metrics_dataframe:
            continue
        method = params_of(result.config)["method"]
        best, count = out.get(method, (0.0, 0))
        out[method] = (max(best, float(result.metrics_dataframe["pass@1"].max())), count + 1)
    return dict(sorted(out.items(), key=lambda item: -item[1][0]))


@dataclass
class FinalReport:
    best_trial_id: str
    best_params: dict
    best_val_pass_at_1: float
    best_epoch: int
    test_best: list[dict] = field(default_factory=list)
    test_baseline: list[dict] = field(default_factory=list)
    by_method: dict[str, tuple[float, int]] = field(default_factory=dict)  # best_by_method()

    @staticmethod
    def rate(samples: list[dict]) -> float:
        return sum(s["passed"] for s in samples) / len(samples) if samples else 0.0

    def lift(self) -> tuple[float, float, float]:
        by_task = {s["task_id"]: s["passed"] for s in self.test_baseline}
        treated = [s["passed"] for s in self.test_best]
        return paired_bootstrap_ci(treated, [by_task[s["task_id"]] for s in self.test_best])

    def metrics(self) -> dict:
        lift, low, high = self.lift()
        per_method = {f"best_val_pass_at_1.{method}": best for method, (best, _) in self.by_method.items()}
        return {"best_val_pass_at_1": self.best_val_pass_at_1, "test_pass_at_1_best": self.rate(self.test_best),
                "test_pass_at_1_baseline": self.rate(self.test_baseline), "lift": lift,
                "lift_ci95_low": low, "lift_ci95_high": high, "test_n": len(self.test_best), **per_method}


def score_best_and_baseline(spec: SpaceSpec, best_params: dict, checkpoint_dir: str) -> tuple[list, list]:
    from trainable.softprompt import load_prompt

    resources = {"num_cpus": spec.resources.cpu, "num_gpus": spec.resources.gpu}
    prompt = load_prompt(Path(checkpoint_dir) / ADAPTER_DIR, "best_adapter")
    best = _score_test.options(**resources).remote(spec, best_params, prompt)
    baseline = _score_test.options(**resources).remote(spec, best_params, None)
    return ray.get(best), ray.get(baseline)


def copy_adapter(checkpoint_dir: str, out_dir: Path) -> Path:
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(Path(checkpoint_dir) / ADAPTER_DIR, out_dir)
    return out_dir


def summary_lines(report: FinalReport, counts: dict, seconds: float, adapter: Path, mlflow_where: str) -> list[str]:
    m = report.metrics()
    n = m["test_n"]
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={shown(v)}" for k, v in report.best_params.items())
    per_method = ", ".join(f"{method} {best:.3f} ({count} trial{'s' * (count != 1)})"
                           for method, (best, count) in report.by_method.items())
    methods = [f"methods       {per_method}  (best val pass@1 per method)"] if len(report.by_method) > 1 else []
    return [
        f"== search finished in {seconds:.0f} s: {counts.get('total', 0)} trials "
        f"({counts.get('COMPLETED', 0)} completed, {counts.get('PRUNED', 0)} stopped early by ASHA, "
        f"{counts.get('FAILED', 0)} failed)",
        f"best trial    {report.best_trial_id} (epoch {report.best_epoch}): {params}",
        f"val pass@1    {m['best_val_pass_at_1']:.3f}",
        *methods,
        f"test pass@1   {m['test_pass_at_1_best']:.3f} ({round(m['test_pass_at_1_best'] * n)}/{n})  with the soft prompt",
        f"baseline      {m['test_pass_at_1_baseline']:.3f} ({round(m['test_pass_at_1_baseline'] * n)}/{n})  frozen model, no soft prompt",
        f"lift          {m['lift']:+.3f}  95% CI [{m['lift_ci95_low']:+.3f}, {m['lift_ci95_high']:+.3f}] "
        f"(paired bootstrap over {n} test problems)",
        f"adapter       {adapter}",
        f"mlflow        {mlflow_where}",
    ]


def save_plots(study_name: str, storage_url: str, out_dir: Path) -> list[Path]:
    """Optimization history, parameter importance, parallel coordinates as PNGs (best effort:
    importance needs at least two finished trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as ovm

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the plots are "experimental"
    warnings.simplefilter("ignore", UserWarning)  # matplotlib on flat axes (all trials tied)
    written = []
    for name, plot in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances),
                       ("parallel_coordinate", ovm.plot_parallel_coordinate)):
        try:
            ax = plot(study)
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            figure.savefig(out_dir / f"{name}.png", dpi=100, bbox_inches="tight")
            written.append(out_dir / f"{name}.png")
        except Exception as exc:  # too few trials for importance, etc.: say so, keep the rest
            print(f"plot {name} skipped: {str(exc).splitlines()[0][:120]}")
    return written
