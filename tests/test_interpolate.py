"""`python -m trainable.interpolate`: the line between two soft prompts, scored in the sandbox."""

from __future__ import annotations

import json

import pytest
import torch

from trainable import evaluate

from trainable import interpolate
from trainable.config import TrainConfig
from softprompt_cli.errors import UsageError
from trainable.softprompt import SoftPrompt


def _saved(loaded, path, seed: int, **settings):
    prompt = SoftPrompt.create(loaded, TrainConfig(**{"num_virtual_tokens": 4, **settings}))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in prompt.parameters():
            p.add_(torch.randn_like(p) * 3)
    return prompt.save(path)


def _samples(path) -> dict[str, str]:
    return {row["task_id"]: row["completion"] for row in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_the_ends_of_the_line_are_a_and_b(tiny_loaded, tiny_model_dir, tmp_path, capsys, method):
    a = _saved(tiny_loaded, tmp_path / "a", seed=1, method=method)
    b = _saved(tiny_loaded, tmp_path / "b", seed=2, method=method)
    common = ["--model", str(tiny_model_dir), "--split", "val", "--limit", "4", "--max-new-tokens", "12"]
    assert (
        interpolate.main(
            [
                *common,
                "--a",
                str(a),
                "--b",
                str(b),
                "--steps",
                "3",
                "--plot",
                str(tmp_path / "line.png"),
                "--out",
                str(tmp_path / "line.jsonl"),
            ]
        )
        == 0
    )
    points = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [p["weight"] for p in points] == [0.0, 0.5, 1.0] and all(p["n"] == 4 for p in points)
    assert (tmp_path / "line.png").stat().st_size > 1000
    rows = [json.loads(line) for line in (tmp_path / "line.jsonl").read_text().splitlines()]
    for weight, adapter, point in ((0.0, a, points[0]), (1.0, b, points[-1])):
        out = tmp_path / f"alone-{weight}.jsonl"
        assert evaluate.main([*common, "--prompt", str(adapter), "--out", str(out)]) == 0
        alone = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (alone["pass@1"], alone["passed"], alone["n"]) == (point["pass@1"], point["passed"], point["n"])
        at_weight = {r["task_id"]: r["completion"] for r in rows if r["weight"] == weight}
        assert at_weight == _samples(out), "the end of the line writes exactly what the prompt alone writes"
    middle = {r["task_id"]: r["completion"] for r in rows if r["weight"] == 0.5}
    assert middle != _samples(tmp_path / "alone-0.0.jsonl") or middle != _samples(tmp_path / "alone-1.0.jsonl")


def test_mix_is_exact_at_both_ends():
    a, b = torch.randn(4, 8), torch.randn(4, 8) * 100
    assert torch.equal(interpolate.mix(a, b, 0.0), a) and torch.equal(interpolate.mix(a, b, 1.0), b)
    assert interpolate.weights(5) == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    "b_settings, args, message",
    [
        ({"method": "prefix_tuning"}, [], "--b: got"),
        ({"num_virtual_tokens": 6}, [], "6 virtual tokens"),
        ({}, ["--steps", "1"], "--steps: got 1"),
        ({}, ["--plot", "line.svg"], "--plot: got 'line.svg'"),
    ],
)
def test_bad_input_is_refused_before_the_model_loads(tiny_loaded, tmp_path, b_settings, args, message):
    a = _saved(tiny_loaded, tmp_path / "a", seed=1)
    b = _saved(tiny_loaded, tmp_path / "b", seed=2, **b_settings)
    with pytest.raises(UsageError) as caught:
        interpolate.main(["--model", "./no/such/model", "--a", str(a), "--b", str(b), *args])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_adapter_names_its_flag(tmp_path, tiny_loaded):
    a = _saved(tiny_loaded, tmp_path / "a", seed=1)
    with pytest.raises(UsageError, match=r"^--b: got .*not found"):
        interpolate.main(["--model", "bundled", "--a", str(a), "--b", str(tmp_path / "nope")])
