"""Each method on one model: trainable parameters, training tokens/s, generation tokens/s.

    python bench/bench_methods.py --model bundled [--dtype float32] [--rounds 3] [--batch 4]
                                  [--tokens 16] [--prompts 4] [--new-tokens 16]

One process, one loaded model; every method trains on the same batch of HumanEval train examples
(our step: AdamW, output layer on completion positions only) and generates greedily for the same
prompts (our batched path, every row running to --new-tokens). Measurements are interleaved
(round r measures every method once) and each figure is the best of the rounds: on a shared
machine other processes slow some measurements down, never speed one up. Training tokens count
the soft prompt's positions (a prefix's too). The first round is also the warm-up.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import load_bench_model, machine, print_table  # noqa: E402 - after the sys.path line above
from trainable.config import TrainConfig  # noqa: E402 - after the sys.path line above
from bench.common import OLD_SPLIT  # noqa: E402 - after the sys.path line above
from trainable.data.splits import problems_for  # noqa: E402 - after the sys.path line above
import trainable.decoding.generate as gen_module  # noqa: E402 - after the sys.path line above
from trainable.decoding.generate import generate  # noqa: E402 - after the sys.path line above
from trainable.softprompt import SoftPrompt  # noqa: E402 - after the sys.path line above
from trainable.train import Trainer, build_examples  # noqa: E402 - after the sys.path line above

METHODS = {
    "prompt_tuning": {"method": "prompt_tuning"},
    "p_tuning (MLP, PEFT default width)": {"method": "p_tuning"},
    "prefix_tuning": {"method": "prefix_tuning"},
    "prefix_tuning (projection 512)": {"method": "prefix_tuning", "prefix_projection": 512},
}


def train_step(trainer, examples, step: int) -> tuple[float, int]:
    """Seconds and tokens of one optimizer step (the batch is the whole example list)."""
    stats = trainer.train_epoch(examples, step)
    return stats.seconds, stats.tokens


def generation_rate(loaded, prompts, soft, new_tokens: int) -> float:
    return generate(loaded, prompts, soft, max_new_tokens=new_tokens, batch_size=len(prompts)).stats.tokens_per_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=4, help="training examples per step")
    p.add_argument("--tokens", type=int, default=16, help="virtual tokens")
    p.add_argument("--prompts", type=int, default=4, help="generation batch")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    args = p.parse_args()
    torch.manual_seed(0)
    loaded = load_bench_model(args.model, getattr(torch, args.dtype))
    # HumanEval (canonical solutions) of OLD_SPLIT, as bench_train.py and bench/README.md
    examples = build_examples(loaded, problems_for("train", OLD_SPLIT)[: args.batch], 768)
    prompts = [pr["prompt"] for pr in problems_for("val", OLD_SPLIT)[: args.prompts]]
    # Every method generates the same number of tokens per row: no end token or stop sequence ends a
    # row early (rows leaving the batch would change the batch size mid-way, differently per method).
    loaded.model.generation_config.eos_token_id = None
    loaded.tokenizer.eos_token_id = None
    gen_module.STOP_SEQUENCES = ()
    arms = {"frozen model, no soft prompt": None}
    for name, settings in METHODS.items():
        config = TrainConfig(
            num_virtual_tokens=args.tokens, batch_size=args.batch, learning_rate=1e-3, warmup_ratio=0.0, **settings
        )
        prompt = SoftPrompt.create(loaded, config)
        arms[name] = (prompt, Trainer(loaded, prompt, config, len(examples)))
    best = {name: [float("inf"), 0, 0.0] for name in arms}  # step seconds, tokens, generation tokens/s
    for round_ in range(args.rounds):
        for name, arm in arms.items():
            soft = None
            if arm is not None:
                seconds, tokens = train_step(arm[1], examples, round_)
                if seconds < best[name][0]:
                    best[name][:2] = seconds, tokens
                with torch.no_grad():
                    soft = arm[0].inputs()
            best[name][2] = max(best[name][2], generation_rate(loaded, prompts, soft, args.new_tokens))
    rows = []
    for name, arm in arms.items():
        step_s, tokens, gen_tps = best[name]
        if arm is None:
            rows.append([name, 0, 0, "-", "-", gen_tps])
            continue
        prompt = arm[0]
        rows.append(
            [
                name,
                sum(t.numel() for t in prompt.parameters()),
                prompt.output().numel(),
                step_s,
                tokens / step_s,
                gen_tps,
            ]
        )
    print(
        f"model {args.model} ({args.dtype}); {args.tokens} virtual tokens; best of {args.rounds} interleaved "
        f"rounds; training: one step on {args.batch} HumanEval train examples; generation: {args.prompts} val "
        f"prompts x {args.new_tokens} new tokens, one batch; {machine()}"
    )
    print_table(["method", "trainable params", "saved floats", "train s/step", "train tokens/s", "gen tokens/s"], rows)


if __name__ == "__main__":
    main()
