"""Decoding with soft prompts on the frozen model, and greedy pass@1 of a list of problems.

Public surface (re-exported):
- `generate`, `GenerationStats`, `Sampling`, `truncate_at_stop` (generate.py: continuous
  batching behind a soft prompt, cut at stop sequences);
- `evaluate_problems`, `EvalResult` (generate_and_score.py: generate, then score in the sandbox).

Internal: packed_linear.py (oneDNN-packed linears for CPU decoding in fp32).
"""

from trainable.decoding.generate import GenerationStats, Sampling, generate, truncate_at_stop
from trainable.decoding.generate_and_score import EvalResult, evaluate_problems

__all__ = ["EvalResult", "GenerationStats", "Sampling", "evaluate_problems", "generate", "truncate_at_stop"]
