"""The soft prompt of each method, built by PEFT, trained in fp32, saved as a standard PEFT adapter.

PEFT builds and initialises the method's encoder (`trainable.methods`): prompt tuning's embedding
(`random`, `sample_vocab`, or TEXT init), P-tuning's embedding + MLP, prefix tuning's key/values
(+ optional projection). A prefix can also start from the key/values of a text or of sampled
tokens (`prefix_from_tokens`), which PEFT does not offer. It writes the adapter (`adapter_config.json` +
`adapter_model.safetensors`, loadable with `PeftModel.from_pretrained`). We do not use PEFT's
forward: it puts virtual tokens before left padding and drops position ids, which is wrong under
RoPE for batched generation; `trainable.inputs` places them (or the prefix) itself.

PEFT's files hold the encoder's output only; for P-tuning and a projected prefix we also save the
encoder's own weights (`ENCODER_FILE`), so that a warm start continues the same parameters.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from peft import PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainable.adapter import ENCODER_FILE, WEIGHTS_FILE, AdapterInfo, model_mismatch, read_adapter_info
from trainable.config import TOKEN_INITS, InitKind, TrainConfig, adapter_path
from softprompt_cli.errors import field_error
from trainable.inputs import Prefix
from trainable.methods import PEFT_TYPES, Method
from trainable.model.loading import LoadedModel

_PEFT_INIT = {
    InitKind.RANDOM: "RANDOM",
    InitKind.SAMPLE_VOCAB: "SAMPLE_VOCAB",
    InitKind.TEXT: "TEXT",
    InitKind.ADAPTER: "RANDOM",
}  # an adapter init overwrites the random start
ADAPTER_NAME = "default"


def _peft_config(config: TrainConfig, loaded: LoadedModel, tokenizer_path: str | None):
    common = {"task_type": TaskType.CAUSAL_LM, "num_virtual_tokens": config.num_virtual_tokens}
    if config.method == Method.P_TUNING.value:
        return PromptEncoderConfig(
            **common, encoder_reparameterization_type="MLP", encoder_hidden_size=config.encoder_hidden_size
        )
    if config.method == Method.PREFIX_TUNING.value:
        return PrefixTuningConfig(
            **common,
            prefix_projection=bool(config.prefix_projection),
            encoder_hidden_size=config.prefix_projection or None,
        )
    kind = config.init_kind
    return PromptTuningConfig(
        **common,
        prompt_tuning_init=_PEFT_INIT[kind],
        prompt_tuning_init_text=config.init if kind is InitKind.TEXT else None,
        tokenizer_name_or_path=(tokenizer_path or loaded.model.name_or_path) if kind is InitKind.TEXT else None,
    )


def init_token_ids(loaded: LoadedModel, config: TrainConfig) -> list[int]:
    """The tokens a TEXT / sample_vocab init starts from, chosen as PEFT's prompt-tuning init chooses
    them: the text's tokens cut or repeated to the prompt's length, or tokens drawn uniformly."""
    n = config.num_virtual_tokens
    if config.init_kind is InitKind.SAMPLE_VOCAB:
        return torch.randint(0, loaded.model.get_input_embeddings().num_embeddings, (n,)).tolist()
    ids = loaded.tokenizer(config.init)["input_ids"]
    return (ids * math.ceil(n / len(ids)))[:n]


@torch.no_grad()
def prefix_from_tokens(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """The key/values the frozen model computes for `ids` at positions 0..P-1, in PEFT's flat
    layout (fp32): as a prefix they make the model read what follows as if `ids` came first."""
    out = loaded.model(input_ids=torch.tensor([ids], device=loaded.device), use_cache=True)
    per_layer = [t[0] for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
    return torch.stack(per_layer).permute(2, 0, 1, 3).reshape(len(ids), -1).float()  # inverse of Prefix.from_flat


def prompt_input(method: str, output: torch.Tensor, num_layers: int, num_heads: int) -> torch.Tensor | Prefix:
    """What the frozen model takes: input embeddings [P, H], or the `Prefix` of key/values."""
    if method == Method.PREFIX_TUNING.value:
        return Prefix.from_flat(output, num_layers, num_heads)
    return output


def check_fits(
    info: AdapterInfo, loaded: LoadedModel, field: str, shown: str, encoder_hidden_size: int | None = None
) -> None:
    why = model_mismatch(info, loaded.model.config, encoder_hidden_size)
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


def use_prompt(loaded: LoadedModel, adapter_dir: str | Path, field: str = "--prompt") -> torch.Tensor | Prefix:
    """A saved soft prompt of any method, ready for `generate` on this model (no PEFT wrapper)."""
    info, output = load_prompt(adapter_dir, field)
    check_fits(info, loaded, field, str(adapter_dir), info.encoder_hidden_size)
    return prompt_input(info.method, output.to(loaded.device), info.num_layers, info.num_attention_heads)


class SoftPrompt:
    """Owns a PEFT prompt-learning wrapper around the (shared, frozen) base model."""

    def __init__(self, peft_model: PeftModel):
        self.peft_model = peft_model
        self.encoder.float()  # fp32 master copy even on a bf16 model

    @classmethod
    def create(cls, loaded: LoadedModel, config: TrainConfig, tokenizer_path: str | None = None) -> "SoftPrompt":
        torch.manual_seed(config.seed)  # random inits and encoder weights draw from torch's RNG
        prompt = cls(get_peft_model(loaded.model, _peft_config(config, loaded, tokenizer_path)))
        if config.init_kind is InitKind.ADAPTER:
            prompt.warm_start(loaded, config)
        elif config.method == Method.PREFIX_TUNING.value and config.init_kind in TOKEN_INITS:
            with torch.no_grad():  # TrainConfig allows these only without a projection
                prompt.encoder.embedding.weight.copy_(prefix_from_tokens(loaded, init_token_ids(loaded, config)))
        return prompt

    @property
    def config(self):
        return self.peft_model.peft_config[ADAPTER_NAME]

    @property
    def method(self) -> str:
        return PEFT_TYPES[self.config.peft_type.value]

    @property
    def encoder(self) -> torch.nn.Module:
        return self.peft_model.prompt_encoder[ADAPTER_NAME]

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
        out_dir = Path(out_dir)
        self.peft_model.save_pretrained(out_dir)
        if self.reparameterised:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()}, out_dir / ENCODER_FILE
            )
        return out_dir

    def warm_start(self, loaded: LoadedModel, config: TrainConfig) -> None:
        """Start from a saved soft prompt of the same method and shape (`init: adapter:PATH`);
        TrainConfig has checked method and shape, this checks the model's dimensions."""
        info, output = load_prompt(adapter_path(config.init), "init", config.init)
        check_fits(info, loaded, "init", config.init, config.encoder_hidden_size)
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
