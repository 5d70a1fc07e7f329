"""The soft prompt of each method, built with PEFT's encoders, trained in fp32, saved as a standard PEFT adapter.

PEFT's own encoder module of each method (`trainable.methods`) holds the parameters: prompt
tuning's embedding, P-tuning's embedding + MLP, prefix tuning's key/values (+ optional
projection), its config filled with the model's dimensions as `get_peft_model` fills it. The soft
prompt does not wrap the model: a trial may not hold the model at all (its engine does,
`trainable.engine`), so the model's part of an init comes from the engine: the token embeddings of
a TEXT or `sample_vocab` init (the tokens PEFT's init picks), and for a prefix the key/values the
frozen model computes for those tokens (`prefix_from_tokens`), which PEFT does not offer. It writes
the adapter PEFT writes (`adapter_config.json` + `adapter_model.safetensors`, loadable with
`PeftModel.from_pretrained`). We do not use PEFT's forward: it puts virtual tokens before left
padding and drops position ids, which is wrong under RoPE for batched generation;
`trainable.inputs` places them (or the prefix) itself.

PEFT's files hold the encoder's output only; for P-tuning and a projected prefix we also save the
encoder's own weights (`ENCODER_FILE`), so that a warm start continues the same parameters.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType
from peft.tuners.p_tuning import PromptEncoder
from peft.tuners.prefix_tuning import PrefixEncoder
from peft.tuners.prompt_tuning import PromptEmbedding
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainable.adapter import ENCODER_FILE, WEIGHTS_FILE, AdapterInfo, model_mismatch, read_adapter_info
from trainable.config import TOKEN_INITS, InitKind, TrainConfig, adapter_path
from softprompt_cli.errors import field_error
from trainable.engine import as_engine
from trainable.inputs import Prefix
from trainable.methods import PEFT_TYPES, Method
from trainable.private_apis import fill_prompt_learning_config

_PEFT_INIT = {
    InitKind.RANDOM: "RANDOM",
    InitKind.SAMPLE_VOCAB: "SAMPLE_VOCAB",
    InitKind.TEXT: "TEXT",
    InitKind.ADAPTER: "RANDOM",
}  # an adapter init overwrites the random start
_ENCODERS = {Method.PROMPT_TUNING.value: PromptEmbedding, Method.P_TUNING.value: PromptEncoder}


def _peft_config(config: TrainConfig, facts, tokenizer_path: str | None):
    common = {
        "task_type": TaskType.CAUSAL_LM,
        "num_virtual_tokens": config.num_virtual_tokens,
        "base_model_name_or_path": facts.config.name_or_path or None,
    }
    if config.method == Method.P_TUNING.value:
        peft_config = PromptEncoderConfig(
            **common, encoder_reparameterization_type="MLP", encoder_hidden_size=config.encoder_hidden_size
        )
    elif config.method == Method.PREFIX_TUNING.value:
        peft_config = PrefixTuningConfig(
            **common,
            prefix_projection=bool(config.prefix_projection),
            encoder_hidden_size=config.prefix_projection or None,
        )
    else:
        kind = config.init_kind
        peft_config = PromptTuningConfig(
            **common,
            prompt_tuning_init=_PEFT_INIT[kind],
            prompt_tuning_init_text=config.init if kind is InitKind.TEXT else None,
            tokenizer_name_or_path=(tokenizer_path or facts.config.name_or_path) if kind is InitKind.TEXT else None,
        )
    peft_config.num_transformer_submodules = 1  # a decoder-only model, as PEFT sets it
    return fill_prompt_learning_config(peft_config, facts.config)


def _encoder(peft_config) -> torch.nn.Module:
    """PEFT's encoder module for the method, randomly initialised (a token init is copied in after)."""
    if peft_config.peft_type.value == "PREFIX_TUNING":
        return PrefixEncoder(peft_config)
    method = PEFT_TYPES[peft_config.peft_type.value]
    if method == Method.P_TUNING.value:
        return PromptEncoder(peft_config)
    random_start = copy.copy(peft_config)
    random_start.prompt_tuning_init = "RANDOM"  # PEFT's token inits read the model's embedding table
    return PromptEmbedding(random_start, None)


def init_token_ids(model, config: TrainConfig) -> list[int]:
    """The tokens a TEXT / sample_vocab init starts from, chosen as PEFT's prompt-tuning init chooses
    them: the text's tokens cut or repeated to the prompt's length, or tokens drawn uniformly.
    `model`: a loaded model or an engine."""
    facts = as_engine(model).facts
    n = config.num_virtual_tokens
    if config.init_kind is InitKind.SAMPLE_VOCAB:
        return torch.randint(0, facts.config.vocab_size, (n,)).tolist()
    ids = facts.tokenizer(config.init)["input_ids"]
    return (ids * math.ceil(n / len(ids)))[:n]


def prefix_from_tokens(model, ids: list[int]) -> torch.Tensor:
    """The key/values the frozen model computes for `ids` (`LocalEngine.prefix_from_tokens`);
    `model`: a loaded model or an engine."""
    return as_engine(model).prefix_from_tokens(ids)


def prompt_input(method: str, output: torch.Tensor, num_layers: int, num_heads: int) -> torch.Tensor | Prefix:
    """What the frozen model takes: input embeddings [P, H], or the `Prefix` of key/values."""
    if method == Method.PREFIX_TUNING.value:
        return Prefix.from_flat(output, num_layers, num_heads)
    return output


def check_fits(info: AdapterInfo, model_config, field: str, shown: str, encoder_hidden_size: int | None = None) -> None:
    """`info`'s adapter fits a model of `model_config` (its transformers config)."""
    why = model_mismatch(info, model_config, encoder_hidden_size)
    if why:
        raise field_error(field, shown, why)


def load_prompt(adapter_dir: str | Path, field: str = "--prompt", shown=None) -> tuple[AdapterInfo, torch.Tensor]:
    """A saved adapter's method/shape and its `prompt_embeddings` (fp32, CPU), without a model."""
    shown = str(adapter_dir) if shown is None else shown
    info = read_adapter_info(str(adapter_dir), field, shown)
    try:
        output = load_file(Path(info.path) / WEIGHTS_FILE)["prompt_embeddings"].float()
    except (OSError, KeyError, SafetensorError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise field_error(
            field, shown, f"an adapter whose {WEIGHTS_FILE} holds prompt_embeddings ({type(exc).__name__}: {why})"
        ) from None
    if tuple(output.shape) != info.saved_shape:
        raise field_error(
            field,
            shown,
            f"prompt_embeddings of shape {list(info.saved_shape)} as its "
            f"adapter_config.json says (the file has {list(output.shape)})",
        )
    return info, output


def use_prompt(model, adapter_dir: str | Path, field: str = "--prompt") -> torch.Tensor | Prefix:
    """A saved soft prompt of any method, ready for `generate` on this model (a loaded model or an
    engine)."""
    facts = as_engine(model).facts
    info, output = load_prompt(adapter_dir, field)
    check_fits(info, facts.config, field, str(adapter_dir), info.encoder_hidden_size)
    return prompt_input(info.method, output.to(facts.device), info.num_layers, info.num_attention_heads)


class SoftPrompt:
    """One trial's soft prompt: PEFT's encoder for its method (fp32) and that encoder's config."""

    def __init__(self, peft_config, encoder: torch.nn.Module):
        self.config, self.encoder = peft_config, encoder.float()  # fp32 master copy even on a bf16 model

    @classmethod
    def create(cls, model, config: TrainConfig, tokenizer_path: str | None = None) -> "SoftPrompt":
        """`model`: a loaded model or an engine (`trainable.engine`); the encoder lives on the
        engine's client device."""
        engine = as_engine(model)
        facts = engine.facts
        torch.manual_seed(config.seed)  # random inits and encoder weights draw from torch's RNG
        peft_config = _peft_config(config, facts, tokenizer_path)
        prompt = cls(peft_config, _encoder(peft_config).to(facts.device))
        if config.init_kind is InitKind.ADAPTER:
            prompt.warm_start(facts, config)
        elif config.init_kind in TOKEN_INITS:  # TrainConfig allows these for prompt and prefix tuning only
            ids = init_token_ids(engine, config)
            start = engine.prefix_from_tokens(ids) if prompt.method == Method.PREFIX_TUNING.value else engine.embed(ids)
            with torch.no_grad():  # a prefix's token init is allowed only without a projection
                prompt.encoder.embedding.weight.copy_(start)
        return prompt

    @property
    def method(self) -> str:
        return PEFT_TYPES[self.config.peft_type.value]

    @property
    def num_virtual_tokens(self) -> int:
        return self.config.num_virtual_tokens

    @property
    def reparameterised(self) -> bool:
        """Trained through an MLP whose weights PEFT's adapter file does not hold (ENCODER_FILE)."""
        return self.method == Method.P_TUNING.value or bool(getattr(self.config, "prefix_projection", False))

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable tensors: the method's own encoder, nothing of the model."""
        return list(self.encoder.parameters())

    def output(self) -> torch.Tensor:
        """The encoder's output, as PEFT saves it (`prompt_embeddings`): [P, H] input embeddings or
        [P, layers * 2 * kv_width] prefix key/values; differentiable w.r.t. `parameters()`."""
        tokens = torch.arange(self.num_virtual_tokens, device=self.encoder.embedding.weight.device)
        return self.encoder(tokens.unsqueeze(0))[0]

    def inputs(self) -> torch.Tensor | Prefix:
        """What the frozen model takes (see `trainable.inputs`)."""
        return prompt_input(self.method, self.output(), self.config.num_layers, self.config.num_attention_heads)

    def save(self, out_dir: str | Path) -> Path:
        """The adapter as `PeftModel.save_pretrained` writes it (its config in inference mode, the
        encoder's output as `prompt_embeddings`), plus the MLP's weights where there is one."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            output = self.output().detach().cpu().contiguous()
        save_file({"prompt_embeddings": output}, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})
        saved = copy.copy(self.config)
        saved.inference_mode = True
        saved.save_pretrained(str(out_dir))
        if self.reparameterised:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()}, out_dir / ENCODER_FILE
            )
        return out_dir

    def warm_start(self, facts, config: TrainConfig) -> None:
        """Start from a saved soft prompt of the same method and shape (`init: adapter:PATH`);
        TrainConfig has checked method and shape, this checks the model's dimensions."""
        info, output = load_prompt(adapter_path(config.init), "init", config.init)
        check_fits(info, facts.config, "init", config.init, config.encoder_hidden_size)
        if not self.reparameterised:
            with torch.no_grad():
                self.encoder.embedding.weight.copy_(output)
            return
        try:  # TrainConfig checked that the file exists (`adapter.config_mismatch`)
            self.encoder.load_state_dict(load_file(Path(info.path) / ENCODER_FILE))
        except (OSError, RuntimeError, SafetensorError) as exc:
            why = " ".join(str(exc).split())[:200]
            raise field_error(
                "init",
                config.init,
                f"an adapter whose {ENCODER_FILE} fits the {self.method} encoder ({type(exc).__name__}: {why})",
            ) from None
        with torch.no_grad():
            if not torch.allclose(self.output().cpu(), output, rtol=1e-4, atol=1e-5):
                raise field_error(
                    "init",
                    config.init,
                    f"an adapter whose {ENCODER_FILE} gives its "
                    f"{WEIGHTS_FILE} (they differ: files from two different prompts?)",
                )

    def state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        self.encoder.load_state_dict(state)
