"""The settings of one trial, checked at construction.

Every field can be fixed or searched by a space (`spaces/`); the search passes the merged values
here, so a bad value fails before `ray.init()` with a message naming the field.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum

from trainable.errors import field_error


class InitKind(str, Enum):
    """How the virtual-token embeddings start. Any other string is a TEXT init with that text."""

    RANDOM = "random"
    SAMPLE_VOCAB = "sample_vocab"
    TEXT = "text"


KEYWORDS = (InitKind.RANDOM.value, InitKind.SAMPLE_VOCAB.value)


def init_kind(init: str) -> InitKind:
    if init in KEYWORDS:
        return InitKind(init)
    return InitKind.TEXT


def _near_keyword(init: str) -> str | None:
    """The keyword `init` looks like without being it (`Random`, `SAMPLE_VOCAB`, "random ",
    `sample-vocab`): as a text init it would silently train from the embedding of that word."""
    folded = "".join(ch for ch in init.lower() if ch.isalnum())
    return next((k for k in KEYWORDS if folded == k.replace("_", "") and init != k), None)


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise field_error(name, value, f"an integer >= {minimum}")


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise field_error(name, value, "a number >= 0" if allow_zero else "a number > 0")


@dataclass(frozen=True)
class TrainConfig:
    num_virtual_tokens: int = 16
    # `random` | `sample_vocab` | any other non-empty text (PEFT TEXT init with that text).
    init: str = "random"
    learning_rate: float = 3e-2
    epochs: int = 4
    batch_size: int = 4
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    # Training examples longer than this (prompt + solution tokens) are cut from the left.
    max_length: int = 768
    seed: int = 0
    # Evaluation: greedy decoding, sequences per batch, and the sandbox's per-program limit.
    max_new_tokens: int = 300
    eval_batch_size: int = 8
    sandbox_timeout_s: float = 10.0

    def __post_init__(self):
        _check_int("num_virtual_tokens", self.num_virtual_tokens, 1)
        if not isinstance(self.init, str) or not self.init.strip():
            raise field_error("init", self.init, "'random', 'sample_vocab' or a non-empty init text")
        keyword = _near_keyword(self.init)
        if keyword:
            raise field_error("init", self.init, f"{keyword!r} exactly (init keywords are lower case, without "
                              "spaces), or a text init that is not a keyword")
        _check_positive("learning_rate", self.learning_rate)
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            raise field_error("warmup_ratio", self.warmup_ratio, "a number in [0, 1)")
        _check_positive("max_grad_norm", self.max_grad_norm)
        _check_positive("weight_decay", self.weight_decay, allow_zero=True)
        _check_int("max_length", self.max_length, 16)
        _check_int("seed", self.seed, 0)
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        _check_int("eval_batch_size", self.eval_batch_size, 1)
        _check_positive("sandbox_timeout_s", self.sandbox_timeout_s)

    @property
    def init_kind(self) -> InitKind:
        return init_kind(self.init)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: dict, where: str = "") -> "TrainConfig":
        """Build from a mapping; unknown keys are errors naming `where.key`."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise field_error(f"{where}{unknown[0]}", unknown[0], "one of " + ", ".join(cls.field_names()))
        return cls(**values)
