"""Sandbox throughput on the 164 HumanEval canonical solutions, per isolation mode.

    .venv/bin/python bench/bench_sandbox.py [--repeat N]

Columns: wall time and programs/s for the 164 programs on all cores; per-program latency of a
trivial `pass` program run alone (start-up + isolation + verdict) against exec'ing the same
program in-process, whose difference is the sandbox's fixed cost per program. Rows: every mode
with all layers, then bwrap without the kernel filters (seccomp + Landlock) and without the
in-process guard, to show what each layer costs. Fallback modes run here because they are
asked for by name (the scorer never picks them on its own).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainable.sandbox import runner as sandbox  # noqa: E402 - after the sys.path line above
from trainable.config import TrainConfig  # noqa: E402 - after the sys.path line above
from trainable.data.splits import load_problems  # noqa: E402 - after the sys.path line above
from trainable.sandbox.score import build_program  # noqa: E402 - after the sys.path line above

TIMEOUT_S = TrainConfig.sandbox_timeout_s  # the searches' per-program limit


def available_modes() -> list[str]:
    modes = []
    if shutil.which("bwrap") and sandbox.run_programs(["pass"], timeout_s=TIMEOUT_S, mode="bwrap")[0].passed:
        modes.append("bwrap")
    if sandbox._netns_works():
        modes.append("rlimits+netns")
    return modes + ["rlimits"]


def in_process_seconds(source: str, n: int = 2000) -> float:
    code = compile(source, "<program>", "exec")
    start = time.perf_counter()
    for _ in range(n):
        exec(code, {})
    return (time.perf_counter() - start) / n


def bench(mode: str, programs: list, workers: int, repeat: int, **layers) -> dict:
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        results = sandbox.run_programs(programs, timeout_s=TIMEOUT_S, mode=mode, workers=workers, **layers)
        walls.append(time.perf_counter() - start)
        assert all(r.passed for r in results), [r for r in results if not r.passed][:3]
    trivial = []
    for _ in range(10 * repeat):
        start = time.perf_counter()
        assert sandbox.run_programs(["pass"], timeout_s=TIMEOUT_S, mode=mode, workers=1, **layers)[0].passed
        trivial.append(time.perf_counter() - start)
    wall, latency = min(walls), sorted(trivial)[len(trivial) // 2]
    label = mode + "".join(f", no {name.replace('_', ' ')}" for name, on in layers.items() if not on)
    return {
        "mode": label,
        "workers": workers,
        "programs": len(programs),
        "wall_s": wall,
        "per_s": len(programs) / wall,
        "latency_ms": latency * 1e3,
        "overhead_ms": (latency - in_process_seconds("pass")) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs")
    args = parser.parse_args()
    programs = [build_program(p, p["canonical_solution"]) for p in load_problems().values()]
    workers = os.cpu_count() or 1
    warnings.simplefilter("ignore", RuntimeWarning)  # the weaker modes announce themselves
    print(
        f"python {sys.version.split()[0]}, {workers} cores, default mode: "
        f"{sandbox.sandbox_mode()}, in-process exec of `pass`: "
        f"{in_process_seconds('pass') * 1e6:.2f} us"
    )
    header = ("mode", "workers", "programs", "wall s", "programs/s", "pass latency ms", "overhead ms/program")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    rows = [(mode, {}) for mode in available_modes()]
    if rows[0][0] == "bwrap":
        rows += [
            ("bwrap", {"kernel_filters": False}),
            ("bwrap", {"guard": False}),
            ("bwrap", {"kernel_filters": False, "guard": False}),
        ]
    for mode, layers in rows:
        row = bench(mode, programs, workers, args.repeat, **layers)
        print(
            f"| {row['mode']} | {row['workers']} | {row['programs']} | {row['wall_s']:.2f} | "
            f"{row['per_s']:.1f} | {row['latency_ms']:.1f} | {row['overhead_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
