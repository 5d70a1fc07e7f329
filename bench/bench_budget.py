"""How long will a space's search take here? Short probes of the two rates that decide it, then
the arithmetic (the `cpu` space's comment is this script's output).

    python bench/bench_budget.py --space cpu [--problems 8] [--steps 3]

Probes, on the space's model and dtype (auto: this machine's choice): greedy generation at the
space's batch size and token limit on HumanEval val and MBPP train prompts (new tokens per
problem, tokens/s: a batch runs until its longest row stops, so seconds per problem is what
counts), and training steps at the space's batch size (tokens/s). The estimate then counts:
distillation (train problems x (1 + samples) generations), each epoch (train tokens + a val
generation), ASHA's rungs (epochs run), and the final report (three arms on every test benchmark,
every hard prompt and the frozen model on val). Run it on a quiet machine: it prints the load
average, and on a shared 2-core machine every rate drops several-fold (CPU time does not correct
for it: a busy host slows the vCPUs too).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import machine  # noqa: E402 - after the sys.path line above
from search.baselines import candidates, texts_of  # noqa: E402 - after the sys.path line above
from spaces import load_space  # noqa: E402 - after the sys.path line above
from trainable.data.splits import problems_for  # noqa: E402 - after the sys.path line above
from trainable.distill import cached_targets, training_items  # noqa: E402 - after the sys.path line above
from trainable.decoding.generate import generate  # noqa: E402 - after the sys.path line above
from trainable.model.loading import load_model  # noqa: E402 - after the sys.path line above
from trainable.dtype_probe import config_dtype  # noqa: E402 - after the sys.path line above
from trainable.train import build_examples, completion_loss  # noqa: E402 - after the sys.path line above

# Distillation yield seen on the bundled model (100 MBPP problems, greedy + 1 sample, 192 tokens):
# 55 problems with a target, 74 targets. The guess of an epoch's size when the space's targets are
# not cached yet; once they are, the real targets are counted and timed instead.
TARGETS_PER_PROBLEM = 74 / 100


def _timed(fn):
    wall = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - wall


def generation_rate(loaded, problems, config) -> dict:
    out, wall = _timed(
        lambda: generate(
            loaded,
            [p["prompt"] for p in problems],
            None,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.eval_batch_size,
            stops=[p.get("stop_tokens") for p in problems],
        )
    )
    stats = out.stats
    return {"tokens_per_problem": stats.new_tokens / len(problems), "tps": stats.new_tokens / wall}


def training_rate(loaded, problems, config, steps: int) -> dict:
    """`problems`: dicts with a `prompt` and a `target` or `canonical_solution` to train on."""
    soft = torch.nn.Parameter(torch.randn(16, loaded.model.config.hidden_size) * 0.02)
    optimizer = torch.optim.AdamW([soft], lr=1e-2)
    examples = build_examples(loaded, problems, config.max_length)
    batches = [examples[i : i + config.batch_size] for i in range(0, len(examples), config.batch_size)][: steps + 1]

    def step(batch):
        loss, n = completion_loss(loaded, soft, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return n

    step(batches[0])  # warm-up
    tokens, wall = _timed(lambda: sum(step(b) for b in batches[1:]))
    per_example = tokens / sum(len(b) for b in batches[1:])
    return {"tokens_per_example": per_example, "tps": tokens / wall}


def asha_epochs(n: int, grace: int, factor: float, max_t: int, draws: int = 2000) -> float:
    """Expected epochs of `n` sequential trials under Ray's asynchronous ASHA: at each rung a trial
    stops when its value is below the (1 - 1/factor) percentile of the trials recorded there
    BEFORE it (so a rung's first trial always goes on, and early trials go on more often than
    halving would let them). Values drawn at random per trial and rung (a fixed seed: the same
    estimate every run); measured on the cpu space: 14 epochs where halving says 10."""
    import numpy as np

    rungs = []
    while grace * factor ** len(rungs) < max_t:
        rungs.append(int(grace * factor ** len(rungs)))
    rng, total = np.random.default_rng(0), 0
    for _ in range(draws):
        recorded: list[list[float]] = [[] for _ in rungs]
        for _trial in range(n):
            reached = max_t
            for i, rung in enumerate(rungs):
                value = rng.random()
                cutoff = np.percentile(recorded[i], (1 - 1 / factor) * 100) if recorded[i] else None
                recorded[i].append(value)
                if cutoff is not None and value < cutoff:
                    reached = rung
                    break
            total += reached
    return total / draws


def estimate(
    spec, gen_he: dict, gen_mbpp: dict, train: dict, key: str = "tps", cached: int | None = None
) -> list[tuple[str, float]]:
    """`cached`: the number of training examples when the targets are already cached (no distillation)."""
    data, budget = spec.data, spec.budget
    he_s = gen_he["tokens_per_problem"] / gen_he[key]
    examples = (
        cached if cached is not None else data.train.n * TARGETS_PER_PROBLEM if data.needs_targets() else data.train.n
    )
    distill = (
        data.train.n * (1 + data.distill.samples) * gen_mbpp["tokens_per_problem"] / gen_mbpp[key]
        if data.needs_targets() and cached is None
        else 0.0
    )
    epoch_train = examples * train["tokens_per_example"] / train[key]
    epoch_val = data.val.n * he_s
    epochs = asha_epochs(budget.num_samples, budget.grace_period, budget.reduction_factor, budget.max_epochs)
    # The space's texts in two forms, the one-shot example (train has one once targets exist).
    hard = len(candidates(texts_of(spec.search, spec.fixed))) + 1
    per_problem = {"humaneval": he_s, "mbpp": gen_mbpp["tokens_per_problem"] / gen_mbpp[key]}
    arms = 3
    tests = " + ".join(f"{p.n} {p.source}" for p in data.test)
    report = arms * sum(p.n * per_problem[p.source] for p in data.test) + (hard + 1) * data.val.n * he_s
    return [
        ("distillation (cached: none)" if cached is not None else "distillation (once, then cached)", distill),
        (f"one epoch: train {examples:.0f} examples", epoch_train),
        (f"one epoch: val {data.val.n} problems", epoch_val),
        (f"ASHA: {epochs:.0f} epochs", epochs * (epoch_train + epoch_val)),
        (f"report: {arms} arms x ({tests}) test + ({hard} hard prompts + frozen) x {data.val.n} val", report),
        ("start-up (Ray, model load, per-trial set-up ~10 s)", 60 + 10 * budget.num_samples),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="cpu")
    p.add_argument("--problems", type=int, default=8, help="problems per generation probe")
    p.add_argument("--steps", type=int, default=3, help="training steps timed (after one warm-up)")
    args = p.parse_args()
    spec = load_space(args.space)
    config = spec.train_config({k: d.candidates()[0][1] for k, d in spec.search.items()})
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    dtype, reason = config_dtype(config, spec.model)
    loaded = load_model(spec.model, device="cpu", dtype=dtype)
    gen_he = generation_rate(loaded, problems_for("val", spec.data)[: args.problems], config)
    gen_mbpp = generation_rate(loaded, problems_for("train", spec.data)[: args.problems], config)
    train_problems = problems_for("train", spec.data)
    targets = cached_targets(loaded, train_problems, spec.data.distill, config) if spec.data.needs_targets() else None
    # Time the examples an epoch really has: the cached targets, else the split's own solutions
    # (HumanEval val's canonical ones stand in for targets not distilled yet: longer, so a safe side).
    items = (
        training_items(train_problems, targets)[0]
        if targets is not None or not spec.data.needs_targets()
        else problems_for("val", spec.data)
    )
    train = training_rate(loaded, items[: config.batch_size * (args.steps + 1)], config, args.steps)
    load = os.getloadavg()[0]
    print(
        f"space {spec.name}; model {spec.model}; dtype {str(dtype)[6:]} ({reason}); {machine()}; "
        f"load average {load:.1f}" + (" - BUSY: every rate below is low" if load > (os.cpu_count() or 1) else "")
    )
    for name, rate in (("generation HumanEval", gen_he), ("generation MBPP", gen_mbpp), ("training", train)):
        size = rate.get("tokens_per_problem", rate.get("tokens_per_example"))
        print(f"{name:22s} {size:6.1f} tokens per item  {rate['tps']:7.1f} tokens/s")
    parts = estimate(spec, gen_he, gen_mbpp, train, cached=len(items) if targets is not None else None)
    print("\nestimate:")
    for name, seconds in parts:
        if not name.startswith("one epoch"):
            print(f"  {name:70s} {seconds / 60:6.1f} min")
    print(f"  {'total':70s} {sum(s for n, s in parts if not n.startswith('one epoch')) / 60:6.1f} min")
    epoch = sum(s for n, s in parts if n.startswith("one epoch"))
    print(f"  (one epoch {epoch / 60:.1f} min; {math.ceil(epoch)} s)")


if __name__ == "__main__":
    main()
