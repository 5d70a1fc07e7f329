"""The usage error is data (field, value, allowed), its message the one-line format, and the
package that holds it needs no torch (the MLflow server image imports it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from softprompt_cli.errors import UsageError, field_error
from spaces import load_space


def test_the_message_is_built_from_the_attributes():
    err = field_error("num_virtual_tokens", 0, "an integer >= 1")
    assert (err.field, err.value, err.allowed) == ("num_virtual_tokens", 0, "an integer >= 1")
    assert str(err) == "num_virtual_tokens: got 0, expected an integer >= 1"
    moved = err.at("search.num_virtual_tokens.choice[2]").noted(" (with method = 'p_tuning')")
    assert str(moved) == (
        "search.num_virtual_tokens.choice[2]: got 0, expected an integer >= 1 (with method = 'p_tuning')"
    )
    assert (moved.value, moved.allowed) == (0, "an integer >= 1") and str(err).startswith("num_virtual_tokens:")
    described = UsageError("MLFLOW_TRACKING_PASSWORD", None, "at least 12 characters", got="a 3-character password")
    assert str(described) == "MLFLOW_TRACKING_PASSWORD: got a 3-character password, expected at least 12 characters"


def test_a_space_error_carries_its_key_path_as_data(tmp_path):
    space = tmp_path / "bad.yaml"
    space.write_text("base: smoke\nsearch: {num_virtual_tokens: {choice: [4, 0]}}\n")
    with pytest.raises(UsageError) as caught:
        load_space(str(space))
    err = caught.value
    assert err.field == "search.num_virtual_tokens.choice[1]" and err.value == 0
    assert str(err).startswith(f"{err.field}: got 0, expected ")
    assert err.allowed in str(err)


def test_the_server_and_the_errors_import_without_torch():
    # torch made unimportable: mlflow_server (its image) and softprompt_cli must not need it.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import mlflow_server.__main__, softprompt_cli.commands\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'trainable', 'spaces', 'search', 'torch'}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['torch']"  # only the None placeholder: nothing of ours, no torch
