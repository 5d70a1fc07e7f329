"""A saved soft prompt's method and shape, read from its PEFT `adapter_config.json` (no torch).

Used to check a warm start (`init: adapter:PATH`) or an interpolation before any model loads:
the adapter must be of the trial's method, token count and (for P-tuning / a prefix projection)
encoder width, and fit the model (hidden size, layers, key/value heads). The tensors themselves
are read by `trainable.softprompt.load_prompt`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from softprompt_cli.errors import field_error
from trainable.methods import PEFT_TYPES, Method

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# Our own addition beside PEFT's files: the re-parameterisation weights (P-tuning's MLP, a prefix
# projection). PEFT saves only the encoder's output, which is enough to use the prompt (and what
# `PeftModel.from_pretrained` loads) but not to continue training it; a warm start needs both.
ENCODER_FILE = "prompt_encoder.safetensors"


@dataclass(frozen=True)
class AdapterInfo:
    path: str
    method: str
    num_virtual_tokens: int
    token_dim: int  # hidden size (prompt/p-tuning) or key/value width per layer (prefix)
    num_layers: int
    num_attention_heads: int  # PEFT's value: key/value heads for prefix tuning (GQA)
    encoder_hidden_size: int | None = None  # P-tuning's MLP / the prefix projection's width
    prefix_projection: bool = False

    @property
    def reparameterised(self) -> bool:
        """Trained through an MLP whose weights PEFT's files do not hold (they are in ENCODER_FILE)."""
        return self.method == Method.P_TUNING.value or self.prefix_projection

    @property
    def saved_shape(self) -> tuple[int, int]:
        """The shape of PEFT's `prompt_embeddings` for this adapter."""
        width = self.token_dim * (2 * self.num_layers if self.method == Method.PREFIX_TUNING.value else 1)
        return self.num_virtual_tokens, width

    def describe(self) -> str:
        extra = ""
        if self.method == Method.P_TUNING.value:
            extra = f", encoder_hidden_size {self.encoder_hidden_size}"
        elif self.method == Method.PREFIX_TUNING.value:
            extra = f", prefix_projection {self.encoder_hidden_size if self.prefix_projection else 0}"
        return f"{self.method}, {self.num_virtual_tokens} virtual tokens, token_dim {self.token_dim}{extra}"


def _count(raw: dict, key: str) -> int:
    """A size from adapter_config.json: a JSON integer >= 1 (not 4.5, true, "4" or 1e400)."""
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} is {value!r}, not an integer >= 1")
    return value


def read_adapter_info(path: str, field: str = "init", shown=None) -> AdapterInfo:
    """The adapter at `path`, or a one-line error naming `field` (and `shown`, the user's value)."""
    shown = path if shown is None else shown
    allowed = f"a saved soft prompt: a PEFT adapter directory with {CONFIG_FILE} and {WEIGHTS_FILE}"
    try:  # a path the OS refuses to look at (too long, no permission, ~nobody) is not found either
        config_file = Path(path).expanduser() / CONFIG_FILE
        found = config_file.is_file() and (config_file.parent / WEIGHTS_FILE).is_file()
    except (OSError, ValueError, RuntimeError) as exc:
        raise field_error(field, shown, f"{allowed} (not found: {type(exc).__name__})") from None
    if not found:
        raise field_error(field, shown, allowed + " (not found)")
    try:
        raw = json.loads(config_file.read_text())
        method = PEFT_TYPES[raw["peft_type"]]
        width = raw.get("encoder_hidden_size")
        info = AdapterInfo(
            path=str(config_file.parent),
            method=method,
            num_virtual_tokens=_count(raw, "num_virtual_tokens"),
            token_dim=_count(raw, "token_dim"),
            num_layers=_count(raw, "num_layers"),
            num_attention_heads=_count(raw, "num_attention_heads"),
            encoder_hidden_size=None if width is None else _count(raw, "encoder_hidden_size"),
            prefix_projection=bool(raw.get("prefix_projection", False)),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        kinds = ", ".join(PEFT_TYPES)
        why = " ".join(str(exc).split())[:200]
        raise field_error(field, shown, f"{allowed}, of peft_type {kinds} ({type(exc).__name__}: {why})") from None
    return info


def config_mismatch(
    info: AdapterInfo,
    method: str,
    num_virtual_tokens: int,
    encoder_hidden_size: int | None,
    prefix_projection: int | None,
) -> str | None:
    """Why a trial with these settings cannot start from this adapter (None if it can)."""
    want = [("method", info.method, method), ("num_virtual_tokens", info.num_virtual_tokens, num_virtual_tokens)]
    if method == Method.P_TUNING.value and encoder_hidden_size is not None:
        want.append(("encoder_hidden_size", info.encoder_hidden_size, encoder_hidden_size))
    if method == Method.PREFIX_TUNING.value:
        has = info.encoder_hidden_size if info.prefix_projection else 0
        want.append(("prefix_projection", has, prefix_projection or 0))
    for name, has, needed in want:
        if has != needed:
            return f"{name} {needed!r} (this adapter has {has!r})"
    if info.reparameterised and not (Path(info.path) / ENCODER_FILE).is_file():
        return (
            f"an adapter saved by this project, with {ENCODER_FILE} ({method} trains an MLP; "
            "PEFT's files hold only its output, which is enough to use the prompt but not to continue)"
        )
    return None


def model_dims(method: str, model_config) -> dict:
    """The shape PEFT gives a soft prompt of `method` on this model (as PEFT 0.21's
    `_prepare_prompt_learning_config` computes it: prefix tuning stores key/value heads only)."""
    hidden, heads = model_config.hidden_size, model_config.num_attention_heads
    dims = {"token_dim": hidden, "num_layers": model_config.num_hidden_layers, "num_attention_heads": heads}
    if method == Method.PREFIX_TUNING.value:
        kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
        head_dim = getattr(model_config, "head_dim", None) or hidden // heads
        dims.update(token_dim=head_dim * kv_heads, num_attention_heads=kv_heads)
    return dims


def model_mismatch(info: AdapterInfo, model_config, encoder_hidden_size: int | None = None) -> str | None:
    """Why this adapter cannot be used on the model (None if it can)."""
    dims = model_dims(info.method, model_config)
    names = ["token_dim"] + (["num_layers", "num_attention_heads"] if info.method == Method.PREFIX_TUNING.value else [])
    for name in names:
        if getattr(info, name) != dims[name]:
            what = "hidden size" if name == "token_dim" and info.method != Method.PREFIX_TUNING.value else name
            return f"an adapter for this model's {what} {dims[name]} (this adapter has {getattr(info, name)})"
    if (
        info.method == Method.P_TUNING.value
        and encoder_hidden_size is None
        and info.encoder_hidden_size != model_config.hidden_size
    ):
        return (
            f"encoder_hidden_size {model_config.hidden_size} (PEFT's default: the hidden size; this adapter "
            f"has {info.encoder_hidden_size}: set encoder_hidden_size: {info.encoder_hidden_size})"
        )
    return None
