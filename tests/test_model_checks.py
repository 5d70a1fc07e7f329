"""A local model directory and the space's sizes are checked against the model before Ray starts:
a broken directory, or a prompt longer than the model's positions, is one line and exit 2.

    .venv/bin/pytest tests/test_model_checks.py -q
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from search.checks import check_fits_model, check_model
from softprompt_cli.errors import UsageError
from spaces import load_space


@pytest.fixture()
def model_copy(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def _truncate(path, by: int = 100) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-by])


def _config(folder, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


BROKEN = {
    # Before: each passed the dry run and every trial failed three times as it loaded the model.
    "config not JSON": (lambda m: (m / "config.json").write_text("{not json"), "config.json is JSON"),
    "unknown model_type": (lambda m: _config(m, model_type="nonesuch"), "model_type 'nonesuch'"),
    "safetensors cut short": (lambda m: _truncate(next(m.glob("*.safetensors"))), "cut short"),
    "safetensors header cut": (
        lambda m: next(m.glob("*.safetensors")).write_bytes(b"\xff" * 8 + b"{}"),
        "header of",
    ),
    "no weights": (lambda m: next(m.glob("*.safetensors")).unlink(), "with weights"),
}


@pytest.mark.parametrize("breaks, words", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_local_model_is_refused_in_one_line(model_copy, breaks, words):
    check_model(str(model_copy))  # whole: passes
    breaks(model_copy)
    with pytest.raises(UsageError) as caught:
        check_model(str(model_copy))
    message = str(caught.value)
    assert message.startswith(f"model: got '{model_copy}', expected a model") and words in message, message
    assert "\n" not in message


def test_a_torch_bin_file_is_checked_by_its_header(model_copy):
    from safetensors.torch import load_file

    weights = next(model_copy.glob("*.safetensors"))
    torch.save(load_file(weights), model_copy / "pytorch_model.bin")
    weights.unlink()
    check_model(str(model_copy))
    _truncate(model_copy / "pytorch_model.bin", by=200)
    with pytest.raises(
        UsageError, match=r"pytorch_model.bin: a zip \(torch.save\) without its directory at the end: cut short"
    ):
        check_model(str(model_copy))


def _space(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text("base: smoke\n" + text)
    return load_space(str(path))


def test_virtual_tokens_and_max_length_must_fit_the_models_positions(tiny_model_dir, tmp_path):
    """The tiny model has 2048 positions. Before, 3000 virtual tokens trained without a word."""
    model = check_model(str(tiny_model_dir))
    fits = _space(tmp_path, "search: {num_virtual_tokens: {choice: [4, 900]}}\nfixed: {max_length: 1148}\n")
    check_fits_model(fits, model)
    too_long = _space(tmp_path, "search: {num_virtual_tokens: {randint: [4, 1000]}}\nfixed: {max_length: 1100}\n")
    with pytest.raises(UsageError) as caught:
        check_fits_model(too_long, model)
    assert str(caught.value) == (
        "search.num_virtual_tokens.randint[1]: got 1000, expected at most 948 "
        "(the model has 2048 positions, fixed.max_length = 1100 takes the rest)"
    )
    with pytest.raises(UsageError, match=r"^fixed.max_length: got 4096, expected less than the model's 2048"):
        check_fits_model(_space(tmp_path, "fixed: {max_length: 4096}\n"), model)


def test_the_dry_run_refuses_a_broken_model_and_an_oversized_prompt(model_copy, tmp_path, search_cli):
    space = tmp_path / "long.yaml"
    space.write_text("base: smoke\nsearch: {num_virtual_tokens: {choice: [4, 1000]}}\nfixed: {max_length: 1100}\n")
    # `python -m search.run ... --dry-run`, forked from an interpreter that imported it (conftest)
    proc = search_cli("--space", str(space), "--model", str(model_copy), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: search.num_virtual_tokens.choice[1]: got 1000, expected at most 948")
    _truncate(next(model_copy.glob("*.safetensors")))
    proc = search_cli("--space", "smoke", "--model", str(model_copy), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "expected a model whose weight files are whole" in line and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
