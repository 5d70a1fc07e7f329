"""K trials as Ray processes: one engine serving all of them vs a model copy in each.

    python bench/bench_engine.py --model bundled [--trials 1 2 4] [--copies-up-to 4] [--epochs 2]
    python bench/bench_engine.py --model tiny --trials 1 2 4 8 16     # per-call overhead only
    python bench/bench_engine.py --model random-0.5b --device cuda --dtype bfloat16 --trials 4 16 \
        --copies-up-to 4 --steps 8 --batch 8 --max-length 768 --decode-problems 16 --new-tokens 128

Each trial is a Ray actor (its own process, as a Tune trial is) doing `--epochs` epochs of a
trial's work: `--steps` training steps of `--batch` HumanEval canonical solutions, the val loss
of `--batch` more, and a greedy decode of `--decode-problems` val prompts (`--new-tokens` each);
methods mixed as in bench_fused.py. Layout "engine": one `EngineActor` (search.engine_service,
the search's own) holds the model with all the cores' threads and the trials are its clients
(one thread each). Layout "copies": each trial loads the model itself (`LocalEngine` in its own
process) with the cores shared out: the baseline without an engine. Both layouts run in one
process's Ray, one after the other, on the same work. With `--device cuda` the engine takes the
GPU (as `resources.gpu: 1` does) and the copies share it at 1/K GPU each (as Ray trials at a GPU
fraction did). Columns: trial-epochs per minute (every trial's epochs over the wall time from
the first trial's start to the last one's end, loading excluded), the sum over the layout's
processes of their peak resident memory (trials and engine; what the node must hold), on a GPU
also the sum of their peak GPU memory, the model copies, and the engine's fused steps per trial
step (`--wait-ms`: the engine's window, `engine_wait_ms`). `--model tiny` is the tests' tiny
random model: what a call costs, not what a model does; `random-0.5b` is Qwen2.5-Coder-0.5B's
shape with random weights and the bundled tokenizer (or `--tokenizer DIR`'s), for a GPU machine
without the model.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import ceilings, describe_ceilings, machine, print_table  # noqa: E402 - after the sys.path line above
from trainable.config import TrainConfig  # noqa: E402 - after the sys.path line above

METHODS = [
    dict(method="prompt_tuning", num_virtual_tokens=8, init="random"),
    dict(method="p_tuning", num_virtual_tokens=12),
    dict(method="prefix_tuning", num_virtual_tokens=16),
    dict(method="prompt_tuning", num_virtual_tokens=16, init="random"),
]


def _model_dir(name: str, tokenizer_dir: str | None) -> str:
    """A directory every Ray process can load: the bundled model's, a saved tiny model, or a
    saved random model of Qwen2.5-Coder-0.5B's shape."""
    import tempfile

    if name == "tiny":
        from trainable.tiny import save_tiny

        return str(save_tiny(tempfile.mkdtemp(prefix="bench-engine-tiny-")))
    if name == "random-0.5b":
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        from bench.common import QWEN_05B_SHAPE
        from trainable.model.bundled import bundled_checkpoint_dir

        out = tempfile.mkdtemp(prefix="bench-engine-random-")
        torch.manual_seed(0)
        Qwen2ForCausalLM(Qwen2Config(**QWEN_05B_SHAPE)).to(torch.bfloat16).save_pretrained(out)
        AutoTokenizer.from_pretrained(tokenizer_dir or bundled_checkpoint_dir()).save_pretrained(out)
        return out
    if name == "bundled":
        from trainable.model.bundled import bundled_checkpoint_dir

        return str(bundled_checkpoint_dir())
    return name


def _trial_worker():
    import ray

    @ray.remote(num_cpus=0)
    class TrialWorker:
        """One trial's process: its soft prompt, optimizer and data; the model its engine's."""

        def __init__(
            self, index: int, model_dir: str, dtype: str, device: str, threads: int, engine_handle, args: dict
        ):
            from search.engine_service import RemoteEngine
            from trainable.config import TrainConfig
            from trainable.data.splits import DataSplit, problems_for
            from trainable.engine import LocalEngine
            from trainable.model.loading import load_model
            from trainable.softprompt import SoftPrompt
            from trainable.train import Trainer, build_examples

            torch.set_num_threads(threads)
            if engine_handle is not None:
                self.engine = RemoteEngine(engine_handle)
            else:
                self.engine = LocalEngine(load_model(model_dir, device=device, dtype=getattr(torch, dtype)))
            self.args = args
            config = TrainConfig(**METHODS[index % len(METHODS)], seed=index, batch_size=args["batch"])
            self.prompt = SoftPrompt.create(self.engine, config)
            problems = problems_for("train", DataSplit(100, 20, 20))
            examples = build_examples(self.engine.facts, problems, args["max_length"])
            self.train = examples[: args["steps"] * args["batch"]]
            self.val = examples[-args["batch"] :]
            self.prompts = [p["prompt"] for p in problems_for("val", DataSplit(100, 20, 20))][: args["decode_problems"]]
            self.trainer = Trainer(self.engine, self.prompt, config, len(self.train))

        def run(self, epochs: int) -> tuple[float, float]:
            from trainable.decoding.generate import GenerateRequest
            from trainable.engine import LossRequest

            started = time.time()
            for epoch in range(1, epochs + 1):
                self.trainer.train_epoch(self.train, epoch)
                with torch.no_grad():
                    soft = self.prompt.inputs()
                self.engine.losses([LossRequest(soft, self.val)])
                request = GenerateRequest(
                    self.prompts, soft, self.args["new_tokens"], len(self.prompts), [("\x00never",)] * len(self.prompts)
                )
                self.engine.generate(request)
            return started, time.time()

        def peak_rss(self) -> int:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        def peak_gpu(self) -> int:
            return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0

    return TrialWorker


def run_layout(layout: str, k: int, model_dir: str, args) -> dict:
    import ray

    from search.engine_service import EngineActor, stop_engines

    cores = os.cpu_count() or 1
    work = dict(
        batch=args.batch,
        steps=args.steps,
        max_length=args.max_length,
        decode_problems=args.decode_problems,
        new_tokens=args.new_tokens,
    )
    gpu = args.device == "cuda"
    engines, engine = [], None
    if layout == "engine":
        config = TrainConfig(dtype=args.dtype, engine_max_batch=max(k, 1), engine_wait_ms=args.wait_ms)
        engine = EngineActor.options(num_cpus=0, num_gpus=1 if gpu else 0, max_concurrency=1000).remote(
            model_dir, config, config.engine_max_batch, config.engine_wait_ms / 1000, cores
        )
        ray.get(engine.describe.remote())
        engines = [(engine, None)]
    threads = 1 if layout == "engine" else max(1, cores // k)
    share = 1 / k if gpu and layout == "copies" else 0  # a copy per trial shares the GPU, as Tune trials did
    Worker = _trial_worker().options(num_gpus=share)
    device = "cuda" if share else "cpu"
    workers = [Worker.remote(i, model_dir, args.dtype, device, threads, engine, work) for i in range(k)]
    ray.get([w.peak_rss.remote() for w in workers])  # every trial set up (models loaded) before the clock
    spans = ray.get([w.run.remote(args.epochs) for w in workers])
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    peak = sum(ray.get([w.peak_rss.remote() for w in workers]))
    peak_gpu = sum(ray.get([w.peak_gpu.remote() for w in workers]))
    fused = ""
    if engine is not None:
        stats = ray.get(engine.stats.remote())
        if gpu:  # the engine's figure is its GPU memory there; its host memory is not asked
            peak_gpu += int(stats["peak_memory_gib"] * 2**30)
        else:
            peak += int(stats["peak_memory_gib"] * 2**30)
        fused = f"{stats['train_calls'] / stats['train_requests']:.2f}"
        stop_engines(engines)
    for w in workers:
        ray.kill(w)
    return {
        "epochs_per_min": k * args.epochs / wall * 60,
        "peak_gib": peak / 2**30,
        "gpu_gib": peak_gpu / 2**30,
        "fused": fused,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tokenizer", help="tokenizer dir for --model random-0.5b (default: the bundled model's)")
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--copies-up-to", type=int, default=4, help="the largest K run with a model copy per trial")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--wait-ms", type=float, default=TrainConfig.engine_wait_ms, help="the engine's window")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--decode-problems", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()

    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    print(machine())
    print(describe_ceilings(ceilings(args.device)))
    model_dir = _model_dir(args.model, args.tokenizer)
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    rows = []
    for k in args.trials:
        layouts = ["engine"] + (["copies"] if k <= args.copies_up_to else [])
        measured = {layout: run_layout(layout, k, model_dir, args) for layout in layouts}
        e, c = measured["engine"], measured.get("copies")
        rows.append(
            [
                k,
                f"{c['epochs_per_min']:.2f}" if c else "-",
                f"{e['epochs_per_min']:.2f}",
                f"{e['epochs_per_min'] / c['epochs_per_min']:.2f}x" if c else "-",
                f"{c['peak_gib']:.2f}" if c else "-",
                f"{e['peak_gib']:.2f}",
                f"{c['gpu_gib']:.2f}" if c else "-",
                f"{e['gpu_gib']:.2f}",
                f"{k} / 1",
                e["fused"],
            ]
        )
        print(f"  K={k} measured: {rows[-1]}", file=sys.stderr, flush=True)
    ray.shutdown()
    print_table(
        [
            "K",
            "copies trial-epochs/min",
            "engine trial-epochs/min",
            "engine vs copies",
            "copies peak GiB (all processes)",
            "engine peak GiB (all processes)",
            "copies GPU peak GiB",
            "engine GPU peak GiB",
            "model copies copies / engine",
            "engine fused steps per trial step",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
