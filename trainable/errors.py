"""Errors that the command-line entry points turn into exit codes."""


class UsageError(ValueError):
    """Bad user input. CLIs print the message as one line and exit with code 2.

    The message names the field, the bad value and what is allowed, e.g.
    ``num_virtual_tokens: got 0, expected an integer >= 1``.
    """


def field_error(field: str, value, allowed: str) -> UsageError:
    """The one message format for bad input: ``FIELD: got VALUE, expected ALLOWED``."""
    return UsageError(f"{field}: got {value!r}, expected {allowed}")
