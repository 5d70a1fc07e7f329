"""One frozen model, many soft prompts: what trials ask of the model, for several trials at once.

    results = train_step(loaded, [LossRequest(soft_a, batch_a), LossRequest(soft_b, batch_b)])
    # results[i].loss, .tokens, .grad: trial i's mean completion loss and d loss / d soft_i
    engine = LocalEngine(loaded)   # the same, plus losses, decoding and token inits, as an object
                                   # a trial holds (search.engine_service serves it from a Ray actor)

The model is frozen and identical for every trial; trials differ only in their soft prompt.
So the rows of every request share one forward and one backward of the model, and each
trial's gradient comes from its own rows only (rows never interact). The engine knows nothing
of methods, optimizers or schedules: it takes each trial's soft-prompt *inputs*
(`SoftPrompt.inputs()`: virtual-token embeddings for prompt tuning and P-tuning after its MLP,
key/values for prefix tuning after its projection) and returns the gradient with respect to
them; the trial pushes that through its own encoder and steps its own optimizer
(`trainable.train.Trainer`). A trial alone is a request list of one.

Layout of one fused batch (`trainable.inputs` gives the layout of one request):
    cache:  [unused (masked)][that row's prefix]         P_max columns, empty without prefixes
    inputs: [that row's virtual tokens][its tokens][pad]  right padding to the longest row
Every row sees exactly what it would see in its own batch: the same unmasked columns, the same
positions (its first token at the number of virtual tokens or prefix columns before it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from trainable.decoding.generate import GenerateRequest, Generation, generate_request
from trainable.inputs import Prefix, positions, right_aligned_prefixes
from trainable.model.loading import LoadedModel, ModelRef

if TYPE_CHECKING:  # the examples' type; trainable.train imports this module
    from trainable.train import TrainExample

IGNORE = -100


@dataclass(frozen=True)
class LossRequest:
    """One trial's share of a step: its soft-prompt inputs and its batch of examples."""

    soft: torch.Tensor | Prefix | None  # [P, H] embeddings, a prefix, or none (the frozen model)
    examples: Sequence["TrainExample"]


@dataclass(frozen=True)
class StepResult:
    loss: float
    tokens: int  # positions processed for this request, virtual tokens and prefix included
    grad: torch.Tensor | Prefix | None  # d loss / d soft, shaped like the request's soft


def fused_completion_loss(loaded: LoadedModel, requests: Sequence[LossRequest]) -> list[tuple[torch.Tensor, int]]:
    """Each request's mean cross-entropy over its completion tokens (differentiable w.r.t. its
    soft inputs) and the positions it processed, from one forward of the frozen model."""
    rows = [(index, example) for index, request in enumerate(requests) for example in request.examples]
    per_token, owner, tokens_per_row = _rows_forward(loaded, requests, rows)
    out = []
    for index in range(len(requests)):
        tokens = sum(t for t, (i, _) in zip(tokens_per_row, rows) if i == index)
        out.append((per_token[owner == index].mean(), int(tokens)))
    return out


def _rows_forward(loaded: LoadedModel, requests: Sequence[LossRequest], rows: list[tuple[int, "TrainExample"]]):
    """One forward over `rows` ((request index, example) pairs): the cross-entropy of every
    completion token, the request each belongs to, and the positions each row processed."""
    model = loaded.model
    embed = model.get_input_embeddings()
    if not rows:
        raise ValueError("a training step needs at least one example")
    soft_len = [_soft_len(r.soft) for r in requests]
    prefix_len = [len(r.soft) if isinstance(r.soft, Prefix) else 0 for r in requests]
    n_prefix = max(prefix_len[i] for i, _ in rows)
    width = max(soft_len[i] + len(ex.tokens) for i, ex in rows)
    pad_id = loaded.tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=embed.weight.device)
    for row, (i, ex) in enumerate(rows):
        ids[row, : len(ex.tokens)] = torch.tensor(ex.tokens, device=ids.device)
    token_embeds = embed(ids)
    embeds, mask, labels = [], torch.zeros_like(ids), torch.full_like(ids, IGNORE)
    for row, (i, ex) in enumerate(rows):
        soft = requests[i].soft
        n_soft, n_tokens = soft_len[i], len(ex.tokens)
        parts = [soft.to(token_embeds.dtype)] if n_soft else []
        parts.append(token_embeds[row, : width - n_soft])  # tokens, then pad: `width` columns
        embeds.append(torch.cat(parts) if n_soft else parts[0])
        mask[row, : n_soft + n_tokens] = 1
        labels[row, n_soft + ex.n_prompt : n_soft + n_tokens] = ids[row, ex.n_prompt : n_tokens]
    full_mask = mask
    cache = None
    if n_prefix:
        prefixes = [requests[i].soft if prefix_len[i] else None for i, _ in rows]
        cache, prefix_mask = right_aligned_prefixes(prefixes, token_embeds.dtype)
        full_mask = torch.cat([prefix_mask.to(mask), mask], dim=1)
    hidden = model.get_decoder()(
        inputs_embeds=torch.stack(embeds),
        attention_mask=full_mask,
        position_ids=positions(full_mask)[:, n_prefix:],
        past_key_values=cache,
    ).last_hidden_state
    targets = labels[:, 1:]  # the hidden state at t predicts token t+1
    selected = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][selected]).float()
    per_token = F.cross_entropy(logits, targets[selected], reduction="none")
    owner = torch.tensor([i for i, _ in rows], device=ids.device).unsqueeze(1).expand_as(targets)[selected]
    return per_token, owner, full_mask.sum(1).tolist()


def _soft_len(soft) -> int:
    return soft.shape[0] if isinstance(soft, torch.Tensor) else 0


def _targets(example: "TrainExample", n_soft: int) -> int:
    """How many completion tokens of `example` carry loss (the first column predicts nothing)."""
    return (n_soft + len(example.tokens)) - max(n_soft + example.n_prompt, 1)


def train_step(
    loaded: LoadedModel, requests: Sequence[LossRequest], rows_per_forward: int | None = None
) -> list[StepResult]:
    """Every request's rows through the frozen model, forward and backward, in forwards of at
    most `rows_per_forward` rows (default: the largest request's batch, so a step of many trials
    holds about one trial's activations), rows of similar length together (little padding);
    each result holds its request's loss and the gradient of that loss w.r.t. its soft inputs."""
    leaves = [_leaf(r.soft) for r in requests]
    leafed = [LossRequest(leaf, r.examples) for leaf, r in zip(leaves, requests)]
    rows = [(index, example) for index, request in enumerate(leafed) for example in request.examples]
    if not rows:
        raise ValueError("a training step needs at least one example")
    width = lambda row: _soft_len(leafed[row[0]].soft) + len(row[1].tokens)  # noqa: E731
    rows.sort(key=width)
    size = rows_per_forward or max(len(r.examples) for r in requests)
    counts = [sum(_targets(ex, _soft_len(r.soft)) for ex in r.examples) for r in leafed]
    sums, tokens = [0.0] * len(requests), [0] * len(requests)
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        per_token, owner, tokens_per_row = _rows_forward(loaded, leafed, chunk)
        total = per_token.new_zeros(())
        for index in sorted({i for i, _ in chunk}):
            part = per_token[owner == index].sum()
            sums[index] += part.item()
            total = total + part / counts[index]
        if total.requires_grad:
            total.backward()  # each request's own rows only reach its own leaves
        for (index, _), n in zip(chunk, tokens_per_row):
            tokens[index] += int(n)
    return [
        StepResult(total_loss / count if count else float("nan"), n, _grad(leaf))
        for total_loss, count, n, leaf in zip(sums, counts, tokens, leaves)
    ]


@torch.no_grad()
def losses(
    loaded: LoadedModel, requests: Sequence[LossRequest], rows_per_forward: int | None = None
) -> list[tuple[float, int]]:
    """`train_step`'s losses and positions without its backward: rows in forwards of at most
    `rows_per_forward` (default: the largest request's batch), similar lengths together."""
    rows = [(index, example) for index, request in enumerate(requests) for example in request.examples]
    rows.sort(key=lambda row: _soft_len(requests[row[0]].soft) + len(row[1].tokens))
    size = rows_per_forward or max(1, max(len(r.examples) for r in requests))
    sums, counts, tokens = [0.0] * len(requests), [0] * len(requests), [0] * len(requests)
    for start in range(0, len(rows), size):
        chunk = rows[start : start + size]
        per_token, owner, tokens_per_row = _rows_forward(loaded, requests, chunk)
        for index in {i for i, _ in chunk}:
            mine = per_token[owner == index]
            sums[index] += mine.sum().item()
            counts[index] += mine.numel()
        for (index, _), n in zip(chunk, tokens_per_row):
            tokens[index] += int(n)
    return [(s / c if c else float("nan"), n) for s, c, n in zip(sums, counts, tokens)]


def _leaf(soft):
    if soft is None:
        return None
    if isinstance(soft, Prefix):
        return Prefix(tuple(_leaf(k) for k in soft.keys), tuple(_leaf(v) for v in soft.values))
    return soft.detach().requires_grad_(True)


def _grad(leaf):
    if leaf is None:
        return None
    if isinstance(leaf, Prefix):
        return Prefix(tuple(_grad(k) for k in leaf.keys), tuple(_grad(v) for v in leaf.values))
    return leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)


def backward_into(soft: torch.Tensor | Prefix, grad: torch.Tensor | Prefix) -> None:
    """Push the engine's gradient w.r.t. the soft inputs back through the trial's own encoder."""
    if isinstance(soft, Prefix):
        torch.autograd.backward([*soft.keys, *soft.values], [*grad.keys, *grad.values])
    else:
        torch.autograd.backward(soft, grad)


@dataclass(frozen=True)
class ModelFacts:
    """What a trial knows of the frozen model without holding its weights: enough to tokenize,
    to shape and save its soft prompt, and to record what it ran on."""

    ref: ModelRef
    identity: dict
    tokenizer: PreTrainedTokenizerBase
    config: PretrainedConfig
    dtype: torch.dtype  # the engine's compute dtype (soft prompts stay fp32)
    device: torch.device  # where the client keeps its soft prompt


class LocalEngine:
    """The frozen model in this process, serving every request given to it.

    A trial, `trainable.evaluate`, `interpolate` and the report's arms talk to an engine only;
    under Ray Tune the same methods are served by one actor per device that fuses the requests of
    every trial on it (`search.engine_service`). `rows_per_forward`: `train_step`'s;
    `dtype_reason`: why the model runs in its dtype (recorded with every trial's metrics)."""

    def __init__(
        self,
        loaded: LoadedModel,
        rows_per_forward: int | None = None,
        dtype_reason: str = "given: the caller's loaded model",
    ):
        self.loaded, self.rows_per_forward, self.dtype_reason = loaded, rows_per_forward, dtype_reason

    @property
    def facts(self) -> ModelFacts:
        loaded = self.loaded
        return ModelFacts(
            loaded.ref, loaded.identity, loaded.tokenizer, loaded.model.config, loaded.dtype, loaded.device
        )

    @torch.no_grad()
    def embed(self, ids: list[int]) -> torch.Tensor:
        """The input embeddings of `ids` [n, H], fp32 (token inits of prompt tuning)."""
        table = self.loaded.model.get_input_embeddings()
        return table(torch.tensor(ids, dtype=torch.long, device=table.weight.device)).float()

    @torch.no_grad()
    def prefix_from_tokens(self, ids: list[int]) -> torch.Tensor:
        """The key/values the frozen model computes for `ids` at positions 0..P-1, in PEFT's flat
        layout (fp32): as a prefix they make the model read what follows as if `ids` came first."""
        out = self.loaded.model(input_ids=torch.tensor([ids], device=self.loaded.device), use_cache=True)
        per_layer = [t[0] for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return torch.stack(per_layer).permute(2, 0, 1, 3).reshape(len(ids), -1).float()  # inverse of Prefix.from_flat

    def train_step(self, requests: Sequence[LossRequest], rows_per_forward: int | None = None) -> list[StepResult]:
        return train_step(self.loaded, requests, rows_per_forward or self.rows_per_forward)

    def losses(self, requests: Sequence[LossRequest]) -> list[tuple[float, int]]:
        """Each request's mean completion loss and processed positions, without gradients."""
        return losses(self.loaded, requests, self.rows_per_forward)

    def generate(self, request: GenerateRequest, progress=None) -> Generation:
        return self.generate_together([request], progress)[0]

    def generate_together(self, requests: Sequence[GenerateRequest], progress=None) -> list[Generation]:
        """Every request's completions; requests that can share steps (equal `max_new_tokens` and
        sampling settings) share one decode, each row behind its own soft prompt, so each gets
        exactly the tokens of its own call. A shared decode holds the sum of its requests' batch
        sizes at once; each request's `stats` are the shared decode's."""
        out: list[Generation | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.fuses_with(), []).append(index)
        for members in groups.values():
            fused = generate_request(self.loaded, GenerateRequest.merge([requests[i] for i in members]), progress)
            start = 0
            for index in members:
                n = len(requests[index].prompts)
                out[index] = Generation(fused.texts[start : start + n], fused.tokens[start : start + n], fused.stats)
                start += n
        return out


def as_engine(model: "LoadedModel | LocalEngine | object"):
    """An engine for `model`: a loaded model gets an in-process one; an engine is itself."""
    return LocalEngine(model) if isinstance(model, LoadedModel) else model
