"""Key paths in error messages: every space error names where in the file it is.

All messages keep the project's one format, ``FIELD: got VALUE, expected ALLOWED``
(`softprompt_cli.errors.field_error`), with FIELD a dotted key path such as
``search.num_virtual_tokens.choice[2]``.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager

from softprompt_cli.errors import UsageError, field_error


def child(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


@contextmanager
def under(path: str):
    """Prefix the field of errors raised inside with `path` (`loguniform` -> `search.lr.loguniform`)."""
    try:
        yield
    except UsageError as err:
        raise err.at(child(path, err.field)) from None


def renamed(err: UsageError, field: str, path: str) -> UsageError:
    """`err` with its leading field `field` replaced by `path`; other errors unchanged.

    TrainConfig names bare fields (`num_virtual_tokens: ...`); the space knows where the value
    came from (`search.num_virtual_tokens.choice[2]`).
    """
    return err.at(path) if err.field == field else err


def check_mapping(raw, path: str, allowed, required=()) -> dict:
    """`raw` as a dict whose keys are all in `allowed` and include every `required` one."""
    if not isinstance(raw, dict):
        raise field_error(path or "space", raw, "a mapping with keys " + ", ".join(allowed))
    for key in raw:
        if key not in allowed:
            raise unknown_key(child(path, key), key, allowed)
    for key in required:
        if key not in raw:
            raise UsageError(child(path, key), None, "it to be set (required)", got="no value")
    return raw


def unknown_key(path: str, key, allowed) -> UsageError:
    allowed = [str(a) for a in allowed]
    hint = difflib.get_close_matches(str(key), allowed, n=1)
    suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
    return field_error(path, key, "one of " + ", ".join(allowed) + suffix)
