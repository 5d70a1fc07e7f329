"""The settings of one trial, checked at construction.

Every field can be fixed or searched by a space (`spaces/`); the search passes the merged values
here, so a bad value fails before `ray.init()` with a message naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum

from trainable.adapter import config_mismatch, read_adapter_info
from softprompt_cli.errors import field_error
from trainable.methods import DEFAULT_METHOD, METHOD_ONLY, METHODS, Method, method_list


DTYPES = ("auto", "float32", "bfloat16")  # `auto`: trainable.dtype_probe.choose_dtype (measured on a CPU)


class InitKind(str, Enum):
    """How the soft prompt starts. `adapter:PATH` is a warm start from a saved soft prompt of the
    same method and shape; any other string is a TEXT init with that text."""

    RANDOM = "random"
    SAMPLE_VOCAB = "sample_vocab"
    TEXT = "text"
    ADAPTER = "adapter"


ADAPTER_PREFIX = "adapter:"
# What each method can start from. Prompt tuning: PEFT's inits. P-tuning: its embeddings pass
# through an MLP, so tokens' embeddings mean nothing there (PEFT has no such init either). Prefix
# tuning: PEFT draws key/values at random; a text or sampled tokens give the key/values the frozen
# model computes for those tokens (Li & Liang's "activations of real words"), set directly, so
# not through a projection.
INITS = {
    Method.PROMPT_TUNING.value: (InitKind.RANDOM, InitKind.SAMPLE_VOCAB, InitKind.TEXT, InitKind.ADAPTER),
    Method.P_TUNING.value: (InitKind.RANDOM, InitKind.ADAPTER),
    Method.PREFIX_TUNING.value: (InitKind.RANDOM, InitKind.SAMPLE_VOCAB, InitKind.TEXT, InitKind.ADAPTER),
}
TOKEN_INITS = (InitKind.SAMPLE_VOCAB, InitKind.TEXT)  # inits made from tokens
_INIT_WORDS = {
    InitKind.RANDOM: "'random'",
    InitKind.SAMPLE_VOCAB: "'sample_vocab'",
    InitKind.TEXT: "an init text",
    InitKind.ADAPTER: "'adapter:PATH'",
}
_WHY_NOT = {
    Method.P_TUNING.value: "P-tuning's embeddings pass through an MLP, so no token init",
    Method.PREFIX_TUNING.value: "a token init sets the key/values directly, not through a projection",
}


KEYWORDS = (InitKind.RANDOM.value, InitKind.SAMPLE_VOCAB.value)


def init_kind(init: str) -> InitKind:
    if init in KEYWORDS:
        return InitKind(init)
    return InitKind.ADAPTER if init.startswith(ADAPTER_PREFIX) else InitKind.TEXT


def adapter_path(init: str) -> str:
    """The directory of an `adapter:PATH` init."""
    return init[len(ADAPTER_PREFIX) :]


def _near_keyword(init: str) -> str | None:
    """The keyword `init` looks like without being it (`Random`, `SAMPLE_VOCAB`, "random ",
    `sample-vocab`): as a text init it would silently train from the embedding of that word."""
    folded = "".join(ch for ch in init.lower() if ch.isalnum())
    return next((k for k in KEYWORDS if folded == k.replace("_", "") and init != k), None)


# Prompt tuning's gains level off near 100 virtual tokens (Lester et al. 2021), and each one takes
# a position of the model's context in every example: 1,024 leaves room to search lengths while a
# typo such as 100000 (more positions than any code model has) is caught. The model's own limit
# (virtual tokens + max_length <= its positions) is checked against its config before Ray starts.
MAX_VIRTUAL_TOKENS = 1024


def _check_int(name: str, value, minimum: int, maximum: int | None = None) -> None:
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= (maximum or value):
        raise field_error(name, value, allowed)


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise field_error(name, value, "a number >= 0" if allow_zero else "a number > 0")


# The one home of the run defaults (batch and sequence sizes, evaluation settings, dtype): the
# CLIs' flag defaults read them from TrainConfig, spaces/default.yaml lists only what it changes
# (nothing today) and the space loader fills the rest in (`run_defaults`), so a resolved space
# still names every value a trial runs with. Library functions take these as required arguments.
@dataclass(frozen=True)
class TrainConfig:
    # prompt_tuning | p_tuning | prefix_tuning (see trainable.methods).
    method: str = DEFAULT_METHOD
    num_virtual_tokens: int = 16
    # `random` | `sample_vocab` | `adapter:PATH` | any other non-empty text (PEFT TEXT init);
    # which of them a method can use: INITS.
    init: str = "random"
    # p_tuning only: the MLP's width (None: PEFT's default, the model's hidden size).
    encoder_hidden_size: int | None = None
    # prefix_tuning only: 0 or None learns the key/values directly; N > 0 through an MLP of width N.
    prefix_projection: int | None = None
    learning_rate: float = 3e-2
    epochs: int = 4
    batch_size: int = 8
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    # Training examples longer than this (prompt + solution tokens) are cut from the left.
    max_length: int = 768
    seed: int = 0
    # Evaluation: greedy decoding, sequences decoded at once, and the sandbox's per-program limit.
    # The batch is a speed setting only (tokens are the same at any batch). On a 2-core CPU 16 beat
    # 8 and 32 did not beat 16 (a step at 32 rows is cheap, but the prompts' prefill and attention
    # over long caches grow); on an H200 a decoding step costs about the same at 8 rows as at 64,
    # so larger on a GPU still pays (bench/README.md, "Evaluation" and "GPU").
    max_new_tokens: int = 300
    eval_batch_size: int = 16
    sandbox_timeout_s: float = 10.0
    # The frozen model's compute dtype; the soft prompt itself is always trained in fp32.
    dtype: str = "auto"
    # The engine that serves every trial of a device (search.engine_service) fuses the requests
    # that arrive within `engine_wait_ms` of the first, at most `engine_max_batch` of them (one per
    # trial at a time). The wait is a small fraction of a step's compute (a training step of a
    # trial's batch takes tens of milliseconds on a GPU, seconds on a CPU, where 0, 5 and 50 ms
    # gave the same rate within noise: bench/README.md); the batch is the default space's
    # concurrent trials, so each fused call can hold every trial's request.
    engine_max_batch: int = 16
    engine_wait_ms: float = 5.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise field_error("method", self.method, "one of " + method_list())
        _check_int("num_virtual_tokens", self.num_virtual_tokens, 1, MAX_VIRTUAL_TOKENS)
        self._check_method_only()
        self._check_init()
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
        if self.dtype not in DTYPES:
            raise field_error("dtype", self.dtype, "one of " + ", ".join(DTYPES))
        _check_int("engine_max_batch", self.engine_max_batch, 1)
        _check_positive("engine_wait_ms", self.engine_wait_ms, allow_zero=True)

    def _check_method_only(self) -> None:
        for name, owner in METHOD_ONLY.items():
            value = getattr(self, name)
            if value is not None and self.method != owner:
                raise field_error(name, value, f"no value unless method is {owner} (method is {self.method})")
        if self.encoder_hidden_size is not None:
            _check_int("encoder_hidden_size", self.encoder_hidden_size, 1)
        if self.prefix_projection is not None:
            _check_int("prefix_projection", self.prefix_projection, 0)

    def _check_init(self) -> None:
        if not isinstance(self.init, str) or not self.init.strip():
            raise field_error("init", self.init, "'random', 'sample_vocab', 'adapter:PATH' or a non-empty init text")
        keyword = _near_keyword(self.init)
        if keyword:
            raise field_error(
                "init",
                self.init,
                f"{keyword!r} exactly (init keywords are lower case, without "
                "spaces), or a text init that is not a keyword",
            )
        allowed = INITS[self.method]
        projected = self.method == Method.PREFIX_TUNING.value and bool(self.prefix_projection)
        if projected:
            allowed = tuple(kind for kind in allowed if kind not in TOKEN_INITS)
        if self.init_kind not in allowed:
            words = " or ".join(_INIT_WORDS[kind] for kind in allowed)
            where = f"{self.method} with prefix_projection {self.prefix_projection}" if projected else self.method
            raise field_error("init", self.init, f"{words} for method {where} ({_WHY_NOT[self.method]})")
        if self.init_kind is InitKind.ADAPTER:
            if not adapter_path(self.init).strip():
                raise field_error("init", self.init, "'adapter:PATH' with the PATH of a saved soft prompt")
            info = read_adapter_info(adapter_path(self.init), "init", self.init)
            why = config_mismatch(
                info, self.method, self.num_virtual_tokens, self.encoder_hidden_size, self.prefix_projection
            )
            if why:
                raise field_error("init", self.init, f"a soft prompt of the trial's shape: {why}")

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


# The settings a space holds fixed unless it searches them (spaces/default.yaml's `fixed`): not the
# scientific parameters (method, length, init, learning rate, method-only ones), nor `epochs`
# (a space's budget.max_epochs).
RUN_SETTINGS = (
    "batch_size",
    "warmup_ratio",
    "max_grad_norm",
    "weight_decay",
    "max_length",
    "seed",
    "max_new_tokens",
    "eval_batch_size",
    "sandbox_timeout_s",
    "dtype",
    "engine_max_batch",
    "engine_wait_ms",
)


def run_defaults() -> dict:
    """TrainConfig's defaults of RUN_SETTINGS, in that order."""
    return {name: getattr(TrainConfig, name) for name in RUN_SETTINGS}
