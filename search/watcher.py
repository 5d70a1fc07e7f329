"""The driver's watcher: records a search whose driver died without saving it.

    (started by search.driver.run_search; not a command of its own)

Some ends give the driver no chance to save anything: SIGKILL, the OOM killer, or Ray's core
worker terminating the driver when its local node dies ("The connection to the plasma store is
failed"), which it does within a fraction of a second. The driver starts this small process in
a session of its own and holds the write end of a pipe to it. A driver that ends normally writes
one byte first; a dead one only closes the pipe. Then the watcher takes the search's lock (free
once the driver is gone), and if `search.json` still says "running", it does what the driver
would have done on an interrupt: the record says interrupted, every MLflow run of the search
still RUNNING becomes KILLED, and one line says what happened, with the command that resumes it.
If the driver recorded the interrupt itself before it went (its watchdog saw Ray go), the
watcher only ends the runs still RUNNING.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

NORMAL_END = b"."


WATCHER_PID: int | None = None  # this driver's watcher, which its clean-up must spare


def start(plan) -> int:
    """Start the watcher for `plan`; returns the write end of its pipe (close-on-exec, so Ray's
    processes do not hold it)."""
    global WATCHER_PID
    read_end, write_end = os.pipe()
    os.set_inheritable(read_end, True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.watcher", str(read_end), str(os.getpid())],
        stdin=subprocess.PIPE,
        pass_fds=(read_end,),
        start_new_session=True,  # a group kill of the driver (a terminal closing) spares it
    )
    WATCHER_PID = proc.pid
    proc.stdin.write(pickle.dumps(plan))
    proc.stdin.close()
    os.close(read_end)
    return write_end


def stop(write_end: int) -> None:
    """The driver ends normally (it saved the search's state itself)."""
    try:
        os.write(write_end, NORMAL_END)
    finally:
        os.close(write_end)


def _watch(read_end: int, driver_pid: int, plan) -> int:
    from search.state import SearchLock, SearchRecord  # now: ready the moment the driver goes

    with os.fdopen(read_end, "rb") as pipe:
        if pipe.read(1) == NORMAL_END:
            return 0
    lock = SearchLock(plan.state_dir, holder=f"watcher {os.getpid()}")
    try:
        lock.acquire()
    except Exception:  # noqa: BLE001 - a resumed driver took it first: the search is its own again
        return 0
    try:
        record = SearchRecord.load(plan.state_dir)
        if record is None:
            return 0
        from search.driver import record_driver_death

        record_driver_death(plan, record, driver_pid)
        return 0
    finally:
        lock.release()


if __name__ == "__main__":
    plan = pickle.loads(sys.stdin.buffer.read())  # the driver's own plan, from the driver
    sys.exit(_watch(int(sys.argv[1]), int(sys.argv[2]), plan))
