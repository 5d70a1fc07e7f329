"""The problems a search trains, validates and tests on, and the targets it trains toward.

Public surface (re-exported from splits.py: sources and the seeded train / val / test split):
`DataSplit`, `DistillSettings`, `problems_for`, `load_problems`, `source_of`, `SOURCES`, `SPLITS`.

Modules with their own command line: mbpp.py (`python -m trainable.data.mbpp`: the pinned MBPP
file, fetched and checked), distill.py (`python -m trainable.data.distill`: the frozen model's
self-verified targets for problems without solutions). Not re-exported here: distill.py needs the
decoding and sandbox packages, which need this one.
"""

__all__ = ["SOURCES", "SPLITS", "DataSplit", "DistillSettings", "load_problems", "problems_for", "source_of"]


def __getattr__(name: str):
    # Imported on first use, not with the package: splits.py imports mbpp.py, and
    # `python -m trainable.data.mbpp` must not find its own module imported before it runs.
    if name in __all__:
        from trainable.data import splits

        return getattr(splits, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
