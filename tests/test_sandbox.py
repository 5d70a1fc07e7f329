"""The sandbox: out-of-band pass signal, isolation, hostile canary, parallel order, modes."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
import warnings

import pytest

from trainable import sandbox
from trainable.data import load_problems
from trainable.errors import UsageError
from trainable.sandbox import run_programs, sandbox_mode
from trainable.score import build_program

sys.path.insert(0, os.path.dirname(__file__))
from hostile_corpus import HOSTILE, KNOWN_LIMITS, OS_LAYER, TASK_ID, render  # noqa: E402

HOSTILE_TIMEOUT_S = 3.0
SECRET_ENV = "SPS_FAKE_SECRET"
CHECK_DOUBLES = "def check(f):\n    assert f(2) == 4\n"


def _bwrap_or_skip() -> None:
    if sandbox_mode() != "bwrap":
        pytest.skip(f"bubblewrap does not run here (mode is {sandbox_mode()!r})")


@pytest.fixture
def traps(tmp_path, monkeypatch):
    """Things an escaping program would touch: a sentinel file, a secret file and env var, a
    listening socket, a marker for daemons. `verify(results)` checks none was touched."""
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("original")
    secret = "s3cr3t-" + secrets.token_hex(8)
    (tmp_path / "secret.txt").write_text(secret)
    monkeypatch.setenv(SECRET_ENV, secret)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    values = {"SENTINEL": sentinel, "SENTINEL_DIR": tmp_path,
              "SECRET_FILE": tmp_path / "secret.txt",
              "SECRET_ENV": SECRET_ENV, "PORT": listener.getsockname()[1],
              "MARKER": "sps-daemon-" + secrets.token_hex(6)}
    before = sorted(os.listdir(tmp_path))

    def verify(results) -> None:
        assert sentinel.read_text() == "original"
        assert sorted(os.listdir(tmp_path)) == before, "a program created or removed files"
        leaks = [r.detail for r in results if secret in r.detail]
        assert not leaks, f"secret leaked into results: {leaks}"
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection ever arrived
        assert not _processes_with(values["MARKER"]), "a daemon of the program survived"

    yield values, verify
    listener.close()


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _hostile_programs(names, values) -> list[str]:
    problem = load_problems()[TASK_ID]
    return [build_program(problem, render(HOSTILE[name], values)) for name in names]


def test_reports_mode_and_prefers_bwrap():
    mode = sandbox_mode()
    print(f"\nsandbox mode: {mode}")
    if shutil.which("bwrap") is None:
        pytest.skip("bwrap is not installed here (apt-get install bubblewrap); mode is " + mode)
    assert mode == "bwrap"


def test_pass_needs_check_to_return_not_an_exit_code():
    programs = [
        CHECK_DOUBLES + "check(lambda x: x * 2)",  # passes, prints nothing special
        "import sys\nprint('FAILED'); print('FAILED', file=sys.stderr)\n"
        + CHECK_DOUBLES + "check(lambda x: x * 2)",  # passes whatever it prints
        "import os\nos._exit(0)\n" + CHECK_DOUBLES + "check(lambda x: x * 2)",
        "raise SystemExit(0)\n" + CHECK_DOUBLES + "check(lambda x: x * 2)",
        CHECK_DOUBLES + "check(lambda x: x + 1)",
    ]
    results = run_programs(programs, timeout_s=5)
    assert [r.status for r in results] == ["passed", "passed", "failed", "failed", "failed"]
    assert "before check returned" in results[2].detail
    assert results[4].detail.startswith("AssertionError")


def test_parallel_results_keep_input_order():
    kinds = {"pass": CHECK_DOUBLES + "check(lambda x: 2 * x)",
             "fail": CHECK_DOUBLES + "check(lambda x: x)",
             "loop": "while True:\n    pass"}
    order = ["loop", "pass", "fail", "pass", "loop", "fail", "pass", "fail"]
    results = run_programs([kinds[k] for k in order], timeout_s=1.0, workers=2)
    expected = {"pass": "passed", "fail": "failed", "loop": "timed out"}
    assert [r.status for r in results] == [expected[k] for k in order]
    assert [r.passed for r in results] == [k == "pass" for k in order]


def test_bad_arguments_are_usage_errors(monkeypatch):
    with pytest.raises(UsageError, match="timeout_s"):
        run_programs(["pass"], timeout_s=0)
    with pytest.raises(UsageError, match="workers"):
        run_programs(["pass"], workers=0)
    with pytest.raises(UsageError, match="sandbox mode"):
        run_programs(["pass"], mode="docker")
    monkeypatch.setenv(sandbox.MODE_ENV, "rlimits")
    assert sandbox_mode() == "rlimits"
    assert run_programs([]) == []


def test_fallback_is_announced_loudly(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(sandbox.shutil, "which",
                        lambda name: None if name == "bwrap" else real_which(name))
    sandbox._probe.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mode = sandbox._probe()
        assert mode in ("rlimits+netns", "rlimits")
        assert any("SANDBOX IS WEAKER" in str(w.message) for w in caught)
    finally:
        sandbox._probe.cache_clear()


@pytest.mark.parametrize("mode", ["bwrap", "rlimits"])
def test_hostile_corpus_all_fail_and_leave_no_trace(mode, traps):
    if mode == "bwrap":
        _bwrap_or_skip()
    values, verify = traps
    names = list(HOSTILE)
    assert len(names) >= 30
    results = run_programs(_hostile_programs(names, values), timeout_s=HOSTILE_TIMEOUT_S,
                           mode=mode)
    print(f"\n[{mode}]", *(f"{n}: {r.status} ({r.detail})" for n, r in zip(names, results)),
          sep="\n  ")
    passed = [name for name, result in zip(names, results) if result.passed]
    assert not passed, f"hostile completions passed in mode {mode}: {passed}"
    verify(results)


def test_bwrap_alone_contains_os_level_attacks(traps):
    """The in-process guard off: namespaces, read-only binds and the tmpfs still hold."""
    _bwrap_or_skip()
    values, verify = traps
    results = run_programs(_hostile_programs(OS_LAYER, values), timeout_s=HOSTILE_TIMEOUT_S,
                           mode="bwrap", guard=False)
    print("\n[bwrap, no guard]", *(f"{n}: {r.status} ({r.detail})"
                                  for n, r in zip(OS_LAYER, results)), sep="\n  ")
    assert not [name for name, result in zip(OS_LAYER, results) if result.passed]
    verify(results)


def test_known_limits_pass_as_documented():
    """Not defended, on purpose (see trainable.sandbox): `check` really returns normally."""
    problems = load_problems()
    programs = [build_program(problems[task_id], completion)
                for task_id, completion in KNOWN_LIMITS.values()]
    results = run_programs(programs, timeout_s=5)
    assert all(r.passed for r in results), results
