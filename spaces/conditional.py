"""Conditional parameters: what a trial of each `method` samples.

Two forms in a space file's `search` section:

    encoder_hidden_size: {choice: [128, 512]}   # a method-only field (trainable.methods.METHOD_ONLY):
                                                # sampled only for trials of its method (p_tuning)
    learning_rate:                              # one distribution per method; a method without an
      prompt_tuning: {loguniform: [1.0e-3, 3.0e-1]}   # entry takes the fixed value (or the default)
      prefix_tuning: {loguniform: [1.0e-4, 3.0e-2]}

The search suggests `method` first, then only the parameters of that method: Optuna never holds a
value that the trial ignored. A per-method entry is its own Optuna parameter, named
`learning_rate.prefix_tuning` (Optuna refuses one name with two different choice lists).
"""

from __future__ import annotations

from dataclasses import dataclass

from spaces.distribution import Distribution
from spaces.key_paths import check_mapping, child
from softprompt_cli.errors import field_error
from trainable.methods import METHODS, applies


@dataclass(frozen=True)
class PerMethod:
    """A searched parameter with its own distribution for each listed method."""

    by_method: dict  # method -> Distribution

    def __post_init__(self):
        if not self.by_method:
            raise field_error("", self.by_method, "at least one method")
        object.__setattr__(self, "by_method", dict(self.by_method))

    def to_dict(self) -> dict:
        return {method: dist.to_dict() for method, dist in self.by_method.items()}

    @classmethod
    def from_raw(cls, raw: dict, path: str) -> "PerMethod":
        check_mapping(raw, path, METHODS)
        return cls({method: Distribution.from_raw(value, child(path, method)) for method, value in raw.items()})


def parse_searched(raw, path: str) -> Distribution | PerMethod:
    """A `search` entry: a distribution, or a mapping from method names to distributions."""
    if isinstance(raw, dict) and any(key in METHODS for key in raw):
        return PerMethod.from_raw(raw, path)
    return Distribution.from_raw(raw, path)


def optuna_name(key: str, searched: Distribution | PerMethod, method: str) -> str:
    return f"{key}.{method}" if isinstance(searched, PerMethod) else key


def sampled_for(search: dict, method: str) -> list[tuple[str, str, Distribution]]:
    """(Optuna name, TrainConfig field, distribution) of what a trial of `method` samples, in the
    space's order; `method` itself is not among them."""
    out = []
    for key, searched in search.items():
        if key == "method":
            continue
        if isinstance(searched, PerMethod):
            if method in searched.by_method:
                out.append((optuna_name(key, searched, method), key, searched.by_method[method]))
        elif applies(key, method):
            out.append((key, key, searched))
    return out


def check_methods_can_use(search: dict, fixed: dict, methods: tuple[str, ...]) -> None:
    """Refuse values the search could never use: a method-only field (searched or fixed) whose method
    the space cannot pick, and a per-method entry for a field that method lacks. (A per-method entry
    for a method this space does not pick is allowed: a preset that narrows `method` inherits it.)"""
    picks = ", ".join(methods)
    for section, entries in (("search", search), ("fixed", fixed)):
        for key, value in entries.items():
            if isinstance(value, PerMethod):
                for method, dist in value.by_method.items():
                    if not applies(key, method):
                        raise field_error(
                            f"search.{key}.{method}", dist.to_dict(), f"no entry: method {method} has no {key}"
                        )
            elif not any(applies(key, method) for method in methods):
                shown = value.to_dict() if isinstance(value, Distribution) else value
                raise field_error(
                    f"{section}.{key}",
                    shown,
                    f"no value: only another method uses it and this space cannot pick that method (it picks {picks})",
                )
