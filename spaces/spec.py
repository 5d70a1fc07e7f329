"""The typed, validated form of a space: what is searched, what is fixed, the budget, resources.

Every dataclass checks itself at construction, so a spec that exists is valid; the loader
(`spaces.loader`) only turns YAML into these. Errors name the key path in the space file.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from spaces.distribution import CONTINUOUS, Distribution, is_number
from spaces.paths import renamed, unknown_key
from trainable.config import TrainConfig
from trainable.data import DataSplit
from trainable.errors import UsageError, field_error

# Set by the budget (ASHA's max_t): a trial trains for at most budget.max_epochs epochs.
EPOCHS = "epochs"


def _check_int(path: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise field_error(path, value, f"an integer >= {minimum}")


@dataclass(frozen=True)
class Budget:
    """How many trials, and how ASHA cuts them (epochs are ASHA's time unit)."""

    num_samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: float
    max_concurrent: int
    seed: int

    def __post_init__(self):
        _check_int("budget.num_samples", self.num_samples, 1)
        _check_int("budget.max_epochs", self.max_epochs, 1)
        _check_int("budget.grace_period", self.grace_period, 1)
        if self.grace_period > self.max_epochs:
            raise field_error(
                "budget.grace_period", self.grace_period,
                f"an integer from 1 to budget.max_epochs ({self.max_epochs})",
            )
        if not is_number(self.reduction_factor) or self.reduction_factor < 2:
            raise field_error("budget.reduction_factor", self.reduction_factor, "a number >= 2")
        _check_int("budget.max_concurrent", self.max_concurrent, 1)
        _check_int("budget.seed", self.seed, 0)


@dataclass(frozen=True)
class Resources:
    """What one trial asks of Ray; fractions let several trials share a GPU."""

    cpu: float
    gpu: float

    def __post_init__(self):
        if not is_number(self.cpu) or self.cpu <= 0:
            raise field_error("resources.cpu", self.cpu, "a number > 0 (fractions allowed)")
        # Ray schedules a GPU share below 1 or whole GPUs; 1.5 GPUs is not a request it grants.
        gpu_ok = is_number(self.gpu) and self.gpu >= 0
        if not gpu_ok or (self.gpu > 1 and self.gpu != int(self.gpu)):
            raise field_error("resources.gpu", self.gpu, "a fraction in [0, 1] or a whole number of GPUs")
        object.__setattr__(self, "cpu", float(self.cpu))
        object.__setattr__(self, "gpu", float(self.gpu))


def check_train_field(section: str, key, value) -> None:
    """`key` may be searched or fixed: a TrainConfig field other than epochs."""
    path = f"{section}.{key}"
    if key == EPOCHS:
        raise field_error(path, value, "no value here: budget.max_epochs sets epochs (ASHA's max_t)")
    allowed = [name for name in TrainConfig.field_names() if name != EPOCHS]
    if key not in allowed:
        raise unknown_key(path, key, allowed)


def _plain(value):
    # Ray and Optuna may hand back numpy scalars; TrainConfig checks for Python int/float.
    return value.item() if hasattr(value, "item") and not isinstance(value, str) else value


@dataclass(frozen=True)
class SpaceSpec:
    name: str
    source: str
    model: str
    search: dict[str, Distribution]
    fixed: dict[str, Any]
    data: DataSplit
    budget: Budget
    resources: Resources

    def __post_init__(self):
        # Own copies: a frozen spec should not change when the caller's dicts do.
        object.__setattr__(self, "search", dict(self.search))
        object.__setattr__(self, "fixed", dict(self.fixed))
        if not isinstance(self.model, str) or not self.model.strip():
            raise field_error("model", self.model, "a hub id, a local path or 'bundled'")
        if not self.search:
            raise field_error("search", self.search, "at least one searched parameter")
        for key, dist in self.search.items():
            check_train_field("search", key, dist.to_dict())
        for key, value in self.fixed.items():
            check_train_field("fixed", key, value)
            if key in self.search:
                raise field_error(
                    f"fixed.{key}", self.fixed[key],
                    f"no fixed value for a searched parameter (to fix it, also set search.{key}: null)",
                )
        if self.data.train < 1:
            raise field_error("data.train", self.data.train, "at least 1 problem (trials train on them)")
        if self.data.test < 1:
            raise field_error("data.test", self.data.test, "at least 1 problem (the final report scores on them)")
        _check_int("data.seed", self.data.seed, 0)
        self._check_train_configs()

    def _check_train_configs(self) -> None:
        """Fixed values alone, then each choice / range end on top of them, must make a TrainConfig."""
        base = {**self.fixed, EPOCHS: self.budget.max_epochs}
        try:
            TrainConfig(**base)
        except UsageError as err:
            field_name = str(err).partition(":")[0]
            raise renamed(err, field_name, f"fixed.{field_name}") from None
        for key, dist in self.search.items():
            path = f"search.{key}"
            if dist.kind in CONTINUOUS and isinstance(getattr(TrainConfig(), key), int):
                raise field_error(
                    f"{path}.{dist.kind.value}", [dist.low, dist.high],
                    f"randint or choice ({key} takes integers; {dist.kind.value} samples floats)",
                )
            for suffix, value in dist.candidates():
                try:
                    TrainConfig(**{**base, key: value})
                except UsageError as err:
                    raise renamed(err, key, f"{path}.{suffix}") from None

    def train_config(self, params: dict) -> TrainConfig:
        """One trial's settings: fixed values + the sampled `params` + epochs = budget.max_epochs."""
        params = {key: _plain(value) for key, value in params.items()}
        for key in params:
            if key not in self.search:
                raise unknown_key(f"params.{key}", key, list(self.search))
        for key in self.search:
            if key not in params:
                raise UsageError(f"params.{key}: got no value, expected a sample of search.{key}")
        return TrainConfig.from_dict({**self.fixed, **params, EPOCHS: self.budget.max_epochs}, "params.")

    def to_dict(self) -> dict:
        """The resolved space (bases merged), JSON/YAML-serializable, in the space-file layout."""
        return {
            "name": self.name,
            "source": self.source,
            "model": self.model,
            "search": {key: dist.to_dict() for key, dist in self.search.items()},
            "fixed": dict(self.fixed),
            "data": asdict(self.data),
            "budget": asdict(self.budget),
            "resources": asdict(self.resources),
        }

    def with_overrides(self, model: str | None = None, num_samples: int | None = None,
                       max_concurrent: int | None = None) -> "SpaceSpec":
        """A copy with command-line overrides applied; `None` keeps the space's value.

        `replace` re-runs every check, so `--num-samples 0` fails like a bad file would.
        """
        budget = self.budget
        if num_samples is not None:
            budget = replace(budget, num_samples=num_samples)
        if max_concurrent is not None:
            budget = replace(budget, max_concurrent=max_concurrent)
        return replace(self, model=self.model if model is None else model, budget=budget)
