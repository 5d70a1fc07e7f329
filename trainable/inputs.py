"""Model inputs with the soft prompt in the right place.

Generation (left padding):  [pad ... pad][soft prompt][prompt tokens]
Training   (right padding): [soft prompt][prompt tokens][target tokens][pad ... pad]

Either way the soft prompt sits at positions 0..P-1 and the first real token at P, and the
attention mask covers the soft prompt, so a padded row sees exactly what it would see alone.
PEFT's own forward puts the soft prompt before the padding and drops position ids, which
shifts RoPE positions by the padding length: batched output then differs from one-at-a-time.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    inputs_embeds: torch.Tensor   # [B, T, H] in the model's dtype
    attention_mask: torch.Tensor  # [B, T] long, 0 on padding
    position_ids: torch.Tensor    # [B, T]


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


def left_padded(token_lists: list[list[int]], embed: torch.nn.Embedding, pad_id: int,
                soft_prompt: torch.Tensor | None = None) -> Batch:
    """Generation inputs: rows right-aligned so every row's next token is at the last column."""
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


def right_padded(token_lists: list[list[int]], embed: torch.nn.Embedding, pad_id: int,
                 soft_prompt: torch.Tensor | None = None) -> Batch:
    """Training inputs: [soft][tokens][pad]; positions count from the soft prompt's start."""
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
