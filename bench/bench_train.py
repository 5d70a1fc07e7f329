"""Training throughput: our soft-prompt step against the stock PEFT path, side by side.

    python bench/bench_train.py --model bundled [--steps 2] [--batch 4]
    python bench/bench_train.py --model random-0.5b        # Qwen2.5-Coder-0.5B's shape, random weights

Stock = what the PEFT prompt-tuning quick-start does: `get_peft_model`, fp32, the model's own
forward with `labels` (full-vocabulary logits at every position, loss over all positions incl.
the prompt), padded batches. Ours = bf16 frozen model, soft prompt after the padding, output
layer on completion positions only. Rows in between separate the gain of each change.
Same examples, same number of steps, one process. First the machine's own ceilings (a large
fp32 and bf16 GEMM, bench.common.ceilings): "% of ceiling" is each row's useful work (4N FLOP per
token: forward + backward through the activations of the frozen N-parameter model) against the
GEMM ceiling of the row's dtype.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import (
    OLD_SPLIT,
    ceilings,
    describe_ceilings,
    load_bench_model,
    machine,  # noqa: E402 - after the sys.path line above
    peak_rss,
    print_table,
    train_flop_per_token,
)
from trainable.data.splits import problems_for  # noqa: E402 - after the sys.path line above
from trainable.engine import IGNORE  # noqa: E402 - after the sys.path line above
from trainable.inputs import right_padded  # noqa: E402 - after the sys.path line above
from trainable.train import build_examples, completion_loss  # noqa: E402 - after the sys.path line above


CEILING_OF = {"bfloat16": "bf16_flops", "float32": "fp32_flops"}


def stock_peft_step(loaded, peft_model, examples) -> tuple[torch.Tensor, int]:
    """The quick-start's step: padded input_ids, labels = input_ids (pad masked), PEFT forward."""
    tok = loaded.tokenizer
    width = max(len(e.tokens) for e in examples)
    ids = torch.full((len(examples), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, ex in enumerate(examples):
        ids[row, : len(ex.tokens)] = torch.tensor(ex.tokens)
        mask[row, : len(ex.tokens)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    out = peft_model(input_ids=ids, attention_mask=mask, labels=labels)
    return out.loss, int(mask.sum()) + peft_model.peft_config["default"].num_virtual_tokens * len(examples)


def ours_step(loaded, soft, examples, full_logits: bool):
    return full_logits_loss(loaded, soft, examples) if full_logits else completion_loss(loaded, soft, examples)


def full_logits_loss(loaded, soft, examples) -> tuple[torch.Tensor, int]:
    """Our layout with the stock loss: logits at every position, then the labels masked to the
    completion tokens (what our output layer on target positions only is measured against)."""
    model = loaded.model
    batch = right_padded(
        [ex.tokens for ex in examples], model.get_input_embeddings(), loaded.tokenizer.pad_token_id, soft
    )
    width = max(len(ex.tokens) for ex in examples)
    n_soft = batch.inputs_embeds.shape[1] - width  # virtual tokens among the inputs (none for a prefix)
    labels = torch.full((len(examples), n_soft + width), IGNORE, dtype=torch.long)
    for row, ex in enumerate(examples):
        labels[row, n_soft + ex.n_prompt : n_soft + len(ex.tokens)] = torch.tensor(ex.tokens[ex.n_prompt :])
    hidden = model.get_decoder()(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        past_key_values=batch.past_key_values,
    ).last_hidden_state
    targets = labels[:, 1:].to(hidden.device)  # the hidden state at t predicts token t+1
    logits = model.get_output_embeddings()(hidden[:, :-1]).float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
    return loss, int(batch.attention_mask.sum())


def measure(name, step, params, steps) -> list:
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    step()  # warm-up (allocator, kernels)
    tokens, started = 0, time.perf_counter()
    with peak_rss() as mem:
        for _ in range(steps):
            loss, n = step()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tokens += n
    seconds = time.perf_counter() - started
    return [name, seconds / steps, tokens / seconds, mem["peak"] / 2**20]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--tokens", type=int, default=16, help="virtual tokens")
    args = p.parse_args()
    from peft import PromptTuningConfig, TaskType, get_peft_model

    ceiling = ceilings("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        loaded = load_bench_model(args.model, dtype)
        # HumanEval train (canonical solutions) of OLD_SPLIT: the figures in bench/README.md
        examples = build_examples(loaded, problems_for("train", OLD_SPLIT)[: args.batch], 768)
        peft_model = get_peft_model(
            loaded.model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=args.tokens)
        )
        peft_soft = peft_model.prompt_encoder["default"].embedding.weight
        soft = torch.nn.Parameter(torch.randn(args.tokens, loaded.model.config.hidden_size) * 0.02)
        d = str(dtype).removeprefix("torch.")
        rows.append(
            measure(f"stock PEFT ({d})", lambda: stock_peft_step(loaded, peft_model, examples), [peft_soft], args.steps)
        )
        rows.append(
            measure(f"ours, full logits ({d})", lambda: ours_step(loaded, soft, examples, True), [soft], args.steps)
        )
        rows.append(measure(f"ours ({d})", lambda: ours_step(loaded, soft, examples, False), [soft], args.steps))
        flop = train_flop_per_token(loaded.model)
        for row in rows[-3:]:
            row.append(f"{100 * row[2] * flop / ceiling[CEILING_OF[d]]:.1f}%")
    base = next(r for r in rows if r[0] == "stock PEFT (float32)")
    for row in rows:
        row.append(base[1] / row[1])
    print(
        f"model {args.model}; batch {args.batch} HumanEval train examples; {args.tokens} virtual tokens; "
        f"{args.steps} steps after 1 warm-up; {machine()}"
    )
    print(describe_ceilings(ceiling))
    print_table(
        ["path", "s/step", "tokens/s", "peak MB", "% of GEMM ceiling (its dtype)", "speed-up vs stock fp32"], rows
    )
    for dtype in ("bfloat16", "float32"):
        stock = next(r for r in rows if r[0] == f"stock PEFT ({dtype})")
        ours = next(r for r in rows if r[0] == f"ours ({dtype})")
        print(f"ratio at equal dtype ({dtype}): {stock[1] / ours[1]:.2f}x")


if __name__ == "__main__":
    main()
