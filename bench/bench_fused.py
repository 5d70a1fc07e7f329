"""K trials on one frozen model: fused training steps and fused decoding vs each trial's own.

    python bench/bench_fused.py --model bundled [--trials 1 2 4 8] [--batch 4] [--repeat 2]
    python bench/bench_fused.py --model random-0.5b --device cuda --dtype bfloat16
    python bench/bench_fused.py --model tiny --part decode [--decode-problems 8] [--new-tokens 32]

K trials of mixed methods (prompt tuning, P-tuning, prefix tuning; 8-16 virtual tokens), each
with its own batch of `--batch` training examples. Per K, in one process, on one copy of the
model: "separate" = each trial's own step after the other (what K trial processes do with a
model copy each, without their contention: a lower bound on their time), "fused" = one
`step_together` over all K batches (trainable.engine). Columns: trial-steps per minute,
training tokens/s and % of the dtype's GEMM ceiling (bench.common.ceilings; 4N FLOP per token),
the peak resident memory above the loaded model during the steps, and the model copies each
layout holds (separate trial processes hold one each).

`--part decode`: K soft prompts (the same mixed methods) each greedily decoding the same
`--decode-problems` HumanEval prompts. "separate" = one `generate` call per soft prompt, one after
the other; "fused" = one call with every soft prompt's rows (a soft prompt per prompt), both at
`--decode-batch` rows. Columns: decoded tokens/s, model forwards and rows per forward, the peak
resident memory above the loaded model, and whether the fused tokens equal the separate ones
(they must in fp32). `--model tiny` is the tests' tiny random model: per-step overhead, no weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import (  # noqa: E402 - after the sys.path line above
    OLD_SPLIT,
    best_seconds,
    ceilings,
    describe_ceilings,
    load_bench_model,
    machine,
    peak_rss,
    print_table,
    train_flop_per_token,
)
from trainable.config import TrainConfig  # noqa: E402 - after the sys.path line above
from trainable.data.splits import load_problems, problems_for  # noqa: E402 - after the sys.path line above
from trainable.decoding.generate import generate  # noqa: E402 - after the sys.path line above
from trainable.softprompt import SoftPrompt  # noqa: E402 - after the sys.path line above
from trainable.train import Trainer, build_examples, step_together  # noqa: E402 - after the sys.path line above

METHODS = [
    dict(method="prompt_tuning", num_virtual_tokens=8, init="random"),
    dict(method="p_tuning", num_virtual_tokens=12),
    dict(method="prefix_tuning", num_virtual_tokens=16),
    dict(method="prompt_tuning", num_virtual_tokens=16, init="random"),
]
CEILING_OF = {torch.bfloat16: "bf16_flops", torch.float32: "fp32_flops"}


def _tiny(dtype: torch.dtype):
    """The tests' tiny random Qwen2 with scaled-up weights (distinct soft prompts write distinct
    tokens), without the configured end of sequence (rows end at `--new-tokens` or, rarely, at
    the tokenizer's end-of-text token)."""
    from trainable.model.loading import LoadedModel, ModelRef
    from trainable.tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), seed=1, weight_scale=6.0).to(dtype)
    model.generation_config.eos_token_id = None
    return LoadedModel(model, tokenizer, ModelRef("tiny", "local", "tiny"), {"name": "tiny"})


def _soft_prompts(loaded, k: int) -> list:
    """K trials' soft-prompt inputs of mixed methods, moved off their init (each writes its own)."""
    softs = []
    for i in range(k):
        prompt = SoftPrompt.create(loaded, TrainConfig(**METHODS[i % len(METHODS)], seed=i))
        with torch.no_grad():
            for parameter in prompt.parameters():
                parameter.add_(torch.randn_like(parameter))
            softs.append(prompt.inputs().detach())
    return softs


def _timed_runs(layouts: dict, repeat: int) -> dict:
    """Per layout its best of `repeat` runs by CPU seconds (this process's threads: a loaded
    machine stretches wall time, far less the CPU time a run takes), the layouts interleaved
    round by round so that a neighbour's burst falls on both; with that run's wall seconds,
    Generations and the peak RSS above the start over all its rounds."""
    best: dict = {}
    for _ in range(repeat):
        for name, fn in layouts.items():
            with peak_rss() as memory:
                cpu, wall = time.process_time(), time.perf_counter()
                out = fn()
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            peak = max(memory.get("cuda_peak", memory["peak"]), best.get(name, {}).get("peak", 0))
            if name not in best or cpu < best[name]["cpu"]:
                best[name] = {"cpu": cpu, "wall": wall, "out": out}
            best[name]["peak"] = peak
    return best


def decode_rows(loaded, args) -> list[list]:
    prompts = [p["prompt"] for p in list(load_problems().values())[: args.decode_problems]]
    never = [("\x00never",)]  # no stop sequence: rows run long, the same rows on both sides
    settings = dict(max_new_tokens=args.new_tokens, batch_size=args.decode_batch)
    rows = []
    for k in args.trials:
        softs = _soft_prompts(loaded, k)

        def separate():
            return [generate(loaded, prompts, soft, stops=never * len(prompts), **settings) for soft in softs]

        def fused():
            per_prompt = [soft for soft in softs for _ in prompts]
            return [generate(loaded, prompts * k, per_prompt, stops=never * len(per_prompt), **settings)]

        if not rows:
            fused()  # warm-up: the process's first packing of the weights pays for fresh memory
        runs = _timed_runs({"separate": separate, "fused": fused}, args.repeat)
        for name, run in runs.items():
            new = sum(g.stats.new_tokens for g in run["out"])
            forwards = sum(g.stats.forwards for g in run["out"])
            rows.append([k, name, f"{new / run['cpu']:.1f}", f"{new / run['wall']:.1f}", f"{run['cpu']:.2f}"])
            rows[-1] += [forwards, f"{new / forwards:.2f}", f"{run['peak'] / 2**20:,.0f}"]
        rows[-1].append(f"{runs['separate']['cpu'] / runs['fused']['cpu']:.2f}x")
        tokens = {name: [t for g in run["out"] for t in g.tokens] for name, run in runs.items()}
        rows[-1].append("yes" if tokens["fused"] == tokens["separate"] else "NO")
        rows[-2] += ["1.00x", ""]
        print(f"  K={k} measured: {rows[-2]} {rows[-1]}", file=sys.stderr, flush=True)  # the table waits for all K
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--repeat", type=int, default=2, help="best of N steps per layout")
    parser.add_argument("--rows-per-forward", type=int, help="rows per forward (default: one trial's batch)")
    parser.add_argument("--tokenizer", help="tokenizer dir for --model random-0.5b (default: the bundled model's)")
    parser.add_argument("--part", nargs="+", choices=["train", "decode"], default=["train", "decode"])
    parser.add_argument("--decode-problems", type=int, default=8, help="HumanEval prompts per soft prompt")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens each row decodes")
    parser.add_argument("--decode-batch", type=int, default=16, help="rows decoding at once")
    args = parser.parse_args()
    sizes = [*args.trials, args.batch, args.repeat, args.decode_problems, args.new_tokens, args.decode_batch]
    if min(sizes) < 1:
        parser.error("--trials, --batch, --repeat and the --decode sizes take integers >= 1")
    dtype = getattr(torch, args.dtype)
    tiny = args.model == "tiny"
    loaded = _tiny(dtype) if tiny else load_bench_model(args.model, dtype, args.device, args.tokenizer)
    device = str(loaded.device)
    limits = ceilings(device)
    print(machine())
    print(describe_ceilings(limits))
    if "decode" in args.part:
        print(
            f"decoding: model {args.model} ({dtype}, {device}), {args.decode_problems} prompts per soft prompt, "
            f"{args.new_tokens} new tokens each, greedy, batch {args.decode_batch}, best of {args.repeat}"
        )
        headers = ["K", "layout", "tok per CPU-s", "tok per wall-s", "CPU s", "forwards", "rows/forward"]
        print_table(headers + ["peak MiB", "vs sep (CPU)", "same tokens"], decode_rows(loaded, args))
    if "train" not in args.part:
        return
    print(f"model {args.model} ({dtype}, {device}), batch {args.batch} per trial, best of {args.repeat}")
    examples = build_examples(loaded, problems_for("train", OLD_SPLIT), args.max_length)  # canonical solutions
    flop = train_flop_per_token(loaded.model)
    rows = []
    for k in args.trials:
        trainers = []
        for i in range(k):
            config = TrainConfig(**METHODS[i % len(METHODS)], batch_size=args.batch, seed=i)
            trainers.append(Trainer(loaded, SoftPrompt.create(loaded, config), config, len(examples)))
        batches = [examples[(i * args.batch) % (len(examples) - args.batch) :][: args.batch] for i in range(k)]
        tokens = sum(r.tokens for r in step_together(list(zip(trainers, batches))))  # warm-up, and the count

        def separate():
            for trainer, batch in zip(trainers, batches):
                step_together([(trainer, batch)])

        def fused():
            step_together(list(zip(trainers, batches)), args.rows_per_forward)

        if not rows:
            fused()  # warm-up: the process's first packing of the weights pays for fresh memory
        for name, fn in (("separate", separate), ("fused", fused)):
            with peak_rss() as memory:
                seconds = best_seconds(fn, args.repeat, device=device)
            rate = tokens / seconds
            peak = memory.get("cuda_peak", memory["peak"])
            rows.append(
                [
                    k,
                    name,
                    f"{60 * k / seconds:.1f}",
                    f"{rate:,.0f}",
                    f"{100 * rate * flop / limits[CEILING_OF[dtype]]:.1f}%",
                    f"{peak / 2**20:,.0f}",
                    k if name == "separate" else 1,
                ]
            )
        rows[-2].append("1.00x")
        rows[-1].append(f"{float(rows[-1][2]) / float(rows[-2][2]):.2f}x")
    headers = ["K", "layout", "trial-steps/min", "train tok/s", "% ceiling", "peak MiB", "model copies", "vs sep"]
    print_table(headers, rows)
    copy = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    print(f"one model copy: {copy / 2**20:,.0f} MiB of weights")


if __name__ == "__main__":
    main()
