"""Batched decoding behind soft prompts, cut at stop sequences: greedy, or seeded sampling.

    out = generate(loaded, prompts, soft_prompt, max_new_tokens=128, batch_size=16)
    out.texts, out.tokens, out.stats   # per prompt; GenerationStats of the call

A batch gives exactly the tokens of one-at-a-time generation (see `trainable.inputs`), so batch
size is a speed setting, never a quality one. Batching is continuous: a row that stops leaves the
batch (and the KV cache) at once, and the next prompt is prefilled and joins in its place, so
every step serves a full batch until the prompts run out. A soft prompt's key/values are computed
once per call and every row decodes behind them as behind a prefix. `soft_prompt` may also be a
list with one entry per prompt: the rows of several trials (one frozen model, each trial its own
soft prompt, or none) then decode in one continuous batch, each row behind its own prefix.
On a CPU in fp32 the linears use oneDNN-packed weights while decoding (`trainable.decoding.packed_linear`),
and a step writes its key/values into room in the cache (`_RoomyLayer`). bench/decoding_variants.py
swaps each of these out to measure it (bench/bench_eval.py). Stop sequences are HumanEval's unless
a prompt brings its own (MBPP problems do). Sampling draws each row from its own seeded generator,
so a prompt's sample does not depend on what else is in its batch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from trainable.inputs import Prefix, behind_prefixes, left_padded
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


@dataclass
class GenerationStats:
    sequences: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    forwards: int = 0  # model calls (prefills and steps); each reads every weight once
    prompt_tokens: int = 0  # prompt tokens prefilled (padding and soft prompt not counted)

    def add(self, other: "GenerationStats") -> None:
        """Count `other`'s call into these (the parts of one request sent as several calls)."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

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


def _prefill(loaded: LoadedModel, token_lists: list[list[int]], soft, rows: list[int]) -> _Live:
    """The prompts of `rows`, left-padded, through the model once. `soft`: one soft prompt for
    every row (embeddings in the inputs, a prefix, or None), or a list with each row's prefix or
    None (`trainable.inputs.behind_prefixes`)."""
    embed, pad_id = loaded.model.get_input_embeddings(), loaded.tokenizer.pad_token_id
    if isinstance(soft, list):
        batch = behind_prefixes(left_padded(token_lists, embed, pad_id), soft)
    else:
        batch = left_padded(token_lists, embed, pad_id, soft)
    out = loaded.model(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        past_key_values=batch.past_key_values,
        use_cache=True,
        logits_to_keep=1,
    )
    return _Live(out.past_key_values, batch.attention_mask, batch.position_ids[:, -1:] + 1, out.logits[:, -1], rows)


def _step(loaded: LoadedModel, live: _Live, next_ids: torch.Tensor) -> None:
    """One token more for every live row, its key/values written into room in the cache."""
    live.mask = torch.cat([live.mask, live.mask.new_ones(len(live.rows), 1)], dim=1)
    if _joinable(live.cache):
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
    is what a row sees in any left-padded batch, so its tokens do not change. A row's prefix is
    cache columns like its prompt's (positions come from the mask), so rows behind prefixes of
    different widths, or none, join the same way."""
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


@dataclass
class _Call:
    """One generate call: its prompts' token ids and soft prompts (`_shared_prefixes`), the rows'
    state, the stats, and each admitted prompt's sampling generator."""

    loaded: LoadedModel
    encoded: list[list[int]]
    softs: list  # per prompt: a Prefix, None, or embeddings kept in the inputs
    rows: _Rows
    stats: GenerationStats
    sampling: Sampling | None
    progress: Callable[[int], object] | None
    generators: dict[int, torch.Generator] = field(default_factory=dict)


def _prefill_softs(call: _Call, admitted: list[int]):
    """What `_prefill` puts ahead of `admitted`: each row's prefix or None, or the one soft prompt
    they share in their inputs (such rows are decoded in groups of one soft prompt: `_groups`)."""
    softs = [call.softs[i] for i in admitted]
    return softs[0] if isinstance(softs[0], torch.Tensor) else softs


def _admit(call: _Call, pending: list[int], live: _Live | None, batch_size: int) -> _Live:
    """Pending prompts (popped from the end) prefilled and joined into `live` up to `batch_size`
    rows. A batch is filled PREFILL_ROWS prompts per prefill: each prefill pads its rows to the
    longest of them, and a big one ran slower per token than several small ones (a CPU at 16 rows,
    bench/README.md). A model whose cache rows cannot join keeps its first prefill."""
    while pending and (live is None or (len(live.rows) < batch_size and _joinable(live.cache))):
        room = batch_size - (len(live.rows) if live is not None else 0)
        admitted = [pending.pop() for _ in range(min(room, len(pending), PREFILL_ROWS))]
        fresh = _prefill(call.loaded, [call.encoded[i] for i in admitted], _prefill_softs(call, admitted), admitted)
        call.stats.forwards += 1
        call.stats.prompt_tokens += sum(len(call.encoded[i]) for i in admitted)
        live = fresh if live is None else _join(live, fresh)
        if call.sampling is not None:
            call.generators.update({i: torch.Generator().manual_seed(call.sampling.seeds[i]) for i in admitted})
    return live


def _advance(call: _Call, live: _Live) -> _Live | None:
    """Every live row's next token; rows that are done leave, the others take one step. None
    when no row goes on."""
    next_ids = _next_tokens(live.logits, call.sampling, [call.generators.get(i) for i in live.rows])
    for row, token in zip(live.rows, next_ids.tolist()):
        call.rows.add(row, token)
    call.stats.new_tokens += len(live.rows)
    going_on = [b for b, row in enumerate(live.rows) if not call.rows.done[row]]
    if call.progress is not None and len(going_on) < len(live.rows):
        call.progress(len(live.rows) - len(going_on))
    if not going_on:
        return None
    live.keep(going_on)
    _step(call.loaded, live, next_ids[going_on])
    call.stats.forwards += 1
    return live


@torch.no_grad()
def _decode(call: _Call, order: list[int], batch_size: int) -> None:
    """Decode the prompts of `order` (in that order of admission), `batch_size` rows at a time.
    A row that stops is replaced by the next prompt at once (continuous batching): on a
    bandwidth-bound device each step reads every weight, so the step should serve a full batch,
    not the stragglers of one."""
    pending = list(reversed(order))  # popped from the end
    live: _Live | None = None
    while pending or live is not None:
        live = _advance(call, _admit(call, pending, live, batch_size))


def _per_prompt(soft_prompt, n: int) -> list:
    if not isinstance(soft_prompt, (list, tuple)):
        return [soft_prompt] * n
    if len(soft_prompt) != n:
        raise ValueError(f"soft_prompt: got a list of {len(soft_prompt)}, expected one entry per prompt ({n})")
    return list(soft_prompt)


def _shared_prefixes(loaded: LoadedModel, softs: list, stats: GenerationStats) -> list:
    """Each prompt's soft prompt as decoding uses it: a prefix or None. Virtual-token embeddings
    become a prefix once per distinct soft prompt (`_soft_prompt_as_prefix`), not once per row;
    a model whose cache is not plain key/value layers keeps them in the inputs."""
    decoded: dict[int, Prefix | torch.Tensor | None] = {}  # by identity: `softs` holds them all
    for soft in softs:
        if id(soft) not in decoded:
            decoded[id(soft)] = _as_prefix(loaded, soft, stats)
    return [decoded[id(soft)] for soft in softs]


def _as_prefix(loaded: LoadedModel, soft, stats: GenerationStats) -> Prefix | torch.Tensor | None:
    if soft is None or (isinstance(soft, torch.Tensor) and len(soft) == 0):
        return None  # no virtual tokens: nothing ahead of the prompt
    if isinstance(soft, Prefix):
        return soft.detach()
    stats.forwards += 1
    return _soft_prompt_as_prefix(loaded, soft.detach())


def _groups(softs: list, order: list[int]) -> list[list[int]]:
    """`order` split into the prompts that may share batches: all of them, unless some soft
    prompt stays in the inputs (then one group per soft prompt, each decoded in turn: rows with
    different virtual tokens in their inputs cannot share a prefill)."""
    if not any(isinstance(s, torch.Tensor) for s in softs):
        return [order]
    keys = list(dict.fromkeys(id(softs[i]) for i in order))
    return [[i for i in order if id(softs[i]) == key] for key in keys]


@dataclass
class Generation:
    """A generate call's results, per prompt in the order given: the completion cut at its first
    stop sequence, the generated token ids (up to the stop), and the call's stats."""

    texts: list[str]
    tokens: list[list[int]]
    stats: GenerationStats


SoftInput = torch.Tensor | Prefix | None  # one soft prompt, as decoding takes it


def generate(
    loaded: LoadedModel,
    prompts: list[str],
    soft_prompt: SoftInput | Sequence[SoftInput] = None,
    *,
    max_new_tokens: int,
    batch_size: int,
    stops: list[Sequence[str] | None] | None = None,
    sampling: Sampling | None = None,
    progress: Callable[[int], object] | None = None,
) -> Generation:
    """Completions of `prompts` (greedy unless `sampling`), each cut at its first stop sequence
    (`stops[i]`, default HumanEval's), `batch_size` rows decoding at once; `progress(n)` is called
    as n more prompts are done (a progress bar's `update`).

    `soft_prompt`: virtual-token input embeddings [P, H] (prompt tuning, P-tuning) or a `Prefix`
    of key/values (prefix tuning), as `SoftPrompt.inputs()` gives them, or None; or a list of
    those with one entry per prompt (several trials' rows in one batch, each behind its own)."""
    stops = [s or STOP_SEQUENCES for s in (stops or [None] * len(prompts))]
    softs = _per_prompt(soft_prompt, len(prompts))
    if sampling is not None and len(sampling.seeds) != len(prompts):
        raise ValueError("sampling needs one seed per prompt")
    stats, started = GenerationStats(), time.perf_counter()
    encoded = [loaded.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    # Longest first: a prefill pads its newcomers to the longest of them, and late, short prompts
    # fill the gaps the long ones leave at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    rows = _Rows(loaded, stops, max_new_tokens)
    if prompts and max_new_tokens > 0:
        call = _Call(loaded, encoded, _shared_prefixes(loaded, softs, stats), rows, stats, sampling, progress)
        # Packing pays when several rows share a weight read; one row at a time never uses it.
        with packed_linears(loaded.model) if min(batch_size, len(prompts)) > 1 else contextlib.nullcontext():
            for group in _groups(call.softs, order):
                _decode(call, group, batch_size)
    elif progress is not None and prompts:
        progress(len(prompts))
    texts = [truncate_at_stop(rows.text(i), stops[i]) for i in range(len(prompts))]
    stats.sequences += len(prompts)
    stats.seconds += time.perf_counter() - started
    return Generation(texts, rows.tokens, stats)


@dataclass(frozen=True)
class GenerateRequest:
    """One `generate` call as data: what an engine serves (`trainable.engine`), fused with other
    requests that `fuses_with` the same settings (`merge`)."""

    prompts: list[str]
    soft: SoftInput | list[SoftInput] = None  # one soft prompt for every prompt, or one per prompt
    max_new_tokens: int = 0
    batch_size: int = 1
    stops: list[Sequence[str] | None] | None = None
    sampling: Sampling | None = None

    def fuses_with(self) -> tuple:
        """Requests with equal keys can decode in one call."""
        s = self.sampling
        return (self.max_new_tokens, None if s is None else (s.temperature, s.top_p))

    def per_prompt_softs(self) -> list[SoftInput]:
        return list(self.soft) if isinstance(self.soft, list) else [self.soft] * len(self.prompts)

    def part(self, start: int, end: int) -> "GenerateRequest":
        """Prompts start..end of this request, with their soft prompts, stops and seeds (the
        inverse of `merge`)."""
        sampling = self.sampling
        if sampling is not None:
            sampling = Sampling(sampling.temperature, sampling.top_p, sampling.seeds[start:end])
        return replace(
            self,
            prompts=self.prompts[start:end],
            soft=self.soft[start:end] if isinstance(self.soft, list) else self.soft,
            stops=self.stops[start:end] if self.stops else None,
            sampling=sampling,
        )

    @classmethod
    def merge(cls, requests: Sequence["GenerateRequest"]) -> "GenerateRequest":
        """One request holding every request's prompts in order (they must fuse), its batch the sum."""
        first = requests[0]
        if len(requests) == 1:
            return first
        if any(r.fuses_with() != first.fuses_with() for r in requests):
            raise ValueError("requests with different decoding settings cannot be merged")
        stops = [s for r in requests for s in (r.stops or [None] * len(r.prompts))]
        sampling = None
        if first.sampling is not None:
            sampling = Sampling(
                first.sampling.temperature, first.sampling.top_p, tuple(x for r in requests for x in r.sampling.seeds)
            )
        return cls(
            [p for r in requests for p in r.prompts],
            [s for r in requests for s in r.per_prompt_softs()],
            first.max_new_tokens,
            sum(r.batch_size for r in requests),
            stops,
            sampling,
        )


def generate_request(
    loaded: LoadedModel, request: GenerateRequest, progress: Callable[[int], object] | None = None
) -> Generation:
    """`generate` for a request."""
    return generate(
        loaded,
        request.prompts,
        request.soft,
        max_new_tokens=request.max_new_tokens,
        batch_size=request.batch_size,
        stops=request.stops,
        sampling=request.sampling,
        progress=progress,
    )
