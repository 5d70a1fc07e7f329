"""Which trial errors are retried (search.faults): what may pass next time (a killed worker, a
lost node) is; what will not change (read-only or full storage, a refused permission, a model
that does not load, bad input) is not. Then a whole search whose model dir is corrupt: every
trial fails once, at once, with one line each.

    .venv/bin/pytest tests/test_lasting_faults.py -q                      # the table
    .venv/bin/pytest tests/test_lasting_faults.py -q -m integration       # the search
"""

from __future__ import annotations

import errno
import re
import time

import pytest
import ray.exceptions

from search.faults import StorageFault, TrialSetupError, lasting, storage_fault
from softprompt_cli.errors import UsageError


def _in_a_task(cause: BaseException) -> BaseException:
    """`cause` as Tune gets it from a trial: wrapped in Ray's task error."""
    return ray.exceptions.RayTaskError("train", "Traceback ...", cause).as_instanceof_cause()


LASTING = {
    "read-only": OSError(errno.EROFS, "Read-only file system", "/runs/x/checkpoint_000001"),
    "disk-full": OSError(errno.ENOSPC, "No space left on device", "/runs/x"),
    "permission": PermissionError(errno.EACCES, "Permission denied", "/runs/x"),
    "model-load": TrialSetupError("cannot set up the trial: SafetensorError: invalid header"),
    "bad-input": UsageError("fixed.batch_size", 0, "an integer >= 1"),
    "read-only-sqlite": RuntimeError("(sqlite3.OperationalError) attempt to write a readonly database"),
}
PASSING = {
    "worker-killed": ray.exceptions.RayActorError(),
    "worker-crashed": ray.exceptions.WorkerCrashedError(),
    "node-died": ray.exceptions.NodeDiedError("node 1"),
    "flaky": RuntimeError("injected fault"),
    "connection": ConnectionError("connection reset"),
}


@pytest.mark.parametrize("exc", list(LASTING.values()), ids=list(LASTING))
def test_what_will_fail_again_is_not_retried(exc):
    assert lasting(exc) and lasting(_in_a_task(exc)) == lasting(exc), "would be retried, or named by Ray's wrapper"


@pytest.mark.parametrize("exc", list(PASSING.values()), ids=list(PASSING))
def test_what_may_pass_next_time_is_retried(exc):
    assert lasting(exc) is None and lasting(_in_a_task(exc)) is None


def test_a_storage_fault_is_named_by_its_innermost_error():
    exc = _in_a_task(LASTING["read-only"])
    try:
        raise RuntimeError("Traceback (most recent call last): ... Read-only file system") from exc
    except RuntimeError as wrapped:
        line = storage_fault(wrapped)
    assert line == "read-only storage: OSError: [Errno 30] Read-only file system: '/runs/x/checkpoint_000001'"
    assert storage_fault(StorageFault(line)) == line and storage_fault(PASSING["flaky"]) is None


@pytest.mark.integration
def test_a_corrupt_model_fails_the_search_once_before_any_trial(tiny_model_dir, tmp_path):
    """The model is loaded once per device, by the engine: a model that loads nowhere fails the
    search there, in one line, before a trial starts; no trial is tried, none retried."""
    import shutil

    from fault_helpers import SearchProcess, mlflow_summary, write_fault_space

    from safetensors.torch import load_file, save_file

    model = tmp_path / "corrupt-model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    # A file whose header is whole (the checks before Ray read headers and sizes) but one of
    # whose tensors does not fit the config: it loads nowhere, on every try.
    tensors = load_file(weights)
    name = next(k for k in sorted(tensors) if k.endswith("mlp.down_proj.weight"))
    tensors[name] = tensors[name][:-1].contiguous()
    save_file(tensors, weights, metadata={"format": "pt"})
    space = write_fault_space(tmp_path, samples=4, epochs=1, grace=1, tokens=(4, 8), slow=False)
    started = time.monotonic()
    with SearchProcess(tmp_path, space, model, "corrupt") as search:
        rc = search.wait(300)
        output = search.output()
    took = time.monotonic() - started
    print(f"\n[corrupt model] exit {rc} in {took:.1f} s")
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert rc == 1 and len(errors) == 1, output[-3000:]
    assert errors[0].startswith(f"error: the engine could not load the model {model}: RuntimeError: "), errors
    assert not re.search(r"trial [0-9a-f]{8} ", output) and "Traceback" not in output, output[-3000:]  # none started
    summary = mlflow_summary(tmp_path / "runs" / "mlflow.db")
    assert summary["children"] == [] and summary["parents"][0]["status"] == "FAILED"
