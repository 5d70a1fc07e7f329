"""A local model directory checked without loading it: its config and its weight files' headers.

    .venv/bin/python -c "from trainable.model.files import check_model_dir; check_model_dir('m', 'DIR')"

A config that is not JSON, a `model_type` transformers does not know, or a weights file cut short
(an interrupted copy) would otherwise pass every check and fail each trial as it loads the model.
Reading headers and sizes costs milliseconds even for gigabytes of weights.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from pathlib import Path

from softprompt_cli.errors import field_error

# Bytes per element of each safetensors dtype (the format's own table).
SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# A legacy (non-zip) torch.save file is a pickle: protocol 2+ starts with the PROTO opcode.
_PICKLE_PROTO = 0x80


def check_model_dir(ref: str, folder: str | Path) -> None:
    """One-line UsageError (field `model`) naming the first problem found, if any."""
    folder = Path(folder)
    config = _config(ref, folder / "config.json")
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise field_error(
            "model",
            ref,
            f"a model whose config.json names a model_type transformers knows (got model_type {model_type!r})",
        )
    weights = sorted(p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES) and p.is_file())
    if not weights:
        raise field_error("model", ref, f"a model directory with weights (*.safetensors or *.bin in {folder})")
    for path in weights:
        problem = safetensors_problem(path) if path.suffix == ".safetensors" else torch_file_problem(path)
        if problem:
            raise field_error("model", ref, f"a model whose weight files are whole ({path.name}: {problem})")


def _config(ref: str, path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise field_error("model", ref, f"a model whose config.json is JSON ({first})") from None
    if not isinstance(config, dict):
        raise field_error("model", ref, "a model whose config.json is a JSON object")
    return config


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file (header length, header JSON, each tensor's
    byte range against its shape and dtype, the data's end against the file's size), or None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            return f"header of {length} bytes in a file of {size}"
        try:
            header = json.loads(f.read(length))
        except ValueError:
            return "header is not JSON"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    end = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = tensor["data_offsets"]
            expected = math.prod(tensor["shape"]) * SAFETENSORS_DTYPE_BYTES[tensor["dtype"]]
        except (KeyError, TypeError, ValueError):
            return f"tensor {name!r} has no valid dtype, shape and data_offsets"
        if stop - begin != expected:
            return f"tensor {name!r} spans {stop - begin} bytes, its shape and dtype need {expected}"
        end = max(end, stop)
    if 8 + length + end != size:
        return f"{size} bytes where the header says {8 + length + end} (cut short or padded)"
    return None


def torch_file_problem(path: Path) -> str | None:
    """Why `path` is not a readable torch.save file (a zip whose directory reads, or a legacy
    pickle), or None. A zip's directory is at its end: a file cut short has none."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError) as exc:
            return f"unreadable zip ({exc})"
        return None
    with open(path, "rb") as f:
        first = f.read(4)
    if first == b"PK\x03\x04":
        return "a zip (torch.save) without its directory at the end: cut short"
    if len(first) >= 2 and first[0] == _PICKLE_PROTO:
        return None
    return "neither a zip (torch.save) nor a pickle: cut short or not a weights file"
