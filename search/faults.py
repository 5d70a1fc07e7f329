"""Which errors will happen again, and which may pass next time.

A trial is retried (`search.tuner.MAX_TRIAL_FAILURES`) when what failed may pass on another try:
its worker or node was killed, Ray lost an object. Retrying what cannot change (a read-only or
full disk, a permission refused, a bad init adapter, bad input) only repeats the same traceback:
such a trial fails at once, with one line. (A model that does not load fails the search before
any trial: the engine loads it, `search.engine_service`.) A storage that refuses writes fails every
trial and the search itself: the driver stops with one line naming the path.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from search.checks import is_no_space_message, no_space
from softprompt_cli.errors import UsageError

# OS errors that the next try meets again: the storage refuses (read-only, full, over quota)
# or the permissions do.
LASTING_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM)
_READ_ONLY_WORDS = ("Read-only file system", "[errno 30]", "readonly database")


class TrialSetupError(RuntimeError):
    """A trial could not load its model, data or configuration: the same on every try."""


class StorageFault(RuntimeError):
    """The search's storage refuses writes (read-only or full): no trial can go on."""


def _chain(exc: BaseException | None):
    """The exception, its causes and contexts, and the original of a Ray task error."""
    seen = set()
    todo = [exc]
    while todo:
        link = todo.pop(0)
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        todo += [getattr(link, "cause", None), link.__cause__, link.__context__]


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def storage_fault(exc: BaseException | None) -> str | None:
    """One line if the storage refused a write (read-only, full) anywhere in the chain."""
    import ray.exceptions

    links = list(_chain(exc))
    for link in links:
        if isinstance(link, StorageFault):
            return str(link)
    # The innermost error says it best (a wrapper's text is a traceback, or Ray's task header).
    inner = [link for link in reversed(links) if not isinstance(link, ray.exceptions.RayError)] + links
    full = next((no_space(link) for link in inner if no_space(link) is not None), None)
    if full is not None:
        return f"disk full: {full}"
    for link in reversed(links):
        if isinstance(link, OSError) and link.errno == errno.EROFS and not isinstance(link, ray.exceptions.RayError):
            return f"read-only storage: {_line(link)}"
    worded = [link for link in links if is_read_only_message(str(link))]
    return f"read-only storage: {_line(worded[-1])}" if worded else None


def is_read_only_message(text: str) -> bool:
    return any(words in text for words in _READ_ONLY_WORDS)


def is_storage_message(text: str) -> bool:
    return is_read_only_message(text) or is_no_space_message(text)


def lasting(exc: BaseException | None) -> str | None:
    """Why `exc` will happen again on another try, in one line; None if it may pass (anything
    not known to last, so that a flaky failure still gets its retries)."""
    import ray.exceptions

    links = list(_chain(exc))
    passing = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)
    passing += (ray.exceptions.ObjectLostError, ray.exceptions.OutOfMemoryError)
    if any(isinstance(link, passing) for link in links):
        return None  # the worker or its node went away: another one may do
    storage = storage_fault(exc)
    if storage is not None:
        return storage
    for link in reversed(links):  # the innermost: Ray's wrapper of it reads as a task header
        if isinstance(link, ray.exceptions.RayError):
            continue
        if isinstance(link, (TrialSetupError, UsageError)) or (
            isinstance(link, OSError) and link.errno in LASTING_ERRNOS
        ):
            return _line(link)
    return None


def unwritable(folder: Path) -> str | None:
    """One line if `folder` refuses a new file for a lasting reason (read-only, full, denied)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno in LASTING_ERRNOS:
            kind = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk full", errno.EROFS: "read-only storage"}.get(
                exc.errno, "storage refuses writes"
            )
            return f"{kind}: {folder}: {exc.strerror}"
    return None
