"""Progress bars on stderr for the long steps: generation, scoring in the sandbox, the bundled
model's conversion and target distillation.

tqdm with `disable=None`: a bar only when stderr is a terminal. A pipe, a CI log or a Ray
worker (whose stderr is a log file) gets nothing, so trial logs never fill with redraws; the
search's console keeps its one line per trial event. `TQDM_DISABLE=1` turns bars off on a
terminal too (tqdm reads TQDM_* overrides from the environment).
"""

from __future__ import annotations

import sys

from tqdm import tqdm


def bar(total: int | None, desc: str, unit: str = "it") -> tqdm:
    """A bar for `total` units of work (use as a context manager; `.update(n)` as work ends)."""
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
