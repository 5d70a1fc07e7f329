"""Batched generation must give exactly the tokens of one-at-a-time generation."""

import contextlib

import pytest
import torch

from trainable.config import TrainConfig
from trainable.data.splits import load_problems
from bench.decoding_variants import decoding_without
from trainable.decoding.generate import STOP_SEQUENCES, GenerationStats, Sampling, generate, truncate_at_stop
from trainable.inputs import Prefix, left_padded
from trainable.model.loading import LoadedModel, ModelRef
from trainable.tiny import tiny_model, tiny_tokenizer


def _scaled_tiny() -> LoadedModel:
    # Small random weights give near-uniform logits, under which a padding bug hides; scaled-up
    # weights spread the logits so that any shift in positions changes the argmax.
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), seed=1, weight_scale=6.0)
    model.generation_config.eos_token_id = None  # run every row to max_new_tokens
    return LoadedModel(model, tokenizer, ModelRef("tiny", "local", "tiny"))


def _prompts(n: int) -> list[str]:
    problems = list(load_problems().values())
    return [problems[i]["prompt"] for i in (0, 2, 7, 11, 22, 35, 53, 80)[:n]]


def test_batched_equals_single_token_for_token():
    loaded = _scaled_tiny()
    torch.manual_seed(0)
    soft = torch.randn(5, loaded.model.config.hidden_size) * 2
    prompts = _prompts(8)
    lengths = {len(loaded.tokenizer(p)["input_ids"]) for p in prompts}
    assert len(lengths) > 4, "prompts of different lengths are what exercises the padding"
    batched = generate(loaded, prompts, soft, max_new_tokens=24, batch_size=8).tokens
    for prompt, tokens in zip(prompts, batched):
        single = generate(loaded, [prompt], soft, max_new_tokens=24, batch_size=1).tokens
        assert tokens == single[0]
    assert any(batched), "generation produced tokens"


def _method_prompt(loaded, settings: dict, tokens: int = 5):
    """A soft prompt of one method, moved off its init so that it changes the output. (A prefix's
    keys must be as large as the scaled model's own, about 10 per element, to draw attention.)"""
    from trainable.softprompt import SoftPrompt

    prompt = SoftPrompt.create(loaded, TrainConfig(num_virtual_tokens=tokens, **settings))
    scale = 20.0 if settings["method"] == "prefix_tuning" else 1.0
    torch.manual_seed(2)
    with torch.no_grad():
        for p in prompt.parameters():
            p.add_(torch.randn_like(p) * scale)
        return prompt.inputs()


METHODS = {
    "prompt_tuning": {"method": "prompt_tuning"},
    "p_tuning": {"method": "p_tuning", "encoder_hidden_size": 32},
    "prefix_tuning": {"method": "prefix_tuning"},
    "prefix_projected": {"method": "prefix_tuning", "prefix_projection": 16},
}


@pytest.mark.parametrize("settings", METHODS.values(), ids=METHODS.keys())
def test_batched_equals_single_for_every_method(settings):
    loaded = _scaled_tiny()
    soft = _method_prompt(loaded, settings)
    prompts = _prompts(6)
    batched = generate(loaded, prompts, soft, max_new_tokens=16, batch_size=6).tokens
    singles = [generate(loaded, [p], soft, max_new_tokens=16, batch_size=1).tokens[0] for p in prompts]
    assert batched == singles
    plain = [generate(loaded, [p], None, max_new_tokens=16, batch_size=1).tokens[0] for p in prompts]
    assert batched != plain, "the soft prompt changes what the model writes"


def test_batched_equals_single_without_soft_prompt():
    loaded = _scaled_tiny()
    prompts = _prompts(5)
    batched = generate(loaded, prompts, None, max_new_tokens=16, batch_size=5).tokens
    singles = [generate(loaded, [p], None, max_new_tokens=16, batch_size=1).tokens[0] for p in prompts]
    assert batched == singles


def _last_logits(loaded, token_lists, soft, peft_layout: bool) -> torch.Tensor:
    """Next-token logits per row, with our layout or PEFT's (soft prompt before the padding)."""
    embed = loaded.model.get_input_embeddings()
    if not peft_layout:
        batch = left_padded(token_lists, embed, loaded.tokenizer.pad_token_id, soft)
        out = loaded.model(
            inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids
        )
        return out.logits[:, -1]
    plain = left_padded(token_lists, embed, loaded.tokenizer.pad_token_id, None)
    soft_rows = soft.unsqueeze(0).expand(len(token_lists), -1, -1)
    embeds = torch.cat([soft_rows, plain.inputs_embeds], dim=1)
    mask = torch.cat([torch.ones(len(token_lists), soft.shape[0], dtype=torch.long), plain.attention_mask], 1)
    return loaded.model(inputs_embeds=embeds, attention_mask=mask).logits[:, -1]


def test_the_check_has_teeth_peft_layout_differs():
    """PEFT's layout ([soft][pad][prompt], default positions) must change the logits here, or the
    equality tests above could not catch the bug. (RoPE is relative, so the shift shows only in
    the soft-prompt-to-prompt distances: a first argmax can survive it, the logits do not.)"""
    loaded = _scaled_tiny()
    torch.manual_seed(0)
    _assert_peft_layout_differs(loaded, _last_logits, torch.randn(5, loaded.model.config.hidden_size) * 2)


def _assert_peft_layout_differs(loaded, last_logits, prompt) -> None:
    """Batched == one at a time with our layout, and PEFT's layout moves the logits."""
    tokens = [loaded.tokenizer(p)["input_ids"] for p in _prompts(8)]
    with torch.no_grad():
        singles = torch.cat([last_logits(loaded, [t], prompt, peft_layout=False) for t in tokens])
        ours = last_logits(loaded, tokens, prompt, peft_layout=False)
        peft = last_logits(loaded, tokens, prompt, peft_layout=True)
    assert torch.allclose(ours, singles, atol=1e-4)
    assert (peft - singles).abs().max() > 1e-2


def _prefix_logits(loaded, token_lists, prefix: Prefix, peft_layout: bool) -> torch.Tensor:
    """Next-token logits per row behind a prefix: ours, or PEFT's (no position ids, so a padded
    row's tokens sit at P + padding instead of P)."""
    batch = left_padded(token_lists, loaded.model.get_input_embeddings(), loaded.tokenizer.pad_token_id, prefix)
    positions = None if peft_layout else batch.position_ids
    return loaded.model(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        position_ids=positions,
        past_key_values=batch.past_key_values,
    ).logits[:, -1]


def test_the_prefix_check_has_teeth_peft_positions_differ():
    loaded = _scaled_tiny()
    _assert_peft_layout_differs(loaded, _prefix_logits, _method_prompt(loaded, METHODS["prefix_tuning"]))


def test_truncate_at_first_stop_sequence():
    body = "    return a + b\n"
    assert truncate_at_stop(body + "\ndef other():\n    pass") == body
    assert truncate_at_stop(body + "\n# comment\nprint(1)") == body
    assert truncate_at_stop(body + "\nif __name__ == '__main__':\n") == body
    assert truncate_at_stop(body) == body
    assert set(STOP_SEQUENCES) == {"\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"}


def test_sampling_is_seeded_per_prompt_and_not_by_its_batch():
    loaded = _scaled_tiny()
    prompts = _prompts(6)
    sampling = Sampling(1.0, 0.95, tuple(range(100, 106)))
    batched = generate(loaded, prompts, None, max_new_tokens=12, batch_size=6, sampling=sampling).tokens
    again = generate(loaded, prompts, None, max_new_tokens=12, batch_size=6, sampling=sampling).tokens
    assert batched == again, "same seeds, same samples"
    for i, prompt in enumerate(prompts):
        single = generate(
            loaded, [prompt], None, max_new_tokens=12, batch_size=1, sampling=Sampling(1.0, 0.95, (100 + i,))
        ).tokens
        assert single[0] == batched[i], "a prompt's sample must not depend on its batch"
    greedy = generate(loaded, prompts, None, max_new_tokens=12, batch_size=6).tokens
    assert batched != greedy, "sampling at temperature 1 differs from greedy somewhere"
    other = Sampling(1.0, 0.95, tuple(range(200, 206)))
    assert generate(loaded, prompts, None, max_new_tokens=12, batch_size=6, sampling=other).tokens != batched


def test_a_vanishing_nucleus_is_greedy():
    loaded = _scaled_tiny()
    prompts = _prompts(4)
    greedy = generate(loaded, prompts, None, max_new_tokens=10, batch_size=4).tokens
    top1 = generate(
        loaded, prompts, None, max_new_tokens=10, batch_size=4, sampling=Sampling(5.0, 1e-9, (1, 2, 3, 4))
    ).tokens
    assert top1 == greedy


def test_each_prompt_stops_at_its_own_stop_sequences():
    loaded = _scaled_tiny()
    prompts = _prompts(2)
    full = generate(loaded, prompts, None, max_new_tokens=16, batch_size=2, stops=[("\x00never",)] * 2).texts
    assert all(full), "noise long enough to cut"
    cut_at = full[0][len(full[0]) // 2 :][:1] or full[0][-1:]
    cut = generate(loaded, prompts, None, max_new_tokens=16, batch_size=2, stops=[(cut_at,), ("\x00never",)]).texts
    assert cut[0] == truncate_at_stop(full[0], (cut_at,)) and len(cut[0]) < len(full[0])
    assert cut[1] == full[1]


def _one_at_a_time(loaded, prompts, soft, max_new_tokens, stops, seeds=None) -> list[tuple[str, list[int]]]:
    """Each prompt alone (batch 1) with its own stops and, if `seeds`, its own seeded sample:
    (text, tokens) per prompt, the reference every batched path must equal."""
    out = []
    for i, prompt in enumerate(prompts):
        sampling = Sampling(1.0, 0.95, (seeds[i],)) if seeds else None
        one = generate(
            loaded, [prompt], soft, max_new_tokens=max_new_tokens, batch_size=1, stops=[stops[i]], sampling=sampling
        )
        out.append((one.texts[0], one.tokens[0]))
    return out


@pytest.mark.parametrize("settings", METHODS.values(), ids=METHODS.keys())
def test_sampling_and_own_stops_with_every_method_are_batch_independent(settings):
    """Every method's soft prompt (a prefix enters as an initial KV cache) with seeded sampling
    and per-prompt stops: rows that stop early leave the batch (the cache shrinks), and
    every prompt still gets exactly its one-at-a-time tokens."""
    loaded = _scaled_tiny()
    soft = _method_prompt(loaded, settings)
    prompts = _prompts(6)
    seeds = tuple(range(300, 306))
    full = generate(
        loaded,
        prompts,
        soft,
        max_new_tokens=14,
        batch_size=6,
        stops=[("\x00never",)] * 6,
        sampling=Sampling(1.0, 0.95, seeds),
    ).texts
    stops = [
        ((text[len(text) // 2 :][:1] or "\x00never"),) if i % 2 == 0 else ("\x00never",) for i, text in enumerate(full)
    ]
    batched = generate(
        loaded, prompts, soft, max_new_tokens=14, batch_size=6, stops=stops, sampling=Sampling(1.0, 0.95, seeds)
    ).texts
    singles = [text for text, _ in _one_at_a_time(loaded, prompts, soft, 14, stops, seeds)]
    assert batched == singles
    assert batched == [truncate_at_stop(text, stop) for text, stop in zip(full, stops)]
    assert any(len(b) < len(f) for b, f in zip(batched, full)), "some row stopped early, leaving the batch"


def _first_stop_by_whole_decode(tokenizer, ids: list[int], stops) -> int | None:
    """The reference: the first token after which the whole decoded row holds a stop."""
    for n in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:n], skip_special_tokens=True)
        if truncate_at_stop(text, stops) != text:
            return n
    return None


@pytest.mark.parametrize("stops", [STOP_SEQUENCES, ("\n    return",), ("é\n",)])
def test_a_row_stops_at_the_token_a_whole_decode_would(stops):
    """The stop check decodes only a row's last tokens; it must stop exactly where decoding the
    whole row would, whatever the tokenization (single bytes, multi-byte characters, long tokens)."""
    from trainable.decoding.generate import _Rows

    tokenizer = tiny_tokenizer()
    loaded = LoadedModel(tiny_model(len(tokenizer)), tokenizer, ModelRef("tiny", "local", "tiny"))
    texts = [p["prompt"] + "    return x  # café\n# done\ndef g():\n" for p in list(load_problems().values())[:12]]
    texts += ["x = 'café'\n    return 1\nprint(2)\n", "a\n\n\n#\ndef ", "ü" * 40 + "é\n" + "b" * 5]
    checked = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        # The tokenizer's own ids, and the same text one byte-level token per character.
        spelled = [tid for ch in text for tid in tokenizer(ch, add_special_tokens=False)["input_ids"]]
        for row_ids in (ids, spelled):
            expected = _first_stop_by_whole_decode(tokenizer, row_ids, stops)
            rows = _Rows(loaded, [stops], max_new_tokens=len(row_ids) + 1)  # the limit never ends it
            stopped_at = None
            for n, token in enumerate(row_ids, start=1):
                rows.add(0, token)
                if rows.done[0]:
                    stopped_at = n
                    break
            assert stopped_at == expected, (text[:60], stops)
            checked += expected is not None
    assert checked >= 10, "most texts hold a stop: the test compares stopping points"


def _staggered_stops(full: list[str]) -> list[tuple[str, ...]]:
    """Per prompt a stop found at a different depth of its full output (a third of them none), so
    rows leave the batch at different steps and newcomers join a batch mid-way."""
    stops = []
    for i, text in enumerate(full):
        cut = text[(len(text) * (i % 3 + 1)) // 4 :][:1] if i % 3 != 2 else ""
        stops.append((cut or "\x00never",))
    return stops


def _through_three_rows(loaded, prompts, soft, stops, sampling, without=()) -> tuple[list[list[int]], GenerationStats]:
    """The prompts through a batch of 3 rows, each with its own stops: their tokens, and the
    stats; `without`: decoding features left out (bench/decoding_variants.py)."""
    with decoding_without(*without):
        out = generate(loaded, prompts, soft, max_new_tokens=20, batch_size=3, stops=stops, sampling=sampling)
    return out.tokens, out.stats


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("settings", METHODS.values(), ids=METHODS.keys())
def test_rows_that_stop_are_refilled_and_every_prompt_keeps_its_tokens(settings, sampled):
    """Continuous batching: with 8 prompts through 3 rows, a row that stops is replaced by the next
    prompt at once (its prefill joins the running cache, padded on the left). Every prompt still
    gets exactly its one-at-a-time tokens, and the same as batch after batch without refilling,
    in fewer model calls."""
    loaded = _scaled_tiny()
    soft = _method_prompt(loaded, settings)
    prompts = _prompts(8)
    seeds = tuple(range(500, 508))
    sampling = Sampling(1.0, 0.95, seeds) if sampled else None
    never = [("\x00never",)] * 8
    full = generate(loaded, prompts, soft, max_new_tokens=20, batch_size=8, stops=never, sampling=sampling).texts
    stops = _staggered_stops(full)
    runs = {
        refill: _through_three_rows(loaded, prompts, soft, stops, sampling, () if refill else ("refill",))
        for refill in (True, False)
    }
    singles = [tokens for _, tokens in _one_at_a_time(loaded, prompts, soft, 20, stops, seeds if sampled else None)]
    (refilled, with_refill), (batch_by_batch, without) = runs[True], runs[False]
    assert refilled == singles
    assert batch_by_batch == singles
    assert len({len(t) for t in singles}) > 2, "rows end at different steps"
    assert with_refill.new_tokens == without.new_tokens
    assert with_refill.forwards < without.forwards, "finished rows were refilled: fewer weight reads"
    assert with_refill.tokens_per_forward > without.tokens_per_forward


def test_a_longer_newcomer_pads_the_running_rows():
    """Joining works either way round: when the newcomer's prompt is longer than the running
    rows' history, the running rows' cache is padded on the left instead. Their next logits
    match the logits of each row decoded alone."""
    from trainable.decoding.generate import _join, _prefill, _step

    loaded = _scaled_tiny()
    tok = loaded.tokenizer
    short, long = [tok(p, add_special_tokens=False)["input_ids"] for p in ("x = 1\n", _prompts(1)[0])]
    soft = torch.randn(4, loaded.model.config.hidden_size)
    with torch.no_grad():
        joined = _join(_prefill(loaded, [short], soft, [0]), _prefill(loaded, [long], soft, [1]))
        assert joined.mask.shape[1] == 4 + len(long) and joined.mask[0].sum() == 4 + len(short)
        next_ids = joined.logits.argmax(-1)
        _step(loaded, joined, next_ids)
        for row, ids in enumerate((short, long)):
            alone = _prefill(loaded, [ids], soft, [row])
            _step(loaded, alone, next_ids[row : row + 1])
            torch.testing.assert_close(joined.logits[row], alone.logits[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("refill", [True, False], ids=["continuous", "batch-by-batch"])
def test_a_batch_filled_over_several_prefills_keeps_every_prompts_tokens(monkeypatch, refill):
    """A batch's rows are prefilled PREFILL_ROWS at a time and joined; with 2 per prefill, 7
    prompts in a batch of 7 take 4 prefills, and each prompt still gets its one-at-a-time tokens."""
    import trainable.decoding.generate as generate_module

    loaded = _scaled_tiny()
    soft = _method_prompt(loaded, METHODS["prefix_tuning"])
    prompts = _prompts(7)
    stops = [("\x00never",)] * 7
    monkeypatch.setattr(generate_module, "PREFILL_ROWS", 2)
    with decoding_without(*(() if refill else ("refill",))):
        out = generate(loaded, prompts, soft, max_new_tokens=9, batch_size=7, stops=stops)
    batched, stats = out.tokens, out.stats
    assert batched == [tokens for _, tokens in _one_at_a_time(loaded, prompts, soft, 9, stops)]
    assert stats.forwards == 4 + 8, "4 prefills of at most 2 rows, then 8 steps for all 7 rows at once"


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_a_soft_prompt_computed_once_gives_every_prompt_its_tokens(method, sampled):
    """The virtual tokens' key/values are computed once per call and decoding treats them as a
    prefix. Through refills (3 rows, 8 prompts, rows ending at different steps) every prompt gets
    the tokens it gets with the soft prompt in its own inputs, and one at a time."""
    loaded = _scaled_tiny()
    soft = _method_prompt(loaded, METHODS[method])
    prompts = _prompts(8)
    seeds = tuple(range(700, 708))
    sampling = Sampling(1.0, 0.95, seeds) if sampled else None
    never = [("\x00never",)] * 8
    stops = _staggered_stops(generate(loaded, prompts, soft, max_new_tokens=20, batch_size=8, stops=never).texts)
    runs = {
        once: _through_three_rows(loaded, prompts, soft, stops, sampling, () if once else ("soft_prompt_once",))
        for once in (True, False)
    }
    singles = [tokens for _, tokens in _one_at_a_time(loaded, prompts, soft, 20, stops, seeds if sampled else None)]
    assert runs[True][0] == runs[False][0] == singles
    assert len({len(t) for t in singles}) > 2, "rows end at different steps"
    assert runs[True][1].forwards == runs[False][1].forwards + 1, "one forward of the soft prompt alone"


def test_padding_between_a_prefix_and_the_prompts_leaves_the_cache_with_the_row_that_needed_it():
    """Behind a prefix, a short row's padding lies between the prefix and its prompt. Once the
    long row has left, no row attends to those columns: they leave the cache (attention over the
    rest is unchanged), and the short row's next logits are those of the row decoded alone."""
    from trainable.decoding.generate import _prefill, _step

    loaded = _scaled_tiny()
    tok = loaded.tokenizer
    short, long = [tok(p, add_special_tokens=False)["input_ids"] for p in ("x = 1\n", _prompts(1)[0])]
    prefix = _method_prompt(loaded, METHODS["prefix_tuning"])
    with torch.no_grad():
        both = _prefill(loaded, [short, long], prefix, [0, 1])
        next_ids = both.logits.argmax(-1)
        both.keep([0])
        assert bool(both.mask.all()), "no column left that the remaining row does not attend to"
        assert both.cache.layers[0].keys.shape[-2] == len(prefix) + len(short)
        _step(loaded, both, next_ids[:1])
        alone = _prefill(loaded, [short], prefix, [0])
        _step(loaded, alone, next_ids[:1])
        torch.testing.assert_close(both.logits[0], alone.logits[0], rtol=1e-4, atol=1e-4)


def test_decoding_steps_write_their_key_values_in_place_and_keep_the_logits():
    """A step writes its key/value column into room the cache already has, instead of copying
    the whole cache as a DynamicLayer's `torch.cat` does; a row leaving the batch (a new tensor in
    the layer) gets a fresh buffer. The logits are those of the plain cache, step for step."""
    from trainable.decoding.generate import _prefill, _step

    loaded = _scaled_tiny()
    token_lists = [loaded.tokenizer(p, add_special_tokens=False)["input_ids"] for p in _prompts(3)]
    soft = _method_prompt(loaded, METHODS["prompt_tuning"])

    def run(steps: int, in_place: bool) -> tuple[list[torch.Tensor], list[int]]:
        live = _prefill(loaded, token_lists, soft, [0, 1, 2])
        logits, addresses = [], []
        for i in range(steps):
            next_ids = live.logits.argmax(-1)
            if i == 3:
                live.keep([0, 2])
                next_ids = next_ids[[0, 2]]
            with contextlib.nullcontext() if in_place else decoding_without("cache_in_place"):
                _step(loaded, live, next_ids)
            logits.append(live.logits.clone())
            addresses.append(live.cache.layers[0].keys.data_ptr())
        return logits, addresses

    with torch.no_grad():
        roomy, addresses = run(8, in_place=True)
        plain, plain_addresses = run(8, in_place=False)
    for a, b in zip(roomy, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert addresses[1] == addresses[2] and addresses[4] == addresses[7], "steps wrote in place"
    assert addresses[3] != addresses[2], "the row that left took the old buffer with it"
    # From step 4 on (after the row left, whose freed tensor the allocator may hand out again).
    assert all(a != b for a, b in zip(plain_addresses[4:], plain_addresses[5:])), "the plain cache copies every step"


def _three_arms(loaded) -> list:
    """Soft prompts of three trials on one model: prompt tuning's embeddings (5 virtual tokens),
    a prefix of another length (8), and none (the frozen model)."""
    return [_method_prompt(loaded, METHODS["prompt_tuning"]), _method_prompt(loaded, METHODS["prefix_tuning"], 8), None]


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_one_fused_call_gives_every_soft_prompts_rows_their_own_tokens(sampled):
    """Several trials' rows in one continuous batch, each row behind its own soft prompt (prefixes
    of different lengths right-aligned in one cache, rows without one beside them): 12 rows
    through 5, rows of different soft prompts joining and leaving at different steps. Every row
    gets exactly the tokens of its soft prompt's own call, greedy and seeded sampling alike."""
    loaded = _scaled_tiny()
    arms, prompts = _three_arms(loaded), _prompts(4)
    never = [("\x00never",)] * len(prompts)
    seeds = [tuple(range(900 + 10 * k, 904 + 10 * k)) for k in range(len(arms))]
    sampling = [Sampling(1.0, 0.95, s) if sampled else None for s in seeds]
    stops = [
        _staggered_stops(generate(loaded, prompts, arm, max_new_tokens=20, batch_size=4, stops=never).texts)
        for arm in arms
    ]
    alone = [
        generate(loaded, prompts, arm, max_new_tokens=20, batch_size=3, stops=stop, sampling=sample)
        for arm, stop, sample in zip(arms, stops, sampling)
    ]
    fused = generate(
        loaded,
        prompts * len(arms),
        [arm for arm in arms for _ in prompts],
        max_new_tokens=20,
        batch_size=5,
        stops=[s for stop in stops for s in stop],
        sampling=Sampling(1.0, 0.95, sum(seeds, ())) if sampled else None,
    )
    assert fused.tokens == [tokens for one in alone for tokens in one.tokens]
    assert fused.texts == [text for one in alone for text in one.texts]
    tokens = [one.tokens for one in alone]
    assert tokens[0] != tokens[1] and tokens[1] != tokens[2] and tokens[0] != tokens[2], (
        "each soft prompt makes the model write something else: rows given another's would differ"
    )
    assert len({len(t) for t in fused.tokens}) > 2, "rows end at different steps"
    assert fused.stats.forwards < sum(one.stats.forwards for one in alone), "the trials' rows shared steps"


def test_rows_behind_prefixes_of_different_widths_join_and_keep_their_logits():
    """A prefill behind a long prefix joins a batch behind a short one and a row with none: the
    joined cache pads the narrower side on the left, and every row's next logits are those of
    the row decoded alone."""
    from trainable.decoding.generate import _join, _prefill, _step

    loaded = _scaled_tiny()
    short, long = (_method_prompt(loaded, METHODS["prefix_tuning"], n) for n in (3, 8))
    tok = loaded.tokenizer
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in ("x = 1\n", *_prompts(2))]
    softs = [short, None, long]
    with torch.no_grad():
        joined = _join(_prefill(loaded, ids[:2], softs[:2], [0, 1]), _prefill(loaded, ids[2:], softs[2:], [2]))
        next_ids = joined.logits.argmax(-1)
        _step(loaded, joined, next_ids)
        for row in range(3):
            alone = _prefill(loaded, [ids[row]], softs[row], [row])
            _step(loaded, alone, next_ids[row : row + 1])
            torch.testing.assert_close(joined.logits[row], alone.logits[0], rtol=1e-4, atol=1e-4)
        wrong = _prefill(loaded, [ids[0]], long, [0])
        _step(loaded, wrong, next_ids[:1])
        assert (wrong.logits[0] - joined.logits[0]).abs().max() > 1e-2, "another prefix moves the logits"


def test_a_soft_prompt_list_needs_one_entry_per_prompt():
    loaded = _scaled_tiny()
    with pytest.raises(ValueError, match="one entry per prompt"):
        generate(loaded, _prompts(3), [None, None], max_new_tokens=2, batch_size=2)
