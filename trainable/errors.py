"""Errors that the command-line entry points turn into exit codes."""

# A value longer than this is abbreviated in messages (a 10k-character init text stays one
# readable line; the full value is where the user wrote it).
SHOWN_CHARS = 120


class UsageError(ValueError):
    """Bad user input. CLIs print the message as one line and exit with code 2.

    The message names the field, the bad value and what is allowed, e.g.
    ``num_virtual_tokens: got 0, expected an integer >= 1``.
    """


def abbreviated(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` itself, or its start and end with its length when longer than `limit`."""
    if len(text) <= limit:
        return text
    return f"{text[:limit - 40]}...{text[-12:]} ({len(text)} chars)"


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` on one line, abbreviated past `limit` characters."""
    return abbreviated(repr(value), limit)


def field_error(field: str, value, allowed: str) -> UsageError:
    """The one message format for bad input: ``FIELD: got VALUE, expected ALLOWED``."""
    return UsageError(f"{field}: got {shown(value)}, expected {allowed}")
