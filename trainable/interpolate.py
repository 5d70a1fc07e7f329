"""Score the soft prompts on the straight line between two saved soft prompts (seed 002).

    python -m trainable.interpolate --model bundled --a runs/s1/best_adapter --b runs/s2/best_adapter \\
        --steps 5 --split val [--plot interpolation.png] [--out points.jsonl]

A and B must be of the same method and shape. Point k of K mixes them with weight w = k / (K - 1):
(1 - w) * A + w * B, on what PEFT saves for the method (input embeddings, or a prefix's key/values),
so w = 0 is A and w = 1 is B exactly. Prints one JSON line per point
({"weight", "pass@1", "n", "passed"}) and writes a PNG of pass@1 against the weight. Generated code
runs only in the sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainable.adapter import AdapterInfo, read_adapter_info
from softprompt_cli.commands import OneLineParser, run_main
from trainable.config import TrainConfig
from trainable.data.splits import SPLITS, problems_for
from softprompt_cli.errors import field_error
from trainable.evaluate import _data_split  # the same --data-sizes as `trainable.evaluate`


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m trainable.interpolate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="hub id, local model dir, or `bundled`")
    p.add_argument("--a", required=True, help="a saved soft prompt (PEFT adapter dir): weight 0")
    p.add_argument("--b", required=True, help="another one of the same method and shape: weight 1")
    p.add_argument("--steps", type=int, default=5, help="points on the line, ends included (default 5)")
    p.add_argument("--split", default="val", help="train | val | test | all (default val)")
    p.add_argument("--data-sizes", default=None, metavar="TRAIN,VAL,TEST", help="split sizes, as in the search space")
    p.add_argument("--limit", type=int, default=None, help="score only the first N problems")
    p.add_argument("--max-new-tokens", type=int, default=TrainConfig.max_new_tokens)
    p.add_argument("--batch-size", type=int, default=TrainConfig.eval_batch_size)
    p.add_argument("--timeout", type=float, default=TrainConfig.sandbox_timeout_s, help="sandbox seconds per program")
    p.add_argument("--plot", default="interpolation.png", help="PNG of pass@1 against the weight")
    p.add_argument("--out", help="write every point's samples/results here (JSONL, with the weight)")
    return p


def _shape(info: AdapterInfo) -> tuple:
    # What the mixed tensor must agree on: the method and PEFT's saved shape. (An encoder's width
    # does not matter: the line runs between the saved outputs.)
    return info.method, info.num_virtual_tokens, info.token_dim, info.num_layers, info.num_attention_heads


def check_args(args) -> tuple[AdapterInfo, AdapterInfo]:
    if args.steps < 2:
        raise field_error("--steps", args.steps, "an integer >= 2 (the line's two ends at least)")
    if args.split not in SPLITS:
        raise field_error("--split", args.split, "one of " + ", ".join(SPLITS))
    for name in ("limit", "max_new_tokens", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise field_error("--" + name.replace("_", "-"), value, "an integer >= 1")
    if args.timeout <= 0:
        raise field_error("--timeout", args.timeout, "a number of seconds > 0")
    if not args.plot.endswith(".png"):
        raise field_error("--plot", args.plot, "a path ending in .png")
    a, b = read_adapter_info(args.a, "--a"), read_adapter_info(args.b, "--b")
    if _shape(a) != _shape(b):
        raise field_error(
            "--b", args.b, f"a soft prompt of --a's method and shape ({a.describe()}); this one: {b.describe()}"
        )
    return a, b


def weights(steps: int) -> list[float]:
    return [k / (steps - 1) for k in range(steps)]


def mix(a, b, weight: float):
    """(1 - w) * A + w * B, exact at both ends (1.0 * A + 0.0 * B is A bit for bit)."""
    return (1.0 - weight) * a + weight * b


def plot(points: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([p["weight"] for p in points], [p["pass@1"] for p in points], marker="o")
    ax.set_xlabel("mixing weight (0 = A, 1 = B)")
    ax.set_ylabel("pass@1")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    info, _ = check_args(args)
    from trainable.decoding.generate_and_score import evaluate_arms
    from trainable.engine import LocalEngine
    from trainable.model.loading import load_model, resolve_model_ref
    from trainable.softprompt import check_fits, load_prompt, prompt_input

    ref = resolve_model_ref(args.model)  # bad references fail before any weights load
    problems = problems_for(args.split, _data_split(args.data_sizes))[: args.limit]
    engine = LocalEngine(load_model(ref))
    (_, a), (_, b) = load_prompt(args.a, "--a"), load_prompt(args.b, "--b")
    check_fits(info, engine.facts.config, "--a", args.a, info.encoder_hidden_size)
    arms = {}
    for weight in weights(args.steps):  # every point's rows in one decode, each behind its own mix
        mixed = mix(a, b, weight).to(engine.facts.device)
        arms[weight] = (problems, prompt_input(info.method, mixed, info.num_layers, info.num_attention_heads))
    scored = evaluate_arms(engine, arms, args.max_new_tokens, args.batch_size, args.timeout)
    points, rows = [], []
    for weight, result in scored.items():
        points.append({"weight": weight, **result.summary()})
        rows += [{"weight": weight, **sample} for sample in result.samples]
        print(json.dumps(points[-1]), flush=True)
    plot(points, Path(args.plot), f"{info.method}: {Path(args.a).name} -> {Path(args.b).name} ({args.split})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return 0


if __name__ == "__main__":
    run_main(main)
