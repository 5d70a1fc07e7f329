"""Progress on stderr for the long steps: generation, scoring in the sandbox, the bundled model's
conversion and target distillation.

On a terminal, a tqdm bar. Anywhere else (a pipe, a CI log, a Ray worker's log file) no bar is
drawn, which would fill the log with redraws; instead a step that runs long says where it is in
one plain line every `PLAIN_EVERY_S` seconds (`SOFTPROMPT_PROGRESS_EVERY_S` overrides it), e.g.

    distilling targets: 120/400 completions (0.9 completion/s, 133 s)

and a last one when it ends. A step shorter than that prints nothing. `TQDM_DISABLE=1` turns
both off (tqdm reads TQDM_* overrides from the environment).
"""

from __future__ import annotations

import os
import sys
import threading
import time

from tqdm import tqdm

PLAIN_EVERY_S = 30.0  # within the 30-60 s a reader of a log waits before thinking it hung


def bar(total: int | None, desc: str, unit: str = "it"):
    """Progress for `total` units of work (use as a context manager; `.update(n)` as work ends,
    `.set_postfix_str(what)` to name the current stage)."""
    quiet = os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    if not quiet and not sys.stderr.isatty():
        every = float(os.environ.get("SOFTPROMPT_PROGRESS_EVERY_S", PLAIN_EVERY_S))
        return PlainProgress(total, desc, unit, every)
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=None,
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
    )


class PlainProgress:
    """tqdm's `update`/`set_postfix_str`/context manager, as a plain line every `every_s` seconds
    from a timer thread: a step whose units take minutes each (the conversion's stages) still
    says that it is alive."""

    def __init__(self, total: int | None, desc: str, unit: str, every_s: float):
        self.total, self.desc, self.unit, self.n, self.postfix = total, desc, unit, 0, ""
        self._file = sys.stderr
        self._started = time.monotonic()
        self._said = False
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._tick, args=(every_s,), name="progress", daemon=True)
        self._timer.start()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self.n / elapsed
        speed = f"{rate:.1f} {self.unit}/s" if rate >= 1 or not self.n else f"{1 / rate:.0f} s/{self.unit}"
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        stage = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done} {self.unit}s ({speed}, {elapsed:.0f} s{stage})"

    def _tick(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self._say()

    def _say(self) -> None:
        print(self.line(), file=self._file, flush=True)
        self._said = True

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._timer.join()
        if self._said:  # a step long enough to be reported says that it ended
            self._say()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
