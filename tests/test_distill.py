"""Self-verified targets: only sandbox-passing completions are kept (deduplicated), the cache is
keyed by model, dtype, settings and each problem, a second call generates nothing, a pinned file
from another model is refused, and training skips problems without a target.

The tiny random model writes noise, so the problems here are built to let noise pass or fail by a
rule the test can check on its own: the completion lands inside a raw string `X`, and the test
(which closes the string) asserts the parity of `len(X)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from trainable.data import splits as data_module
from trainable.data import mbpp
from trainable.model import loading as model_module
from trainable.config import TrainConfig
from trainable.data.splits import DataSplit, DistillSettings
from softprompt_cli.errors import UsageError
from trainable.distill import (
    cache_file,
    cached_targets,
    distill,
    ensure_targets,
    model_sha256,
    read_pinned,
    training_items,
    verified_targets,
)
from trainable.model.loading import resolve_model_ref
from trainable.trial import Trial

CONFIG = TrainConfig(max_new_tokens=6, eval_batch_size=4, sandbox_timeout_s=5, dtype="float32", max_length=128)
SETTINGS = DistillSettings(samples=3, temperature=1.0, top_p=0.95, seed=0)
REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "mbpp_sample.json"


def parity_problem(task_id: str, lead: str, parity: int | None) -> dict:
    """The completion lands on a comment line: it passes unless it breaks that line (a line break
    makes the rest code, which noise rarely is); `parity` None: never passes. (`parity` and `lead`
    only make problems differ. The sandbox compiles the program and the test apart, so a test
    cannot close a string the prompt opened.)"""
    check = "assert False" if parity is None else f"assert {parity} in (0, 1)"
    return {
        "task_id": task_id,
        "entry_point": "f",
        "stop_tokens": ["\x00"],
        "prompt": f"def f():\n    return 1\n\n{lead}\n#",
        "test": f"def check(candidate):\n    assert candidate() == 1\n    {check}\n",
    }


PROBLEMS = [
    parity_problem("p_even", "# even", 0),
    parity_problem("p_odd", "value = 7", 1),
    parity_problem("p_never", "# never", None),
]


def _must_pass(completion: str, parity: int | None) -> bool:
    """A completion that stays on its comment line is a program that runs to `check` and passes."""
    return parity is not None and "\n" not in completion and "\r" not in completion


def test_only_sandbox_passing_candidates_are_kept(tiny_loaded):
    entries, results = distill(tiny_loaded, PROBLEMS, SETTINGS, CONFIG)
    assert len(results) == len(PROBLEMS) * (1 + SETTINGS.samples)
    parity = {"p_even": 0, "p_odd": 1, "p_never": None}
    for row in results:
        if _must_pass(row["completion"], parity[row["task_id"]]):
            assert row["passed"], row
        if parity[row["task_id"]] is None:
            assert not row["passed"], row
    assert any(r["passed"] for r in results) and not all(r["passed"] for r in results), (
        "the check needs both verdicts to have teeth"
    )
    for problem in PROBLEMS:
        task = problem["task_id"]
        passing = [r["completion"] for r in results if r["task_id"] == task and r["passed"] and r["completion"].strip()]
        unique = list(dict.fromkeys(c.rstrip() for c in passing))
        assert [t.rstrip() for t in entries[task]["targets"]] == unique
        assert entries[task]["candidates"] == 1 + SETTINGS.samples
    assert entries["p_never"]["targets"] == []


def test_targets_are_cut_to_the_function_body():
    from trainable.distill import body_only

    body = "    x = 1\n\n    return x\n"
    assert body_only(body + "\n\nprint(f())\nassert f() == 1\n") == body + "\n\n"
    assert body_only(body) == body and body_only("") == ""


def test_dedup_ignores_trailing_whitespace_and_drops_failures():
    rows = [
        {"task_id": "a", "completion": "    return 1\n", "passed": True},
        {"task_id": "a", "completion": "    return 1", "passed": True},
        {"task_id": "a", "completion": "    return 2\n", "passed": False},
        {"task_id": "a", "completion": "   \n", "passed": True},
        {"task_id": "b", "completion": "    return 3\n", "passed": False},
    ]
    assert verified_targets(rows) == {"a": ["    return 1\n"], "b": []}


def test_the_cache_answers_a_second_call_without_loading_the_model(tiny_loaded, tiny_model_dir, tmp_path):
    targets, first = ensure_targets(str(tiny_model_dir), PROBLEMS, SETTINGS, CONFIG, tiny_loaded, tmp_path)
    assert first.distilled_now == 3 and Path(first.cache).is_file()
    model_module._CACHE.clear()
    again, second = ensure_targets(str(tiny_model_dir), PROBLEMS, SETTINGS, CONFIG, None, tmp_path)
    assert again == targets and second.distilled_now == 0 and second.cache == first.cache
    assert model_module._CACHE == {}, "the model was loaded: the cache did not answer"
    assert (second.problems, second.with_target, second.skipped) == (3, first.with_target, first.skipped)
    # A changed problem is distilled again; the others still come from the cache.
    changed = [PROBLEMS[0], parity_problem("p_odd", "value = 8", 1), PROBLEMS[2]]
    _, third = ensure_targets(str(tiny_model_dir), changed, SETTINGS, CONFIG, tiny_loaded, tmp_path)
    assert third.distilled_now == 1


def test_cached_targets_reads_without_generating_and_only_when_complete(tiny_loaded, tiny_model_dir, tmp_path):
    assert cached_targets(tiny_loaded, PROBLEMS, SETTINGS, CONFIG, tmp_path) is None
    targets, _ = ensure_targets(str(tiny_model_dir), PROBLEMS, SETTINGS, CONFIG, tiny_loaded, tmp_path)
    assert cached_targets(tiny_loaded, PROBLEMS, SETTINGS, CONFIG, tmp_path) == targets
    changed = [PROBLEMS[0], parity_problem("p_odd", "value = 8", 1)]
    assert cached_targets(tiny_loaded, changed, SETTINGS, CONFIG, tmp_path) is None  # one changed: not complete
    other = dataclasses.replace(CONFIG, max_new_tokens=7)
    assert cached_targets(tiny_loaded, PROBLEMS, SETTINGS, other, tmp_path) is None  # other settings, other file


def test_the_cache_key_covers_model_dtype_and_sampling(tiny_model_dir, tmp_path):
    from trainable.tiny import save_tiny

    sha = model_sha256(resolve_model_ref(str(tiny_model_dir)))
    other = model_sha256(resolve_model_ref(str(save_tiny(tmp_path / "other", seed=1))))
    settings = {**SETTINGS.sampling(), "max_new_tokens": 6}
    base = cache_file(sha, "float32", settings, tmp_path)
    assert sha != other and base != cache_file(other, "float32", settings, tmp_path)
    assert base != cache_file(sha, "bfloat16", settings, tmp_path)
    assert base != cache_file(sha, "float32", {**settings, "samples": 4}, tmp_path)
    assert base != cache_file(sha, "float32", {**settings, "max_new_tokens": 7}, tmp_path)
    assert base == cache_file(sha, "float32", dict(settings), tmp_path)


def test_a_pinned_file_from_another_model_is_refused(tiny_loaded, tiny_model_dir, tmp_path):
    from trainable.tiny import save_tiny

    _, report = ensure_targets(str(tiny_model_dir), PROBLEMS, SETTINGS, CONFIG, tiny_loaded, tmp_path)
    pinned, again = read_pinned(report.cache, str(tiny_model_dir), PROBLEMS)
    assert again.with_target == report.with_target and set(pinned) == {p["task_id"] for p in PROBLEMS}
    other = save_tiny(tmp_path / "other", seed=1)
    with pytest.raises(UsageError) as caught:
        read_pinned(report.cache, str(other), PROBLEMS)
    message = str(caught.value)
    assert message.startswith(f"data.distill.targets: got '{report.cache}', expected targets distilled from the model")
    assert "\n" not in message
    with pytest.raises(UsageError, match=r"^data\.distill\.targets: .*every training problem \(1 of 4"):
        read_pinned(report.cache, str(tiny_model_dir), PROBLEMS + [parity_problem("p_new", "# new", 0)])
    record = json.loads(Path(report.cache).read_text())
    broken = [
        {},
        [],
        "text",
        {**record, "model": "someone"},
        {**record, "format": 1},
        {**record, "problems": {"p_even": {"sha256": "x", "targets": [3]}}},
        {**record, "problems": {"p_even": ["not an entry"]}},
    ]
    for i, junk in enumerate(broken):
        (tmp_path / f"junk{i}.json").write_text(json.dumps(junk))
        with pytest.raises(UsageError, match=rf"^data\.distill\.targets: got .*junk{i}.json', expected a distillation"):
            read_pinned(str(tmp_path / f"junk{i}.json"), str(tiny_model_dir), PROBLEMS)
    with pytest.raises(UsageError, match=r"^data\.distill\.targets: got .*expected a distillation"):
        read_pinned(str(tmp_path), str(tiny_model_dir), PROBLEMS)  # a directory


def test_training_skips_problems_without_a_target():
    problems = [
        {"task_id": "a", "prompt": "pa"},
        {"task_id": "b", "prompt": "pb"},
        {"task_id": "c", "prompt": "pc", "canonical_solution": "sc"},
    ]
    items, skipped = training_items(problems, {"a": ["t1", "t2"], "b": []})
    assert items == [
        {"prompt": "pa", "target": "t1"},
        {"prompt": "pa", "target": "t2"},
        {"prompt": "pc", "target": "sc"},
    ]
    assert skipped == ["b"]


@pytest.fixture
def fixture_mbpp(monkeypatch):
    """The MBPP source pointed at the six-problem fixture (its own hash and size)."""
    sha = hashlib.sha256(FIXTURE.read_bytes()).hexdigest()
    source = dataclasses.replace(
        data_module.SOURCES["mbpp"], size=6, load=lambda: mbpp.load_problems(str(FIXTURE), sha)
    )
    monkeypatch.setitem(data_module.SOURCES, "mbpp", source)


def test_a_trial_trains_on_the_problems_that_have_targets(fixture_mbpp, tiny_model_dir, tmp_path):
    split = DataSplit(train={"source": "mbpp", "n": 6}, val=2, test=2)
    targets = {
        "mbpp_17_square_perimeter": ["    return 4 * a\n"],
        "mbpp_12_sort_matrix": ["    return sorted(M, key=sum)\n"],
    }
    config = dataclasses.replace(CONFIG, num_virtual_tokens=2, epochs=1, batch_size=2)
    trial = Trial(config, str(tiny_model_dir), split, targets=targets)
    assert len(trial.examples) == 2 and len(trial.skipped) == 4
    result = trial.run_epoch()
    assert result.train_loss == result.train_loss  # trained on something: a real loss, not NaN
    record = trial.trained_with()
    assert DataSplit.from_dict(record["data"]) == split and record["dtype"] == "float32"


def _env(tmp_path) -> dict:
    return {
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "SOFTPROMPT_SEARCH_CACHE": str(tmp_path / "cache"),
    }


def _cli(model_cli, tmp_path, *args):
    """`python -m trainable.distill ARGS`, forked from a zygote that imported torch and transformers
    in the same bare environment (conftest's model_cli): resolving --model imports them."""
    return model_cli.run("trainable.distill", *args, cwd=tmp_path, env=_env(tmp_path), timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "bundled", "--source", "apps", "--n", "3"], "--source: got 'apps'"),
        (["--model", "bundled", "--n", "0"], "--n: got 0"),
        (["--model", "bundled", "--n", "398"], "--n: got 398"),
        (["--model", "./nowhere", "--n", "3"], "model: got './nowhere'"),
        (["--model", "bundled", "--n", "3", "--samples", "-1"], "--samples: got -1"),
        (["--model", "bundled", "--n", "3", "--dtype", "fp8"], "--dtype: got 'fp8'"),
    ],
)
def test_distill_command_bad_input_is_one_line(tmp_path, args, message, model_cli):
    proc = _cli(model_cli, tmp_path, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert message in line and "Traceback" not in proc.stderr


@pytest.mark.skipif(not mbpp.mbpp_file().is_file(), reason="MBPP not fetched: python -m trainable.data.mbpp")
def test_distill_command_prints_the_yield_and_caches(tmp_path, tiny_model_dir, model_cli):
    (tmp_path / "cache" / "mbpp").mkdir(parents=True)
    (tmp_path / "cache" / "mbpp" / mbpp.FILE_NAME).write_bytes(mbpp.mbpp_file().read_bytes())
    args = ["--model", str(tiny_model_dir), "--n", "3", "--samples", "1", "--max-new-tokens", "4", "--dtype", "float32"]
    first = _cli(model_cli, tmp_path, *args)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout.strip().splitlines()[-1])
    assert (report["problems"], report["distilled_now"]) == (3, 3)
    assert {"with_target", "targets", "skipped", "seconds", "cache"} <= set(report)
    second = json.loads(_cli(model_cli, tmp_path, *args).stdout.strip().splitlines()[-1])
    assert second["distilled_now"] == 0 and second["cache"] == report["cache"]
