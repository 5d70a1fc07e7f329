"""The end of a search: three arms on the test split - the best soft prompt, the frozen model
(no prompt) and the best hard prompt (chosen on val, `search.baselines`).

Test is read here only, after the search has chosen on val. Test may hold several benchmarks
(`data.test` as a list: e.g. HumanEval and MBPP). Each benchmark gets its own rows: pass@1 per
arm, each lift of the soft prompt with a 95% paired bootstrap confidence interval over its
problems (the same problems for every arm) and the counts of problems one arm solves and the other
does not; the pooled lift over every test problem has a bootstrap stratified by benchmark (each
resample keeps every benchmark's size), which is the plain paired bootstrap for one benchmark.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch

from search.interrupt import wait_for
from search.baselines import HardBaseline, HardPrompt, candidates, choose_and_test, hard_arms, rate, texts_of
from spaces import SpaceSpec
from trainable.adapter import AdapterInfo
from trainable.data.splits import problems_for, source_of
from softprompt_cli.errors import shown
from trainable.checkpoint import adapter_dir


def paired_bootstrap_ci(
    treated: list[bool],
    baseline: list[bool],
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
    strata: list[str] | None = None,
) -> tuple[float, float, float]:
    """Lift in pass@1 (treated - baseline) over all problems and its percentile bootstrap
    interval; with `strata` (a label per problem) each resample draws every stratum's own
    problems, as many as it has."""
    a, b = np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float)
    if len(a) != len(b) or len(a) == 0 or (strata is not None and len(strata) != len(a)):
        raise ValueError("paired samples (and strata) must be non-empty and of equal length")
    rng = np.random.default_rng(seed)
    labels = np.asarray(strata if strata is not None else [""] * len(a))
    groups = [np.flatnonzero(labels == label) for label in dict.fromkeys(labels.tolist())]
    index = np.concatenate([g[rng.integers(0, len(g), size=(resamples, len(g)))] for g in groups], axis=1)
    lifts = a[index].mean(1) - b[index].mean(1)
    tail = (1 - level) / 2 * 100
    return float(a.mean() - b.mean()), float(np.percentile(lifts, tail)), float(np.percentile(lifts, 100 - tail))


@ray.remote
def _score_arms(
    spec: SpaceSpec, params: dict, prompt: tuple[AdapterInfo, torch.Tensor], example: HardPrompt | None, engine_handle
) -> tuple[list[dict], list[dict], HardBaseline | None, list[dict]]:
    """The test samples of the soft prompt and of the frozen model, the hard-prompt baseline and
    the frozen model's val samples, from the search's engine. One decode serves the soft prompt and
    the frozen model on test, the frozen model on val and every hard-prompt candidate on val
    (`evaluate_arms`: each row's tokens are those of its arm alone); a second scores the
    candidate chosen on val on test."""
    from search.engine_service import RemoteEngine
    from trainable.decoding.generate_and_score import evaluate_arms
    from trainable.softprompt import prompt_input

    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    config = spec.train_config(params)  # evaluation settings are the trials' own
    engine = RemoteEngine(engine_handle)
    info, output = prompt  # the saved adapter's output, as the trial used it (any method)
    soft = prompt_input(info.method, output, info.num_layers, info.num_attention_heads)
    test, val = problems_for("test", spec.data), problems_for("val", spec.data)
    hard = candidates(texts_of(spec.search, spec.fixed), example)
    arms = {"soft_prompt": (test, soft), "frozen": (test, None), "frozen_val": (val, None)}
    scored = evaluate_arms(
        engine,
        {**arms, **hard_arms(engine, hard, val)},
        config.max_new_tokens,
        config.eval_batch_size,
        config.sandbox_timeout_s,
    )
    chosen = choose_and_test(engine, hard, {h.label: scored[h.label].samples for h in hard}, test, config)
    return scored["soft_prompt"].samples, scored["frozen"].samples, chosen, scored["frozen_val"].samples


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
class Comparison:
    """The soft prompt against another arm on the same test problems."""

    other: str
    lift: float
    ci95_low: float
    ci95_high: float
    only_soft: int  # problems the soft prompt solves and the other arm does not
    only_other: int

    @classmethod
    def of(cls, other: str, soft: list[dict], samples: list[dict], stratified: bool = False) -> "Comparison":
        """`stratified`: resample within each benchmark (the pooled lift over several)."""
        by_task = {s["task_id"]: bool(s["passed"]) for s in samples}
        treated = [bool(s["passed"]) for s in soft]
        paired = [by_task[s["task_id"]] for s in soft]
        strata = [source_of(s["task_id"]) for s in soft] if stratified else None
        lift, low, high = paired_bootstrap_ci(treated, paired, strata=strata)
        return cls(
            other,
            lift,
            low,
            high,
            sum(a and not b for a, b in zip(treated, paired)),
            sum(b and not a for a, b in zip(treated, paired)),
        )


@dataclass
class FinalReport:
    best_trial_id: str
    best_params: dict
    best_val_pass_at_1: float
    best_epoch: int
    test_best: list[dict] = field(default_factory=list)
    test_baseline: list[dict] = field(default_factory=list)
    hard: HardBaseline | None = None  # None: no text init in the space and no worked example
    by_method: dict[str, tuple[float, int]] = field(default_factory=dict)  # best_by_method()
    frozen_val: list[dict] = field(default_factory=list)  # the frozen model on val: the trials' reference

    rate = staticmethod(rate)

    def __post_init__(self):
        # Each benchmark's comparisons, bootstrapped once (10,000 resamples each; the arms never change).
        self._compared: dict[str | None, list[Comparison]] = {}

    def arms(self, benchmark: str | None = None) -> dict[str, list[dict]]:
        """Each arm's test samples: every benchmark's, or one benchmark's."""
        arms = {"soft_prompt": self.test_best, "frozen": self.test_baseline}
        if self.hard is not None:
            arms["hard_prompt"] = self.hard.test_samples
        if benchmark is None:
            return arms
        return {name: [s for s in samples if source_of(s["task_id"]) == benchmark] for name, samples in arms.items()}

    def benchmarks(self) -> list[str]:
        """The test benchmarks (sources), in the order the test split lists them."""
        return list(dict.fromkeys(source_of(s["task_id"]) for s in self.test_best))

    def comparisons(self, benchmark: str | None = None) -> list[Comparison]:
        """The soft prompt against each other arm: pooled over every benchmark (stratified), or one's."""
        if benchmark not in self._compared:
            arms = self.arms(benchmark)
            self._compared[benchmark] = [
                Comparison.of(name, arms["soft_prompt"], samples, stratified=benchmark is None)
                for name, samples in arms.items()
                if name != "soft_prompt"
            ]
        return self._compared[benchmark]

    def lift(self) -> tuple[float, float, float]:
        c = self.comparisons()[0]
        return c.lift, c.ci95_low, c.ci95_high

    def metrics(self) -> dict:
        """Numbers for MLflow's parent run (names without '@'); the first seven as before."""
        lift, low, high = self.lift()
        out = {
            "best_val_pass_at_1": self.best_val_pass_at_1,
            "test_pass_at_1_best": self.rate(self.test_best),
            "test_pass_at_1_baseline": self.rate(self.test_baseline),
            "lift": lift,
            "lift_ci95_low": low,
            "lift_ci95_high": high,
            "test_n": len(self.test_best),
        }
        out.update({f"best_val_pass_at_1.{method}": best for method, (best, _) in self.by_method.items()})
        if self.frozen_val:
            out["val_pass_at_1_frozen"] = self.rate(self.frozen_val)
        if len(self.benchmarks()) > 1:
            for benchmark in self.benchmarks():
                arms = self.arms(benchmark)
                out.update({f"test_pass_at_1.{name}.{benchmark}": self.rate(s) for name, s in arms.items()})
                for c in self.comparisons(benchmark):
                    out.update(
                        {
                            f"lift_vs_{c.other}.{benchmark}": c.lift,
                            f"lift_vs_{c.other}_ci95_low.{benchmark}": c.ci95_low,
                            f"lift_vs_{c.other}_ci95_high.{benchmark}": c.ci95_high,
                        }
                    )
        for c in self.comparisons():
            out[f"solved_only_by_soft_prompt_vs_{c.other}"] = c.only_soft
            out[f"solved_only_by_{c.other}"] = c.only_other
        if self.hard is not None:
            hard = next(c for c in self.comparisons() if c.other == "hard_prompt")
            out.update(
                {
                    "test_pass_at_1_hard_prompt": self.rate(self.hard.test_samples),
                    "val_pass_at_1_hard_prompt": self.hard.val_pass_at_1[self.hard.chosen.label],
                    "lift_vs_hard_prompt": hard.lift,
                    "lift_vs_hard_prompt_ci95_low": hard.ci95_low,
                    "lift_vs_hard_prompt_ci95_high": hard.ci95_high,
                }
            )
            out.update({f"val_pass_at_1_hard.{label}": v for label, v in self.hard.val_pass_at_1.items()})
        return out

    def to_dict(self) -> dict:
        """Everything, for report/final_report.json (RESULTS.md is written from it)."""
        hard = None
        if self.hard is not None:
            hard = {
                "text": self.hard.chosen.text,
                "form": self.hard.chosen.form,
                "label": self.hard.chosen.label,
                "example_id": self.hard.chosen.example_id,
                "described": self.hard.chosen.describe(),
                "val_pass_at_1": self.hard.val_pass_at_1,
                "candidates": self.hard.descriptions,
            }

        def tally(arms: dict[str, list[dict]]) -> dict:
            return {
                name: {"pass_at_1": self.rate(samples), "passed": sum(s["passed"] for s in samples), "n": len(samples)}
                for name, samples in arms.items()
            }

        return {
            "best_trial_id": self.best_trial_id,
            "best_params": self.best_params,
            "best_val_pass_at_1": self.best_val_pass_at_1,
            "best_epoch": self.best_epoch,
            "frozen_val_pass_at_1": self.rate(self.frozen_val) if self.frozen_val else None,
            "test": tally(self.arms()),  # pooled over every benchmark
            "comparisons": [asdict(c) for c in self.comparisons()],
            "benchmarks": {
                benchmark: {
                    "test": tally(self.arms(benchmark)),
                    "comparisons": [asdict(c) for c in self.comparisons(benchmark)],
                }
                for benchmark in self.benchmarks()
            },
            "hard_prompt": hard,
            "by_method": {
                method: {"best_val_pass_at_1": best, "trials": count}
                for method, (best, count) in self.by_method.items()
            },
            "metrics": self.metrics(),
        }


def score_arms(
    spec: SpaceSpec, best_params: dict, checkpoint_dir: str, example: HardPrompt | None, engines: list
) -> tuple[list, list, HardBaseline | None, list]:
    """Test samples of the soft prompt and the frozen model, the hard-prompt baseline (`example`:
    the one-shot candidate, `search.baselines.one_shot`) and the frozen model's val samples: one
    Ray task with a trial's CPUs, served by the first of the search's `engines`
    (search.engine_service), the model the trials used (`_score_arms`)."""
    from trainable.softprompt import load_prompt

    prompt = load_prompt(adapter_dir(checkpoint_dir), "best_adapter")
    task = _score_arms.options(num_cpus=spec.resources.cpu).remote(spec, best_params, prompt, example, engines[0][0])
    (scored,) = wait_for([task])  # a signal cancels it
    return scored


def copy_adapter(checkpoint_dir: str, out_dir: Path) -> Path:
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(adapter_dir(checkpoint_dir), out_dir)
    return out_dir


def _passed(samples: list[dict]) -> str:
    return f"{rate(samples):.3f} ({sum(s['passed'] for s in samples)}/{len(samples)})"


def _comparison_line(label: str, c: Comparison, other: str) -> str:
    return (
        f"{label:<14}{c.lift:+.3f}  95% CI [{c.ci95_low:+.3f}, {c.ci95_high:+.3f}] over {other}; "
        f"solved only by the soft prompt {c.only_soft}, only by {other} {c.only_other}"
    )


ARM_NAMES = {"frozen": "the frozen model", "hard_prompt": "the hard prompt"}  # as the summary names them


def _lift_lines(comparisons: list[Comparison]) -> list[str]:
    return [
        _comparison_line("lift" if c.other == "frozen" else "lift vs hard", c, ARM_NAMES[c.other]) for c in comparisons
    ]


def _benchmark_arm_lines(report: FinalReport, benchmark: str | None) -> list[str]:
    arms = report.arms(benchmark)
    lines = [
        f"test pass@1   {_passed(arms['soft_prompt'])}  with the soft prompt",
        f"baseline      {_passed(arms['frozen'])}  frozen model, no soft prompt",
    ]
    if report.hard is not None:
        chosen = report.hard.chosen
        lines.append(
            f"hard prompt   {_passed(arms['hard_prompt'])}  {chosen.describe()} "
            f"(best of {len(report.hard.val_pass_at_1)} on val: "
            f"{report.hard.val_pass_at_1[chosen.label]:.3f})"
        )
    else:
        lines.append("hard prompt   none: no text init in the space and no worked example in train")
    return lines + _lift_lines(report.comparisons(benchmark))


def arm_lines(report: FinalReport) -> list[str]:
    """The three arms on test and the lifts, per benchmark and pooled: the console summary's
    middle (and the README's)."""
    benchmarks = report.benchmarks()
    if len(benchmarks) == 1:
        n = len(report.test_best)
        return _benchmark_arm_lines(report, None) + [f"              (paired bootstrap over {n} test problems)"]
    lines = []
    for benchmark in benchmarks:
        n = len(report.arms(benchmark)["soft_prompt"])
        lines += [f"-- {benchmark} ({n} test problems, paired bootstrap)", *_benchmark_arm_lines(report, benchmark)]
    lines.append(f"-- pooled ({len(report.test_best)} test problems, bootstrap stratified by benchmark)")
    return lines + _lift_lines(report.comparisons())


def summary_lines(
    report: FinalReport, counts: dict, seconds: float, adapter: Path, mlflow_where: str, mlflow_ui: str | None = None
) -> list[str]:
    m = report.metrics()
    params = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={shown(v)}" for k, v in report.best_params.items()
    )
    per_method = ", ".join(
        f"{method} {best:.3f} ({count} trial{'s' * (count != 1)})" for method, (best, count) in report.by_method.items()
    )
    methods = [f"methods       {per_method}  (best val pass@1 per method)"] if len(report.by_method) > 1 else []
    return [
        f"== search finished in {seconds:.0f} s: {counts.get('total', 0)} trials "
        f"({counts.get('COMPLETED', 0)} completed, {counts.get('PRUNED', 0)} stopped early by ASHA, "
        f"{counts.get('FAILED', 0)} failed)",
        f"best trial    {report.best_trial_id} (epoch {report.best_epoch}): {params}",
        f"val pass@1    {m['best_val_pass_at_1']:.3f}"
        + (f"  (frozen model on val: {m['val_pass_at_1_frozen']:.3f})" if "val_pass_at_1_frozen" in m else ""),
        *methods,
        *arm_lines(report),
        f"adapter       {adapter}",
        f"mlflow        {mlflow_where}",
        *([f"mlflow ui     {mlflow_ui}"] if mlflow_ui else []),
    ]


# Parameter importance (Optuna's fANOVA: a random forest fitted to the trials that ran every
# epoch - ASHA-stopped ones are PRUNED and left out - and the share of its variance each parameter
# explains) only from this many such trials: below 10, simulated searches showed the chart closer
# to noise than to an answer (bench/README.md, "Parameter importance").
MIN_TRIALS_FOR_IMPORTANCE = 10


def _complete_trials(study) -> int:
    import optuna

    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def save_plots(study_name: str, storage_url: str, out_dir: Path) -> list[Path]:
    """Optimization history, parallel coordinates and, from MIN_TRIALS_FOR_IMPORTANCE trials that
    ran every epoch, parameter importance, as PNGs (best effort: a plot that fails says so)."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna
    from optuna.visualization import matplotlib as ovm

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    out_dir.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the plots are "experimental"
    warnings.simplefilter("ignore", UserWarning)  # matplotlib on flat axes (all trials tied)
    written = []
    plots = [
        ("optimization_history", ovm.plot_optimization_history),
        ("parallel_coordinate", ovm.plot_parallel_coordinate),
    ]
    complete = _complete_trials(study)
    if complete >= MIN_TRIALS_FOR_IMPORTANCE:
        plots.insert(1, ("param_importances", ovm.plot_param_importances))
    else:
        print(
            f"plot param_importances skipped: {complete} trial(s) ran every epoch, importance needs "
            f"{MIN_TRIALS_FOR_IMPORTANCE}"
        )
    for name, plot in plots:
        try:
            ax = plot(study)
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            figure.savefig(out_dir / f"{name}.png", dpi=100, bbox_inches="tight")
            written.append(out_dir / f"{name}.png")
        except Exception as exc:  # too few trials for importance, etc.: say so, keep the rest
            print(f"plot {name} skipped: {str(exc).splitlines()[0][:120]}")
    return written
