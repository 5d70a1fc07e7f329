"""Trial throughput of a finished search: seconds per trial, trials per hour, where time goes.

    python bench/bench_trial.py runs/<search>        # e.g. after `python -m search.run --space smoke`

Reads Tune's per-epoch results (result.json of every trial) and splits each trial's span
(Tune's time_total_s) into training, generation (+ val loss), sandbox, and the rest: set-up in
the trial (model from the per-process cache, soft prompt, data), checkpointing and Tune's
reporting. Actor start-up and MLflow writes (in the driver) are outside the span.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import print_table  # noqa: E402 - after the sys.path line above


def trial_rows(experiment: Path) -> list[dict]:
    rows = []
    for result_file in sorted(experiment.glob("*/result.json")):
        epochs = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if not epochs:
            continue
        # Tune's time_total_s: from the trial function's start (model from the per-process cache,
        # soft prompt, data) to its last report, summed over restores. (`timestamp` is whole seconds.)
        span = epochs[-1]["time_total_s"]
        train = sum(e["train_seconds"] for e in epochs)
        evaluate = sum(e["eval_seconds"] for e in epochs)
        sandbox = sum(e["sandbox_seconds"] for e in epochs)
        rows.append(
            {
                "trial": epochs[0]["trial_id"],
                "epochs": len(epochs),
                "span": span,
                "train": train,
                "generation": evaluate - sandbox,
                "sandbox": sandbox,
                "other": max(0.0, span - train - evaluate),
            }
        )
    return rows


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python bench/bench_trial.py runs/<search>")
    rows = trial_rows(Path(sys.argv[1]))
    if not rows:
        raise SystemExit(f"no trial results under {sys.argv[1]}")
    table = [
        [
            r["trial"],
            r["epochs"],
            r["span"],
            r["train"],
            r["generation"],
            r["sandbox"],
            r["other"],
            r["span"] / r["epochs"],
        ]
        for r in rows
    ]
    total = {k: sum(r[k] for r in rows) for k in ("span", "train", "generation", "sandbox", "other")}
    epochs = sum(r["epochs"] for r in rows)
    table.append(
        [
            "all",
            epochs,
            total["span"],
            total["train"],
            total["generation"],
            total["sandbox"],
            total["other"],
            total["span"] / epochs,
        ]
    )
    print_table(
        ["trial", "epochs", "span s", "train s", "generation s", "sandbox s", "ray+setup+ckpt s", "s/epoch"], table
    )
    share = {k: 100 * total[k] / total["span"] for k in ("train", "generation", "sandbox", "other")}
    print("share of trial time: " + ", ".join(f"{k} {v:.1f}%" for k, v in share.items()))
    print(
        f"seconds per trial: {total['span'] / len(rows):.1f} (mean over {len(rows)}, incl. early-stopped); "
        f"trials per hour at concurrency 1: {3600 * len(rows) / total['span']:.1f}"
    )
    print(f"Ray + set-up + checkpoint overhead per trial (span - train - eval): {total['other'] / len(rows):.2f} s")


if __name__ == "__main__":
    main()
