"""Model inputs with the soft prompt in the right place.

Generation (left padding):  [pad ... pad][soft prompt][prompt tokens]
Training   (right padding): [soft prompt][prompt tokens][target tokens][pad ... pad]

Either way the soft prompt sits at positions 0..P-1 and the first real token at P, and the
attention mask covers the soft prompt, so a padded row sees exactly what it would see alone.
PEFT's own forward puts the soft prompt before the padding and drops position ids, which
shifts RoPE positions by the padding length: batched output then differs from one-at-a-time.

A prefix (prefix tuning) is not in the inputs: its learned key/values are the initial KV cache,
[prefix][pad ... pad][prompt tokens] with the mask covering the prefix on every row, and the
first real token again at position P (as PEFT places it for an unpadded sequence). Decoding puts
prompt tuning's and P-tuning's virtual tokens there too, once their key/values are computed
(`trainable.decoding.generate`): they attend only to each other, so every row would compute the same ones.
Rows behind different prefixes (several trials' soft prompts in one batch, training or decoding)
share one cache, each prefix right-aligned behind masked zero columns (`right_aligned_prefixes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import DynamicCache


@dataclass(frozen=True)
class Prefix:
    """Prefix tuning's learned key/values: per layer a key and a value [kv_heads, P, head_dim].

    Built from PEFT's flat layout (`prompt_embeddings` [P, layers * 2 * kv_heads * head_dim],
    viewed as [P, layers * 2, kv_heads, head_dim]: entry 2l is layer l's key, 2l + 1 its value;
    `PeftModelForCausalLM.get_prompt`). The keys enter the cache as learned, with no RoPE applied.
    """

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @classmethod
    def from_flat(cls, flat: torch.Tensor, num_layers: int, num_heads: int) -> "Prefix":
        per_layer = flat.view(flat.shape[0], num_layers * 2, num_heads, -1).permute(1, 2, 0, 3)
        return cls(tuple(per_layer[0::2]), tuple(per_layer[1::2]))

    def __len__(self) -> int:
        return self.keys[0].shape[1]

    def detach(self) -> "Prefix":
        return Prefix(tuple(k.detach() for k in self.keys), tuple(v.detach() for v in self.values))

    def cache(self, batch: int, dtype: torch.dtype) -> DynamicCache:
        """A fresh cache holding the prefix for `batch` rows (the forward appends to it in place)."""
        rows = lambda t: t.to(dtype).unsqueeze(0).expand(batch, -1, -1, -1)  # noqa: E731 - a one-line helper, named for reading
        return DynamicCache([(rows(k), rows(v)) for k, v in zip(self.keys, self.values)])


@dataclass
class Batch:
    inputs_embeds: torch.Tensor  # [B, T, H] in the model's dtype
    attention_mask: torch.Tensor  # [B, T] long, 0 on padding; [B, P + T] with a prefix
    position_ids: torch.Tensor  # [B, T]
    past_key_values: DynamicCache | None = None  # the prefix, if any


def _token_grid(token_lists: list[list[int]], pad_id: int, device, align_right: bool):
    """Token ids padded to the longest row (on the left if `align_right`) and their mask."""
    longest = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), longest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(token_lists):
        if tokens:
            cols = slice(longest - len(tokens), longest) if align_right else slice(0, len(tokens))
            ids[row, cols] = torch.tensor(tokens, device=device)
            mask[row, cols] = 1
    return ids, mask


def _soft(soft_prompt: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
    if soft_prompt is None:
        return like.new_zeros(batch, 0, like.shape[-1])
    # Cast per use: the fp32 master copy stays the leaf that receives gradients.
    return soft_prompt.to(like.dtype).unsqueeze(0).expand(batch, -1, -1)


def _with_prefix(batch: Batch, prefix: Prefix) -> Batch:
    """`batch` (built without a soft prompt) behind the prefix: mask and positions cover it."""
    rows, n = batch.attention_mask.shape[0], len(prefix)
    mask = torch.cat([batch.attention_mask.new_ones(rows, n), batch.attention_mask], dim=1)
    return Batch(batch.inputs_embeds, mask, positions(mask)[:, n:], prefix.cache(rows, batch.inputs_embeds.dtype))


def behind_prefixes(batch: Batch, prefixes: Sequence[Prefix | None]) -> Batch:
    """`batch` (built without a soft prompt) with row i behind `prefixes[i]` (None: no prefix),
    each right-aligned in as many cache columns as the longest (`right_aligned_prefixes`)."""
    if all(p is None for p in prefixes):
        return batch
    cache, prefix_mask = right_aligned_prefixes(prefixes, batch.inputs_embeds.dtype)
    mask = torch.cat([prefix_mask.to(batch.attention_mask), batch.attention_mask], dim=1)
    n = prefix_mask.shape[1]
    return Batch(batch.inputs_embeds, mask, positions(mask)[:, n:], cache)


def right_aligned_prefixes(prefixes: Sequence[Prefix | None], dtype: torch.dtype) -> tuple[DynamicCache, torch.Tensor]:
    """One cache for rows behind different prefixes (several trials' soft prompts, or none), and
    its mask [B, P_max]: per layer, row i holds `prefixes[i]` right-aligned in P_max columns with
    masked zeros before it. A row attends to its own prefix's columns only, and positions taken
    from the mask (`positions`) start at 0 on its first one, so it sees what it sees alone.
    Differentiable w.r.t. the prefixes (the training engine's gradients flow through it)."""
    some = next(p for p in prefixes if p is not None)
    width = max(len(p) for p in prefixes if p is not None)
    heads, head_dim, device = some.keys[0].shape[0], some.keys[0].shape[2], some.keys[0].device
    zeros = torch.zeros(heads, width, head_dim, dtype=dtype, device=device)

    def column(prefix: Prefix | None, part: str, layer: int) -> torch.Tensor:
        if prefix is None:
            return zeros
        tensor = getattr(prefix, part)[layer].to(dtype)
        return torch.cat([zeros[:, : width - tensor.shape[1]], tensor], dim=1)

    layers = [
        tuple(torch.stack([column(p, part, layer) for p in prefixes]) for part in ("keys", "values"))
        for layer in range(len(some.keys))
    ]
    mask = torch.zeros(len(prefixes), width, dtype=torch.long, device=device)
    for row, prefix in enumerate(prefixes):
        if prefix is not None:
            mask[row, width - len(prefix) :] = 1
    return DynamicCache(layers), mask


def left_padded(
    token_lists: list[list[int]],
    embed: torch.nn.Embedding,
    pad_id: int,
    soft_prompt: torch.Tensor | Prefix | None = None,
) -> Batch:
    """Generation inputs: rows right-aligned so every row's next token is at the last column."""
    if isinstance(soft_prompt, Prefix):
        return _with_prefix(left_padded(token_lists, embed, pad_id), soft_prompt)
    device = embed.weight.device
    ids, mask = _token_grid(token_lists, pad_id, device, align_right=True)
    longest = ids.shape[1]
    token_embeds = embed(ids)
    soft = _soft(soft_prompt, len(token_lists), token_embeds)
    n_soft = soft.shape[1]
    pad_len = longest - mask.sum(1, keepdim=True)  # [B, 1]
    # Per row: [pad][soft][tokens]. Build by moving the row's padding in front of the soft prompt.
    embeds = torch.cat([token_embeds, soft], dim=1).clone()
    full_mask = torch.cat([mask, mask.new_ones(len(token_lists), n_soft)], dim=1)
    columns = torch.arange(longest + n_soft, device=device).unsqueeze(0)
    is_pad = columns < pad_len
    is_soft = (columns >= pad_len) & (columns < pad_len + n_soft)
    gather = torch.where(is_pad, columns, torch.where(is_soft, longest + columns - pad_len, columns - n_soft))
    embeds = embeds.gather(1, gather.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    full_mask = full_mask.gather(1, gather)
    return Batch(embeds, full_mask, positions(full_mask))


def right_padded(
    token_lists: list[list[int]],
    embed: torch.nn.Embedding,
    pad_id: int,
    soft_prompt: torch.Tensor | Prefix | None = None,
) -> Batch:
    """Training inputs: [soft][tokens][pad]; positions count from the soft prompt's start."""
    if isinstance(soft_prompt, Prefix):
        return _with_prefix(right_padded(token_lists, embed, pad_id), soft_prompt)
    ids, mask = _token_grid(token_lists, pad_id, embed.weight.device, align_right=False)
    token_embeds = embed(ids)
    soft = _soft(soft_prompt, len(token_lists), token_embeds)
    embeds = torch.cat([soft, token_embeds], dim=1)
    full_mask = torch.cat([mask.new_ones(len(token_lists), soft.shape[1]), mask], dim=1)
    return Batch(embeds, full_mask, positions(full_mask))


def positions(mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions that start at 0 on each row's first unmasked column (as HF generate does)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)
