"""dtype `auto` on a CPU: measured on the machine at hand, not guessed from its flags.

Whether bf16 beats fp32 on a CPU depends on more than its flags (a CPU with avx512_bf16 and no
AMX has read a 2.8x faster bf16 GEMM while training ran slower in bf16), so `auto` times the
work a trial does, in both dtypes, on the model at hand:

- one training step: the project's completion loss and its backward through a soft prompt, at
  the run's batch size (rows of at most `PROBE_ROW_TOKENS` tokens, to keep the probe short);
- one decoding batch: `trainable.decoding.generate` at the run's eval batch size, a prefill and
  `DECODE_STEPS` greedy steps (timed per model call, so a row that stops early changes nothing).

The two dtypes are timed interleaved (a busy neighbour slows both), and each figure is the
fastest of `ROUNDS` rounds (the first also warms each path up). `decide` weighs them as the sum
of one training step and one decoding batch, and picks bf16 only when that sum is at least
`MARGIN` faster: fp32 is the dtype that changes no result, so a tie keeps it. One line prints both
timings and the choice.

The result is cached per machine (CPU model, the flags that matter, cores, torch threads, torch
version) and per model identity and batch sizes, in `<cache>/dtype-probe/<key>.json` (the cache
dir of `trainable.model.bundled.cache_root`, `$SOFTPROMPT_SEARCH_CACHE`), written atomically; a lock
file beside it keeps two processes from probing at once, and an unreadable file is probed again.
A probe that fails (bf16 unsupported, say) chooses fp32 and says why.

    python -m trainable.dtype_probe --model bundled --batch-size 4
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trainable.model.loading import default_device, dtype_rule

FORMAT = 1
PROBE_ROW_TOKENS = 32  # tokens per training row: prompt half, target half
DECODE_STEPS = 6
ROUNDS = 2
MARGIN = 0.05  # bf16 must be this much faster to be chosen
MATTERING_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_fp16")
# A Python function, so the tokens look like what trials train on.
_CODE = '''def running_max(numbers: list[int]) -> list[int]:
    """Return the running maximum of the numbers."""
    out, best = [], None
    for n in numbers:
        best = n if best is None or n > best else best
        out.append(best)
    return out
'''


@dataclass(frozen=True)
class Timing:
    """Seconds of one training step and of one decoding batch, in one dtype."""

    train_s: float
    decode_s: float

    @property
    def total(self) -> float:
        return self.train_s + self.decode_s


def decide(fp32: Timing, bf16: Timing | None, why_no_bf16: str = "") -> tuple[str, str]:
    """The dtype and why, from the two measurements: a pure function, tested without this machine."""
    shown = f"fp32 {_show(fp32)}"
    if bf16 is None:
        return "float32", f"auto: measured {shown}; bf16 failed ({why_no_bf16}), so fp32"
    shown += f", bf16 {_show(bf16)}"
    if bf16.total <= fp32.total * (1 - MARGIN):
        return "bfloat16", f"auto: measured {shown}: bf16 faster"
    return "float32", f"auto: measured {shown}: bf16 not {MARGIN:.0%} faster, so fp32"


def _show(t: Timing) -> str:
    return f"{t.total:.2f} s (train step {t.train_s:.2f} + decode {t.decode_s:.2f})"


def machine_key() -> dict:
    """What the measurement depends on besides the model."""
    from trainable.model.loading import cpu_flags

    flags = cpu_flags()
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.partition(":")[2].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpu": name or platform.processor() or platform.machine(),
        "flags": [flag for flag in MATTERING_FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def probe_key(ref, batch_size: int, eval_batch_size: int) -> dict:
    """The cache key: this machine, the model's identity (`trainable.distill.model_sha256`: the
    bundled model's pinned hash, a directory's files) and the batch sizes timed."""
    from trainable.distill import model_sha256

    machine = machine_key()
    return {
        "format": FORMAT,
        "machine": machine,
        "model": model_sha256(ref),
        "batch_size": batch_size,
        "eval_batch_size": eval_batch_size,
    }


def cache_path(key: dict, cache_dir: Path | None = None) -> Path:
    from trainable.model.bundled import cache_root

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_root(cache_dir) / "dtype-probe" / f"{digest}.json"


def probed_dtype(
    model_ref: str, batch_size: int, eval_batch_size: int, cache_dir: Path | None = None
) -> tuple[str, str]:
    """The measured choice for this machine and model: from the cache, else probed and cached."""
    from trainable.model.loading import resolve_model_ref

    ref = resolve_model_ref(model_ref)
    key = probe_key(ref, batch_size, eval_batch_size)
    path = cache_path(key, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits, then reads what the first wrote
        cached = _read(path, key)
        if cached is not None:
            return cached["dtype"], cached["reason"] + " (cached)"
        started = time.perf_counter()
        name, reason, timings = probe(ref, batch_size, eval_batch_size)
        wall = time.perf_counter() - started
        _write(path, {"key": key, "dtype": name, "reason": reason, "timings": timings, "probe_s": round(wall, 1)})
    flags = ", ".join(key["machine"]["flags"]) or "none of " + ", ".join(MATTERING_FLAGS)
    print(f"dtype probe ({wall:.0f} s; CPU flags: {flags}): {reason}", flush=True)
    return name, reason


def _read(path: Path, key: dict) -> dict | None:
    """The cached record, or None where it is missing, damaged or for another key."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("key") == key and record.get("dtype") in ("float32", "bfloat16")
    return record if ok and isinstance(record.get("reason"), str) else None


def _write(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)  # a reader sees the old file or the new one, never half


def probe(ref, batch_size: int, eval_batch_size: int) -> tuple[str, str, dict]:
    """Time both dtypes on the model; (dtype, reason, the timings)."""
    from trainable.model.loading import load_model

    fp32 = _Bench(load_model(ref, device="cpu", dtype=torch.float32), batch_size, eval_batch_size)
    try:
        bf16 = _Bench(load_model(ref, device="cpu", dtype=torch.bfloat16), batch_size, eval_batch_size)
        timings = _interleaved({"float32": fp32, "bfloat16": bf16})
    except (RuntimeError, NotImplementedError) as exc:  # an operator without a bf16 kernel here
        alone = Timing(fp32.train(), fp32.decode())
        name, reason = decide(alone, None, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__)
        return name, reason, {"float32": asdict(alone)}
    name, reason = decide(timings["float32"], timings["bfloat16"])
    return name, reason, {name: asdict(t) for name, t in timings.items()}


def _interleaved(benches: dict) -> dict[str, Timing]:
    """`ROUNDS` rounds, each dtype in turn, the order swapped every round; the fastest of each
    dtype's rounds (the first round also warms each path up)."""
    train: dict[str, list[float]] = {name: [] for name in benches}
    decode: dict[str, list[float]] = {name: [] for name in benches}
    for round_ in range(ROUNDS):
        order = list(benches.items())[:: 1 if round_ % 2 == 0 else -1]
        for name, bench in order:
            train[name].append(bench.train())
        for name, bench in order:
            decode[name].append(bench.decode())
    return {name: Timing(min(train[name]), min(decode[name])) for name in benches}


class _Bench:
    """The real training step and decoding path on one loaded model."""

    def __init__(self, loaded, batch_size: int, eval_batch_size: int):
        from trainable.train import build_examples

        self.loaded, self.eval_batch_size = loaded, eval_batch_size
        ids = loaded.tokenizer(_CODE * 8, add_special_tokens=False)["input_ids"]
        half = PROBE_ROW_TOKENS // 2
        decode = loaded.tokenizer.decode
        problem = {"prompt": decode(ids[:half]), "target": decode(ids[half : 2 * half])}
        self.examples = build_examples(loaded, [problem] * batch_size, PROBE_ROW_TOKENS)
        self.prompts = [decode(ids[: half // 2])] * eval_batch_size
        self.soft = torch.nn.Parameter(torch.randn(8, loaded.model.config.hidden_size) * 0.02)

    def train(self) -> float:
        from trainable.train import completion_loss

        started = time.perf_counter()
        loss, _ = completion_loss(self.loaded, self.soft, self.examples)
        loss.backward()
        self.soft.grad = None
        return time.perf_counter() - started

    def decode(self) -> float:
        from trainable.decoding.generate import generate

        started = time.perf_counter()
        stats = generate(
            self.loaded,
            self.prompts,
            self.soft.detach(),
            max_new_tokens=DECODE_STEPS,
            batch_size=self.eval_batch_size,
            stops=[[]] * len(self.prompts),
        ).stats
        per_call = (time.perf_counter() - started) / max(1, stats.forwards)
        return per_call * (1 + DECODE_STEPS)  # a prefill and DECODE_STEPS steps, however many ran


def choose_dtype(
    setting: str = "auto",
    device: torch.device | None = None,
    model_ref: str | None = None,
    batch_size: int = 8,
    eval_batch_size: int = 16,
) -> tuple[torch.dtype, str]:
    """`dtype_rule` on this process's device; on a CPU, `auto` is measured on `model_ref` at
    these batch sizes (`probed_dtype`, cached per machine and model). Without a model to
    measure, `auto` on a CPU is fp32: the dtype that changes no result."""
    device = device or default_device()
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    rule = dtype_rule(setting, device.type, cuda_bf16)
    if rule is None and model_ref is None:
        rule = "float32", "auto: no model given to measure on this CPU, so fp32"
    if rule is None:
        rule = probed_dtype(model_ref, batch_size, eval_batch_size)
    name, reason = rule
    return getattr(torch, name), reason


def config_dtype(config, model_ref: str, device: torch.device | None = None) -> tuple[torch.dtype, str]:
    """`choose_dtype` for a run's settings (a `TrainConfig`): measured at its batch sizes."""
    return choose_dtype(config.dtype, device, model_ref, config.batch_size, config.eval_batch_size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-batch-size", type=int, default=16)
    args = p.parse_args(argv)
    name, reason = probed_dtype(args.model, args.batch_size, args.eval_batch_size)
    print(f"dtype {name} ({reason})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
