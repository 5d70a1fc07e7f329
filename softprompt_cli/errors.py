"""Errors that the command-line entry points turn into exit codes."""

from __future__ import annotations

# A value longer than this is abbreviated in messages (a 10k-character init text stays one
# readable line; the full value is where the user wrote it).
SHOWN_CHARS = 120


def abbreviated(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` itself, or its start and end with its length when longer than `limit`."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}...{text[-12:]} ({len(text)} chars)"


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` on one line, abbreviated past `limit` characters."""
    return abbreviated(repr(value), limit)


class UsageError(ValueError):
    """Bad user input. CLIs print the message as one line and exit with code 2.

    The message is ``FIELD: got VALUE, expected ALLOWED`` (e.g. ``num_virtual_tokens: got 0,
    expected an integer >= 1``), built from the attributes, which callers edit as data:
    `field` (a flag or a dotted key path; `at` moves the error there), `value` (the bad value),
    `allowed`. `got` replaces `shown(value)` where the value is not worth showing (a password)
    or is described instead ("no value", "invalid YAML at line 3"); `note` is a trailing
    remark such as " (with method = 'p_tuning')". `text` is the whole part after ``FIELD: ``
    for the few messages of another shape ("missing field 'task_id', expected ...").
    """

    def __init__(
        self,
        field: str,
        value=None,
        allowed: str | None = None,
        *,
        got: str | None = None,
        text: str | None = None,
        note: str = "",
    ):
        self.field, self.value, self.allowed = field, value, allowed
        self.got, self.text, self.note = got, text, note
        super().__init__(self.message())

    def message(self) -> str:
        rest = (
            self.text
            if self.text is not None
            else f"got {self.got if self.got is not None else shown(self.value)}, expected {self.allowed}"
        )
        return f"{self.field}: {rest}{self.note}" if self.field else rest + self.note

    def _with(self, **changes) -> "UsageError":
        fields = dict(
            field=self.field, value=self.value, allowed=self.allowed, got=self.got, text=self.text, note=self.note
        )
        return UsageError(**{**fields, **changes})

    def at(self, field: str) -> "UsageError":
        """The same error, blamed on `field` (a key path the caller knows better)."""
        return self._with(field=field)

    def noted(self, note: str) -> "UsageError":
        """The same error with `note` appended to the message."""
        return self._with(note=self.note + note)


def field_error(field: str, value, allowed: str) -> UsageError:
    """The one message format for bad input: ``FIELD: got VALUE, expected ALLOWED``."""
    return UsageError(field, value, allowed)
