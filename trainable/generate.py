"""Batched decoding with a soft prompt, cut at stop sequences: greedy, or seeded sampling.

A batch gives exactly the tokens of one-at-a-time generation (see `trainable.inputs`), so batch
size is a speed setting, never a quality one. Prompts are grouped by length to waste little on
padding, and rows that have stopped leave the batch (and the KV cache) at once. Stop sequences
are HumanEval's unless a prompt brings its own (MBPP problems do). Sampling draws each row from
its own seeded generator, so a prompt's sample does not depend on what else is in its batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from trainable.inputs import Prefix, left_padded
from trainable.model import LoadedModel

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


def truncate_at_stop(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """The completion up to (not including) the first stop sequence."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


@dataclass(frozen=True)
class Sampling:
    """Temperature + nucleus (top-p) sampling; `seeds` has one seed per prompt."""

    temperature: float
    top_p: float
    seeds: tuple[int, ...]


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generators: list) -> torch.Tensor:
    """One token per row: inverse-CDF draw over the smallest set of tokens holding `top_p`."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(-1)
    sorted_probs = sorted_probs.masked_fill(cumulative - sorted_probs >= top_p, 0.0)  # keeps the top token
    cumulative = sorted_probs.cumsum(-1)
    draws = torch.stack([torch.rand((), generator=g) for g in generators]).to(logits.device)
    picked = torch.searchsorted(cumulative, (draws * cumulative[:, -1]).unsqueeze(-1))
    picked = picked.clamp(max=order.shape[-1] - 1)
    return order.gather(-1, picked).squeeze(-1)


@dataclass
class GenerationStats:
    sequences: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def _eos_ids(loaded: LoadedModel) -> set[int]:
    ids = {loaded.tokenizer.eos_token_id}
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {i for i in ids if i is not None}


class _Rows:
    """Per-row decoding state of one batch; decides when a row is finished."""

    def __init__(self, n: int, loaded: LoadedModel, stops: list[Sequence[str]]):
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.done = [False] * n
        self.eos = _eos_ids(loaded)
        self.tokenizer = loaded.tokenizer
        self.stops = stops
        self.window = [max((len(s.encode()) for s in row_stops), default=0) + 1 for row_stops in stops]

    def add(self, row: int, token: int) -> None:
        if token in self.eos:
            self.done[row] = True
            return
        self.tokens[row].append(token)
        # A stop sequence completed by this token lies within the last `len(stop in bytes)` tokens
        # (each holds at least one of its bytes), +1 for a token that starts mid-character: decode
        # only those. Decoding the whole row every step grew with its length (40-95 ms per
        # step on a GPU, bench/README.md). The whole row is decoded to confirm, so a row stops
        # exactly where it did before.
        tail = self.tokenizer.decode(self.tokens[row][-self.window[row] :], skip_special_tokens=True)
        if any(stop in tail for stop in self.stops[row]):
            text = self.text(row)
            self.done[row] = truncate_at_stop(text, self.stops[row]) != text

    def text(self, row: int) -> str:
        return self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)


def _next_tokens(logits: torch.Tensor, sampling: Sampling | None, generators: list) -> torch.Tensor:
    if sampling is None or sampling.temperature <= 0:
        return logits.argmax(-1)
    return _sample(logits, sampling.temperature, sampling.top_p, generators)


@torch.no_grad()
def _greedy_batch(
    loaded: LoadedModel,
    token_lists: list[list[int]],
    soft_prompt,
    max_new_tokens: int,
    stats: GenerationStats,
    stops: list[Sequence[str]],
    sampling: Sampling | None = None,
    seeds: list[int] | None = None,
) -> list[str]:
    """One batch to its stops; greedy, or sampled from per-row generators with `sampling`."""
    model, embed = loaded.model, loaded.model.get_input_embeddings()
    batch = left_padded(token_lists, embed, loaded.tokenizer.pad_token_id, soft_prompt)
    out = model(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        past_key_values=batch.past_key_values,
        use_cache=True,
        logits_to_keep=1,
    )
    cache, mask = out.past_key_values, batch.attention_mask
    next_position = batch.position_ids[:, -1:] + 1
    rows = _Rows(len(token_lists), loaded, stops)
    active = list(range(len(token_lists)))  # original row of each batch row still decoding
    generators = [torch.Generator().manual_seed(seed) for seed in seeds or []]
    for _ in range(max_new_tokens):
        next_ids = _next_tokens(out.logits[:, -1], sampling, [generators[row] for row in active] if seeds else [])
        for batch_row, token in enumerate(next_ids.tolist()):
            rows.add(active[batch_row], token)
        stats.new_tokens += len(active)
        keep = [i for i, row in enumerate(active) if not rows.done[row]]
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(index)
            mask, next_position, next_ids = mask[index], next_position[index], next_ids[index]
            active = [active[i] for i in keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        out = model(
            inputs_embeds=embed(next_ids).unsqueeze(1),
            attention_mask=mask,
            position_ids=next_position,
            past_key_values=cache,
            use_cache=True,
        )
        next_position = next_position + 1
    texts = [truncate_at_stop(rows.text(row), stops[row]) for row in range(len(token_lists))]
    return texts, rows.tokens


def generate(
    loaded: LoadedModel,
    prompts: list[str],
    soft_prompt: torch.Tensor | Prefix | None = None,
    *,
    max_new_tokens: int,
    batch_size: int,
    stats: GenerationStats | None = None,
    stops: list[Sequence[str] | None] | None = None,
    sampling: Sampling | None = None,
    progress: Callable[[int], object] | None = None,
) -> list[str]:
    """Completions (greedy unless `sampling`), each cut at its first stop sequence (`stops[i]`,
    default HumanEval's), in the order of `prompts`.

    `soft_prompt`: virtual-token input embeddings [P, H] (prompt tuning, P-tuning) or a `Prefix`
    of key/values (prefix tuning), as `SoftPrompt.inputs()` gives them."""
    return generate_with_tokens(
        loaded,
        prompts,
        soft_prompt,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stats=stats,
        stops=stops,
        sampling=sampling,
        progress=progress,
    )[0]


def generate_with_tokens(
    loaded: LoadedModel,
    prompts: list[str],
    soft_prompt: torch.Tensor | Prefix | None = None,
    *,
    max_new_tokens: int,
    batch_size: int,
    stats: GenerationStats | None = None,
    stops: list[Sequence[str] | None] | None = None,
    sampling: Sampling | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[list[str], list[list[int]]]:
    """Completions and the generated token ids (up to the stop), both in the order of `prompts`;
    `progress(n)` is called as each batch of n prompts is done (a progress bar's `update`)."""
    stats = stats if stats is not None else GenerationStats()
    stops = [s or STOP_SEQUENCES for s in (stops or [None] * len(prompts))]
    if sampling is not None and len(sampling.seeds) != len(prompts):
        raise ValueError("sampling needs one seed per prompt")
    started = time.perf_counter()
    encoded = [loaded.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    completions: list[str] = [""] * len(prompts)
    tokens: list[list[int]] = [[] for _ in prompts]
    if soft_prompt is not None:
        soft_prompt = soft_prompt.detach()
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        seeds = [sampling.seeds[i] for i in chunk] if sampling is not None else None
        texts, ids = _greedy_batch(
            loaded,
            [encoded[i] for i in chunk],
            soft_prompt,
            max_new_tokens,
            stats,
            [stops[i] for i in chunk],
            sampling,
            seeds,
        )
        for i, text, row_ids in zip(chunk, texts, ids):
            completions[i], tokens[i] = text, row_ids
        if progress is not None:
            progress(len(chunk))
    stats.sequences += len(prompts)
    stats.seconds += time.perf_counter() - started
    return completions, tokens
