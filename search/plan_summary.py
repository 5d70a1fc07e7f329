"""The plan `search.run` prints before it starts: what is searched, the budget, the data sizes and
where results go, in a dozen short lines. The full resolved space is not printed: it goes to
`runs/<search>/space/space.json` and to the parent MLflow run's `space/` artifact.
"""

from __future__ import annotations

import textwrap

from spaces import DistKind, Distribution

WIDTH = 110  # wrap long value lists (five text inits) rather than print one 400-character line
LABEL = 10  # "searched  ", "budget    ": the label column
SHORT_TEXT = 32  # a longer string value (an init text, an adapter path) shows its ends and length


NBSP = "\u00a0"  # joins a value's words for textwrap: a line breaks between values, never in one


def _value(value) -> str:
    return _shown(value).replace(" ", NBSP)


def _shown(value) -> str:
    if not isinstance(value, str):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if len(value) <= SHORT_TEXT and " " not in value:
        return value  # random, sample_vocab, prompt_tuning
    if len(value) <= SHORT_TEXT:
        return repr(value)
    return f"{repr(value[:16] + '...' + value[-10:])} ({len(value)} chars)"


def dimension(dist: Distribution) -> str:
    """One distribution in a few words: `4 | 8 | 16`, `log 0.001..0.3`, `int 1..8`."""
    if dist.kind is DistKind.CHOICE:
        return " | ".join(_value(v) for v in dist.values)
    prefix = {DistKind.LOGUNIFORM: "log ", DistKind.UNIFORM: "", DistKind.RANDINT: "int "}[dist.kind]
    return f"{prefix}{_value(dist.low)}..{_value(dist.high)}"


def searched_lines(spec) -> list[str]:
    """`name: values`, one line per searched parameter (and per method where it differs)."""
    lines = []
    for name, dist in spec.search.items():
        if isinstance(dist, Distribution):
            lines.append(f"{name}: {dimension(dist)}")
        else:  # PerMethod: only the methods this search can pick
            lines += [
                f"{name} ({method}): {dimension(d)}" for method, d in dist.by_method.items() if method in spec.methods
            ]
    return lines


def _part(part) -> str:
    return f"{part.n} {part.source}" + (" (listed ids)" if part.ids is not None else "")


def plan_lines(
    spec, name: str, results: str, mlflow_uri: str, address: str | None, resuming: tuple[str, str] | None = None
) -> list[str]:
    """The printed plan; `resuming` is (search id, state) for --resume."""
    budget, data, res = spec.budget, spec.data, spec.resources
    rows = [("search", f"{name}: space {spec.name}, model {_value(spec.model)}")]
    rows += [("searched" if i == 0 else "", line) for i, line in enumerate(searched_lines(spec))]
    rows += [
        (
            "budget",
            f"{budget.num_samples} trials, {budget.max_concurrent} at a time, up to {budget.max_epochs} "
            f"epochs each (ASHA: grace {budget.grace_period}, reduction factor {budget.reduction_factor}); "
            f"{res.cpu:g} CPU per trial; the model: "
            + ("one copy per GPU serving every trial there" if res.gpu else "one copy per node, on CPU"),
        ),
        (
            "data",
            f"train {_part(data.train)}, val {_part(data.val)}, "
            f"test {' + '.join(map(_part, data.test))} (seed {data.seed})",
        ),
        ("results", f"{results} (the full resolved space: space/space.json there and in MLflow)"),
        ("mlflow", mlflow_uri),
        ("ray", address or "local (in-process)"),
    ]
    if resuming is not None:
        rows.append(("resuming", f"search {resuming[0]} ({resuming[1]})"))
    out = []
    for label, text in rows:
        out += textwrap.wrap(
            text,
            WIDTH,
            initial_indent=label.ljust(LABEL),
            subsequent_indent=" " * (LABEL + 2),
            break_long_words=False,
            break_on_hyphens=False,
        )
    return [line.replace(NBSP, " ") for line in out]
