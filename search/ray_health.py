"""Whether the Ray under the driver is still there.

A local Ray (started in-process by the driver) is a set of the driver's child processes; the
raylet shares its fate with its agents, so a dashboard agent killed (by hand or by the OOM
killer) takes the raylet with it. Tune then waits for resources that never come back, and a
`ray.get` fails after a while. The driver watches the raylet and the GCS it started: when one is
gone, `check()` raises `RayDied`, and the driver records the search as interrupted (resumable).
A thread watches them too (`start_watchdog`): Ray's core worker in the driver terminates the
process by itself when it next finds its raylet gone ("The connection to the plasma store is
failed. Terminate the process."), often before Tune's loop would look. On a cluster
(`--address`) the node processes are not the driver's; Ray's own errors say so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psutil
import ray.exceptions

WATCHED = ("raylet", "gcs_server")  # the local node: without either no task runs again
WATCH_EVERY_S = 0.1


class RayDied(RuntimeError):
    """The Ray under the driver stopped; the search cannot go on in this run."""


_watched: list[psutil.Process] = []
_stop = threading.Event()


def watch_local_node() -> None:
    """Remember the Ray node processes this driver just started (after `ray.init()`)."""
    _watched.clear()
    for child in psutil.Process().children():
        try:
            if child.name() in WATCHED:
                _watched.append(child)
        except psutil.NoSuchProcess:
            continue


def check() -> None:
    """Raise `RayDied` if a watched Ray process has exited (an unreaped child is a zombie)."""
    for process in _watched:
        try:
            alive = process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            raise RayDied(f"Ray's {process.name()} (pid {process.pid}) exited under the driver")


def died(exc: BaseException) -> str | None:
    """What says Ray stopped under the driver, anywhere in the exception's chain; None if not."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, RayDied):
            return str(exc)
        if isinstance(exc, ray.exceptions.LocalRayletDiedError):
            return "Ray's local raylet died under the driver"
        exc = exc.__cause__ or exc.__context__
    return None


def start_watchdog(on_death: Callable[[str], None]) -> None:
    """Call `on_death(what happened)` from a thread as soon as a watched process is gone."""
    _stop.clear()

    def watch():
        while not _stop.wait(WATCH_EVERY_S):
            try:
                check()
            except RayDied as died:
                on_death(str(died))
                return

    if _watched:
        threading.Thread(target=watch, name="ray-watchdog", daemon=True).start()


def stop_watchdog() -> None:
    """Before `ray.shutdown()` stops the watched processes on purpose."""
    _stop.set()


def kill_local_node(spare: int | None = None) -> None:
    """SIGKILL what is left of the local node (the driver's child processes, but `spare`: the
    search's watcher) when the driver ends without `ray.shutdown()`, which would wait on the
    dead raylet."""
    for child in psutil.Process().children(recursive=True):
        try:
            if child.pid != spare:
                child.kill()
        except psutil.NoSuchProcess:
            continue
