"""The problems a search trains, validates and tests on: HumanEval, MBPP, the seeded split.

Public surface (re-exported from splits.py: sources and the seeded train / val / test split):
`DataSplit`, `DistillSettings`, `problems_for`, `load_problems`, `source_of`, `SOURCES`, `SPLITS`.

Internal: mbpp.py (the pinned MBPP file, fetched and checked: `python -m trainable.data.mbpp`).
The frozen model's self-verified targets for problems without solutions are built above this
package (`trainable.distill`): they need decoding and the sandbox, which read these problems.
"""

__all__ = ["SOURCES", "SPLITS", "DataSplit", "DistillSettings", "load_problems", "problems_for", "source_of"]


def __getattr__(name: str):
    # Imported on first use, not with the package: splits.py imports mbpp.py, and
    # `python -m trainable.data.mbpp` must not find its own module imported before it runs.
    if name in __all__:
        from trainable.data import splits

        return getattr(splits, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
