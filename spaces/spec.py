"""The typed, validated form of a space: what is searched, what is fixed, the budget, resources.

Every dataclass checks itself at construction, so a spec that exists is valid; the loader
(`spaces.loader`) only turns YAML into these. Errors name the key path in the space file.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from spaces.conditional import PerMethod, check_methods_can_use, sampled_for
from spaces.distribution import CONTINUOUS, DistKind, Distribution, is_number
from spaces.key_paths import renamed, unknown_key
from trainable.config import ADAPTER_PREFIX, TrainConfig
from trainable.data.splits import DataSplit
from softprompt_cli.errors import UsageError, field_error
from trainable.methods import DEFAULT_METHOD, METHOD_ONLY, METHODS, applies, method_list

# Set by the budget (ASHA's max_t): a trial trains for at most budget.max_epochs epochs.
EPOCHS = "epochs"
METHOD = "method"
# Fields an init constrains (an adapter's shape; a token init needs a prefix without projection),
# so they are checked together with `init`.
SHAPE_FIELDS = ("num_virtual_tokens", "encoder_hidden_size", "prefix_projection")


# Caps on the budget: past them a number is a typo, not a plan. TPE's cost per suggestion grows
# with the trials in its study and every trial is an MLflow run with its artifacts: 10,000 trials
# of a minute each are a week of one GPU. 1,000 epochs of ASHA's max_t is far past where a soft
# prompt on a few hundred problems stops improving.
MAX_NUM_SAMPLES = 10_000
MAX_EPOCHS = 1_000


def _check_int(path: str, value, minimum: int, maximum: int | None = None) -> None:
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= (maximum or value):
        raise field_error(path, value, allowed)


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
        _check_int("budget.num_samples", self.num_samples, 1, MAX_NUM_SAMPLES)
        _check_int("budget.max_epochs", self.max_epochs, 1, MAX_EPOCHS)
        _check_int("budget.grace_period", self.grace_period, 1)
        if self.grace_period > self.max_epochs:
            raise field_error(
                "budget.grace_period",
                self.grace_period,
                f"an integer from 1 to budget.max_epochs ({self.max_epochs})",
            )
        if not is_number(self.reduction_factor) or self.reduction_factor < 2:
            raise field_error("budget.reduction_factor", self.reduction_factor, "a number >= 2")
        _check_int("budget.max_concurrent", self.max_concurrent, 1)
        _check_int("budget.seed", self.seed, 0)


@dataclass(frozen=True)
class Resources:
    """What a search asks of Ray: `cpu` per trial (its optimizer, tokenizing, the sandbox's
    scoring), and `gpu`: 0, the model runs on CPU (one engine per node), or 1, one engine per GPU
    takes that GPU whole and serves every trial on its node (search.engine_service). Trials take
    no GPU share: they share the engine's model instead."""

    cpu: float
    gpu: int

    def __post_init__(self):
        if not is_number(self.cpu) or self.cpu <= 0:
            raise field_error("resources.cpu", self.cpu, "a number > 0 (fractions allowed)")
        if not is_number(self.gpu) or self.gpu not in (0, 1):
            raise field_error(
                "resources.gpu",
                self.gpu,
                "0 (the model runs on CPU) or 1 (one engine per GPU serves every trial there; "
                "trials take no GPU share)",
            )
        object.__setattr__(self, "cpu", float(self.cpu))
        object.__setattr__(self, "gpu", int(self.gpu))


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


def _absolute_init(value):
    """`adapter:PATH` with PATH made absolute: trials run in other working directories."""
    if isinstance(value, str) and value.startswith(ADAPTER_PREFIX) and value != ADAPTER_PREFIX:
        try:
            return ADAPTER_PREFIX + str(Path(value[len(ADAPTER_PREFIX) :]).expanduser().resolve())
        except (OSError, ValueError, RuntimeError):  # unreadable path: TrainConfig says so in one line
            return value
    return value


def _absolute_inits(searched):
    if isinstance(searched, PerMethod):
        return PerMethod({m: _absolute_inits(d) for m, d in searched.by_method.items()})
    if searched.kind is DistKind.CHOICE:
        return Distribution(DistKind.CHOICE, values=tuple(_absolute_init(v) for v in searched.values))
    return searched


@dataclass(frozen=True)
class SpaceSpec:
    name: str
    source: str
    model: str
    search: dict[str, Distribution | PerMethod]  # see spaces.conditional
    fixed: dict[str, Any]
    data: DataSplit
    budget: Budget
    resources: Resources

    def __post_init__(self):
        # Own copies: a frozen spec should not change when the caller's dicts do.
        object.__setattr__(self, "search", dict(self.search))
        object.__setattr__(self, "fixed", dict(self.fixed))
        if "init" in self.search:
            self.search["init"] = _absolute_inits(self.search["init"])
        if "init" in self.fixed:
            self.fixed["init"] = _absolute_init(self.fixed["init"])
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
                    f"fixed.{key}",
                    self.fixed[key],
                    f"no fixed value for a searched parameter (to fix it, also set search.{key}: null)",
                )
        if self.data.train.n < 1:
            raise field_error("data.train", self.data.train.n, "at least 1 problem (trials train on them)")
        for name, part in self.data.parts().items():
            if name.startswith("test") and part.n < 1:
                raise field_error(f"data.{name}", part.n, "at least 1 problem (the final report scores on them)")
        _check_int("data.seed", self.data.seed, 0)
        self._check_method_dimension()
        check_methods_can_use(self.search, self.fixed, self.methods)
        for method in self.methods:
            self._check_train_configs(method)

    # -- methods: the conditional part of the space ------------------------------------------
    @property
    def methods(self) -> tuple[str, ...]:
        """The methods a trial of this space can have."""
        if METHOD in self.search:
            return tuple(self.search[METHOD].values)
        return (self.fixed.get(METHOD, DEFAULT_METHOD),)

    def _check_method_dimension(self) -> None:
        searched = self.search.get(METHOD)
        if searched is None:
            return
        if isinstance(searched, PerMethod) or searched.kind is not DistKind.CHOICE:
            raise field_error(f"search.{METHOD}", searched.to_dict(), f"a choice among {method_list()}")
        for i, value in enumerate(searched.values):
            if value not in METHODS:
                raise field_error(f"search.{METHOD}.choice[{i}]", value, "one of " + method_list())

    def sampled(self, method: str) -> list[tuple[str, str, Distribution]]:
        """(Optuna name, TrainConfig field, distribution) that a trial of `method` samples."""
        return sampled_for(self.search, method)

    def fixed_for(self, method: str) -> dict:
        """The fixed values a trial of `method` uses (another method's own fields drop out)."""
        return {key: value for key, value in self.fixed.items() if applies(key, method)}

    def _path(self, key: str, method: str) -> str:
        return f"search.{key}.{method}" if isinstance(self.search.get(key), PerMethod) else f"search.{key}"

    def _try(self, values: dict, paths: dict) -> None:
        """TrainConfig(**values), its error naming the space path of the bad field; `paths` maps
        the searched fields in `values` to the path of the candidate tried. The message adds the
        searched values the bad one met (method, shape, init: the fields that constrain each other)."""
        try:
            TrainConfig(**values)
        except UsageError as err:
            field = err.field
            path = paths.get(field) or (f"fixed.{field}" if field in self.fixed else field)
            context = ", ".join(
                f"{paths[f]} = {values[f]!r}" for f in paths if f != field and f in (METHOD, "init", *SHAPE_FIELDS)
            )
            raise renamed(err, field, path).noted(f" (with {context})" if context else "") from None

    def _check_train_configs(self, method: str) -> None:
        """For a trial of `method`: fixed values with each searched field's first candidate, then
        each choice / range end in turn, then every init with every shape the search can pick,
        must make a TrainConfig."""
        sampled = [(key, self._path(key, method), dist) for _, key, dist in self.sampled(method)]
        base = {**self.fixed_for(method), EPOCHS: self.budget.max_epochs}
        paths = {}
        if METHOD in self.search:
            base[METHOD] = method
            paths[METHOD] = f"search.{METHOD}.choice[{self.search[METHOD].values.index(method)}]"
        for key, path, dist in sampled:
            takes_int = isinstance(getattr(TrainConfig(), key), int) or key in METHOD_ONLY  # (those default to None)
            if dist.kind in CONTINUOUS and takes_int:
                raise field_error(
                    f"{path}.{dist.kind.value}",
                    [dist.low, dist.high],
                    f"randint or choice ({key} takes integers; {dist.kind.value} samples floats)",
                )
            suffix, base[key] = dist.candidates()[0]
            paths[key] = f"{path}.{suffix}"
        self._try(base, paths)
        for key, path, dist in sampled:
            for suffix, value in dist.candidates():
                self._try({**base, key: value}, {**paths, key: f"{path}.{suffix}"})
        self._check_inits(method, base, paths)

    def _inits(self, method: str) -> list[tuple[str, object]]:
        """(space path, value) of every init a trial of `method` can get."""
        for _, key, dist in self.sampled(method):
            if key == "init":
                path = self._path(key, method)
                return [(f"{path}.{suffix}", value) for suffix, value in dist.candidates()]
        return [("fixed.init", self.fixed["init"])] if "init" in self.fixed else []

    def largest(self, key: str, method: str) -> tuple[str, Any]:
        """(space path, value) of the largest `key` a trial of `method` can get: the top of its
        choices or range, the fixed value, or TrainConfig's default."""
        for _, sampled_key, dist in self.sampled(method):
            if sampled_key == key:
                suffix, value = max(dist.candidates(), key=lambda candidate: candidate[1])
                return f"{self._path(key, method)}.{suffix}", value
        if key in self.fixed:
            return f"fixed.{key}", self.fixed[key]
        return key, getattr(TrainConfig(), key)

    def warm_starts(self, method: str) -> list[tuple[str, str]]:
        """(space path, `adapter:PATH`) of every warm start a trial of `method` can get."""
        return [
            (path, init)
            for path, init in self._inits(method)
            if isinstance(init, str) and init.startswith(ADAPTER_PREFIX)
        ]

    def _check_inits(self, method: str, base: dict, paths: dict) -> None:
        """An init constrains the shape (an adapter fixes it; a token init needs a prefix without a
        projection): every init with every shape the search can pick must make a TrainConfig."""
        shapes = [
            [(key, f"{self._path(key, method)}.{s}", v) for s, v in dist.candidates()]
            for _, key, dist in self.sampled(method)
            if key in SHAPE_FIELDS
        ]
        for init_path, init in self._inits(method):
            for combo in itertools.product(*shapes):
                values = {**base, "init": init, **{key: value for key, _, value in combo}}
                self._try(values, {**paths, "init": init_path, **{key: path for key, path, _ in combo}})

    def train_config(self, params: dict) -> TrainConfig:
        """One trial's settings: fixed values + the sampled `params` (Optuna's names) + epochs."""
        params = {key: _plain(value) for key, value in params.items()}
        method = self._method_of(params)
        expected = {name: key for name, key, _ in self.sampled(method)}
        if METHOD in self.search:
            expected[METHOD] = METHOD
        for name in params:
            if name not in expected:
                raise unknown_key(f"params.{name}", name, list(expected))
        for name in expected:
            if name not in params:
                raise UsageError(f"params.{name}", None, f"a sample of search.{name}", got="no value")
        values = {**self.fixed_for(method), **{key: params[name] for name, key in expected.items()}}
        return TrainConfig.from_dict({**values, EPOCHS: self.budget.max_epochs}, "params.")

    def _method_of(self, params: dict) -> str:
        if METHOD not in self.search:
            return self.methods[0]
        method = params.get(METHOD)
        if method not in self.methods:
            raise field_error(f"params.{METHOD}", method, "a sample of search.method: " + ", ".join(self.methods))
        return method

    def trial_params(self, params: dict) -> dict:
        """A trial's parameters by TrainConfig field (`method` first, always present): what MLflow
        logs and the console shows, whatever Optuna's names were."""
        method = self._method_of(params)
        named = {name: key for name, key, _ in self.sampled(method)}
        return {METHOD: method, **{key: _plain(params[name]) for name, key in named.items() if name in params}}

    def to_dict(self) -> dict:
        """The resolved space (bases merged), JSON/YAML-serializable, in the space-file layout."""
        return {
            "name": self.name,
            "source": self.source,
            "model": self.model,
            "search": {key: dist.to_dict() for key, dist in self.search.items()},
            "fixed": dict(self.fixed),
            "data": self.data.to_dict(),
            "budget": asdict(self.budget),
            "resources": asdict(self.resources),
        }

    def with_overrides(
        self, model: str | None = None, num_samples: int | None = None, max_concurrent: int | None = None
    ) -> "SpaceSpec":
        """A copy with command-line overrides applied; `None` keeps the space's value.

        `replace` re-runs every check, so `--num-samples 0` fails like a bad file would.
        """
        budget = self.budget
        if num_samples is not None:
            budget = replace(budget, num_samples=num_samples)
        if max_concurrent is not None:
            budget = replace(budget, max_concurrent=max_concurrent)
        return replace(self, model=self.model if model is None else model, budget=budget)
