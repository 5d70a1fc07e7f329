"""Batched decoding with a soft prompt, cut at stop sequences: greedy, or seeded sampling.

A batch gives exactly the tokens of one-at-a-time generation (see `trainable.inputs`), so batch
size is a speed setting, never a quality one. Batching is continuous: a row that stops leaves the
batch (and the KV cache) at once, and the next prompt is prefilled and joins in its place, so
every step serves a full batch until the prompts run out. A soft prompt's key/values are computed
once per call and every row decodes behind them as behind a prefix. Stop sequences
are HumanEval's unless a prompt brings its own (MBPP problems do). Sampling draws each row from
its own seeded generator, so a prompt's sample does not depend on what else is in its batch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from trainable.inputs import Prefix, left_padded
from trainable.model.loading import LoadedModel
from trainable.decoding.packed_linear import packed_linears

PREFILL_ROWS = 8  # prompts per prefill forward (see _decode)
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


@dataclass(frozen=True)
class Decoding:
    """How batches are run: four speed settings, all on by default, none meant to change a token.
    `refill` and `soft_prompt_once` give the tokens of one prompt at a time, greedy and sampled,
    and `cache_in_place` the same logits bit for bit (tests/test_generate.py); `pack_weights` gives
    the same greedy tokens where logits are not near a tie (tests/test_packed_linear.py: fp32
    rounding differs). Each is a switch so that bench/bench_eval.py can measure it against its
    absence in one process."""

    refill: bool = True  # continuous batching: a finished row's place goes to the next prompt
    pack_weights: bool = True  # on a CPU in fp32, oneDNN-packed linears (trainable.decoding.packed_linear)
    soft_prompt_once: bool = True  # virtual tokens' key/values computed once per call, not per row
    cache_in_place: bool = True  # a step writes its key/values into room in the cache (_RoomyLayer)


@dataclass
class GenerationStats:
    sequences: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    forwards: int = 0  # model calls (prefills and steps); each reads every weight once
    prompt_tokens: int = 0  # prompt tokens prefilled (padding and soft prompt not counted)

    @property
    def tokens_per_forward(self) -> float:
        """Rows served per weight read: what a bandwidth-bound device's throughput follows."""
        return self.new_tokens / self.forwards if self.forwards else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def _eos_ids(loaded: LoadedModel) -> set[int]:
    ids = {loaded.tokenizer.eos_token_id}
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {i for i in ids if i is not None}


class _Rows:
    """Per-row decoding state of one call; decides when a row is finished."""

    def __init__(self, loaded: LoadedModel, stops: list[Sequence[str]], max_new_tokens: int):
        n = len(stops)
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.picked = [0] * n  # tokens chosen so far, an end-of-sequence token included
        self.done = [False] * n
        self.eos = _eos_ids(loaded)
        self.tokenizer = loaded.tokenizer
        self.stops = stops
        self.max_new_tokens = max_new_tokens
        self.window = [max((len(s.encode()) for s in row_stops), default=0) + 1 for row_stops in stops]

    def add(self, row: int, token: int) -> None:
        self.picked[row] += 1
        if token in self.eos:
            self.done[row] = True
            return
        self.tokens[row].append(token)
        self.done[row] = self.picked[row] >= self.max_new_tokens or self.stopped(row)

    def stopped(self, row: int) -> bool:
        """Whether the row's text now holds one of its stop sequences."""
        # A stop sequence completed by the last token lies within the last `len(stop in bytes)`
        # tokens (each holds at least one of its bytes), +1 for a token that starts mid-character:
        # decode only those. Decoding the whole row every step grew with its length (bench/README.md,
        # "GPU"). The whole row is decoded to confirm, so a row stops
        # exactly where it did before.
        tail = self.tokenizer.decode(self.tokens[row][-self.window[row] :], skip_special_tokens=True)
        if not any(stop in tail for stop in self.stops[row]):
            return False
        text = self.text(row)
        return truncate_at_stop(text, self.stops[row]) != text

    def text(self, row: int) -> str:
        return self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)


def _next_tokens(logits: torch.Tensor, sampling: Sampling | None, generators: list) -> torch.Tensor:
    if sampling is None or sampling.temperature <= 0:
        return logits.argmax(-1)
    return _sample(logits, sampling.temperature, sampling.top_p, generators)


@dataclass
class _Live:
    """The rows decoding together: their KV cache, attention mask, next positions, and the logits
    of each row's next token. `rows[b]` is the prompt index of batch row b."""

    cache: DynamicCache
    mask: torch.Tensor  # [B, L]: 0 on padding, 1 on the soft prompt or prefix, prompt and output
    next_position: torch.Tensor  # [B, 1]
    logits: torch.Tensor  # [B, V]
    rows: list[int]

    def keep(self, index: list[int]) -> None:
        """Only batch rows `index` go on; columns now padding on every row leave the cache too."""
        if len(index) < len(self.rows):
            at = torch.tensor(index, device=self.mask.device)
            self.cache.batch_select_indices(at)
            self.mask, self.next_position = self.mask[at], self.next_position[at]
            self.rows = [self.rows[i] for i in index]
        attended = self.mask.any(0)
        if bool(attended.all()):
            return
        if _joinable(self.cache):
            # Behind a prefix the padding lies between it and the prompts, so columns no row
            # attends to may sit anywhere; attention does not depend on the columns' order.
            at = attended.nonzero().squeeze(1)
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys.index_select(-2, at), layer.values.index_select(-2, at)
            self.mask = self.mask[:, at]
            return
        first = int(attended.int().argmax())  # leading columns no row attends to
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
        self.mask = self.mask[:, first:]


def _prefill(loaded: LoadedModel, token_lists: list[list[int]], soft_prompt, rows: list[int]) -> _Live:
    """The prompts of `rows`, left-padded behind the soft prompt, through the model once."""
    embed = loaded.model.get_input_embeddings()
    batch = left_padded(token_lists, embed, loaded.tokenizer.pad_token_id, soft_prompt)
    out = loaded.model(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        past_key_values=batch.past_key_values,
        use_cache=True,
        logits_to_keep=1,
    )
    return _Live(out.past_key_values, batch.attention_mask, batch.position_ids[:, -1:] + 1, out.logits[:, -1], rows)


def _step(loaded: LoadedModel, live: _Live, next_ids: torch.Tensor, in_place: bool = True) -> None:
    """One token more for every live row (`in_place`: written into room in the cache)."""
    live.mask = torch.cat([live.mask, live.mask.new_ones(len(live.rows), 1)], dim=1)
    if in_place and _joinable(live.cache):
        _make_room(live.cache)
    out = loaded.model(
        inputs_embeds=loaded.model.get_input_embeddings()(next_ids).unsqueeze(1),
        attention_mask=live.mask,
        position_ids=live.next_position,
        past_key_values=live.cache,
        use_cache=True,
    )
    live.next_position = live.next_position + 1
    live.logits = out.logits[:, -1]


@torch.no_grad()
def _soft_prompt_as_prefix(loaded: LoadedModel, soft_prompt: torch.Tensor) -> Prefix | torch.Tensor:
    """The virtual tokens' key/values, computed once. They sit at positions 0..P-1 of every row
    and attend only to each other, so every row of every prefill would compute the same ones
    again (16 of a HumanEval row's ~110 prefilled tokens). As a prefix ([soft prompt's key/values]
    [pad][prompt], first prompt token at position P, `trainable.inputs`), each row attends to the
    same keys at the same positions as before. A model whose cache is not plain key/value layers
    keeps the soft prompt in its inputs."""
    embeds = soft_prompt.to(loaded.model.get_input_embeddings().weight.dtype).unsqueeze(0)
    positions = torch.arange(embeds.shape[1], device=embeds.device).unsqueeze(0)
    cache = loaded.model(inputs_embeds=embeds, position_ids=positions, use_cache=True).past_key_values
    if not _joinable(cache):
        return soft_prompt
    return Prefix(tuple(layer.keys[0] for layer in cache.layers), tuple(layer.values[0] for layer in cache.layers))


class _RoomyLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers with room for more columns, so
    a decoding step writes its key/value column in place. DynamicLayer appends with `torch.cat`,
    which copies the whole cache on every step (measured: bench/README.md, "The cache written in
    place"). Whoever replaces
    `keys`/`values` (selecting rows, dropping columns, joining) gets a fresh buffer at the next
    update."""

    ROOM = 64  # columns added per reallocation (Qwen2.5-Coder-0.5B, fp32: 1.6 MB a row)

    def __init__(self, layer: DynamicLayer):
        """Takes over `layer`'s keys and values, copied into buffers with room."""
        super().__init__()
        self.dtype, self.device, self.is_initialized = layer.dtype, layer.device, True
        self._reallocate(layer.keys, layer.values, self.ROOM)

    def _reallocate(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        n = keys.shape[-2]
        self._keys = keys.new_empty(*keys.shape[:-2], n + room, keys.shape[-1])
        self._values = values.new_empty(*values.shape[:-2], n + room, values.shape[-1])
        self._keys[..., :n, :], self._values[..., :n, :] = keys, values
        self.keys, self.values = self._keys[..., :n, :], self._values[..., :n, :]

    def _owns_views(self) -> bool:
        # The views are still buffer[..., :n, :], not tensors someone else put in their place.
        return all(
            view.data_ptr() == buffer.data_ptr()
            and view.shape[:-2] == buffer.shape[:-2]
            and view.stride() == buffer.stride()
            for view, buffer in ((self.keys, self._keys), (self.values, self._values))
        )

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n, new = self.keys.shape[-2], key_states.shape[-2]
        if not self._owns_views() or n + new > self._keys.shape[-2]:
            self._reallocate(self.keys, self.values, max(new, self.ROOM))
        self._keys[..., n : n + new, :], self._values[..., n : n + new, :] = key_states, value_states
        self.keys, self.values = self._keys[..., : n + new, :], self._values[..., : n + new, :]
        return self.keys, self.values


def _make_room(cache: DynamicCache) -> None:
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            cache.layers[i] = _RoomyLayer(layer)


def _joinable(cache: DynamicCache) -> bool:
    # Rows can join a cache whose layers are plain growing key/value tensors; a sliding-window or
    # recurrent layer keeps state that left padding would not describe.
    return all(type(layer) in (DynamicLayer, _RoomyLayer) for layer in cache.layers)


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, 0, length - t.shape[-2], 0)) if t.shape[-2] < length else t


def _join(live: _Live, fresh: _Live) -> _Live:
    """One batch of both: the shorter side padded on the left (masked key/value columns), which
    is what a row sees in any left-padded batch, so its tokens do not change."""
    length = max(live.mask.shape[1], fresh.mask.shape[1])
    pairs = [
        (
            torch.cat([_left_pad(a.keys, length), _left_pad(b.keys, length)]),
            torch.cat([_left_pad(a.values, length), _left_pad(b.values, length)]),
        )
        for a, b in zip(live.cache.layers, fresh.cache.layers)
    ]
    pad = lambda m: torch.nn.functional.pad(m, (length - m.shape[1], 0))  # noqa: E731 - a one-line helper, named for reading
    return _Live(
        DynamicCache(pairs),
        torch.cat([pad(live.mask), pad(fresh.mask)]),
        torch.cat([live.next_position, fresh.next_position]),
        torch.cat([live.logits, fresh.logits]),
        live.rows + fresh.rows,
    )


@torch.no_grad()
def _decode(
    loaded: LoadedModel,
    encoded: list[list[int]],
    order: list[int],
    soft_prompt,
    rows: _Rows,
    batch_size: int,
    stats: GenerationStats,
    sampling: Sampling | None,
    progress: Callable[[int], object] | None,
    decoding: Decoding,
) -> None:
    """Decode the prompts of `order` (in that order of admission) into `rows`, `batch_size` at a
    time. With `decoding.refill`, a row that stops is replaced by the next prompt at once (continuous
    batching): on a bandwidth-bound device each step reads every weight, so the step should serve
    a full batch, not the stragglers of one. Without it, a batch runs out before the next starts."""
    pending = list(reversed(order))  # popped from the end
    generators = {}
    live: _Live | None = None
    while pending or live is not None:
        room = batch_size - (len(live.rows) if live is not None else 0)
        filling = live is None  # a new batch: batch by batch, it may only be filled now
        # A batch is filled PREFILL_ROWS prompts per prefill: each prefill pads its rows to the
        # longest of them, and a big one ran slower per token than several small ones (a CPU at
        # 16 rows, bench/README.md). A model whose cache rows cannot join keeps its first prefill.
        while pending and room and (live is None or ((decoding.refill or filling) and _joinable(live.cache))):
            admitted = [pending.pop() for _ in range(min(room, len(pending), PREFILL_ROWS))]
            fresh = _prefill(loaded, [encoded[i] for i in admitted], soft_prompt, admitted)
            stats.forwards += 1
            stats.prompt_tokens += sum(len(encoded[i]) for i in admitted)
            live = fresh if live is None else _join(live, fresh)
            room -= len(admitted)
            if sampling is not None:
                generators.update({i: torch.Generator().manual_seed(sampling.seeds[i]) for i in admitted})
        next_ids = _next_tokens(live.logits, sampling, [generators.get(i) for i in live.rows])
        for row, token in zip(live.rows, next_ids.tolist()):
            rows.add(row, token)
        stats.new_tokens += len(live.rows)
        going_on = [b for b, row in enumerate(live.rows) if not rows.done[row]]
        if progress is not None and len(going_on) < len(live.rows):
            progress(len(live.rows) - len(going_on))
        if not going_on:
            live = None
            continue
        live.keep(going_on)
        _step(loaded, live, next_ids[going_on], decoding.cache_in_place)
        stats.forwards += 1


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
    decoding: Decoding = Decoding(),
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
        decoding=decoding,
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
    decoding: Decoding = Decoding(),
) -> tuple[list[str], list[list[int]]]:
    """Completions and the generated token ids (up to the stop), both in the order of `prompts`;
    `progress(n)` is called as n more prompts are done (a progress bar's `update`). `batch_size`
    rows decode at once."""
    stats = stats if stats is not None else GenerationStats()
    stops = [s or STOP_SEQUENCES for s in (stops or [None] * len(prompts))]
    if sampling is not None and len(sampling.seeds) != len(prompts):
        raise ValueError("sampling needs one seed per prompt")
    started = time.perf_counter()
    encoded = [loaded.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    # Longest first: a prefill pads its newcomers to the longest of them, and late, short prompts
    # fill the gaps the long ones leave at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    rows = _Rows(loaded, stops, max_new_tokens)
    if soft_prompt is not None:
        soft_prompt = soft_prompt.detach()
    if prompts and max_new_tokens > 0:
        if decoding.soft_prompt_once and isinstance(soft_prompt, torch.Tensor) and len(soft_prompt):
            soft_prompt = _soft_prompt_as_prefix(loaded, soft_prompt)
            stats.forwards += 1
        # Packing pays when several rows share a weight read; one row at a time never uses it.
        pack = decoding.pack_weights and min(batch_size, len(prompts)) > 1
        with packed_linears(loaded.model) if pack else contextlib.nullcontext():
            _decode(loaded, encoded, order, soft_prompt, rows, batch_size, stats, sampling, progress, decoding)
    elif progress is not None and prompts:
        progress(len(prompts))
    completions = [truncate_at_stop(rows.text(i), stops[i]) for i in range(len(prompts))]
    stats.sequences += len(prompts)
    stats.seconds += time.perf_counter() - started
    return completions, rows.tokens
