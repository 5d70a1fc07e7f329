"""One searched parameter's distribution, as plain values.

The search (`search/`) turns these into Ray Tune / Optuna objects; nothing here imports them.
In a space file a distribution is a one-key mapping, e.g. ``{loguniform: [1.0e-3, 3.0e-1]}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from spaces.key_paths import check_mapping, under
from softprompt_cli.errors import field_error


class DistKind(str, Enum):
    CHOICE = "choice"  # one of a non-empty list of distinct values
    LOGUNIFORM = "loguniform"  # a float in [low, high], uniform in log space; 0 < low < high
    UNIFORM = "uniform"  # a float in [low, high]; low < high
    RANDINT = "randint"  # an integer in [low, high], both ends INCLUDED (Ray's is exclusive)


KINDS = tuple(kind.value for kind in DistKind)
CONTINUOUS = (DistKind.LOGUNIFORM, DistKind.UNIFORM)


def is_number(value) -> bool:
    # bool is an int in Python but never a sensible learning rate; NaN/inf break every sampler.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Distribution:
    kind: DistKind
    values: tuple = ()
    low: float | int | None = None
    high: float | int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise field_error("kind", self.kind, "one of " + ", ".join(KINDS))
        object.__setattr__(self, "kind", DistKind(self.kind))
        if self.kind is DistKind.CHOICE:
            self._check_choice()
        else:
            self._check_range()

    def _check_choice(self):
        name = self.kind.value
        if not isinstance(self.values, (list, tuple)) or not self.values:
            raise field_error(name, self.values, "a non-empty list of values")
        object.__setattr__(self, "values", tuple(self.values))
        for i, value in enumerate(self.values):
            # Optuna's categorical distribution takes only these (and persists them as JSON).
            if not isinstance(value, (str, bool, int, float)):
                raise field_error(f"{name}[{i}]", value, "a string, number or boolean")
            if value in self.values[:i]:
                raise field_error(f"{name}[{i}]", value, "distinct values (a repeat biases sampling)")
        if self.low is not None or self.high is not None:
            raise field_error(name, (self.low, self.high), "no low/high for a choice")

    def _check_range(self):
        name = self.kind.value
        is_ok = is_number
        if self.kind is DistKind.RANDINT:
            is_ok = lambda v: is_number(v) and isinstance(v, int)  # noqa: E731
        for i, end in enumerate((self.low, self.high)):
            if not is_ok(end):
                what = "an integer" if self.kind is DistKind.RANDINT else "a finite number"
                raise field_error(f"{name}[{i}]", end, what)
        if self.kind is DistKind.LOGUNIFORM and self.low <= 0:
            raise field_error(f"{name}[0]", self.low, "a number > 0 (a log scale has no 0)")
        inverted = self.low > self.high if self.kind is DistKind.RANDINT else self.low >= self.high
        if inverted:
            relation = "low <= high" if self.kind is DistKind.RANDINT else "low < high"
            raise field_error(name, [self.low, self.high], f"[low, high] with {relation}")
        if self.values:
            raise field_error(name, self.values, "no values list for a range")

    def candidates(self) -> list[tuple[str, object]]:
        """(key path suffix, value) pairs that bound what can be sampled, to validate each.

        Continuous ranges are checked as floats because the samplers return floats, so a
        loguniform over an integer field is caught here rather than in a trial.
        """
        name = self.kind.value
        if self.kind is DistKind.CHOICE:
            return [(f"{name}[{i}]", value) for i, value in enumerate(self.values)]
        cast = float if self.kind in CONTINUOUS else int
        return [(f"{name}[0]", cast(self.low)), (f"{name}[1]", cast(self.high))]

    def to_dict(self) -> dict:
        """The space-file form, e.g. ``{"loguniform": [0.001, 0.3]}``."""
        if self.kind is DistKind.CHOICE:
            return {self.kind.value: list(self.values)}
        return {self.kind.value: [self.low, self.high]}

    @classmethod
    def from_raw(cls, raw, path: str) -> "Distribution":
        """Parse the space-file form found at key path `path`."""
        if not isinstance(raw, dict):
            raise field_error(
                path,
                raw,
                "a mapping with one of " + ", ".join(KINDS) + " (a value held constant goes under fixed)",
            )
        check_mapping(raw, path, KINDS)
        if len(raw) != 1:
            raise field_error(path, raw, "exactly one of " + ", ".join(KINDS))
        ((kind, arg),) = raw.items()
        with under(path):
            if kind == DistKind.CHOICE.value:
                return cls(DistKind.CHOICE, values=arg)
            if not isinstance(arg, list) or len(arg) != 2:
                raise field_error(kind, arg, "[low, high]")
            return cls(DistKind(kind), low=arg[0], high=arg[1])
