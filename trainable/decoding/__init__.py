"""Decoding with soft prompts on the frozen model, and greedy pass@1 of a list of problems.

Public surface:
- generate.py: `generate` (continuous batching behind a soft prompt, cut at stop sequences),
  `GenerateRequest` (a call as data, what an engine serves and fuses) and `generate_request`,
  `GenerationStats`, `Sampling`, `truncate_at_stop`; imported from the module itself, which
  shares the function's name (re-exported here, the function would hide the module);
- `evaluate_problems`, `EvalResult` (generate_and_score.py, re-exported: generate, then score in
  the sandbox; `evaluate_arms` there decodes several arms in one call).

Internal: packed_linear.py (oneDNN-packed linears for CPU decoding in fp32).
"""

from trainable.decoding.generate_and_score import EvalResult, evaluate_problems

__all__ = ["EvalResult", "evaluate_problems"]
