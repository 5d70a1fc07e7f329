"""Untrusted code, run and scored: generated programs execute only here, never in a trial.

Public surface (re-exported):
- `run_programs`, `Program`, `ProgramResult`, `sandbox_mode`, `SandboxUnavailable` (runner.py:
  one fresh sandboxed process per program; its docstring describes every layer);
- `score_samples`, `pass_at_k` (score.py: HumanEval's programs and pass@k, MBPP's assert lists).

Internal: filters.py (the seccomp program), paths.py (what the sandbox may read), launcher.py and
harness.py (never imported: their text runs inside the sandbox).
"""

from trainable.sandbox.runner import Program, ProgramResult, SandboxUnavailable, run_programs, sandbox_mode
from trainable.sandbox.score import pass_at_k, score_samples

__all__ = [
    "Program",
    "ProgramResult",
    "SandboxUnavailable",
    "pass_at_k",
    "run_programs",
    "sandbox_mode",
    "score_samples",
]
