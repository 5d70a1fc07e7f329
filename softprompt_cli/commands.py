"""Shared command-line plumbing: one-line errors and the exit-code contract.

Exit 0 success, 2 bad input (one line naming field, value and what is allowed; no traceback),
1 runtime failure.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from softprompt_cli.errors import UsageError


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage block on error; our contract is one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> NoReturn:
    try:
        code = main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
