"""SIGINT/SIGTERM handling pieces with real signals, no search: the phases of
`search.interrupt`, the SIGTERM mask Ray's processes inherit, the resume command, and a canary
for the Tune internals we rely on (search/private_apis.py lists them): it fails on an upgrade
before a search does.

    .venv/bin/pytest tests/test_interrupt.py -q
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from search.interrupt import TUNE_STOP_SIGNAL, Interrupt, Phase, SearchInterrupted, sigterm_blocked_for_children


@pytest.fixture()
def handlers():
    """Restore the test process's handlers (and mask) whatever a test installs."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, TUNE_STOP_SIGNAL)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _deliver(signum: int) -> None:
    """The signal, handled before this returns: `raise_signal` sends it to this (the main) thread
    and then runs the Python handler at once (CPython calls PyErr_CheckSignals after raise(3)),
    so what a test checks next happens after the handler, not after a guessed sleep."""
    signal.raise_signal(signum)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_outside_a_write_a_signal_stops_at_once(handlers, signum, code):
    interrupt = Interrupt()
    interrupt.install()
    with pytest.raises(SearchInterrupted) as stop:
        _deliver(signum)
    assert stop.value.exit_code == code and interrupt.name == signal.Signals(signum).name


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_during_a_write_the_first_signal_waits_and_the_second_does_not(handlers, signum):
    interrupt = Interrupt()
    interrupt.install()
    with interrupt.during(Phase.DEFER):
        _deliver(signum)  # noted, nothing raised: the write in progress completes
        assert interrupt.requested and interrupt.phase is Phase.DEFER
        with pytest.raises(SearchInterrupted):
            interrupt.check()
        with pytest.raises(SearchInterrupted):
            _deliver(signal.SIGINT)  # "send it again to stop at once"
    assert interrupt.signum == signum, "the first signal names the interruption"


def test_while_stopping_further_signals_are_only_noted(handlers):
    interrupt = Interrupt()
    interrupt.install()
    with interrupt.during(Phase.CLEANUP):
        for _ in range(3):
            _deliver(signal.SIGTERM)
    assert interrupt.count == 3


def test_tune_stops_through_its_sigusr1_handler(handlers, monkeypatch):
    """The Tune internals `search.interrupt` relies on: with TUNE_DISABLE_SIGINT_HANDLER=1 Tune
    leaves SIGINT alone and still installs a SIGUSR1 handler that sets its stop event."""
    from ray.tune.tune import _setup_signal_catching

    ours = Interrupt()
    ours.install()
    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")
    event = _setup_signal_catching()
    assert signal.getsignal(signal.SIGINT) == ours._handle
    with ours.during(Phase.TUNE):
        _deliver(signal.SIGINT)
        assert ours.requested and not event.is_set()
        assert ours.forward_to_tune() and event.is_set()
    assert signal.getsignal(signal.SIGINT) == ours._handle


def test_before_tune_installs_its_handler_nothing_is_forwarded(handlers):
    signal.signal(TUNE_STOP_SIGNAL, signal.SIG_DFL)  # SIGUSR1's default action ends the process
    assert Interrupt().forward_to_tune() is False


def test_ray_processes_started_meanwhile_inherit_sigterm_blocked(handlers):
    """What `kill -TERM -PGID` does to a process started inside the block: nothing (Ray blocks
    SIGINT for its processes itself); the parent's own mask is back afterwards."""
    with sigterm_blocked_for_children():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        blocked = int(
            next(line for line in open(f"/proc/{child.pid}/status") if line.startswith("SigBlk:")).split()[1], 16
        )
        assert blocked & (1 << (signal.SIGTERM - 1))
        child.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(1)
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        child.kill()
        child.wait()


def test_the_resume_command_repeats_what_was_given(monkeypatch):
    from search.run import _parser, resume_command

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = _parser().parse_args(
        [
            "--space",
            "my space.yaml",
            "--model",
            "/m",
            "--num-samples",
            "5",
            "--name",
            "old",
            "--storage",
            "./runs",
            "--dry-run",
        ]
    )
    assert resume_command(args, "s1") == (
        "python -m search.run --space 'my space.yaml' --model /m --num-samples 5 --resume --name s1"
    )
