"""RESULTS.md from a finished search: the answer, and how far the numbers let it go.

    python -m search.results runs/<search> [--out RESULTS.md]

Reads what the driver wrote under `runs/<search>/report/` (`final_report.json`, `trials.json`,
`run_info.json`) and writes the markdown plus a learning-curves PNG beside it: the command, the
date, the machine (with its CPU flags), the wall time, one row per trial (parameters, epochs
reached, state, val pass@1 per epoch) beside the frozen model's val pass@1, the three arms on
each test benchmark with paired bootstrap intervals and the pooled lift, and a conclusion that
claims only what those intervals allow: with the smallest lift each interval could detect, and
what a second search seed would cost on the machine that ran this one.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

from search.callbacks import mlflow_params, state_of
from softprompt_cli.commands import OneLineParser, run_main
from softprompt_cli.errors import field_error

if TYPE_CHECKING:
    from search.plan import SearchPlan

REPORT_FILES = ("final_report.json", "trials.json", "run_info.json")
DTYPE_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")
NAMES = {"soft_prompt": "soft prompt", "frozen": "frozen model", "hard_prompt": "hard prompt"}


# -- what the driver records at the end of a search ----------------------------------------------
def machine_info() -> dict:
    from trainable.model.loading import cpu_flags

    info = {"platform": platform.platform(), "cores": os.cpu_count(), "cpu": platform.processor()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        info["memory_gb"] = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    flags = cpu_flags()
    info["cpu_flags"] = {flag: flag in flags for flag in DTYPE_FLAGS}
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    return info


def trial_record(result, max_epochs: int, params_of=dict) -> dict:
    """One trial: parameters (by TrainConfig field: `params_of` = `SpaceSpec.trial_params`, which
    undoes Optuna's per-method names), state, and val pass@1 per epoch (its per-epoch checkpoints)."""
    history = sorted((m for _, m in result.best_checkpoints or []), key=lambda m: m["training_iteration"])
    state, epochs = state_of(bool(result.error), result.metrics, max_epochs)
    params, tags = mlflow_params(params_of(result.config) if result.config else {})
    return {
        "trial_id": (result.metrics or {}).get("trial_id"),
        "params": params,
        "init_text": tags.get("init_text"),
        "state": state,
        "epochs": epochs,
        "val_pass_at_1": [float(m["pass@1"]) for m in history],
        "error": str(result.error).splitlines()[0][:300] if result.error else None,
    }


def write_run_record(out: Path, plan: SearchPlan, record, report, results, wall_s: float, distill: dict | None) -> None:
    """report/final_report.json, trials.json, run_info.json: all RESULTS.md needs, on disk. The
    command and commit are the search's start's (`record.code`); a resume that ran other code is
    listed after them."""
    spec = plan.spec
    started_with, *resumed_with = record.code
    dtypes = sorted({(r.metrics or {}).get("dtype") for r in results} - {None})
    reasons = sorted({(r.metrics or {}).get("dtype_reason") for r in results} - {None})
    info = {
        "search": plan.name,
        "command": started_with["command"],
        "git_sha": started_with["git_sha"],
        "git_dirty": started_with["git_dirty"],
        "resumed_with": resumed_with,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(time.time() - wall_s)),
        "wall_s": round(wall_s, 1),
        "machine": machine_info(),
        "space": spec.to_dict(),
        "dtype": dtypes,
        "dtype_reason": reasons,
        "distill": distill,
    }
    (out / "run_info.json").write_text(json.dumps(info, indent=1, default=str))
    trials = [trial_record(r, spec.budget.max_epochs, spec.trial_params) for r in results]
    (out / "trials.json").write_text(json.dumps(trials, indent=1))
    (out / "final_report.json").write_text(json.dumps(report.to_dict(), indent=1, default=str))


# -- RESULTS.md ----------------------------------------------------------------------------------
def load_report(state_dir: Path) -> tuple[dict, list, dict]:
    folder = Path(state_dir) / "report"
    missing = [name for name in REPORT_FILES if not (folder / name).is_file()]
    if missing:
        raise field_error(
            "search",
            str(state_dir),
            f"a finished search's directory (no report/{missing[0]}; a search writes it when its final report ran)",
        )
    final, trials, info = (json.loads((folder / name).read_text()) for name in REPORT_FILES)
    return final, trials, {**info, **_search_dtype(Path(state_dir))}


def _search_dtype(state_dir: Path) -> dict:
    """The search's one dtype and why, as the driver resolved it (`search.json`): the trials'
    own records say only "set", since they were given the resolved dtype."""
    try:
        record = json.loads((state_dir / "search.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict) or not record.get("dtype") or not record.get("dtype_reason"):
        return {}
    return {"dtype": [record["dtype"]], "dtype_reason": [record["dtype_reason"]]}


def plot_curves(trials: list[dict], hard_val: float | None, path: Path) -> Path:
    """Val pass@1 per epoch per trial; pruned trials marked x at the rung where ASHA stopped them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for trial in trials:
        values = trial["val_pass_at_1"]
        if not values:
            continue
        epochs = list(range(1, len(values) + 1))
        (line,) = ax.plot(epochs, values, "-", alpha=0.7, linewidth=1.2)
        marker = {"PRUNED": "x", "COMPLETED": "o"}.get(trial["state"], "s")
        ax.plot(epochs[-1], values[-1], marker, color=line.get_color(), markersize=8)
    if hard_val is not None:
        ax.axhline(hard_val, linestyle="--", color="grey", linewidth=1, label="best hard prompt (val)")
    ax.plot([], [], "kx", label="stopped by ASHA at this rung")
    ax.plot([], [], "ko", label="completed")
    ax.set(xlabel="epoch", ylabel="val pass@1", title="Learning curves (one line per trial)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}"


def verdict(c: dict, n: int) -> str:
    """One comparison in plain words, claiming no more than its 95% interval."""
    other = "the frozen model" if c["other"] == "frozen" else "the best hard prompt"
    span = f"{_pct(c['lift'])} points (95% CI [{_pct(c['ci95_low'])}, {_pct(c['ci95_high'])}])"
    if c["ci95_low"] > 0:
        return f"The soft prompt beats {other} on these {n} problems: {span}."
    if c["ci95_high"] < 0:
        return f"The soft prompt does worse than {other} on these {n} problems: {span}."
    if c["only_soft"] == c["only_other"] == 0:
        return (
            f"No difference from {other} can be claimed: on these {n} problems both solve exactly the "
            "same ones, so nothing separates them (the interval is [0, 0] for that reason alone)."
        )
    half = 50 * (c["ci95_high"] - c["ci95_low"])
    return (
        f"No difference from {other} can be claimed: the lift is {span}, an interval that "
        f"includes zero; on {n} problems a real difference of less than about {half:.0f} points "
        "would not show."
    )


def benchmarks(final: dict, space: dict | None = None) -> dict[str, dict]:
    """Per test benchmark: {"test": arms, "comparisons": [...]}; a report written before test
    could hold several benchmarks has one, named by the space's test source."""
    if final.get("benchmarks"):
        return final["benchmarks"]
    test = (space or {}).get("data", {}).get("test", {})
    name = test.get("source", "humaneval") if isinstance(test, dict) else "test"
    return {name: {"test": final["test"], "comparisons": final["comparisons"]}}


def _arm_phrases(test: dict, comparisons: list[dict]) -> list[str]:
    by_other = {c["other"]: c for c in comparisons}
    return [
        f"{NAMES[arm]} {test[arm]['pass_at_1']:.3f} (lift {_pct(c['lift'])} points, "
        f"95% CI [{_pct(c['ci95_low'])}, {_pct(c['ci95_high'])}])"
        for arm, c in by_other.items()
    ]


def headline(final: dict, space: dict | None = None) -> str:
    """One sentence per benchmark, then the pooled lifts when there are several."""
    per = benchmarks(final, space)
    sentences = []
    for name, b in per.items():
        test = b["test"]
        parts = [
            f"On {test['soft_prompt']['n']} held-out {name} problems the best soft prompt scores "
            f"{test['soft_prompt']['pass_at_1']:.3f} pass@1",
            *_arm_phrases(test, b["comparisons"]),
        ]
        sentences.append("; ".join(parts) + ".")
    if len(per) > 1:
        pooled = "; ".join(
            f"vs {NAMES[c['other']]} {_pct(c['lift'])} points (95% CI [{_pct(c['ci95_low'])}, {_pct(c['ci95_high'])}])"
            for c in final["comparisons"]
        )
        sentences.append(f"Pooled over all {final['test']['soft_prompt']['n']} test problems: {pooled}.")
    return " ".join(sentences)


def _machine_line(m: dict) -> str:
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m.get("cpu_flags", {}).items())
    memory = f", {m['memory_gb']} GB" if m.get("memory_gb") else ""
    return f"{m.get('cpu')}, {m.get('cores')} cores{memory}, GPU: {m.get('gpu') or 'none'}; CPU flags: {flags}"


def _data_line(space: dict, distill: dict | None) -> str:
    data = space["data"]

    def size(part: dict) -> str:
        return f"{part['source']} {part.get('n', len(part.get('ids', [])))}"

    tests = data["test"] if isinstance(data["test"], list) else [data["test"]]
    parts = [f"train: {size(data['train'])}", f"val: {size(data['val'])}", "test: " + " + ".join(map(size, tests))]
    line = "; ".join(parts) + f" (seed {data['seed']})"
    if distill:
        line += (
            f"; self-verified targets: {distill['with_target']}/{distill['problems']} training problems "
            f"with a passing target, {distill['targets']} targets"
        )
    return line


def _commit(code: dict) -> str:
    return str(code.get("git_sha"))[:12] + (", with uncommitted changes" if code.get("git_dirty") else "")


def run_table(info: dict, trials: list[dict]) -> list[str]:
    budget = info["space"]["budget"]
    states = {s: sum(t["state"] == s for t in trials) for s in ("COMPLETED", "PRUNED", "FAILED")}
    minutes = info["wall_s"] / 60
    return [
        "| | |",
        "|---|---|",
        f"| command | `{info['command']}` (git {_commit(info)}) |",
        *(f"| resumed with | `{c['command']}` (git {_commit(c)}) |" for c in info.get("resumed_with", [])),
        f"| date | {info['started']} |",
        f"| machine | {_machine_line(info['machine'])} |",
        f"| dtype | {', '.join(info['dtype'])} ({'; '.join(info['dtype_reason'])}) |",
        f"| model | `{info['space']['model']}` |",
        f"| data | {_data_line(info['space'], info.get('distill'))} |",
        f"| search | {len(trials)} trials: {states['COMPLETED']} completed, {states['PRUNED']} stopped early "
        f"by ASHA, {states['FAILED']} failed (max {budget['max_epochs']} epochs, grace {budget['grace_period']}, "
        f"reduction factor {budget['reduction_factor']}) |",
        f"| wall time | {minutes:.1f} min ({info['wall_s']:.0f} s) |",
    ]


def _cell(trial: dict, key: str) -> str:
    value = trial["params"].get(key)
    if key == "init" and trial.get("init_text"):  # the params carry a hash; show the words
        text = trial["init_text"]
        return repr(text if len(text) <= 40 else text[:37] + "...")
    if value is None:  # a parameter of another method
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def trials_table(trials: list[dict], best_id: str) -> list[str]:
    keys = sorted({k for t in trials for k in t["params"]})
    rows = [f"| trial | {' | '.join(keys)} | epochs | state | val pass@1 per epoch |", "|---" * (len(keys) + 4) + "|"]
    for t in sorted(trials, key=lambda t: -max(t["val_pass_at_1"] or [0])):
        values = [_cell(t, k) for k in keys]
        curve = " ".join(f"{v:.3f}" for v in t["val_pass_at_1"]) or "-"
        name = f"**{t['trial_id']}** (best)" if t["trial_id"] == best_id else str(t["trial_id"])
        rows.append(f"| {name} | {' | '.join(values)} | {t['epochs']} | {t['state']} | {curve} |")
    return rows


def _hard_label(hard: dict) -> str:
    if hard.get("described"):
        return f"hard prompt: {hard['described']}"
    return f"hard prompt {hard['text']!r} as {'tokens' if hard['form'] == 'tokens' else 'a comment'}"


def _lift_rows(comparisons: list[dict], interval: str) -> list[str]:
    rows = [
        f"| soft prompt vs | lift (points) | 95% CI ({interval}) | smallest detectable lift | "
        "solved only by soft | only by the other |",
        "|---|---|---|---|---|---|",
    ]
    return rows + [
        f"| {NAMES[c['other']]} | {_pct(c['lift'])} | [{_pct(c['ci95_low'])}, {_pct(c['ci95_high'])}] | "
        f"{detectable(c):.0f} points | {c['only_soft']} | {c['only_other']} |"
        for c in comparisons
    ]


def test_tables(final: dict, space: dict | None = None) -> list[str]:
    """Per benchmark: the arms and the lifts; then the pooled lifts when there are several."""
    hard = final.get("hard_prompt")
    labels = {
        "soft_prompt": f"soft prompt (trial {final['best_trial_id']}, epoch {final['best_epoch']})",
        "frozen": "frozen model, no prompt",
    }
    if hard:
        labels["hard_prompt"] = f"{_hard_label(hard)} (chosen on val: {hard['val_pass_at_1'][hard['label']]:.3f})"
    per = benchmarks(final, space)
    rows: list[str] = []
    for name, b in per.items():
        if len(per) > 1:
            rows += [f"### {name} ({b['test']['soft_prompt']['n']} problems)", ""]
        rows += ["| arm | test pass@1 | solved |", "|---|---|---|"]
        rows += [f"| {labels[arm]} | {t['pass_at_1']:.3f} | {t['passed']}/{t['n']} |" for arm, t in b["test"].items()]
        rows += ["", *_lift_rows(b["comparisons"], "paired bootstrap"), ""]
    if len(per) > 1:
        rows += [f"### Pooled ({final['test']['soft_prompt']['n']} problems)", ""]
        rows += [*_lift_rows(final["comparisons"], "paired bootstrap stratified by benchmark"), ""]
    return rows[:-1]


def detectable(c: dict) -> float:
    """The smallest lift (points) this comparison would detect 80% of the time at the 5% level:
    2.8 standard errors, the standard error read off the 95% interval (its width / 3.92)."""
    return 100 * 2.8 * (c["ci95_high"] - c["ci95_low"]) / 3.92


def method_lines(final: dict) -> list[str]:
    """Which kind of soft prompt did best on val, when the search compared kinds."""
    by_method = final.get("by_method") or {}
    if len(by_method) < 2:
        return []
    shown = ", ".join(
        f"{method} {v['best_val_pass_at_1']:.3f} ({v['trials']} trial{'s' * (v['trials'] != 1)})"
        for method, v in by_method.items()
    )
    return [f"Best val pass@1 per method: {shown}. (Test scored only the overall best.)", ""]


def _hard_candidates(final: dict) -> list[str]:
    """Every hard prompt tried on val, with its val pass@1 (the choice in the open)."""
    hard = final.get("hard_prompt")
    if not hard or not hard.get("candidates"):
        return []
    rows = ["| hard prompt candidate | val pass@1 |", "|---|---|"]
    rows += [
        f"| {'**' + text + '** (chosen)' if label == hard['label'] else text} | {hard['val_pass_at_1'][label]:.3f} |"
        for label, text in hard["candidates"].items()
    ]
    return ["The hard prompts tried on val (the best one went to test):", "", *rows, ""]


def conclusion_lines(final: dict, info: dict) -> list[str]:
    per = benchmarks(final, info["space"])
    lines = []
    for name, b in per.items():
        n = b["test"]["soft_prompt"]["n"]
        lines += [f"{name}: {verdict(c, n)}" if len(per) > 1 else verdict(c, n) for c in b["comparisons"]]
    if len(per) > 1:
        n = final["test"]["soft_prompt"]["n"]
        lines += [f"Pooled: {verdict(c, n)}" for c in final["comparisons"]]
    if not final.get("hard_prompt"):
        lines.append("No hand-written prompt was compared: the space has no text init and train no worked example.")
    smallest = ", ".join(f"{NAMES[c['other']]} {detectable(c):.0f}" for c in final["comparisons"])
    lines.append(
        f"What these numbers can support: a lift smaller than about {smallest} points (vs each arm, "
        f"{'pooled' if len(per) > 1 else 'on test'}) would be missed more often than found (80% power at the "
        "5% level); a lift whose interval includes zero is not a finding either way."
    )
    minutes = info["wall_s"] / 60
    lines.append(
        f"These are one search (one seed) with `{info['space']['model']}`; the configuration and the hard "
        "prompt were chosen on val, and test was scored once. A second search seed would show how much "
        f"the chosen configuration itself varies (trial-to-trial noise is not in these intervals); "
        f"it costs another {minutes:.0f} min on this machine."
    )
    return lines


def render(final: dict, trials: list[dict], info: dict, plot_name: str) -> str:
    val = info["space"]["data"]["val"]
    per = benchmarks(final, info["space"])
    names = " and ".join(f"{b['test']['soft_prompt']['n']} {name}" for name, b in per.items())
    frozen_val = final.get("frozen_val_pass_at_1")
    reference = f"; the frozen model, no prompt: {frozen_val:.3f}" if frozen_val is not None else ""
    return "\n".join(
        [
            "# Results: does the searched soft prompt beat the frozen model and a hand-written prompt?",
            "",
            f"**{headline(final, info['space'])}**",
            "",
            *run_table(info, trials),
            "",
            f"## Trials (val pass@1 on {val.get('n')} {val['source']} problems{reference})",
            "",
            *trials_table(trials, final["best_trial_id"]),
            "",
            *method_lines(final),
            *_hard_candidates(final),
            f"## Test ({names} problems, greedy pass@1)",
            "",
            *test_tables(final, info["space"]),
            "",
            "## Learning curves",
            "",
            f"![val pass@1 per epoch per trial]({plot_name})",
            "",
            "## Conclusion",
            "",
            *[f"- {line}" for line in conclusion_lines(final, info)],
            "",
            f"_Written by `python -m search.results` from runs/{info['search']}/report/._",
            "",
        ]
    )


def _hard_val(final: dict) -> float | None:
    """The chosen hard prompt's val pass@1 (the curves' reference line), None without one."""
    hard = final.get("hard_prompt")
    return hard["val_pass_at_1"][hard["label"]] if hard else None


LEARNING_CURVES = "learning_curves.png"


def learning_curves(report_dir: Path) -> Path:
    """The parent run's learning curves, `report_dir/plots/learning_curves.png`, from the files
    the driver has just written there (the same plot as RESULTS.md's)."""
    report_dir = Path(report_dir)
    trials = json.loads((report_dir / "trials.json").read_text())
    final = json.loads((report_dir / "final_report.json").read_text())
    (report_dir / "plots").mkdir(parents=True, exist_ok=True)
    return plot_curves(trials, _hard_val(final), report_dir / "plots" / LEARNING_CURVES)


def write_results(state_dir: Path, out: Path) -> Path:
    final, trials, info = load_report(state_dir)
    plot = out.with_name(out.stem + "-learning-curves.png")
    plot_curves(trials, _hard_val(final), plot)
    out.write_text(render(final, trials, info, plot.name))
    return out


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m search.results", description=__doc__.splitlines()[0])
    p.add_argument("search", help="a finished search's directory, e.g. runs/cpu-20261130-120000")
    p.add_argument("--out", default="RESULTS.md", help="the markdown to write (the PNG goes beside it)")
    args = p.parse_args(argv)
    out = write_results(Path(args.search), Path(args.out))
    print(out)
    return 0


if __name__ == "__main__":
    run_main(main)
