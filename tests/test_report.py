"""The final report carries three arms (soft prompt, frozen model, best hard prompt) with paired
bootstrap intervals and who-solved-what counts; RESULTS.md claims no more than its intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.baselines import HardBaseline, HardPrompt
from search.report import FinalReport, arm_lines, paired_bootstrap_ci, summary_lines
from search.results import headline, render, verdict, write_results


def _samples(prefix: str, passed: list[bool]) -> list[dict]:
    return [{"task_id": f"HumanEval/{i}", "completion": prefix, "passed": p} for i, p in enumerate(passed)]


SOFT = [True, True, True, False, True, False, True, False]
FROZEN = [True, False, False, False, True, False, False, True]
HARD = [True, True, False, False, True, False, True, True]
HARD_PROMPT = HardPrompt("Write correct code.", "comment")


def _report(hard: bool = True) -> FinalReport:
    baseline = (
        HardBaseline(HARD_PROMPT, {"tokens-aaaa": 0.25, HARD_PROMPT.label: 0.5}, _samples("h", HARD)) if hard else None
    )
    return FinalReport(
        "t1",
        {"num_virtual_tokens": 8, "init": "random", "learning_rate": 0.01},
        0.6,
        3,
        _samples("s", SOFT),
        _samples("f", FROZEN),
        baseline,
    )


def test_three_arms_with_intervals_and_counts():
    report = _report()
    assert list(report.arms()) == ["soft_prompt", "frozen", "hard_prompt"]
    vs_frozen, vs_hard = report.comparisons()
    assert (vs_frozen.other, vs_frozen.only_soft, vs_frozen.only_other) == ("frozen", 3, 1)
    assert (vs_hard.other, vs_hard.only_soft, vs_hard.only_other) == ("hard_prompt", 1, 1)
    assert vs_frozen.lift == pytest.approx(5 / 8 - 3 / 8) and vs_hard.lift == pytest.approx(0.0)
    assert (vs_hard.ci95_low, vs_hard.ci95_high) == pytest.approx(paired_bootstrap_ci(SOFT, HARD)[1:])
    m = report.metrics()
    assert m["test_pass_at_1_best"] == 5 / 8 and m["test_pass_at_1_baseline"] == 3 / 8
    assert m["test_pass_at_1_hard_prompt"] == 5 / 8 and m["val_pass_at_1_hard_prompt"] == 0.5
    assert m["lift_vs_hard_prompt"] == pytest.approx(0.0) and "lift_vs_hard_prompt_ci95_low" in m
    assert m["solved_only_by_soft_prompt_vs_frozen"] == 3 and m["solved_only_by_hard_prompt"] == 1
    assert m[f"val_pass_at_1_hard.{HARD_PROMPT.label}"] == 0.5
    assert not any("@" in key for key in m)  # MLflow metric names
    assert json.loads(json.dumps(report.to_dict()))["test"]["hard_prompt"] == {"pass_at_1": 0.625, "passed": 5, "n": 8}


def test_pairs_are_matched_by_task_not_by_position():
    report = _report()
    report.test_baseline = list(reversed(report.test_baseline))
    assert report.comparisons()[0].only_soft == 3


def test_console_summary_names_every_arm():
    lines = summary_lines(_report(), {"total": 3, "COMPLETED": 1, "PRUNED": 2}, 60.0, Path("a"), "sqlite:///x")
    starts = [line.split("  ")[0].strip() for line in lines]
    for label in (
        "best trial",
        "val pass@1",
        "test pass@1",
        "baseline",
        "hard prompt",
        "lift",
        "lift vs hard",
        "adapter",
        "mlflow",
    ):
        assert any(s.startswith(label) for s in starts), label
    hard_line = next(line for line in lines if line.startswith("hard prompt"))
    assert "0.625 (5/8)" in hard_line and "as a comment line" in hard_line and "best of 2 on val: 0.500" in hard_line
    assert any("none: no text init in the space" in line for line in arm_lines(_report(hard=False)))
    assert len(_report(hard=False).comparisons()) == 1


@pytest.mark.parametrize(
    "low, high, words",
    [
        (0.02, 0.2, "beats"),
        (-0.2, -0.01, "does worse than"),
        (-0.05, 0.1, "No difference from"),
    ],
)
def test_the_conclusion_claims_only_what_the_interval_allows(low, high, words):
    line = verdict(
        {
            "other": "frozen",
            "lift": (low + high) / 2,
            "ci95_low": low,
            "ci95_high": high,
            "only_soft": 9,
            "only_other": 4,
        },
        100,
    )
    assert words in line and "the frozen model" in line
    if words == "No difference from":
        assert "includes zero" in line and "beats" not in line


def test_arms_that_solve_the_same_problems_are_said_to_be_inseparable():
    line = verdict(
        {"other": "hard_prompt", "lift": 0.0, "ci95_low": 0.0, "ci95_high": 0.0, "only_soft": 0, "only_other": 0}, 40
    )
    assert line.startswith("No difference from the best hard prompt can be claimed") and "exactly the same" in line


def _write_report(folder: Path) -> None:
    report = _report()
    (folder / "report").mkdir(parents=True)
    trials = [
        {
            "trial_id": "t1",
            "params": {"num_virtual_tokens": 8, "learning_rate": 0.01},
            "init_text": None,
            "state": "COMPLETED",
            "epochs": 3,
            "val_pass_at_1": [0.4, 0.5, 0.6],
            "error": None,
        },
        {
            "trial_id": "t2",
            "params": {"num_virtual_tokens": 4, "learning_rate": 0.1},
            "init_text": None,
            "state": "PRUNED",
            "epochs": 1,
            "val_pass_at_1": [0.2],
            "error": None,
        },
    ]
    space = {
        "model": "bundled",
        "data": {
            "train": {"source": "mbpp", "n": 20},
            "val": {"source": "humaneval", "n": 5},
            "test": {"source": "humaneval", "n": 8},
            "seed": 0,
        },
        "budget": {"max_epochs": 3, "grace_period": 1, "reduction_factor": 2},
    }
    info = {
        "search": "s1",
        "command": "python -m search.run --space cpu",
        "git_sha": "abc",
        "git_dirty": False,
        "resumed_with": [{"command": "python -m search.run --resume --name s1", "git_sha": "def", "git_dirty": True}],
        "started": "2026-11-30",
        "wall_s": 3600.0,
        "machine": {"cpu": "Xeon", "cores": 2, "cpu_flags": {"avx512_bf16": False, "amx_bf16": False}},
        "space": space,
        "dtype": ["float32"],
        "dtype_reason": ["auto: CPU without AMX"],
        "distill": {"problems": 20, "with_target": 12, "targets": 30},
    }
    for name, value in (("final_report.json", report.to_dict()), ("trials.json", trials), ("run_info.json", info)):
        (folder / "report" / name).write_text(json.dumps(value))


def test_results_markdown_has_every_part(tmp_path):
    _write_report(tmp_path / "s1")
    out = write_results(tmp_path / "s1", tmp_path / "RESULTS.md")
    text = out.read_text()
    assert (tmp_path / "RESULTS-learning-curves.png").stat().st_size > 1000
    for part in (
        "`python -m search.run --space cpu` (git abc)",
        "| resumed with | `python -m search.run --resume --name s1` (git def, with uncommitted changes) |",
        "2026-11-30",
        "Xeon, 2 cores",
        "avx512_bf16 no",
        "float32",
        "60.0 min",
        "12/20 training problems",
        "**t1** (best)",
        "| t2 |",
        "PRUNED",
        "0.400 0.500 0.600",
        "frozen model",
        "Write correct code.",
        "95% CI",
        "RESULTS-learning-curves.png",
        "## Conclusion",
    ):
        assert part in text, part
    final = json.loads((tmp_path / "s1" / "report" / "final_report.json").read_text())
    assert headline(final) in text and "On 8 held-out humaneval problems" in headline(final)
    assert render(final, [], json.loads((tmp_path / "s1" / "report" / "run_info.json").read_text()), "p.png")


def test_results_of_an_unfinished_search_is_one_line(tmp_path):
    from softprompt_cli.errors import UsageError

    (tmp_path / "s2").mkdir()
    with pytest.raises(UsageError, match=r"^search: got .*no report/final_report.json"):
        write_results(tmp_path / "s2", tmp_path / "RESULTS.md")


def test_a_search_over_methods_reports_each_method_s_best_val_everywhere():
    report = _report()
    report.by_method = {"prefix_tuning": (0.6, 2), "prompt_tuning": (0.4, 1)}
    assert report.metrics()["best_val_pass_at_1.prefix_tuning"] == 0.6
    final = report.to_dict()
    assert final["by_method"]["prompt_tuning"] == {"best_val_pass_at_1": 0.4, "trials": 1}
    from search.results import method_lines

    (line, _) = method_lines(final)
    assert "prefix_tuning 0.600 (2 trials), prompt_tuning 0.400 (1 trial)" in line
    assert any(
        line.startswith("methods       prefix_tuning 0.600") for line in summary_lines(report, {}, 1.0, Path("a"), "m")
    )
    report.by_method = {"prompt_tuning": (0.4, 3)}  # one method: nothing to compare, no line
    assert method_lines(report.to_dict()) == []


def _mbpp(prefix: str, passed: list[bool]) -> list[dict]:
    return [{"task_id": f"mbpp_{i}_f", "completion": prefix, "passed": p} for i, p in enumerate(passed)]


MBPP_SOFT = [True, False, True, True, False, True]
MBPP_FROZEN = [False, False, True, False, False, True]
MBPP_HARD = [True, False, False, True, False, True]


def _two_benchmarks() -> FinalReport:
    report = _report()
    report.test_best += _mbpp("s", MBPP_SOFT)
    report.test_baseline += _mbpp("f", MBPP_FROZEN)
    report.hard.test_samples += _mbpp("h", MBPP_HARD)
    report.frozen_val = _samples("v", [True, False, False, False])
    return report


def test_each_benchmark_has_its_own_rows_and_the_pooled_lift_is_stratified():
    report = _two_benchmarks()
    assert report.benchmarks() == ["humaneval", "mbpp"]
    (he_frozen, _), (mbpp_frozen, _) = report.comparisons("humaneval"), report.comparisons("mbpp")
    assert (he_frozen.lift, he_frozen.ci95_low) == pytest.approx(paired_bootstrap_ci(SOFT, FROZEN)[:2])
    assert mbpp_frozen.lift == pytest.approx(paired_bootstrap_ci(MBPP_SOFT, MBPP_FROZEN)[0])
    pooled = report.comparisons()[0]
    strata = ["humaneval"] * len(SOFT) + ["mbpp"] * len(MBPP_SOFT)
    expected = paired_bootstrap_ci(SOFT + MBPP_SOFT, FROZEN + MBPP_FROZEN, strata=strata)
    assert (pooled.lift, pooled.ci95_low, pooled.ci95_high) == pytest.approx(expected)
    assert pooled.only_soft == he_frozen.only_soft + mbpp_frozen.only_soft
    m = report.metrics()
    assert m["test_pass_at_1.soft_prompt.mbpp"] == pytest.approx(4 / 6) and m["val_pass_at_1_frozen"] == 0.25
    assert m["lift_vs_frozen.humaneval"] == pytest.approx(he_frozen.lift) and m["test_n"] == 14
    final = json.loads(json.dumps(report.to_dict()))
    assert final["benchmarks"]["mbpp"]["test"]["frozen"] == {"pass_at_1": 2 / 6, "passed": 2, "n": 6}
    assert final["test"]["soft_prompt"]["n"] == 14 and final["frozen_val_pass_at_1"] == 0.25
    lines = arm_lines(report)
    assert "-- humaneval (8 test problems, paired bootstrap)" in lines and any(
        line.startswith("-- pooled (14 test problems, bootstrap stratified") for line in lines
    )


def test_a_stratified_resample_keeps_each_benchmark_s_size():
    """One benchmark always +1, the other always 0: resampling within each, every resample's
    pooled lift is the same (6/10), so the interval is a point; resampling the pool moves it."""
    treated, baseline = [True] * 6 + [False] * 4, [False] * 6 + [False] * 4
    strata = ["a"] * 6 + ["b"] * 4
    lift, low, high = paired_bootstrap_ci(treated, baseline, strata=strata)
    assert lift == low == high == pytest.approx(0.6)
    _, low, high = paired_bootstrap_ci(treated, baseline)
    assert high - low > 0.3
    assert paired_bootstrap_ci(SOFT, FROZEN, strata=["x"] * len(SOFT)) == paired_bootstrap_ci(SOFT, FROZEN)


def test_results_markdown_for_two_benchmarks(tmp_path):
    _write_report(tmp_path / "s1")
    report_dir = tmp_path / "s1" / "report"
    (report_dir / "final_report.json").write_text(json.dumps(_two_benchmarks().to_dict()))
    info = json.loads((report_dir / "run_info.json").read_text())
    info["space"]["data"]["test"] = [{"source": "humaneval", "n": 8}, {"source": "mbpp", "n": 6}]
    (report_dir / "run_info.json").write_text(json.dumps(info))
    measured = "auto: measured fp32 3.18 s, bf16 5.80 s: bf16 not 5% faster, so fp32"
    (tmp_path / "s1" / "search.json").write_text(json.dumps({"dtype": "float32", "dtype_reason": measured}))
    text = write_results(tmp_path / "s1", tmp_path / "RESULTS.md").read_text()
    assert f"| dtype | float32 ({measured}) |" in text  # the search's resolved dtype, not the trials' "set"
    for part in (
        "On 8 held-out humaneval problems",
        "On 6 held-out mbpp problems",
        "Pooled over all 14 test problems",
        "test: humaneval 8 + mbpp 6",
        "### humaneval (8 problems)",
        "### mbpp (6 problems)",
        "### Pooled (14 problems)",
        "stratified by benchmark",
        "smallest detectable lift",
        "problems; the frozen model, no prompt: 0.250)",
        "mbpp: ",
        "Pooled: ",
        "A second search seed",
        "another 60 min on this machine",
    ):
        assert part in text, part
