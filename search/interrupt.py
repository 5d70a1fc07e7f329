"""SIGINT and SIGTERM, handled the same way at any point of a search.

A signal never ends a search in the middle of a write. Where the driver is decides what the
first signal does:

    RAISE    nothing of the search is half-written here (validation, the test-set scoring of
             the final report): stop at once (raise `SearchInterrupted`).
    DEFER    writes in progress (the search record, the MLflow parent, the report's commit):
             note it; the driver stops at its next `check()`.
    WAIT     the driver waits on Ray tasks (the dtype probe, distillation, the report's scoring): say so,
             note it; `wait_for` cancels the tasks within a fraction of a second and stops.
    TUNE     trials run: note it; `TuneInterrupt.on_step_begin` asks Tune to stop the way its
             own Ctrl-C does (trials stay unfinished and resumable, the experiment state is
             saved once more), and `fit()` returns.
    CLEANUP  the driver is already stopping: noted, nothing more.

A second signal outside CLEANUP stops at once (Tune's "press Ctrl-C again to skip"); the MLflow
ledger writes every operation ahead, so nothing is lost, at worst sent twice.

Ray's local node processes (GCS, raylet, workers) are started in the driver's process group. Ray
blocks SIGINT in them, so Ctrl-C reaches the driver only; `sigterm_blocked_for_children` does the
same for SIGTERM (a signal mask is inherited across fork and exec), so `kill -TERM -PGID` or
`timeout` does not take Ray down under a driver that is still saving its state.
"""

from __future__ import annotations

import contextlib
import os
import signal
from enum import Enum

from ray import tune

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Tune (ray/tune/tune.py `_setup_signal_catching`, in the ray of search.private_apis.READ_FROM)
# installs one handler for SIGINT and SIGUSR1 while `fit()` runs; calling it is Tune's own
# graceful stop. We keep SIGINT for ourselves (TUNE_DISABLE_SIGINT_HANDLER=1) and reach Tune
# through its SIGUSR1 handler, which it installs even then. tests/test_interrupt.py fails if a
# Ray upgrade changes this.
TUNE_STOP_SIGNAL = signal.SIGUSR1
TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"


class Phase(str, Enum):
    RAISE = "raise"
    DEFER = "defer"
    WAIT = "wait"
    TUNE = "tune"
    CLEANUP = "cleanup"


class SearchInterrupted(BaseException):
    """A search stopped by SIGINT or SIGTERM. A BaseException, like KeyboardInterrupt, so that
    the `except Exception` blocks of libraries do not swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them


def raised_by_signal(exc: BaseException) -> "SearchInterrupted | None":
    """The SearchInterrupted behind `exc`: raised inside C code (Ray's Cython core worker), a
    handler's exception comes back wrapped, e.g. in a SystemError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, SearchInterrupted):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


class Interrupt:
    def __init__(self):
        self.signum: int | None = None  # the first signal received
        self.count = 0
        self.phase = Phase.RAISE
        self.forwarded = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def install(self) -> None:
        for signum in SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
        if self.phase is Phase.CLEANUP:
            _say(f"{signal.Signals(signum).name}: already stopping, saving the search state")
            return
        if self.phase is Phase.RAISE or self.count > 1:
            raise SearchInterrupted(self.signum)
        doing = {Phase.TUNE: " the trials", Phase.WAIT: ": cancelling the Ray tasks"}.get(self.phase, "")
        _say(f"{self.name}: stopping{doing} and saving the search state (send it again to stop at once)")

    def check(self) -> None:
        """At a safe point: stop if a signal came in meanwhile."""
        if self.requested:
            raise SearchInterrupted(self.signum)

    @contextlib.contextmanager
    def during(self, phase: Phase):
        previous, self.phase = self.phase, phase
        try:
            yield self
        finally:
            self.phase = previous

    def forward_to_tune(self) -> bool:
        """Ask a running `fit()` to stop gracefully; False while Tune's handler is not there yet."""
        if self.forwarded:
            return True
        handler = signal.getsignal(TUNE_STOP_SIGNAL)
        if not callable(handler):  # SIG_DFL before fit() installs it: would end the process
            return False
        handler(TUNE_STOP_SIGNAL, None)
        # Tune's handler puts back the SIGINT handler it found (ours): nothing else changes.
        self.forwarded = True
        return True


def _say(line: str) -> None:
    # os.write, not print: a handler that prints while the interrupted code prints to the same
    # stream gets "reentrant call" from Python's buffered writer.
    os.write(2, (line + "\n").encode())


# One per driver process: the signal handlers and the Tune callback below share it.
CURRENT = Interrupt()


# How long `wait_for` waits on Ray at a time: how late it sees a signal, at most.
WAIT_SLICE_S = 0.2


def wait_for(refs: list) -> list:
    """`ray.get(refs)` that a signal stops at once. Ray runs a signal handler during `ray.get`
    but keeps what the handler raises until the task returns (minutes for a distillation), so
    the driver waits in short slices, checks between them (and whether Ray is still there), and
    cancels the tasks when it stops: a cancelled task's worker is killed, nothing is half-written."""
    import ray

    from search import ray_health

    with CURRENT.during(Phase.WAIT):
        try:
            pending = list(refs)
            while pending:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT_SLICE_S)
                CURRENT.check()
                ray_health.check()
            return ray.get(list(refs))
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise


class TuneInterrupt(tune.Callback):
    """Forwards a noted signal to Tune between two steps of its loop (a few per second). Tune
    pickles its callbacks; this one holds nothing and always reads the live `CURRENT`."""

    def on_step_begin(self, iteration, trials, **info):
        from search import ray_health

        ray_health.check()  # a dead raylet leaves Tune waiting for resources forever
        if CURRENT.requested and CURRENT.phase is Phase.TUNE:
            CURRENT.forward_to_tune()


@contextlib.contextmanager
def sigterm_blocked_for_children():
    """Block SIGTERM while Ray starts its local processes, so that they inherit it blocked (as
    Ray blocks SIGINT in them). The driver's own SIGTERM waits meanwhile and arrives after."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        CURRENT.install()  # ray.init() replaces the SIGTERM handler with its own sys.exit
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
